"""The PostgreSQL backend: the same streams of signed lines, shared by many machines.

Each line is kept byte for byte in ``orch_events`` (project, stream, seq), so a history
verifies exactly as it does in a file, and moves between backends without re-signing.
``orch_streams`` holds one row per stream with its head: an append locks that row (creating it
first if needed), checks the expected sequence, inserts the new lines and moves the head, all
in one transaction, together with any ``aux`` records given (the job's signed head record, a
lease deletion, an audit marker), so on this backend an event and its head record are committed both or neither
(``atomic_aux``). Durability is PostgreSQL's: the session
forces ``synchronous_commit = on``, so when ``append`` returns the commit is flushed to the
server's WAL. Several projects may share one database (the ``project`` column).

Fencing is checked by the database: an append given a worker's ``fence`` epoch writes it into
the stream's row, and a trigger (migration 0002) refuses to move it backwards, so a worker
whose claim was superseded gets ``LeaseLostError`` and writes nothing. Statements passed as
``in_transaction`` (the queue index, ``orchestrator/store/pg_queue.py``) run inside the append's
transaction on that stream, so the index and its ``NOTIFY`` commit together with the event.

Every call has a deadline (``Deadline``, ``ORCH_PG_DEADLINE_SECONDS``): a server or pooler that
stalls without closing the connection would otherwise block the caller (a worker's heartbeat or
outcome) for as long as it stalls.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import socket
import threading
import time
from typing import Any, Iterator
from urllib.parse import urlsplit

from orchestrator import faults
from orchestrator.config import DEFAULT_PG_DEADLINE_SECONDS
from orchestrator.errors import ConcurrencyError, ConfigError, LeaseLostError, StorageError, StorageUnavailableError
from orchestrator.security import sanitize_text, validate_id
from orchestrator.store.base import AUDIT_STREAM, AuxWrites, Builder, EventStore, Head, InTransaction, StoredLine

log = logging.getLogger(__name__)

SCHEMES = ("postgresql", "postgres")
_IDLE_CONNECTIONS = 4  # kept open per store; more are opened on demand and closed after use
# TCP keepalives, so a connection to a server that vanished (a network partition, a host powered
# off) fails within ~30 s instead of blocking a worker's heartbeat until the kernel gives up.
_KEEPALIVES = {"connect_timeout": "10", "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
               "keepalives_count": "3", "tcp_user_timeout": "30000"}
FENCED_SQLSTATE = "OF001"  # raised by the orch_streams_fence trigger (migrations/0002_claiming.sql)

# Locks the stream's row and returns its head in one statement, creating the row if needed. The
# no-op update (not of ``fence``: its trigger does not fire) is what takes the row lock, and after
# waiting for another writer it returns the row as that writer committed it.
_LOCK_HEAD = ("INSERT INTO orch_streams AS s (project, stream) VALUES (%s, %s) "
              "ON CONFLICT (project, stream) DO UPDATE SET seq = s.seq RETURNING s.seq, s.last_line")
# A job's head record and its lines in one statement: one snapshot, so on this backend (where
# both commit together) they always agree, and one round trip instead of two.
_READ_WITH_AUX = ("SELECT 0, 0::bigint, data FROM orch_aux WHERE project = %s AND area = %s AND key = %s "
                  "UNION ALL SELECT 1, seq, line FROM orch_events WHERE project = %s AND stream = %s "
                  "ORDER BY 1, 2")
_INSERT_LINES = ("INSERT INTO orch_events (project, stream, seq, line) "
                 "SELECT %s, %s, n, l FROM unnest(%s::bigint[], %s::bytea[]) AS t(n, l)")
_MOVE_HEAD = ("UPDATE orch_streams SET seq = %s, last_line = %s, fence = coalesce(%s, fence) "
              "WHERE project = %s AND stream = %s")
_PUT_AUX_MANY = ("INSERT INTO orch_aux (project, area, key, data) "
                 "SELECT %s, a, k, d FROM unnest(%s::text[], %s::text[], %s::bytea[]) AS t(a, k, d) "
                 "ON CONFLICT (project, area, key) DO UPDATE SET data = EXCLUDED.data")
_DROP_AUX_MANY = ("DELETE FROM orch_aux USING unnest(%s::text[], %s::text[]) AS t(a, k) "
                  "WHERE project = %s AND area = t.a AND key = t.k")


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and urlsplit(url).scheme in SCHEMES


def _driver() -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigError("the PostgreSQL backend needs psycopg 3: pip install 'jsonl-orchestrator[postgres]'") from None
    return psycopg


def _storage_error(exc: Exception, conn: Any = None) -> StorageError:
    """A driver error as the project's error: the message sanitized (a URL may hold a password).
    On a connection that broke, it is ``StorageUnavailableError``: it may pass, and a commit in
    flight may or may not have happened."""
    if (conn is not None and (conn.broken or conn.closed)) or _connection_lost(exc):
        return StorageUnavailableError(sanitize_text(f"the connection to PostgreSQL was lost: {exc}".strip())
                                       + "; a write in flight may or may not have been committed (read it back)")
    return StorageError(sanitize_text(f"PostgreSQL error: {exc}".strip()) + "; nothing was written")


def _connection_lost(exc: Exception) -> bool:
    """A driver error that says the connection, not the statement, failed, though psycopg may not have
    marked the connection broken yet: an ``OperationalError`` with no SQLSTATE (the socket: "server closed
    the connection", "cannot exit pipeline mode while busy"), or of class 08 (connection exception) or
    57P0x (the server shutting down or ending the session: ``pg_terminate_backend``, a restart)."""
    if not isinstance(exc, _driver().OperationalError):
        return False
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith(("08", "57P0"))


class Deadline:
    """Cuts the connection of a call to PostgreSQL that has not returned within ``seconds``.

    A server or pooler that stalls while its kernel still acknowledges the traffic is not seen by
    TCP keepalives, and psycopg waits for its answer for ever. One thread per store, started by the
    first call and gone after a quiet period, sleeps until the earliest deadline and shuts the late
    call's socket down (``shutdown(SHUT_RDWR)``: the blocked wait wakes at once and psycopg reports
    the connection lost; a cancel request would need a second connection to the stalled server). The
    caller then raises ``StorageUnavailableError``. A call pays two dict operations and a clock read
    (``arm``/``disarm``); ``seconds=None`` turns it off.
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds or None
        self._due: dict[Any, float] = {}  # connection -> monotonic deadline; one call at a time per connection
        self._lock = threading.Lock()  # held while a socket is shut down, and to start the thread
        self._watching = False

    def arm(self, conn: Any) -> None:
        if self.seconds is None:
            return
        self._due[conn] = time.monotonic() + self.seconds
        if not self._watching:
            self._start()

    def disarm(self, conn: Any) -> bool:
        """False if the deadline passed and the connection was cut (the caller must close it)."""
        if self.seconds is None or self._due.pop(conn, None) is not None:
            return True
        with self._lock:  # the watcher has it: wait until it is done (the fd must not be reused meanwhile)
            return self._due.pop(conn, None) is not None  # put back: it was not due

    @contextlib.contextmanager
    def bounded(self, conn: Any) -> Iterator[None]:
        """The block as one call: a cut closes ``conn`` and raises ``StorageUnavailableError``."""
        self.arm(conn)
        try:
            yield
        except BaseException:
            if not self.disarm(conn):
                conn.close()
                raise self.error() from None
            raise
        if not self.disarm(conn):
            conn.close()
            raise self.error()

    def error(self) -> StorageUnavailableError:
        return StorageUnavailableError(f"PostgreSQL did not answer within {self.seconds:g}s "
                                       "(ORCH_PG_DEADLINE_SECONDS), so the connection was cut; a write in flight "
                                       "may or may not have been committed (read it back)")

    def _start(self) -> None:
        with self._lock:
            if not self._watching:
                self._watching = True
                threading.Thread(target=self._watch, name="orch-pg-deadline", daemon=True).start()

    def _watch(self) -> None:
        period = self.seconds or 0.0
        time.sleep(period)  # no call armed when the thread started is due before this
        while True:
            now, due = time.monotonic(), self._due.copy()  # one C call: atomic under the GIL
            if not due:
                with self._lock:  # quiet: stop, unless a call was armed since (arm writes, then reads _watching)
                    self._watching = False
                    if not self._due:
                        return
                    self._watching = True
                continue
            for conn, at in due.items():
                if at <= now:
                    self._cut(conn, now)
            # a call armed from now on is due a full period from now, later than any armed before it
            time.sleep(min([at for at in due.values() if at > now] or [now + period]) - now)

    def _cut(self, conn: Any, now: float) -> None:
        with self._lock:
            at = self._due.pop(conn, None)
            if at is None:
                return  # it returned meanwhile
            if at > now:  # it returned, and the connection's next call was armed since
                self._due[conn] = at
                return
            log.warning("PostgreSQL did not answer within %gs; cutting the connection", self.seconds,
                        extra={"deadline_seconds": self.seconds})
            try:
                with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except Exception:  # noqa: BLE001 - already closed: nothing left to unblock
                pass


def connect(url: str, *, autocommit: bool = False, deadline: Deadline | None = None) -> Any:
    """A psycopg connection with durable commits; connection failures become ``StorageError``. Its
    first statements keep ``deadline`` (opening it is bounded by ``connect_timeout``)."""
    psycopg = _driver()
    try:
        params = {**_KEEPALIVES, **psycopg.conninfo.conninfo_to_dict(url)}  # the URL's own settings win
        conn = psycopg.connect(autocommit=autocommit, **params)
        with deadline.bounded(conn) if deadline is not None else contextlib.nullcontext():
            # A server configured with synchronous_commit=off could lose acknowledged appends.
            conn.execute("SET synchronous_commit = on")
            if not autocommit:
                conn.commit()
    except psycopg.OperationalError as exc:  # refused, unreachable, restarting: may pass
        raise StorageUnavailableError(sanitize_text(f"cannot connect to PostgreSQL at {url}: {exc}".strip())) from None
    except psycopg.Error as exc:
        raise StorageError(sanitize_text(f"cannot connect to PostgreSQL at {url}: {exc}".strip())) from None
    return conn


def _went_away(conn: Any) -> bool:
    """True if an idle connection has something to read: the server ended it (a restart, an
    administrator, a pooler), having sent its error before closing. One ``poll`` and no round
    trip, so a worker whose pooled connections were cut does not fail its next statement."""
    try:
        return bool(select.select([conn.fileno()], [], [], 0)[0])
    except (OSError, ValueError, _driver().Error):
        return True


class PostgresStore(EventStore):
    """One project's streams in a PostgreSQL database (schema from ``orchestrator db migrate``)."""

    atomic_aux = True  # ``append(..., aux=...)`` writes the records in the lines' transaction

    def __init__(self, url: str, project: str = "default",
                 deadline_seconds: float | None = DEFAULT_PG_DEADLINE_SECONDS) -> None:
        if not is_postgres_url(url):
            raise ConfigError(sanitize_text(f"not a PostgreSQL URL: {url!r} (expected postgresql://...)"))
        self.url = url
        self.project = validate_id(project, "project id")
        self.deadline = Deadline(deadline_seconds)  # every call's bound; None or 0: none
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._checked = False
        self._closed = False

    # -- connections ------------------------------------------------------------------------
    def _take(self) -> Any:
        with self._lock:
            if self._closed:
                raise StorageError("the store is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is not None and not conn.closed and _went_away(conn):
            conn.close()
        if conn is None or conn.closed:
            conn = connect(self.url, autocommit=True, deadline=self.deadline)
        if not self._checked:
            try:
                with self.deadline.bounded(conn):
                    self._check_schema(conn)
            except BaseException:
                conn.close()
                raise
        return conn

    def _give(self, conn: Any, reusable: bool = True) -> None:
        with self._lock:
            if reusable and not self._closed and not conn.closed and len(self._idle) < _IDLE_CONNECTIONS:
                self._idle.append(conn)
                return
        conn.close()

    def _check_schema(self, conn: Any) -> None:
        from orchestrator.store.pg_schema import current_version, latest_version

        version = current_version(conn)
        if version < latest_version():
            raise ConfigError(f"the database schema is at version {version}, this release needs {latest_version()}: "
                              "run `orchestrator db migrate` first")
        self._checked = True

    def _run(self, fn: Any) -> Any:
        """Run ``fn(conn)`` on a pooled connection (autocommit: one statement is atomic on its own,
        ``fn`` opens a transaction when it needs more), within the store's deadline; driver errors
        become ``StorageError``."""
        psycopg = _driver()
        conn = self._take()
        self.deadline.arm(conn)  # inline, not ``bounded``: this is every call's path
        try:
            result = fn(conn)
        except psycopg.Error as exc:
            if not self.deadline.disarm(conn):
                conn.close()
                raise self.deadline.error() from None
            if isinstance(exc, psycopg.errors.UniqueViolation):
                # Only reachable if the stream lock was bypassed: the primary key still refuses a fork.
                self._give(conn)
                raise ConcurrencyError("another writer appended to this stream first") from None
            if getattr(exc, "sqlstate", None) != FENCED_SQLSTATE:
                error = _storage_error(exc, conn)
                conn.close()
                raise error from None
            self._give(conn)
            raise LeaseLostError(sanitize_text(f"refused by the database: {exc.diag.message_primary or exc}"),
                                 fenced=True) from None
        except BaseException:
            self._give(conn, self.deadline.disarm(conn))
            raise
        # a call that returned just as it was cut keeps its result; only its connection is gone
        self._give(conn, self.deadline.disarm(conn))
        return result

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- contract ---------------------------------------------------------------------------
    def append(self, stream: str, build: Builder, expected_seq: int | None = None,
               fence: int | None = None, aux: AuxWrites | None = None,
               in_transaction: InTransaction | None = None) -> Head:
        """``EventStore.append`` in one transaction and two round trips.

        The first locks the stream's row and reads its head (``BEGIN`` and one upsert that
        creates the row if needed); the second, pipelined, sends the lines, the new head, the
        ``aux`` records, the ``in_transaction`` statements, and ``COMMIT``: all of them
        commit together, durably, or none does.
        """
        self._check_stream(stream)
        p = self.project

        def tx(conn: Any) -> Head:
            with conn.pipeline():
                with conn.transaction():
                    seq, last = conn.execute(_LOCK_HEAD, (p, stream)).fetchone()
                    head = Head(seq, bytes(last))
                    if expected_seq is not None and expected_seq != head.seq:
                        raise ConcurrencyError(f"{stream}: expected {expected_seq} events, found {head.seq}",
                                               stream=stream, expected=expected_seq, found=head.seq)
                    new = [bytes(line) for line in build(head)]
                    if not new:
                        return head
                    if any(b"\n" in line for line in new):
                        raise ValueError("a line must not contain a newline")
                    new_head = Head(head.seq + len(new), new[-1])
                    conn.execute(_INSERT_LINES, (p, stream, list(range(head.seq + 1, new_head.seq + 1)), new))
                    # the fence trigger refuses an epoch lower than the stream's (a superseded worker)
                    conn.execute(_MOVE_HEAD, (new_head.seq, new_head.last_line, fence, p, stream))
                    if aux is not None:
                        self._aux_in_transaction(conn, aux(new_head))
                    if in_transaction is not None:
                        in_transaction(conn)
                    faults.point("pg.append.before_commit")
                    return new_head

        result = self._run(tx)
        faults.point("pg.append.after_commit")
        return result

    def _aux_in_transaction(self, conn: Any, records: Any) -> None:
        put = [(area, key, bytes(data)) for (area, key), data in records.items() if data is not None]
        drop = [(area, key) for (area, key), data in records.items() if data is None]
        for area, key in records:
            validate_id(area, "aux area")
            validate_id(key, "aux key")
        if put:
            conn.execute(_PUT_AUX_MANY, (self.project, [r[0] for r in put], [r[1] for r in put], [r[2] for r in put]))
        if drop:
            conn.execute(_DROP_AUX_MANY, ([r[0] for r in drop], [r[1] for r in drop], self.project))

    def read(self, stream: str, from_seq: int = 1) -> list[StoredLine]:
        self._check_stream(stream)

        # Lines are numbered by position, as in a file: a deleted row shows up as a sequence
        # mismatch in verification instead of silently closing the gap.
        def tx(conn: Any) -> list[StoredLine]:
            rows = conn.execute("SELECT line FROM orch_events WHERE project = %s AND stream = %s AND seq >= %s "
                                "ORDER BY seq", (self.project, stream, from_seq)).fetchall()
            return [StoredLine(i, bytes(r[0])) for i, r in enumerate(rows, max(from_seq, 1))]

        return self._run(tx)

    def read_with_aux(self, stream: str, area: str, key: str) -> tuple[bytes | None, list[StoredLine]]:
        self._check_stream(stream)

        def tx(conn: Any) -> tuple[bytes | None, list[StoredLine]]:
            rows = conn.execute(_READ_WITH_AUX, (self.project, area, key, self.project, stream)).fetchall()
            record = bytes(rows[0][2]) if rows and rows[0][0] == 0 else None
            lines = [bytes(r[2]) for r in rows if r[0] == 1]
            return record, [StoredLine(i, raw) for i, raw in enumerate(lines, 1)]

        return self._run(tx)

    def job_ids(self) -> Iterator[str]:
        rows = self._run(lambda conn: conn.execute(
            "SELECT stream FROM orch_streams WHERE project = %s AND seq > 0 AND stream <> %s",
            (self.project, AUDIT_STREAM)).fetchall())
        return iter([r[0] for r in rows])

    def has_jobs(self) -> bool:
        return bool(self._run(lambda conn: conn.execute(
            "SELECT 1 FROM orch_streams WHERE project = %s AND seq > 0 AND stream <> %s LIMIT 1",
            (self.project, AUDIT_STREAM)).fetchall()))

    def put_aux(self, area: str, key: str, data: bytes) -> None:
        validate_id(area, "aux area")
        validate_id(key, "aux key")
        self._run(lambda conn: conn.execute(
            "INSERT INTO orch_aux (project, area, key, data) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (project, area, key) DO UPDATE SET data = EXCLUDED.data",
            (self.project, area, key, bytes(data))))

    def get_aux(self, area: str, key: str) -> bytes | None:
        row = self._run(lambda conn: conn.execute(
            "SELECT data FROM orch_aux WHERE project = %s AND area = %s AND key = %s",
            (self.project, area, key)).fetchone())
        return bytes(row[0]) if row else None

    def aux_keys(self, area: str) -> list[str]:
        rows = self._run(lambda conn: conn.execute(
            "SELECT key FROM orch_aux WHERE project = %s AND area = %s ORDER BY key", (self.project, area)).fetchall())
        return [r[0] for r in rows]

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """A session advisory lock (``pg_advisory_lock``) on a connection kept for the block: every
        process using this database for the project takes turns, and the server releases it when
        the holder's connection ends (the process died)."""
        key = int.from_bytes(hashlib.sha256(f"{self.project}\0{name}".encode()).digest()[:8], "big", signed=True)
        psycopg = _driver()
        conn = self._take()
        try:
            with self.deadline.bounded(conn):  # the holder's hold is short (an append), unless the server stalls
                conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        except BaseException as exc:
            error = _storage_error(exc, conn) if isinstance(exc, psycopg.Error) else None
            conn.close()
            if error is not None:  # as every other call of this store reports it (``_run``)
                raise error from None
            raise
        try:
            yield
        finally:
            try:
                with self.deadline.bounded(conn):
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                self._give(conn)
            except Exception:  # the session is gone, and its lock with it
                conn.close()

    def delete_aux(self, area: str, key: str) -> None:
        self._run(lambda conn: conn.execute("DELETE FROM orch_aux WHERE project = %s AND area = %s AND key = %s",
                                            (self.project, area, key)))

    def queue_index(self) -> Any:
        """The ready/running index shared by every machine (``orchestrator/store/pg_queue.py``)."""
        from orchestrator.store.pg_queue import PgQueueIndex

        return PgQueueIndex(self)

    def exists(self, stream: str) -> bool:
        self._check_stream(stream)
        row = self._run(lambda conn: conn.execute(
            "SELECT seq FROM orch_streams WHERE project = %s AND stream = %s", (self.project, stream)).fetchone())
        return bool(row and row[0])

    @staticmethod
    def _check_stream(stream: str) -> None:
        if stream != AUDIT_STREAM:
            validate_id(stream, "job id")

    def __repr__(self) -> str:
        return f"PostgresStore({sanitize_text(self.url)!r}, project={self.project!r})"


def open_store(url: str, project: str, deadline_seconds: float | None = DEFAULT_PG_DEADLINE_SECONDS) -> EventStore:
    """The store a ``--store`` / ``ORCH_STORE_URL`` value names (only PostgreSQL URLs for now)."""
    return PostgresStore(url, project, deadline_seconds)
