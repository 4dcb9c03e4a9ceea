"""Writing a stream's head record outside an append: ``import`` (the bundle's record) and ``audit heal`` (a record
left behind its lines).

An append writes its stream's head record itself (on files right after the lines are durable). A record that could
not be written then (a full disk, something in its place: ``HEAD_RECORD_NOT_WRITTEN``) stays behind until the
stream's next append, which a job in a final state never gets; ``audit heal`` brings such records up to date
(``catch_up``). Both write under the stream's append lock, only while it holds the lines the record names
(``put_aux_if_head``), and never over a record that names more lines, which is the evidence of a cut (``verify``:
``TRUNCATED``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from orchestrator.audit import AUDIT_HEAD
from orchestrator.errors import PathEscapeError, UnusableFileError
from orchestrator.history import check_head, head_record, verify_stream
from orchestrator.signing import parse_line
from orchestrator.store.base import AUDIT_STREAM, HEADS_AREA, EventStore, Head

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator
    from orchestrator.views import JobView


def head_key(stream: str) -> tuple[str, str]:
    """Where a stream's head record lives: ``audit-head/audit`` or ``heads/<job_id>``."""
    return AUDIT_HEAD if stream == AUDIT_STREAM else (HEADS_AREA, stream)


def _named_seq(raw: bytes | None) -> int | None:
    """How many lines the head record ``raw`` names; None when there is no record or it is none of this form."""
    try:
        seq = parse_line(raw).get("seq") if raw is not None else None
    except (ValueError, RecursionError, AttributeError):
        return None
    return seq if type(seq) is int else None


def put_head_record(store: EventStore, stream: str, seq: int, record: bytes) -> bool:
    """Write ``record`` as ``stream``'s head record while the stream holds exactly ``seq`` lines, under its append
    lock (``put_aux_if_head``): a writer that appended since has more lines, and its own record, newer, which stays.
    Never over a record that names more lines than ``seq``: the stream was cut since that record was written, and
    the record is what shows it. True when written."""
    named = _named_seq(store.get_aux(*head_key(stream)))
    if named is not None and named > seq:
        return False
    return store.put_aux_if_head(stream, seq, *head_key(stream), record)


def catch_up(store: EventStore, stream: str, head: Head) -> bool:
    """Write ``stream``'s head record anew at ``head`` (its last line, as a read that verified the stream and its
    record found it) when the record is missing or names fewer lines; True when written. One the read did not accept
    (damaged, another stream's) never gets here: ``verify`` reports it."""
    raw = store.get_aux(*head_key(stream))
    named = _named_seq(raw)
    if raw is not None and (named is None or named >= head.seq):
        return False
    # what ``put_head_record`` would read again is decided above (a record naming more lines than the head is
    # no record behind it); the write still happens only while the stream holds exactly ``head.seq`` lines
    return store.put_aux_if_head(stream, head.seq, *head_key(stream), head_record(stream, head))


def catch_up_jobs(store: EventStore, views: Iterable["JobView"]) -> list[str]:
    """``catch_up`` the head record of each verified job of ``views``; the ids of the jobs whose record was written.
    None on a store that writes head records in the events' own transaction (``atomic_aux``: PostgreSQL), where a
    record never lags its events: a look at each would be a round trip per job for nothing."""
    if store.atomic_aux:
        return []
    return [view.job_id for view in views if view.ok and view.head.seq and catch_up(store, view.job_id, view.head)]


def catch_up_audit_log(orch: "Orchestrator") -> bool:
    """``catch_up`` the audit log's own head record, which lags its entries when the record of the last one failed
    (``HEAD_RECORD_NOT_WRITTEN``) until the next entry. Written only once the entries verify, from the record on
    (``check_head``, then ``verify_stream``): a read takes the lines a record names on its word, so a record is
    never written over an entry that does not verify. False, with nothing written, when the record is up to date,
    or the log is damaged, cut, a link or not a file (``verify`` reports those), and on PostgreSQL (``atomic_aux``)."""
    store = orch.store
    if store.atomic_aux:
        return False
    try:  # the record first, as every read: a writer meanwhile makes the log longer than it, never shorter
        raw = store.get_aux(*AUDIT_HEAD)
        lines = store.read(AUDIT_STREAM)
    except (PathEscapeError, UnusableFileError):
        return False
    named = _named_seq(raw)
    if not lines or (raw is not None and (named is None or named >= len(lines))):
        return False
    problem, anchor = check_head(AUDIT_STREAM, lines, raw, orch.keyring)
    if problem is not None or not verify_stream(AUDIT_STREAM, lines, orch.keyring, anchor=anchor).ok:
        return False
    return catch_up(store, AUDIT_STREAM, Head(lines[-1].seq, lines[-1].raw))
