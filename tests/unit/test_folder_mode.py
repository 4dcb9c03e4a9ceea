"""``run_folder.set_folder_mode``: a folder's mode set without opening it for reading, never through a link."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from orchestrator.run_folder import set_folder_mode


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_folder_its_owner_may_not_open_is_made_owner_only(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    folder.mkdir()
    os.chmod(folder, 0o077)
    set_folder_mode(folder, 0o700)
    assert mode_of(folder) == 0o700


@pytest.mark.parametrize("target", ["folder", "missing"])
def test_a_link_in_the_folders_place_is_refused_and_what_it_leads_to_left_as_it_is(tmp_path: Path,
                                                                                   target: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    if target == "folder":
        elsewhere.mkdir(mode=0o755)
    (tmp_path / "job").symlink_to(elsewhere)
    with pytest.raises(OSError):
        set_folder_mode(tmp_path / "job", 0o700)
    assert target == "missing" or mode_of(elsewhere) == 0o755


def test_a_file_in_the_folders_place_is_refused(tmp_path: Path) -> None:
    (tmp_path / "job").write_text("")
    os.chmod(tmp_path / "job", 0o644)
    with pytest.raises(NotADirectoryError):
        set_folder_mode(tmp_path / "job", 0o700)
    assert mode_of(tmp_path / "job") == 0o644
