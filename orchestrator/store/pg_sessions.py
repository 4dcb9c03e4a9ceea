"""The sessions of a PostgreSQL store: its pool of connections, each call's connection and deadline, what a driver
error in a call means for the caller, and a forked child's own sessions.

Apart from ``postgres.py`` (the store: its reads, its writes, aux records and locks, each a call made here) because
how a call gets and gives back a session is a concern of its own: a connection checked before its first use (the
schema's version, the server's clock sampled, ``_take``), a call's transaction the server rolled back for a conflict
made again (``_run``), a fenced write refused (``LeaseLostError``), a write on a replica session asked first whether
the schema's triggers fire there (``_refuse_if_triggers_off``), and a forked child that must not touch its parent's
sockets (``_after_fork_in_child``). Opening a connection (the URL, its password kept out of every message, what a
driver error means) is ``pg_connection.py``; the deadline's watchdog ``pg_deadline.py``; the clock ``pg_clock.py``.
``PgSessions`` is a base class of ``PostgresStore``, not an object it holds, so that ``store._run`` (called by
``pg_append`` and ``pg_queue``, and stood in for on a store by tests) stays one attribute lookup on every call.
"""
from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any, Callable

from orchestrator.config import DEFAULT_PG_DEADLINE_SECONDS
from orchestrator.errors import (ConcurrencyError, ConfigError, LeaseLostError, OrchestratorError, StorageError,
                                 StoreClosedError, TransactionConflictError)
from orchestrator.security import sanitize_text
from orchestrator.store.pg_clock import ServerClock
# ``connect`` is called through this module's name (``_take``), so a test can stand in for the server there
from orchestrator.store.pg_connection import (_driver, _storage_error, _went_away, connect, forget_replica_session,
                                              replica_session)
from orchestrator.store.pg_deadline import Deadline
from orchestrator.store.pg_schema import (MISSING_SQLSTATES, current_version, missing_problem, replica_problem,
                                          version_problem)

log = logging.getLogger(__name__)

_IDLE_CONNECTIONS = 4  # kept open per store; more are opened on demand and closed after use
FENCED_SQLSTATE = "OF001"  # raised by the orch_streams_fence trigger (migrations/0002_claiming.sql)
# Calls made of a store call whose transaction the server rolls back for a conflict (``_run``): a deadlock's other
# session, or the writer that moved a row first, is done by the next try, which waits for its locks
CONFLICT_TRIES = 3


class _RolledBack(Exception):
    """A try of ``PgSessions._run`` whose transaction the server rolled back for a conflict (``error``): nothing of
    it stays. Private, so that only the call that met it makes it again, never a call around it."""

    def __init__(self, error: TransactionConflictError) -> None:
        super().__init__(error.message)
        self.error = error


class PgSessions:
    """The sessions of one store of ``url``: a pool of at most ``_IDLE_CONNECTIONS`` idle connections, and the calls
    made on them (``_run``), each within ``deadline``."""

    conflict_tries = CONFLICT_TRIES  # calls of ``_run`` to a transaction the server rolls back for a conflict

    def __init__(self, url: str, deadline_seconds: float | None = DEFAULT_PG_DEADLINE_SECONDS) -> None:
        self.url = url
        self.deadline = Deadline(deadline_seconds)  # every call's bound; None or 0: none
        self._idle: list[Any] = []  # the same list for the store's life: its finalizer closes what it holds
        self._lock = threading.Lock()
        self._checked = False
        self._closed = False
        self._inherited: list[Any] = []  # see ``_after_fork_in_child``
        self._indexes: weakref.WeakSet[Any] = weakref.WeakSet()  # queue indexes, each with its LISTEN connection
        # every machine's default clock: the server's (``pg_clock``), sampled by ``_take``; its first read before
        # any call makes one (``_sampling_call``)
        self.shared_clock = ServerClock(_sampling_call(weakref.ref(self)))
        # a store dropped unclosed ends its sessions as its last reference goes, not with psycopg's warning of a
        # connection deleted open (``close`` runs it at once)
        self._close_pooled = weakref.finalize(self, _close_connections, self._idle)
        _STORES.add(self)

    def _after_fork_in_child(self) -> None:
        """A forked child must not use its parent's connections (the sockets are shared: two processes'
        statements would interleave, a ``LISTEN`` one's notifications go to whichever reads first) nor
        close them (that would end the parent's sessions). They are kept, unused, so that nothing
        finalizes them; the child opens its own, and watches its own calls."""
        self._lock = threading.Lock()  # another thread of the parent may have held it at the fork
        self.deadline.reset()
        listeners = [conn for index in list(self._indexes) for conn in index.forget_listeners()]
        self._inherited += self._idle + listeners
        self._idle.clear()  # in place: the finalizer closes this list's connections, now the child's own

    def register_index(self, index: Any) -> None:
        """A queue index on this store, whose ``LISTEN`` connections a forked child must not use
        (``_after_fork_in_child`` takes them with ``forget_listeners``)."""
        self._indexes.add(index)

    def _take(self) -> Any:
        self.deadline.check_time_left()
        with self._lock:
            if self._closed:
                raise StoreClosedError()
            conn = self._idle.pop() if self._idle else None
        if conn is not None and not conn.closed and _went_away(conn):
            conn.close()
        fresh = conn is None or conn.closed
        if fresh:
            conn = connect(self.url, autocommit=True, deadline=self.deadline)
        sample = fresh or self.shared_clock.due()  # a new connection may be to another server (a failover)
        if not self._checked or sample:
            psycopg = _driver()
            try:
                with self.deadline.bounded(conn):
                    if not self._checked:
                        self._check_schema(conn)
                    if sample:
                        self.shared_clock.take(conn)
            except psycopg.Error as exc:
                error = _storage_error(exc, conn)  # nothing of the caller's was sent yet
                conn.close()
                raise error from None
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
        """Before a store's first call, and after the schema changed under it (``_schema_changed``): a schema behind
        this release's, or ahead of it, is refused."""
        problem = version_problem(current_version(conn))
        if problem is not None:
            raise problem
        self._checked = True

    def _schema_changed(self, conn: Any, exc: Exception) -> OrchestratorError:
        """A statement named a table, column or function the database does not have: its schema changed since this
        store checked it. What that means is read now, on ``conn`` (``pg_schema.missing_problem``: run ``db
        migrate``, ``SCHEMA_TOO_NEW``, or changed by hand), and every call checks again (``_take``) until the schema
        passes: one that would find its tables must not read or write a schema this release no longer knows."""
        self._checked = False
        try:
            with self.deadline.bounded(conn):  # a cut closes it
                problem: OrchestratorError = missing_problem(conn, exc)
        except StorageError as error:  # the version could not be read (``current_version``): its own error
            conn.close()
            return error
        self._give(conn)
        return problem

    def _run(self, fn: Any, write: bool = False) -> Any:
        """Run ``fn(conn)`` on a pooled connection (autocommit: one statement is atomic on its own,
        ``fn`` opens a transaction when it needs more), within the store's deadline; driver errors
        become ``StorageError``. ``write``: ``fn`` writes, so a connection lost while it ran may have
        committed it (the error says so; a read's says it was cut off). A call whose transaction the server rolled back
        for a conflict (a deadlock, a serialization failure: ``TransactionConflictError``) left nothing, and is made
        again, on another connection, up to ``conflict_tries`` calls in all; an append decides again from the head it
        then finds, as after any race. (A call that commits twice, ``append_audited``, makes its second transaction
        again itself, never the first.)"""
        tries_left = self.conflict_tries
        while True:
            tries_left -= 1
            try:
                return self._call(fn, write)
            except _RolledBack as conflict:
                if tries_left <= 0:
                    raise conflict.error from None
                log.warning("%s; trying it again", conflict.error.message, extra={"code": conflict.error.code})

    def _call(self, fn: Any, write: bool) -> Any:
        """One try of ``_run``: a conflict the server rolled back is raised as ``_RolledBack``, its connection closed."""
        psycopg = _driver()
        conn = self._take()
        if write and replica_session(conn):
            self._refuse_if_triggers_off(conn)
        self.deadline.arm(conn)  # inline, not ``bounded``: this is every call's path
        try:
            result = fn(conn)
        except psycopg.Error as exc:
            if not self.deadline.disarm(conn):
                conn.close()
                raise self.deadline.error(write) from None
            if isinstance(exc, psycopg.errors.UniqueViolation):
                # Only reachable if the stream lock was bypassed: the primary key still refuses a fork.
                self._give(conn)
                raise ConcurrencyError("another writer appended to this stream first") from None
            if getattr(exc, "sqlstate", None) in MISSING_SQLSTATES:  # the statement failed whole: nothing of it stays
                raise self._schema_changed(conn, exc) from None
            if getattr(exc, "sqlstate", None) != FENCED_SQLSTATE:
                error = _storage_error(exc, conn, write)
                conn.close()
                if isinstance(error, TransactionConflictError):
                    raise _RolledBack(error) from None
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

    def _refuse_if_triggers_off(self, conn: Any) -> None:
        """Before a write on ``conn``, whose session runs as a replica (``replica_session``): ``ConfigError`` if the
        schema's triggers do not fire in it (``pg_schema.replica_problem``: the fence, a safety property), nothing
        written; else the write goes on (they are ``ENABLE ALWAYS``), and the connection's later writes too."""
        try:
            with self.deadline.bounded(conn):  # a cut closes it
                problem = replica_problem(conn)
        except _driver().Error as exc:
            error = _storage_error(exc, conn)
            conn.close()
            raise error from None
        if problem is not None:
            self._give(conn)
            raise ConfigError(f"{problem.message}; nothing was written")
        forget_replica_session(conn)  # asked once per connection, as its role is read once

    def close(self) -> None:
        """Close the pooled connections and stop the deadline's watchdog thread; a later call raises
        ``StoreClosedError``. Closing again does nothing."""
        with self._lock:
            self._closed = True  # from here on no connection is taken from the pool or given back to it
        self._close_pooled()
        self.deadline.close()

    def calls_end_by(self, at: float | None) -> Any:
        """``Deadline.until``: this thread's calls in the block end by ``at`` (``time.monotonic()``)."""
        return self.deadline.until(at)


def _sampling_call(store: weakref.ref[PgSessions]) -> Callable[[], None]:
    """The clock's first call: one with no statement of its own (``_take`` samples). Through a weak reference, as the
    clock is the store's: a strong one made a cycle, so a dropped store kept its sessions until the garbage collector's
    next pass (until 2026-12-07). A clock read after its store went raises ``StoreClosedError``."""
    def call() -> None:
        owner = store()
        if owner is None:
            raise StoreClosedError()
        owner._run(lambda conn: None)  # noqa: SLF001

    return call


def _close_connections(idle: list[Any]) -> None:
    """Close and forget the pooled connections ``idle``: ``PgSessions.close``, or the finalizer of a store dropped
    without it (psycopg would close them too when collected, with a ``ResourceWarning`` for each)."""
    while idle:
        idle.pop().close()


_STORES: weakref.WeakSet[PgSessions] = weakref.WeakSet()
os.register_at_fork(after_in_child=lambda: [store._after_fork_in_child() for store in list(_STORES)])  # noqa: SLF001
