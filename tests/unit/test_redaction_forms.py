"""Spec for the secrets recognised by where they stand rather than by a key on their own line or a known shape
(test_security.py and test_security_shapes.py have those): a value on the lines under its key, the short key names
``pass`` and ``pw``, a bare ``Basic`` credential, an AWS secret access key beside its key id, and in structures the
lists of name/value pairs and argument lists; and the ordinary text and data each of them must leave alone."""
from __future__ import annotations

import json
from typing import Any

import pytest

from helpers import halved, linear_timed, redacts
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.security import REDACTED, sanitize_obj, sanitize_text

R = REDACTED
AWS_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS's documented example: 40 of [A-Za-z0-9/+]
SHA1 = "0123456789abcdef0123456789abcdef01234567"  # 40 characters too: a commit, no secret


# --------------------------------------------------------------------------- a value on the lines under its key

@pytest.mark.parametrize(("text", "shown"), [
    ("password:\n  hunter2\nuser: bob", f"password:\n  {R}\nuser: bob"),  # YAML: a plain value on the next line
    ("db:\n  password:\n    hunter2\n    more\n  user: bob\n", f"db:\n  password:\n    {R}\n  user: bob\n"),
    ("- token:\n    abc123\n- name: x", f"- token:\n    {R}\n- name: x"),
    ("[db]\npassword =\n    hunter2\nhost = db", f"[db]\npassword =\n    {R}\nhost = db"),  # INI continuation
    ("Password:\nhunter2\n", f"Password:\n{R}\n"),  # a prompt and what was typed at it
    ("Password:\r\nhunter2\r\nexit 0", f"Password:\r\n{R}\r\nexit 0"),
    ("  DB_PASSWORD: \n  hunter2", f"  DB_PASSWORD: \n  {R}"),
    ('"api_key":\n  "abc123"', f'"api_key":\n  {R}'),
    ("password:\n  min_length: 8\nuser: bob", f"password:\n  {R}\nuser: bob"),  # under the key: as in an object
    ("Password:\r\nPassword:Password:", f"Password:\r\nPassword:{R}"),  # a key of its own: redacted as one
    ("Password:\ntoken='a b'", f"Password:\ntoken='{R}'"),
])
def test_a_value_on_the_lines_under_a_key_that_ends_its_line_is_redacted(text: str, shown: str) -> None:
    """``password:`` then a line break kept the value below it: no value followed the separator on its line."""
    redacts(text, shown)


@pytest.mark.parametrize("text", [
    "PASSWORD=\nUSER=bob",  # .env: an empty assignment, then the next variable
    "password=\nhunter2",  # an assignment ends its line: what follows is another line, not its value
    "password=\n[section]\nkey = x",
    "password:\nuser: bob",  # YAML: an empty value, then the next key
    "Password:\nUsername: bob",
    "token:\ncount: 5",
    "Password:\nusername:",
    "if not password:\n        raise ValueError('missing')",  # code: the key does not begin its line
    "class Password:\n    pass",
    "Enter your password:\nThe next step is to log in.",  # prose: the next line is words
    "Password:\nclick the link we sent you",
    "password:",
    "password:\n",
])
def test_an_empty_value_ending_its_line_takes_nothing_from_the_next_line_that_is_not_its_value(text: str) -> None:
    assert sanitize_text(text) == text


# ------------------------------------------------------------------- a key word's value that is a list or an object

CREDENTIALS = {"Credentials": {"AccessKeyId": AWS_ID, "SecretAccessKey": AWS_SECRET, "Expiration": "2026-12-07"}}


@pytest.mark.parametrize(("text", "shown"), [
    ('{"api_keys": ["k1", "k2"]}', f'{{"api_keys": "{R}"}}'),  # JSON stays JSON, as json.dumps(sanitize_obj(...))
    (json.dumps(CREDENTIALS), json.dumps({"Credentials": R})),  # ``aws sts assume-role``: the object whole
    (json.dumps(CREDENTIALS, indent=4), json.dumps({"Credentials": R}, indent=4)),
    ('{"secret": [1, {"a": "]}"}], "n": 2}', f'{{"secret": "{R}", "n": 2}}'),  # numbers; a bracket in a string
    ("{'api_keys': ['k1', 'k2']}", f"{{'api_keys': '{R}'}}"),  # repr: in its quotes
    ('{\\"api_keys\\": [\\"k1\\", \\"k]\\"]}', f'{{\\"api_keys\\": \\"{R}\\"}}'),  # JSON-escaped
    ('api_keys=["k1", "k2"] next', f"api_keys={R} next"),  # a bare key: the marker as a bare value
    ("password: [a, b]\nuser: bob", f"password: {R}\nuser: bob"),  # YAML's flow sequence
    ('{"api_keys": ["k1", "k2"', f'{{"api_keys": "{R}"'),  # a text cut inside it: to its end
    ('{"api_keys": [], "token": {}}', '{"api_keys": [], "token": {}}'),  # empty: kept, as a structure keeps it
    ('tokens=["abc123", "def456"]', 'tokens=["abc123", "def456"]'),  # ``tokens`` (``max_tokens``) is no key word
    ("{'api_key': ('k1', 'k2')}", f"{{'api_key': '{R}'}}"),  # a tuple in ``repr``: as repr(sanitize_obj(...))
    ("{'api_key': ('k1', ['k2', ')'], (('k3',),))}", f"{{'api_key': '{R}'}}"),  # nested; a ``)`` in a string
    ("api_key=('k1', 'k2'), timeout=3", f"api_key={R}, timeout=3"),  # a keyword argument
    ("API_KEYS = ('k1', 'k2')", f"API_KEYS = {R}"),  # an assignment
    ('API_KEYS=( "k1" b )\nNEXT=1', f"API_KEYS={R}\nNEXT=1"),  # a shell array
    ('API_KEYS=(\n  "k1"\n  "k2"\n)\nNEXT=1', f"API_KEYS={R}\nNEXT=1"),  # over several lines
    ("{'api_key': (), 'token': ('a',)}", f"{{'api_key': (), 'token': '{R}'}}"),  # empty: kept
    ("{'api_key': ('k1', 'k2'", f"{{'api_key': '{R}'"),  # a text cut inside it: to its end
    ("{'api_key': [('k1', 'k2')]}", f"{{'api_key': '{R}'}}"),  # a tuple in a list
    ("password=[a), b] next", f"password={R} next"),  # a ``)`` in a list is no bracket (but in a tuple)
])
def test_a_key_words_value_that_is_a_list_an_object_or_a_tuple_is_redacted_whole(text: str, shown: str) -> None:
    """``KV``'s bare value was the ``[``, ``{`` or ``(`` alone: ``{"api_keys": [REDACTED]"k1", "k2"]}`` kept the
    values and broke the brackets."""
    redacts(text, shown)


@pytest.mark.parametrize(("text", "shown"), [
    ("password (see below)", "password (see below)"),  # no separator: prose
    ("token (optional): the token to use", "token (optional): the token to use"),
    ("password: (see below), then (step 2) more", f"password: {R} below), then (step 2) more"),  # as before
    ("token: (optional", f"token: {R}"),
])
def test_a_parenthesis_after_a_bare_keys_colon_is_prose_not_a_tuple(text: str, shown: str) -> None:
    """A ``(`` opens a tuple only after an ``=`` or a quoted key's separator (``repr``'s ``'k': (``, a shell array's
    ``K=(``): after a bare key's ``:`` it is a label's aside, its bare value redacted as before, no look to a far
    ``)`` (or, with none, to the text's end)."""
    redacts(text, shown)


@pytest.mark.parametrize("obj", [
    {"api_key": ("k1", "s3cr3t")}, {"a": 1, "secrets": ("x", ["s3cr3t", ("y",)]), "b": "c"},
    {"password": (), "token": ("s3cr3t",)}, {"env": [("api_key", ("a", "s3cr3t"))]},
    {"name": "api_key", "value": ("a", "s3cr3t")}, {"name": "auth", "value": ("bob", "s3cr3t")},
])
def test_a_tuple_under_a_secrets_key_is_redacted_in_a_structure_and_in_its_repr_alike(obj: dict) -> None:
    """As ``sanitize_obj`` redacts a tuple under a secret's key whole, so does the text of its ``repr``."""
    assert "s3cr3t" not in repr(sanitize_obj(obj))
    assert sanitize_text(repr(obj)) == repr(sanitize_obj(obj))


def _in_a_json_string(obj: Any) -> str:
    """``obj`` as JSON, written as a JSON string's value (a handler's log line holding a JSON document)."""
    return json.dumps({"msg": json.dumps(obj)})


@pytest.mark.parametrize("obj", [
    {"password": 'ab"hunter2'},  # a quote in the value: ``\\\"`` in the text
    {"password": 'ab\\"hunter2'},  # a backslash and a quote
    {"Authorization": 'Bearer ab"hunter2'},
    {"api_keys": ['k"]', "hunter2"]},  # a quote and a bracket in a string of the list
    {"name": "api_key", "value": ['k"]', "hunter2"]},
    {"value": 'ab"hunter2', "name": "api_key"},
    [["api_key", 'ab"hunter2']],
    {"auth": ["bob", 'ab"hunter2']},
])
def test_a_quote_escaped_in_json_escaped_text_does_not_end_a_value(obj: Any) -> None:
    """In JSON written as a JSON string, a quote inside a value is ``\\\"``: its ``\\`` was read as an escape of its
    own and the ``\"`` after it as the value's end, so the rest of the value was kept."""
    text = _in_a_json_string(obj)
    shown = sanitize_text(text)
    assert "hunter2" in text and "hunter2" not in shown
    inner = json.loads(shown)["msg"]  # JSON in JSON still
    assert R in inner and json.loads(inner) is not None


@pytest.mark.parametrize(("text", "shown"), [
    (r'{"config": "db:\n  password:\n    hunter2\n    more\n  user: bob"}',
     rf'{{"config": "db:\n  password:\n    {R}\n  user: bob"}}'),  # a YAML document in a JSON string
    (r'{"config": "password: |\n  hunter2\n\n  more\nuser: bob\n"}',
     rf'{{"config": "password: |\n  {R}\nuser: bob\n"}}'),
    (r"{'config': 'password:\r\n  hunter2'}", rf"{{'config': 'password:\r\n  {R}'}}"),  # Python's repr, CRLF
    (r'{"log": "Password:\nhunter2\nok"}', rf'{{"log": "Password:\n{R}\nok"}}'),  # a prompt
    (r'"{\"config\": \"password:\\n  hunter2\\n  it\\\"s\\nuser: bob\"}"',  # JSON in JSON: \\n, and \" ends it
     rf'"{{\"config\": \"password:\\n  {R}\\nuser: bob\"}}"'),
    (r'{"a": "password:\n  hunter2", "b": "x"}', rf'{{"a": "password:\n  {R}", "b": "x"}}'),  # the string ends it
    (r'{"a": "password:\n  it\'s \"hunter2\"\nuser: bob"}', rf'{{"a": "password:\n  {R}\nuser: bob"}}'),
    (r'{"password": "line1\nline2"}', rf'{{"password": "{R}"}}'),  # quoted: redacted before too
    (r'\"password\":\"x\"', rf'\"password\":\"{R}\"'),
])
def test_a_value_on_the_lines_under_its_key_in_json_escaped_text_is_redacted(text: str, shown: str) -> None:
    r"""JSON and ``repr`` write a line break as ``\n``: the value under its key is the escaped lines below it."""
    redacts(text, shown)


@pytest.mark.parametrize("text", [
    r'{"config": "password:\nuser: bob"}',  # YAML's empty value, then the next key
    r'{"config": "Password:\nclick the link"}',
    r'"a\\npassword:\\nuser: bob"',
])
def test_an_empty_value_in_json_escaped_text_takes_nothing_from_the_next_line(text: str) -> None:
    assert sanitize_text(text) == text


# --------------------------------------------------------------------------- the short key names pass and pw

@pytest.mark.parametrize(("text", "shown"), [
    ("pass=hunter2", f"pass={R}"), ("PASS = hunter2", f"PASS = {R}"), ("pw=hunter2", f"pw={R}"),
    ("https://h/login?user=bob&pass=hunter2&next=/", f"https://h/login?user=bob&pass={R}&next=/"),
    ('{"user": "bob", "pass": "hunter2"}', f'{{"user": "bob", "pass": "{R}"}}'),
    ("{'pw': 'hunter2'}", f"{{'pw': '{R}'}}"), ("'pass' => 'hunter2'", f"'pass' => '{R}'"),
    ("db_pw=hunter2 smtp-pw=x2", f"db_pw={R} smtp-pw={R}"), ("--pass=hunter2", f"--pass={R}"),
])
def test_pass_and_pw_are_keys_in_an_assignment_or_as_a_quoted_key(text: str, shown: str) -> None:
    redacts(text, shown)


@pytest.mark.parametrize("text", [
    "pass=12 fail=0", "pass=3.5%", "pass=true", '{"pass": 12, "fail": 0}', '{"pass":12}', "PASS: test_parse",
    "--- PASS: TestClaim (0.00s)", "pass: 3", "pw: 5", "bypass=1", "compass=north", "passenger=bob",
    "monkey=banana", "keyboard=us", "npw=4", "prompt_tokens=12", "key=uploads/report.txt", "sorted(x, key=len)",
    "--key nightly-2026-12-07", "we pass the token along", "5 passed, 1 failed",
])
def test_pass_and_pw_as_a_count_a_label_or_part_of_a_word_and_key_are_kept(text: str) -> None:
    """``pass=12`` and ``PASS: test_x`` are test results; ``key=`` is any key of a config, a store, a sort."""
    assert sanitize_text(text) == text


@pytest.mark.parametrize(("obj", "shown"), [
    ({"user": "bob", "pass": "hunter2"}, {"user": "bob", "pass": R}),
    ({"PW": "hunter2"}, {"PW": R}), ({"smtp_pw": "hunter2"}, {"smtp_pw": R}),
    ({"pass": 12, "fail": 0}, {"pass": 12, "fail": 0}), ({"pass": "3"}, {"pass": "3"}),
    ({"pass": ["test_a", "test_b"]}, {"pass": ["test_a", "test_b"]}), ({"pass": True}, {"pass": True}),
    ({"bypass": "x", "passenger": "bob", "key": "a/b", "monkey": "x", "keyboard": "us"},
     {"bypass": "x", "passenger": "bob", "key": "a/b", "monkey": "x", "keyboard": "us"}),
])
def test_a_key_named_pass_or_pw_hides_a_text_value_that_is_no_count(obj: dict, shown: dict) -> None:
    assert sanitize_obj(obj) == shown


# ------------------------------------------------------------------- --pass, OpenSSL's pass:, auth=user:password

@pytest.mark.parametrize(("text", "shown"), [
    ("redis-cli --pass hunter2 ping", f"redis-cli --pass {R} ping"),
    ("tool -pass 'two words' -v", f"tool -pass '{R}' -v"), ("x --smtp-pass hunter2", f"x --smtp-pass {R}"),
    ("openssl enc -aes256 -pass pass:hunter2 -in a", f"openssl enc -aes256 -pass pass:{R} -in a"),
    ("openssl pkcs12 -passin pass:a1 -passout PASS:b2", f"openssl pkcs12 -passin pass:{R} -passout PASS:{R}"),
    ("openssl rsa -passin 'pass:two words'", f"openssl rsa -passin '{R}'"),
    ("auth=bob:hunter2", f"auth={R}"), ("AUTH: bob:hunter2", f"AUTH: {R}"),
    ("http --auth bob:hunter2 x", f"http --auth {R} x"),
    ('{"auths": {"ghcr.io": {"auth": "Ym9iOmh1bnRlcjI="}}}',  # Docker's config.json
     f'{{"auths": {{"ghcr.io": {{"auth": "{R}"}}}}}}'),
    ("_auth=Ym9iOmh1bnRlcjI=", f"_auth={R}"), ("proxy_auth = 'bob:pw'", f"proxy_auth = '{R}'"),  # npm's .npmrc
])
def test_a_pass_flag_openssls_pass_source_and_an_auth_user_and_password_are_redacted(text: str, shown: str) -> None:
    redacts(text, shown)


@pytest.mark.parametrize("text", [
    "ffmpeg -i in.mp4 -pass 1 -f null /dev/null", "openssl enc -pass env:KEY -in a", "openssl rsa -passin file:/run/pw",
    "openssl rsa -passin fd:3", "openssl rsa -passin stdin", "--bypass x", "auth=none", "auth=ldap", "auth: true",
    "AUTH=basic", "author: bob", "oauth=x:y", "auth_method=ldap:sha", "auth=host:389", "the auth: failed",
    "auth=dGVzdA==",  # "test": no user:password
])
def test_pass_flags_naming_where_a_password_is_and_auth_settings_are_kept(text: str) -> None:
    assert sanitize_text(text) == text


# ------------------------------------------------------------- Python's auth=(user, password), as requests takes it

@pytest.mark.parametrize(("text", "shown"), [
    ("requests.get(url, auth=('bob', 'hunter2'))", f"requests.get(url, auth=('bob', '{R}'))"),
    ('httpx.get(url, auth=("bob", "two words"), timeout=5)', f'httpx.get(url, auth=("bob", "{R}"), timeout=5)'),
    ("session.auth = (USER, 'hunter2')", f"session.auth = (USER, '{R}')"),
    ("auth=HTTPBasicAuth('bob', 'hunter2')", f"auth=HTTPBasicAuth('bob', '{R}')"),
    ("auth=requests.auth.HTTPDigestAuth( 'bob' , 'hunter2' )", f"auth=requests.auth.HTTPDigestAuth( 'bob' , '{R}' )"),
    ("{'url': 'x', 'auth': ('bob', 'hunter2')}", f"{{'url': 'x', 'auth': ('bob', '{R}')}}"),  # a dict's repr
    ("AUTH=('bob', 'hunter2')", f"AUTH=('bob', '{R}')"),
])
def test_pythons_auth_tuple_of_a_user_and_a_password_has_its_password_redacted(text: str, shown: str) -> None:
    """requests, httpx and aiohttp take ``auth=(user, password)``: the password is the tuple's second string."""
    redacts(text, shown)


@pytest.mark.parametrize("text", [
    "requests.get(url, auth=(user, password))", "auth=('bob', password)", "auth=('bob',)", "auth=(None, None)",
    "auth=token_auth(x)", "auth = ()",
])
def test_an_auth_tuple_whose_password_is_no_string_written_there_is_kept(text: str) -> None:
    assert sanitize_text(text) == text


# a user and a password as a list of two under ``auth``: JSON's ``"auth": ["bob", "x"]``, a list's ``repr``
AUTH_PAIRS = [({"auth": ["bob", "hunter2"]}, {"auth": ["bob", R]}),
              ({"url": "x", "Auth": [" bob ", "two words"]}, {"url": "x", "Auth": [" bob ", R]}),
              ({"proxy_auth": ["admin", "password"]}, {"proxy_auth": ["admin", R]})]


@pytest.mark.parametrize(("text", "shown"), [
    *[(json.dumps(obj), json.dumps(shown)) for obj, shown in AUTH_PAIRS],
    ("{'auth': ['bob', 'hunter2']}", f"{{'auth': ['bob', '{R}']}}"),  # a dict's repr
    ("auth=[ 'bob' , 'hunter2' ]", f"auth=[ 'bob' , '{R}' ]"),
    ("auth = [USER, 'hunter2']", f"auth = [USER, '{R}']"),
    (json.dumps(json.dumps({"auth": ["bob", "hunter2"]})), json.dumps(json.dumps({"auth": ["bob", R]}))),  # quoted
    (json.dumps({"auth": ["bob", "hunter2"]}, indent=2), json.dumps({"auth": ["bob", R]}, indent=2)),
])
def test_an_auth_list_of_a_user_and_a_password_in_text_has_its_password_redacted(text: str, shown: str) -> None:
    """The tuple was redacted, the same pair as a JSON list (a client's config, ``auth=(u, p)`` written as JSON) kept
    its password."""
    redacts(text, shown)


@pytest.mark.parametrize("obj, shown", AUTH_PAIRS + [
    ({"auth": ("bob", "hunter2")}, {"auth": ("bob", R)}),
    ({"auth": ["bob", "sk-" + "a1" * 12]}, {"auth": ["bob", R]}),
])
def test_an_auth_list_of_a_user_and_a_password_in_a_structure_has_its_password_redacted(obj: Any, shown: Any) -> None:
    assert sanitize_obj(obj) == shown


@pytest.mark.parametrize("obj, shown", [
    ({"name": "auth", "value": ["bob", "hunter2"]}, {"name": "auth", "value": ["bob", R]}),  # a name/value object
    ([{"Key": "proxy_auth", "Value": ("bob", "hunter2")}], [{"Key": "proxy_auth", "Value": ("bob", R)}]),
    ([["url", "https://x"], ["auth", ["bob", "hunter2"]]], [["url", "https://x"], ["auth", ["bob", R]]]),  # items()
    ([("auth", ("bob", "hunter2"))], [("auth", ("bob", R))]),  # requests' and httpx's auth=(user, password)
    ({"auth": ["bob", "hunter2", "latin1"]}, {"auth": ["bob", R, "latin1"]}),  # aiohttp's BasicAuth, as JSON writes it
    ({"kwargs": {"auth": ("bob", "hunter2", "utf-8")}}, {"kwargs": {"auth": ("bob", R, "utf-8")}}),
])
def test_a_user_and_a_password_under_auth_as_a_pairs_value_or_with_an_encoding_has_its_password_redacted(
        obj: Any, shown: Any) -> None:
    """Under ``auth`` as an object's key the list was redacted; as the value of a name/value object, of a pair in a
    list of pairs (a call's keyword arguments as ``items()``), or with aiohttp's encoding after it, it was kept.
    (Docker's ``{"auths": {h: {"auth": b64}}}`` and ``{"username": u, "password": p}``, npm's ``_auth`` and
    ``_authToken``, requests' ``HTTPBasicAuth`` repr'd as ``password='x'`` were already redacted: key rules.)"""
    assert sanitize_obj(obj) == shown
    assert sanitize_obj(shown) == shown


def test_an_objects_key_none_is_no_name_value_pairs_value() -> None:
    """``None == None``: an object that is no name/value pair had its value under the key ``None`` redacted."""
    assert sanitize_obj({None: "kept", "password": "x"}) == {None: "kept", "password": R}


AUTH_METHOD_LISTS = [{"auth": ["basic", "digest"]}, {"auth": ["password", "publickey"]}, {"AUTH": ["Bearer", "NTLM"]},
                     {"auth": ["bob", "x", "y"]}, {"auth": ["bob"]}, {"auth": ["bob", ""]}, {"auth": ["bob", 12]},
                     {"auth": [["bob", "x"]]}, {"author": ["bob", "x"]}, {"oauth": ["bob", "x"]},
                     {"auth": ["basic", "digest", "utf-8"]}, {"auth": ["bob", "x", "latin2x"]},
                     {"name": "auth", "value": ["basic", "digest"]}, [["auth", ["bob"]]],
                     {"auth": ["bob", "x", "\x00"]}]  # no encoding's name: ``codecs.lookup`` raised ValueError


@pytest.mark.parametrize("obj", AUTH_METHOD_LISTS)
def test_a_list_under_auth_that_is_no_user_and_password_is_kept(obj: Any) -> None:
    """Two method names (``["basic", "digest"]``, SSH's ``["password", "publickey"]``), any other number of items, or
    a password that is no text written there: a setting."""
    assert sanitize_obj(obj) == obj
    assert sanitize_text(json.dumps(obj)) == json.dumps(obj)


@pytest.mark.parametrize("text", ["auth=[user, password]", "auth = ['bob', password]", "auth=[]", "auth: ['bob',]"])
def test_an_auth_list_whose_password_is_no_string_written_there_is_kept(text: str) -> None:
    assert sanitize_text(text) == text


@pytest.mark.parametrize(("obj", "shown"), [
    (["openssl", "pkcs12", "-passin", "pass:hunter2"], ["openssl", "pkcs12", "-passin", f"pass:{R}"]),
    (["redis-cli", "--pass", "hunter2"], ["redis-cli", "--pass", R]),
    (["ffmpeg", "-pass", "1", "-passlogfile", "x"], ["ffmpeg", "-pass", "1", "-passlogfile", "x"]),
    (["openssl", "enc", "-pass", "env:KEY"], ["openssl", "enc", "-pass", "env:KEY"]),
    ({"auths": {"ghcr.io": {"auth": "Ym9iOmh1bnRlcjI="}}}, {"auths": {"ghcr.io": {"auth": R}}}),
    ({"Auth": "bob:hunter2", "auth_mode": "x:y"}, {"Auth": R, "auth_mode": "x:y"}),
    ({"auth": "none", "oauth": "a:b"}, {"auth": "none", "oauth": "a:b"}),
    ([["AUTH", "bob:pw"]], [["AUTH", R]]),
])
def test_the_same_in_argument_lists_and_under_an_auth_key(obj: object, shown: object) -> None:
    assert sanitize_obj(obj) == shown


# --------------------------------------------------------------------------- Basic credentials without a header name

@pytest.mark.parametrize(("text", "shown"), [
    ("Basic dXNlcjpwYXNz", f"Basic {R}"),  # user:pass
    ("curl -H 'Basic YWxhZGRpbjpvcGVuc2VzYW1l' x", f"curl -H 'Basic {R}' x"),
    ('["Authorization", "basic dXNlcjpwYXNzd29yZA=="]', f'["Authorization", "basic {R}"]'),
    ("auth=Basic Ym9iOmh1bnRlcjI", f"auth=Basic {R}"),  # unpadded
])
def test_a_basic_credential_without_its_header_name_is_redacted(text: str, shown: str) -> None:
    redacts(text, shown)


@pytest.mark.parametrize("text", [
    "Basic setup 1", "Basic auth failed", "BASIC test", "Basic dGVzdA==",  # "test": no user:password
    'WWW-Authenticate: Basic realm="x"', "Basic support for YAML", "basic blocks",
])
def test_the_word_basic_before_anything_but_an_encoded_user_and_password_is_kept(text: str) -> None:
    assert sanitize_text(text) == text


# --------------------------------------------------------------------------- an AWS secret key beside its key id

@pytest.mark.parametrize(("text", "shown"), [
    (f"{AWS_ID} {AWS_SECRET}", f"{R} {R}"),
    (f"bob,,{AWS_ID},{AWS_SECRET},https://x.signin.aws.amazon.com/console",  # the console's credentials.csv
     f"bob,,{R},{R},https://x.signin.aws.amazon.com/console"),
    (f'{{"id": "{AWS_ID}", "key": "{AWS_SECRET}"}}\nnext', f'{{"id": "{R}", "key": "{R}"}}\nnext'),
    (f"export X={AWS_SECRET} Y={AWS_ID}", f"export X={R} Y={R}"),
])
def test_an_aws_secret_key_on_the_line_of_its_key_id_is_redacted(text: str, shown: str) -> None:
    redacts(text, shown)


@pytest.mark.parametrize(("text", "shown"), [
    (f"auth=('u', '{AWS_ID}') {AWS_SECRET}", f"auth=('u', '{R}') {R}"),
    (f"password={AWS_ID} {AWS_SECRET}", f"password={R} {R}"),
    (f"pw={AWS_ID} {AWS_SECRET}", f"pw={R} {R}"),
    (f"token: {AWS_ID} {AWS_SECRET}", f"token: {R} {R}"),
    (f"X-Api-Key: {AWS_ID} {AWS_SECRET}", f"X-Api-Key: {R} {R}"),
    (f"--password {AWS_ID} {AWS_SECRET}", f"--password {R} {R}"),
    (f"sshpass -p {AWS_ID} ssh {AWS_SECRET}", f"sshpass -p {R} ssh {R}"),
])
def test_an_aws_secret_key_is_redacted_when_its_key_id_is_a_keyed_value_redacted_first(text: str, shown: str) -> None:
    """The key id that tells the secret key is looked for in the text as given, before a key's value is redacted."""
    redacts(text, shown)


@pytest.mark.parametrize(("text", "shown"), [
    (f"{AWS_ID} password={AWS_SECRET}-tail.2024 next", f"{R} password={R} next"),
    (f"{AWS_ID} token: {AWS_SECRET}_v2", f"{R} token: {R}"),
    (f"{AWS_ID} {AWS_SECRET}~a/b+c=d next", f"{R} {R} next"),
    (f"{AWS_ID} {AWS_SECRET}%2Fmore", f"{R} {R}"),
    (f"{AWS_ID} {AWS_SECRET}.", f"{R} {R}"),
    (f"{AWS_ID},{AWS_SECRET},https://x.signin.aws.amazon.com", f"{R},{R},https://x.signin.aws.amazon.com"),
    (f'"{AWS_ID}", "{AWS_SECRET}"\n', f'"{R}", "{R}"\n'),  # JSON's line break is no part of it
    (f"{AWS_ID} {AWS_SECRET}-{AWS_SECRET[::-1]} {AWS_SECRET}", f"{R} {R} {R}"),  # one token, two keys: one marker
])
def test_an_aws_secret_key_followed_by_more_of_its_token_is_redacted_with_it(text: str, shown: str) -> None:
    """The secret key was redacted alone, the rest of its token kept (``password=<key>-tail``: the keyed rule, which
    took the whole value before the AWS look moved ahead of it, then met ``[REDACTED]`` and ended there)."""
    redacts(text, shown)


@pytest.mark.parametrize(("text", "shown"), [
    (AWS_SECRET, AWS_SECRET),  # alone it cannot be told from other data
    (f"{AWS_ID}\n{AWS_SECRET}", f"{R}\n{AWS_SECRET}"),  # another line
    (f"{AWS_ID} at commit {SHA1}", f"{R} at commit {SHA1}"),  # one case only: a hash
    (f"{AWS_ID} {AWS_SECRET}==", f"{R} {AWS_SECRET}=="),  # longer base64
    (f"{AWS_ID} {AWS_SECRET}x", f"{R} {AWS_SECRET}x"),
])
def test_forty_characters_elsewhere_or_of_one_case_are_kept(text: str, shown: str) -> None:
    assert sanitize_text(text) == shown


@pytest.mark.parametrize(("obj", "shown"), [
    ({"id": AWS_ID, "k": AWS_SECRET, "n": 1}, {"id": R, "k": R, "n": 1}),
    ([AWS_ID, AWS_SECRET], [R, R]),
    ({"id": AWS_ID, "sha": SHA1, "other": {"k": AWS_SECRET}}, {"id": R, "sha": SHA1, "other": {"k": AWS_SECRET}}),
])
def test_an_aws_secret_key_beside_its_key_id_in_one_object_or_list_is_redacted(obj: object, shown: object) -> None:
    assert sanitize_obj(obj) == shown


@pytest.mark.parametrize(("obj", "shown"), [
    ({"id": AWS_ID, "k": f"{AWS_SECRET}-tail.2024"}, {"id": R, "k": R}),
    ([AWS_ID, f"{AWS_SECRET}_v2"], [R, R]),
    ({"id": AWS_ID, "k": f"{AWS_SECRET}%2Fmore"}, {"id": R, "k": R}),
    ({"id": AWS_ID, "k": f"{AWS_SECRET}x", "e": f"{AWS_SECRET}==", "sha": f"{SHA1}-tail"},  # no secret key's token
     {"id": R, "k": f"{AWS_SECRET}x", "e": f"{AWS_SECRET}==", "sha": f"{SHA1}-tail"}),
])
def test_an_aws_secret_key_beside_its_key_id_in_a_structure_is_redacted_with_the_rest_of_its_token(
        obj: object, shown: object) -> None:
    """The string had to be the 40 characters alone (``{"id": "AKIA...", "k": "<key>-tail"}`` kept it), where text
    beside its id redacts the key with the rest of its token."""
    assert sanitize_obj(obj) == shown
    assert sanitize_obj(shown) == shown


# --------------------------------------------------------------------------- lists of pairs and argument lists

@pytest.mark.parametrize(("obj", "shown"), [
    ({"env": [["HOME", "/root"], ["DB_PASSWORD", "hunter2"]]}, {"env": [["HOME", "/root"], ["DB_PASSWORD", R]]}),
    ([("api_key", "hunter2"), ("region", "eu")], [("api_key", R), ("region", "eu")]),  # dict.items()
    ([["Authorization", "Bearer abc123def456"]], [["Authorization", R]]),
    ([["pass", "hunter2"], ["fail", "x"]], [["pass", R], ["fail", "x"]]),
    ([["password", ""], ["token", None]], [["password", ""], ["token", None]]),  # nothing to hide
    ({"words": ["DB_PASSWORD", "hunter2"]}, {"words": ["DB_PASSWORD", "hunter2"]}),  # one list of words, no pairs
    (["password", "reset"], ["password", "reset"]),
    ([["DB_PASSWORD", "x"], "HOME=/root"], [["DB_PASSWORD", "x"], "HOME=/root"]),  # not every item a pair
])
def test_the_value_of_a_pair_named_as_a_secret_in_a_list_of_pairs_is_redacted(obj: object, shown: object) -> None:
    assert sanitize_obj(obj) == shown


K8S_ENV = json.dumps({"env": [{"name": "HOME", "value": "/root"}, {"name": "DB_PASSWORD", "value": "hunter2"}]},
                     indent=2)
ENV_PAIRS = json.dumps([["HOME", "/root"], ["DB_PASSWORD", "hunter2"]], indent=2)


@pytest.mark.parametrize(("text", "shown"), [
    ('{"name": "DB_PASSWORD", "value": "hunter2"}', f'{{"name": "DB_PASSWORD", "value": "{R}"}}'),  # Kubernetes' env
    ('{"name": "auth", "value": "bob:x"}', f'{{"name": "auth", "value": "{R}"}}'),
    ('{"Key": "api_key", "Value": "x"}', f'{{"Key": "api_key", "Value": "{R}"}}'),  # AWS's tags, SSM's parameters
    ("{'name': 'smtp_pass', 'value': 'x'}", f"{{'name': 'smtp_pass', 'value': '{R}'}}"),  # Python's repr
    ('{\\"name\\": \\"token\\", \\"value\\": \\"x\\"}',  # in JSON
     f'{{\\"name\\": \\"token\\", \\"value\\": \\"{R}\\"}}'),
    (K8S_ENV, K8S_ENV.replace('"hunter2"', f'"{R}"')),  # indented over several lines
    ('[["DB_PASSWORD", "hunter2"]]', f'[["DB_PASSWORD", "{R}"]]'),
    ('[["HOME", "/root"], ["DB_PASSWORD", "hunter2"]]', f'[["HOME", "/root"], ["DB_PASSWORD", "{R}"]]'),
    (ENV_PAIRS, ENV_PAIRS.replace('"hunter2"', f'"{R}"')),
    ("dict_items([('api_key', 'x'), ('pass', 'y')])", f"dict_items([('api_key', '{R}'), ('pass', '{R}')])"),
    ("." * 2000 + '[["pass", "x"], ["auth", "bob:x"]]', "." * 2000 + f'[["pass", "{R}"], ["auth", "{R}"]]'),  # long
    (json.dumps({"name": "msg", "value": json.dumps({"name": "token", "value": "x"})}),  # in another's kept value
     json.dumps({"name": "msg", "value": json.dumps({"name": "token", "value": R})})),
    ("{\"name\": \"msg\", \"value\": \"{'value': 'x', 'name': 'db_pw'}\"}",
     f"{{\"name\": \"msg\", \"value\": \"{{'value': '{R}', 'name': 'db_pw'}}\"}}"),
    ('[["msg", "[[\'api_key\', \'x\']]"]]', f'[["msg", "[[\'api_key\', \'{R}\']]"]]'),
])
def test_a_name_value_pair_named_as_a_secret_in_json_text_has_its_value_redacted(text: str, shown: str) -> None:
    """As in a structure (``sanitize_obj``), where the same pairs are redacted: a job's log prints them as text."""
    redacts(text, shown)


@pytest.mark.parametrize("text", [
    '{"name": "token_count", "value": "3"}', '{"name": "pass", "value": "12"}', '{"name": "auth", "value": "none"}',
    '{"name": "HOME", "value": "/root"}', '{"name": "DB_PASSWORD", "value": ""}',
    '["password", "reset"]', '{"words": ["DB_PASSWORD", "hunter2"]}', 'print(x, ["password", "hunter2"])',
    '[["pass", "12"], ["fail", "0"]]', '{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db"}}}',
])
def test_a_name_value_pair_in_text_not_named_as_a_secret_or_no_pair_is_kept(text: str) -> None:
    assert sanitize_text(text) == text


K8S_POD_YAML = """spec:
  containers:
  - env:
    - name: HOME
      value: /root
    - name: DB_PASSWORD
      value: hunter2
    image: app:1
"""


@pytest.mark.parametrize(("text", "shown"), [
    ("- name: DB_PASSWORD\n  value: hunter2", f"- name: DB_PASSWORD\n  value: {R}"),  # kubectl get pod -o yaml
    ('- name: DB_PASSWORD\n  value: "hunter2"', f'- name: DB_PASSWORD\n  value: "{R}"'),
    ("- name: API_TOKEN\n  value: 'it''s x'\n", f"- name: API_TOKEN\n  value: '{R}'\n"),  # YAML's '' inside
    (K8S_POD_YAML, K8S_POD_YAML.replace("hunter2", R)),  # the indented block under ``env:``
    ('env:\r\n- name: "db_pass"\r\n  value: two words  \r\n', f'env:\r\n- name: "db_pass"\r\n  value: {R}  \r\n'),
    ("name: pw\nvalue: hunter2", f"name: pw\nvalue: {R}"),  # a mapping's keys, no list item
    ("- name: auth\n  value: bob:x", f"- name: auth\n  value: {R}"),
    ('- name: DB_PASSWORD\n  value: "not closed', f"- name: DB_PASSWORD\n  value: {R}"),
    ("- name: TLS_PRIVATE_KEY\n  value: |\n    line1\n    line2\n- name: HOME\n  value: /root",  # a block
     f"- name: TLS_PRIVATE_KEY\n  value: |\n    {R}\n- name: HOME\n  value: /root"),
    ("." * 2000 + "\n- name: smtp_pw\n  value: x", "." * 2000 + f"\n- name: smtp_pw\n  value: {R}"),  # long
])
def test_a_name_value_pair_named_as_a_secret_in_yaml_has_its_value_redacted(text: str, shown: str) -> None:
    """The same pair as the JSON text's above (its name judged alike), as Kubernetes' YAML prints an env list."""
    redacts(text, shown)


@pytest.mark.parametrize("text", [
    "- name: HOME\n  value: /root", "- name: token_count\n  value: 3", "- name: pass\n  value: '12'",
    "- name: auth\n  value: none", '- name: DB_PASSWORD\n  value: ""',
    "- name: DB_PASSWORD\n  valueFrom:\n    secretKeyRef:\n      name: db",
    "- name: DB_PASSWORD\n    value: hunter2",  # ``value:`` indented more: another mapping's
    "- name: DB_PASSWORD\nvalue: hunter2",  # indented less
    "hostname: DB_PASSWORD\nvalue: x", "x - name: DB_PASSWORD\n      value: y",  # ``name:`` not beginning its line
    "- name: DB_PASSWORD\n  value: |\n- name: HOME",  # a block indicator with no block under it
])
def test_a_name_value_pair_in_yaml_not_named_as_a_secret_or_not_aligned_is_kept(text: str) -> None:
    assert sanitize_text(text) == text


@pytest.mark.parametrize(("argv", "shown"), [
    (["mysql", "--password", "hunter2", "app"], ["mysql", "--password", R, "app"]),
    (["deploy", "--db-token", "two words"], ["deploy", "--db-token", R]),
    (["tool", "-api_key", "hunter2"], ["tool", "-api_key", R]),
    (["curl", "-u", "bob:hunter2", "https://x"], ["curl", "-u", f"bob:{R}", "https://x"]),
    (["curl", "--proxy-user", "me:pw2", "-U", "p:pw3", "x"], ["curl", "--proxy-user", f"me:{R}", "-U", f"p:{R}", "x"]),
    (["sshpass", "-p", "hunter2", "ssh", "h"], ["sshpass", "-p", R, "ssh", "h"]),
    (["/usr/bin/sshpass", "-phunter2", "ssh", "h"], ["/usr/bin/sshpass", f"-p{R}", "ssh", "h"]),
    (["mysql", "-u", "root", "-phunter2", "app"], ["mysql", "-u", "root", f"-p{R}", "app"]),
])
def test_the_value_after_a_secrets_flag_in_an_argument_list_is_redacted(argv: list, shown: list) -> None:
    assert sanitize_obj({"argv": argv}) == {"argv": shown}
    assert sanitize_obj(tuple(argv)) == tuple(shown)


@pytest.mark.parametrize("argv", [
    ["docker", "run", "-u", "1000:1000", "img"], ["git", "push", "-u", "origin", "main"], ["sudo", "-u", "bob", "ls"],
    ["mysql", "-p", "app"], ["ssh", "-p", "22", "h"], ["deploy", "--password", "--verbose"],
    ["run", "--max-tokens", "100"], ["x", "--password-file", "/run/pw"], ["mysql", "-P3306", "app"],
    ["echo", "-p", "x"], ["deploy", "--token", ""],
])
def test_argument_lists_without_a_secret_are_kept(argv: list) -> None:
    assert sanitize_obj({"argv": argv}) == {"argv": argv}


# what argument lists, lists of pairs and AWS keys are made of, and what may stand beside them
ITEMS = ["--password", "--db-token", "-u", "-U", "--user", "-p", "-phunter2", "sshpass", "/usr/bin/mysqldump", "mysql",
         "bob:pw", "1000:1000", "hunter2", "", AWS_ID, AWS_SECRET, f"{AWS_SECRET}-x", SHA1, "DB_PASSWORD", "pass", "PW",
         "12", "HOME", "x", "Basic dXNlcjpwYXNz", "password:\n  s1", R, "auth", "latin1"]
structures = st.recursive(
    st.one_of(st.sampled_from(ITEMS), st.none(), st.integers(0, 3)),
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.tuples(inner, inner),
                            st.dictionaries(st.sampled_from(ITEMS + ["name", "value"]), inner, max_size=4)),
    max_leaves=20)


@settings(max_examples=1500, deadline=None)
@given(structures)
def test_property_a_structure_looked_at_for_the_forms_it_may_hold_is_sanitized_as_by_a_walk_looking_for_all(
        obj: object) -> None:
    """``sanitize_obj`` looks for an argument list's flags, an AWS key id and a list of pairs only where the
    structure's JSON text holds them (``_Beside``): the same output as a walk looking for all of them everywhere;
    and sanitizing that output again leaves it as it is."""
    from orchestrator import redaction_objects

    once = sanitize_obj(obj)
    assert once == redaction_objects._sanitized(obj)  # noqa: SLF001 - the reference the look must equal
    assert sanitize_obj(once) == once


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(ITEMS), st.one_of(st.sampled_from(ITEMS), structures)), min_size=1,
                max_size=6), st.booleans())
def test_property_each_pair_of_a_list_of_pairs_is_walked_as_a_list_of_its_own_unless_named_as_a_secret(
        pairs: list, as_lists: bool) -> None:
    """The walk of a list of pairs sanitizes each pair itself (``_plain_pair``), not through a walk of it as a list:
    the same output as that walk."""
    from orchestrator import redaction_objects

    obj = [list(pair) if as_lists else pair for pair in pairs]
    expected = [type(pair)((sanitize_text(pair[0]), R)) if redaction_objects._secret_under(*pair)  # noqa: SLF001
                else type(pair)((sanitize_text(pair[0]), redaction_objects._password_hidden(*pair)))  # noqa: SLF001
                if redaction_objects._password_hidden(*pair) is not None  # noqa: SLF001
                else redaction_objects._sanitized(pair) for pair in obj]  # noqa: SLF001
    assert redaction_objects._sanitized(obj) == sanitize_obj(obj) == expected  # noqa: SLF001


# --------------------------------------------------------------------------- linear time

@pytest.mark.slow
@pytest.mark.parametrize("big", [
    pytest.param("password:\n" * 500_000, id="keys-ending-lines"),
    pytest.param("password:\n" + "  x\n" * 1_250_000, id="one-long-value-below"),
    pytest.param("Password:\n" + "a" * 5_000_000 + ":", id="one-long-token-below"),
    pytest.param("- password:\n" * 420_000, id="list-items"),
    pytest.param("  " * 2_500_000 + "password:\nx", id="long-indent"),
    pytest.param("pass=" * 1_000_000, id="short-keys"),
    pytest.param("pw=" + "1" * 5_000_000 + "x", id="short-key-long-value"),
    pytest.param("basic " * 840_000, id="basics"),
    pytest.param("basic " + "QUJD" * 1_250_000, id="basic-long-run"),
    pytest.param(f"{AWS_ID} " * 240_000, id="aws-ids"),
    pytest.param(f"{AWS_ID} " + f"{AWS_SECRET}x " * 115_000, id="aws-id-and-lookalikes"),
    pytest.param(f"{AWS_ID}\n" * 240_000, id="aws-ids-on-lines"),
    pytest.param(f"{AWS_ID} " + f"{AWS_SECRET}-" * 120_000, id="aws-secrets-in-one-token"),
    pytest.param(f"{AWS_ID} " + f"{AWS_SECRET}- " * 120_000, id="aws-secrets-each-with-a-rest"),
    pytest.param("password:\\n" * 450_000, id="escaped-keys-ending-lines"),
    pytest.param("password:\\n" + "  x\\n" * 1_000_000, id="escaped-long-value-below"),
    pytest.param("password: |\\n\\n" * 320_000, id="escaped-blank-lines"),
    pytest.param("password:" + "\\" * 5_000_000 + "n", id="escaped-deep-break"),
    pytest.param("- password:\\n  " * 320_000, id="escaped-list-items"),
    pytest.param("-pass " * 840_000, id="pass-flags"), pytest.param("--a" * 1_700_000 + "-pass", id="a-long-flag"),
    pytest.param("auth=" * 1_000_000, id="auths"), pytest.param("auth=" + "QUJD" * 1_250_000, id="auth-long-base64"),
    pytest.param("auth=a:" * 720_000, id="auth-users"),
    pytest.param("auth=('a', " * 480_000, id="auth-tuples"), pytest.param("auth=" + "a" * 5_000_000, id="auth-name"),
    pytest.param("auth=(" + "a" * 5_000_000, id="auth-long-user"),
    pytest.param("auth=['a', " * 480_000, id="auth-lists"),
    pytest.param("auth=[" + " " * 5_000_000, id="auth-list-blanks"),
    pytest.param("auth: [\n  'a',\n  '" * 320_000, id="auth-lists-on-lines"),
    pytest.param("auth=['a', 'b'" + " " * 5_000_000, id="auth-list-unclosed"),
    pytest.param("auth=['a', 'b' " * 330_000, id="auth-lists-unclosed"),
    pytest.param('{"name": "password", "value": "x"}, ' * 140_000, id="name-value-objects"),
    pytest.param('"name": "password",' + " " * 5_000_000, id="name-value-blanks"),
    pytest.param('"name": "' + "a" * 5_000_000, id="name-value-long-name"),
    pytest.param('{"name": "password", "value": ' * 170_000, id="name-value-no-values"),
    pytest.param('[["password", "' + "a" * 5_000_000, id="pair-unclosed"),
    pytest.param('[["password", "a' * 340_000, id="pairs-unclosed"),
    pytest.param('[["password", "x"], ' * 250_000, id="pairs"),
    pytest.param("[" * 5_000_000, id="brackets"), pytest.param("], " * 1_700_000, id="pairs-ends"),
    pytest.param('{"password": [' * 370_000, id="keyed-lists-unclosed"),
    pytest.param('{"password": ["' * 340_000, id="keyed-lists-unclosed-in-strings"),
    pytest.param('{"password": []}, ' * 270_000, id="keyed-empty-lists"),
    pytest.param('{"password": ["a"]}, ' * 230_000, id="keyed-lists"),
    pytest.param("password=[" + "[" * 5_000_000, id="keyed-deep-list"),
    pytest.param("password=[" + "]" * 5_000_000, id="keyed-closings"),
    pytest.param("password=[" + " " * 5_000_000, id="keyed-list-blanks"),
    pytest.param('{"password": [' + '"\\"' * 1_700_000, id="keyed-escaped-quotes"),
    pytest.param('{\\"password\\": [\\"' * 280_000, id="keyed-escaped-lists-unclosed"),
    pytest.param("password" + " " * 5_000_000 + "= [", id="keyed-long-separator"),
    pytest.param("{'password': (" * 370_000, id="keyed-tuples-unclosed"),
    pytest.param("password=(" + "(" * 5_000_000, id="keyed-deep-tuple"),
    pytest.param("password=(" + ")" * 5_000_000, id="keyed-tuple-closings"),
    pytest.param("password: (" * 500_000, id="keyed-parentheses-after-colons"),
    pytest.param("password=[" + "(" * 5_000_000, id="keyed-list-of-parentheses"),
    pytest.param("||  SessionToken   |  x  ||\n" * 180_000, id="table-rows"),
    pytest.param("|" + "password " * 560_000, id="table-first-cell-of-key-words"),
    pytest.param("|password" + " " * 5_000_000 + "x", id="table-key-then-blanks"),
    pytest.param("|password|" + " " * 5_000_000 + "x", id="table-value-after-blanks"),
    pytest.param("|password| x" + " " * 5_000_000 + "|", id="table-value-then-blanks"),
    pytest.param("|" * 5_000_000 + "password|x", id="table-bars"),
    pytest.param("\n|password |" * 420_000, id="table-empty-values"),
    pytest.param("- name: password\n  value: x\n" * 175_000, id="yaml-pairs"),
    pytest.param("name: " * 840_000 + "password\nvalue: x", id="yaml-names-on-one-line"),
    pytest.param("- name: password\n" * 290_000, id="yaml-names-without-values"),
    pytest.param("name: password\n" + " " * 5_000_000 + "value: x", id="yaml-long-indent"),
    pytest.param("name: password\nvalue: \"" + "a" * 5_000_000, id="yaml-value-unclosed"),
    pytest.param("name: password\nvalue: '" + "a' " * 1_700_000, id="yaml-value-quotes"),
])
def test_five_megabytes_of_these_forms_are_sanitized_in_linear_time(big: str) -> None:
    assert len(big) >= 4_800_000
    half = halved(big)
    linear_timed(lambda: sanitize_text(half), lambda: sanitize_text(big))


@pytest.mark.slow
def test_long_argument_lists_and_lists_of_pairs_are_sanitized_in_linear_time() -> None:
    """20,000 items each: a look at every item before or after each one (quadratic) would take minutes."""
    def output(n: int) -> dict:
        return {"argv": ["--password", "x", "-u", "a:b", "-p"] * (n // 5) + ["sshpass"],
                "env": [["DB_PASSWORD", f"v{i}"] for i in range(n)], "ids": [AWS_ID, AWS_SECRET] * (n // 2)}

    half, full = output(10_000), output(20_000)
    out = linear_timed(lambda: sanitize_obj(half), lambda: sanitize_obj(full))
    assert out["argv"][1] == R and out["env"][7] == ["DB_PASSWORD", R] and out["ids"][1] == R
