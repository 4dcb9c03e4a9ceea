"""A handler process is a fork of the worker's process, which may be an application with threads of its own.

A fork copies the locks other threads hold at that moment, held, with no thread left to let them go. Python's
``logging`` makes its own locks anew in the child, but not the lock of a file object a handler writes through: a
thread of the app logging to a file at the moment of the fork left it held, and a handler that logged to the same
handler waited for ever (its run until its timeout; with none, for ever, its lease renewed). The handler process
gives every logging handler of the app a file object of its own on the same descriptor (``forked_logging``).
"""
from __future__ import annotations

import json
import logging
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator.worker import Worker, WorkerSettings

RUNS = 4  # each run's handler process is forked anew (``handler_max_runs=1``): each fork a chance to catch the lock


@contextmanager
def app_thread_logging_to(stream_handler: logging.Handler, name: str) -> Iterator[logging.Logger]:
    """A logger ``name`` writing through ``stream_handler``, and a thread of the app logging to it all the while."""
    logger = logging.getLogger(name)
    logger.addHandler(stream_handler)
    logger.propagate = False
    stop = threading.Event()

    def app() -> None:
        for _ in range(2_000_000):  # bounded: a few MB at most, the test itself takes a few seconds
            if stop.is_set():
                return
            logger.warning("the app is alive")

    thread = threading.Thread(target=app, daemon=True)
    thread.start()
    try:
        yield logger
    finally:
        stop.set()
        thread.join()
        logger.removeHandler(stream_handler)
        stream_handler.close()


def run_jobs(orch, mode: str, logger: str, payload: dict | None = None) -> list[dict]:
    extra = {"payload": payload} if payload else {}
    jobs = [orch.submit("t.log", {"logger": logger, "text": f"handler line {i}", **extra}, timeout=2, max_attempts=1)
            for i in range(RUNS)]
    worker = Worker(orch, WorkerSettings(worker_id="w1", handler_process=mode, handler_max_runs=1))
    try:
        worker.run(max_jobs=RUNS)
    finally:
        worker.close()
    return [json.loads(orch.store.read(job)[-1].raw) for job in jobs]


@pytest.mark.parametrize("filemode", ["a", "w"])
@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_handler_logs_to_the_file_another_thread_of_the_app_is_logging_to(
        orch, tmp_path: Path, mode: str, filemode: str) -> None:
    """Before 2026-12-06 most runs hung at their log line (3 or 4 of 4 here), ``NO_TERMINAL_SIGNAL_TIMEOUT``. The
    handler's lines go to the app's file, opened ``"w"`` or not: appended, nothing of it emptied nor written twice."""
    log_file = tmp_path / "app.log"
    with app_thread_logging_to(logging.FileHandler(log_file, mode=filemode), "t.app.file") as logger:
        last = run_jobs(orch, mode, logger.name)
    assert [event["type"] for event in last] == ["job_succeeded"] * RUNS, [event["data"] for event in last]
    lines = log_file.read_text().splitlines()
    assert [line for line in lines if line.startswith("handler line")] == [f"handler line {i}" for i in range(RUNS)]
    assert set(lines) == {"the app is alive"} | {f"handler line {i}" for i in range(RUNS)}, "no line torn or mixed"


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_handler_logging_to_the_apps_stderr_logs_to_its_runs_output(
        orch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """A handler of the app's ``sys.stderr`` (a file here, as an app that sends it to its own log) writes to the
    run's output in a handler process, as ``print(file=sys.stderr)`` there does, through an object of its own."""
    app_stderr: IO[str] = open(tmp_path / "app-stderr.log", "w")  # noqa: SIM115 - closed by the handler
    monkeypatch.setattr(sys, "stderr", app_stderr)
    failed = {"status": "failed", "summary": "shows its output", "retryable": False}
    with app_thread_logging_to(logging.StreamHandler(), "t.app.stderr") as logger:
        last = run_jobs(orch, mode, logger.name, failed)
    app_stderr.close()
    assert [event["data"].get("error_code") for event in last] == ["HANDLER_FAILED"] * RUNS, last
    assert [f"handler line {i}" in event["data"]["output_tail"] for i, event in enumerate(last)] == [True] * RUNS
    assert "handler line" not in (tmp_path / "app-stderr.log").read_text()
