"""Appends on PostgreSQL: the one-statement append, the locked append and the audited append, and the
statement that moves a stream's head (``_moving``).

Apart from ``postgres.py`` (reads, aux records, locks), ``pg_sessions.py`` (the pool, calls) and
``pg_connection.py`` (opening a connection, what a driver error means) because the write path is a concern of its
own: what is sent in which round trip and transaction, what a refusal or a lost connection leaves behind.
``PostgresStore.append`` and ``PostgresStore.append_audited`` call these; the store's module docstring says what an
append guarantees.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import TYPE_CHECKING, Any, Callable, Iterator

from orchestrator import faults
from orchestrator.errors import (AuditEntryNotWrittenError, AuditEntryUnavailableError, ConcurrencyError,
                                 IntegrityError, OrchestratorError, StorageError, entry_not_written)
from orchestrator.history import SEQUENCE_MISMATCH, Problem
from orchestrator.signing import line_seq
from orchestrator.store.base import (AUDIT_HEAD, AUDIT_STREAM, AuxWrites, Builder, Head, InTransaction, LockedHead,
                                     check_aux_name)
from orchestrator.security import sanitize_text
from orchestrator.store.pg_connection import _cancelled, _conflicted, _connection_lost, _driver, _storage_error

if TYPE_CHECKING:
    from orchestrator.store.postgres import PostgresStore

log = logging.getLogger(__name__)

# Locks the stream's row and returns its head as the row holds it (its seq and the hash of its last line) in one
# statement, creating the row if needed. The no-op update (not of ``fence``: its trigger does not fire) is what takes
# the row lock, and after waiting for another writer it returns the row as that writer committed it.
_LOCK_HEAD = ("INSERT INTO orch_streams AS s (project, stream) VALUES (%s, %s) "
              "ON CONFLICT (project, stream) DO UPDATE SET seq = s.seq RETURNING s.seq, sha256(s.last_line)")
# The stream's last row as ``orch_events`` holds it: the head an append follows (``_locked_head``). A statement of its
# own, sent right after ``_LOCK_HEAD`` in the same round trip: it starts once the lock is held, so its snapshot sees
# what the writer before committed (in ``_LOCK_HEAD``'s own, taken before it waited, a subquery would not).
_LAST_EVENT = "SELECT seq, line FROM orch_events WHERE project = %s AND stream = %s ORDER BY seq DESC LIMIT 1"
# Sets the stream's row to the head its events hold (``_locked_head``), in the append's transaction, under its lock;
# not the fence (its trigger refuses lowering it; a row created again starts at 0, until the next claim).
_REINDEX = "UPDATE orch_streams SET seq = %s, last_line = %s WHERE project = %s AND stream = %s"
# The audit log's head record, read right after its head under its row's lock (``_send_lock_head``), in the same round
# trip: what an entry's ``build`` compares that head with (``LockedHead``, ``audit.refuse_cut``), where it read it on
# another connection until 2026-12-07 (a round trip more, and a statement the server's timeouts could cancel).
_HEAD_RECORD = "SELECT data FROM orch_aux WHERE project = %s AND area = %s AND key = %s"
# First in the transaction of an audit entry: the server's lock_timeout and statement_timeout (the role's, the
# database's, the URL's) must not cancel its wait for the audit log's row; the store's own deadline
# (``ORCH_PG_DEADLINE_SECONDS``) still bounds the call. For this transaction only (``is_local``). It is itself a
# statement the session's statement_timeout applies to: an audited append turns that off before (``_TIMEOUT_OFF``),
# which makes its statement_timeout part redundant there, but not for an entry appended alone (``audit heal``'s, a
# refusal's: ``audit.record``), whose session no event's statement changed (2026-12-07, twenty-eighth session).
_NO_SERVER_TIMEOUTS = "SELECT set_config('lock_timeout', '0', true), set_config('statement_timeout', '0', true)"
# Part of the events' statement of an audited append (an expression evaluated once it moves their head): the server's
# statement_timeout off for the session from the next statement on. In the events' transaction, so it is taken back
# with them if they roll back; for the session, so it still holds once they commit: nothing the action sends after
# them (their COMMIT, the entry's transaction, the unlock) can be cancelled by it. Until 2026-12-07 the entry's first
# statement turned it off, after the events' COMMIT, and was itself cancelled now and then (a role's 3 ms: one action
# in 60-180), leaving the events without their entry. ``_UNLOCK`` gives the session its own back.
_TIMEOUT_OFF = ("set_config('statement_timeout', '0', false)", ())
# The last statement of an audited append: the job's pending lock let go, and the session's statement_timeout as it
# was before ``_TIMEOUT_OFF`` (``set_config`` given NULL resets it: the role's, the database's or the URL's)
_UNLOCK = "SELECT pg_advisory_unlock(%s), set_config('statement_timeout', NULL, false)"


def _send_lock_head(store: PostgresStore, conn: Any, stream: str) -> tuple[Any, ...]:
    """Send ``_LOCK_HEAD`` and ``_LAST_EVENT`` for ``stream`` on ``conn`` (in a pipeline, inside a transaction), and for
    the audit log ``_HEAD_RECORD`` too; ``_locked_head`` reads their answers, in one round trip."""
    sent = (conn.execute(_LOCK_HEAD, (store.project, stream)), conn.execute(_LAST_EVENT, (store.project, stream)))
    if stream == AUDIT_STREAM:
        sent += (conn.execute(_HEAD_RECORD, (store.project, *AUDIT_HEAD)),)
    return sent


def _locked_head(stream: str, sent: tuple[Any, ...]) -> tuple[Head, bool]:
    """The head an append to ``stream`` follows, from ``_send_lock_head``'s answers: the last row ``orch_events``
    holds (the events are the truth; ``orch_streams`` is a derived index), and whether the stream's row says the
    same; for the audit log a ``LockedHead``, with its head record. A last row numbered otherwise than its line says is
    refused (``_refuse_renumbered``). A row of
    ``orch_streams`` missing (deleted by hand: created again at 0), behind, ahead or naming another last line is rebuilt
    by the append (``_REINDEX``); until 2026-12-06 the head was the row's, so a job whose row was deleted or set
    back got ``CONCURRENT_APPEND`` at every append, and an audit entry was written after a last row deleted by hand
    (``audit.refuse_cut`` compared the log's head record with the row, not with what the log holds)."""
    row_seq, row_hash = sent[0].fetchone()
    last = sent[1].fetchone()
    head = Head(last[0], bytes(last[1])) if last is not None else Head(0, b"")
    _refuse_renumbered(stream, head)
    if len(sent) > 2:
        record = sent[2].fetchone()
        head = LockedHead(head.seq, head.last_line, bytes(record[0]) if record is not None else None)
    agrees = row_seq == head.seq and bytes(row_hash) == hashlib.sha256(head.last_line).digest()  # b"": the empty row's
    if not agrees:
        log.warning("%s: its row in orch_streams (%d events) does not agree with orch_events (%d events, or another "
                    "last line): the append follows the events, and rebuilds the row if it writes (a derived index, "
                    "docs/postgres.md)", stream, row_seq, head.seq,
                    extra={"stream": stream, "row_seq": row_seq, "events_seq": head.seq})
    return head, agrees


def _refuse_renumbered(stream: str, head: Head) -> None:
    """Raise ``IntegrityError`` when the last row's ``seq`` is not the number its line says (``line_seq``): a row
    renumbered by hand, so new lines would be numbered after a number the stream does not hold (a read numbers lines
    by position, and reports such a row: ``postgres._numbered``). Until 2026-12-06 the audit log's next entry was
    written so, and the log failed ``verify`` for good. A line that says no number is left to ``verify``."""
    said = line_seq(head.last_line) if head.seq else None
    if said is not None and said != head.seq:
        problem = Problem(stream, head.seq, SEQUENCE_MISMATCH, f"the last row of orch_events is numbered {head.seq}, "
                          f"its line says {said}: a row was renumbered by hand")
        raise IntegrityError(f"{stream}: nothing was written: {problem.message}. Keep the store as it is and run "
                             "`orchestrator verify`; restore the stream from a backup (docs/runbook.md, section E)",
                             problems=[problem.to_dict()])


def _reindex(store: PostgresStore, conn: Any, stream: str, head: Head) -> None:
    """Send ``_REINDEX`` of ``stream`` to ``head`` on ``conn``, before the statement that moves it from there."""
    conn.execute(_REINDEX, (head.seq, head.last_line, store.project, stream))


def _end_transaction(conn: Any) -> None:
    """Roll back what a locked append left open on ``conn`` (it refused, or failed, between its ``BEGIN`` and its
    ``COMMIT``), so the connection goes back to the pool idle; one that cannot is closed (the server rolls back)."""
    try:
        if not conn.closed and not conn.broken and conn.info.transaction_status != _driver().pq.TransactionStatus.IDLE:
            conn.rollback()
    except Exception:  # noqa: BLE001 - closing it is the rollback
        conn.close()


def _abandon(pipe: Any) -> None:
    """After the server's error in a pipeline (the fence trigger) it skipped every statement after it: sync now,
    so that the pipeline's end has nothing of them left to report (psycopg logs that as "error ignored"); the caller
    rolls back what is left open (``_end_transaction``)."""
    with contextlib.suppress(_driver().Error):
        pipe.sync()


def _released(unlocked: Any) -> bool:
    """Whether the ``pg_advisory_unlock`` statement of ``unlocked`` (a cursor, or None: not sent) ran and released."""
    try:
        row = unlocked.fetchone() if unlocked is not None else None
    except Exception:  # noqa: BLE001 - skipped by the server after an error, or never answered
        return False
    return bool(row and row[0])


def _unlock(conn: Any, key: int) -> None:
    """Release the session advisory lock ``key`` held on ``conn`` and give the session back its statement_timeout
    (``_UNLOCK``); a connection that cannot is closed (the server releases its locks with it)."""
    try:
        if not conn.closed and not conn.broken:
            conn.execute(_UNLOCK, (key,))
    except Exception:  # noqa: BLE001 - closing it releases the lock
        conn.close()


def append(store: PostgresStore, stream: str, build: Builder, expected_seq: int | None = None,
           fence: int | None = None, aux: AuxWrites | None = None,
           in_transaction: InTransaction | None = None, expected_last: bytes | None = None) -> Head:
    """``EventStore.append`` as one statement that moves the stream's head, inserts the lines and
    writes the ``aux`` records and the ``in_transaction`` rows, all committed together, durably, or
    none (``_moving``).

    With the head the caller decided from (``expected_seq`` and ``expected_last``: every job
    event) that statement is the whole append, in one round trip: it moves the head only if it
    is still that one, checked under the row's lock as it moves. Else (the audit log, whose head
    the caller does not know, or a head that moved meanwhile) two round trips (``_locked``): the first
    locks the stream's row (``BEGIN`` and one upsert that creates the row if needed) and reads the head, the last
    row of ``orch_events`` (``_locked_head``: a row that disagrees is rebuilt), the second, pipelined, sends the
    statement built from that head and ``COMMIT``.
    """
    store._check_stream(stream)
    if expected_seq is not None and expected_last is not None:
        expected = Head(expected_seq, expected_last)
        new = _built(build, expected)
        if not new:
            return expected
        sql, params = _moving(store, stream, expected, new, fence, aux, in_transaction)

        def one_statement(conn: Any) -> bool:
            # nothing sent yet: a kill or a cut here leaves nothing. Once sent, the statement commits on its own
            # or not at all (autocommit; a connection lost mid-way is rolled back by the server, or its commit
            # is not acknowledged: ``write``). Not pipelined to fire this point after the statement: that cost
            # ~0.35 ms per append here (docs/decisions.md, 2026-12-02)
            faults.point("pg.append.before_commit")
            return conn.execute(sql, params).fetchone() is not None

        if store._run(one_statement, write=True):
            faults.point("pg.append.after_commit")
            return Head(expected.seq + len(new), new[-1])
        # the head is not the one expected: nothing was written; decide again from the head there is
    result = store._run(lambda conn: _locked(store, conn, stream, build, expected_seq, fence, aux, in_transaction),
                        write=True)
    faults.point("pg.append.after_commit")
    return result


def _locked(store: PostgresStore, conn: Any, stream: str, build: Builder, expected_seq: int | None = None,
            fence: int | None = None, aux: AuxWrites | None = None,
            in_transaction: InTransaction | None = None) -> Head:
    """``append`` from the head read under the stream's row lock, on ``conn``: two round trips, one pipeline.

    ``BEGIN`` and ``COMMIT`` are sent as statements of the pipeline, not with psycopg's ``transaction()``:
    inside a pipeline that waits for the server at ``BEGIN``, before ``COMMIT``, at ``COMMIT`` and as the pipeline
    ends, five round trips in all (until 2026-12-02), where these are two: the lock and the head, then the rest."""
    psycopg = _driver()
    try:
        with conn.pipeline() as pipe:
            try:  # (a server's error may come back while later statements are sent: any of them raises it)
                conn.execute("BEGIN")
                if stream == AUDIT_STREAM:  # an entry, of events durable already
                    conn.execute(_NO_SERVER_TIMEOUTS)
                head, agrees = _locked_head(stream, _send_lock_head(store, conn, stream))  # the first round trip
                if expected_seq is not None and expected_seq != head.seq:
                    raise ConcurrencyError(f"{stream}: expected {expected_seq} events, found {head.seq}",
                                           stream=stream, expected=expected_seq, found=head.seq)
                new = _built(build, head)
                if new:
                    if not agrees:
                        _reindex(store, conn, stream, head)
                    moved = conn.execute(*_moving(store, stream, head, new, fence, aux, in_transaction))
                    faults.point("pg.append.before_commit")
                    conn.execute("COMMIT")
                else:
                    conn.execute("ROLLBACK")  # nothing to write: let the row's lock go
            except psycopg.Error:
                _abandon(pipe)
                raise
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")  # sent as the pipeline ends: no round trip of its own
                raise
        # the pipeline synced as it ended (the second round trip): the statement's row is here already
    finally:  # a transaction the server aborted (the fence trigger) must not go back to the pool open
        _end_transaction(conn)
    if not new:
        return Head(head.seq, head.last_line)
    # under the row's lock the head was the one just read, so it moved, or nothing at all committed
    if moved.fetchone() is None:
        raise StorageError(f"{stream}: the head did not move under its lock; nothing was appended", stream=stream)
    return Head(head.seq + len(new), new[-1])


def append_audited(store: PostgresStore, stream: str, build: Builder, entry: Builder, *, lock: str,
                   entry_aux: AuxWrites | None = None, between: Callable[[], None] = lambda: None,
                   expected_seq: int | None = None, fence: int | None = None, aux: AuxWrites | None = None,
                   in_transaction: InTransaction | None = None, expected_last: bytes | None = None) -> Head:
    """``EventStore.append_audited`` on one connection, in two round trips where the calls one by one take six
    (the lock, the events, the entry's two, the unlock), with the same statements in the same order (``_pipelined``).
    Without the head the events were decided from, or when it moved (nothing was written), the calls one by one, on
    one connection too (``_one_by_one``).

    Once the events committed, nothing of the action can be cancelled by the server's statement_timeout (the events'
    statement turned it off for the session, ``_TIMEOUT_OFF``; the entry's transaction its lock_timeout,
    ``_NO_SERVER_TIMEOUTS``), and whatever fails before their entry committed is ``AuditEntryNotWrittenError`` (the
    events stand, ``audit.heal`` writes the entry; ``AuditEntryUnavailableError`` when it may pass), never "nothing was
    written": a server's error (``_entry_failed``: a conflict or a cancel is tried again first, ``_entry_again``), an
    error of ``between`` or of the entry's ``build`` (``_as_the_entrys``), a connection lost or cut by the deadline
    before the entry's COMMIT was sent (the server rolls back the entry's transaction and lets every lock go). But an
    ``IntegrityError`` (the log was cut: ``audit.refuse_cut``, given the head record read with the head), and a
    connection lost once the entry's COMMIT was sent, which may or may not have committed it
    (``StorageUnavailableError``).
    An error after the entry committed (its unlock) is no error of the action's: the lock is let go or the connection
    closed."""
    store._check_stream(stream)
    key = store._lock_key(lock)
    expected = Head(expected_seq, expected_last) if expected_seq is not None and expected_last is not None else None
    new = _built(build, expected) if expected is not None else []
    once = _Once(between)
    if new:
        events = _moving(store, stream, expected, new, fence, aux, _with_timeout_off(in_transaction))
        if store._run(lambda conn: _pipelined(store, conn, key, events, entry, entry_aux, once), write=True):
            faults.point("pg.append.after_commit")
            return Head(expected.seq + len(new), new[-1])  # type: ignore[union-attr]
    head = store._run(lambda conn: _one_by_one(store, conn, key, stream, build, entry, entry_aux, once, expected_seq,
                                               fence, aux, in_transaction), write=True)
    faults.point("pg.append.after_commit")
    return head


class _Once:
    """``between``, run at most once, whichever path of the entry gets to it first."""

    def __init__(self, between: Callable[[], None]) -> None:
        self.between, self.ran = between, False

    def __call__(self) -> None:
        if not self.ran:
            self.ran = True
            self.between()


def _with_timeout_off(in_transaction: InTransaction | None) -> InTransaction:
    """``in_transaction`` with ``_TIMEOUT_OFF`` among its expressions: the events' statement of an audited append."""
    extra = in_transaction or InTransaction()
    return InTransaction(extra.writes, (*extra.selects, _TIMEOUT_OFF))


def _pipelined(store: PostgresStore, conn: Any, key: int, events: tuple[str, list[Any]], entry: Builder,
               entry_aux: AuxWrites | None, between: _Once) -> bool:
    """``append_audited`` on ``conn`` in two round trips; False when the events' head was not the one expected (nothing
    was written, every lock let go).

    The first round trip sends the lock (``pg_advisory_lock``, as ``exclusive``), the events' statement in a
    transaction of its own (``BEGIN``, ``append``'s one statement, ``COMMIT``), then ``BEGIN`` and the audit log's
    row lock with its head and head record. The server runs them in that order, and a ``COMMIT`` is durable before the
    next statement starts: the events commit first, alone, as one by one. Once they are known to have moved,
    ``between`` runs and the entry is built from that head; the second round trip sends its statement, ``COMMIT`` and
    the unlock."""
    psycopg = _driver()
    moved = committed = entered = entry_commit = unlocked = None
    written = failed = False
    try:
        faults.point("pg.append.before_commit")  # nothing sent yet: a kill or a cut here leaves nothing
        with conn.pipeline() as pipe:
            try:  # (a server's error may come back while later statements are sent: any of them raises it)
                conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                conn.execute("BEGIN")
                moved = conn.execute(*events)
                committed = conn.execute("COMMIT")
                conn.execute("BEGIN")
                conn.execute(_NO_SERVER_TIMEOUTS)
                locked = _send_lock_head(store, conn, AUDIT_STREAM)
                written = moved.fetchone() is not None  # round trip 1
                if written:  # the events are durable; the entry's transaction holds the audit log's row
                    faults.point("pg.append.after_commit")
                    with _as_the_entrys():
                        between()
                        _refuse_cut_off(store, conn)  # before its answers are read: they may not have come
                        head, agrees = _locked_head(AUDIT_STREAM, locked)
                        lines = _built(entry, head)
                        _refuse_cut_off(store, conn)
                    if not agrees:
                        _reindex(store, conn, AUDIT_STREAM, head)
                    entered = conn.execute(*_moving(store, AUDIT_STREAM, head, lines, None, entry_aux, None))
                    faults.point("pg.append.before_commit")
                    entry_commit = conn.execute("COMMIT")
                else:
                    conn.execute("ROLLBACK")
                unlocked = conn.execute(_UNLOCK, (key,))
            except psycopg.Error:
                _abandon(pipe)
                raise
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
                    unlocked = conn.execute(_UNLOCK, (key,))
                raise
        # round trip 2: the pipeline synced as it ended
    except psycopg.Error as exc:
        if not _committed(moved, committed):  # nothing of the action stands: as any append's error
            raise
        written = failed = True
        if not _committed(entered, entry_commit):  # else only what came after the entry failed: its unlock
            _entry_failed(store, conn, exc, entry, entry_aux, between, sent=entry_commit is not None)
    finally:  # what the server skipped after an error of its own (the fence trigger): rolled back, unlocked
        _end_transaction(conn)
        if not _released(unlocked):
            _unlock(conn, key)
    if written and not failed and entered.fetchone() is None:  # under the lock: it moved, or nothing did
        raise AuditEntryNotWrittenError("@audit: the head did not move under its lock; the entry was not appended",
                                        stream=AUDIT_STREAM)
    return written


def _one_by_one(store: PostgresStore, conn: Any, key: int, stream: str, build: Builder, entry: Builder,
                entry_aux: AuxWrites | None, between: _Once, expected_seq: int | None, fence: int | None,
                aux: AuxWrites | None, in_transaction: InTransaction | None) -> Head:
    """The calls of ``EventStore.append_audited`` one by one, on ``conn``: the job's pending lock, the events' locked
    append (``_locked``: the head read under the row's lock), ``between``, the entry's locked append, the unlock. On
    one connection, so that the events' statement turns the server's statement_timeout off for all that follows
    (``_TIMEOUT_OFF``); a failure once the events committed is the entry's, as in ``_pipelined``."""
    psycopg = _driver()
    conn.execute("SELECT pg_advisory_lock(%s)", (key,))  # cancelled or cut here: nothing was written
    try:
        head = _locked(store, conn, stream, build, expected_seq, fence, aux, _with_timeout_off(in_transaction))
        try:
            with _as_the_entrys():
                between()
            _locked(store, conn, AUDIT_STREAM, _entry_built(store, conn, entry), aux=entry_aux)
        except psycopg.Error as exc:  # whether its COMMIT was sent is not known here: as if it was
            _entry_failed(store, conn, exc, entry, entry_aux, between, sent=True)
    finally:
        _end_transaction(conn)
        _unlock(conn, key)
    return head


@contextlib.contextmanager
def _as_the_entrys() -> Iterator[None]:
    """An error of the block, which runs once an audited append's events committed and before their entry did
    (``between``, the entry's ``build``), is the entry's (``errors.entry_not_written``: the events stand), but an
    ``IntegrityError`` (the log was cut: ``audit.refuse_cut``). Until 2026-12-07 it went through as it was: "PostgreSQL
    cancelled the statement: ...; nothing was written" of an action that was written."""
    try:
        yield
    except (IntegrityError, AuditEntryNotWrittenError):
        raise
    except OrchestratorError as exc:
        raise entry_not_written(exc) from None


def _entry_built(store: PostgresStore, conn: Any, entry: Builder) -> Builder:
    """``entry`` as ``_locked`` calls it on ``conn``, once the entry's events committed (``_as_the_entrys``), and
    refused on a connection cut meanwhile (``_refuse_cut_off``)."""
    def build(head: Head) -> list[bytes]:
        with _as_the_entrys():
            lines = _built(entry, head)
            _refuse_cut_off(store, conn)
        return lines
    return build


def _refuse_cut_off(store: PostgresStore, conn: Any) -> None:
    """Raise ``AuditEntryUnavailableError`` when ``conn``'s session is gone (cut by the deadline, or found broken)
    before an entry whose events committed is sent: the server let the audit log's row go with it, so the head read
    under it may be behind by now (until 2026-12-07 the entry was built all the same, and ``audit.refuse_cut``, reading
    the log's head record on another connection, found the one another writer wrote since: a cut that was not
    there)."""
    if store.deadline.was_cut(conn):
        raise AuditEntryUnavailableError(
            f"the call to PostgreSQL outlasted its deadline ({store.deadline.seconds or 0:g}s, "
            "ORCH_PG_DEADLINE_SECONDS, or its caller's shorter wait), so its connection was cut before the entry was "
            "sent", stream=AUDIT_STREAM)
    if conn.closed or conn.broken:
        raise AuditEntryUnavailableError("the connection to PostgreSQL was lost before the entry was sent",
                                         stream=AUDIT_STREAM)


def _entry_failed(store: PostgresStore, conn: Any, exc: Exception, entry: Builder, entry_aux: AuxWrites | None,
                  between: _Once, *, sent: bool) -> None:
    """After driver error ``exc`` of an audited append whose events committed and whose entry did not (as far as the
    server answered): returns once the entry is appended again (``_entry_again``), else raises what stands. A
    connection lost is raised as it is when the entry's COMMIT was ``sent`` (it may have committed: the caller's
    ``StorageUnavailableError`` says so), else as ``AuditEntryUnavailableError`` (the server rolls back what it had)."""
    if conn.broken or conn.closed or _connection_lost(exc) or store.deadline.was_cut(conn):
        if sent:
            raise exc
        cut = "cut by its deadline (ORCH_PG_DEADLINE_SECONDS)" if store.deadline.was_cut(conn) else "lost"
        raise AuditEntryUnavailableError(sanitize_text(f"the connection to PostgreSQL was {cut} before the entry "
                                                       f"was sent: {exc}".strip()), stream=AUDIT_STREAM) from None
    with _as_the_entrys():
        between()  # the entry's first round trip failed before it ran: what comes between events and entry, now
    standing = _entry_again(store, conn, entry, entry_aux, exc)
    if standing is not None:  # as the calls one by one say it (``EventStore.append_audited``), not "nothing"
        raise entry_not_written(_storage_error(standing, conn, write=True)) from None


def _entry_again(store: PostgresStore, conn: Any, entry: Builder, entry_aux: AuxWrites | None, exc: Exception
                 ) -> Exception | None:
    """After the server refused an audited append's entry (``exc``) on live ``conn``, its events committed and the job's
    pending lock still held: a transaction rolled back for a conflict (a deadlock, a serialization failure) or
    cancelled (an administrator's ``pg_cancel_backend``; or the events' own statement_timeout, fired as their statement
    ended, which the server reports on the next statement, "due to user request") left nothing, so the entry is
    appended again there (``_locked``, the head read anew; the session's statement_timeout is off since the events,
    ``_TIMEOUT_OFF``), up to ``store.conflict_tries`` transactions in all, before the lock is let go (no heal writes
    it meanwhile). Returns None once it is written, else the error that stands (``AuditEntryNotWrittenError``'s); a
    connection lost meanwhile is raised (it may have committed)."""
    for _ in range(store.conflict_tries - 1):
        if not (_conflicted(exc) or _cancelled(exc)):
            break
        log.warning("%s; appending the entry again", _storage_error(exc, conn).message, extra={"stream": AUDIT_STREAM})
        _end_transaction(conn)
        try:
            _locked(store, conn, AUDIT_STREAM, _entry_built(store, conn, entry), aux=entry_aux)
            return None
        except _driver().Error as again:
            if conn.broken or conn.closed or _connection_lost(again):
                raise
            exc = again
    return exc


def _committed(statement: Any, commit: Any) -> bool:
    """Whether ``statement`` (a cursor of an append's statement; None: not sent) moved its head and its ``COMMIT``
    (``commit``) was done, as far as the server answered before an error of a later statement: psycopg gives each
    statement of a pipeline its result up to the error."""
    pq = _driver().pq
    moved_result = getattr(statement, "pgresult", None)
    commit_result = getattr(commit, "pgresult", None)
    return (moved_result is not None and moved_result.status == pq.ExecStatus.TUPLES_OK and moved_result.ntuples > 0
            and commit_result is not None and commit_result.status == pq.ExecStatus.COMMAND_OK)


def _built(build: Builder, head: Head) -> list[bytes]:
    new = [bytes(line) for line in build(head)]
    if any(b"\n" in line for line in new):
        raise ValueError("a line must not contain a newline")
    return new


def _moving(store: PostgresStore, stream: str, head: Head, new: list[bytes], fence: int | None, aux: AuxWrites | None,
            in_transaction: InTransaction | None) -> tuple[str, list[Any]]:
    """The statement that appends ``new`` after ``head``: ``up`` moves the stream's head if it is still
    ``head`` (checked as the row is locked: a writer that moved it first, or holds it, leaves ``up``
    empty once it commits), and every other part joins ``up``, so all of it is written or none.
    Returns one row if it moved, none if not. The fence trigger refuses an epoch lower than the
    stream's (a superseded worker): the whole statement fails (``FENCED_SQLSTATE``)."""
    p, new_head = store.project, Head(head.seq + len(new), new[-1])
    if head.seq == 0:  # a new stream, or a row an earlier locked append created and left at 0
        ctes = [("up AS (INSERT INTO orch_streams AS s (project, stream, seq, last_line, fence) "
                 "VALUES (%s, %s, %s, %s, coalesce(%s::bigint, 0)) ON CONFLICT (project, stream) DO UPDATE "
                 "SET seq = EXCLUDED.seq, last_line = EXCLUDED.last_line, fence = coalesce(%s::bigint, s.fence) "
                 "WHERE s.seq = 0 RETURNING 1)", [p, stream, new_head.seq, new_head.last_line, fence, fence])]
    else:  # the last line compared by its hash: the line itself may be a MiB
        ctes = [("up AS (UPDATE orch_streams SET seq = %s, last_line = %s, fence = coalesce(%s::bigint, fence) "
                 "WHERE project = %s AND stream = %s AND seq = %s AND sha256(last_line) = %s RETURNING 1)",
                 [new_head.seq, new_head.last_line, fence, p, stream, head.seq,
                  hashlib.sha256(head.last_line).digest()])]
    ctes.append(("ev AS (INSERT INTO orch_events (project, stream, seq, line) SELECT %s, %s, n, l "
                 "FROM unnest(%s::bigint[], %s::bytea[]) AS t(n, l), up)",
                 [p, stream, list(range(head.seq + 1, new_head.seq + 1)), new]))
    records = aux(new_head) if aux is not None else {}
    for area, key in records:
        check_aux_name(area, key)
    put = [(area, key, bytes(data)) for (area, key), data in records.items() if data is not None]
    drop = [(area, key) for (area, key), data in records.items() if data is None]
    if put:
        ctes.append(("ax AS (INSERT INTO orch_aux (project, area, key, data) SELECT %s, a, k, d "
                     "FROM unnest(%s::text[], %s::text[], %s::bytea[]) AS t(a, k, d), up "
                     "ON CONFLICT (project, area, key) DO UPDATE SET data = EXCLUDED.data)",
                     [p, [r[0] for r in put], [r[1] for r in put], [r[2] for r in put]]))
    if drop:
        ctes.append(("ad AS (DELETE FROM orch_aux USING unnest(%s::text[], %s::text[]) AS t(a, k), up "
                     "WHERE project = %s AND area = t.a AND key = t.k)",
                     [[r[0] for r in drop], [r[1] for r in drop], p]))
    extra = in_transaction or InTransaction()
    ctes += [(f"w{i} AS ({sql})", list(args)) for i, (sql, args) in enumerate(extra.writes)]
    selects = [("1", [])] + [(sql, list(args)) for sql, args in extra.selects]
    sql = ("WITH " + ", ".join(c for c, _ in ctes) + " SELECT " + ", ".join(e for e, _ in selects) + " FROM up")
    return sql, [a for _, args in ctes for a in args] + [a for _, args in selects for a in args]
