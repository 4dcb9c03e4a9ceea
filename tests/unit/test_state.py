"""The state machine of SPEC.md, replayed from plain event lists (no files, no clock)."""
from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import InvalidTransitionError
from orchestrator.state import (AWAITING_AUDIT, CANCELLED, FAILED, QUEUED, RUNNING, STATES, SUCCEEDED, TRANSITIONS,
                                WAITING_HUMAN, Event, apply, replay)

TS = "2026-11-22T10:00:00.000000Z"
LATER = "2026-11-22T10:05:00.000000Z"


def ev(etype: str, data: dict[str, Any] | None = None, seq: int = 1, run_id: str | None = None, ts: str = TS) -> Event:
    return Event(seq=seq, type=etype, job_id="job1", ts=ts, actor="test", data=data or {}, run_id=run_id)


SUBMIT = ev("job_submitted", {"kind": "echo", "input": {"x": 1}, "options": {"max_attempts": 2, "audit": False}})
CLAIM = ev("job_claimed", {"worker_id": "w1", "epoch": 1, "attempt": 1, "lease_expires_at": LATER}, run_id="r1")
DONE = ev("job_succeeded", {"summary": "ok", "output": 42, "artifacts": []}, run_id="r1")
AUDIT = ev("audit_requested", {"summary": "check me"}, run_id="r1")
ASK = ev("human_input_requested", {"question": "which branch?"}, run_id="r1")
FAIL_RETRY = ev("job_failed", {"error_code": "HANDLER_ERROR", "error": "boom", "retry_at": LATER}, run_id="r1")
FAIL_FINAL = ev("job_failed", {"error_code": "HANDLER_ERROR", "error": "boom"}, run_id="r1")
TIMEOUT_RETRY = ev("job_timeout", {"error_code": "NO_TERMINAL_SIGNAL_TIMEOUT", "timeout": 5, "retry_at": LATER})
STALE_QUEUED = ev("stale_recovered", {"error_code": "NO_TERMINAL_SIGNAL_STALE", "to": "queued", "retry_at": TS})
STALE_HUMAN = ev("stale_recovered", {"error_code": "NO_TERMINAL_SIGNAL_STALE", "to": "waiting_human",
                                     "question": "the run left files but no result; continue?"})
APPROVE = ev("job_approved", {})
REVISE = ev("job_revised", {"notes": "shorter please"})
RESUME = ev("job_resumed", {"answer": "main", "question": "which branch?"})
CANCEL = ev("job_cancelled", {"reason": "no longer needed"})
RELEASE = ev("job_released", {"error_code": "WORKER_STOPPED", "worker_id": "w1"}, run_id="r1")


def run(*events: Event):
    return replay(ev_with_seq(events))


def ev_with_seq(events: tuple[Event, ...]) -> list[Event]:
    return [Event(seq=i, type=e.type, job_id=e.job_id, ts=e.ts, actor=e.actor, data=e.data, run_id=e.run_id)
            for i, e in enumerate(events, 1)]


# -- every allowed transition ---------------------------------------------------------------------
@pytest.mark.parametrize("events, expected", [
    ((SUBMIT,), QUEUED),
    ((SUBMIT, CLAIM), RUNNING),
    ((SUBMIT, CLAIM, DONE), SUCCEEDED),
    ((SUBMIT, CLAIM, AUDIT), AWAITING_AUDIT),
    ((SUBMIT, CLAIM, ASK), WAITING_HUMAN),
    ((SUBMIT, CLAIM, FAIL_RETRY), QUEUED),
    ((SUBMIT, CLAIM, FAIL_FINAL), FAILED),
    ((SUBMIT, CLAIM, TIMEOUT_RETRY), QUEUED),
    ((SUBMIT, CLAIM, STALE_QUEUED), QUEUED),
    ((SUBMIT, CLAIM, STALE_HUMAN), WAITING_HUMAN),
    ((SUBMIT, CLAIM, AUDIT, APPROVE), SUCCEEDED),
    ((SUBMIT, CLAIM, AUDIT, REVISE), QUEUED),
    ((SUBMIT, CLAIM, ASK, RESUME), QUEUED),
    ((SUBMIT, CANCEL), CANCELLED),
    ((SUBMIT, CLAIM, CANCEL), CANCELLED),
    ((SUBMIT, CLAIM, AUDIT, CANCEL), CANCELLED),
    ((SUBMIT, CLAIM, ASK, CANCEL), CANCELLED),
    ((SUBMIT, CLAIM, RELEASE), QUEUED),
], ids=lambda v: "-".join(e.type for e in v) if isinstance(v, tuple) else v)
def test_allowed_transition_reaches_expected_state(events: tuple[Event, ...], expected: str) -> None:
    assert run(*events).state == expected


# -- every refused transition: each event type from each state it may not follow ------------------
REACH = {QUEUED: (SUBMIT,), RUNNING: (SUBMIT, CLAIM), AWAITING_AUDIT: (SUBMIT, CLAIM, AUDIT),
         WAITING_HUMAN: (SUBMIT, CLAIM, ASK), SUCCEEDED: (SUBMIT, CLAIM, DONE), FAILED: (SUBMIT, CLAIM, FAIL_FINAL),
         CANCELLED: (SUBMIT, CANCEL)}
SAMPLE = {e.type: e for e in (SUBMIT, CLAIM, DONE, AUDIT, ASK, FAIL_FINAL, TIMEOUT_RETRY, STALE_QUEUED, APPROVE,
                              REVISE, RESUME, CANCEL, RELEASE)}
REFUSED = [(state, etype) for state in STATES for etype in TRANSITIONS if state not in TRANSITIONS[etype]]


def test_reach_table_covers_every_state() -> None:
    assert {run(*prefix).state for prefix in REACH.values()} == set(STATES)


@pytest.mark.parametrize("state, etype", REFUSED, ids=[f"{s}+{t}" for s, t in REFUSED])
def test_event_that_does_not_fit_the_state_is_refused(state: str, etype: str) -> None:
    before = run(*REACH[state])
    with pytest.raises(InvalidTransitionError):
        apply(before, ev(etype, dict(SAMPLE[etype].data), seq=before.seq + 1))


def test_any_event_before_submission_is_refused() -> None:
    for etype in TRANSITIONS:
        if etype != "job_submitted":
            with pytest.raises(InvalidTransitionError):
                apply(None, SAMPLE[etype])


def test_final_states_accept_no_event() -> None:
    for final in (SUCCEEDED, FAILED, CANCELLED):
        s = run(*REACH[final])
        for etype, sample in SAMPLE.items():
            with pytest.raises(InvalidTransitionError):
                apply(s, sample)


# -- what the state carries -------------------------------------------------------------------------
def test_claim_starts_an_attempt_with_run_id_epoch_and_lease() -> None:
    s = run(SUBMIT, CLAIM)
    assert (s.attempt, s.run_id, s.epoch, s.worker_id) == (1, "r1", 1, "w1")
    assert s.lease_expires_at is not None


def test_failed_attempt_with_retry_at_is_queued_but_delayed_and_counts_a_failure() -> None:
    s = run(SUBMIT, CLAIM, FAIL_RETRY)
    assert s.state == QUEUED and s.retry_at is not None and s.failures == 1
    assert s.last_error == {"code": "HANDLER_ERROR", "message": "boom"}


def test_second_claim_is_attempt_two() -> None:
    claim2 = ev("job_claimed", {"worker_id": "w2", "epoch": 2, "attempt": 2, "lease_expires_at": LATER}, run_id="r2")
    s = run(SUBMIT, CLAIM, FAIL_RETRY, claim2)
    assert (s.attempt, s.run_id, s.epoch, s.retry_at) == (2, "r2", 2, None)


def test_waiting_human_shows_the_question_and_resume_adds_the_answer_to_the_context() -> None:
    asked = run(SUBMIT, CLAIM, ASK)
    assert asked.question == "which branch?"
    resumed = run(SUBMIT, CLAIM, ASK, RESUME)
    assert resumed.question is None and resumed.answers == ("main",)
    assert resumed.context()["answers"] == ["main"]


def test_a_re_run_after_a_resume_sees_the_question_each_answer_replied_to() -> None:
    """A running job has no question pending: its context's ``question`` is the one its last answer replied to (it
    was always None at run time until 2026-12-06), ``questions`` each answer's, None where a resume named none."""
    second = ev("job_claimed", {"worker_id": "w1", "epoch": 2, "attempt": 2, "lease_expires_at": LATER}, run_id="r2")
    ask_again = ev("human_input_requested", {"question": "which file?"}, run_id="r2")
    ctx = run(SUBMIT, CLAIM, ASK, RESUME, second, ask_again, ev("job_resumed", {"answer": "a.txt"})).context()
    assert (ctx["answers"], ctx["questions"]) == (["main", "a.txt"], ["which branch?", None])
    assert ctx["question"] is None
    ctx = run(SUBMIT, CLAIM, ASK, RESUME).context()
    assert (ctx["question"], ctx["questions"]) == ("which branch?", ["which branch?"])
    assert run(SUBMIT, CLAIM).context()["question"] is None


def test_revise_adds_notes_to_the_context_and_resets_failures() -> None:
    s = run(SUBMIT, CLAIM, FAIL_RETRY, ev("job_claimed", {"worker_id": "w", "epoch": 2, "attempt": 2,
                                                              "lease_expires_at": LATER}, run_id="r2"), AUDIT, REVISE)
    assert s.revisions == ("shorter please",) and s.failures == 0 and s.state == QUEUED


@pytest.mark.parametrize("asked", [(SUBMIT, CLAIM, ASK), (SUBMIT, CLAIM, STALE_HUMAN)])
def test_a_cancelled_job_has_no_pending_question(asked: tuple[Event, ...]) -> None:
    """README: ``question`` is the pending question of a waiting_human job. A cancel closes it, as a resume does
    (until 2026-12-07 a cancelled job still showed it); the question stays in the history."""
    s = run(*asked, CANCEL)
    assert (s.state, s.question) == (CANCELLED, None)


SECOND_CLAIM = ev("job_claimed", {"worker_id": "w1", "epoch": 2, "attempt": 2, "lease_expires_at": LATER}, run_id="r2")


@pytest.mark.parametrize("success", [(DONE,), (AUDIT, APPROVE)], ids=["done", "approved"])
def test_a_job_that_succeeds_after_a_failed_attempt_shows_no_last_error(success: tuple[Event, ...]) -> None:
    """Whichever way it succeeds: the payload ``done``, or an approval of its audit (which kept the failure's
    error until 2026-12-07). The failed attempt stays in the history (its ``job_failed`` event)."""
    s = run(SUBMIT, CLAIM, FAIL_RETRY, SECOND_CLAIM, *success)
    assert (s.state, s.last_error) == (SUCCEEDED, None)


def test_a_job_waiting_for_its_audit_after_a_failed_attempt_shows_that_attempt_s_error() -> None:
    s = run(SUBMIT, CLAIM, FAIL_RETRY, SECOND_CLAIM, AUDIT)
    assert (s.state, s.last_error) == (AWAITING_AUDIT, {"code": "HANDLER_ERROR", "message": "boom"})


def test_stale_recovery_to_waiting_human_keeps_the_evidence_as_last_error() -> None:
    s = run(SUBMIT, CLAIM, STALE_HUMAN)
    assert s.question and s.last_error["code"] == "NO_TERMINAL_SIGNAL_STALE"


def test_context_has_the_fields_handlers_rely_on() -> None:
    ctx = run(SUBMIT, CLAIM).context()
    assert {"job_id", "run_id", "attempt", "input", "answers", "questions", "revisions", "question"} <= ctx.keys()
    assert ctx["attempt"] == 1 and ctx["input"] == {"x": 1}


def test_replay_of_nothing_is_none() -> None:
    assert replay([]) is None


def test_reducer_does_not_mutate_the_previous_state() -> None:
    queued = run(SUBMIT)
    apply(queued, Event(2, "job_claimed", "job1", TS, "t", CLAIM.data, "r1"))
    assert queued.state == QUEUED and queued.attempt == 0


def test_a_released_run_is_queued_again_without_counting_a_failure() -> None:
    s = run(SUBMIT, CLAIM, RELEASE)
    assert (s.state, s.failures, s.attempt, s.worker_id, s.retry_at) == (QUEUED, 0, 1, None, None)



def test_a_job_cancelled_while_it_runs_shows_no_worker_or_lease_but_keeps_its_last_run() -> None:
    """`status` shows a job's worker and lease while it runs (README); its run id stays, to find the run's lines."""
    s = run(SUBMIT, CLAIM, CANCEL)
    assert (s.state, s.worker_id, s.lease_expires_at, s.run_id, s.attempt) == (CANCELLED, None, None, "r1", 1)


# the worker's own (``OutcomeRecorder.release``), in the words its histories hold since 2026-12-02; and a handler's
# own failure with that code (a payload's, before 2026-12-06: its summary is its error), even one in the worker's words
COUNTED_TEXT = ("worker w1 stopped; the run was killed after the 10s grace period: 4 runs in a row of this job ended "
                "with their worker stopping, so this one counts as a failed attempt (a run that stops its own worker "
                "would stop every worker that picks the job up)")
STOP_COUNTED = ev("job_failed", {"error_code": "WORKER_STOPPED", "error": COUNTED_TEXT, "summary": "",
                                 "retry_at": LATER, "output_tail": ""}, run_id="r1")
HANDLERS_STOP = ev("job_failed", {"error_code": "WORKER_STOPPED", "error": "shutting down", "summary": "shutting down",
                                  "retry_at": LATER, "output_tail": ""}, run_id="r1")
IMITATION = ev("job_failed", {"error_code": "WORKER_STOPPED", "error": COUNTED_TEXT, "summary": COUNTED_TEXT,
                              "retry_at": LATER, "output_tail": ""}, run_id="r1")
THREE_STOPS = (SUBMIT, CLAIM, RELEASE, CLAIM, RELEASE, CLAIM, RELEASE, CLAIM)
HAND_BACK = ev("job_released", {"error_code": "PATH_ESCAPE", "worker_id": "w1"}, run_id="r1")
UNSTARTED = ev("job_released", {"error_code": "WORKER_STOPPED_BEFORE_START", "worker_id": "w1"}, run_id="r1")


@pytest.mark.parametrize("events, stops", [
    ((SUBMIT,), 0),
    ((SUBMIT, CLAIM, RELEASE), 1),
    ((SUBMIT, CLAIM, RELEASE, CLAIM, RELEASE, CLAIM), 2),  # a claim keeps the series
    ((*THREE_STOPS, STOP_COUNTED), 4),  # a counted stop adds one
    ((*THREE_STOPS, HANDLERS_STOP), 0),  # after three stops too, a handler's own failure ends the series
    ((*THREE_STOPS, HANDLERS_STOP, CLAIM, RELEASE), 1),  # and the next real stop is the first in a row, forgiven
    ((*THREE_STOPS, IMITATION), 0),  # its summary is its error: not the worker's (whose summary is empty)
    ((SUBMIT, CLAIM, RELEASE, CLAIM, HANDLERS_STOP), 0),  # a handler's own code, which payloads may no longer use,
    ((SUBMIT, CLAIM, HANDLERS_STOP), 0),  # ends the series
    # the worker's words where today's count is lower (a worker that counted a handler's own stops, until 2026-12-07):
    ((SUBMIT, CLAIM, RELEASE, CLAIM, STOP_COUNTED), 2),  # still a run a stopping worker ended
    ((SUBMIT, CLAIM, RELEASE, CLAIM, HAND_BACK), 1),  # the store's fault: neither a stop nor the end of the series
    ((SUBMIT, CLAIM, RELEASE, CLAIM, UNSTARTED), 1),  # a stop before the handler started: the worker's, not the job's
    ((SUBMIT, CLAIM, RELEASE, CLAIM, RELEASE, CLAIM, FAIL_RETRY), 0),  # a run that ended otherwise ends it
    ((SUBMIT, CLAIM, RELEASE, CLAIM, TIMEOUT_RETRY), 0),
    ((SUBMIT, CLAIM, RELEASE, CLAIM, STALE_QUEUED), 0),
    ((SUBMIT, CLAIM, RELEASE, CLAIM, ASK, RESUME), 0),
])
def test_stops_counts_the_runs_in_a_row_that_a_stopping_worker_ended(events: tuple[Event, ...], stops: int) -> None:
    assert run(*events).stops == stops


def test_a_stop_counted_as_a_failed_attempt_is_retried_then_fails_as_any_failure() -> None:
    s = run(SUBMIT, CLAIM, RELEASE, CLAIM, STOP_COUNTED)
    assert (s.state, s.failures, s.last_error["code"]) == (QUEUED, 1, "WORKER_STOPPED")
