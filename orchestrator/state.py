"""The job state machine as a pure reducer: ``apply(state, event) -> state``.

No I/O, no clock, no signatures: ``replay(events)`` folds already-verified events into a
``JobState``. The one table ``TRANSITIONS`` says which state each event type may follow;
an event that does not fit is refused with ``InvalidTransitionError``. Control actions ask
``check_transition`` before writing, so the same table guards writes and replays.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping

from orchestrator.clock import from_iso
from orchestrator.config import DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY
from orchestrator.errors import InvalidTransitionError

# A run its worker's stop ended (killed after the grace period) is handed back (``job_released``), not a failed
# attempt, so that a restart costs a job nothing; from the run after this many in a row on, each such run is a failed
# attempt (``job_failed``): a job whose run stops its own worker would otherwise stop every worker, for ever.
WORKER_STOPPED = "WORKER_STOPPED"
STOPS_FORGIVEN = 3
# A job a stopping worker handed back before its handler started: no run of it can have stopped that worker, so this
# is neither one of those stops in a row nor their end (as any hand-back but ``WORKER_STOPPED``: ``stops_after``).
WORKER_STOPPED_BEFORE_START = "WORKER_STOPPED_BEFORE_START"
# The words of the worker's own counted stop (``OutcomeRecorder.release``, unchanged since its first, 2026-12-02), by
# which ``counted_stop`` tells it from a handler's own failure with ``WORKER_STOPPED`` (before 2026-12-06): the old
# histories hold them, so they may not change.
COUNTED_STOP_WORDS = "runs in a row of this job ended with their worker stopping"

QUEUED, RUNNING, AWAITING_AUDIT, WAITING_HUMAN = "queued", "running", "awaiting_audit", "waiting_human"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, AWAITING_AUDIT, WAITING_HUMAN, SUCCEEDED, FAILED, CANCELLED)
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})
NON_FINAL_STATES = frozenset(STATES) - FINAL_STATES


@dataclass(frozen=True, slots=True)
class Event:
    """A verified event as the reducer sees it (the envelope minus chain and signature)."""

    seq: int
    type: str
    job_id: str
    ts: str
    actor: str
    data: Mapping[str, Any]
    run_id: str | None = None

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> "Event":
        return cls(seq=rec["seq"], type=rec["type"], job_id=rec["job_id"], ts=rec["ts"], actor=rec["actor"],
                   data=rec.get("data") or {}, run_id=rec.get("run_id"))


@dataclass(frozen=True)
class JobState:
    """Everything known about a job after replaying its events."""

    job_id: str
    state: str
    kind: str
    input: Any
    options: Mapping[str, Any]
    submitted_at: float
    updated_at: float
    seq: int = 0
    attempt: int = 0  # runs started (1-based once claimed)
    failures: int = 0  # failed attempts since the last human input; compared with max_attempts
    stops: int = 0  # runs in a row a stopping worker ended (``WORKER_STOPPED``): from ``STOPS_FORGIVEN`` on, counted
    epoch: int = 0  # fencing epoch of the current or last claim
    run_id: str | None = None
    worker_id: str | None = None
    lease_expires_at: float | None = None
    retry_at: float | None = None  # a queued job is not runnable before this
    question: str | None = None
    last_error: Mapping[str, Any] | None = None
    result: Mapping[str, Any] | None = None
    answers: tuple[str, ...] = ()
    questions: tuple[str | None, ...] = ()  # the question each answer replied to (None: its event names none)
    revisions: tuple[str, ...] = ()
    last_event: str | None = None
    history: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (type, ts) per event

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def max_attempts(self) -> int:
        return int(self.options.get("max_attempts") or DEFAULT_MAX_ATTEMPTS)

    @property
    def priority(self) -> int:
        return int(self.options.get("priority") or DEFAULT_PRIORITY)

    @property
    def timeout(self) -> float | None:
        value = self.options.get("timeout")
        return float(value) if value else None

    def context(self) -> dict[str, Any]:
        """The JSON object a handler receives for the current run."""
        return {"job_id": self.job_id, "run_id": self.run_id, "attempt": self.attempt, "kind": self.kind,
                "input": self.input, "options": dict(self.options), "answers": list(self.answers),
                "questions": list(self.questions), "revisions": list(self.revisions),
                # a job runs with no question pending: the one its last answer replied to, which the re-run acts on
                "question": self.questions[-1] if self.questions else None}


# event type -> the states it may follow (None: the job does not exist yet)
TRANSITIONS: dict[str, frozenset[str | None]] = {
    "job_submitted": frozenset({None}),
    "job_claimed": frozenset({QUEUED}),
    "job_succeeded": frozenset({RUNNING}),
    "audit_requested": frozenset({RUNNING}),
    "human_input_requested": frozenset({RUNNING}),
    "job_failed": frozenset({RUNNING}),
    "job_timeout": frozenset({RUNNING}),
    "stale_recovered": frozenset({RUNNING}),
    "job_approved": frozenset({AWAITING_AUDIT}),
    "job_revised": frozenset({AWAITING_AUDIT}),
    "job_resumed": frozenset({WAITING_HUMAN}),
    "job_cancelled": NON_FINAL_STATES,
    "job_released": frozenset({RUNNING}),
}

_STATE_FIELDS = frozenset(f.name for f in fields(JobState))


def replace(s: JobState, **changes: Any) -> JobState:
    """A new state with ``changes`` (``dataclasses.replace`` without its ``__init__`` round trip: 1 us
    instead of 6; a replay makes two per event on every read, the reducer's and ``apply``'s)."""
    if not changes.keys() <= _STATE_FIELDS:
        raise TypeError(f"JobState has no field {sorted(changes.keys() - _STATE_FIELDS)}")
    new = object.__new__(JobState)
    new.__dict__.update(s.__dict__)
    new.__dict__.update(changes)
    return new


def check_transition(current: str | None, event_type: str) -> None:
    """Raise ``InvalidTransitionError`` unless ``event_type`` may follow ``current``."""
    allowed = TRANSITIONS.get(event_type)
    if allowed is None:
        raise InvalidTransitionError(f"unknown event type {event_type!r}")
    if current not in allowed:
        wanted = " or ".join(sorted(s for s in allowed if s)) or "a new job"
        raise InvalidTransitionError(f"{event_type} needs a job that is {wanted}; this one is {current or 'missing'}",
                                     state=current, event=event_type)


def _t(ts: str) -> float:
    return from_iso(ts)


def _retry_or_fail(s: JobState, e: Event, **extra: Any) -> JobState:
    retry_at = e.data.get("retry_at")
    error = {"code": e.data.get("error_code"), "message": e.data.get("error", "")}
    return replace(s, state=QUEUED if retry_at else FAILED, retry_at=_t(retry_at) if retry_at else None,
                   failures=s.failures + 1, last_error=error, lease_expires_at=None, worker_id=None, **extra)


def _submitted(s: JobState | None, e: Event) -> JobState:
    t = _t(e.ts)
    return JobState(job_id=e.job_id, state=QUEUED, kind=e.data["kind"], input=e.data.get("input"),
                    options=e.data.get("options") or {}, submitted_at=t, updated_at=t)


def _claimed(s: JobState, e: Event) -> JobState:
    lease = e.data.get("lease_expires_at")
    return replace(s, state=RUNNING, run_id=e.run_id, attempt=s.attempt + 1, epoch=e.data["epoch"],
                   worker_id=e.data.get("worker_id"), lease_expires_at=_t(lease) if lease else None,
                   retry_at=None)


def _outcome(to: str) -> Callable[[JobState, Event], JobState]:
    def apply_outcome(s: JobState, e: Event) -> JobState:
        result = {k: e.data[k] for k in ("summary", "output", "artifacts") if k in e.data}
        return replace(s, state=to, result=result, question=e.data.get("question") if to == WAITING_HUMAN else None,
                       lease_expires_at=None, worker_id=None, last_error=None if to == SUCCEEDED else s.last_error)
    return apply_outcome


def _stale(s: JobState, e: Event) -> JobState:
    if e.data.get("to") == WAITING_HUMAN:
        error = {"code": e.data.get("error_code"), "message": e.data.get("error", "")}
        return replace(s, state=WAITING_HUMAN, question=e.data.get("question"), lease_expires_at=None,
                       worker_id=None, last_error=error)
    return _retry_or_fail(s, e)


def _human_input(field_name: str, key: str) -> Callable[[JobState, Event], JobState]:
    def apply_input(s: JobState, e: Event) -> JobState:
        added = (*getattr(s, field_name), e.data[key])
        return replace(s, state=QUEUED, question=None, failures=0, retry_at=None, **{field_name: added})
    return apply_input


_answered = _human_input("answers", "answer")


def _resumed(s: JobState, e: Event) -> JobState:
    return replace(_answered(s, e), questions=(*s.questions, e.data.get("question")))


_REDUCERS: dict[str, Callable[[Any, Event], JobState]] = {
    "job_submitted": _submitted,
    "job_claimed": _claimed,
    "job_succeeded": _outcome(SUCCEEDED),
    "audit_requested": _outcome(AWAITING_AUDIT),
    "human_input_requested": _outcome(WAITING_HUMAN),
    "job_failed": _retry_or_fail,
    "job_timeout": _retry_or_fail,
    "stale_recovered": _stale,
    # succeeded shows no error, as after ``job_succeeded`` (until 2026-12-07 an approval kept the last failure's)
    "job_approved": lambda s, e: replace(s, state=SUCCEEDED, last_error=None),
    "job_revised": _human_input("revisions", "notes"),
    "job_resumed": _resumed,
    # no question left pending, as after a resume (until 2026-12-07 a cancelled job still showed it)
    "job_cancelled": lambda s, e: replace(s, state=CANCELLED, lease_expires_at=None, worker_id=None, retry_at=None,
                                          question=None),
    # a stopping worker handed the run back: queued again, and the attempt does not count as a failure
    "job_released": lambda s, e: replace(s, state=QUEUED, lease_expires_at=None, worker_id=None, retry_at=None),
}
assert _REDUCERS.keys() == TRANSITIONS.keys()


def stops_after(stops: int, event_type: str, data: Mapping[str, Any]) -> int:
    """``JobState.stops`` after an event of ``event_type`` (its ``data``) that found ``stops``: a run a stopping worker
    ended adds one (handed back, or counted: ``counted_stop``), a claim or another hand-back (the store's fault:
    ``PATH_ESCAPE``; a stop before the handler started: ``WORKER_STOPPED_BEFORE_START``) keeps the count, anything
    else ends the series, a handler's own failure with ``WORKER_STOPPED`` too. The reducer's rule."""
    if event_type == "job_released":
        return stops + 1 if data.get("error_code") == WORKER_STOPPED else stops
    if event_type == "job_claimed":
        return stops
    return stops + 1 if counted_stop(event_type, data) else 0


def counted_stop(event_type: str, data: Mapping[str, Any]) -> bool:
    """Whether the event is a run a stopping worker ended that counts as a failed attempt (from the
    ``STOPS_FORGIVEN + 1``-th stop in a row on): written with an audit entry, as a release (``audit.audited``).

    It is the worker's ``job_failed`` with ``WORKER_STOPPED``, no payload (``summary`` empty) and its own words
    (``COUNTED_STOP_WORDS``). A handler's own failure with that code (payloads may no longer use it,
    ``payload.RESERVED_ERROR_CODES``; histories before 2026-12-06 hold some) is not, even after three stops: its
    ``error`` is its ``summary``, so a handler that wrote the worker's words has a summary (until 2026-12-07 one after
    three stops in a row was read as the fourth). Checks past the type and code only for the few with both."""
    if event_type != "job_failed" or data.get("error_code") != WORKER_STOPPED:
        return False
    error = data.get("error")
    return not data.get("summary") and isinstance(error, str) and COUNTED_STOP_WORDS in error


def apply(state: JobState | None, event: Event) -> JobState:
    """Fold one event into the state; refuse an event that does not fit."""
    check_transition(state.state if state else None, event.type)
    new = _REDUCERS[event.type](state, event)
    return replace(new, seq=event.seq, updated_at=_t(event.ts), last_event=event.type,
                   history=(*new.history, (event.type, event.ts)),
                   stops=stops_after(state.stops, event.type, event.data) if state else 0)


def replay(events: Iterable[Event]) -> JobState | None:
    """The state after all ``events`` (None for no events)."""
    state: JobState | None = None
    for event in events:
        state = apply(state, event)
    return state
