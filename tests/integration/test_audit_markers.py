"""Audit markers on the file backend: names (hard links of one empty file), not files of their own.

A marker says only that an audited event's entry is in the log; creating a file for each cost 29 us to 1.4 ms on the
benchmark disk, on the path of every control action (docs/performance.md). A link costs ~20 us and no inode.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import jobstates as js
from orchestrator import Orchestrator, audit
from orchestrator.signing import line_hash
from orchestrator.store.jsonl import NAME_RECORD, JsonlStore


def marker(orch: Orchestrator, job_id: str) -> Path:
    return orch.settings.state_dir / audit.MARKERS_AREA / line_hash(orch.load(job_id).stream.lines[-1].raw)


def test_the_markers_of_two_actions_are_one_file_under_two_names(orch: Orchestrator) -> None:
    first, second = js.waiting_human(orch), js.waiting_human(orch)
    orch.resume(first, "yes")
    orch.cancel(second, "not needed")
    one, two = marker(orch, first), marker(orch, second)
    assert one.exists() and two.exists()
    assert one.stat().st_ino == two.stat().st_ino  # before: a new file (inode) for each
    assert audit.unmarked(orch, [orch.load(first), orch.load(second)]) == []
    assert orch.store.get_aux(audit.MARKERS_AREA, one.name) == NAME_RECORD


@pytest.mark.parametrize("written", [b"4\n" + b" " * 509, b""], ids=["a_slot", "created_but_never_written"])
def test_a_marker_written_as_a_file_of_its_own_counts(tmp_path: Path, written: bytes) -> None:
    """Markers written before 2026-12-03 are 512-byte slots; a slot created but not written yet (a crash) was made
    after its entry was durable, so it counts too."""
    store = JsonlStore(tmp_path)
    (tmp_path / "audited").mkdir()
    (tmp_path / "audited" / "e1").write_bytes(written)
    assert store.aux_present("audited", ["e1", "e2"]) == {"e1"}
    assert store.get_aux("audited", "e1") == NAME_RECORD


def test_a_template_out_of_links_is_replaced_by_a_fresh_one(tmp_path: Path, monkeypatch) -> None:
    store = JsonlStore(tmp_path)
    store.put_aux("audited", "e1", b"1")
    template = tmp_path / "audited" / ".name"
    old = template.stat().st_ino
    real_link = os.link
    refused = []

    def full(src, dst, **kwargs):  # ext4 allows 65,000 links to one file
        if not refused:
            refused.append(dst)
            raise OSError(errno.EMLINK, os.strerror(errno.EMLINK))
        return real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", full)
    store.put_aux("audited", "e2", b"2")
    assert refused and template.stat().st_ino != old
    assert (tmp_path / "audited" / "e2").stat().st_ino == template.stat().st_ino
    assert store.aux_present("audited", ["e1", "e2"]) == {"e1", "e2"}


def test_where_no_hard_link_can_be_made_a_marker_is_a_file_of_its_own(tmp_path: Path, monkeypatch) -> None:
    def no_links(src, dst, **kwargs):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_links)
    store = JsonlStore(tmp_path)
    store.put_aux("audited", "e1", b"1")
    assert (tmp_path / "audited" / "e1").is_file() and store.aux_present("audited", ["e1"]) == {"e1"}


def test_a_marker_written_again_stays_one_name(tmp_path: Path) -> None:
    """``heal`` writes the marker of an entry it finds in the log; one already there is fine."""
    store = JsonlStore(tmp_path)
    store.put_aux("audited", "e1", b"1")
    store.put_aux("audited", "e1", b"1")
    assert store.aux_keys("audited") == ["e1"]
    store.delete_aux("audited", "e1")
    assert store.aux_present("audited", ["e1"]) == set() and store.get_aux("audited", "e1") is None


@pytest.mark.parametrize("planted", ["symlink", "dangling symlink", "fifo", "empty folder"])
def test_a_template_that_is_not_a_regular_file_is_replaced_so_markers_stay_records(
        tmp_path: Path, planted: str) -> None:
    """Every marker is a hard link of the template: a symbolic link planted as the template made every new marker a
    link too (``os.link`` links the link itself), each read as ``PATH_ESCAPE``; a FIFO made each one no record."""
    store = JsonlStore(tmp_path / "store")
    store.put_aux("audited", "e1", b"1")
    template = tmp_path / "store" / "audited" / ".name"
    outside = tmp_path / "outside"
    outside.write_bytes(b"not the store's")
    template.unlink()
    if planted == "symlink":
        template.symlink_to(outside)
    elif planted == "dangling symlink":
        template.symlink_to(tmp_path / "nowhere")
    elif planted == "fifo":
        os.mkfifo(template)
    else:
        template.mkdir()
    store.put_aux("audited", "e2", b"2")
    assert store.get_aux("audited", "e2") == NAME_RECORD  # before: PathEscapeError, or None for a FIFO
    assert store.aux_present("audited", ["e1", "e2"]) == {"e1", "e2"}
    assert template.is_file() and not template.is_symlink()
    assert (tmp_path / "store" / "audited" / "e2").stat().st_ino == template.stat().st_ino  # a link again
    assert outside.read_bytes() == b"not the store's" and not (tmp_path / "nowhere").exists()


def test_a_template_that_is_a_folder_holding_files_is_left_and_markers_are_files_of_their_own(tmp_path: Path) -> None:
    store = JsonlStore(tmp_path)
    (tmp_path / "audited" / ".name").mkdir(parents=True)
    (tmp_path / "audited" / ".name" / "kept").write_bytes(b"an operator's file")
    store.put_aux("audited", "e1", b"1")
    assert (tmp_path / "audited" / "e1").is_file() and store.get_aux("audited", "e1") == NAME_RECORD
    assert (tmp_path / "audited" / ".name" / "kept").read_bytes() == b"an operator's file"
