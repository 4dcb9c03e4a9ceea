"""What a Python handler's process killed of what its run left, as it tells the worker (``killed.encode_killed``),
and the warning the run's result carries (``killed_warning``): how many, and at most ten pids named."""
from __future__ import annotations

import select

from orchestrator.killed import (KILLED_MAX_BYTES, NONE_KILLED, PIDS_NAMED, Killed, decode_killed, encode_killed,
                                 killed_warning)


def test_what_was_killed_goes_to_the_worker_as_the_count_and_the_first_ten_pids() -> None:
    assert decode_killed(encode_killed([])) == NONE_KILLED == Killed(0, [])
    assert decode_killed(encode_killed([41, 4194304])) == Killed(2, [41, 4194304])
    many = list(range(100, 112))
    assert decode_killed(encode_killed(many)) == Killed(12, many[:PIDS_NAMED])


def test_the_report_fits_one_atomic_pipe_write_with_the_exit_code_whatever_was_killed() -> None:
    report = encode_killed(list(range(10_000, 20_000)))
    assert len(report) == KILLED_MAX_BYTES and 1 + KILLED_MAX_BYTES <= select.PIPE_BUF


def test_bytes_that_are_not_a_report_say_nothing_was_killed() -> None:
    # a handler that wrote on its process's pipe itself: its bytes are judged as a payload, nothing is reported
    for junk in (b"", b"{}", b'{"status": "done"}', encode_killed([1, 2])[:-1], encode_killed([1]) + b"x",
                 b"\x00\x00\x00\x01\x00\x00\x00\x02" + b"\x00" * 8):  # two pids named, one killed
        assert decode_killed(junk) == NONE_KILLED


def test_the_warning_counts_every_process_killed_and_names_the_first_ten() -> None:
    warning = killed_warning(Killed(12, list(range(100, 110))), "J", "R", "when its handler ended")
    assert warning["code"] == "RUN_PROCESSES_KILLED"
    assert warning["message"].startswith("killed 12 process(es) left running by run R of job J when its handler "
                                         "ended (pid 100, 101, 102, 103, 104, 105, 106, 107, 108, 109 and 2 more)")
    assert killed_warning(Killed.of([7]), "J", "R", "after its handler exited")["message"].startswith(
        "killed 1 process(es) left running by run R of job J after its handler exited (pid 7)")


def test_what_the_worker_kills_after_a_handler_process_told_its_own_is_counted_and_named_after_it() -> None:
    told = decode_killed(encode_killed(list(range(100, 112))))  # twelve killed, the first ten named
    both = told.plus([7, 8])
    assert both == Killed(14, [*range(100, 110), 7, 8])
    assert "killed 14 process(es)" in killed_warning(both, "J", "R", "after its handler exited")["message"]
    assert NONE_KILLED.plus([7]) == Killed.of([7]) and NONE_KILLED == Killed(0, [])  # left as it was


def test_a_process_named_twice_on_its_way_out_counts_once() -> None:
    """A command's leftover that ignores the group's SIGTERM is named with it, then killed again after the grace
    period: one process, not two (the worker's own list may hold it twice as well)."""
    sigtermed = Killed.of([7, 8])
    assert sigtermed.plus([8, 9, 9]) == Killed(3, [7, 8, 9])
