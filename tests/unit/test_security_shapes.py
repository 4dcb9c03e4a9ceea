"""Spec for the secrets ``sanitize_text`` and ``sanitize_obj`` recognise beyond ``key=value`` (test_security.py): other
languages' separators, YAML block values, key names with a suffix, name/value pairs, more token shapes, command-line
credentials and ``.netrc`` lines; and the ordinary text each of them must leave alone."""
from __future__ import annotations

import json

import pytest

from helpers import halved, linear_timed, redacts

from orchestrator.security import REDACTED, sanitize_obj, sanitize_text

R = REDACTED


# --------------------------------------------------------------------------- separators of other languages

@pytest.mark.parametrize(("text", "shown"), [
    ('Parameters: {"user"=>{"email"=>"a@b.c", "password"=>"hunter2"}}',  # Rails' log of a request (Ruby's inspect)
     f'Parameters: {{"user"=>{{"email"=>"a@b.c", "password"=>"{R}"}}}}'),
    ("$config = ['password' => 's3cr3t-PHP', 'host' => 'db'];", f"$config = ['password' => '{R}', 'host' => 'db'];"),
    ("my %c = (password => hunter2, user => 'bob');", f"my %c = (password => {R} user => 'bob');"),  # Perl
    ('password := "hunter2"', f'password := "{R}"'),  # Go
    ("dbPassword := os.Getenv(x)", f"dbPassword := {R}"),
    ('if password == "hunter2" {', f'if password == "{R}" {{'),
    ("token==abc123", f"token=={R}"),
    ('{:api_key=>"abc123"}', f'{{:api_key=>"{R}"}}'),  # a Ruby symbol key
])
def test_a_value_after_a_fat_arrow_a_walrus_or_a_double_equals_is_redacted_whole(text: str, shown: str) -> None:
    """``=>`` (Ruby, PHP, Perl), ``:=`` (Go) and ``==`` were taken as ``=`` followed by a value ``>``, ``=``: the
    ``>`` was redacted and the secret after it kept, under a misleading ``[REDACTED]``."""
    redacts(text, shown)


@pytest.mark.parametrize("text", ["a => b", "x := 1", "if a == b {", "count => 5", "password != stored"])
def test_arrows_and_comparisons_after_other_words_are_left_alone(text: str) -> None:
    assert sanitize_text(text) == text


@pytest.mark.parametrize("text", ['password="" hunter2', "password=&page=2", "password=\nhunter2"])
def test_an_empty_value_is_no_value_and_what_follows_it_is_kept(text: str) -> None:
    """An empty value is no secret, and what follows is another thing: a query's next parameter (``&page=2``), a
    word, the next line (an ``.env`` line ``PASSWORD=`` followed by ``USER=bob``; a value under its key's line is
    test_redaction_forms.py's)."""
    assert sanitize_text(text) == text


# --------------------------------------------------------------------------- YAML block values

@pytest.mark.parametrize(("text", "shown"), [
    ("password: |\n  hunter2\n  line 2\nuser: bob", f"password: |\n  {R}\nuser: bob"),
    ("password: >\n  hunter2\n  folded\nuser: bob", f"password: >\n  {R}\nuser: bob"),
    ("db:\n  password: |-\n    hunter2\n\n    more\n  user: bob\n", f"db:\n  password: |-\n    {R}\n  user: bob\n"),
    ("- password: |\n    hunter2\n  user: bob", f"- password: |\n    {R}\n  user: bob"),
    ("secret: |2+  # the key\r\n  hunter2\r\nnext: 1", f"secret: |2+  # the key\r\n  {R}\r\nnext: 1"),
    ("private_key: |\n  -----BEGIN X-----\n  hunter2", f"private_key: |\n  {R}"),  # to the end of the text
])
def test_a_yaml_block_value_is_redacted_over_its_indented_lines(text: str, shown: str) -> None:
    """``password: |`` redacted the ``|`` and kept the block's lines, the secret, under it."""
    redacts(text, shown)


@pytest.mark.parametrize(("text", "shown"), [
    ("password: |\nuser: bob", "password: |\nuser: bob"),  # no indented line: no block, and ``|`` is no secret
    ("password: |", "password: |"), ("password: >  # none\n\nuser: bob", "password: >  # none\n\nuser: bob"),
    ("password: | hunter2\n  x", f"password: {R} hunter2\n  x"),  # more on its line: a value, as before
    ("note: |\n  password policy\nuser: bob", "note: |\n  password policy\nuser: bob"),
])
def test_a_block_indicator_without_indented_lines_under_it_is_kept(text: str, shown: str) -> None:
    redacts(text, shown)


# --------------------------------------------------------------------------- key names

@pytest.mark.parametrize("key", [
    "password ", "Password:", "db_password\n", "API_KEY ", "token\t", "Authorization:",  # trailing non-alphanumerics
    "passwords", "secrets", "api_keys", "private_keys", "password1", "api_key_2", "password_hash", "secret_value",
    "passwordConfirmation", "password_confirm", "token_digest", "credentials", "credential", "access_key",
    "AccountKey", "SharedAccessKey", "DB_PASS", "smtp_pass", "aws_secret_access_key",
])
def test_a_key_naming_a_secret_with_a_suffix_or_trailing_punctuation_has_its_value_redacted(key: str) -> None:
    assert sanitize_obj({key: "hunter2", "n": 1}) == {key: R, "n": 1}


@pytest.mark.parametrize("key", [
    "prompt_tokens", "completion_tokens", "total_tokens", "max_tokens", "tokens", "token_count", "num_tokens",
    "tokenizer", "token_type", "secret_santa", "secret_name", "password_policy", "password_min_length",
    "passwordless", "session_timeout", "bypass", "compass", "pass", "passed", "aws_access_key_id", "keys",
    "api", "credentials_file_path", "hash", "value",
])
def test_a_key_that_only_mentions_a_key_word_keeps_its_value(key: str) -> None:
    """An LLM's usage (``prompt_tokens``, ``max_tokens``) and names about a secret rather than holding one: only a key
    word at the name's end counts, with no plural for ``token`` and only value/hash/digest/confirm(ation) after it."""
    assert sanitize_obj({key: 12, "note": "x"}) == {key: 12, "note": "x"}


@pytest.mark.parametrize(("text", "shown"), [
    ("passwords=a,b", f"passwords={R}"), ("password1=hunter2", f"password1={R}"),
    ('"password_confirmation"=>"hunter2"', f'"password_confirmation"=>"{R}"'),
    ("DB_PASS=hunter2 SMTP_PASS=x2", f"DB_PASS={R} SMTP_PASS={R}"), ("credentials: abc", f"credentials: {R}"),
    ("AccessKey=abc", f"AccessKey={R}"),
])
def test_a_key_with_a_suffix_is_a_key_in_text_too(text: str, shown: str) -> None:
    redacts(text, shown)


@pytest.mark.parametrize("text", [
    "bypass=1", "compass=north", "PASS: test_parse", "pass=12 fail=0", "prompt_tokens=12", "max_tokens: 4096",
    "secret_santa: bob", "test_passed=3", "tokens: 5",
])
def test_words_ending_in_pass_and_counts_of_tokens_are_no_keys_in_text(text: str) -> None:
    assert sanitize_text(text) == text


def test_an_llm_usage_record_is_kept_whole() -> None:
    usage = {"usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}, "max_tokens": 4096}
    assert sanitize_obj(usage) == usage


@pytest.mark.parametrize(("pair", "shown"), [
    ({"name": "DB_PASSWORD", "value": "hunter2"}, {"name": "DB_PASSWORD", "value": R}),  # Kubernetes' env
    ({"Name": "api_key", "Value": "hunter2", "Type": "SecureString"},  # AWS SSM
     {"Name": "api_key", "Value": R, "Type": "SecureString"}),
    ({"Key": "GITHUB_TOKEN", "Value": "hunter2"}, {"Key": "GITHUB_TOKEN", "Value": R}),
    ({"name": "DB_HOST", "value": "db.internal"}, {"name": "DB_HOST", "value": "db.internal"}),
    ({"name": "max_tokens", "value": 4096}, {"name": "max_tokens", "value": 4096}),
    ({"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db"}}},
     {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db"}}}),  # a reference, no value
])
def test_the_value_of_a_name_value_pair_is_redacted_when_the_name_is_a_secrets(pair: dict, shown: dict) -> None:
    assert sanitize_obj({"env": [pair]}) == {"env": [shown]}


def test_an_authorization_header_given_as_a_pair_is_redacted_whole_or_by_its_bearer_token() -> None:
    """In a list of pairs its value is redacted whole, as under its key (test_redaction_forms.py); a list of two
    strings alone is no pair, and its token is redacted as one."""
    out = sanitize_obj({"headers": [["Authorization", "Bearer abc123def456"], ["Accept", "text/plain"]],
                        "header": ["Authorization", "Bearer abc123def456"]})
    assert out == {"headers": [["Authorization", R], ["Accept", "text/plain"]],
                   "header": ["Authorization", f"Bearer {R}"]}


# --------------------------------------------------------------------------- shapes

@pytest.mark.parametrize(("text", "shown"), [
    ("stripe sk_live_" + "a1B2" * 6 + " ok", f"stripe {R} ok"),
    ("rk_live_" + "a1B2" * 6, R), ("sk_test_" + "a1B2" * 6, R), ("rk_test_" + "a1B2" * 6, R),
    ("gitlab glpat-" + "a1B2-" * 4, f"gitlab {R}"),
    ("//registry.npmjs.org/:_authToken=npm_" + "a1B2" * 9, f"//registry.npmjs.org/:_authToken={R}"),
    ("npm_" + "a1B2" * 9, R),
    ("SG." + "a1B2_" * 5 + "." + "c3D4-" * 9, R),
    ("DefaultEndpointsProtocol=https;AccountName=x;AccountKey=abc123secretBASE64==;EndpointSuffix=core.windows.net",
     f"DefaultEndpointsProtocol=https;AccountName=x;AccountKey={R}"),
])
def test_stripe_gitlab_npm_sendgrid_and_azure_keys_are_redacted(text: str, shown: str) -> None:
    redacts(text, shown)


@pytest.mark.parametrize(("text", "shown"), [
    ("curl -H 'Bearer abc123def456' x", f"curl -H 'Bearer {R}' x"),
    ("token was Bearer abcdef0123456789SECRETTOKEN.", f"token was Bearer {R}"),
    ("bearer " + "A" * 40, f"bearer {R}"),  # 32 or more characters need no digit
    ('["Authorization", "Bearer eyJ0eXAi.x1"]', f'["Authorization", "Bearer {R}"]'),
    ("token: Bearer abc123def456", f"token: {R} {R}"),  # the key's value and the token, both gone
])
def test_a_bearer_token_without_its_header_name_is_redacted(text: str, shown: str) -> None:
    redacts(text, shown)


@pytest.mark.parametrize("text", [
    "the bearer of this letter", "Bearer tokens are sent in a header", "Bearer authentication failed",
    'WWW-Authenticate: Bearer realm="example", error="invalid_token"', "Bearer abc123",  # too short to tell
    "OAuth 2.0 Bearer Token Usage (RFC 6750)",
])
def test_the_word_bearer_before_a_word_or_a_short_token_is_kept(text: str) -> None:
    assert sanitize_text(text) == text


@pytest.mark.parametrize(("text", "shown"), [
    ("git clone https://0123456789abcdef0123456789abcdef01234567@github.com/o/r.git",
     f"git clone https://{R}@github.com/o/r.git"),
    ("https://abc123def456abc123def456@o1.ingest.sentry.io/5", f"https://{R}@o1.ingest.sentry.io/5"),
])
def test_a_token_as_a_urls_user_is_redacted(text: str, shown: str) -> None:
    redacts(text, shown)


@pytest.mark.parametrize("text", [
    "git@github.com:o/r.git", "ssh://git@github.com/o/r", "https://bob@example.com/x",
    "https://deploy-user@host/x", "mailto://release-manager-team@example.com", "https://user_2024@h/x",
])
def test_a_user_name_in_a_url_is_kept(text: str) -> None:
    assert sanitize_text(text) == text


@pytest.mark.parametrize(("text", "shown"), [
    ("curl -u bob:hunter2 https://x", f"curl -u bob:{R} https://x"),
    ("curl --user bob:hunter2 https://x", f"curl --user bob:{R} https://x"),
    ("curl --user=bob:hunter2 https://x", f"curl --user=bob:{R} https://x"),
    ("curl -U proxy:hunter2 --proxy-user me:pw2 x", f"curl -U proxy:{R} --proxy-user me:{R} x"),
    ("curl -u 'bob:p w' x", f"curl -u 'bob:{R}' x"),
    ("sshpass -p hunter2 ssh host", f"sshpass -p {R} ssh host"),
    ("sshpass -p'hunter 2' ssh host", f"sshpass -p'{R}' ssh host"),
    ("mysql -u root -phunter2 app", f"mysql -u root -p{R} app"),
    ("/usr/bin/mysqldump -h db --port=3306 -phunter2 app", f"/usr/bin/mysqldump -h db --port=3306 -p{R} app"),
])
def test_a_password_given_on_a_command_line_is_redacted(text: str, shown: str) -> None:
    redacts(text, shown)


@pytest.mark.parametrize("text", [
    "docker run -u 1000:1000 img", "docker run --user 1000:1000 img", "sudo -u bob ls", "git push -u origin main",
    "sort -u a.txt", "mysql -u root -p app", "mysql -P3306 -h db app", "ssh -p22 host", "cp -pr a b",
    "mkdir -p x", "tar -pxf a.tar",
])
def test_command_lines_without_a_password_are_kept(text: str) -> None:
    assert sanitize_text(text) == text


@pytest.mark.parametrize(("text", "shown"), [
    ("machine api.example.com login bob password hunter2", f"machine api.example.com login bob password {R}"),
    ("machine h\n  login bob\n  password hunter2\n", f"machine h\n  login bob\n  password {R}\n"),
    ("default login anonymous password me@example.com", f"default login anonymous password {R}"),
    ("machine h password hunter2 login bob", f"machine h password {R} login bob"),
    ('{"netrc": "machine h login bob password hunter2"}', f'{{"netrc": "machine h login bob password {R}"}}'),
    ("machine h port 443 login bob account x password 'hunter 2'",
     f"machine h port 443 login bob account x password '{R}'"),
])
def test_a_netrc_password_is_redacted(text: str, shown: str) -> None:
    redacts(text, shown)


@pytest.mark.parametrize("text", [
    "the password policy was updated", "login with your password first", "reset the password hint",
    "login failed: password mismatch", "account bob password changed", "the default password is admin",
])
def test_the_word_password_before_a_word_outside_a_netrc_line_is_kept(text: str) -> None:
    assert sanitize_text(text) == text


def test_json_shaped_text_with_new_shapes_stays_valid_json() -> None:
    line = json.dumps({"cmd": "curl -u bob:pw1", "auth": "Bearer abc123def456", "n": 3})
    assert json.loads(sanitize_text(line)) == {"cmd": f"curl -u bob:{R}", "auth": f"Bearer {R}", "n": 3}


# --------------------------------------------------------------------------- linear time

@pytest.mark.slow
@pytest.mark.parametrize("big", [
    pytest.param('"password"=>' * 420_000, id="fat-arrows"),
    pytest.param("password: |\n" * 420_000, id="block-indicators"),
    pytest.param("password: | # " * 360_000, id="block-indicators-with-comments"),
    pytest.param("password: |\r" * 420_000, id="block-indicators-cr"),
    pytest.param("password: |\n" + "  x\n" * 1_250_000, id="one-long-block"),
    pytest.param("password: |\n\n" * 400_000, id="blank-lines"),
    pytest.param("password_" * 560_000, id="key-suffixes"),
    pytest.param("bearer " * 720_000, id="bearers"),
    pytest.param("bearer " + "a" * 5_000_000, id="bearer-long-run"),
    pytest.param("https://" + "a1" * 2_500_000 + " @", id="url-user-run"),
    pytest.param("://a1" * 1_000_000 + "@", id="url-starts"),
    pytest.param("curl -u " * 630_000, id="curl-flags"),
    pytest.param("-u a" * 1_250_000 + ":", id="curl-users"),
    pytest.param("mysql " * 840_000 + "-p", id="mysqls"),
    pytest.param("x/mysql " * 630_000 + "-p", id="mysql-paths"),
    pytest.param("mysql " + "a " * 2_500_000 + "-p", id="mysql-args"),
    pytest.param("sshpass -p" * 500_000, id="sshpass"),
    pytest.param("machine a password " * 260_000, id="netrc"),
    pytest.param("machine " * 630_000 + "password", id="machines"),
    pytest.param("machine a" + " login b" * 620_000 + " password", id="netrc-fields"),
    pytest.param("default login " * 360_000 + "password", id="defaults"),
    pytest.param("default login x/default" * 210_000 + " password", id="defaults-in-values"),
    pytest.param('default login x"default' * 210_000 + " password", id="defaults-after-quotes"),
    pytest.param("SG." * 1_700_000, id="sendgrid-starts"),
    pytest.param("sk_live_" + "a" * 5_000_000 + "_", id="stripe-run"),
])
def test_five_megabytes_of_the_new_shapes_are_sanitized_in_linear_time(big: str) -> None:
    assert len(big) >= 4_800_000
    half = halved(big)
    linear_timed(lambda: sanitize_text(half), lambda: sanitize_text(big))


@pytest.mark.slow
def test_many_name_value_pairs_and_suffixed_keys_are_sanitized_in_linear_time() -> None:
    def output(n: int) -> dict:
        return {"env": [{"name": f"DB_PASSWORD_{i}", "value": f"v{i}"} for i in range(n)],
                **{f"k{i} password: ": i for i in range(n)}}

    half, full = output(10_000), output(20_000)
    out = linear_timed(lambda: sanitize_obj(half), lambda: sanitize_obj(full))
    assert out["env"][7] == {"name": "DB_PASSWORD_7", "value": R} and out["k7 password: "] == R
