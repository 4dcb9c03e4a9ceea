"""A run's output file stays within ``output_max_bytes`` on disk while its handler prints in a loop: its start is
dropped (a hole punched), its end kept, so the failure's tail is the latest output; where the file system cannot
punch holes, the run is stopped (``OUTPUT_TOO_LARGE``, not retried). The worker runs on either way."""
from __future__ import annotations

import errno
import json
import random
import re
import sys
import threading
from pathlib import Path

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator import output_cap
from orchestrator.worker import Worker, WorkerSettings
from worker_handlers import SPEW

BOUND = 1 << 20  # the smallest bound the setting takes
# what a run may print between two looks, and a loaded machine's late wake-up: 2 MiB until 2026-12-04, when a run of
# this file beside two busy loops on the 2-core test host saw 3.4 MiB (it had failed once in a full suite under load)
SLACK = 4 << 20
LINES = 160_000  # 16 MB of output: 16 times the bound, three times the bound and the slack


def make_worker(orch, **kw) -> Worker:
    kw.setdefault("worker_id", "w1")
    kw.setdefault("retry_base_seconds", 0.0)
    kw.setdefault("output_max_bytes", BOUND)
    return Worker(orch, WorkerSettings(**kw), rng=random.Random(7))


class DiskUse:
    """The largest disk use (``st_blocks``) and size seen of any run's output file, sampled every millisecond."""

    def __init__(self, runs: Path) -> None:
        self.runs, self.most, self.largest = runs, 0, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.001):
            for path in self.runs.glob("*/output.log"):
                try:
                    st = path.stat()
                except OSError:
                    continue
                self.most, self.largest = max(self.most, st.st_blocks * 512), max(self.largest, st.st_size)

    def __enter__(self) -> DiskUse:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def _failure(orch, job: str) -> dict:
    """The data of the job's last event (its failure: ``error``, ``output_tail``, ...)."""
    return json.loads(orch.store.read(job)[-1].raw)["data"]


def _spew(orch, kind: str, lines: int, **options) -> str:
    if kind == "command":
        return orch.submit("command", {"argv": [sys.executable, "-c", SPEW, str(lines), "0.01"]}, **options)
    return orch.submit("t.spew", {"lines": lines, "pause": 0.01}, **options)


@pytest.mark.parametrize(("kind", "handler_process"), [("command", "reused"), ("t.spew", "reused"),
                                                       ("t.spew", "per-run")])
def test_a_runaway_handler_keeps_its_output_file_within_the_bound_and_its_latest_output_is_recorded(
        orch, kind: str, handler_process: str) -> None:
    w = make_worker(orch, handler_process=handler_process)
    job = _spew(orch, kind, LINES, max_attempts=1)
    with DiskUse(orch.settings.state_dir / "runs") as disk:
        result = w.run_once()
    assert result.job_id == job and result.outcome == "failed"
    assert disk.largest >= LINES * 100  # the handler wrote all of it, at its offset
    assert disk.most <= BOUND + SLACK, f"the output file took {disk.most} bytes on disk"
    tail = _failure(orch, job)["output_tail"]
    assert tail.endswith(f"spew done {LINES}\n")  # the end of its output, not its start
    assert f"{LINES - 1:09d} " in tail and "000000000 " not in tail and "\0" not in tail
    # reported with the run's result (worker --json's "warnings"), not only in the worker's log
    dropped = [w for w in result.warnings if w["code"] == "OUTPUT_START_DROPPED"]
    assert len(dropped) == 1 and f"job {job} run {result.run_id}" in dropped[0]["message"]
    assert int(re.search(r"its first (\d+) bytes were dropped", dropped[0]["message"])[1]) > LINES * 100 // 2  # most of it
    nxt = orch.submit("t.echo", 1)
    again = w.run_once()
    assert again.job_id == nxt and orch.status(nxt).state == "succeeded"
    assert again.warnings == []  # the next run's output was not dropped: no warning carried over


def test_without_a_bound_the_output_file_takes_what_the_handler_prints(orch) -> None:
    w = make_worker(orch, output_max_bytes=0)
    _spew(orch, "command", 40_000)
    with DiskUse(orch.settings.state_dir / "runs") as disk:
        result = w.run_once()
    assert disk.most >= 40_000 * 100
    assert result.warnings == []  # nothing dropped, nothing reported


@pytest.mark.parametrize("kind", ["command", "t.spew"])
def test_where_the_start_cannot_be_dropped_the_run_is_stopped_as_output_too_large_and_not_retried(
        orch, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    def cannot(fd: int, end: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(output_cap, "punch_start", cannot)
    w = make_worker(orch)
    job = _spew(orch, kind, 10_000_000, timeout=60, max_attempts=3)  # ~1 GB: for ever, but for the bound
    with DiskUse(orch.settings.state_dir / "runs") as disk:
        result = w.run_once()
    assert (result.job_id, result.outcome, result.error_code) == (job, "failed", "OUTPUT_TOO_LARGE")
    assert disk.most <= BOUND + SLACK
    error = _failure(orch, job)
    assert "could not be dropped" in error["error"] and "Operation not supported" in error["error"]
    last = error["output_tail"].rstrip("\n").split("\n")[-2]  # the last whole line: what it printed last
    assert re.fullmatch(r"\d{9} x{90}", last) and int(last[:9]) * 101 > BOUND
    assert orch.status(job).state == "failed"  # not retried: a retry would print as much again
    nxt = orch.submit("t.echo", 1)
    assert w.run_once().job_id == nxt and orch.status(nxt).state == "succeeded"
