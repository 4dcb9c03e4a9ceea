"""``notices.tell``: a worker's promised line goes to ``notify`` (the command prints it) and to the log at INFO; a
``notify`` that fails, or none, leaves it a WARNING in the log."""
from __future__ import annotations

import logging

import pytest

from orchestrator.notices import tell

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
