"""``notices.tell``: a worker's promised line goes to ``notify`` (the command prints it) and to the log at INFO; a
``notify`` that fails, or none, leaves it a WARNING in the log. ``notices.log_warning``: a warning also reported to the
caller is logged in one shape, ``CODE: message``, its code in the record."""
from __future__ import annotations

import logging

import pytest

from orchestrator.notices import log_warning, tell

log = logging.getLogger("orchestrator.test_notices")


def test_a_line_given_to_notify_is_logged_at_info_only(caplog: pytest.LogCaptureFixture) -> None:
    told: list[str] = []
    with caplog.at_level(logging.DEBUG, logger=log.name):
        tell(told.append, log, "recovered stale job J -> failed", job_id="J")
    assert told == ["recovered stale job J -> failed"]
    assert [(r.levelno, r.getMessage(), r.job_id) for r in caplog.records] == [  # type: ignore[attr-defined]
        (logging.INFO, "recovered stale job J -> failed", "J")]


def test_without_notify_or_when_it_fails_the_line_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    def gone(_line: str) -> None:
        raise BrokenPipeError("stderr is gone")

    with caplog.at_level(logging.DEBUG, logger=log.name):
        tell(None, log, "a 100% line")
        tell(gone, log, "another")  # what was done stays done: no exception
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.WARNING, "a 100% line"),
                                                                    (logging.WARNING, "another")]


def test_a_reported_warning_is_logged_as_code_then_message_with_its_code_and_context_in_the_record(
        caplog: pytest.LogCaptureFixture) -> None:
    warning = {"code": "RUN_PROCESSES_KILLED", "message": "job J run R: 1 process killed (pid 7), 100% sure"}
    with caplog.at_level(logging.DEBUG, logger=log.name):
        log_warning(log, warning, job_id="J", pids=[7])
    [record] = caplog.records
    assert (record.levelno, record.getMessage()) == (
        logging.WARNING, "RUN_PROCESSES_KILLED: job J run R: 1 process killed (pid 7), 100% sure")
    assert (record.code, record.job_id, record.pids) == ("RUN_PROCESSES_KILLED", "J", [7])  # type: ignore[attr-defined]
