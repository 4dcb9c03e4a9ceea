"""The audit log: one signed, chained entry per control action and per system decision.

Entries live in the project's audit stream (``audit/audit_events.jsonl`` on the file
backend), in the same line format as job events. Each names the job, run, actor, action,
a sanitized note, and the hash of the job event it produced, so the audit log and the job
histories can be cross-checked (``integrity.verify_project``).

Healing (``orchestrator audit heal``, docs/runbook.md section E): a crash between a job event and
its audit entry leaves an event with no entry. The job event is the truth, so the entry is written
later, once:

* every event of a type in ``AUDITED_EVENTS``, and every stop counted as a failed attempt, must have exactly one
  entry (``audited``);
* after an entry is durable, a *marker* ``audited/<event_hash>`` is written (a derived
  cache, deletable). ``heal`` first checks the markers of the job's audited events: when
  all exist (the normal case) it reads nothing else, so commands never scan the audit log;
* the writer of an event holds the job's *pending lock* from before the event until after
  its entry; ``heal`` takes the same lock before writing, so it never races a live writer.
  A writer that crashed released its lock with its process. Only under the lock, and only
  when a marker is missing, does ``heal`` read the audit log (the rare path) to tell a lost
  marker from a lost entry.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Container, Iterable, Iterator, Sequence

from orchestrator import clock, faults
from orchestrator.errors import (HEAD_RECORD_NOT_WRITTEN, AuxNotWrittenError, IntegrityError, OrchestratorError,
                                 PathEscapeError, StorageError)
from orchestrator.history import head_contradicted, head_record, seal
from orchestrator.notices import log_warning
from orchestrator.security import sanitize_text
from orchestrator.signing import line_hash, parse_line
from orchestrator.state import counted_stop
# ``AUDIT_HEAD``: the head record of the audit log (like ``heads/<job_id>`` for a job): without it, a log cut at a line
# boundary, or whose last newline was damaged, would look complete
from orchestrator.store.base import AUDIT_HEAD, AUDIT_STREAM, AuxWrites, Builder, Head, LockedHead
from orchestrator.store.locks import bounded_waits

if TYPE_CHECKING:
    from orchestrator.api import JobView, Orchestrator

MARKERS_AREA = "audited"
AUDIT_ENTRY_MISSING = "AUDIT_ENTRY_MISSING"  # an audited event has no entry (a crash; healed by the next command)
log = logging.getLogger(__name__)
LOCK_BUCKETS = 64
# How long a reader (``verify``, ``audit-timeline``) waits, all jobs together, for the actions in flight on jobs whose
# audit entry it found missing (``wait_for_actions``): an action holds its job's pending lock for milliseconds, or up
# to the store's deadline while the audit log's row is contended; a writer paused longer leaves its entry reported
# missing.
IN_FLIGHT_WAIT = 5.0
HEAL_BATCH = 500  # jobs a bulk heal (audit heal, metrics) loads and passes to ``heal`` at a time

# event type -> the audit action that explains it; every such event must have one audit entry
AUDITED_EVENTS: dict[str, str] = {
    "job_approved": "approve",
    "job_revised": "revise",
    "job_resumed": "resume",
    "job_cancelled": "cancel",
    "stale_recovered": "stale_recovered",
    "job_timeout": "job_timeout",
    # a run handed back (a stop, the store's fault): audited since the first release; healed and checked since
    # 2026-12-07 (until then an entry lost to a crash or a cut log was neither written again nor reported missing)
    "job_released": "job_released",
}
# the action of a run a stopping worker ended from the ``STOPS_FORGIVEN + 1``-th in a row on: a ``job_failed``
# (``OutcomeRecorder.release``), which is not audited by its type (a handler's failure is not), but as the worker's
# (``state.counted_stop``); checked and healed since 2026-12-07, twenty-seventh session
COUNTED_STOP_ACTION = "job_released"
# every action an entry can name: those above, and decisions audited without being in that table
# (a released run, a refused run or action); ``audit-timeline --action`` accepts these and the event types
ACTIONS = frozenset({*AUDITED_EVENTS.values(), "run_refused", "integrity_refusal"})
# the field of an audited event whose text is its entry's note when the event holds no ``note`` of its own
_NOTE_FIELD = {"job_approved": "note", "job_revised": "notes", "job_resumed": "answer", "job_cancelled": "reason",
               "stale_recovered": "error", "job_timeout": "error", "job_released": "error", "job_failed": "error"}


def audited(records: Sequence[dict[str, Any]]) -> Iterator[tuple[int, str]]:
    """(index, action) of each of a history's records that must have one audit entry: an event of a type in
    ``AUDITED_EVENTS``, and a stop counted as a failed attempt (``state.counted_stop``, the reducer's rule: the
    worker's ``job_failed`` with ``WORKER_STOPPED``; a handler's own, from before such codes were refused, has none).
    The one rule of ``verify``, ``heal`` and ``audit-timeline``: a lookup per record, and the few ``job_failed``
    with that code a look at their text (until 2026-12-07 the job's stops were counted instead, which read a
    handler's own after three stops in a row as the worker's)."""
    for i, rec in enumerate(records):
        etype = rec.get("type")
        action = AUDITED_EVENTS.get(etype)  # type: ignore[arg-type]
        if etype == "job_failed" and counted_stop(etype, _data(rec)):
            action = COUNTED_STOP_ACTION
        if action is not None:
            yield i, action


def _data(rec: dict[str, Any]) -> dict[str, Any]:
    data = rec.get("data")
    return data if isinstance(data, dict) else {}


def note_of(event_type: str, data: dict[str, Any]) -> str:
    """The note of an audited event's entry, from the event alone: the operator's comment (``note``) if it holds
    one, else its text (the answer, the notes, ...), with the channel it came through (``[via chat] ...``). The
    entry written with the event and the one ``heal`` writes after a crash are made by this one function, so a
    healed entry says what the lost one said. A stale recovery's note ends with the state the job went to."""
    text = data.get("note") or data.get(_NOTE_FIELD.get(event_type, ""), "")
    text = text if isinstance(text, str) else str(text)
    if event_type == "stale_recovered" and data.get("to"):  # its error says why, not where the job went
        text = f"{text}; to {data['to']}"
    return f"[via {data['via']}] {text}" if data.get("via") else text


# -- the pending lock -----------------------------------------------------------------------------
def _bucket(job_id: str) -> int:
    return hashlib.sha256(job_id.encode()).digest()[0] % LOCK_BUCKETS


def pending_lock(job_id: str) -> str:
    """The name of the job's pending lock (``EventStore.exclusive``)."""
    return f"audit-{_bucket(job_id):02d}"


@contextlib.contextmanager
def pending(orch: "Orchestrator", job_id: str) -> Iterator[None]:
    """Hold the job's pending lock: between a job event and its audit entry, nobody heals.

    ``EventStore.exclusive``: between processes on every backend (an ``flock`` on files, an advisory
    lock on PostgreSQL, where the event and its entry commit in two transactions), released if the
    holder dies. Jobs share 64 buckets, so an unrelated job may wait a moment. ``Orchestrator.append``
    holds it through ``EventStore.append_audited``.
    """
    with orch.store.exclusive(pending_lock(job_id)):
        yield


def wait_for_actions(orch: "Orchestrator", job_ids: Iterable[str]) -> None:
    """Take and let go each job's pending lock in turn (one order everywhere, as ``heal``), so that an action in
    flight on it has written its entry; for ``IN_FLIGHT_WAIT`` at most, all together. A lock held longer (a writer
    paused), or one that cannot be taken (a store this process cannot write its lock file in), ends the wait: what
    is missing then is reported."""
    end = time.monotonic() + IN_FLIGHT_WAIT
    try:
        for job in sorted(job_ids, key=pending_lock):
            left = end - time.monotonic()
            if left <= 0:
                return
            with orch.store.calls_end_by(end), bounded_waits(lambda: False, left), pending(orch, job):
                pass
    except OrchestratorError as exc:
        log.info("stopped waiting for the actions in flight: %s", exc.message, extra={"code": exc.code})


# -- a symbolic link in the audit log's place -------------------------------------------------------------
def linked_log(exc: PathEscapeError, consequence: str) -> PathEscapeError:
    """``exc`` (a file of the audit log that is a symbolic link, never followed) as a command that must read or
    write the log reports it: what is wrong, what it means for this command, and what to do. ``verify`` and
    ``audit-timeline`` list the link as a problem of ``@audit`` instead (exit 7)."""
    return PathEscapeError(f"{consequence}: the project's audit log is not usable ({exc.message}). Run `orchestrator "
                           "verify` to see every problem of the store", **exc.details)


@contextlib.contextmanager
def linked_refused(consequence: str) -> Iterator[None]:
    """A ``PathEscapeError`` met in the block is reported by ``linked_log``."""
    try:
        yield
    except PathEscapeError as exc:
        raise linked_log(exc, consequence) from None


def require_writable(orch: "Orchestrator", consequence: str) -> None:
    """Refuse before anything is written when the audit log is a symbolic link (``PathEscapeError``, by
    ``linked_log``), a FIFO, socket, device or directory holding files (``StorageError``), or was cut
    (``refuse_cut``; also removed whole, ``_refuse_removed``) or ends in a line no append may follow (corrupt,
    ``IntegrityError``): an action whose entry cannot be written must not write its event either (it would stand
    unexplained). The log is looked at under its append lock (an append of no line, which writes nothing, whether
    or not a head record is there to compare: a derived record, deletable), and only on a store that writes the
    record after the lines (files): on PostgreSQL this would cost three round trips more per action, where the
    record commits with its line; there the entry's own ``build`` refuses, after the event (as after a crash between
    the two: ``heal`` writes it later), given the head of the last row ``orch_events`` holds (``pg_append``)."""
    with linked_refused(consequence):
        try:
            there = _refuse_removed(orch, consequence)
        except StorageError as exc:
            raise StorageError(f"{consequence}: {exc.message}", **exc.details) from None
        if there and not orch.store.atomic_aux:
            orch.store.append(AUDIT_STREAM, lambda head: refuse_cut(orch, head, consequence) or [])


def _refuse_removed(orch: "Orchestrator", consequence: str) -> bool:
    """Whether the audit log's file is there to append to (always, where streams are not files), after refusing
    what is in its place (``EventStore.refuse_unusable``). When it is not (removed whole, with its folder or not,
    or an empty folder in its place), ``refuse_cut`` with no entry: a log with a head record was cut. Decided
    without opening it for append, which would make an empty log and its folder only to refuse it, and change
    the evidence ``verify`` shows; the first real entry makes them (durably, ``JsonlStore._open_for_append``)."""
    if orch.store.refuse_unusable(AUDIT_STREAM):
        return True
    refuse_cut(orch, Head(0, b""), consequence)
    return False


def refuse_cut(orch: "Orchestrator", head: Head, consequence: str = "nothing was written") -> None:
    """Raise ``IntegrityError`` when the audit log's head record says the log held more entries than
    ``head`` (its last complete one), or another last one (``history.head_contradicted``): the log was cut, and an
    entry appended now would write a new head record over the only evidence of it (``verify`` would pass again).
    Called with the log's append lock held (from ``build``), so no writer moves the head meanwhile. A head read with
    the record under that lock (``LockedHead``: PostgreSQL) is compared with that record: no read of its own, which
    on another connection the server's timeouts could cancel, or could find newer than the head once a connection cut
    meanwhile let the lock go (until 2026-12-07: a cut reported, exit 7, that was not there)."""
    record = head.record if isinstance(head, LockedHead) else orch.store.get_aux(*AUDIT_HEAD)
    problem = head_contradicted(AUDIT_STREAM, head, record, orch.keyring)
    if problem is not None:
        raise IntegrityError(f"{consequence}: the audit log does not hold what its head record says "
                             f"({problem.code}: {problem.message}). Keep the store as it is and run `orchestrator "
                             "verify`; restore the audit log from a backup (docs/runbook.md, section E)",
                             problems=[problem.to_dict()])


# -- writing ------------------------------------------------------------------------------------------
def _mark(orch: "Orchestrator", event_hash: str, audit_seq: int) -> None:
    orch.store.put_aux(MARKERS_AREA, event_hash, str(audit_seq).encode())


def _entry(orch: "Orchestrator", *, job_id: str, action: str, actor: str, run_id: str | None, note: str,
           event_line: bytes | None, extra: dict[str, Any] | None, now: float | None) -> dict[str, Any]:
    data: dict[str, Any] = {"action": action, "note": sanitize_text(note)}
    if event_line is not None:
        event = parse_line(event_line)
        data.update(event_hash=line_hash(event_line), event_seq=event.get("seq"), event_type=event.get("type"))
    if extra:
        data.update(extra)
    return {"job_id": job_id, "run_id": run_id, "type": "audit", "actor": actor,
            "ts": clock.to_iso(orch.clock() if now is None else now), "data": data}


def record(orch: "Orchestrator", *, job_id: str, action: str, actor: str, run_id: str | None = None,
           note: str = "", event_line: bytes | None = None, extra: dict[str, Any] | None = None,
           now: float | None = None) -> int:
    """Append one audit entry (durable when this returns); returns its sequence number.

    With ``event_line``, the caller must hold ``pending(orch, job_id)`` (``Orchestrator.append``
    does), so a concurrent ``heal`` cannot write the same entry.
    """
    build, with_entry = entry_writes(orch, job_id=job_id, action=action, actor=actor, run_id=run_id, note=note,
                                     event_line=event_line, extra=extra, now=now)
    not_written = f"the {action} entry of job {job_id} was not written"
    with linked_refused(not_written):
        _refuse_removed(orch, not_written)
        head = orch.store.append(AUDIT_STREAM, build, aux=with_entry)
    faults.point("audit.record.after_entry")
    return head.seq


def entry_writes(orch: "Orchestrator", *, job_id: str, action: str, actor: str, run_id: str | None = None,
                 note: str = "", event_line: bytes | None = None, extra: dict[str, Any] | None = None,
                 now: float | None = None) -> tuple[Builder, AuxWrites]:
    """An entry's ``build`` and ``aux`` for an append to the audit log (``record``'s arguments): its line, sealed onto
    the head the store finds, and, written with it, the log's head record and the event's marker (in its transaction
    on PostgreSQL, right after it is durable on files: a marker lost in a crash is restored by ``heal``)."""
    rec = _entry(orch, job_id=job_id, action=action, actor=actor, run_id=run_id, note=note,
                 event_line=event_line, extra=extra, now=now)

    def build(head: Head) -> list[bytes]:
        refuse_cut(orch, head, f"the {action} entry of job {job_id} was not written")
        return seal(orch.keyring, AUDIT_STREAM, head, [rec])

    def with_entry(head: Head) -> dict[tuple[str, str], bytes | None]:
        out: dict[tuple[str, str], bytes | None] = {AUDIT_HEAD: head_record(AUDIT_STREAM, head)}
        if event_line is not None:
            out[(MARKERS_AREA, rec["data"]["event_hash"])] = str(head.seq).encode()
        return out

    return build, with_entry


# -- healing ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unaudited:
    """An audited-type event with no marker (its entry is missing, or only its marker is), or whose entry the log
    lacks though its marker is there (``unmarked`` with ``logged``)."""

    job_id: str
    seq: int
    raw: bytes
    record: dict[str, Any]
    action: str  # the action its entry names (``audited``)

    @property
    def event_hash(self) -> str:
        return line_hash(self.raw)


def unmarked(orch: "Orchestrator", views: Iterable["JobView"], logged: Container[str] | None = None
             ) -> list[Unaudited]:
    """The jobs' verified events that need an audit entry and have no marker (cheap: no log read; the markers
    looked up together, ``EventStore.aux_present``: one round trip on PostgreSQL, not one per event). With
    ``logged`` (the event hashes the log's entries name, read from the log: ``audited_hashes``), also those whose
    entry the log lacks whatever their markers say: a marker outlives its entry when the log is restored from a copy
    older than it (runbook E), and only a read of the log finds that (``audit heal``, ``audit-timeline``)."""
    todo = [Unaudited(view.job_id, view.stream.lines[i].seq, view.stream.lines[i].raw, view.stream.records[i], action)
               for view in views for i, action in audited(view.stream.records)]
    if not todo:
        return []
    marked = orch.store.aux_present(MARKERS_AREA, {u.event_hash for u in todo})
    return [u for u in todo if u.event_hash not in marked or (logged is not None and u.event_hash not in logged)]


def audited_hashes(orch: "Orchestrator") -> dict[str, int]:
    """event_hash -> audit seq for every entry of the audit log (the rare, full read). A log that is a symbolic link
    is refused (``linked_log``)."""
    found: dict[str, int] = {}
    with linked_refused("the audit entries a crash left missing cannot be checked or written; nothing was written"):
        lines = orch.store.read(AUDIT_STREAM)
    for stored in lines:
        if b'"event_hash"' not in stored.raw:
            continue
        try:
            eh = parse_line(stored.raw)["data"]["event_hash"]
        except (ValueError, KeyError, TypeError, RecursionError):
            continue  # a damaged line is verify's business
        found.setdefault(eh, stored.seq)
    return found


def heal(orch: "Orchestrator", views: Iterable["JobView"], *, now: float | None = None,
         create_key: bool = True, warnings: list[dict[str, str]] | None = None) -> list[int]:
    """Write the missing audit entries of these jobs, once; returns the new entries' seqs.

    Only verified events are considered (a damaged history is not explained further). The signing key
    is loaded before anything is written or locked (``SigningKeyError`` if there is none); with
    ``create_key=False`` it must exist already (``Keyring.ensure_signer``). An entry written whose records after
    it were not (``AuxNotWrittenError``: its marker, the log's head record) is durable: the heal goes on, and its
    warning (``HEAD_RECORD_NOT_WRITTEN``) is logged and appended to ``warnings``.
    """
    return heal_found(orch, unmarked(orch, views), now=now, create_key=create_key, warnings=warnings)


def heal_found(orch: "Orchestrator", todo: list[Unaudited], *, now: float | None = None,
               create_key: bool = True, warnings: list[dict[str, str]] | None = None) -> list[int]:
    """``heal`` of the events ``unmarked`` found (by this process or another, ``projection.refresh``)."""
    if not todo:
        return []
    orch.keyring.ensure_signer(create=create_key)
    written: list[int] = []
    with contextlib.ExitStack() as stack:
        one_job_per_bucket = {_bucket(u.job_id): u.job_id for u in todo}
        for bucket in sorted(one_job_per_bucket):  # one order everywhere: no deadlock between healers
            stack.enter_context(pending(orch, one_job_per_bucket[bucket]))
        present = audited_hashes(orch)
        for u in todo:
            eh = u.event_hash
            if eh in present:  # only the marker was lost
                try:
                    _mark(orch, eh, present[eh])
                except (StorageError, PathEscapeError) as exc:  # a derived record: the next heal writes it
                    _warn(warnings, marker_not_written(exc, u.job_id, u.seq, u.record["type"]))
                continue
            rec = u.record
            faults.point("audit.heal.before_entry")
            try:
                seq = record(orch, job_id=u.job_id, action=u.action, actor=rec.get("actor", "?"),
                             run_id=rec.get("run_id"), note=note_of(rec["type"], rec.get("data") or {}),
                             event_line=u.raw, now=now,
                             extra={"healed": True, "healed_by": orch.actor, "event_ts": rec.get("ts")})
            except AuxNotWrittenError as exc:  # the entry is durable: not "nothing written", and not to write again
                _warn(warnings, exc.healed_warning(u.job_id, u.seq, rec["type"]))
                seq = exc.details.get("seq")  # the store's new head, when it says (files do)
                if seq is None:
                    continue
            present[eh] = seq
            written.append(seq)
    return written


def _warn(warnings: list[dict[str, str]] | None, warning: dict[str, str]) -> None:
    """Log a heal's warning, and add it to the caller's ``warnings`` when it keeps them."""
    log_warning(log, warning)
    if warnings is not None:
        warnings.append(warning)


def marker_not_written(exc: OrchestratorError, job_id: str, event_seq: int, event_type: str) -> dict[str, str]:
    """The ``{code, message}`` of a heal that found an event's entry in the log and could not write its marker
    (a full disk, something in its place): a derived record, as a head record is; the next heal writes it."""
    return {"code": HEAD_RECORD_NOT_WRITTEN,
            "message": f"the audit entry of event {event_seq} ({event_type}) of job {job_id} is in the log, but its "
                       f"marker could not be written: {exc.message}. Nothing is to be done again: the next heal (a "
                       "command on the job, `audit heal`) writes it"}


def heal_quietly(orch: "Orchestrator", views: Iterable["JobView"], *, now: float | None = None,
                 logged: Container[str] | None = None, not_written: list[str] | None = None) -> list[int]:
    """``heal`` for read commands (``audit-timeline``, ``metrics``): only with a signing key this machine
    already has, never a new one. A machine without one (set up to verify, with only ``.pub`` files; or
    whose key is revoked) skips it: the entry stays missing, a warning (``AUDIT_ENTRY_MISSING``), until a
    command that writes (a control action on the job, ``audit heal``) runs where the key is. A key created
    here would sign an entry no other machine trusts, and ``verify`` would fail there. A store that refuses the
    write (a full disk) fails no read either: the entries stay missing, and why is appended to ``not_written``.
    ``logged``: as ``unmarked``'s."""
    return heal_found_quietly(orch, unmarked(orch, views, logged), now=now, not_written=not_written)


def heal_found_quietly(orch: "Orchestrator", todo: list[Unaudited], *, now: float | None = None,
                       not_written: list[str] | None = None) -> list[int]:
    """``heal_quietly`` of the events ``unmarked`` found. An audit log that is a symbolic link, or was cut
    (``refuse_cut``), is skipped too: the entries stay missing, and ``verify`` (also ``audit-timeline``) lists the
    link or the cut, as it lists the warnings."""
    from orchestrator.errors import SigningKeyError

    try:
        return heal_found(orch, todo, now=now, create_key=False)
    except (SigningKeyError, PathEscapeError, IntegrityError):
        return []
    except StorageError as exc:  # what was written before stays (each entry is whole); the rest stays missing
        # "not all": an entry whose record after it failed (AuxNotWrittenError, a full disk or a link) is durable
        why = f"the missing audit entries were not all written: {exc.message}"
        log.warning(why)
        if not_written is not None:
            not_written.append(why)
        return []


def entries_for(orch: "Orchestrator", *, job_id: str | None = None, run_id: str | None = None, from_seq: int = 1
                ) -> tuple[list[Any], list[tuple[int, dict[str, Any]]]]:
    """The audit lines from ``from_seq`` on (all by default), and the parsed entries naming ``job_id`` and/or
    ``run_id``.

    Canonical JSON makes ``"job_id":"X"`` an exact byte pattern, so only matching lines are
    parsed. Returns the lines too, since a caller verifying an entry needs the one before it.
    """
    lines = orch.store.read(AUDIT_STREAM, from_seq=from_seq)
    needles = [canonical_pair("job_id", job_id) if job_id else None, canonical_pair("run_id", run_id) if run_id else None]
    out = []
    for stored in lines:
        if all(n is None or n in stored.raw for n in needles):
            try:
                rec = parse_line(stored.raw)
            except (ValueError, RecursionError):
                continue
            if (job_id is None or rec.get("job_id") == job_id) and (run_id is None or rec.get("run_id") == run_id):
                out.append((stored.seq, rec))
    return lines, out


def canonical_pair(key: str, value: str) -> bytes:
    return json.dumps({key: value}, ensure_ascii=False, separators=(",", ":"))[1:-1].encode()
