"""The PostgreSQL backend: the same streams of signed lines, shared by many machines.

Each line is kept byte for byte in ``orch_events`` (project, stream, seq), so a history
verifies exactly as it does in a file, and moves between backends without re-signing.
``orch_streams`` holds one row per stream with its head: an append moves the head only if it is
still the one expected (checked as the row is locked), inserts the new lines, and writes any ``aux``
records given (the job's head record, a lease deletion, an audit marker), all in one
statement, so on this backend an event and its head record are committed both or neither
(``atomic_aux``): one round trip when the caller knows the head (every job event), two when it
must be read under the lock first (the audit log); an audited job event, its audit entry and the job's
pending lock around both take two (``append_audited``; the append paths are
``orchestrator/store/pg_append.py``). Durability is PostgreSQL's: the session
forces ``synchronous_commit = on``, so when ``append`` returns the commit is flushed to the
server's WAL. Several projects may share one database (the ``project`` column). Connections (the URL, its
password kept out of every message, what a driver error means) are ``orchestrator/store/pg_connection.py``; the
store's sessions (its pool, each call's connection, a conflict's retry, a fenced write refused, a forked child's own
sessions) ``orchestrator/store/pg_sessions.py``, a base class of ``PostgresStore``.

Fencing is checked by the database: an append given a worker's ``fence`` epoch writes it into
the stream's row, and a trigger (migration 0002) refuses to move it backwards, so a worker
whose claim was superseded gets ``LeaseLostError`` and writes nothing. Statements passed as
``in_transaction`` (the queue index, ``orchestrator/store/pg_queue.py``) are part of the append's
statement, so the index and its ``NOTIFY`` commit together with the event.

Every call has a deadline (``Deadline``, ``orchestrator/store/pg_deadline.py``,
``ORCH_PG_DEADLINE_SECONDS``): a server or pooler that stalls without closing the connection would
otherwise block the caller (a worker's heartbeat or outcome) for as long as it stalls. So that a long
read (the audit log, every job id) is not cut for its length, it is read ``READ_CHUNK_ROWS`` rows, and
lines at most ``READ_CHUNK_BYTES`` bytes, per round trip, each a call of its own. Nothing bounds a line
below that (a job's input and a payload are a MiB each, but redaction can double a payload's text, and
neither ``import`` nor an ``append`` through the Python API checks a line's size), so a longer line comes
in slices of ``READ_CHUNK_BYTES`` (``_read_long_line``). A job's first chunk, read with its head record
(``read_with_aux``), is fetched as text, where ``bytea`` is hex (twice its size on the wire, 16 MiB at
most): in binary it was no faster there and slower at P90 (``docs/decisions.md``, 2026-12-01).

The machines sharing a project compare each other's times (lease expiries, due times), so the store
brings the clock they all decide by, the server's (``shared_clock``, ``orchestrator/store/pg_clock.py``),
sampled on each new connection and on a call's connection once a minute (``pg_sessions``: ``_take``).
"""
from __future__ import annotations

import contextlib
import hashlib
from array import array
from typing import Any, Callable, Collection, Iterator

from orchestrator.config import DEFAULT_PG_DEADLINE_SECONDS
from orchestrator.errors import ConfigError, StorageError
from orchestrator.security import validate_id
from orchestrator.store.base import (AUDIT_STREAM, AuxWrites, Builder, EventStore, Head, InTransaction, StoredLine,
                                     check_aux_name)
from orchestrator.store.pg_connection import (CREDENTIAL_ENV, _driver, _storage_error, connect, conninfo,
                                              is_postgres_url, redacted)
from orchestrator.store.pg_deadline import Deadline
from orchestrator.store.pg_sessions import PgSessions

__all__ = ["Deadline", "PostgresStore", "connect", "is_postgres_url", "open_store", "redacted"]

# Rows per round trip of a long read (the audit log, every job id, an aux area's keys): each round trip
# is one call with its own deadline, so a read of millions of rows is never cut for its length.
# Measured here: 12-17 ms per chunk of 10,000 audit lines, fetched in binary (docs/postgres.md).
READ_CHUNK_ROWS = 10_000
# Lines (a job's input and a terminal payload may each be a MiB) also come at most this many bytes per
# round trip (``_line_bounds``); a longer line comes in slices of this size (``_read_long_line``). 10,000
# lines of a real audit entry's size (490 bytes) fit, so those still come 10,000 per round trip.
READ_CHUNK_BYTES = 8 << 20
READ_FIRST_ROWS = 256  # a read's first chunk of lines, so lines of up to 32 KiB fit in it (a job's, mostly)

# A job's head record and its lines in one statement: one snapshot, so on this backend (where
# both commit together) they always agree, and one round trip instead of two (for a stream of up
# to READ_FIRST_ROWS lines of up to 32 KiB; a longer one gets the rest in later round trips).
# Lines come with their length, and only up to a length (the parameter after the record's key), longer
# ones as NULL: ``octet_length`` reads a stored value's size without fetching it, so they are not sent.
_READ_WITH_AUX = ("SELECT 0, 0::bigint, data, 0 FROM orch_aux WHERE project = %s AND area = %s AND key = %s "
                  "UNION ALL SELECT 1, seq, CASE WHEN octet_length(line) <= %s THEN line END, octet_length(line) "
                  "FROM orch_events WHERE project = %s AND stream = %s ORDER BY 1, 2 LIMIT %s")
# Keyset-paginated reads (``PostgresStore._chunked``): the key to start after and the chunk's size last
# (lines: the longest line to send first, as above).
_READ_LINES = ("SELECT seq, CASE WHEN octet_length(line) <= %s THEN line END, octet_length(line) FROM orch_events "
               "WHERE project = %s AND stream = %s AND seq > %s ORDER BY seq LIMIT %s")
# One slice of a line too long for a chunk: ``substring`` of a ``bytea`` counts bytes, from 1
_READ_SLICE = ("SELECT substring(line FROM %s FOR %s), octet_length(line) FROM orch_events "
               "WHERE project = %s AND stream = %s AND seq = %s")
_JOB_HEADS = ("SELECT stream, seq, edits FROM orch_streams WHERE project = %s AND seq > 0 AND stream <> %s "
              "AND stream > %s ORDER BY stream LIMIT %s")
# Every job stream holding a line, from ``orch_events`` itself (``job_ids``), in stream order: an index-only scan of
# its primary key, every event's entry read once (~0.5 us each here: 100,000 jobs of 5 events 0.24 s, against 0.12 s
# from orch_streams). A loose index scan (a recursive CTE, one probe per stream) took 2.1 s: cheaper only from ~40
# events a job.
_EVENT_STREAMS = ("SELECT DISTINCT stream FROM orch_events WHERE project = %s AND stream <> %s AND stream > %s "
                  "ORDER BY stream LIMIT %s")
_INDEXED_HEADS = ("SELECT stream, seq, sha256(last_line) FROM orch_streams WHERE project = %s AND stream > %s "
                  "ORDER BY stream LIMIT %s")
_INDEXED_HEAD = "SELECT stream, seq, sha256(last_line) FROM orch_streams WHERE project = %s AND stream = %s"
_AUX_KEYS = "SELECT key FROM orch_aux WHERE project = %s AND area = %s AND key > %s ORDER BY key LIMIT %s"


def _line_bounds(longest: int | None) -> tuple[int, int]:
    """The rows and the longest line to send of a chunk of lines, from the longest line of the chunk before
    (None: the first): as many as ``READ_CHUNK_BYTES`` holds of that length, and lines up to an equal share
    of it, or that long, never longer than ``READ_CHUNK_BYTES``: a chunk holds at most that many bytes (a
    longer line is read in slices, ``_read_long_line``). Small lines come ``READ_CHUNK_ROWS`` at a time, as
    if there were no byte bound."""
    if longest is None:
        size = min(READ_FIRST_ROWS, READ_CHUNK_ROWS)
    else:
        size = min(READ_CHUNK_ROWS, max(1, READ_CHUNK_BYTES // max(longest, 1)))
    return size, max(READ_CHUNK_BYTES // size, min(longest or 0, READ_CHUNK_BYTES))


def _sent_lines(chunk: list[Any]) -> tuple[list[Any], bool, int]:
    """A chunk's (key, line, length) rows up to the first line longer than the chunk could take (not sent:
    None), whether there was one, and the longest line's length."""
    longest = max((row[2] for row in chunk), default=0)
    for i, row in enumerate(chunk):
        if row[1] is None:
            return chunk[:i], True, longest
    return chunk, False, longest


def _numbered(rows: list[Any], first: int) -> list[StoredLine]:
    """Rows (seq, line, ...) as lines numbered by position from ``first``, as in a file: a deleted row shows up as a
    sequence mismatch in verification instead of closing the gap. A row whose ``seq`` is not its position (renumbered
    by hand, its line in place: an append would follow that number) carries it (``StoredLine.row``), which verification
    reports as one too; until 2026-12-06 such a row passed ``verify``, then appends wrote lines numbered after it.
    Rows come in ``seq`` order, so they are numbered ``first``, ``first + 1``, ... when the first and last are."""
    if not rows or (rows[0][0] == first and rows[-1][0] == first + len(rows) - 1):
        return [StoredLine(i, bytes(r[1])) for i, r in enumerate(rows, first)]
    return [StoredLine(i, bytes(r[1]), None if r[0] == i else r[0]) for i, r in enumerate(rows, first)]


class PostgresStore(PgSessions, EventStore):
    """One project's streams in a PostgreSQL database (schema from ``orchestrator db migrate``); every call is made on
    the sessions ``PgSessions`` keeps (``pg_sessions.py``: the pool, ``_run``, ``close``, a forked child's own)."""

    atomic_aux = True  # ``append(..., aux=...)`` writes the records in the lines' transaction
    credential_env = CREDENTIAL_ENV

    def __init__(self, url: str, project: str = "default",
                 deadline_seconds: float | None = DEFAULT_PG_DEADLINE_SECONDS) -> None:
        if not is_postgres_url(url):
            raise ConfigError(redacted(f"not a PostgreSQL URL: {url!r} (expected postgresql://...)", url))
        conninfo(url)  # a malformed one is refused here, before any call
        self.project = validate_id(project, "project id")
        super().__init__(url, deadline_seconds)  # no session is opened before the first call

    # -- contract ---------------------------------------------------------------------------
    def append(self, stream: str, build: Builder, expected_seq: int | None = None,
               fence: int | None = None, aux: AuxWrites | None = None,
               in_transaction: InTransaction | None = None, expected_last: bytes | None = None) -> Head:
        """``EventStore.append``: one statement, all of it committed together or none; one round trip with the
        head the caller decided from, else two (``orchestrator/store/pg_append.py``: ``append``)."""
        from orchestrator.store import pg_append  # it imports this module

        return pg_append.append(self, stream, build, expected_seq, fence, aux, in_transaction, expected_last)

    def append_audited(self, stream: str, build: Builder, entry: Builder, *, lock: str,
                       entry_aux: AuxWrites | None = None, between: Callable[[], None] = lambda: None,
                       expected_seq: int | None = None, fence: int | None = None, aux: AuxWrites | None = None,
                       in_transaction: InTransaction | None = None, expected_last: bytes | None = None) -> Head:
        """``EventStore.append_audited`` on one connection in two round trips, the same statements in the same
        order as the calls one by one (``orchestrator/store/pg_append.py``: ``append_audited``)."""
        from orchestrator.store import pg_append  # it imports this module

        return pg_append.append_audited(self, stream, build, entry, lock=lock, entry_aux=entry_aux, between=between,
                                        expected_seq=expected_seq, fence=fence, aux=aux,
                                        in_transaction=in_transaction, expected_last=expected_last)

    def read(self, stream: str, from_seq: int = 1) -> list[StoredLine]:
        """Lines in chunks (``_chunked``), numbered as ``_numbered`` says."""
        self._check_stream(stream)
        rows = self._chunked(_READ_LINES, (self.project, stream), after=from_seq - 1, lines=True)
        return _numbered(rows, max(from_seq, 1))

    def first_line(self, stream: str) -> bytes | None:
        """One row, the stream's lowest ``seq`` (line 1, lines being numbered by position); a line longer than
        ``READ_CHUNK_BYTES`` in slices, as ``read`` gets it."""
        self._check_stream(stream)
        rows = self._run(lambda conn: conn.execute(
            _READ_LINES, (READ_CHUNK_BYTES, self.project, stream, 0, 1), binary=True).fetchall())
        if not rows:
            return None
        seq, line, length = rows[0]
        return bytes(line) if line is not None else self._read_long_line((self.project, stream), seq, length)

    def read_with_aux(self, stream: str, area: str, key: str) -> tuple[bytes | None, list[StoredLine]]:
        """The record and the first lines in one statement (one snapshot, one round trip); a stream longer
        than that chunk gets the rest as ``read`` does, in later snapshots: the lines can then only be
        longer than the record says, never shorter (``EventStore.read_with_aux``)."""
        self._check_stream(stream)
        size, cap = _line_bounds(None)
        limit = size + 1  # the record's row, then a chunk of lines
        rows = self._run(lambda conn: conn.execute(
            _READ_WITH_AUX, (self.project, area, key, cap, self.project, stream, limit)).fetchall())
        record = bytes(rows[0][2]) if rows and rows[0][0] == 0 else None
        return record, self.lines_after_first_chunk(stream, [r[1:] for r in rows if r[0] == 1], len(rows) == limit)

    def lines_after_first_chunk(self, stream: str, chunk: list[Any], full: bool) -> list[StoredLine]:
        """A stream's lines from the first chunk of a read (``read_with_aux``'s, or the claim statement's,
        ``store/pg_queue.py``): its rows (seq, line or None, length), lines up to the length ``_line_bounds(None)``
        allows sent; the rest, if the chunk may not hold them all (``full``: as many rows as asked for, or a line
        it did not send), read as ``read`` reads them, in later round trips and snapshots."""
        lines, cut, longest = _sent_lines(chunk)
        if cut or full:
            lines += self._chunked(_READ_LINES, (self.project, stream), after=lines[-1][0] if lines else 0,
                                   lines=True, longest=longest)
        return _numbered(lines, 1)

    def _chunked(self, sql: str, params: tuple[Any, ...], after: Any, lines: bool = False,
                 longest: int | None = None) -> list[Any]:
        """Every row of ``sql``, a keyset-paginated query (its last parameters: the key to start after, the
        chunk's size; the key is a row's first column), ``READ_CHUNK_ROWS`` rows per round trip, each a call
        with its own deadline: a long read (the audit log, every job id) is bounded per round trip, never
        cut for its length. Not one snapshot: rows committed meanwhile may appear in a later chunk.

        ``lines``: rows are (key, line, its length), and ``sql`` takes first the longest line to send; a
        chunk's rows and that length come from the longest line of the chunk before (``longest``; None:
        none yet), and a chunk ends before a line it did not send, which the next one, of fewer rows, does;
        or, for a line longer than any chunk may be, ``_read_long_line`` in slices (``params`` are then the
        project and the stream)."""
        rows: list[Any] = []
        while True:
            if lines:  # the bounds are read at each call: tests shrink them
                size, cap = _line_bounds(longest)
                args: tuple[Any, ...] = (cap, *params, after, size)
            else:
                size = READ_CHUNK_ROWS
                args = (*params, after, size)
            # lines in binary: byte for byte on the wire (text sends ``bytea`` as hex, twice its size); a chunk of
            # 10,000 audit lines 26-27 -> 12-17 ms. Not for a job's own read (``read_with_aux``): no faster there,
            # and its P90 was 60 us slower
            chunk = self._run(lambda conn, args=args: conn.execute(sql, args, binary=lines).fetchall())
            kept, cut, longest = _sent_lines(chunk) if lines else (chunk, False, None)
            rows.extend(kept)
            if not cut and len(chunk) < size:
                return rows
            if kept:
                after = kept[-1][0]
            if cut and chunk[len(kept)][2] > READ_CHUNK_BYTES:  # no chunk may carry it: in slices
                key, _none, length = chunk[len(kept)]
                rows.append((key, self._read_long_line(params, key, length), length))
                after, longest = key, max((row[2] for row in kept), default=None)  # the next chunk as a first one

    def _read_long_line(self, params: tuple[Any, ...], seq: int, length: int) -> bytes:
        """Line ``seq`` of (project, stream) ``params``, ``length`` bytes long, in slices of ``READ_CHUNK_BYTES``,
        each a round trip with its own deadline, as every chunk is: a line longer than a chunk is never one call
        that grows with it. Lines are never rewritten, so the slices are of one line; one whose length changed
        between two of them, or that went, was changed by hand meanwhile: ``StorageError``."""
        parts: list[bytes] = []
        got = 0
        while got < length:
            rows = self._run(lambda conn, at=got: conn.execute(
                _READ_SLICE, (at + 1, READ_CHUNK_BYTES, *params, seq), binary=True).fetchall())
            if not rows or rows[0][1] != length or not rows[0][0]:
                raise StorageError(f"line {seq} of {params[1]} changed while it was read in slices of "
                                   f"{READ_CHUNK_BYTES} bytes; read it again", stream=params[1], seq=seq)
            parts.append(bytes(rows[0][0]))
            got += len(parts[-1])
        return b"".join(parts)

    def job_ids(self) -> Iterator[str]:
        """In id order, ``READ_CHUNK_ROWS`` per round trip, from ``orch_events`` (``_EVENT_STREAMS``: its primary key's
        index read), not from ``orch_streams``, a derived index whose row a hand can delete: every caller
        (``verify``, ``export``, ``status --all``, ``audit heal``, the queue index's rebuild) goes on to read every job
        it lists, so a job must not be left out for its row. Until 2026-12-06 it read ``orch_streams``
        (``fingerprints``' statement), and a job whose row was deleted was out of ``verify`` and ``export`` (moved to
        files without it)."""
        return iter([r[0] for r in self._chunked(_EVENT_STREAMS, (self.project, AUDIT_STREAM), after="")])

    def indexed_heads(self, stream: str | None = None) -> dict[str, tuple[int, bytes]] | None:
        """``EventStore.indexed_heads``: every row of ``orch_streams`` (the audit log's too), ``READ_CHUNK_ROWS`` per
        round trip, or ``stream``'s row alone (``verify --job-id``), the last line's hash computed by the server (its
        bytes are not sent)."""
        if stream is None:
            rows = self._chunked(_INDEXED_HEADS, (self.project,), after="")
        else:
            rows = self._run(lambda conn: conn.execute(_INDEXED_HEAD, (self.project, stream)).fetchall())
        return {r[0]: (r[1], bytes(r[2])) for r in rows}

    def fingerprints(self) -> tuple[list[str], "array[int]", "array[int]"]:
        """See ``EventStore.fingerprints``: every job stream's head (its line count) and the count of hand edits of its
        events (``edits``, counted by migration 0006's triggers: a row deleted, rewritten or renumbered by hand leaves
        the head as it was, and until 2026-12-06 the jobs cache kept the job's row from before), from ``orch_streams``
        in id order, ``READ_CHUNK_ROWS`` per round trip; no job's lines are read. (Until 2026-12-02 the jobs cache
        read every job whole for its count: a warm ``metrics`` of 2,000 jobs took ~0.47 s.) A job whose row is missing
        (deleted by hand; its next append makes it again) is not listed here: the jobs cache finds it by its head record
        (``Orchestrator.removed_jobs(..., unindexed=True)``)."""
        rows = self._chunked(_JOB_HEADS, (self.project, AUDIT_STREAM), after="")
        return [r[0] for r in rows], array("q", (r[1] for r in rows)), array("q", (r[2] for r in rows))

    def has_jobs(self) -> bool:
        return bool(self._run(lambda conn: conn.execute(
            "SELECT 1 FROM orch_streams WHERE project = %s AND seq > 0 AND stream <> %s LIMIT 1",
            (self.project, AUDIT_STREAM)).fetchall()))

    def put_aux(self, area: str, key: str, data: bytes) -> None:
        check_aux_name(area, key)
        self._run(lambda conn: conn.execute(
            "INSERT INTO orch_aux (project, area, key, data) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (project, area, key) DO UPDATE SET data = EXCLUDED.data",
            (self.project, area, key, bytes(data))), write=True)

    def put_aux_if_head(self, stream: str, seq: int, area: str, key: str, data: bytes) -> bool:
        """``EventStore.put_aux_if_head`` in one statement: the stream's row read ``FOR SHARE`` (an append holds it
        from moving the head to committing its lines and head record, so this waits for it, then sees its seq)."""
        self._check_stream(stream)
        check_aux_name(area, key)
        return self._run(lambda conn: conn.execute(
            "INSERT INTO orch_aux (project, area, key, data) SELECT project, %s, %s, %s FROM orch_streams "
            "WHERE project = %s AND stream = %s AND seq = %s FOR SHARE "
            "ON CONFLICT (project, area, key) DO UPDATE SET data = EXCLUDED.data",
            (area, key, bytes(data), self.project, stream, seq)).rowcount == 1, write=True)

    def get_aux(self, area: str, key: str) -> bytes | None:
        row = self._run(lambda conn: conn.execute(
            "SELECT data FROM orch_aux WHERE project = %s AND area = %s AND key = %s",
            (self.project, area, key)).fetchone())
        return bytes(row[0]) if row else None

    def aux_present(self, area: str, keys: Collection[str]) -> set[str]:
        """One statement for all ``keys`` (``EventStore.aux_present``)."""
        if not keys:
            return set()
        rows = self._run(lambda conn: conn.execute(
            "SELECT key FROM orch_aux WHERE project = %s AND area = %s AND key = ANY(%s)",
            (self.project, area, list(keys))).fetchall())
        return {r[0] for r in rows}

    def aux_keys(self, area: str) -> list[str]:
        """In key order, ``READ_CHUNK_ROWS`` per round trip (the head records' area has one per job)."""
        return [r[0] for r in self._chunked(_AUX_KEYS, (self.project, area), after="")]

    def _lock_key(self, name: str) -> int:
        """The advisory lock's key of the project's lock ``name`` (``exclusive``, ``append_audited``)."""
        return int.from_bytes(hashlib.sha256(f"{self.project}\0{name}".encode()).digest()[:8], "big", signed=True)

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """A session advisory lock (``pg_advisory_lock``) on a connection kept for the block: every
        process using this database for the project takes turns, and the server releases it when
        the holder's connection ends (the process died)."""
        key = self._lock_key(name)
        psycopg = _driver()
        conn = self._take()
        try:
            with self.deadline.bounded(conn):  # the holder's hold is short (an append), unless the server stalls
                conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        except BaseException as exc:
            error = _storage_error(exc, conn) if isinstance(exc, psycopg.Error) else None  # a lock wait: no write
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
                                            (self.project, area, key)), write=True)

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
        return redacted(f"PostgresStore({self.url!r}, project={self.project!r})", self.url)


def open_store(url: str, project: str, deadline_seconds: float | None = DEFAULT_PG_DEADLINE_SECONDS) -> EventStore:
    """The store a ``--store`` / ``ORCH_STORE_URL`` value names (only PostgreSQL URLs for now)."""
    return PostgresStore(url, project, deadline_seconds)
