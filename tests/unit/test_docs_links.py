"""Every relative link in the README and docs/ names a file that exists, so docs cannot point nowhere."""
from __future__ import annotations

import re

import pytest

from helpers import REPO

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_names_an_existing_file(page) -> None:
    text = page.read_text(encoding="utf-8")
    missing = [target for target in LINK.findall(text)
               if not re.match(r"[a-z]+:", target) and not (page.parent / target).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to files that do not exist: {missing}"
