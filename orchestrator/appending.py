"""An append of a job's events, as ``Orchestrator.append`` writes it: each event validated and applied to the state
it follows, the lines sealed onto the head they were decided from, the queue index fed before and after, the audit
entry (``audit=``) written under the job's pending lock, and the store's append made with the expected sequence, so
a concurrent writer makes it fail (``ConcurrencyError``) instead of forking the history.

Events durable whose records after them were not written, or after which the queue index could not be brought up to
date, are acknowledged with a warning (each logged here); an audited event whose entry was refused says it is
durable and that ``audit heal`` writes the entry.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from orchestrator import audit as audit_log
from orchestrator import clock, faults
from orchestrator.append_checks import checked_append
from orchestrator.errors import (AuditEntryNotWrittenError, AuxNotWrittenError, ConcurrencyError,
                                 ContextSignatureInvalid, OrchestratorError, PathEscapeError, StorageError,
                                 without_nothing_written)
from orchestrator.events import validate_data
from orchestrator.history import head_record, seal
from orchestrator.limits import a_time
from orchestrator.notices import log_warning
from orchestrator.signing import line_key_id
from orchestrator.state import QUEUED, Event, JobState, apply
from orchestrator.store.base import HEADS_AREA, Head

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator
    from orchestrator.views import JobView


def append_lines(orch: Orchestrator, view: JobView | None, job_id: str, new: Sequence[tuple[str, dict[str, Any]]],
                 *, run_id: str | None = None, actor: str | None = None, now: float | None = None,
                 audit: tuple[str, str] | None = None, fence: int | None = None,
                 aux: Mapping[tuple[str, str], bytes | None] | None = None,
                 ) -> tuple[list[bytes], JobState | None, tuple[dict[str, str], ...]]:
    """``Orchestrator.append`` up to its view: the lines written, the state they lead to and the warnings (each
    logged). A caller that needs no view (``submit_job``) does not have the lines parsed back for one (~16 ms for a
    line holding a 1 MiB input)."""
    actor, audit = checked_append(view, new, run_id=run_id, actor=actor, audit=audit, fence=fence, aux=aux)
    actor = actor or orch.actor
    if view is not None and not view.ok:
        raise ContextSignatureInvalid(view.integrity_error()["message"], job_id=job_id)
    ts = clock.to_iso(orch.clock() if a_time(now) is None else now)
    state = view.state if view else None
    head = view.head if view else Head(0, b"")
    records = []
    for seq, (etype, data) in enumerate(new, head.seq + 1):
        rec = {"job_id": job_id, "run_id": run_id, "type": etype, "ts": ts, "actor": actor,
               "data": validate_data(etype, data)}
        state = apply(state, Event.from_record({**rec, "seq": seq}))
        records.append(rec)
    lines = seal(orch.keyring, job_id, head, records)
    old = view.state if view else None
    if old is None:
        orch.queue.built_with_first_job(orch.store)
    # the key of the job's first line, and every key of its lines (these new ones' too), for an index that keeps them
    # (PostgreSQL's rows), which writes them with a ready row: only for a job left queued (not at a claim or an outcome,
    # where reading every line's key would be work for nothing)
    signer, signers = None, ()
    if orch.queue.keeps_signers and state.state == QUEUED:
        before = view if view is not None and head.seq else None
        signer = before.signer if before is not None else line_key_id(lines[0])
        kids = (*(before.signers if before is not None else ()), line_key_id(lines[0]))
        signers = tuple(dict.fromkeys(kid for kid in kids if kid))
    # None unless the index is in the store
    index_statements = orch.queue.before_append(job_id, old, state, signer, signers)

    def with_events(new_head: Head) -> dict[tuple[str, str], bytes | None]:
        return {(HEADS_AREA, job_id): head_record(job_id, new_head), **(aux or {})}

    # the store writes the head record (then ``aux``) in the events' transaction where it can
    # (PostgreSQL), else right after the events are durable: a record is never ahead of its events
    def build(current: Head) -> list[bytes]:
        # as many events as the view, but not the same last one (a line this was decided from was
        # cut back after a failed fsync, and another took its place): the new lines would not chain
        if current.last_line != head.last_line:
            raise ConcurrencyError(f"{job_id}: event {head.seq} changed since it was read", job_id=job_id)
        return lines

    index_missed: list[OrchestratorError] = []

    def after_event() -> None:
        faults.point("append.after_event")
        try:
            orch.queue.after_append(job_id, old, state)
        except (StorageError, PathEscapeError) as exc:  # the event is durable (and its entry is still to write)
            index_missed.append(exc)
        faults.point("append.after_head")

    written = {"expected_seq": head.seq, "fence": fence, "aux": with_events, "in_transaction": index_statements,
               "expected_last": head.last_line}
    # the events are durable, a record after them is not (files): acknowledged, with a warning, as after a crash
    # between the two; raising would say "nothing written", and the caller would write its event again
    not_written: AuxNotWrittenError | None = None
    entry_writes = None if audit is None else audit_log.entry_writes(
        orch, job_id=job_id, run_id=run_id, action=audit[0], note=audit[1], actor=actor,
        event_line=lines[-1], now=now)
    try:
        if entry_writes is None:
            orch.store.append(job_id, build, **written)
        else:  # under the job's pending lock from before the event until after its entry: no heal writes it too
            entry, with_entry = entry_writes
            orch.store.append_audited(job_id, build, entry, lock=audit_log.pending_lock(job_id),
                                      entry_aux=with_entry, between=after_event, **written)
    except AuxNotWrittenError as exc:  # the event (and its entry) are durable (``EventStore.append_audited``)
        not_written = exc
    except AuditEntryNotWrittenError as exc:  # of its kind: one that may pass is waited out by a worker
        # `audit heal` writes it: true of every audited append's event (``audit.audited`` names it; a stop
        # counted as a failed attempt only since 2026-12-07, twenty-seventh session)
        raise type(exc)(
            f"event {head.seq + len(lines)} ({new[-1][0]}) of job {job_id} is durable: what it records stands "
            f"(do not do it again), but its audit entry could not be written "
            f"({without_nothing_written(exc.message)}); `orchestrator audit heal` writes it once "
            "that is fixed (until then `verify` warns AUDIT_ENTRY_MISSING)", **exc.details) from None
    except OrchestratorError:  # refused (a writer came first): the entry it was to have is not left behind
        orch.queue.drop_refused(job_id, old, state, orch)  # (it keeps the entry of an event that stands)
        raise
    if entry_writes is None:
        after_event()  # an audited append ran it between its event and its entry
    else:
        faults.point("append.after_audit_entry")
    seq = head.seq + len(lines)
    warnings = (*(() if not_written is None else (
        not_written.warning(job_id, seq, new[-1][0], audited=audit is not None),)),
        *(_index_warning(exc, job_id, seq, new[-1][0]) for exc in index_missed))
    for warning in warnings:
        log_warning(log, warning, job_id=job_id)
    return lines, state, warnings


def _index_warning(exc: OrchestratorError, job_id: str, seq: int, event_type: str) -> dict[str, str]:
    from orchestrator.queue import index_warning  # only when an index step failed: queue is imported lazily

    return index_warning(exc, job_id, seq, event_type)
