"""Spec for orchestrator.security: secret redaction, safe ids, path containment."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import halved, linear_timed
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import InvalidIdError, PathEscapeError
from orchestrator.security import (
    REDACTED,
    json_source_text,
    safe_join,
    safe_line,
    sanitize_obj,
    sanitize_text,
    validate_artifact_path,
    validate_id,
)

# --------------------------------------------------------------------------- redaction

# (text containing a secret, the canary that must disappear, text that must survive)
CANARIES = [
    ("password=CanaryPw1 user=bob", "CanaryPw1", "password="),
    ("PASSWORD: CanaryPw2", "CanaryPw2", "PASSWORD: "),
    ("passwd=CanaryPw3", "CanaryPw3", "passwd="),
    ("pwd=CanaryPw4", "CanaryPw4", "pwd="),
    ("db_password = 'Canary Pw5'", "Canary Pw5", "db_password = '"),
    ("token=CanaryTok1&page=2", "CanaryTok1", "&page=2"),
    ("access_token=CanaryTok2", "CanaryTok2", "access_token="),
    ("refresh_token: CanaryTok3", "CanaryTok3", "refresh_token: "),
    ("GITHUB_TOKEN=CanaryTok4", "CanaryTok4", "GITHUB_TOKEN="),
    ("secret=CanarySec1", "CanarySec1", "secret="),
    ("client_secret: CanarySec2", "CanarySec2", "client_secret: "),
    ("aws_secret_access_key = CanarySec3/abc+def", "CanarySec3", "aws_secret_access_key = "),
    ("api_key=CanaryKey1", "CanaryKey1", "api_key="),
    ("apikey=CanaryKey2", "CanaryKey2", "apikey="),
    ("X-Api-Key: CanaryKey3", "CanaryKey3", "X-Api-Key: "),
    ("cookie=sid=CanaryCookie1", "CanaryCookie1", "cookie="),
    ("Cookie: sid=CanaryCookie2; theme=dark", "CanaryCookie2", "Cookie: "),
    ("Set-Cookie: sid=CanaryCookie3; Path=/; HttpOnly", "CanaryCookie3", "Set-Cookie: "),
    ("Authorization: Bearer CanaryBearer1", "CanaryBearer1", "Authorization: Bearer "),
    ("authorization: bearer CanaryBearer2", "CanaryBearer2", "authorization: bearer "),
    ("Authorization: Basic Q2FuYXJ5QmFzaWM=", "Q2FuYXJ5QmFzaWM", "Authorization: Basic "),
    ('{"Authorization": "Bearer CanaryBearer3"}', "CanaryBearer3", '"Authorization": "Bearer '),
    ('{"password": "CanaryJson1", "user": "bob"}', "CanaryJson1", '"user": "bob"'),
    ("{'token': 'CanaryRepr1'}", "CanaryRepr1", "{'token': '"),
    ("deploy --password CanaryCli1 --verbose", "CanaryCli1", "--password "),
    ("deploy --token 'CanaryCli2 x' --verbose", "CanaryCli2", "--token '"),
    ("deploy --db-password=CanaryCli3", "CanaryCli3", "--db-password="),
    ("deploy --password = CanaryCli4 --verbose", "CanaryCli4", "--password = "),
    ("-db_password : 'Canary Cli5'", "Canary Cli5", "-db_password : '"),
    ("key sk-" + "CanaryOpenAI" + "x" * 20, "CanaryOpenAI", "key "),
    ("sk-proj-CanaryProj" + "x" * 30, "CanaryProj", ""),
    ("sk-ant-api03-CanaryAnt" + "x" * 40, "CanaryAnt", ""),
    ("ghp_CanaryGhp" + "x" * 30, "CanaryGhp", ""),
    ("gho_CanaryGho" + "x" * 30, "CanaryGho", ""),
    ("ghs_CanaryGhs" + "x" * 30, "CanaryGhs", ""),
    ("github_pat_CanaryPat_" + "x" * 60, "CanaryPat", ""),
    ("aws AKIACANARYAWS1234567 id", "CANARYAWS1234567", "aws "),
    ("xoxb-1234-CanarySlack-abcdef", "CanarySlack", ""),
    ("google AIzaCanaryGoogle" + "x" * 23, "CanaryGoogle", "google "),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJDanaryJwt0In0.c2lnbmF0dXJl", "eyJDanaryJwt0In0", "jwt "),
    ("postgres://admin:CanaryUrl1@db:5432/app", "CanaryUrl1", "postgres://admin:"),
]


@pytest.mark.parametrize(("text", "canary", "kept"), CANARIES, ids=[c[1] for c in CANARIES])
def test_each_secret_pattern_is_redacted_and_key_name_kept(text: str, canary: str, kept: str) -> None:
    out = sanitize_text(text)
    assert canary not in out
    assert REDACTED in out
    assert kept in out


@pytest.mark.parametrize(("text", "canary", "kept"), CANARIES, ids=[c[1] for c in CANARIES])
def test_redaction_is_idempotent(text: str, canary: str, kept: str) -> None:
    once = sanitize_text(text)
    assert sanitize_text(once) == once


def test_redacted_marker_is_the_public_constant() -> None:
    assert REDACTED == "[REDACTED]"
    assert sanitize_text("password=x") == "password=[REDACTED]"


def test_dir_lists_every_exported_name_before_one_given_on_first_use_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sanitize_obj``, ``renamed_keys`` and ``json_source_text`` are ``redaction_objects``' names, given on first
    use (PEP 562): ``dir(security)`` left them out until then, though ``__all__`` lists them."""
    from orchestrator import security

    for name in security._FROM_REDACTION_OBJECTS:  # noqa: SLF001
        monkeypatch.delitem(vars(security), name, raising=False)  # as in a process that has not used them yet
    assert set(security.__all__) <= set(dir(security))
    assert security.sanitize_obj({"token": "x"}) == {"token": REDACTED}


def test_key_names_are_case_insensitive() -> None:
    for key in ("password", "Password", "PASSWORD", "pAsSwOrD"):
        assert sanitize_text(f"{key}=hunter2") == f"{key}=[REDACTED]"


def test_cookie_value_with_equals_is_redacted_whole() -> None:
    assert sanitize_text("cookie=sid=123") == "cookie=[REDACTED]"


def test_cookie_header_redacts_every_pair() -> None:
    out = sanitize_text("Cookie: sid=abc; csrftoken=def; theme=dark\nnext line")
    assert out == "Cookie: [REDACTED]\nnext line"


def test_bearer_header_keeps_scheme_and_hides_token() -> None:
    assert sanitize_text("Authorization: Bearer abc.def-ghi") == "Authorization: Bearer [REDACTED]"
    assert sanitize_text("proxy-authorization: basic dXNlcjpwYXNz") == "proxy-authorization: basic [REDACTED]"


def test_curl_header_argument_keeps_its_closing_quote() -> None:
    out = sanitize_text("curl -H 'Authorization: Bearer abc123' https://api.example.com")
    assert out == "curl -H 'Authorization: Bearer [REDACTED]' https://api.example.com"


def test_json_shaped_text_stays_valid_json() -> None:
    line = json.dumps({"password": 'pa"ss', "Authorization": "Bearer t0k", "user": "bob", "n": 3})
    doc = json.loads(sanitize_text(line))
    assert doc == {"password": REDACTED, "Authorization": f"Bearer {REDACTED}", "user": "bob", "n": 3}


def test_json_escaped_inside_json_string_is_redacted() -> None:
    line = json.dumps({"msg": json.dumps({"password": "inner-secret"})})
    out = sanitize_text(line)
    assert "inner-secret" not in out
    assert json.loads(json.loads(out)["msg"]) == {"password": REDACTED}


def test_pem_private_key_block_is_replaced_whole() -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1\nq2w3e4r5\n-----END RSA PRIVATE KEY-----"
    out = sanitize_text(f"before\n{pem}\nafter")
    assert out == f"before\n{REDACTED}\nafter"


def test_unterminated_pem_block_is_redacted_to_the_end() -> None:
    out = sanitize_text("key:\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE\ntruncated")
    assert out == f"key:\n{REDACTED}"


PGP_KEY = ("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBGXPLANTEDPGPSECRETxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01\n"
           "efghPLANTEDPGPSECRET2lmnopqrstuvwxyz0123456789ABCDEFG\n=abcd\n-----END PGP PRIVATE KEY BLOCK-----")
PPK_PUBLIC = ("PuTTY-User-Key-File-2: ssh-rsa\nEncryption: none\nComment: rsa-key-20261206\nPublic-Lines: 2\n"
              "AAAAB3NzaC1yc2EAAAABJQAAAQEApublic1\nPUBLIC2lineAAAA==\n")
PPK_PRIVATE = ("Private-Lines: 3\nAAABAQCPLANTEDPPKSECRET1aaaaaaaaaaaa\nAAAAgQDPLANTEDPPKSECRET2bbbbbbbbbb\n"
               "PLANTEDPPKSECRET3cccc==\nPrivate-MAC: 0123456789abcdef0123456789abcdef01234567")


def test_a_pgp_private_key_block_is_replaced_whole() -> None:
    """Its BEGIN and END lines end in ``PRIVATE KEY BLOCK-----``, which a PEM key's pattern did not take."""
    out = sanitize_text(f"cat <<'K'\n{PGP_KEY}\nK\nexit 1\n")
    assert out == f"cat <<'K'\n{REDACTED}\nK\nexit 1\n"
    assert sanitize_text(PGP_KEY.replace("-----END PGP PRIVATE KEY BLOCK-----", "")) == REDACTED  # unterminated


def test_the_private_lines_of_a_putty_key_file_are_redacted_and_its_public_lines_kept() -> None:
    assert sanitize_text(f"{PPK_PUBLIC}{PPK_PRIVATE}\nexit 0") == f"{PPK_PUBLIC}{REDACTED}\nexit 0"
    cut_short = PPK_PUBLIC + PPK_PRIVATE[:PPK_PRIVATE.index("SECRET2") + 4]  # no MAC line: to the end
    assert sanitize_text(cut_short) == PPK_PUBLIC + REDACTED
    escaped = json.dumps({"key": PPK_PUBLIC + PPK_PRIVATE})  # one line, ``\n`` escaped
    assert "PLANTED" not in sanitize_text(escaped)


def test_url_credentials_keep_user_and_host() -> None:
    assert sanitize_text("https://alice:s3cr3t@example.com/x?y=1") == "https://alice:[REDACTED]@example.com/x?y=1"
    assert sanitize_text("redis://:s3cr3t@cache:6379/0") == "redis://:[REDACTED]@cache:6379/0"


def test_url_password_containing_at_sign_is_redacted_whole() -> None:
    assert sanitize_text("mysql://root:p@ss@db/app") == "mysql://root:[REDACTED]@db/app"


@pytest.mark.parametrize(
    "text",
    [
        "the password policy was updated",
        "token count 5",
        "token count: 5",
        "Max tokens: 4096",
        "rotate secrets weekly",
        "the cookie jar is empty",
        "authorization failed for user bob",
        "multi-token support in --verbose mode",
        "risk-assessment-framework-for-the-new-service-v2",
        "see https://example.com:8443/path?email=a@b.com",
        "job-42 finished in 3.2s (exit 0)",
        "ünïcödé ✓ 日本語",
        "| token_count | 3 |",  # a table's row: its first cell ends in no key word
        'grep -E "password|token" app.log',  # no row: the line does not begin with its "|"
        "|  SessionToken   |   |",  # an empty cell
    ],
)
def test_ordinary_text_is_untouched(text: str) -> None:
    assert sanitize_text(text) == text


@pytest.mark.parametrize("text", [
    "passwd: File exists",  # passwd(1) meeting a lock file, or any program named after the file
    "mkdir: cannot create directory '/etc/passwd': File exists",
    "cat: /run/secrets/api_token: No such file or directory\nexit 1",
    "PASSWD: Permission denied\r\n",
    "cp: cannot open 'db_password': Input/output error   ",  # trailing blanks are still the end of the line
])
def test_a_key_word_naming_a_file_in_an_os_error_message_keeps_the_message(text: str) -> None:
    """``<name>: <strerror>`` is a diagnostic about a file or program named like a key, not a secret: the value is
    kept when all that follows the ``:`` to the end of its line is one of the C library's error messages."""
    assert sanitize_text(text) == text


@pytest.mark.parametrize("text, shown", [
    ("passwd: hunter2", "passwd: [REDACTED]"),
    ("passwd: File", "passwd: [REDACTED]"),  # a message's first word alone
    ("passwd: File exists hunter2", "passwd: [REDACTED] exists hunter2"),  # more on the line
    ("passwd: File exists.", "passwd: [REDACTED] exists."),
    ("passwd: File exists" + " " * 100 + "hunter2", "passwd: [REDACTED] exists" + " " * 100 + "hunter2"),
    ("passwd: File exists; token=abc", "passwd: [REDACTED] exists; token=[REDACTED]"),
    ("passwd=File exists", "passwd=[REDACTED] exists"),  # an assignment, not a diagnostic
    ('passwd: "File exists"', 'passwd: "[REDACTED]"'),  # a quoted value is a value
    ('{"password": "No such file or directory"}', '{"password": "[REDACTED]"}'),
    ("passwd: File exists\npassword: hunter2", "passwd: File exists\npassword: [REDACTED]"),
])
def test_a_value_that_is_more_or_other_than_an_os_error_message_is_still_redacted(text: str, shown: str) -> None:
    assert sanitize_text(text) == shown
    assert sanitize_text(shown) == shown  # idempotent


def test_non_string_input_is_stringified() -> None:
    assert sanitize_text(ValueError("password=x")) == "password=[REDACTED]"  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize(
    "big",
    [
        pytest.param(("INFO job started token count: 5 --verbose https://h/x eyJ-a sk-x\n" * 80_000), id="log"),
        pytest.param("password=" * 560_000, id="keys"),
        pytest.param("a" * 5_000_000, id="one-run"),
        pytest.param("eyJ-" * 1_250_000, id="jwt-prefixes"),
        pytest.param("--a-" * 1_250_000, id="flag-prefixes"),
        pytest.param('"password":"\\' * 400_000, id="quotes"),
        pytest.param("passwd: File exists " * 260_000, id="os-error-lookalikes"),
        pytest.param("passwd: " * 600_000, id="keys-before-colons"),
        pytest.param(f"password={REDACTED}," * 250_000, id="redacted-values"),
        pytest.param(f"Cookie: {REDACTED} " * 260_000, id="redacted-header-values"),
    ],
)
def test_five_megabytes_is_sanitized_in_linear_time(big: str) -> None:
    assert len(big) >= 4_800_000
    half = halved(big)
    linear_timed(lambda: sanitize_text(half), lambda: sanitize_text(big))


def test_sanitize_obj_redacts_strings_recursively_keys_included() -> None:
    original = {
        "cmd": ["deploy", "--token", "abc", "--password hunter2"],
        "env": {"DB_PASSWORD": "hunter2", "HOME": "/root", "retries": 3},
        "password=x": ("password=y", None, True, 1.5),
    }
    out = sanitize_obj(original)
    assert out == {
        "cmd": ["deploy", "--token", REDACTED, "--password [REDACTED]"],  # an argument list's flag and its value
        "env": {"DB_PASSWORD": REDACTED, "HOME": "/root", "retries": 3},
        "password=[REDACTED]": ("password=[REDACTED]", None, True, 1.5),
    }
    assert original["env"]["DB_PASSWORD"] == "hunter2"  # a new structure, input untouched


def test_sanitize_obj_keeps_every_value_when_two_keys_sanitize_to_the_same_name() -> None:
    out = sanitize_obj({"password=a": 1, "password=b": 2, "2-password=[REDACTED]": 3, "plain": 4,
                        "note password=KEYSEC1": {"Authorization: Bearer abc": 5, "Authorization: Bearer def": 6}})
    assert out == {"password=[REDACTED]": 1, "3-password=[REDACTED]": 2, "2-password=[REDACTED]": 3, "plain": 4,
                   "note password=[REDACTED]": {"Authorization: Bearer [REDACTED]": 5,
                                                "2-Authorization: Bearer [REDACTED]": 6}}
    assert sanitize_obj(out) == out  # idempotent: a stored output sanitized again is unchanged


@pytest.mark.parametrize("key", ["password={}", "sk-{:020d}"])
def test_sanitize_obj_names_many_keys_that_sanitize_to_one_name_in_linear_time(key: str) -> None:
    """A handler's output of 20,000 such keys took ~30 s to record (each key tried every name the keys before it
    took: ``2-``, ``3-``, ...), the worker renewing no lease meanwhile: lost, and the job run twice."""
    half, output = ({key.format(i): i for i in range(n)} for n in (10_000, 20_000))
    out = linear_timed(lambda: sanitize_obj(half), lambda: sanitize_obj(output))
    name = sanitize_text(key.format(0))
    assert list(out) == [name, *(f"{n}-{name}" for n in range(2, 20_001))]
    assert list(out.values()) == list(range(20_000))


def test_sanitize_obj_redacts_scalars_under_secret_keys_only() -> None:
    out = sanitize_obj({"api_key": 12345, "token_count": 5, "enabled": True, "password": "", "secret": None})
    assert out == {"api_key": REDACTED, "token_count": 5, "enabled": True, "password": "", "secret": None}


def test_sanitize_obj_redacts_any_value_under_a_secret_key_whole() -> None:
    out = sanitize_obj({"password": ["hunter2xyz"], "x": {"token": {"a": "hunter2xyz"}},
                        "nested": [{"DB_PASSWORD": [{"v": 1}, "hunter2xyz"]}], "Authorization": ("hunter2xyz",)})
    assert out == {"password": REDACTED, "x": {"token": REDACTED}, "nested": [{"DB_PASSWORD": REDACTED}],
                   "Authorization": REDACTED}
    assert "hunter2xyz" not in repr(out)


def test_sanitize_obj_keeps_an_empty_value_under_a_secret_key_and_any_value_under_other_keys() -> None:
    out = sanitize_obj({"password": [], "token": {}, "secret": "", "api_key": False,
                        "token_count": [1, 2], "tokens": {"used": 5}})
    assert out == {"password": [], "token": {}, "secret": "", "api_key": False,
                   "token_count": [1, 2], "tokens": {"used": 5}}


# Fragments that make generated text hit every branch of the redaction patterns.
FRAGMENTS = [
    "a", "Z", "0", " ", "\n", "\t", "=", ":", '"', "'", "\\", "&", "-", "_", ".", "/", "@", "?", "]", "[",
    "password", "TOKEN", "secret", "api_key", "Cookie", "Authorization", "Bearer ", "--", "://", "sk-",
    "ghp_", "AKIA", "AIza", "xoxb-", "eyJ", "x" * 20, "-----BEGIN RSA PRIVATE KEY-----",
    "-----END RSA PRIVATE KEY-----", "-----BEGIN PGP PRIVATE KEY BLOCK-----", "-----END PGP PRIVATE KEY BLOCK-----",
    "Private-Lines: 2\n", "Private-MAC: 0a1b", REDACTED, "pass", "pw", "Basic ", "dXNlcjpwYXNz", "\n  ", "\r\n",
    "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "12",
    "\\n", "\\n  ", "\\r\\n", "\\\\n", "|", "- ", "-pass ", "pass:", "auth=", "bob:pw",
]
tricky_text = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)
any_text = st.one_of(st.text(max_size=300), tricky_text)


@settings(max_examples=500, deadline=None)
@given(any_text)
def test_property_sanitize_is_idempotent_and_never_raises(text: str) -> None:
    once = sanitize_text(text)
    assert sanitize_text(once) == once


@settings(max_examples=500, deadline=None)
@given(any_text, st.data())
def test_property_password_canary_never_survives(text: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(min_value=0, max_value=len(text)))
    out = sanitize_text(text[:at] + "password=CANARY123xyz" + text[at:])
    assert "CANARY123xyz" not in out


# Each pattern's secret as it is left once redacted (the value ``[REDACTED]``), and text that may stand around it.
REDACTED_FORMS = [
    f"password={REDACTED}", f"PASSWORD: {REDACTED}", f"db_password = '{REDACTED}'", f'"token": "{REDACTED}"',
    f'\\"api_key\\": \\"{REDACTED}\\"', f"{{'secret': '{REDACTED}'}}", f"Cookie: {REDACTED}",
    f"Set-Cookie: {REDACTED}", f"Authorization: Bearer {REDACTED}", f"proxy-authorization: basic {REDACTED}",
    f"--password {REDACTED}", f"--db-token '{REDACTED}'", f"--api-key={REDACTED}", f"2-password={REDACTED}",
    f"postgres://admin:{REDACTED}@db:5432/app", f"https://password:{REDACTED}@h/x", f"x-api-key:{REDACTED}",
    f'"password"=>"{REDACTED}"', f"token := {REDACTED}", f"password: |\n  {REDACTED}", f"Bearer {REDACTED}",
    f"https://{REDACTED}@h", f"curl -u bob:{REDACTED}", f"sshpass -p {REDACTED}", f"mysql -p{REDACTED}",
    f"login bob password {REDACTED}", f"DB_PASS={REDACTED}",
    REDACTED,  # a shape's, a private key's
]
AROUND = [", ", ",", "; ", " ", "\n", "\r\n", "\t", ".", ")", "(", "/", "sub/r.txt", "report.md", "&page=2", "x", "é",
          "漢", "42", "-", "_", ":", "=", "@", "#", "?", '"', "'"]


def test_a_list_of_names_each_sanitized_on_its_own_is_left_as_it_is() -> None:
    """Stale recovery's question names a dead run's artifacts, each sanitized: ``status`` sanitized it again and
    took the ``,`` after ``[REDACTED]`` for the rest of that value (``password=[REDACTED] sub/r.txt``)."""
    question = (f"Run run-1 ended without a terminal payload but left 2 artifact(s): password={REDACTED}, sub/r.txt. "
                "Check them, then resume with what to do next.")
    assert sanitize_text(question) == question and safe_line(question) == question
    assert sanitize_text(f"password={REDACTED},token=abc") == f"password={REDACTED},token={REDACTED}"


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(REDACTED_FORMS + AROUND), max_size=30).map("".join))
def test_property_a_text_whose_every_secret_is_already_redacted_is_left_as_it_is(text: str) -> None:
    """Idempotent on any text sanitized before, not only on ``sanitize_text``'s own output: a value that is
    ``[REDACTED]`` ends there, whatever follows it."""
    assert sanitize_text(text) == text


def _every_pattern(text: str) -> str:
    """``sanitize_text`` as it was before it skipped the patterns a text cannot match: each one, always."""
    from orchestrator import secret_patterns as p
    from orchestrator.pair_values import KeyedValues, ListPairValues, PairValues, PairValuesFirst
    from orchestrator.values_below import YamlPairBlocks
    from orchestrator import redaction_rules as s

    # the reference the skipping must equal, in sanitize_text's order
    text = s._redact_headless_keys(p.PRIVATE_KEY.sub(REDACTED, text))  # noqa: SLF001
    # an AWS secret key before a key's value: its key id may be that value
    text = s._spliced(text, s._aws_secret_spans(text), REDACTED)  # noqa: SLF001
    for rx, keep, blocks in ((p.URL_CREDS, None, None), (p.HEADER, None, None), (p.BEARER, None, None),
                             (p.BASIC, p.not_user_and_password, None), (p.CLI, None, None),
                             (p.KV, p.os_error, KeyedValues), (p.TABLE_ROW, None, None),
                             (p.SHORT_KV, p.a_count, None), (p.NETRC, None, None),
                             (p.CLI_USER, p.a_number, None), (p.PASS_FLAG, p.a_pass_source, None),
                             (p.AUTH, p.not_auth_credentials, None), (p.PAIR_OBJECT, None, PairValues),
                             (p.PAIR_VALUE_FIRST, None, PairValuesFirst), (p.PAIR_LIST, None, ListPairValues),
                             (p.PAIR_YAML, p.not_a_secret_yaml_pair, YamlPairBlocks)):
        spans = s._value_spans(rx, text, s._ascii_lowered(text), keep, blocks)  # noqa: SLF001 - lowered afresh
        text = s._spliced(text, spans, REDACTED)  # noqa: SLF001
    for rx in (p.SSHPASS, p.MYSQL):  # these read the text as it is
        text = s._redact_values(rx, text)  # noqa: SLF001
    return p.SHAPES.sub(REDACTED, text)


# each key word and shape's start, in other cases and spellings than FRAGMENTS, beside the characters around them
TRIGGERS = FRAGMENTS + ["PassPhrase", "PWD", "Private-Key", "privatekey", "Session_Id", "SECRET_ACCESS_KEY",
                        "x-api-key", "Proxy-Authorization", "set-cookie", "gho_", "ghu_", "ghs_", "ghr_",
                        "github_pat_", "ASIA", "xoxp-", "sk-ant-", "user:pw@", "İ", "K", "ß", "\r\n",
                        "_PASS", "Credentials", "AccountKey", "access-key", "s", "1", "_hash", "Confirmation", "=>",
                        ":=", "==", "|", ">-", "\n  ", "# c", "- ", "sk_live_", "rk_test_", "glpat-", "npm_", "SG.",
                        "Bearer ", "a1" * 8, "://" + "a1" * 10 + "@", "-u ", "--user=", "-U ", "b:", "1000",
                        "sshpass -p", "mysql ", "-p", "-P", "machine h ", "default", "login ", "port 1 ", "password ",
                        "pass=", "PW =", 'pw"', "'pass'", "12", "true,", "Basic ", "basic ", "dXNlcjpwYXNz", "YTpi",
                        "Password:\n", ": \n  ", "=\n    ", "\n- ", "\r", "AKIA" + "A1" * 8,
                        "wJalrXUtnFEMI/K7MDENG/bPx", "RfiCYEXAMPLEKEY", "--password", "-u", "bob:pw", "sshpass",
                        "-phunter2", "--pass ", "-passin ", "pass:", "env:", "1 ", "auth=", "_AUTH: ", "--auth ",
                        '"auth": "', "Ym9iOng=", "||  SessionToken |  ", "| a ",
                        # the pairs' pieces (name/value objects, lists of pairs, YAML's env)
                        '{"name": "', '", "value": ', '{"value": ', ', "name": "', '"Key": "', "'value': ", '[["',
                        '", "', '"], ["', '("', '["', '"]', "]", "}", '"x"', '"', "'", '\\"', "- name: ", "value: ",
                        "\n  ",
                        "value: |", "smtp_pw", "db_pass", "auth", "bob:x", "HOME", '"type": "t", ']


# one secret for each way a key word is spelled and each shape the patterns know (the CANARIES have more)
EVERY_SPELLING = [
    "passphrase=s1", "Passwd: s1", "PWD=s1", "private_key=s1", "private-key: s1", "privatekey=s1", "token=s1",
    "api_key=s1", "api-key=s1", "apikey=s1", "secret=s1", "secret_access_key=s1", "secret-key=s1", "SECRETKEY=s1",
    "session_id=s1", "session-id=s1", "sessionid=s1", "Authorization: s1", "cookie: s1", "--session-id s1",
    "http://u:s1@h", "ghu_" + "s" * 20, "ghr_" + "s" * 20, "ASIA" + "S" * 16, "xoxa-" + "s" * 10,
    "xoxr-" + "s" * 10, "xoxs-" + "s" * 10, "xoxp-" + "s" * 10, "AIza" + "s" * 35, "sk-" + "s" * 20,
    "github_pat_" + "s" * 20, "eyJs1234.eyJs1234.s", "-----BEGIN PRIVATE KEY-----\ns1\n-----END PRIVATE KEY-----",
    "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\ns1\n-----END PGP PRIVATE KEY BLOCK-----",
    "Private-Lines: 1\ns1\nPrivate-MAC: 0a1b", "s1\nPrivate-MAC: 0a1b",
    "password=>s1", "token := s1", "secret==s1", "passwords=s1", "secret2=s1", "token_hash=s1", "db_pass=s1",
    "credentials=s1", "access_key=s1", "AccountKey=s1", "password: |\n  s1", "secret: >-\n\n   s1\n  s1",
    "sk_live_" + "s1" * 8, "rk_test_" + "s1" * 8, "glpat-" + "s1" * 10, "npm_" + "s1" * 18,
    "SG." + "s1" * 8 + "." + "s1" * 8, "Bearer s1234567", "https://" + "s1" * 10 + "@h", "curl -u u:s1",
    "--user=u:s1", "sshpass -ps1", "mysql -ps1", "machine h login u password s1",
    "pass=s1", "pw = s1", '"pass": "s1"', "'pw' => 's1'", "Basic czE6czE=", "password:\n  s1", "Password:\ns1",
    "secret =\n    s1\n    s1", "AKIA" + "S" * 16 + " s1" + "A" * 38,
    '{"api_keys": ["s1"]}', "secret = {'a': 's1'}", "||  SessionToken   |  s1  ||",
    '{"name": "DB_PASSWORD", "value": "s1"}', '{"Key": "token", "Type": "t", "Value": ["s1"]}',
    '{"value": "s1", "name": "api_key"}', '[["HOME", "/"], ["token", "s1"]]', "dict_items([('db_pw', 's1')])",
    '"a"], ("db_pw", "s1"]', '{"name": "auth", "value": ["u", "s1"]}', "- name: smtp_pw\n  value: s1",
    "- name: TOKEN\n  value: |\n    s1",
]


def _pad(secret: str) -> str:
    """What to put between ``secret`` and other text: a line break for a value under its key, a YAML pair and a
    table's row, which must begin their line (``x password:`` is no key's line), else a blank."""
    return "\n" if ":\n" in secret or "=\n" in secret or secret.startswith(("- name:", "|")) else " "


@pytest.mark.parametrize("secret", EVERY_SPELLING)
def test_each_spelling_of_a_secret_is_redacted_as_by_every_pattern(secret: str) -> None:
    pad = _pad(secret)
    for text in (secret, f"x{pad}{secret}{pad}y", f"İ{pad}{secret}"):
        assert sanitize_text(text) == _every_pattern(text) != text
    shouted = secret.upper()  # a key word in capitals is still one; a shape is not (they are case-sensitive)
    assert sanitize_text(shouted) == _every_pattern(shouted)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.text(max_size=200),
                 st.lists(st.sampled_from(TRIGGERS + EVERY_SPELLING), max_size=40).map("".join)))
def test_property_skipping_patterns_a_text_cannot_match_changes_no_output(text: str) -> None:
    assert sanitize_text(text) == _every_pattern(text)


@pytest.mark.parametrize(("text", "canary", "kept"), CANARIES, ids=[c[1] for c in CANARIES])
def test_each_canary_is_redacted_as_by_every_pattern(text: str, canary: str, kept: str) -> None:
    for variant in (text, text.upper(), text.lower(), f"İ {text} İ"):  # İ: not ASCII, so lowered another way
        assert sanitize_text(variant) == _every_pattern(variant)


def _walked(obj: object) -> object:
    """``sanitize_obj`` as it was before it looked at a structure whole first: every string, one by one."""
    from orchestrator import redaction_objects

    return redaction_objects._sanitized(obj)  # noqa: SLF001 - the reference the look must equal


# the characters re.IGNORECASE takes for an ASCII letter, in key words: keys the walk finds secret
CASE_FOLDED_KEYS = ["pa\u017f\u017fword", "session_\u0131d", "pr\u0130vate_key", "api_\u212aey", "TO\u212aEN", "\u017fecret"]
json_texts = st.one_of(st.text(max_size=30), st.lists(st.sampled_from(TRIGGERS + EVERY_SPELLING + CASE_FOLDED_KEYS),
                                                      max_size=6).map("".join))
# (no NaN: a NaN is not equal to itself, so a structure holding one at its top would never compare equal)
json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), json_texts),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(st.one_of(json_texts, st.integers()), inner, max_size=4)),
    max_leaves=20)


@settings(max_examples=1500, deadline=None)
@given(json_like)
def test_property_a_structure_looked_at_whole_is_sanitized_as_by_the_walk(obj: object) -> None:
    assert sanitize_obj(obj) == _walked(obj)


@pytest.mark.parametrize("key", CASE_FOLDED_KEYS)
def test_a_key_word_spelled_with_letters_that_ignorecase_folds_to_ascii_is_a_secret_key(key: str) -> None:
    assert sanitize_obj({key: "hunter2xyz", "n": [1]}) == {key: REDACTED, "n": [1]}


# what a cut leaves of a private key: its END line and the body above it, no BEGIN line
HEADLESS_KEY = "MIIEvQIBADANBgkqhkiG9w0B\n-----END PRIVATE KEY-----"


@pytest.mark.parametrize("secret", EVERY_SPELLING + [c[0] for c in CANARIES] + [HEADLESS_KEY])
def test_a_structure_holding_any_secret_deep_in_a_value_or_a_key_is_walked(secret: str) -> None:
    for obj in ({"a": [{"b": ("x", secret)}]}, [[{secret: 1}]]):
        out = sanitize_obj(obj)
        assert out == _walked(obj) != obj


def test_a_structure_with_nothing_to_redact_is_returned_as_it_is_and_one_with_something_as_a_copy() -> None:
    items = [{"id": i, "name": f"item-{i}", "tags": ["a", "b"], "score": i * 0.5} for i in range(50)]
    clean = {"items": items, "url": "https://example.com/x", "ids": (1, 2), "pi": float("nan"), 3: None}
    assert sanitize_obj(clean) is clean
    wordy = {"items": items, "note": "the tokenizer counted 5"}  # a key word, but no value after it: walked, kept
    assert sanitize_obj(wordy) == wordy and sanitize_obj(wordy) is not wordy
    secret = {"items": items, "db": "postgres://u:pw1@h/x"}
    assert sanitize_obj(secret) == {"items": items, "db": "postgres://u:[REDACTED]@h/x"}
    assert secret["db"] == "postgres://u:pw1@h/x"  # a new structure, the given one untouched


def test_a_structure_that_is_not_json_is_walked() -> None:
    odd = {"set": {"password=x"}, ("t", 1): "password=y", "obj": object}  # not JSON: walked as before
    out = sanitize_obj(odd)
    assert out[("t", 1)] == "password=[REDACTED]" and out["set"] == {"password=x"} and out is not odd


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.text(max_size=200),
                 st.lists(st.sampled_from(TRIGGERS + EVERY_SPELLING + CASE_FOLDED_KEYS), max_size=40).map("".join)))
def test_property_a_text_without_any_literal_a_redaction_starts_from_is_left_as_it_is(text: str) -> None:
    from orchestrator import redaction

    if not redaction.may_hold_secret(text):
        assert sanitize_text(text) == text


# JSON text as other writers write it: escaped "/" (valid JSON; a "/" is only ever in a string), or letters no JSON
# keyword, escape, hex digit or number holds written as \u escapes (``ensure_ascii`` escapes only the non-ASCII ones)
_ESCAPABLE_LETTERS = "ghikmopqvwxyzGHIKMOPQVWXYZ"


def _slashes_escaped(text: str) -> str:
    return text.replace("/", "\\/")


def _letters_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" if c in _ESCAPABLE_LETTERS else c for c in text)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), json_texts),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(json_texts, inner, max_size=4)),
    max_leaves=20)
writers = st.sampled_from([
    lambda v: json.dumps(v, ensure_ascii=False), lambda v: json.dumps(v, separators=(",", ":")),
    lambda v: _slashes_escaped(json.dumps(v, ensure_ascii=False)), lambda v: _letters_escaped(json.dumps(v)),
    lambda v: json.dumps(v, ensure_ascii=False, indent=1)])


@settings(max_examples=1500, deadline=None)
@given(json_values, writers, st.sampled_from(["utf-8", "utf-16", "utf-8-sig"]))
def test_property_a_value_looked_at_in_the_json_it_was_parsed_from_is_sanitized_as_by_the_walk(
        value: object, write, encoding: str) -> None:
    """What a worker does with a handler's output: look for secrets in the payload's own text, not the parsed value
    encoded again. Every writer, escapes and encodings included, gives what the walk gives."""
    raw = write({"status": "done", "output": value}).encode(encoding)
    output = json.loads(raw)["output"]
    assert sanitize_obj(output, json_source_text(raw)) == _walked(output)


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"note": "\\u0070assword=hunter2xyz"}', {"note": "password=[REDACTED]"}),
    (b'{"db": "postgres:\\/\\/u:pw1@h\\/x"}', {"db": "postgres://u:[REDACTED]@h/x"}),
    (b'{"\\u0074oken": "hunter2xyz"}', {"token": REDACTED}),
    (b'{"note": "a\\\\u0070assword=hunter2xyz"}', {"note": "a\\u0070assword=hunter2xyz"}),  # an escaped backslash
])
def test_a_secret_written_with_escapes_is_redacted_though_the_json_text_does_not_spell_it(raw: bytes,
                                                                                          expected: dict) -> None:
    value = json.loads(raw)
    assert json_source_text(raw) is None  # the text is not looked at: the value is, encoded again
    assert sanitize_obj(value, json_source_text(raw)) == expected


def test_a_value_whose_json_text_holds_nothing_to_redact_is_not_encoded_again(monkeypatch) -> None:
    from orchestrator import redaction_objects

    raw = json.dumps({"status": "done", "output": {"items": [{"id": i, "url": "https://x/y"} for i in range(9)]}})
    output = json.loads(raw)["output"]
    monkeypatch.setattr(redaction_objects, "_json_text", lambda obj: pytest.fail("encoded again"))
    assert sanitize_obj(output, json_source_text(raw.encode())) is output


def test_the_json_source_text_is_the_text_json_reads_from_the_bytes() -> None:
    assert json_source_text('{"a": "caf\u00e9 /x\\n"}'.encode("utf-16")) == '{"a": "caf\u00e9 /x\\n"}'
    assert json_source_text(b'\xef\xbb\xbf{"a": 1}') == '{"a": 1}'  # the UTF-8 byte order mark dropped, as json does
    assert json_source_text(b'{"a": "\xff"}') is None  # not UTF-8: json.loads refuses it too


# what fills a long text around a secret: data (numbers, hex, base64, a run of one letter, JSON records) lacks most of
# the literals' characters, which a long text is first looked at for; prose holds most of them
FILLERS = ["0123456789" * 110, "9f3a" * 300, "QUJD+/x0" * 150, "x" * 1100, '{"id":12,"name":"some item name"}' * 40,
           "the quick brown fox jumps over the lazy dog " * 30]
long_texts = st.builds(lambda filler, pieces, at: filler[:at] + "".join(pieces) + filler[at:],
                       st.sampled_from(FILLERS),
                       st.lists(st.one_of(st.sampled_from(TRIGGERS + EVERY_SPELLING + CASE_FOLDED_KEYS),
                                          st.text(max_size=20)), max_size=4),
                       st.integers(0, 1100))


@settings(max_examples=1500, deadline=None)
@given(long_texts)
def test_property_a_long_text_is_looked_at_as_a_short_one_is_searched_for_each_literal(text: str) -> None:
    """A text of ``_LONG_TEXT`` characters or more is searched only for the literals whose every character it holds
    (in either case, for the key words): the same answers, and the same redactions, as a search for each."""
    from unittest import mock

    from orchestrator import redaction

    assert len(text) >= redaction._LONG_TEXT  # noqa: SLF001
    looked, redacted = redaction.may_hold_secret(text), sanitize_text(text)
    with mock.patch.object(redaction, "_LONG_TEXT", len(text) + 1):  # every text short: each literal searched for
        assert (looked, redacted) == (redaction.may_hold_secret(text), sanitize_text(text))


@pytest.mark.parametrize("filler", FILLERS)
@pytest.mark.parametrize("secret", EVERY_SPELLING + [c[0] for c in CANARIES])
def test_a_secret_in_a_long_value_is_redacted_whatever_fills_the_rest(filler: str, secret: str) -> None:
    for obj in ({"data": filler + _pad(secret) + secret}, {"data": filler, secret: "s1"}, [filler, {"x": secret}]):
        out = sanitize_obj(obj)
        assert out == _walked(obj) != obj


@pytest.mark.parametrize("filler", FILLERS)
def test_a_key_spelled_with_letters_that_ignorecase_folds_is_a_secret_key_beside_a_long_value(filler: str) -> None:
    for key in CASE_FOLDED_KEYS:
        assert sanitize_obj({"data": filler, key: "s1"}) == {"data": filler, key: REDACTED}


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize("good", ["good-id_1.2", "a", "0", "Job.2024-01-01_x", "a" * 128])
def test_valid_ids_are_returned_unchanged(good: str) -> None:
    assert validate_id(good) == good


@pytest.mark.parametrize(
    "bad",
    ["../x", "a/b", "/abs", "x\x00", "", ".", "..", "a..b", "a" * 200, "a\\b", "a b", "x\n", "-x", ".hidden",
     "_x", "é", None, 42],
)
def test_invalid_ids_are_rejected(bad: object) -> None:
    with pytest.raises(InvalidIdError) as info:
        validate_id(bad)  # type: ignore[arg-type]
    assert info.value.code == "INVALID_ID"
    assert str(info.value).startswith("invalid job id ")


def test_invalid_id_message_names_what_was_checked() -> None:
    with pytest.raises(InvalidIdError, match=r"^invalid project id '\.\./p' \(must not contain '\.\.'\)$"):
        validate_id("../p", "project id")


@pytest.mark.parametrize(("bad", "reason"), [("../../etc/passwd", "must not contain '..'"),
                                             ("my api-token", "may contain only ASCII letters"),
                                             ("-session_id", "must start with an ASCII letter or digit"),
                                             ("projé", "may contain only ASCII letters"), ("ü", "ASCII letter")])
def test_invalid_id_message_keeps_its_reason_when_sanitized(bad: str, reason: str) -> None:
    """An id ending in a secret's key name: the message, sanitized as every error shown is, still says what is wrong
    (the reason is not taken for that key's value and redacted)."""
    with pytest.raises(InvalidIdError) as info:
        validate_id(bad)
    assert reason in sanitize_text(str(info.value))


def test_invalid_key_id_message_keeps_its_reason_when_sanitized() -> None:
    from orchestrator.signing import validate_key_id

    with pytest.raises(InvalidIdError) as info:
        validate_key_id("my-token")
    assert "a key id is 'k-' and 16 hex digits" in sanitize_text(str(info.value))


def test_a_malformed_anchor_named_like_a_secret_keeps_its_reason_when_sanitized() -> None:
    from orchestrator.errors import InvalidInputError
    from orchestrator.integrity import _anchored_heads

    with pytest.raises(InvalidInputError) as info:
        _anchored_heads(Path("backups/token"), {"created_at": "2026-12-06T00:00:00Z", "heads": {"s": {"seq": 0}}})
    shown = sanitize_text(str(info.value))
    assert shown == "the head of 's' in anchor backups/token is not a sequence number and a hash"


def test_invalid_id_message_is_bounded_for_huge_values() -> None:
    with pytest.raises(InvalidIdError) as info:
        validate_id("x" * 5_000_000)
    assert len(str(info.value)) < 300


# --------------------------------------------------------------------------- paths


def test_safe_join_returns_joined_path_inside_root(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "jobs", "a.jsonl") == tmp_path / "jobs" / "a.jsonl"
    assert safe_join(tmp_path, "jobs/../b") == tmp_path / "jobs/../b"  # stays inside after resolving
    assert safe_join(tmp_path) == tmp_path


@pytest.mark.parametrize("parts", [("..",), ("../x",), ("a", "..", ".."), ("a/../../x",), ("/etc/passwd",),
                                   ("a", "/abs"), ("x\x00y",)])
def test_safe_join_rejects_escapes(tmp_path: Path, parts: tuple[str, ...]) -> None:
    with pytest.raises(PathEscapeError) as info:
        safe_join(tmp_path / "root", *parts)
    assert info.value.code == "PATH_ESCAPE"


def test_safe_join_rejects_empty_root() -> None:
    with pytest.raises(PathEscapeError):
        safe_join("", "x")  # type: ignore[arg-type]


def test_safe_join_rejects_symlink_pointing_outside(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(PathEscapeError):
        safe_join(root, "link", "stolen.txt")
    with pytest.raises(PathEscapeError):
        safe_join(root, "link")


def test_safe_join_allows_symlink_pointing_inside(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert safe_join(tmp_path, "alias", "f") == tmp_path / "alias" / "f"


def test_validate_artifact_path_returns_resolved_path(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.txt").write_text("ok")
    got = validate_artifact_path(tmp_path, "out/report.txt")
    assert got == Path(os.path.realpath(tmp_path / "out" / "report.txt"))
    assert validate_artifact_path(tmp_path, "not-yet-written.bin").name == "not-yet-written.bin"


@pytest.mark.parametrize(
    "rel", ["", ".", "..", "../x", "a/../../x", "a/../b", "/etc/passwd", "x\x00", "a\\b", "..\\x", "C:\\x"]
)
def test_validate_artifact_path_rejects_unsafe_names(tmp_path: Path, rel: str) -> None:
    with pytest.raises(PathEscapeError) as info:
        validate_artifact_path(tmp_path, rel)
    assert info.value.code == "PATH_ESCAPE"


@pytest.mark.parametrize("rel", ["c:x", "C:report.md", "out/d:e.txt", "2026-12-06T10:00:00.log"])
def test_an_artifact_name_with_a_colon_is_a_plain_relative_name_on_posix(tmp_path: Path, rel: str) -> None:
    """No drive letters here (the file backend runs on Linux and macOS): ``c:x`` is a file in the job's folder,
    refused before 2026-12-06 as "must be relative"."""
    assert validate_artifact_path(tmp_path, rel) == Path(os.path.realpath(tmp_path)) / rel


def test_validate_artifact_path_rejects_symlinks_pointing_outside(tmp_path: Path) -> None:
    artifacts, secret = tmp_path / "artifacts", tmp_path / "secret.txt"
    artifacts.mkdir()
    secret.write_text("s3cr3t")
    (artifacts / "file-link").symlink_to(secret)
    (artifacts / "dir-link").symlink_to(tmp_path)
    for rel in ("file-link", "dir-link/secret.txt"):
        with pytest.raises(PathEscapeError):
            validate_artifact_path(artifacts, rel)


def test_validate_artifact_path_rejects_non_string(tmp_path: Path) -> None:
    with pytest.raises(PathEscapeError):
        validate_artifact_path(tmp_path, None)  # type: ignore[arg-type]


def test_a_key_whose_begin_line_was_cut_away_is_redacted_from_its_body_to_its_end_line() -> None:
    """What is left of a key in the tail of some output: body lines and the END line, no BEGIN."""
    cut = "log line: starting\nMIIEpAIBAAKCAQEA1q2w3e4r5\nt6y7u8i9o0p+/==\n-----END RSA PRIVATE KEY-----\nexit 1"
    assert sanitize_text(cut) == f"log line: starting\n{REDACTED}\nexit 1"
    assert sanitize_text("A1b2\r\nC3d4\r\n-----END PRIVATE KEY-----\r\n") == f"{REDACTED}\r\n"


@pytest.mark.parametrize("key", [PGP_KEY, PPK_PUBLIC + PPK_PRIVATE], ids=["pgp", "putty"])
def test_a_pgp_or_putty_key_whose_first_lines_were_cut_away_is_redacted_from_its_body_to_its_end_line(
        key: str) -> None:
    cut = key[key.index("PLANTED") + 7:] + "\nexit 1"  # the tail begins in the key's body
    assert sanitize_text(cut) == f"{REDACTED}\nexit 1"
    assert sanitize_text(f"log: starting\n{cut}") == f"log: starting\n{REDACTED}\nexit 1"


@pytest.mark.parametrize("text, shown", [
    ("plain text, é 中 🙂", "plain text, é 中 🙂"),
    ("a\nstate  succeeded", "a\\nstate  succeeded"),
    ("\r\t\x00\x1b[2K\x7f\x85", "\\r\\t\\x00\\x1b[2K\\x7f\\x85"),
    ("x\u2028y\u2029z\u202eevil\u2066", "x\\u2028y\\u2029z\\u202eevil\\u2066"),
])
def test_one_line_escapes_what_could_end_or_rewrite_a_terminal_line(text: str, shown: str) -> None:
    from orchestrator.security import one_line

    assert one_line(text) == shown and len(one_line(text).splitlines()) == 1
