"""The Python API: ``Orchestrator`` over one project's store and keyring.

The CLI is a thin layer over this class. Reads replay and verify the job's own events (never
the whole project); writes check the transition with the reducer, seal the new events onto
the head they were decided from, and append with that expected sequence, so a concurrent
writer makes the append fail instead of forking the history (``appending``). The reads are here; every other
method is a few lines over the module that does its work, each imported when first called: ``appending``,
``submitting``, ``listing``, ``control``, ``timeline``, ``integrity``, ``metrics``.
"""
from __future__ import annotations

import functools
import importlib
import os
import threading
import weakref
from collections import Counter
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from orchestrator import clock
from orchestrator.clock import now as local_now
from orchestrator.config import DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY, Settings, default_actor
from orchestrator.errors import (ConfigError, JobNotFoundError, OrchestratorError, PathEscapeError, StoreClosedError,
                                 UnusableFileError)
from orchestrator.history import (CONTEXT_MISMATCH, INVALID_HISTORY, Problem, VerifiedStream,
                                  check_head_record, check_head, verify_stream)
from orchestrator.held_records import WITHOUT_HEAD_RECORD, WITHOUT_LEASE_RECORD, read_around_a_held_record
from orchestrator.key_files import load_keyring
from orchestrator.limits import a_process_count, a_time, an_actor, callable_or_none, instance_or_none, true_or_false
from orchestrator.security import validate_id
from orchestrator.signing import Keyring
from orchestrator.state import RUNNING, Event, JobState, apply
from orchestrator.store.base import HEADS_AREA, EventStore, StoredLine
from orchestrator.submitted import context_matches
from orchestrator.views import JobStatus, JobView, Submission

if TYPE_CHECKING:
    from orchestrator.control import ControlResult
    from orchestrator.integrity import VerifyReport
    from orchestrator.metrics import Metrics, Thresholds
    from orchestrator.queue import QueueIndex
    from orchestrator.worker import Worker

# How long ``close()`` waits for the passes of workers on other threads to end: their running jobs handed back
CLOSE_WAIT_SECONDS = 10.0
_OPEN: "weakref.WeakSet[Orchestrator]" = weakref.WeakSet()  # this process's, for ``_after_fork_in_child``


def _after_fork_in_child() -> None:
    for orch in list(_OPEN):
        orch._fresh_pass_count()  # noqa: SLF001


os.register_at_fork(after_in_child=_after_fork_in_child)


@functools.cache
def _on_first_use(module: str) -> ModuleType:
    """``module``, imported when first asked for (the module docstring), then looked up here: for the methods run
    several times per job (``append``, ``submit_job``), where an ``import`` statement run at each call cost ~8,000
    instructions (~460 this way; 2026-12-07, callgrind), a worker's run holding two appends."""
    return importlib.import_module(module)


class Orchestrator:
    """One project: submit jobs, read their state, act on them, verify their history.

    ``store`` and ``keyring`` default to the file backend under
    ``BASE_PATH/<PROJECT_ID>/.orchestrator`` and the keyring of ``key_files.load_keyring``. Settings not given come
    from the environment; a ``.env`` file is read by the commands only (``config.load_dotenv_file()`` from Python).
    ``clock`` is injectable so that tests decide what "now" is; by default it is the store's
    ``shared_clock`` (PostgreSQL: the server's, so machines whose clocks differ agree on leases and
    due times), else this machine's (``clock.now``). ``actor`` names who acts in events and audit
    entries (default ``user@host``). One instance may be shared by the threads of a process, its
    workers' loops included; every expected error is an ``OrchestratorError`` with a ``code``.
    ``close()``, or a ``with`` block, ends the store's connections (PostgreSQL) at a known point.
    """

    def __init__(self, base_path: str | os.PathLike[str] | None = None, project_id: str | None = None, *,
                 store: EventStore | None = None, keyring: Keyring | None = None,
                 clock: Callable[[], float] | None = None, actor: str | None = None,
                 store_url: str | None = None) -> None:
        instance_or_none(store, EventStore, "store", "an EventStore")
        instance_or_none(keyring, Keyring, "keyring", "a Keyring")
        callable_or_none(clock, "clock")
        self.settings = Settings.load(base_path, project_id, store_url=store_url)
        self.keyring = keyring or load_keyring()
        self._check_keyring_outside_store()
        if store is None and self.settings.store_url:  # PostgreSQL backend (docs/postgres.md)
            from orchestrator.store.postgres import open_store

            store = open_store(self.settings.store_url, self.settings.project_id, self.settings.pg_deadline_seconds)
        if store is None:
            from orchestrator.store.jsonl import JsonlStore

            store = JsonlStore(self.settings.state_dir)
        self._store = store
        self._closing = False  # ``close`` was called: no new worker pass, a running one hands its job back
        self._closed = False  # the store is closed: every call is refused
        self._fresh_pass_count()
        _OPEN.add(self)
        self.clock: Callable[[], float] = clock if clock is not None else store.shared_clock or local_now
        self.actor = an_actor(actor) if actor is not None else default_actor()
        self._queue: QueueIndex | None = None

    def __repr__(self) -> str:
        return f"Orchestrator(project_id={self.project_id!r}, store={self._store!r}, actor={self.actor!r})"

    @property
    def store(self) -> EventStore:
        """The project's store; every call reaches it through here, so once ``close`` ran each one is refused
        (``StoreClosedError``), on files as on PostgreSQL, before it reads or writes anything."""
        if self._closed:
            raise StoreClosedError()
        return self._store

    def close(self) -> None:
        """End the store's connections now (PostgreSQL: its pool, this thread's ``LISTEN`` connection, the deadline's
        thread), rather than when it is dropped (its last reference gone; in a reference cycle, the garbage
        collector's next pass): a program making one per request would otherwise hold sessions it no longer uses.
        Closing again does nothing. Close it once its workers' loops have returned.

        A worker on another thread that is running a job meanwhile hands it back at once (its handler killed,
        ``job_released`` with ``WORKER_STOPPED``, as a stop past its grace period does, ``docs/worker.md``): ``close``
        waits for that, ``CLOSE_WAIT_SECONDS`` at most, then closes the store. Until 2026-12-07 the job stayed
        ``running`` until its lease expired. A worker pass that begins once ``close`` was called raises
        ``StoreClosedError``."""
        with self._close_lock:  # reentrant: a signal handler's ``close()`` may interrupt this thread's wait below
            if self._closed:
                return
            me = threading.get_ident()
            with self._passes_changed:
                self._closing = True
                self._passes_changed.wait_for(lambda: not set(self._passes) - {me}, CLOSE_WAIT_SECONDS)
            if self._closed:  # by such a handler's ``close()``, meanwhile: nothing is closed twice
                return
            self._closed = True
            if self._queue is not None:
                self._queue.close()
            self._store.close()

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called (it may still wait for a worker's running job to be handed back): a worker loop
        idle on another thread ends its wait when it sees this (``Worker._idle``) rather than at its next look, up to
        ``IDLE_MAX_WAIT`` later, and lets its ``LISTEN`` session go with it; a running one hands its job back."""
        return self._closing

    def _fresh_pass_count(self) -> None:
        """No worker pass in progress, and locks no thread holds: at the start, and in a forked child (its parent's
        threads, and their passes, are not there; a lock one of them held would stay held, ``_after_fork_in_child``)."""
        # Reentrant: a signal handler calling ``close()`` (a program's SIGTERM handler) while ``close`` waits in this
        # thread waited for good on a plain lock, held by the ``close`` it interrupted (until fix-reva)
        self._close_lock = threading.RLock()
        self._passes: Counter[int] = Counter()  # thread id -> the worker passes it is in (``worker_pass``)
        self._passes_changed = threading.Condition()

    @contextmanager
    def worker_pass(self) -> Iterator[None]:
        """Around a worker's pass (its stale recovery, claim and run, to the outcome recorded; ``Worker.run_once``,
        ``run``, ``execute``): ``close`` called from another thread meanwhile waits for it to end. Refused
        (``StoreClosedError``) once ``close`` was called."""
        me = threading.get_ident()
        with self._passes_changed:
            if self._closing:
                raise StoreClosedError()
            self._passes[me] += 1
        try:
            yield
        finally:
            with self._passes_changed:
                self._passes[me] -= 1
                if not self._passes[me]:
                    del self._passes[me]
                self._passes_changed.notify_all()

    def __enter__(self) -> "Orchestrator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def project_id(self) -> str:
        return self.settings.project_id

    def _check_keyring_outside_store(self) -> None:
        """Refuse a keyring that reads keys from inside the store: the keyring folder, a trusted-keys folder
        or the signing key file (``Keyring.paths``; ``source`` for a keyring built without them)."""
        paths = list(self.keyring.paths)
        if not paths and (Path(self.keyring.source).is_absolute() or os.sep in self.keyring.source):
            paths.append(self.keyring.source)
        state = self.settings.state_dir.resolve()
        for path in paths:
            where = Path(path).resolve()
            if where == state or state in where.parents:
                raise ConfigError(f"the keyring {path} lies inside the store {state}; a key kept in the store "
                                  "could be replaced along with the events, so it is never trusted")

    # -- reading ----------------------------------------------------------------------------
    def load(self, job_id: str, *, every_signature: bool = False,
             read: tuple[bytes | None, list[StoredLine]] | None = None, around_a_held_record: bool = False) -> JobView:
        """Read, verify and replay one job. Raises ``JobNotFoundError`` for an unknown id.

        The lines its head record vouches for (``history.check_head``) have their own
        signatures checked only where they name another key; ``every_signature=True`` checks each
        one (``verify``), and so does every read with ``ORCH_STRICT_READS=1``. Either way any edit, cut
        or splice of the history is a problem. ``read``: the job's head record and lines as
        ``read_job`` returns them, read already (by the claim statement of a queue index,
        ``QueueIndex.reserved_read``, or by a worker's look ahead): verified and replayed as this read's.
        ``around_a_held_record``: as for ``read_job``."""
        validate_id(job_id, "job id")
        try:
            head_raw, lines = (read if read is not None
                               else self.read_job(job_id, around_a_held_record=around_a_held_record))
        except (PathEscapeError, UnusableFileError) as exc:
            return self._unreadable_view(job_id, exc)
        return self._verified_view(job_id, lines, head_raw, every_signature=every_signature)

    def read_job(self, job_id: str, *, around_a_held_record: bool = False) -> tuple[bytes | None, list[StoredLine]]:
        """A job's head record and lines, not verified (``load`` verifies them). The head record is read BEFORE the
        events: it is written after its events are durable (or with them, on PostgreSQL), so a writer racing this
        read can only make the events longer than the record, never shorter (which would look like a cut history:
        TRUNCATED). A link or an unusable file in the job's place raises (``PathEscapeError``,
        ``UnusableFileError``). ``around_a_held_record`` (``status``): a record whose lock a paused writer holds on is
        read as none, with a warning (``held_records``)."""
        if not around_a_held_record:
            return self.store.read_with_aux(job_id, HEADS_AREA, job_id)
        return read_around_a_held_record(job_id, lambda: self.store.read_with_aux(job_id, HEADS_AREA, job_id),
                                         lambda: (None, self.store.read(job_id)), WITHOUT_HEAD_RECORD)

    def _unreadable_view(self, job_id: str, exc: PathEscapeError | UnusableFileError) -> JobView:
        """The job whose events file or head record is a symbolic link, which the store never follows, or whose
        events file is a FIFO, socket, device or folder holding files, which it never reads (``NOT_A_FILE``): no
        event can be trusted, so it is reported as the job's problem, like a damaged file (``status`` exits 7, a
        worker refuses it, ``verify`` lists it), not raised at every command that lists jobs."""
        return self._view(job_id, VerifiedStream(job_id, []), Problem.unusable(job_id, exc))

    def _verified_view(self, job_id: str, lines: list[StoredLine], head_raw: bytes | None, *,
                       every_signature: bool = False) -> JobView:
        """The lines verified, then replayed (``load``'s part after the read). From the head record
        when it verifies; when that finds any problem, every line is checked again on its own, so a
        problem is named at the line it is on, exactly as ``verify`` names it."""
        every_signature = every_signature or self.settings.strict_reads
        head_problem, anchor = check_head(job_id, lines, head_raw or None, self.keyring, anchored=not every_signature)
        if not lines:
            try:  # one lstat, for a file with no line only: a FIFO or a folder holding files reads as none
                self.store.refuse_unusable(job_id)
            except (PathEscapeError, UnusableFileError) as exc:
                return self._unreadable_view(job_id, exc)
            if head_problem is None:  # no event and no record of one: a job that never was
                raise JobNotFoundError(f"no job {job_id!r} in project {self.project_id!r}", job_id=job_id)
            # a head record says events were written: the whole history was removed (the file deleted
            # or emptied), which a read must report as it reports a cut, not as a job never submitted
            return self._view(job_id, VerifiedStream(job_id, []), head_problem)
        if anchor is not None:
            stream = verify_stream(job_id, lines, self.keyring, anchor=anchor)
            if stream.ok:
                return self._view(job_id, stream, head_problem)
        return self._view(job_id, verify_stream(job_id, lines, self.keyring), head_problem)

    def load_more(self, view: JobView, *, every_signature: bool = False,
                  read: tuple[bytes | None, list[StoredLine]] | None = None) -> JobView:
        """``view``'s job read again, checking only the lines written since: those ``view`` verified
        must still be there byte for byte (else the whole job is verified again, as ``load`` does).
        What a claimer that waited for an event uses, so its wait does not cost a second full check.
        ``view`` must come from ``load``, ``load_more`` or ``append`` of this orchestrator, under the
        keys it trusts now: it is taken as verified (as it was verified: a worker keeps only views it
        read with ``every_signature``). ``every_signature`` and ``read`` as for ``load``."""
        if not view.ok or not view.stream.lines:
            return self.load(view.job_id, every_signature=every_signature, read=read)
        try:
            head_raw, lines = read if read is not None else self.read_job(view.job_id)
        except (PathEscapeError, UnusableFileError) as exc:
            return self._unreadable_view(view.job_id, exc)
        known = view.stream.lines
        if lines[:len(known)] != known:  # shorter, or a line changed: verify it all
            return self._verified_view(view.job_id, lines, head_raw, every_signature=every_signature)
        added = verify_stream(view.job_id, lines[len(known):], self.keyring, prev_line=known[-1].raw)
        stream = VerifiedStream(view.job_id, lines, view.stream.records + added.records, added.problems)
        return self._view(view.job_id, stream, check_head_record(view.job_id, lines, head_raw, self.keyring),
                          resume_from=(view.state, len(view.stream.records)))

    def _view(self, job_id: str, stream: VerifiedStream, head_problem: Problem | None,
              resume_from: tuple[JobState | None, int] = (None, 0)) -> JobView:
        """Replay the verified records (from ``resume_from``: a state and how many records it has seen);
        ``head_problem`` is what ``history.check_head`` found wrong with the head record, if anything."""
        problems = list(stream.problems)
        state, seen = resume_from
        for rec in stream.records[seen:]:
            try:
                state = apply(state, Event.from_record(rec))
            except (OrchestratorError, KeyError, TypeError, ValueError) as exc:
                problems.append(Problem(job_id, rec["seq"], INVALID_HISTORY, f"{rec.get('type')}: {exc}"))
                break
            if rec["seq"] == 1 and not context_matches(stream.lines[0].raw, rec, state):
                problems.append(Problem(job_id, 1, CONTEXT_MISMATCH, "the submitted context does not match its digest"))
        if head_problem:
            problems.append(head_problem)
        return JobView(job_id, stream, state, tuple(problems))

    def status(self, job_id: str) -> JobStatus:
        """The job's status. A head or lease record whose lock a process paused in the middle of writing it holds on
        is waited for at most ``LOCK_WAIT_SECONDS``, then read around, with a ``RECORD_LOCK_HELD`` warning
        (``held_records``)."""
        view = self.load(job_id, around_a_held_record=True)
        st = JobStatus.from_view(view)
        if view.state is not None and view.state.state == RUNNING:  # show the lease as renewed by heartbeats
            expiry, held = self._renewed_lease(view.state, self.clock())
            st = replace(st, lease_record_held=held)
            try:
                st = replace(st, lease_expires_at=clock.to_iso(expiry) if expiry else None)
            except (ValueError, OverflowError, OSError):  # beyond what a date can show: keep the claim's
                pass
        return st

    def lease_expiry(self, job_id: str, now: float | None = None) -> float | None:
        """When the running job's current lease ends, heartbeats included; ``None`` if it is not running. Records a
        paused writer holds are read around, as by ``status``."""
        a_time(now)
        try:
            view = self.load(job_id, around_a_held_record=True)
        except JobNotFoundError:  # removed since it was listed: not running
            return None
        s = view.state
        if s is None or s.state != RUNNING:
            return None
        return self._renewed_lease(s, self.clock() if now is None else now)[0]

    def _renewed_lease(self, s: JobState, now: float) -> tuple[float | None, bool]:
        """``leases.lease_expiry`` for a reader (``status``, ``metrics``), and whether its record was held: a lease
        record whose lock a paused writer holds on is read around, the claim's lease shown (``held_records``)."""
        from orchestrator.leases import lease_expiry  # here: only a running job's has a lease (``status``' cold start)

        return read_around_a_held_record(s.job_id, lambda: (lease_expiry(self.store, s, now), False),
                                         lambda: (s.lease_expires_at, True), WITHOUT_LEASE_RECORD)

    def job_ids(self) -> Iterator[str]:
        return self.store.job_ids()

    def removed_jobs(self, listed: Iterable[str], *, unindexed: bool = False) -> list[JobView]:
        """The jobs with a head record and no event left (the file deleted or emptied), read: ``job_ids`` lists only
        jobs holding an event, and ``listed`` is what it gave; ``unindexed``: also the jobs ``listed`` left out that
        hold events (``listing.removed_jobs``)."""
        from orchestrator import listing

        return listing.removed_jobs(self, listed, unindexed=unindexed)

    def jobs(self, states: Iterable[str] | None = None, kinds: Iterable[str] | None = None) -> list[JobStatus]:
        """Every job's status, oldest first, optionally only those in ``states`` and of ``kinds``; a job whose
        events were all removed is listed too when nothing is filtered (no state, no kind, its integrity error).
        A filter reads only the jobs the jobs cache puts in it, each checked again (``listing.jobs``)."""
        from orchestrator import listing

        return listing.jobs(self, states, kinds)

    # -- writing ----------------------------------------------------------------------------
    def append(self, view: JobView | None, job_id: str, new: Sequence[tuple[str, dict[str, Any]]], *,
               run_id: str | None = None, actor: str | None = None, now: float | None = None,
               audit: tuple[str, str] | None = None, fence: int | None = None,
               aux: Mapping[tuple[str, str], bytes | None] | None = None) -> JobView:
        """Append events ``(type, data)`` decided from ``view``; refuse a history that did not verify. Returns the
        job's view with them.

        Each event is validated against its model and against the state machine, and the other arguments by
        ``append_checks``, before anything is written. Raises ``ConcurrencyError`` if the job changed since ``view``
        was read.
        ``audit=(action, note)`` also records an audit entry naming the last new event.
        ``fence`` is a worker's fencing epoch, checked by stores that can (``EventStore.append``).

        The job's head record is written with the events, and so are the optional ``aux``
        records (``(area, key) -> bytes``, None deletes; e.g. a lease): on a store with
        ``atomic_aux`` (PostgreSQL) in the events' own transaction, so they are durable with the
        events or absent with them; elsewhere (files) right after the events, head record first. Events durable
        whose records after them failed (``AuxNotWrittenError``) are acknowledged, their entry written all the same:
        the view returned holds the warning (``HEAD_RECORD_NOT_WRITTEN``), which is also logged. So is an event
        after which the queue index could not be brought up to date (``INDEX_NOT_UPDATED``: the index is a cache).
        """
        lines, state, warnings = _on_first_use("orchestrator.appending").append_lines(
            self, view, job_id, new, run_id=run_id, actor=actor, now=now, audit=audit, fence=fence, aux=aux)
        stream = (view.stream if view else VerifiedStream(job_id, [])).followed_by(lines)  # parsed when asked for
        return JobView(job_id, stream, state, (), warnings)

    def submit_job(self, kind: str, input: Any = None, *, audit: bool = False, key: str | None = None,
                   max_attempts: int = DEFAULT_MAX_ATTEMPTS, timeout: float | None = None, priority: int = DEFAULT_PRIORITY,
                   actor: str | None = None) -> Submission:
        """Submit a job; with an idempotency ``key``, the same key returns the same job (``submitting``)."""
        return _on_first_use("orchestrator.submitting").submit_job(
            self, kind, input, audit=audit, key=key, max_attempts=max_attempts, timeout=timeout, priority=priority,
            actor=actor)

    def submit(self, kind: str, input: Any = None, **options: Any) -> str:
        """Submit a job and return its id (see ``submit_job`` for the options)."""
        return self.submit_job(kind, input, **options).job_id

    # -- worker -----------------------------------------------------------------------------
    @property
    def queue(self) -> "QueueIndex":
        """The ready/running index (a derived cache fed by ``append``; see ``orchestrator/queue.py``); refused once
        ``close`` ran, as ``store`` is."""
        if self._closed:
            raise StoreClosedError()
        if self._queue is None:
            from orchestrator.queue import index_for

            self._queue = index_for(self)
        return self._queue

    @queue.setter
    def queue(self, index: "QueueIndex") -> None:
        self._queue = index

    def worker(self, **settings: Any) -> "Worker":
        """A worker over this project: ``orch.worker().run_once()`` runs at most one job.

        A Python handler runs in a handler process the worker keeps between runs: ``close()`` it (or
        use ``with orch.worker() as w:``) when done; a dropped worker ends it when collected."""
        from orchestrator.worker import Worker, WorkerSettings

        return Worker(self, WorkerSettings(**settings))

    # -- control ----------------------------------------------------------------------------
    # Operator actions (orchestrator/control.py): each checks the transition, is idempotent,
    # and writes one job event plus its audit entry. They return a ``control.ControlResult``:
    # ``applied`` False (``already_applied``) when the same action was done before and nothing was written.
    def approve(self, job_id: str, note: str = "", *, now: float | None = None) -> "ControlResult":
        """awaiting_audit -> succeeded."""
        from orchestrator import control

        return control.approve(self, job_id, note, now=now)

    def revise(self, job_id: str, notes: str, *, note: str = "", now: float | None = None, again: bool = False) -> "ControlResult":
        """awaiting_audit -> queued, re-run with ``notes`` in the context's revisions (``again``: see ``control``)."""
        from orchestrator import control

        return control.revise(self, job_id, notes, note=note, now=now, again=again)

    def resume(self, job_id: str, answer: str, *, note: str = "", now: float | None = None, again: bool = False) -> "ControlResult":
        """waiting_human -> queued, re-run with ``answer`` in the context's answers (``again``: see ``control``)."""
        from orchestrator import control

        return control.resume(self, job_id, answer, note=note, now=now, again=again)

    def cancel(self, job_id: str, reason: str = "", *, now: float | None = None) -> "ControlResult":
        """Any non-final state -> cancelled (a worker running it kills the run at its next heartbeat)."""
        from orchestrator import control

        return control.cancel(self, job_id, reason, now=now)

    def resume_from_chat(self, job_id: str, message: str, *, note: str = "", now: float | None = None,
                         again: bool = False) -> "ControlResult":
        """``resume`` with the answer of a chat message that names this job and no other (``job_id: <job_id>;
        <answer>``); else ``CHAT_MESSAGE_INVALID`` or ``JOB_ID_MISMATCH``, and nothing is written."""
        from orchestrator import control

        return control.resume_from_chat(self, job_id, message, note=note, now=now, again=again)

    # -- observing (the commands audit-timeline, verify and metrics) -----------------------------
    def timeline(self, job_id: str | None = None, *, run_id: str | None = None, since: str | None = None,
                 action: str | None = None) -> dict[str, Any]:
        """A job's events and audit entries merged, each line with its verification status: what
        ``audit-timeline --json`` prints (``"ok"``: no line or history failed verification)."""
        from orchestrator.timeline import timeline

        return timeline(self, job_id=job_id, run_id=run_id, since=since, action=action)

    def verify(self, job_id: str | None = None, *, against: str | os.PathLike[str] | None = None,
               processes: int | None = None, progress: Callable[[int], None] | None = None) -> "VerifyReport":
        """Check every signature and chain of every job (or one) and of the audit log; ``against``: a head
        anchor (``verify --export-head``) to prove nothing was rolled back since. ``report.ok``, ``problems``.
        ``progress`` is called with the jobs verified so far, every thousand."""
        from orchestrator.integrity import anchor_check, verify_project

        instance_or_none(against, (str, os.PathLike), "against", "an anchor file's path (str or os.PathLike)")
        callable_or_none(progress, "progress")
        report = verify_project(self, job_id, progress=progress, processes=a_process_count(processes))
        if against is not None:
            report.against, problems = anchor_check(self, Path(against))
            # a link in a file's place is named once, whether verify or the anchor's check met it first
            report.problems.extend(p for p in problems if p not in report.problems)
        return report

    def metrics(self, *, rebuild: bool = False, processes: int | None = None, thresholds: "Thresholds | None" = None,
                progress: Callable[[int], None] | None = None) -> "Metrics":
        """``stalled_count``, ``resume_success_rate``, ``mean_converge_time``, jobs per state and ``alerts``
        (docs/metrics.md); ``thresholds`` default to the ``ORCH_ALERT_*`` settings. What ``metrics --json`` prints:
        also ``replayed`` and ``warnings`` ({code, message}: a cache or a healed audit entry that could not be
        written, which fails nothing; each is logged too, where it is met). ``progress`` is called with the jobs
        replayed so far, every thousand."""
        from orchestrator import metrics as m
        from orchestrator.projection import refresh

        true_or_false(rebuild, "rebuild")
        callable_or_none(progress, "progress")
        instance_or_none(thresholds, m.Thresholds, "thresholds", "a metrics.Thresholds")
        limits = thresholds if thresholds is not None else m.Thresholds.from_env()  # a bad setting: before the work
        result = refresh(self, rebuild=rebuild, progress=progress, workers=a_process_count(processes))
        figures = m.compute(self.project_id, result.columns, self.clock(), limits, renewed_lease=self.lease_expiry)
        return replace(figures, replayed=result.replayed, warnings=list(result.warnings))
