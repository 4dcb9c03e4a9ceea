"""Spec for the AWS secrets told by their key id beside them (test_redaction_forms.py has the secret access key on
its id's line and alone beside it in a structure): a session token beside its id, in text and in a structure, and a
secret access key inside a note of one line beside its id in a structure. A session token under its name was
redacted already, by the key rules (``token`` ends ``aws_session_token``, ``SessionToken``): kept here as a guard."""
from __future__ import annotations

import pytest

from helpers import halved, linear_timed, redacts

from orchestrator.security import REDACTED, sanitize_obj, sanitize_text

R = REDACTED
KEY_ID, SESSION_KEY_ID = "AKIAIOSFODNN7EXAMPLE", "ASIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS's documented example: 40 of [A-Za-z0-9/+]
# what STS gives as a session token: base64 of a few hundred characters, both cases, ``/`` and ``+`` among them
TOKEN = ("IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD6tEXAMPLEyWd3/qkUoQcZkxhs7wz8S0Ga4Ml2Tf+"
         "VdAIgZ1lJyVGEXAMPLEmjQp+pgXY8L3fBkNBmd9qzO2mDe8TFcqmAIIQhAAGgwxMjM0NTY3ODkwMTIiDEXAMPLEtokenpartWx8kR0b==")
# AWS's own example of one (``aws sts get-session-token``'s documentation), 239 characters
DOCUMENTED_TOKEN = ("AQoEXAMPLEH4aoAH0gNCAPyJxz4BlCFFxWNE1OPTgk5TthT+FvwqnKwRcOIfrRh3c/LTo6UDdyJwOOvEVPvLXCrrrUtd"
                    "nniCEXAMPLE/IvU1dYUg2RVAJBanLiHb4IgRmpRV3zrkuWJOgQs8IZZaIv2BXIa2R4OlgkBN9bkUDNCJiBeb/AXlzBBko7b15f"
                    "jrBs2+cTQtpZ3CYWFXG8C5zqx37wnOE49mRl/+OtkIKGO7fAE")
SHA512 = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd4" \
         "7417a81a538327af927da3e"  # 128 of one case: a hash, no token


def _centred(text: str, width: int) -> str:
    """``text`` centred between two ``|`` in ``width`` columns, as awscli's table puts a title."""
    return ("|" + " " * (width // 2 - len(text) // 2 - 1) + text).ljust(width - 1) + "|"


def sts_table(fields: list[tuple[str, str]]) -> str:
    """``aws sts get-session-token --output table``'s ``Credentials`` as awscli (1.46) writes them where the token is
    wider than the terminal (80 columns when it writes to a log): the section turned vertical, a row a field, its
    name and its value between ``|``; the access key id on a row of its own (checked equal to awscli's output)."""
    width = max(len(value) for _name, value in fields) + 27  # the longest value, the columns' padding, the borders
    border = "|+" + "-" * 17 + "+" + "-" * (width - 22) + "+|"
    rows = [f"||  {name:<15}|  {value:<{width - 24}}||" for name, value in fields]
    return "\n".join(["-" * width, _centred("GetSessionToken", width), "+" + "-" * (width - 2) + "+",
                      "|" + _centred("Credentials", width - 2) + "|", border, *rows, border, ""])


STS_FIELDS = [("AccessKeyId", SESSION_KEY_ID), ("Expiration", "2026-12-07T22:00:00+00:00"),
              ("SecretAccessKey", SECRET), ("SessionToken", TOKEN)]



@pytest.mark.parametrize(("text", "shown"), [
    (f"CREDENTIALS\t{SESSION_KEY_ID}\t2026-12-07T22:00:00+00:00\t{SECRET}\t{TOKEN}",  # aws sts ... --output text
     f"CREDENTIALS\t{R}\t2026-12-07T22:00:00+00:00\t{R}\t{R}"),
    (f"{SESSION_KEY_ID},{SECRET},{TOKEN}\n", f"{R},{R},{R}\n"),
    (f'"{SESSION_KEY_ID}", "{TOKEN}"', f'"{R}", "{R}"'),
    (f"{KEY_ID} {DOCUMENTED_TOKEN}", f"{R} {R}"),
])
def test_an_aws_session_token_on_the_line_of_its_key_id_is_redacted(text: str, shown: str) -> None:
    """The secret access key beside the id was redacted, the session token after it kept."""
    redacts(text, shown)


@pytest.mark.parametrize(("text", "shown"), [
    (f"AWS_SESSION_TOKEN={TOKEN}", f"AWS_SESSION_TOKEN={R}"),
    (f"[default]\naws_access_key_id = {SESSION_KEY_ID}\naws_session_token = {TOKEN}\n",
     f"[default]\naws_access_key_id = {R}\naws_session_token = {R}\n"),
    (f'{{"AccessKeyId": "{SESSION_KEY_ID}", "SessionToken": "{TOKEN}"}}',
     f'{{"AccessKeyId": "{R}", "SessionToken": "{R}"}}'),
    (sts_table(STS_FIELDS),  # ``--output table``: each secret on its name's row, the id on another
     sts_table(STS_FIELDS).replace(SESSION_KEY_ID, R).replace(SECRET, R).replace(TOKEN, R)),
    ("| name | db_password | hunter2 |\n", "| name | db_password | hunter2 |\n"),  # not the row's first cell
    ("| db_password | hunter2 |\n|---|---|\n", f"| db_password | {R} |\n|---|---|\n"),  # a Markdown table's
])
def test_an_aws_session_token_under_its_name_is_redacted(text: str, shown: str) -> None:
    redacts(text, shown)


@pytest.mark.parametrize(("text", "shown"), [
    (TOKEN, TOKEN),  # alone it cannot be told from other data
    (f"{SESSION_KEY_ID}\n{TOKEN}", f"{R}\n{TOKEN}"),  # another line
    (f"{KEY_ID} sha512 {SHA512}", f"{R} sha512 {SHA512}"),  # one case: a hash
    (f"{KEY_ID} {TOKEN[:99]}", f"{R} {TOKEN[:99]}"),  # shorter than a token, longer than a secret key
    (f"{KEY_ID} {TOKEN}===", f"{R} {TOKEN}==="),
])
def test_base64_beside_a_key_id_that_is_no_session_token_is_kept(text: str, shown: str) -> None:
    assert sanitize_text(text) == shown


@pytest.mark.parametrize(("obj", "shown"), [
    ({"aws_access_key_id": KEY_ID, "note": f"secret is {SECRET} keep safe"},
     {"aws_access_key_id": R, "note": f"secret is {R} keep safe"}),
    ({"id": KEY_ID, "note": f"rotate {SECRET}-old, then password=x"},
     {"id": R, "note": f"rotate {R}, then password={R}"}),
    ([KEY_ID, f"rotated {SECRET} today"], [R, f"rotated {R} today"]),
    ({"AccessKeyId": SESSION_KEY_ID, "x": SECRET, "y": TOKEN}, {"AccessKeyId": R, "x": R, "y": R}),  # unnamed
    ([SESSION_KEY_ID, SECRET, TOKEN], [R, R, R]),
    ({"id": SESSION_KEY_ID, "note": f"token {TOKEN} until 22:00"}, {"id": R, "note": f"token {R} until 22:00"}),
])
def test_an_aws_secret_key_or_session_token_beside_its_key_id_in_a_structure_is_redacted(obj: object,
                                                                                           shown: object) -> None:
    """A string beside the id was redacted only when it was the secret access key (with the rest of its token) whole:
    in a note of several words, or as a session token, the secret was kept."""
    assert sanitize_obj(obj) == shown
    assert sanitize_obj(shown) == shown


@pytest.mark.parametrize("obj", [
    {"id": KEY_ID, "log": f"line one\nsecret {SECRET}"},  # a string of several lines: its own lines are looked at
    {"id": KEY_ID, "note": f"hash {SHA512}", "n": f"{SECRET}x"},
    {"id": KEY_ID, "other": {"note": f"secret is {SECRET}"}},  # not beside it: in another object
    {"note": f"secret is {SECRET}", "token_count": 3},
])
def test_a_string_not_beside_a_key_id_or_of_several_lines_keeps_what_looks_like_a_secret(obj: dict) -> None:
    shown = sanitize_obj(obj)
    assert {key: value for key, value in shown.items() if key != "id"} == {key: value for key, value in obj.items()
                                                                            if key != "id"}


@pytest.mark.slow
@pytest.mark.parametrize("big", [
    pytest.param(f"{KEY_ID} " + "aB" * 2_500_000, id="one-long-run"),
    pytest.param(f"{KEY_ID} " + ("aB" * 60 + "=== ") * 40_000, id="runs-padded-too-long"),
    pytest.param(f"{KEY_ID} " + ("aB" * 60 + "=") * 40_000, id="runs-between-paddings"),
    pytest.param(f"{KEY_ID} " + ("ab" * 60 + " ") * 40_000, id="runs-of-one-case"),
])
def test_five_megabytes_of_runs_beside_a_key_id_are_sanitized_in_linear_time(big: str) -> None:
    assert len(big) >= 4_800_000
    half = halved(big)
    linear_timed(lambda: sanitize_text(half), lambda: sanitize_text(big))
    linear_timed(lambda: sanitize_obj({"id": KEY_ID, "note": half[21:]}),
                 lambda: sanitize_obj({"id": KEY_ID, "note": big[21:]}))
