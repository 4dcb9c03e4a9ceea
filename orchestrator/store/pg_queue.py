"""The ready/running index on PostgreSQL: claiming across machines, woken by LISTEN/NOTIFY.

The file index lives on one disk, so workers on other machines cannot see it; this one lives in
the database every worker shares (tables ``orch_ready`` and ``orch_running``, migration 0002).
Three things differ from the file index, each for a reason:

* **The index commits with the event.** ``before_append`` returns its statements, and
  ``Orchestrator.append`` passes them to the store's append (``in_transaction``), so the rows and the ``NOTIFY``
  that announces a runnable job are part of the event's own transaction: never behind the log,
  never announced before the event is visible, and dropped if the append is refused.
* **Candidates are reserved with ``FOR UPDATE SKIP LOCKED``.** ``candidates(now)`` reserves the
  first due row for a few seconds in one statement, so concurrent workers spread over different
  jobs instead of all racing for the first one. A reservation is only a hint: the claim is still
  an append with the expected sequence, so the index never decides who wins. The same statement
  reads the reserved job (``reserved_read``), so the claim needs no read of its own.
* **Idle workers ``LISTEN``.** ``wait`` blocks on a dedicated connection until a ``NOTIFY`` for
  the project arrives, or a bounded fallback timeout passes (a lost connection is re-opened and
  reported as a wake-up, so the caller rescans): no polling loop.

The workers of one ``Orchestrator`` (threads) share its index, so what a worker's wait and claim keep is per thread:
each thread listens on a connection of its own, as a worker process does (a job announced wakes every idle worker,
which ``SKIP LOCKED`` then spreads over the jobs; a worker that stops closes its own connection, never the one another
waits on), and keeps its own last reservation (``reserved_read``, ``release``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Collection, NamedTuple

from orchestrator import faults
from orchestrator.errors import StorageError
from orchestrator.limits import is_kind
from orchestrator.queue import IndexChange, QueueIndex, ReadyEntry
from orchestrator.state import QUEUED, RUNNING, JobState
from orchestrator.store.base import HEADS_AREA, InTransaction, StoredLine
from orchestrator.store.pg_connection import _driver, connect
from orchestrator.store.postgres import PostgresStore, _line_bounds

if TYPE_CHECKING:
    from orchestrator.views import JobView

log = logging.getLogger(__name__)

INDEX_AREA = "queue"
BUILT_KEY = "built"
RESERVATION_SECONDS = 2.0  # how long a reserved candidate is skipped by other workers
CANDIDATES = 8  # due rows returned besides the reserved one, tried if the reserved claim fails
BUILT_RECHECK_SECONDS = 1.0  # how stale a worker's "the index is built" may be (see is_built)
LISTEN_FALLBACK_SECONDS = 10.0  # an idle wait never lasts longer, even if a NOTIFY were lost


# One statement, one round trip: reserve the first due, unreserved row (SKIP LOCKED), read the reserved job (its
# head record and first chunk of lines, as ``PostgresStore.read_with_aux`` does), and list the other due rows, the
# next not-yet-due one and the next lapsing reservation. A row is due at once (``at_once``: a job submitted, resumed,
# revised, released), or when its time has come (a retry's backoff; every row written before migration 0007): its
# time orders it, so a server clock stepped back holds up only the retries (``ReadyEntry.due``). A reservation is
# a hint, never an acknowledged event, so its commit does not wait for the WAL flush
# (``synchronous_commit`` off for this transaction only): a crash can only forget a reservation,
# which at worst lets two workers try the same job, and the append still decides.
# Parts 2 and 3 have indexes of their own (migrations 0007 and 0005: the rows that wait for their time, and
# ``reserved_until_us > 0``, each index's condition, stated so that a prepared, generic plan can use it too). Parts 4
# and 5 read in the statement's snapshot,
# in which the reserved row's job holds at least the event that wrote the row (a row commits with its event); a
# scalar subquery names the job, so each is a primary-key look-up, and nothing when no row was reserved. Each row
# listed comes with its kind, the key that signed its job's first line and every key of its lines (migrations 0004,
# 0008 and 0009): a worker passes over, unread, a row of a kind it does not run or naming a key it found it does not
# trust (``UntrustedJobs``).
_CANDIDATES = """
WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true)),
pick AS (SELECT job_id, priority, runnable_at_us FROM orch_ready
         WHERE project = %(p)s AND (at_once OR runnable_at_us <= %(now)s) AND reserved_until_us <= %(now)s
         AND job_id <> ALL(%(skip)s::text[]) AND {no_left_key} AND {mine}{page}
         ORDER BY priority DESC, runnable_at_us, job_id LIMIT {reserve} FOR UPDATE SKIP LOCKED),
reserved AS (UPDATE orch_ready r SET reserved_by = %(by)s, reserved_until_us = %(until)s FROM pick, async_commit
             WHERE r.project = %(p)s AND r.job_id = pick.job_id AND r.priority = pick.priority
             AND r.runnable_at_us = pick.runnable_at_us
             RETURNING r.priority, r.runnable_at_us, r.job_id, r.kind, r.signer, r.signers, r.at_once)
SELECT 0 AS part, priority, runnable_at_us AS at, job_id, kind, signer, signers, at_once, NULL::bytea AS line,
       0 AS length
FROM reserved
UNION ALL (SELECT 1, priority, runnable_at_us, job_id, kind, signer, signers, at_once, NULL, 0 FROM orch_ready
           WHERE project = %(p)s AND (at_once OR runnable_at_us <= %(now)s) AND reserved_until_us <= %(now)s AND {mine}{page}
           ORDER BY priority DESC, runnable_at_us, job_id LIMIT %(n)s){hints}
UNION ALL (SELECT 4, 0, 0, key, NULL, NULL, NULL, false, data, 0 FROM orch_aux
           WHERE project = %(p)s AND area = %(area)s AND key = (SELECT job_id FROM reserved))
UNION ALL (SELECT 5, 0, seq, stream, NULL, NULL, NULL, false, CASE WHEN octet_length(line) <= %(cap)s THEN line END,
                  octet_length(line)
           FROM orch_events WHERE project = %(p)s AND stream = (SELECT job_id FROM reserved)
           ORDER BY seq LIMIT %(lines)s)
ORDER BY part, priority DESC, at, job_id
"""
_HINTS = """
UNION ALL (SELECT 2, priority, runnable_at_us, job_id, kind, signer, signers, false, NULL, 0 FROM orch_ready
           WHERE project = %(p)s AND NOT at_once AND runnable_at_us > %(now)s AND {mine}
           ORDER BY runnable_at_us LIMIT 1)
UNION ALL (SELECT 3, priority, reserved_until_us, job_id, kind, signer, signers, false, NULL, 0 FROM orch_ready
           WHERE project = %(p)s AND (at_once OR runnable_at_us <= %(now)s) AND reserved_until_us > %(now)s AND {mine}
           AND reserved_until_us > 0 AND job_id <> ALL(%(skip)s::text[])
           ORDER BY reserved_until_us LIMIT 1)"""
# The next page of a pass that left every candidate of the last one (``next_page``): the due rows after the last one
# listed, in claim order, in two steps that each bound the claim order's index scan (the key mixes directions, so no
# one row comparison can): the rest of that row's priority (``priority = $pr AND (time, id) > ($at, $id)``), then,
# once that page is not full, the lower priorities (``priority < $pr``). Rows of the kinds the pass found it has no
# handler for are left out (a row from before 0004 has no kind: kept), and those its worker left for want of a key:
# the rows naming a key it does not trust (``_NO_LEFT_KEY``), and the jobs it remembers leaving (``UntrustedJobs``); no
# hints (parts 2 and 3): the first page gave them. A row's keys: every key of its job's lines (``signers``, 0009), or
# for a row from before 0009 the first line's (``signer``, 0008); a row from before both names none: kept
_NO_LEFT_KEY = "NOT (coalesce(signers, ARRAY[signer]) && %(left_keys)s::text[])"
_NOT_LEFT = ("\n           AND (kind IS NULL OR kind <> ALL(%(left_kinds)s::text[])) "
             f"AND {_NO_LEFT_KEY} AND job_id <> ALL(%(left_jobs)s::text[])")
_SAME_PRIORITY = _NOT_LEFT + " AND priority = %(after_pr)s AND (runnable_at_us, job_id) > (%(after_at)s, %(after_job)s)"
_LOWER_PRIORITY = _NOT_LEFT + " AND priority < %(after_pr)s"
# a worker of some kinds only (``WorkerSettings.kinds``): rows of those kinds, and rows from before 0004 (no kind)
_MINE_ANY, _MINE_KINDS = "true", "(kind IS NULL OR kind = ANY(%(kinds)s::text[]))"


def _claim_statement(mine: str, page: str) -> str:
    return _CANDIDATES.format(mine=mine, page=page, hints="" if page else _HINTS.format(mine=mine),
                              no_left_key=_NO_LEFT_KEY,
                              reserve=0 if page else 1)  # a next page reserves none (``next_page``)


_CANDIDATES_ANY, _CANDIDATES_KINDS = _claim_statement(_MINE_ANY, ""), _claim_statement(_MINE_KINDS, "")
_NEXT_PAGES = {(step, bool(mine)): _claim_statement(m, page) for step, page in (("same", _SAME_PRIORITY),
                                                                                 ("lower", _LOWER_PRIORITY))
               for mine, m in ((False, _MINE_ANY), (True, _MINE_KINDS))}
# let a row this worker reserved go (``release``), and wake the workers that may be waiting out its reservation
_RELEASE = """
WITH freed AS (UPDATE orch_ready SET reserved_until_us = 0
               WHERE project = %(p)s AND job_id = %(job)s AND priority = %(pr)s AND runnable_at_us = %(at)s
               AND reserved_by = %(by)s AND reserved_until_us = %(until)s RETURNING job_id)
SELECT pg_notify(%(channel)s, job_id) FROM freed
"""
# the keys of a job's lines, written into its row that names none (``name_keys``): a hint, committed without the WAL wait
_NAME_KEYS = """
WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true))
UPDATE orch_ready SET signers = %(keys)s::text[] FROM async_commit
WHERE project = %(p)s AND job_id = %(job)s AND priority = %(pr)s AND runnable_at_us = %(at)s AND signers IS NULL
"""


# the jobs of a list whose ready row (priority and time), or running row (epoch, or 0), is there (``holding``)
_HOLDING = """
SELECT r.job_id FROM unnest(%(ready)s::text[], %(pr)s::integer[], %(at)s::bigint[]) AS w(job_id, priority, at)
JOIN orch_ready r ON r.project = %(p)s AND r.job_id = w.job_id AND r.priority = w.priority AND r.runnable_at_us = w.at
UNION
SELECT r.job_id FROM unnest(%(running)s::text[], %(epoch)s::integer[]) AS w(job_id, epoch)
JOIN orch_running r ON r.project = %(p)s AND r.job_id = w.job_id AND r.epoch IN (w.epoch, 0)
"""
_READY_COLUMNS = "project, job_id, priority, runnable_at_us, kind, at_once, signer, signers"
_PUT_RUNNING = "INSERT INTO orch_running (project, job_id, epoch) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"


class LeftOut(NamedTuple):
    """What a claim pass's next pages leave out (``next_page``): rows of these kinds, of these jobs, signed by these
    keys."""

    kinds: Collection[str] = ()
    jobs: Collection[str] = ()
    keys: Collection[str] = ()

    def row_kinds(self) -> list[str]:
        """The kinds of ``kinds`` a row can hold (``limits.is_kind``): a job whose kind is none today (stored before
        2026-12-07: a NUL in it, which no text parameter carries) has a row of no kind (``queue._entry_kind``)."""
        return [kind for kind in self.kinds if is_kind(kind)]


def channel(project: str) -> str:
    """The NOTIFY channel of a project (an identifier: hashed, since project ids may be 128 chars)."""
    return "orch_ready_" + hashlib.sha256(project.encode()).hexdigest()[:24]


class PgQueueIndex(QueueIndex):
    """The project's ready and running jobs in ``orch_ready`` / ``orch_running``."""

    lists_every_due_entry = False  # a page is the reserved row and ``CANDIDATES`` more (``next_page``)
    keeps_signers = True  # ``orch_ready.signer`` and ``signers`` (migrations 0008 and 0009)

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.project = store.project
        self.channel = channel(store.project)
        self._built_until = 0.0  # monotonic time until which "built" is trusted without asking
        # each thread's own (module docstring): its LISTEN connection, its last candidates' reservation
        # (row, by, until), and that job as the statement read it until ``reserved_read`` takes it
        # (row, record, chunk, full)
        self._threads = threading.local()
        # every thread's LISTEN connection, kept so that a forked child can hand them all to the store
        # unclosed (``forget_listeners``), the other threads' too: they are gone in the child
        self._listeners: set[Any] = set()
        self._listeners_lock = threading.Lock()
        store.register_index(self)

    def _mine(self, name: str) -> Any:
        return getattr(self._threads, name, None)

    @property
    def _listener(self) -> Any:
        return self._mine("listener")

    @property
    def _reserved(self) -> tuple[ReadyEntry, str, int] | None:
        return self._mine("reserved")

    @_reserved.setter
    def _reserved(self, value: tuple[ReadyEntry, str, int] | None) -> None:
        self._threads.reserved = value

    @property
    def _reserved_job(self) -> tuple[ReadyEntry, bytes | None, list[Any], bool] | None:
        return self._mine("reserved_job")

    @_reserved_job.setter
    def _reserved_job(self, value: tuple[ReadyEntry, bytes | None, list[Any], bool] | None) -> None:
        self._threads.reserved_job = value

    @property
    def reserver(self) -> str:
        """Who reserves a candidate, shown in ``reserved_by`` for diagnosis: this process, named when it reserves
        (a forked child's index is a copy of its parent's, and must not name the parent's pid)."""
        return f"{socket.gethostname()}-{os.getpid()}"

    # -- projection: written inside the event's transaction --------------------------------------
    def before_append(self, job_id: str, old: JobState | None, new: JobState,
                      signer: str | None = None, signers: tuple[str, ...] = ()) -> InTransaction:
        """The whole index change (``IndexChange``), as statements for the event's own statement: each joins
        ``up``, the head row the append moves (``InTransaction``), so a refused append writes none of them. A ready
        row names ``signer``, the key of the job's first line (migration 0008), and ``signers``, every key of its lines
        (0009)."""
        p, change = self.project, IndexChange.of(old, new)
        writes: list[tuple[str, tuple[Any, ...]]] = []
        selects: list[tuple[str, tuple[Any, ...]]] = []
        e = change.put_ready
        # every other row of the job goes, left-overs of a repair too: whenever its entry moves, goes,
        # or is written again (a submit has no rows to clear, so it skips this statement)
        if change.drop_ready is not None or (e is not None and old is not None):
            keep = (e.priority, e.runnable_at_us) if e is not None else (None, None)
            writes.append(("DELETE FROM orch_ready USING up WHERE project = %s AND job_id = %s "
                           "AND (priority, runnable_at_us) IS DISTINCT FROM (%s::integer, %s::bigint)", (p, job_id, *keep)))
        if e is not None:
            writes.append((f"INSERT INTO orch_ready ({_READY_COLUMNS}) SELECT %s, %s, %s, %s, %s, %s, %s, %s FROM up "
                           "ON CONFLICT DO NOTHING",
                           (p, job_id, e.priority, e.runnable_at_us, e.kind, e.at_once, signer, list(signers) or None)))
            # delivered at commit, only if it commits: a woken worker always finds the event
            selects.append(("pg_notify(%s, %s)", (self.channel, job_id)))
        if change.put_running:
            writes.append(("INSERT INTO orch_running (project, job_id, epoch) SELECT %s, %s, %s FROM up "
                           "ON CONFLICT DO NOTHING", (p, job_id, new.epoch)))
        if change.drop_running and old is not None:  # its own epoch's row, and one from before 0003
            writes.append(("DELETE FROM orch_running USING up WHERE project = %s AND job_id = %s AND epoch IN (%s, 0)",
                           (p, job_id, old.epoch)))
        return InTransaction(tuple(writes), tuple(selects))

    def after_append(self, job_id: str, old: JobState | None, new: JobState) -> None:
        faults.point("queue.after_append")  # nothing left to do: the rows committed with the event

    def drop_refused(self, job_id: str, old: JobState | None, new: JobState, orch: Any) -> None:
        """Nothing to drop: the rows were statements of the refused append's own transaction, rolled back with it."""

    # -- storage ----------------------------------------------------------------------------------
    def _sql(self, sql: str, params: Any, *, write: bool, fetch: bool = False) -> Any:
        """One autocommit statement through the store's connections (and its error mapping), its rows if
        ``fetch``. ``write`` is the caller's to say, whether or not rows come back (a reservation, a
        ``RETURNING``): a connection lost in a write may have committed it (``PgSessions._run``)."""
        def run(conn: Any) -> Any:
            cur = conn.execute(sql, params)
            return cur.fetchall() if fetch else None
        return self.store._run(run, write=write)

    def put_ready(self, entry: ReadyEntry) -> None:
        self._sql(f"INSERT INTO orch_ready ({_READY_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                  "ON CONFLICT DO NOTHING",
                  (self.project, entry.job_id, entry.priority, entry.runnable_at_us, entry.kind, entry.at_once,
                   entry.signer, list(entry.signers) or None), write=True)

    def drop_ready(self, entry: ReadyEntry) -> None:
        self._sql("DELETE FROM orch_ready WHERE project = %s AND job_id = %s AND priority = %s AND runnable_at_us = %s",
                  (self.project, entry.job_id, entry.priority, entry.runnable_at_us), write=True)

    def ready(self) -> list[ReadyEntry]:
        """One statement, one snapshot, not chunked like the store's long reads: no worker uses it (claims go
        through ``candidates``), its claim order mixes directions over three columns (the store's chunks page
        on one key), and a job's row moves when it is retried, so a listing in chunks could show it twice or
        miss it. About 1.7-2.0 s per million queued jobs here (docs/decisions.md, 2026-12-01)."""
        rows = self._sql("SELECT priority, runnable_at_us, job_id, kind, at_once, signer, signers FROM orch_ready "
                         "WHERE project = %s ORDER BY priority DESC, runnable_at_us, job_id", (self.project,),
                         write=False, fetch=True)
        return [ReadyEntry(-pr, at, job, kind, at_once, signer, tuple(signers or ()))
                for pr, at, job, kind, at_once, signer, signers in rows]

    def candidates(self, now: float, skip: Collection[str] = (), kinds: Collection[str] = (),
                   left_keys: Collection[str] = ()) -> list[ReadyEntry]:
        """Reserve the first due job (SKIP LOCKED) and read it, then list a few more due ones, then hints for later.

        The result, in claim order: the reserved entry; up to ``CANDIDATES`` other due,
        unreserved entries; the earliest not-yet-due entry (a retry's, or a row's from before migration 0007: a row
        due at once is due whatever its time, ``ReadyEntry.at_once``); and, for a job another worker
        reserved, an entry dated when its reservation lapses (so this worker looks again then,
        in case that worker could not claim it; a worker that leaves the job releases it sooner,
        ``release``). A job in ``skip`` (one this worker left for want of a key or of a handler) is
        never the reserved one: reserved at every pass, it would keep the workers that can run it
        waiting, and the rows after it from this one. Nor is its reservation listed to be looked at
        again: this worker left it (with more than ``SKIPPED_MAX`` left, a pass that reserved one of
        the others again woke it for the next such pass). With ``kinds``, only rows of those kinds
        (and rows written before migration 0004, which have none) are reserved or listed. Nor is a row naming a key
        of ``left_keys`` (keys the claimer found it does not trust) ever the reserved one: passed over unread, it is not
        released either, and until the twenty-ninth session of 2026-12-07 each pass reserved one, held 2 s from the
        workers that trust the key; the job behind such rows is the one reserved, and read, in this statement.

        The same statement reads the reserved job (``reserved_read``): the claim that follows needs no read
        of its own, one round trip instead of two. When it listed a full page of due rows, a claimer that leaves
        them all asks for the next (``next_page``).
        """
        return self._page(now, skip, kinds, left=LeftOut(keys=left_keys))

    def next_page(self, now: float, skip: Collection[str] = (), kinds: Collection[str] = (),
                  left_kinds: Collection[str] = (), left_jobs: Collection[str] = (),
                  left_keys: Collection[str] = ()) -> list[ReadyEntry]:
        """The due entries after the last page this thread's ``candidates`` or ``next_page`` listed, if that page was
        full (else none, and no round trip; empty only when there is no more), as ``candidates`` lists them, but for
        rows of ``left_kinds`` (the kinds the claimer's pass found it has no handler for: none of their rows is read
        again in this pass), rows naming a key of ``left_keys`` (``signers``; ``signer`` for a row from before 0009)
        and rows of ``left_jobs`` (the keys the claimer found it does not trust, and the other jobs it remembers
        leaving for want of a key: ``UntrustedJobs``; until 2026-12-07, twenty-eighth session, each job of such a key
        was read once by every ``worker --once``, and more than ``LEFT_KEPT`` of them at each pass), without the hints
        of the first page, and reserving none: a pass that left a page whole goes on to the next,
        so it reaches every due job this worker can run, as on files (until 2026-12-07 a job behind more than 9 it
        could not run was left to later passes, which reserve past at most ``SKIPPED_MAX`` left). Reserving a row
        of each page (as until the review of 2026-12-07) and listing the jobs left for a key made an idle worker
        facing 4,000 such jobs busy: every pass read them all again, and the reservations it passed over lapsing,
        or released, woke it into the next pass (docs/decisions.md). A job of a next page is read by its claim."""
        while (after := self._mine("page_end")) is not None:  # a priority's rest found empty: the lower ones
            listed = self._page(now, skip, kinds, after, LeftOut(left_kinds, left_jobs, left_keys))
            if listed:
                return listed
        return []

    def _page(self, now: float, skip: Collection[str], kinds: Collection[str],
              after: tuple[str, int, int, str] | None = None, left: LeftOut = LeftOut()) -> list[ReadyEntry]:
        """One claim statement: the first page (``_CANDIDATES``), or the next ``after`` (step, priority, time, id)
        of the last (``_NEXT_PAGES``); its entries in claim order, and where the next page starts kept for
        ``next_page`` (None: there is none)."""
        now_us = int(round(now * 1e6))
        until = now_us + int(RESERVATION_SECONDS * 1e6)
        size, cap = _line_bounds(None)  # the first chunk of a job's read (``PostgresStore.read_with_aux``)
        params = {"p": self.project, "now": now_us, "by": self.reserver, "until": until,  # the reservation
                  "n": CANDIDATES + 1, "skip": list(skip), "kinds": list(kinds), "left_keys": list(left.keys),
                  "area": HEADS_AREA, "cap": cap, "lines": size}
        if after is None:
            sql = _CANDIDATES_KINDS if kinds else _CANDIDATES_ANY
        else:
            sql = _NEXT_PAGES[after[0], bool(kinds)]
            params.update(left_kinds=left.row_kinds(), left_jobs=list(left.jobs),
                          after_pr=after[1], after_at=after[2], after_job=after[3])
        self._reserved_job = None
        self._threads.page_end = None
        rows = self._sql(sql, params, write=True, fetch=True)
        out, seen = [], set()
        self._reserved = None
        record, chunk = None, []
        last = None  # the last row of part 1, the page of due rows, and how many it held
        listed = 0
        for part, pr, at, job, kind, signer, signers, at_once, line, length in rows:
            if part == 4:
                record = bytes(line)
            elif part == 5:
                chunk.append((at, line, length))
            else:
                if part == 1:
                    last, listed = (pr, at, job), listed + 1
                if job not in seen:  # the reserved row first; it is in the statement's snapshot twice
                    seen.add(job)
                    # (a lapsing reservation's entry, part 3, has its time)
                    out.append(ReadyEntry(-pr, at, job, kind, at_once, signer, tuple(signers or ())))
                    if part == 0:
                        self._reserved = (out[-1], params["by"], until)
        if self._reserved is not None:
            self._reserved_job = (self._reserved[0], record, chunk, len(chunk) == size)
        if last is not None and listed == params["n"]:  # a full page: the rest of its last row's priority next
            self._threads.page_end = ("same", *last)
        elif after is not None and after[0] == "same":  # that priority's rows all listed: the lower ones next
            self._threads.page_end = ("lower", after[1], 0, "")
        return out

    def reserved_read(self, entry: ReadyEntry) -> tuple[bytes | None, list[StoredLine]] | None:
        """The job of ``entry`` as ``store.read_with_aux(job, HEADS_AREA, job)`` returns it, if it is the row the last
        ``candidates`` reserved: its head record and first lines read in the reserving statement (one snapshot, taken
        as the row was reserved), the rest of a longer job read now, as ``read_with_aux`` reads it. Given once: a
        second call returns None (read the job), and so does one for another entry (this thread's last statement's
        job only)."""
        kept = self._reserved_job
        if kept is None or kept[0] != entry:
            return None
        self._reserved_job = None
        _, record, chunk, full = kept
        return record, self.store.lines_after_first_chunk(entry.job_id, chunk, full)

    def release(self, entry: ReadyEntry) -> None:
        """Let the row this worker's last ``candidates`` reserved go, if ``entry`` is that row (no round trip
        otherwise), and notify: a worker that listed it as reserved by another wakes and reserves it now."""
        if self._reserved is None or self._reserved[0] != entry:
            return
        _, by, until = self._reserved
        self._reserved = None
        self._sql(_RELEASE, {"p": self.project, "job": entry.job_id, "pr": entry.priority, "at": entry.runnable_at_us,
                             "by": by, "until": until, "channel": self.channel}, write=True, fetch=True)

    def name_keys(self, entry: ReadyEntry, view: JobView) -> None:
        """Write the keys of the lines of ``view`` into the row of ``entry`` if it names none (``signers`` NULL: a row from before 0009, or
        written by a release that does not name the column): from then on the row is left out by those keys, as one
        written since (``_NO_LEFT_KEY``, ``UntrustedJobs``); until 2026-12-07 (the review of the 0009 work) it was
        left out by its own entry alone, read again by every new worker and past ``LEFT_KEPT``, until its job ran. A
        hint, as the writer's (its commit does not wait for the WAL flush): a crash forgets it, and the job is read
        again; the row of another time, or named since, is left as it is. A row that names its keys (every row
        written since 0009) costs no read of them."""
        if entry.signers:
            return
        keys = view.line_keys()
        if not keys:
            return
        self._sql(_NAME_KEYS, {"p": self.project, "job": entry.job_id, "pr": entry.priority,
                               "at": entry.runnable_at_us, "keys": list(keys)}, write=True)

    # Rows are per (job, epoch) (migration 0003): stale recovery, which drops outside the event's
    # transaction, removes only the epoch it listed, never the row of a claim committed since.
    # Epoch 0 is a row from before 0003 (or written without an epoch): it stands for any epoch.
    def put_running(self, job_id: str, epoch: int | None = None) -> None:
        self._sql(_PUT_RUNNING, (self.project, job_id, epoch or 0), write=True)

    def drop_running(self, job_id: str, epoch: int | None = None) -> None:
        self._sql("DELETE FROM orch_running WHERE project = %s AND job_id = %s AND epoch = %s",
                  (self.project, job_id, epoch or 0), write=True)

    def running_entries(self) -> list[tuple[str, int | None]]:
        rows = self._sql("SELECT job_id, epoch FROM orch_running WHERE project = %s ORDER BY job_id, epoch",
                         (self.project,), write=False, fetch=True)
        return [(job_id, epoch or None) for job_id, epoch in rows]

    def holds_entry(self, s: JobState) -> bool:
        return s.job_id in self.holding([s])

    def holding(self, states: list[JobState]) -> set[str]:
        """One statement for all: the queued jobs whose row (of the priority and time their state gives) is there, and
        the running ones whose epoch's row (or one from before 0003, epoch 0) is; a job in another state is held.
        ``verify`` asks it of a chunk of jobs read before: the rows are written in the event's transaction, so one
        is missing only when deleted by hand (or, for a moment, by a claimer that dropped an imported job's row
        before its lines: ``drop_orphan_ready``). Until 2026-12-07 this index was not looked at, and such a job
        went unreported."""
        ready = [(s.job_id, ReadyEntry.for_state(s)) for s in states if s.state == QUEUED]
        running = [s for s in states if s.state == RUNNING]
        held = {s.job_id for s in states if s.state not in (QUEUED, RUNNING)}
        if ready or running:
            rows = self._sql(_HOLDING, {"p": self.project, "ready": [j for j, _ in ready],
                                        "pr": [e.priority for _, e in ready], "at": [e.runnable_at_us for _, e in ready],
                                        "running": [s.job_id for s in running], "epoch": [s.epoch for s in running]},
                             write=False, fetch=True)
            held.update(job for job, in rows)
        return held

    def missing_entry_terms(self, s: JobState) -> tuple[str, str, str]:
        table = "orch_ready" if s.state == QUEUED else "orch_running"
        return (f"no row in {table}", "the row was deleted by hand",
                f"delete the index's built record (`DELETE FROM orch_aux WHERE project = '{self.project}' AND area = "
                f"'{INDEX_AREA}' AND key = '{BUILT_KEY}'`)")

    def is_built(self) -> bool:
        """Asked before every claim: a "built" seen in the last ``BUILT_RECHECK_SECONDS`` is trusted
        without a round trip, so an operator's deletion of the record reaches a busy worker that late
        at most."""
        if time.monotonic() < self._built_until:
            return True
        built = bool(self.store.get_aux(INDEX_AREA, BUILT_KEY))
        self._built_until = time.monotonic() + BUILT_RECHECK_SECONDS if built else 0.0
        return built

    def mark_built(self) -> None:
        self.store.put_aux(INDEX_AREA, BUILT_KEY, b"1")

    # -- waking idle workers ----------------------------------------------------------------------
    def wait(self, timeout: float, take_turns: bool = True) -> bool:
        """Block until a job of this project is announced (``NOTIFY``), or the timeout passes (every idle worker
        listens: ``take_turns`` changes nothing here).

        Announcements made while the caller was scanning are queued on the listening
        connection, so the next ``wait`` returns at once: none is missed. A wait that listens again after a
        connection it could not re-open returns at once as a wake-up: what was announced meanwhile went to nobody.
        """
        psycopg = _driver()
        timeout = max(0.0, min(timeout, LISTEN_FALLBACK_SECONDS))
        try:
            if self._listener is None or self._listener.closed:
                self.close()  # one the server closed: out of the kept ones
                self._listen()
                deaf, self._threads.deaf = self._mine("deaf"), False
                if timeout == 0 or deaf:
                    return bool(deaf)
            woke = False
            for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                woke = True
            if woke:  # drain the burst: one scan serves every job announced so far
                for _ in self._listener.notifies(timeout=0):
                    pass
            return woke
        except (psycopg.Error, StorageError) as exc:  # ``connect`` reports its failures as StorageError
            log.warning("LISTEN connection lost (%s); reconnecting", exc)
            self.close()
            try:  # listen again before the caller rescans, so nothing announced after the scan is missed
                self._listen()
                self._threads.deaf = False
            except (psycopg.Error, StorageError):
                self.close()  # the next wait tries again, after a pause: no busy loop while the server is away
                self._threads.deaf = True
                time.sleep(min(timeout, 1.0))
            return True  # the caller rescans: a job may have been announced while we were deaf

    def _listen(self) -> None:
        """This thread's own ``LISTEN`` connection."""
        listener = connect(self.store.url, autocommit=True, deadline=self.store.deadline)
        self._threads.listener = listener
        with self._listeners_lock:
            self._listeners.add(listener)
        with self.store.deadline.bounded(listener):
            listener.execute(f"LISTEN {self.channel}")

    def forget_listeners(self) -> list[Any]:
        """Every thread's ``LISTEN`` connection, no longer used nor closed by this index: the store's fork hook hands
        a forked child's copies to the store, which keeps them unused (``PgSessions._after_fork_in_child``). The
        per-thread state and its lock start anew (another thread may have held the lock at the fork)."""
        listeners, self._listeners = list(self._listeners), set()
        self._threads, self._listeners_lock = threading.local(), threading.Lock()
        return listeners

    def close(self) -> None:
        """Close this thread's ``LISTEN`` connection (a worker that stops); the other threads' go on listening."""
        listener = self._listener
        if listener is not None:
            self._threads.listener = None
            with self._listeners_lock:
                self._listeners.discard(listener)
            listener.close()
