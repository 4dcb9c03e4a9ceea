"""What a read of a job gives: ``JobView`` (its verified history and the state replayed from it),
``JobStatus`` (what ``status`` shows) and ``Submission`` (what ``submit_job`` returns)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator import clock
from orchestrator.errors import ContextSignatureInvalid
from orchestrator.history import Problem, VerifiedStream
from orchestrator.signing import UNKNOWN_KEY, is_key_id, line_key_id
from orchestrator.state import Event, JobState
from orchestrator.store.base import Head


@dataclass(frozen=True)
class JobView:
    """A job as read: its verified stream and the state replayed from the verified prefix."""

    job_id: str
    stream: VerifiedStream
    state: JobState | None
    problems: tuple[Problem, ...]
    # the view an append returned: what it acknowledged with a warning (``{code, message}``: ``HEAD_RECORD_NOT_WRITTEN``,
    # the events durable, a record after them not: ``Orchestrator.append``); a read has none
    warnings: tuple[dict[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def head(self) -> Head:
        return self.stream.head

    @property
    def events(self) -> list[Event]:
        return [Event.from_record(r) for r in self.stream.records]

    @property
    def signer(self) -> str | None:
        """The key that signed the job's first line (its submission), if the view checked it: what its PostgreSQL ready
        row names, so that a worker that does not trust that key leaves the row out unread (migration 0008)."""
        lines = self.stream.lines
        return line_key_id(lines[0].raw) if self.ok and lines and lines[0].seq == 1 else None

    @property
    def signers(self) -> tuple[str, ...]:
        """Every key that signed a line of the view, each once, in the order met (the first line's first), if the view
        checked them: what its PostgreSQL ready row names beside ``signer`` (migration 0009), so that a worker that
        does not trust one of them leaves the row out unread, whichever line that key signed. A view of a later part
        of a job names the keys of that part: a row names no key its job's history does not hold."""
        return self.line_keys() if self.ok else ()

    def line_keys(self) -> tuple[str, ...]:
        """Every key a line of the view names, each once, in the order met, checked or not: ``signers`` of a view that
        checked them; of one whose only problems are keys it lacks (``missing_keys``), those keys among the others, as
        a claimer writes them into a row that names none (``QueueIndex.name_keys``)."""
        return tuple(dict.fromkeys(kid for kid in map(line_key_id, (line.raw for line in self.stream.lines)) if kid))

    def missing_keys(self) -> frozenset[str]:
        """The ids of the keys that signed lines (or the head record) the keyring could not check, when those are the
        job's only problems: nothing this reader can see is wrong with the job, and a reader that holds the keys can
        check it (a worker leaves it for one, ``orchestrator/untrusted.py``). Empty otherwise: no problem at all, or
        any other (a bad signature, a broken chain, a cut history, a revoked key, a "key id" no key can have)."""
        if not self.problems or any(p.code != UNKNOWN_KEY or not is_key_id(p.kid) for p in self.problems):
            return frozenset()
        return frozenset(p.kid for p in self.problems if p.kid is not None)

    def integrity_error(self) -> dict[str, Any] | None:
        if self.ok:
            return None
        first = self.problems[0]
        return {"code": ContextSignatureInvalid.code,
                "message": f"history failed verification at line {first.line}: {first.code} ({first.message}); "
                           "the job will not be run",
                "problems": [p.to_dict() for p in self.problems]}


@dataclass(frozen=True)
class JobStatus:
    """What ``status`` shows: the derived state plus anything an operator needs to act."""

    job_id: str
    state: str | None
    kind: str | None
    attempt: int
    run_id: str | None
    worker_id: str | None
    lease_expires_at: str | None
    retry_at: str | None
    question: str | None
    last_error: dict[str, Any] | None
    integrity_error: dict[str, Any] | None
    result: dict[str, Any] | None
    priority: int
    submitted_at: str | None
    updated_at: str | None
    events: int
    # the running job's lease record stayed locked (a process paused mid-write: ``RECORD_LOCK_HELD``), so the lease shown
    # is its claim's, and workers pass the job over until the record is let go (``Orchestrator.status``)
    lease_record_held: bool = False

    @classmethod
    def from_view(cls, view: JobView) -> "JobStatus":
        s = view.state
        iso = lambda t: clock.to_iso(t) if t else None  # noqa: E731
        return cls(job_id=view.job_id, state=s.state if s else None, kind=s.kind if s else None,
                   attempt=s.attempt if s else 0, run_id=s.run_id if s else None,
                   worker_id=s.worker_id if s else None,
                   lease_expires_at=iso(s.lease_expires_at) if s else None,
                   retry_at=iso(s.retry_at) if s else None, question=s.question if s else None,
                   last_error=dict(s.last_error) if s and s.last_error else None,
                   integrity_error=view.integrity_error(), result=dict(s.result) if s and s.result else None,
                   priority=s.priority if s else 0, submitted_at=iso(s.submitted_at) if s else None,
                   updated_at=iso(s.updated_at) if s else None, events=view.head.seq)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Submission:
    job_id: str
    created: bool  # False when an idempotency key named an existing job
    warnings: tuple[dict[str, str], ...] = ()  # of the submit's append (``JobView.warnings``)
