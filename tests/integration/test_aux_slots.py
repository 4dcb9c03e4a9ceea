"""Head and lease records on the file backend: a 512-byte slot overwritten in place, never torn."""
from __future__ import annotations

import json
import os
import time
import threading
from pathlib import Path

import pytest

from orchestrator.store.jsonl import SLOT_BYTES, JsonlStore


def record(n: int) -> bytes:
    return json.dumps({"seq": n, "pad": "x" * (n % 300)}).encode()


def test_a_record_is_rewritten_in_place_and_reads_back_exactly(tmp_path: Path) -> None:
    store = JsonlStore(tmp_path)
    store.put_aux("heads", "job-1", record(299))
    path = tmp_path / "heads" / "job-1"
    inode = path.stat().st_ino
    store.put_aux("heads", "job-1", record(2))  # shorter than the one before
    assert store.get_aux("heads", "job-1") == record(2)
    assert path.stat().st_size == SLOT_BYTES and path.stat().st_ino == inode  # same file, same size
    assert json.loads(path.read_bytes()) == {"seq": 2, "pad": "xx"}  # still plain JSON for `cat` and jq


@pytest.mark.parametrize("written, reads_as", [
    pytest.param(b"", None, id="created_but_never_written"),  # a crash between create and write
    pytest.param(record(7), record(7), id="an_older_record_written_by_rename"),  # as the store wrote it before slots
    pytest.param(b"x" * 511 + b" ", b"x" * 511 + b" ", id="no_newline_in_the_slot"),  # hand-written: no newline
    pytest.param(b"\0" * SLOT_BYTES, None, id="all_nul"),  # a write a power loss lost
])
def test_a_slot_file_the_store_did_not_write_reads_as_its_bytes_or_as_no_record(
        tmp_path: Path, written: bytes, reads_as: bytes | None) -> None:
    (tmp_path / "heads").mkdir()
    (tmp_path / "heads" / "job-1").write_bytes(written)
    assert JsonlStore(tmp_path).get_aux("heads", "job-1") == reads_as  # not a slot: the caller judges it; no crash


def test_a_record_too_large_for_its_slot_is_refused(tmp_path: Path) -> None:
    store = JsonlStore(tmp_path)
    with pytest.raises(ValueError, match="does not fit"):
        store.put_aux("heads", "job-1", json.dumps({"pad": "y" * 600}).encode())
    assert store.get_aux("heads", "job-1") is None


def test_a_slot_written_over_a_longer_foreign_file_is_cut_to_the_slot_and_reads_right_even_before_the_cut(
        tmp_path: Path) -> None:
    store = JsonlStore(tmp_path)
    (tmp_path / "heads").mkdir()
    path = tmp_path / "heads" / "job-1"
    path.write_bytes(b"{" + b"z" * 2000 + b"}")  # not written by the store
    store.put_aux("heads", "job-1", record(5))
    assert store.get_aux("heads", "job-1") == record(5)
    assert path.stat().st_size == SLOT_BYTES
    path.write_bytes(path.read_bytes() + b"z" * 1000)  # as if the process died between the slot's write and the cut
    assert store.get_aux("heads", "job-1") == record(5)


def test_other_areas_keep_replace_by_rename(tmp_path: Path) -> None:
    store = JsonlStore(tmp_path)
    store.put_aux("projections", "jobs", b"binary \x00 data ending in spaces   ")
    assert store.get_aux("projections", "jobs") == b"binary \x00 data ending in spaces   "


def test_a_reader_never_sees_half_of_a_rewrite(tmp_path: Path) -> None:
    store = JsonlStore(tmp_path)
    store.put_aux("heads", "job-1", record(0))
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            store.put_aux("heads", "job-1", record(n))

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(3000):
            raw = store.get_aux("heads", "job-1")
            assert raw is not None
            rec = json.loads(raw)
            assert rec["pad"] == "x" * (rec["seq"] % 300)
    finally:
        stop.set()
        t.join()


def test_threads_of_one_process_rewriting_one_record_each_leave_a_whole_record(tmp_path: Path) -> None:
    store = JsonlStore(tmp_path)
    records = [bytes([65 + n]) * 200_000 for n in range(4)]  # the jobs cache: big, rewritten by rename
    failures: list[BaseException] = []

    def writer(data: bytes) -> None:
        try:
            for _ in range(60):
                store.put_aux("projections", "jobs", data)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(data,)) for data in records]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert store.get_aux("projections", "jobs") in records
    assert [n for n in os.listdir(tmp_path / "projections") if n.endswith(".tmp")] == []


def test_a_copy_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path) -> None:
    import subprocess
    import sys

    store = JsonlStore(tmp_path)
    store.put_aux("projections", "jobs-v2", b"first")
    folder = Path(store._aux_path("projections", "jobs-v2")).parent  # noqa: SLF001
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid whose process has ended
    stray, live = folder / f".jobs-v2.{dead}.{dead}.tmp", folder / f".jobs-v2.{os.getppid()}.7.tmp"
    older_stray = folder / f".jobs-v2.{dead}.tmp"  # named as before 2026-12-02: the pid alone
    recent = folder / f".jobs-v2.{int(dead) + 1}.tmp"  # a writer of another pid namespace, still at work
    for path in (stray, older_stray, live, recent):
        path.write_bytes(b"half a cache")
    old = time.time() - 3600
    for path in (stray, older_stray, live):
        os.utime(path, (old, old))
    store.put_aux("projections", "jobs-v2", b"second")
    assert not stray.exists() and not older_stray.exists() and live.exists() and recent.exists()
    assert store.get_aux("projections", "jobs-v2") == b"second"
