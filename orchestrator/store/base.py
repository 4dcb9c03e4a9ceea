"""The storage contract: append-only streams of opaque lines.

A *stream* is one job's event log (named by its job id) or the project's audit log
(``AUDIT_STREAM``). The store knows nothing of signatures or states: it keeps lines in
order, serialises appends per stream, and says exactly what is durable when a call returns.
Every backend passes ``tests/contract``.
"""
from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from array import array
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

from orchestrator.errors import AuxNotWrittenError, IntegrityError, OrchestratorError, StorageError, entry_not_written
from orchestrator.security import validate_id
from orchestrator.store.locks import bounded_waits

AUDIT_STREAM = "@audit"
HEADS_AREA = "heads"  # aux area of each job's head record, keyed by its job id (``history.head_record``)
# The audit log's head record (``audit``: without it, a log cut at a line boundary would look complete)
AUDIT_HEAD = ("audit-head", "audit")
# A head record, lease or audit marker is under this many bytes on every store: the file store keeps each in a slot
# of this size, written in place (``JsonlStore._put_slot``), and an import refuses a bigger one from any store
# (``transfer``).
SLOT_BYTES = 512
# The most characters of an aux key: an id (at most 128, ``security.ID_LENGTH``) and a suffix (a lease's
# ``.<epoch>``, ``leases``); a file name still, on files, with room for a writer's temporary copy.
AUX_KEY_LENGTH = 160


def check_aux_name(area: str, key: str) -> None:
    """``INVALID_ID`` unless an aux record's ``area`` is an id and its ``key`` an id of up to ``AUX_KEY_LENGTH``
    characters: a name every store can hold (a file name on files), checked by each store before it touches one."""
    validate_id(area, "aux area")
    validate_id(key, "aux key", AUX_KEY_LENGTH)


@dataclass(frozen=True, slots=True)
class Head:
    """The last complete line of a stream: its number (0 when empty) and its bytes (``b""``)."""

    seq: int
    last_line: bytes


@dataclass(frozen=True, slots=True)
class LockedHead(Head):
    """A head a store read under the stream's lock together with the stream's head record (``record``: its bytes, None
    for none), in one transaction: PostgreSQL gives an audit entry's ``build`` the log's so, which compares the two
    (``audit.refuse_cut``) without a read of its own on another connection (where the server's timeouts apply, and
    which a connection cut meanwhile, letting the lock go, could make newer than the head: a cut that is not there)."""

    record: bytes | None = None


@dataclass(frozen=True, slots=True)
class StoredLine:
    """One complete line as stored: its 1-based position and its bytes without the newline. ``row``: the number a store
    that numbers its lines apart from their order (PostgreSQL's ``orch_events.seq``) holds this one under, where
    that is not its position (renumbered by hand: ``verify_stream`` reports it); None where they agree, and on files."""

    seq: int
    raw: bytes
    row: int | None = None


Builder = Callable[[Head], Sequence[bytes]]
# ``(area, key) -> new bytes``, or None to delete the record; given the stream's new head
AuxWrites = Callable[[Head], Mapping[tuple[str, str], "bytes | None"]]


@dataclass(frozen=True)
class InTransaction:
    """SQL that an ``atomic_aux`` store (PostgreSQL) commits with an append, in the statement that writes
    its lines: ``writes`` are data-modifying statements that each join ``up``, the stream's head row as
    the append moves it (one row, or none when the head is not where the append expected it), so they
    take effect only with the lines; ``selects`` are expressions evaluated once per moved head
    (``pg_notify``). Each is (SQL with ``%s`` placeholders, its parameters)."""

    writes: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    selects: tuple[tuple[str, tuple[Any, ...]], ...] = ()


_LOCAL_LOCKS: dict[tuple[int, str], threading.Lock] = {}
_LOCAL_GUARD = threading.Lock()


class EventStore(ABC):
    """Append-only, per-stream ordered storage of lines."""

    #: True when ``append(..., aux=...)`` writes the records in the lines' own transaction.
    atomic_aux = False
    #: The clock every machine using this store decides time by, when it has one: PostgreSQL's is the
    #: server's (``pg_clock``), since its machines compare each other's times. None: this machine's own.
    shared_clock: Callable[[], float] | None = None
    #: Environment variables its driver may read the store's credentials from, when its URL does not give them
    #: (PostgreSQL: libpq's ``PGPASSWORD``, ...): a worker keeps them from its handlers (``handler_env.withhold``).
    credential_env: frozenset[str] = frozenset()

    @abstractmethod
    def append(self, stream: str, build: Builder, expected_seq: int | None = None,
               fence: int | None = None, aux: AuxWrites | None = None,
               in_transaction: InTransaction | None = None, expected_last: bytes | None = None) -> Head:
        """Append the lines ``build(head)`` returns, atomically and durably.

        Appends to one stream are serialised: ``build`` runs while the stream is locked, with
        its current head, so it can chain and sign the new lines. If ``expected_seq`` is given
        and the stream does not hold exactly that many lines, raise ``ConcurrencyError`` and
        write nothing. ``expected_last`` (with ``expected_seq``) is the last line the caller decided
        from, which it verified as line ``expected_seq``: a store that finds those very bytes last may take
        that ``seq`` for theirs (files: the line is not parsed again). A store that can check both in the
        write itself (PostgreSQL) may call ``build`` with that head before locking anything and append in
        one round trip; if the stream's head is not that one, nothing is written and ``build`` is called
        again under the lock with the head there is, as without it. So ``build`` must be a pure function
        of the head it is given. When this returns, every new line is durable (fsynced) and visible to
        every reader; if it raises, none of them is acknowledged and readers never see a part of one.
        Returns the new head.
        Several lines are atomic against an error (none of them stays) but, on files, not against a
        crash: the file may keep some of them, complete, and part of the next (a torn tail, which
        readers ignore). A caller appending several (``import``, by chunks) resumes from whatever
        prefix it finds; PostgreSQL commits them in one transaction.

        ``fence`` is the fencing epoch of the worker appending (None for anyone else). A store
        that can check it (PostgreSQL) refuses, with ``LeaseLostError``, an epoch lower than the
        highest one appended to the stream; the others rely on ``expected_seq`` and the worker's
        re-read (``docs/worker.md``).

        ``aux`` (optional) is called with the new head once the lines are built and returns aux
        records to write with them (``(area, key) -> bytes``, or None to delete one). Where
        ``atomic_aux`` is true (PostgreSQL) they are part of the append's transaction: committed
        and durable together with the lines, or, if the append fails, not written at all. The
        other stores write them after the lines are durable, with ``put_aux`` semantics (a crash
        in between leaves the lines without them; a failure then is ``AuxNotWrittenError``, the lines
        acknowledged though it raises). Not called when ``build`` returns no line; but
        like ``build`` it may be called for an append that then writes nothing (PostgreSQL makes the
        whole statement from the expected head first, ``expected_last``), so it must be pure too.

        ``in_transaction`` (optional, ``atomic_aux`` stores only: ``InTransaction``) is SQL committed
        in the append's own statement: a queue index kept in the database (``store/pg_queue.py``)
        commits its rows with the event this way. The other stores refuse one (``ValueError``):
        their indexes write around the append instead.
        """

    def append_audited(self, stream: str, build: Builder, entry: Builder, *, lock: str,
                       entry_aux: AuxWrites | None = None, between: Callable[[], None] = lambda: None,
                       expected_seq: int | None = None, fence: int | None = None, aux: AuxWrites | None = None,
                       in_transaction: InTransaction | None = None, expected_last: bytes | None = None) -> Head:
        """``append`` a job's events, then their audit entry (``append(AUDIT_STREAM, entry, aux=entry_aux)``),
        holding the lock ``lock`` (``exclusive``: the job's pending lock, ``audit.pending``) from before the
        events until after the entry. Two appends, two transactions, in that order, each as ``append`` says: the
        events are durable before the entry is written; if their append raises, no entry is written; if the
        entry's raises, the events stand without it (as after a crash between the two: ``audit.heal`` writes it
        later), and a ``StorageError`` of the entry's, or an error of ``between`` (which runs once the events are
        durable, before the entry; but an ``IntegrityError``), is raised as ``AuditEntryNotWrittenError``
        (``errors.entry_not_written``; ``AuditEntryUnavailableError`` when it may pass). Returns the events' new head.
        An ``AuxNotWrittenError`` (files: the lines durable, a record after them not) is not "nothing written":
        the events' still runs ``between`` and writes their entry, and then, as the entry's own, is raised once
        both are durable (one error naming every record not written).

        Default: those calls, one after the other. PostgreSQL sends the same statements, in the same order and
        transactions, on one connection in two round trips (the calls one by one take six).
        """
        missed: list[AuxNotWrittenError] = []
        with self.exclusive(lock):
            try:
                head = self.append(stream, build, expected_seq, fence=fence, aux=aux, in_transaction=in_transaction,
                                   expected_last=expected_last)
            except AuxNotWrittenError as exc:  # the events are durable: without their entry they stand unexplained
                missed.append(exc)
            try:
                between()
            except IntegrityError:
                raise
            except OrchestratorError as exc:  # the events stand without their entry: not "nothing was written"
                raise entry_not_written(exc) from None
            try:
                with bounded_waits(None):  # the events are durable: their entry is written, not passed over
                    # (waited for without bound; said after LOCK_WAIT_SECONDS within a ``said_waits``)
                    self.append(AUDIT_STREAM, entry, aux=entry_aux)
            except AuxNotWrittenError as exc:
                missed.append(exc)
            except StorageError as exc:  # the events stand without their entry: not "nothing was written"
                raise entry_not_written(exc) from None
        if missed:
            raise AuxNotWrittenError("; ".join(exc.message for exc in missed),
                                     **{**missed[0].details, "linked": any(exc.details.get("linked") for exc in missed)})
        return head

    @abstractmethod
    def read(self, stream: str, from_seq: int = 1) -> list[StoredLine]:
        """The stream's complete lines from ``from_seq`` on; ``[]`` for a missing stream.

        A torn tail (bytes after the last newline, left by a crash) is not a line and is
        never returned. Lines are returned as stored, not validated.
        """

    @abstractmethod
    def first_line(self, stream: str) -> bytes | None:
        """The stream's first complete line (``read(stream)[0].raw``), or None when it has none; read without
        the lines after it (one small read of a file, one row of the database), for a caller that needs only
        what a job's first event says (its kind) of many jobs. Not validated, as ``read``."""

    def read_with_aux(self, stream: str, area: str, key: str) -> tuple[bytes | None, list[StoredLine]]:
        """``get_aux(area, key)`` and then ``read(stream)``: the record is read first, so an append
        racing this call can only make the lines longer than a head record says, never shorter.
        PostgreSQL reads both in one statement (one snapshot, one round trip)."""
        record = self.get_aux(area, key)
        return record, self.read(stream)

    @abstractmethod
    def job_ids(self) -> Iterator[str]:
        """Every job stream that holds at least one line, in no particular order."""

    def fingerprints(self) -> tuple[list[str], "array[int]", "array[int]"]:
        """Every job stream holding a line, with two numbers that change whenever it is appended to (the jobs cache,
        ``projection``, replays only the jobs whose numbers changed): ``(ids, first, second)``, in an order that
        stays the same while no job is added. Default: ``job_ids`` and each stream's line count (one read per job);
        files give size and mtime without opening any file, PostgreSQL every stream's head in a few round trips."""
        ids = list(self.job_ids())
        return ids, array("q", (len(self.read(job_id)) for job_id in ids)), array("q", bytes(8 * len(ids)))

    def indexed_heads(self, stream: str | None = None) -> dict[str, tuple[int, bytes]] | None:
        """Each stream's head (or ``stream``'s alone) as an index of streams kept apart from the lines, where the store
        keeps one: stream -> (its line count, the SHA-256 of its last line, of ``b""`` for none). PostgreSQL's ``orch_streams`` is
        one, derived from the lines (an append finds its head in them, and rebuilds a row that disagrees); ``verify``
        compares it with the lines it reads and warns of a row missing or wrong. None where the streams are their own
        index (files, memory): nothing to compare."""
        return None

    def has_jobs(self) -> bool:
        """Whether any job stream holds a line; stops at the first one it meets."""
        return next(iter(self.job_ids()), None) is not None

    @abstractmethod
    def put_aux(self, area: str, key: str, data: bytes) -> None:
        """Replace a small auxiliary record (head records, derived caches) atomically.

        Not fsynced: after a crash a reader may find the previous version or none, never a
        torn one. Nothing in an aux area is the truth; events are.
        """

    def put_aux_if_head(self, stream: str, seq: int, area: str, key: str, data: bytes) -> bool:
        """``put_aux`` only while ``stream`` holds exactly ``seq`` lines, serialised with its appends; True when
        written. What writes a stream's head record outside an append (``import``) uses it: an append racing it
        either waits for it and then writes its own, newer record, or ran first and nothing is written.

        Default: under the stream's append lock (``append`` of no line: ``build`` runs locked, and on files a
        writer's head record follows its lines, so one that appended before the lock has more lines than
        ``seq``). PostgreSQL checks the stream's row in the write's own statement."""
        written: list[bool] = []

        def locked(head: Head) -> list[bytes]:
            if head.seq == seq:
                self.put_aux(area, key, data)
                written.append(True)
            return []

        self.append(stream, locked)
        return bool(written)

    @abstractmethod
    def get_aux(self, area: str, key: str) -> bytes | None:
        """The record stored under ``area``/``key``, or None."""

    def aux_present(self, area: str, keys: Collection[str]) -> set[str]:
        """Those of ``keys`` that have a record in ``area`` (``get_aux`` not None), in one round trip on PostgreSQL:
        what ``audit.heal`` asks of every audited event of the jobs it is given. Default: ``get_aux`` per key."""
        return {key for key in keys if self.get_aux(area, key) is not None}

    @abstractmethod
    def aux_keys(self, area: str) -> list[str]:
        """The keys of the records stored in ``area`` (for sweeps of left-over records)."""

    def delete_aux(self, area: str, key: str) -> None:
        """Remove an auxiliary record; a missing one is fine. Default: blank it (readers treat b"" as none)."""
        if self.get_aux(area, key) is not None:
            self.put_aux(area, key, b"")

    def _write_aux(self, records: Mapping[tuple[str, str], bytes | None]) -> None:
        """Write ``aux`` records one by one (the non-atomic stores' way, after the lines)."""
        for (area, key), data in records.items():
            if data is None:
                self.delete_aux(area, key)
            else:
                self.put_aux(area, key, data)

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Hold the lock ``name`` for the block, exclusive between every process and thread using this
        store, and released if the holder dies. What spans several writes uses it (an audited event
        and its entry, against a heal). Default: a lock of this process (the memory store)."""
        with _LOCAL_GUARD:
            lock = _LOCAL_LOCKS.setdefault((id(self), name), threading.Lock())
        with lock:
            yield

    def prepare_locks(self) -> None:
        """Make what ``exclusive`` needs but each lock itself (files: the ``locks/`` folder), so that taking a lock
        later costs no new folder: a worker does it when it starts, and its hand-back of a job on a disk filled
        meanwhile then needs no block for one (``Worker``). Default: nothing."""

    @staticmethod
    def _no_transaction(in_transaction: InTransaction | None) -> None:
        if in_transaction is not None:
            raise ValueError("this store has no transaction to run statements in (in_transaction)")

    def wait_for_more(self, stream: str, seq: int, timeout: float) -> bool:
        """Wait, at most ``timeout`` seconds, for ``stream`` to hold more than ``seq`` lines (written,
        not necessarily durable yet); True once it does. A claimer that meets a job's ready entry
        before the event that queues it uses this instead of going back to sleep.

        Default: no wait, one look. Right for PostgreSQL, whose index commits with the event (an
        entry is never seen first). The memory store, too, only looks once: threads sharing it
        can see an entry before its event, and the claimer then keeps the entry for the
        announcement to wake it (``Claimer._try_claim``).
        """
        return len(self.read(stream)) > seq

    def calls_end_by(self, at: float | None) -> contextlib.AbstractContextManager[None]:
        """A block whose calls (in this thread) end by ``at`` (``time.monotonic()``), or fail then with
        ``StorageUnavailableError``: a caller that waits for the store for a limited time stays within
        it. Default: no bound (local files do not stall that way); PostgreSQL bounds each call."""
        return contextlib.nullcontext()

    def exists(self, stream: str) -> bool:
        return bool(self.read(stream)[:1])

    def refuse_unusable(self, stream: str) -> bool:
        """Raise what an append to ``stream`` would raise for what is in its file's place, before anything is
        written: a symbolic link (``PathEscapeError``), a FIFO, socket or device, or a directory holding files
        (``UnusableFileError``, a ``StorageError``). For a caller that must know before it writes anything else
        that goes with it, or before it reads (``verify``: a FIFO is never opened). Returns whether the file is
        there (False: an append would make it, and its folder). One ``lstat`` on files; where streams are not
        files, nothing to refuse and always True."""
        return True

    def close(self) -> None:
        """Release resources; the store is unusable afterwards."""
