"""``llm_secrets.Secrets.drop``, the ``llm`` key's search in a reply, on its own: what a vendor key's public prefix
leaves as text, the key lower-cased, and which texts its slow pattern runs on."""
from __future__ import annotations

import urllib.parse
from typing import Any

import pytest

from orchestrator.handlers.llm_secrets import Secrets

SECRET_PART = "Ab-cD_3fGhIjKlMnOpQrStUvWxYz0123456789_q-Z"  # base64url, as a vendor's random part: "-" and "_" in it
# vendor keys by their public prefix, the same in every key of their kind (an Anthropic, an OpenAI project, a GitHub
# fine-grained, a Slack bot key)
VENDOR_KEYS = {prefix: prefix + SECRET_PART for prefix in ("sk-ant-api03-", "sk-proj-", "github_pat_", "xoxb-")}


@pytest.mark.parametrize("prefix", sorted(VENDOR_KEYS))
def test_a_vendor_key_s_public_prefix_and_fewer_than_12_characters_past_it_are_text_and_kept(prefix: str) -> None:
    """The first 12 characters of a key were a start of it, and ``sk-ant-api03`` is every Anthropic key's: a reply
    saying which kind of key was expected lost it."""
    key = VENDOR_KEYS[prefix]
    text = (f"expected a key beginning {prefix} (see the docs for {prefix.rstrip('-_')} keys); "
            f"yours begins {key[:len(prefix) + 11]}...")
    assert Secrets(key).drop(text) == text


@pytest.mark.parametrize("past", [12, 20, len(SECRET_PART)])
@pytest.mark.parametrize("prefix", sorted(VENDOR_KEYS))
def test_a_start_of_a_vendor_key_reaching_12_characters_past_its_public_prefix_is_replaced(prefix: str,
                                                                                           past: int) -> None:
    key = VENDOR_KEYS[prefix]
    echoed = key[:len(prefix) + past]
    assert Secrets(key).drop(f"your key begins {echoed}, check it") == "your key begins [REDACTED], check it"


def test_a_key_of_no_known_vendor_has_any_12_characters_it_begins_with_replaced() -> None:
    """No prefix is taken as public unless a vendor's: ``plain.Key/0123-`` is as secret as what follows it."""
    key = "plain.Key/0123-no-known-shape"
    assert Secrets(key).drop(f"begins {key[:12]}.") == "begins [REDACTED]."


# a JWT as the key: its header, base64 of ``{"alg":"HS256","typ":"JWT"}``, is every HS256 token's; its payload's
# ``eyJ`` too (``{"``)
JWT_HEADER = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
JWT_KEY = f"{JWT_HEADER}.eyJzdWIiOiJ3b3JrZXItNyIsImV4cCI6MTk5OTk5OTk5OX0.Zm9vYmFyYmF6cXV4LXNpZ25hdHVyZS1ieXRlcw"


def test_a_jwt_keys_header_is_text_and_kept() -> None:
    """Counted from ``eyJ``, every reply naming the header any HS256 token begins with lost it."""
    text = f"tokens signed with HS256 begin {JWT_HEADER}.eyJ; yours: {JWT_KEY[:len(JWT_HEADER) + 4 + 11]}..."
    assert Secrets(JWT_KEY).drop(text) == text


@pytest.mark.parametrize("past", [12, 30])
def test_a_start_of_a_jwt_key_reaching_12_characters_into_its_payload_is_replaced(past: int) -> None:
    echoed = JWT_KEY[:len(JWT_HEADER) + 4 + past]
    assert Secrets(JWT_KEY).drop(f"your token begins {echoed}...") == "your token begins [REDACTED]..."
    assert Secrets(JWT_KEY).drop(f"your token: {JWT_KEY}") == "your token: [REDACTED]"


# a key each 12 characters of which hold a capital: none of its lower-cased copy is a start or an end of it
CASED_KEY = "Plain.Key/0123-No-Known-Shape"


@pytest.mark.parametrize("echoed", [CASED_KEY.lower(), urllib.parse.quote(CASED_KEY.lower(), safe=""),
                                    CASED_KEY.lower().replace("/", "\\/")], ids=["as-is", "percent", "json"])
def test_a_key_echoed_lower_cased_is_replaced(echoed: str) -> None:
    """Upper-cased and reversed were looked for, lower-cased not (an endpoint that lowers what it echoes)."""
    assert Secrets(CASED_KEY).drop(f"Incorrect API key provided: {echoed}. Check it.") == \
        "Incorrect API key provided: [REDACTED]. Check it."


@pytest.mark.parametrize("part", [CASED_KEY[:14].upper(), CASED_KEY[:14].lower(), CASED_KEY[-13:].upper(),
                                  CASED_KEY[-13:].lower(), CASED_KEY[:20].swapcase()],
                         ids=["start-upper", "start-lower", "end-upper", "end-lower", "start-swapped"])
def test_a_part_of_the_key_upper_or_lower_cased_is_replaced(part: str) -> None:
    """The key whole was looked for in either case, its parts only as sent: "your key begins PLAIN.KEY/0123-N" kept
    them."""
    assert Secrets(CASED_KEY).drop(f"your key: {part}... (see docs)") == "your key: [REDACTED]... (see docs)"


def test_a_part_of_the_key_in_another_case_is_found_in_text_that_is_not_ascii() -> None:
    """Lowering a text holding 'İ' lengthens it: the part is found where it stands all the same."""
    text = f"İstanbul: {CASED_KEY[:14].upper()} ünd {CASED_KEY[-12:].lower()} İ"
    assert Secrets(CASED_KEY).drop(text) == "İstanbul: [REDACTED] ünd [REDACTED] İ"


class CountedPattern:
    """A ``Secrets``' pattern that counts its runs."""

    def __init__(self, pattern: Any) -> None:
        self.pattern, self.runs = pattern, 0

    def sub(self, *args: Any) -> str:
        self.runs += 1
        return self.pattern.sub(*args)


def counted(secrets: Secrets) -> CountedPattern:
    secrets._pattern = CountedPattern(secrets._pattern)  # type: ignore[assignment]
    return secrets._pattern  # type: ignore[return-value]


PYTEST_LINES = "tests/unit/test_state.py::test_replay PASSED [ 42%]\n" * 20 + "100% done, 5% skipped\n"


def test_a_text_whose_percent_signs_escape_no_character_of_the_key_is_not_searched_by_the_pattern() -> None:
    """The pattern (~0.3 s a MB) ran on any text holding a ``%``: every pytest log, ``[ 42%]`` on each line."""
    key = "plain.Key/0123-no-known-shape"
    secrets = Secrets(key)
    pattern = counted(secrets)
    text = PYTEST_LINES + f"key {key} and {key.upper()}\n"
    assert secrets.drop(text) == PYTEST_LINES + "key [REDACTED] and [REDACTED]\n" and pattern.runs == 0


@pytest.mark.parametrize("echoed", [
    urllib.parse.quote("plain.Key/0123-no-known-shape", safe=""),  # %2F
    "plain.Key%2f0123-no-known-shape",
    "".join(f"%{ord(c):02X}" for c in "plain.Key/0123-no-known-shape"),  # every character, letters too
    "plain.Key/0123-no-known-sh%61pe",
], ids=["slash", "slash-lower-hex", "every-character", "one-letter"])
def test_a_percent_encoded_key_among_pytest_s_percent_signs_is_replaced(echoed: str) -> None:
    secrets = Secrets("plain.Key/0123-no-known-shape")
    assert secrets.drop(f"{PYTEST_LINES}key: {echoed}\n") == f"{PYTEST_LINES}key: [REDACTED]\n"
