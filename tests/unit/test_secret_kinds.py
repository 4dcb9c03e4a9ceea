"""The kinds of secret README's Security section lists are the kinds the reliability campaign plants and looks for
(``SECRETS`` and ``SECRET_OBJECTS`` in orchestrator/reliability/handlers.py, which the canary acceptance test plants
too): a kind added to one and not to the other fails here, so the campaign cannot fall behind the README again."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from orchestrator.reliability.handlers import SECRET_OBJECTS, SECRET_TEXT, SECRETS, TAG
from orchestrator.security import sanitize_obj, sanitize_text

README = Path(__file__).resolve().parents[2] / "README.md"
TEXT_TABLE = "| kind | what `sanitize_text` redacts (the key, separator, quote and scheme kept) |"
OBJECT_TABLE = "| kind | what `sanitize_obj` redacts besides each string's secrets |"


def readme_kinds(header: str) -> list[str]:
    """The kinds named (in backticks) in the first column of the README table under ``header``."""
    lines = [line.strip() for line in README.read_text(encoding="utf-8").splitlines()]
    assert header in lines, f"README has no table headed {header!r}"
    kinds = []
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("|"):
            break
        kinds += re.findall(r"`([^`]+)`", line[1:].split(" | ", 1)[0])
    return kinds


@pytest.mark.parametrize(("header", "planted"), [(TEXT_TABLE, SECRETS), (OBJECT_TABLE, SECRET_OBJECTS)],
                         ids=["text", "structures"])
def test_the_readme_lists_exactly_the_kinds_of_secret_the_reliability_campaign_plants(header: str,
                                                                                       planted: dict) -> None:
    kinds = readme_kinds(header)
    assert len(kinds) == len(set(kinds)), "a kind named twice"
    assert sorted(set(kinds) - set(planted)) == [], "listed in README, not planted by the campaign"
    assert sorted(set(planted) - set(kinds)) == [], "planted by the campaign, not listed in README"


def test_each_planted_value_carries_one_tag_no_other_value_carries() -> None:
    values = [*SECRETS.values(), *map(json.dumps, SECRET_OBJECTS.values())]
    tags = [TAG.findall(value) for value in values]
    assert all(len(found) == 1 for found in tags), tags
    assert len({found[0].lower() for found in tags}) == len(values)


@pytest.mark.parametrize("kind", SECRETS)
def test_each_planted_text_is_redacted_alone_and_where_the_campaign_puts_it(kind: str) -> None:
    tag = TAG.search(SECRETS[kind]).group()
    assert tag not in sanitize_text(SECRETS[kind])
    assert tag not in sanitize_text(SECRET_TEXT)


@pytest.mark.parametrize("kind", SECRET_OBJECTS)
def test_each_planted_structure_is_redacted_though_its_secret_alone_looks_like_nothing(kind: str) -> None:
    """The form hides the value, not its text: the tagged string alone is kept by ``sanitize_text``."""
    text = json.dumps(SECRET_OBJECTS[kind])
    tag = TAG.search(text).group()
    assert tag not in json.dumps(sanitize_obj(SECRET_OBJECTS[kind]))
    alone = re.search(rf'"([^"]*{tag}[^"]*)"', text).group(1)
    assert sanitize_text(alone) == alone
