"""Spec for a name/value pair written as JSON (or ``repr``) text in the shapes tools print besides Kubernetes' (which
test_redaction_forms.py has): its ``value`` before its ``name``, other fields between the two, and a value that is a
list or an object. Each is redacted by the same name rule as a structure's pair (``sanitize_obj``), and the ordinary
text and data beside them is left alone."""
from __future__ import annotations

import json

import pytest

from helpers import halved, linear_timed, redacts

from orchestrator.security import REDACTED, sanitize_obj, sanitize_text

R = REDACTED


# ``aws ssm get-parameter --with-decryption``: the parameter's name, then its type, then its value
SSM_PARAMETER = json.dumps({"Parameter": {"Name": "/prod/db_password", "Type": "SecureString", "Value": "hunter2",
                                          "Version": 3, "ARN": "arn:aws:ssm:eu-west-1:1:parameter/prod/db_password"}},
                           indent=4)


@pytest.mark.parametrize(("text", "shown"), [
    ('{"value": "s3cr3t", "name": "DB_PASSWORD"}', f'{{"value": "{R}", "name": "DB_PASSWORD"}}'),
    ('{"name": "DB_PASSWORD", "type": "x", "value": "s3cr3t"}',
     f'{{"name": "DB_PASSWORD", "type": "x", "value": "{R}"}}'),
    ('{"value": "s3cr3t", "type": "x", "n": 1, "key": "api_key"}',
     f'{{"value": "{R}", "type": "x", "n": 1, "key": "api_key"}}'),
    ('{"Key": "api_key", "Enabled": true, "Value": "s3cr3t"}',
     f'{{"Key": "api_key", "Enabled": true, "Value": "{R}"}}'),
    ("{'value': 's3cr3t', 'name': 'smtp_pass'}", f"{{'value': '{R}', 'name': 'smtp_pass'}}"),  # Python's repr
    ('{\\"value\\": \\"s3cr3t\\", \\"name\\": \\"token\\"}', f'{{\\"value\\": \\"{R}\\", \\"name\\": \\"token\\"}}'),
    ('{"value": "bob:x", "name": "auth"}', f'{{"value": "{R}", "name": "auth"}}'),
    (SSM_PARAMETER, SSM_PARAMETER.replace('"hunter2"', f'"{R}"')),  # indented, fields before and after the value
    ("." * 2000 + '{"value": "s3cr3t", "name": "pw"}', "." * 2000 + f'{{"value": "{R}", "name": "pw"}}'),  # long
])
def test_a_name_value_pair_in_text_whose_value_comes_first_or_has_fields_between_has_its_value_redacted(
        text: str, shown: str) -> None:
    """Only ``{"name": ..., "value": ...}`` side by side was redacted: the value first, or a field between them (SSM's
    ``Type``), kept it."""
    redacts(text, shown)


@pytest.mark.parametrize(("text", "shown"), [
    ('{"name": "api_key", "value": ["a", "b"]}', f'{{"name": "api_key", "value": "{R}"}}'),  # JSON stays JSON
    ('{"name": "DB_PASSWORD", "value": {"user": "u", "pw": "p"}}', f'{{"name": "DB_PASSWORD", "value": "{R}"}}'),
    ('{"name": "token", "value": [["a", "b]"], {"c": "d}"}]}, {"name": "HOME", "value": "/root"}',  # nested
     f'{{"name": "token", "value": "{R}"}}, {{"name": "HOME", "value": "/root"}}'),
    ('{"value": ["a", "b"], "name": "api_key"}', f'{{"value": "{R}", "name": "api_key"}}'),
    ('[["HOME", "/root"], ["api_key", ["a", "b"]]]', f'[["HOME", "/root"], ["api_key", "{R}"]]'),
    ('{\\"name\\": \\"token\\", \\"value\\": [\\"a]\\", \\"b\\"]}',
     f'{{\\"name\\": \\"token\\", \\"value\\": \\"{R}\\"}}'),
    (json.dumps({"env": [{"name": "API_KEYS", "value": ["k1", "k2"]}]}, indent=2),
     json.dumps({"env": [{"name": "API_KEYS", "value": R}]}, indent=2)),  # as json.dumps(sanitize_obj(...))
    ("{'name': 'api_key', 'value': ['a']}", f"{{'name': 'api_key', 'value': '{R}'}}"),  # repr: in its quotes
    ('{"name": "api_key", "value": []}', '{"name": "api_key", "value": []}'),  # empty: kept, as a structure keeps it
    ('{"name": "api_key", "value": ["a", "b"', f'{{"name": "api_key", "value": "{R}"'),  # a text cut inside it
    ('{"name": "auth", "value": ["bob", "x"]}', f'{{"name": "auth", "value": ["bob", "{R}"]}}'),  # its password
    ('[["auth", ["bob", "x"]]]', f'[["auth", ["bob", "{R}"]]]'),
    ('[["HOME", [["password", "x"]]]]', f'[["HOME", [["password", "{R}"]]]]'),  # a pair inside a kept value
    ('[["password", ["a"], "c"]]', f'[["password", "{R}", "c"]]'),  # a list after a secret's name: its value
    ("{'name': 'api_key', 'value': ('a', 'b')}", f"{{'name': 'api_key', 'value': '{R}'}}"),  # a tuple
    ("{'value': ('a', ')'), 'name': 'api_key'}", f"{{'value': '{R}', 'name': 'api_key'}}"),
    ("dict_items([('HOME', '/root'), ('api_key', ('a', 'b'))])", f"dict_items([('HOME', '/root'), ('api_key', '{R}')])"),
    ("{'name': 'auth', 'value': ('bob', 'x')}", f"{{'name': 'auth', 'value': ('bob', '{R}')}}"),  # its password
    ("{'name': 'api_key', 'value': ()}", "{'name': 'api_key', 'value': ()}"),  # empty: kept
])
def test_a_name_value_pairs_value_that_is_a_list_or_an_object_in_text_is_redacted(text: str, shown: str) -> None:
    """As a structure redacts anything under a secret's name (``{"name": "api_key", "value": ["a", "b"]}`` to
    ``sanitize_obj``), and hides the password of a user and a password under ``auth``: in text the value was kept."""
    redacts(text, shown)


@pytest.mark.parametrize("obj", [
    {"name": "api_key", "value": ["a", "s3cr3t"]}, {"value": "s3cr3t", "name": "DB_PASSWORD"},
    {"name": "DB_PASSWORD", "type": "x", "value": "s3cr3t"}, {"name": "auth", "value": ["bob", "s3cr3t"]},
    {"api_keys": ["a", "s3cr3t"]}, {"Credentials": {"AccessKeyId": "x", "SecretAccessKey": "s3cr3t"}, "n": []},
])
def test_the_same_pairs_in_a_structure_are_redacted_and_as_text_alike(obj: dict) -> None:
    """The rule the text's pairs follow, a structure's: no secret is left in its text either way, and the text
    redacted is the structure redacted, written as JSON."""
    assert "s3cr3t" not in json.dumps(sanitize_obj(obj))
    assert sanitize_text(json.dumps(obj)) == json.dumps(sanitize_obj(obj))
    assert "s3cr3t" not in sanitize_text(json.dumps(obj)) and "s3cr3t" not in sanitize_text(json.dumps(obj, indent=2))


@pytest.mark.parametrize("text", [
    '{"value": "x", "name": "HOME"}', '{"value": "12", "name": "pass"}', '{"value": "none", "name": "auth"}',
    '{"value": "", "name": "DB_PASSWORD"}', '{"value": "x"}, {"name": "DB_PASSWORD"}',  # two objects
    '{"value": "x", "other": {"name": "DB_PASSWORD"}}', '{"name": "HOME", "type": "x", "value": "/root"}',
    '{"name": "DB_PASSWORD", "name": "HOME", "value": "x"}',  # not the name beside the value
    '{"name": "pass", "value": ["test_a"]}', '{"name": "auth", "value": ["basic", "digest"]}',
    '{"name": "auth", "value": {"kind": "basic"}}', '{"name": "HOME", "value": ["a", "b"]}',
    '[["HOME", ["a", "b"]]]', '{"value": ["a", "b"], "name": "HOME"}',
    '{"value": ["a", "b"}, "name": "token"}',  # its bracket closed by another kind: no value, and no name after it
    'print(x, ["password", ["a"]])',
])
def test_such_a_pair_not_named_as_a_secret_or_no_pair_is_kept(text: str) -> None:
    assert sanitize_text(text) == text


def test_a_pair_of_a_short_name_opened_by_a_parenthesis_in_a_text_holding_no_other_bracket_is_redacted() -> None:
    """The gate for a short name's pairs asks for what a pair opens with (a list's ``[``, a tuple's ``(``): it asked
    for ``)`` from 2026-12-07 (redact6) to the review, and this text, redacted before, kept its password."""
    assert sanitize_text('"a"], ("db_pw", "hunter2"]') == '"a"], ("db_pw", "[REDACTED]"]'


@pytest.mark.slow
@pytest.mark.parametrize("big", [
    pytest.param('{"value": "password", ' * 220_000, id="values-without-names"),
    pytest.param('{"value": "x", "a": "password", ' * 160_000, id="values-and-fields-without-names"),
    pytest.param('{"value": "x"' + ', "a": "password"' * 300_000, id="one-value-many-fields"),
    pytest.param('{"name": "password"' + ', "a": "b"' * 480_000, id="one-name-many-fields"),
    pytest.param('{"name": "password", "a": 1, ' * 180_000, id="names-and-fields-without-values"),
    pytest.param('{"name": "password", "value": [' * 170_000, id="unclosed-lists"),
    pytest.param('{"name": "password", "value": ["' * 160_000, id="unclosed-lists-in-strings"),
    pytest.param('{"name": "password", "value": {"a": [' * 135_000, id="unclosed-nested"),
    pytest.param("password " + '{"value": [' * 440_000, id="unclosed-lists-value-first"),
    pytest.param('{"value": ["password"]' * 220_000, id="closed-lists-value-first"),
    pytest.param('[["password", [' * 340_000, id="unclosed-lists-of-pairs"),
    pytest.param('[["password", ["a"]' * 260_000, id="lists-of-pairs-not-ended"),
    pytest.param('{\\"name\\": \\"password\\", \\"value\\": [\\"' * 125_000, id="escaped-unclosed-lists"),
    pytest.param('{"name": "password", "value": [' + '"\\"' * 1_700_000, id="escaped-quotes-in-a-list"),
    pytest.param('{"name": "password", "value": [' + '[' * 5_000_000, id="deep-list"),
    pytest.param('{"name": "password", "value": [' + ']' * 5_000_000, id="closings"),
    pytest.param('token {"name": "a", "value": "x"}, ' * 180_000, id="kept-values"),
    pytest.param('token {"name": "a", "value": "' + ("{'name': 'a', 'value': '" + "x" * 40 + "'} ") * 74_000,
                 id="kept-values-in-a-kept-value"),
    pytest.param('token "name": "a", "value": "' + ("'name': 'a', 'value': '" + '\\"name\\": \\"a\\", \\"value\\": \\"')
                 * 100_000, id="kept-values-of-each-quote-nested"),
    pytest.param('token ' + '[["a", "' * 600_000, id="kept-pairs-in-kept-pairs"),
])
def test_five_megabytes_of_these_pairs_are_sanitized_in_linear_time(big: str) -> None:
    assert len(big) >= 4_800_000
    half = halved(big)
    linear_timed(lambda: sanitize_text(half), lambda: sanitize_text(big))
