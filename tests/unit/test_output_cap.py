"""``OutputCap``: the bound on a run's output file, in injected time (``check(now)``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.errors import InvalidInputError
from orchestrator.output_cap import (CHECK_FIRST_SECONDS, CHECK_MAX_SECONDS, CHECK_MIN_SECONDS, MIN_OUTPUT_MAX_BYTES,
                                     OutputCap)
from orchestrator.worker import WorkerSettings

BOUND = MIN_OUTPUT_MAX_BYTES


def _grow(path: Path, lines: range) -> None:
    with open(path, "ab") as fh:
        fh.writelines(f"{i:09d} {'x' * 90}\n".encode() for i in lines)


def _disk(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_past_the_bound_the_start_is_dropped_and_the_end_kept_where_it_was(tmp_path: Path) -> None:
    out = tmp_path / "output.log"
    _grow(out, range(30_000))  # 3 MB
    cap = OutputCap(out, BOUND, now=0.0)
    assert cap.check(CHECK_FIRST_SECONDS)
    assert os.path.getsize(out) == 30_000 * 101  # the size stays: a writer goes on at its offset
    assert _disk(out) <= BOUND // 2 + 2 * 4096 and cap.dropped > 2 * BOUND
    with open(out, "rb") as fh:
        assert fh.read(4096) == b"\0" * 4096  # the start reads as zeros
        fh.seek(-101, os.SEEK_END)
        assert fh.read() == f"{29_999:09d} {'x' * 90}\n".encode()
    _grow(out, range(30_000, 31_000))  # under the bound again: nothing more dropped
    dropped = cap.dropped
    assert cap.check(cap.next_check) and cap.dropped == dropped


def test_a_file_within_the_bound_is_left_as_it_is(tmp_path: Path) -> None:
    out = tmp_path / "output.log"
    _grow(out, range(5_000))
    cap = OutputCap(out, BOUND, now=0.0)
    assert cap.check(CHECK_FIRST_SECONDS) and cap.dropped == 0 and out.read_bytes().startswith(b"000000000 ")


def test_a_file_that_grows_fast_is_looked_at_sooner_and_a_still_one_later(tmp_path: Path) -> None:
    out = tmp_path / "output.log"
    out.write_bytes(b"")
    cap = OutputCap(out, BOUND, now=0.0)
    assert cap.next_check == CHECK_FIRST_SECONDS
    _grow(out, range(20_000))  # 2 MB in 50 ms: a quarter of the bound takes ~6 ms at that rate
    cap.check(CHECK_FIRST_SECONDS)
    assert cap.next_check == pytest.approx(CHECK_FIRST_SECONDS + CHECK_MIN_SECONDS)
    now = cap.next_check
    for _ in range(6):  # nothing printed since: back to a look per wake-up a stop check takes anyway
        cap.check(now)
        now = cap.next_check
    assert cap.next_check - cap._at == pytest.approx(CHECK_MAX_SECONDS)  # noqa: SLF001


def test_no_bound_never_looks(tmp_path: Path) -> None:
    cap = OutputCap(tmp_path / "output.log", 0, now=0.0)
    assert cap.next_check is None and cap.check(1.0)


@pytest.mark.parametrize("what", ["missing", "fifo", "folder"])
def test_an_output_file_that_is_missing_or_not_a_file_is_nothing_to_bound(tmp_path: Path, what: str) -> None:
    out = tmp_path / "output.log"
    if what == "fifo":
        os.mkfifo(out)
    elif what == "folder":
        out.mkdir()
    cap = OutputCap(out, BOUND, now=0.0)
    assert cap.check(1.0) and cap.refused is None


@pytest.mark.parametrize("what", ["fifo with a reader", "link"])
def test_an_output_file_replaced_between_the_look_and_the_punch_is_never_punched_through(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    """The run can put something else at the path right after the worker looked: a FIFO (it opens, with a reader)
    is looked at again next time; a link is refused (the file it leads to is never punched)."""
    out, victim = tmp_path / "output.log", tmp_path / "victim"
    _grow(out, range(30_000))
    _grow(victim, range(30_000))
    lstat, readers = os.lstat, []

    def replacing(path, *args, **kwargs):
        seen = lstat(path, *args, **kwargs)
        if os.fspath(path) == str(out) and not readers:
            out.unlink()
            if what == "link":
                out.symlink_to(victim)
                readers.append(-1)
            else:
                os.mkfifo(out)
                readers.append(os.open(out, os.O_RDONLY | os.O_NONBLOCK))
        return seen

    monkeypatch.setattr(os, "lstat", replacing)
    cap = OutputCap(out, BOUND, now=0.0)
    try:
        assert cap.check(CHECK_FIRST_SECONDS) is (what != "link") and cap.dropped == 0
        assert (cap.refused is None) is (what != "link")
        assert victim.read_bytes().startswith(b"000000000 ")
    finally:
        if readers[0] >= 0:
            os.close(readers[0])


@pytest.mark.parametrize("value", [1, BOUND - 1, -1, True, 1.5e6, "64M", None])
def test_the_setting_is_0_or_a_whole_number_of_bytes_from_1_mib(value: object) -> None:
    with pytest.raises(InvalidInputError, match="output_max_bytes"):
        WorkerSettings(output_max_bytes=value)  # type: ignore[arg-type]
    assert WorkerSettings(output_max_bytes=0).output_max_bytes == 0
    assert WorkerSettings(output_max_bytes=BOUND).output_max_bytes == BOUND
