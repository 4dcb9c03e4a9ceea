"""Stale recovery moves a file a dead run left whose name holds a secret to the name its event records (``token=abc``
-> ``token=[REDACTED]``): by the job's folder's descriptor, folder by folder, never through a link. A folder on the
way swapped for a link between the walk that listed the file and the move (by a process of the run still alive, or
one that kept a folder below open) is not followed: until 2026-12-07 the move went by path, and the file the link
led to, outside the store, was moved into the job's folder."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from helpers import events, make_worker
from orchestrator import Orchestrator, recovery
from orchestrator.state import Event, replay


def test_a_folder_swapped_for_a_link_after_the_walk_is_not_followed_by_the_moves(
        orch: Orchestrator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    job = orch.submit("command", {"argv": ["true"]})
    t = orch.clock()
    assert make_worker(orch, worker_id="dead", lease_seconds=5).claim(now=t).job_id == job  # ... and its worker dies
    folder = orch.store.root / "artifacts" / job
    (folder / "sub").mkdir(parents=True, mode=0o700)
    (folder / "sub" / "token=abc.txt").write_text("the dead run's")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "token=abc.txt").write_text("this user's own, outside the store")
    listed = recovery.recorded_names

    def swapped_then_moved(root: Path, paths: list[str]) -> list[str]:
        shutil.rmtree(root / "sub")
        (root / "sub").symlink_to(elsewhere)
        return listed(root, paths)

    monkeypatch.setattr(recovery, "recorded_names", swapped_then_moved)
    caplog.set_level(logging.WARNING)
    assert make_worker(orch).recover_stale(now=t + 60) == [job]
    last = events(orch, job)[-1]
    assert last["type"] == "stale_recovered" and last["data"]["artifacts"] == ["sub/token=[REDACTED]"]
    assert os.listdir(elsewhere) == ["token=abc.txt"]  # before the fix: moved to the job's sub_token=[REDACTED]
    assert (elsewhere / "token=abc.txt").read_text() == "this user's own, outside the store"
    assert os.listdir(folder) == ["sub"] and os.path.islink(folder / "sub")
    assert "could not move the artifact sub/token=[REDACTED]" in caplog.text


class _Listing:
    """What ``os.scandir`` returns, from entries read already (so that a swap can follow the listing)."""

    def __init__(self, entries: list[os.DirEntry]) -> None:
        self._entries = iter(entries)

    def __iter__(self) -> "_Listing":
        return self

    def __next__(self) -> os.DirEntry:
        return next(self._entries)

    def __enter__(self) -> "_Listing":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None


@pytest.mark.parametrize("when", ["after its listing", "as it is entered"])
def test_a_folder_swapped_for_a_link_during_the_walk_is_not_entered(
        orch: Orchestrator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """Stale recovery walks the dead run's folder before it ends what that run left running, which may swap a folder
    for a link meanwhile: right after the folder above was listed, or as the walk goes into it (``os.walk`` looked
    for a link by path, then listed the path, following the link put there in between). Nothing outside the job's
    folder is listed: before the fix, ``sub/token=[REDACTED]`` was, from the folder the link led to."""
    job = orch.submit("command", {"argv": ["true"]})
    t = orch.clock()
    assert make_worker(orch, worker_id="dead", lease_seconds=5).claim(now=t).job_id == job  # ... and its worker dies
    folder = orch.store.root / "artifacts" / job
    (folder / "sub").mkdir(parents=True, mode=0o700)
    (folder / "kept.txt").write_text("the dead run's")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "token=abc.txt").write_text("this user's own, outside the store")
    real_scandir, calls = os.scandir, []

    def swap() -> None:
        (folder / "sub").rmdir()
        (folder / "sub").symlink_to(elsewhere)

    def scandir(target: object = ".") -> object:
        calls.append(target)
        if when == "as it is entered" and len(calls) == 2:
            swap()
        listing = _Listing(list(real_scandir(target)))
        if when == "after its listing" and len(calls) == 1:
            swap()
        return listing

    monkeypatch.setattr(os, "scandir", scandir)
    state = replay(Event.from_record(record) for record in events(orch, job))
    assert recovery.run_artifacts(state, folder) == ["kept.txt"]
    assert os.listdir(elsewhere) == ["token=abc.txt"]
