"""The worker: recover stale runs, claim a job, run its handler, record the outcome.

Every decision takes ``now`` (``recover_stale(now)``, ``claim(now)``, ``run_once(now)``);
only the loop reads the clock. The event log stays the truth:

* a claim is an append of ``job_claimed`` with the expected sequence the worker read, so of
  several workers only one wins; it carries a fencing ``epoch`` one higher than the last;
* the outcome is appended with the sequence seen at claim time, so if anything else was
  written meanwhile (stale recovery by another worker, a cancel), the append fails and the
  worker re-reads: a different epoch means its lease was taken over and its late result is
  refused (``LEASE_LOST``);
* heartbeats renew a lease record outside the log (``orchestrator/leases.py``); a run shorter
  than a heartbeat needs none, the claim event carries the first expiry. A run whose lease cannot
  be renewed (the store out of reach) is stopped before that lease can expire (``HeldLease``), so
  that stale recovery never lets another worker run the job beside it.

The claim side (the claim pass, and what it remembers of the jobs it left) is ``orchestrator/claiming.py``; the run of
a claim (its start, its watch under the lease, timeout and stop grace, its outcome) ``orchestrator/supervisor.py``, a
run's heartbeats ``orchestrator/heartbeat.py``, the copy of ``artifacts_from`` under the lease
``orchestrator/artifacts_import.py``; the stop request and the signals (``WorkerStop``, importable from here)
``orchestrator/worker_stop.py``; the settings (``WorkerSettings``, importable from here)
``orchestrator/worker_settings.py``. This module keeps the ``Worker`` and its loop: stale recovery's cadence, the
claim and its retries while the store is out of reach, the idle waits, the reused handler process.
See ``docs/worker.md`` for the design and a crash analysis.
"""
from __future__ import annotations

import logging
import os
import random
import time
import weakref
from typing import Any, Callable

from orchestrator.api import Orchestrator
from orchestrator.claim_checks import StartedRuns, no_longer_held, started_already
from orchestrator.claiming import Claimer, Unhandled
from orchestrator.config import llm_timeout
from orchestrator.errors import (HandlerNotFoundError, InvalidInputError, KeyNotTrustedError, StatementCancelledError,
                                 StorageUnavailableError, StoreClosedError, TransactionConflictError)
from orchestrator.handler_env import withhold
from orchestrator.handler_host import HandlerHost
from orchestrator.handlers import call_python_handler, import_modules, registry_generation
from orchestrator.limits import a_time, callable_or_none, true_or_false, whole_number
from orchestrator.notices import Notify
from orchestrator.outcome import STORE_RETRY_FIRST_SECONDS, STORE_RETRY_MAX_SECONDS, Claim, OutcomeRecorder, RunResult
from orchestrator.recovery import SWEEP_EVERY, StaleWatch, recover_expired, reload_keys, sweep_leftovers
from orchestrator.runner import precise_sleeps
from orchestrator.security import one_line, validate_id
from orchestrator.store.files import check_folders
from orchestrator.store.locks import bounded_waits
from orchestrator.supervisor import RunSupervisor
from orchestrator.untrusted import UntrustedJobs
from orchestrator.worker_folders import WORKER_FOLDERS, WorkerFolders
from orchestrator.worker_settings import WorkerSettings, default_worker_id
from orchestrator.worker_stop import STOP_CHECK_SECONDS, SignalScope, StopRequest, WorkerStop

log = logging.getLogger(__name__)

IDLE_MAX_WAIT = 30.0  # an idle worker still wakes this often to look for stale leases


class Worker:
    """Runs jobs of one project; ``run_once`` for one job, ``run`` for the loop."""

    def __init__(self, orch: Orchestrator, settings: WorkerSettings | None = None, *,
                 rng: random.Random | None = None, notify: Notify | None = None) -> None:
        """``notify``: where the lines a worker promises on stderr go (each recovery, each kind it has no handler
        for, each key it does not trust: ``notices``); the worker command prints them itself. Without it they are
        logged as warnings."""
        self.orch = orch
        self.settings = settings or WorkerSettings()
        given = self.settings.worker_id  # an empty one is refused, as any bad id: never replaced by the default
        self.worker_id = validate_id(default_worker_id() if given is None else given, "worker id")
        self.actor = f"worker:{self.worker_id}"
        self.rng = rng or random.Random()
        self.queue = orch.queue
        self.stop_request = StopRequest()  # shared with the run of its claims (orchestrator/worker_stop.py)
        self.untrusted = UntrustedJobs(orch.keyring, notify)  # jobs left for want of a key (orchestrator/untrusted.py)
        self.folders = WorkerFolders(orch.settings.state_dir)  # runs/ and artifacts/, never outside the store
        # what its claim passes decide and remember: the jobs it left for other workers, the delayed job due next,
        # the views of the jobs it left unfinished (orchestrator/claiming.py); none is claimed on a full disk
        self.claimer = Claimer(orch, self.settings, worker_id=self.worker_id, actor=self.actor,
                               untrusted=self.untrusted, notify=notify, check_room=self.folders.check_room)
        self.notify = notify
        self.stale_watch = StaleWatch(self.settings.lease_seconds)  # the leases it read (recovery.py)
        # what runs each claim to its outcome (orchestrator/supervisor.py); no reference back to the worker
        self.supervisor = RunSupervisor(orch, self.settings, worker_id=self.worker_id, folders=self.folders,
                                        claimer=self.claimer, stop_request=self.stop_request)
        self._host: HandlerHost | None = None
        self.started_runs = StartedRuns()  # the claims ``execute`` is running: a second call of one runs nothing
        if not self.settings.pass_store_credentials:  # before any handler starts (handler_env)
            withhold(orch.store.credential_env)
        self._next_sweep = 0.0  # time.monotonic() of the next sweep of leftovers (the first recovery does one)
        self._reached = False  # run_once reached the store once: losing it from then on is waited out (a while)
        # the stale jobs recovered by the last run_once before its claim (or the loop's last pass), one record each
        # (``recovery.recover``): what ``worker --once`` shows, which its result alone would not
        self.recovered: list[dict[str, Any]] = []
        llm_timeout(os.environ)  # a bad ORCH_LLM_TIMEOUT: CONFIG_ERROR now, not a failed llm job each time
        check_folders(orch.settings.state_dir, WORKER_FOLDERS)  # a link: PATH_ESCAPE before any job is claimed
        self.folders.probe()  # runs/ or artifacts/ that cannot be written: STORAGE_ERROR before any job is claimed
        self._probed_at = time.monotonic()  # the folders' first look again is a minute after this one (recover_stale)
        orch.store.prepare_locks()  # a hand-back on a disk filled meanwhile needs no new folder (docs/worker.md)
        import_modules(self.settings.imports)

    def __repr__(self) -> str:
        return f"Worker(worker_id={self.worker_id!r}, project_id={self.orch.project_id!r}, stopping={self.stopping!r})"

    # -- stale recovery -----------------------------------------------------------------------
    def recover_stale(self, now: float | None = None) -> list[str]:
        """Recover running jobs whose lease expired; only the running index is scanned, at most every
        half lease (a second at most), and of its jobs only those whose lease, as last read, may have expired by
        ``now`` are read (``recovery.StaleWatch``): most passes read nothing. Now and then, also remove what
        killed workers left behind (``recovery.sweep_leftovers``) and read the keyring folders again
        (``Keyring.reload``): a worker whose key was revoked since it started then refuses to write
        (SIGNING_KEY_ERROR)."""
        now = self.orch.clock() if a_time(now) is None else now
        with bounded_waits(lambda: self.stopping):  # a job whose lock stays held is passed over (LockHeldError)
            recovered = recover_expired(self.orch, self.queue, now, actor=self.actor, backoff=self.backoff,
                                        folders=self.folders, untrusted=self.untrusted, watch=self.stale_watch,
                                        on_recovered=self.recovered.append, notify=self.notify)
        at = time.monotonic()
        if at >= self._next_sweep:  # after the recoveries: the runs they ended are over
            self._next_sweep = at + SWEEP_EVERY
            reload_keys(self.orch)
            # not the first sweep, right after ``probe`` looked at the same folders (until 2026-12-07 it did)
            sweep_leftovers(self.orch, self.queue, self.folders, look_again=at >= self._probed_at + SWEEP_EVERY)
        return recovered

    # -- claiming (orchestrator/claiming.py) -----------------------------------------------------------
    def claim(self, now: float | None = None) -> Claim | None:
        """Claim the first runnable job (priority, then FIFO); None if there is none (``Claimer.claim``). A job whose
        lock another process holds past ``LOCK_WAIT_SECONDS`` is passed over for this pass (``bounded_waits``)."""
        a_time(now)
        with bounded_waits(lambda: self.stopping):
            return self.claimer.claim(now)

    @property
    def next_due(self) -> float | None:
        """The earliest delayed job this worker could run, as the last ``claim`` found it."""
        return self.claimer.next_due

    @property
    def unhandled(self) -> dict[str, Unhandled]:
        """Kind -> the jobs the last ``claim`` left queued for want of a handler."""
        return self.claimer.unhandled

    def handler_not_found(self) -> HandlerNotFoundError | None:
        """``Claimer.handler_not_found``: the jobs the last ``claim`` left for want of a handler, or None."""
        return self.claimer.handler_not_found()

    def untrusted_keys(self) -> KeyNotTrustedError | None:
        """``Claimer.untrusted_keys``: the jobs the last ``claim`` left for want of a trusted key, or None."""
        return self.claimer.untrusted_keys()

    # -- running ----------------------------------------------------------------------------------
    def run_once(self, now: float | None = None, *, look_ahead: bool = True) -> RunResult | None:
        """Recover stale jobs, then claim and run at most one job; None if nothing was runnable.
        ``look_ahead``: while the handler runs, read and check the job a next call would claim (``execute``); off
        for a last run (``worker --once``), whose next claim never comes.

        A store lost during the recovery or the claim (a PostgreSQL restart) is tried again, as the loop
        does, for up to ``store_wait_seconds``; then, or on a stop request, its error is raised, saying so.
        A store this worker never reached (its first call here: a wrong URL) is raised at once, as by ``run``.
        The run itself is never tried again: its heartbeat and outcome wait for the store on their own.
        A worker asked to stop (``stop``, a signal) does nothing: no recovery, no claim (``run`` neither).
        The jobs its recovery recovered are in ``recovered`` afterwards (also when it raised). ``now``: a time in
        seconds since 1970 (``limits.a_time``), else ``INVALID_INPUT`` and nothing done; what it writes ahead of it
        (a lease's end, a retry) is put at ``LATEST_TIME`` at the latest."""
        a_time(now)
        self.recovered = []
        if self.stopping:  # a claim would only be handed back: two events, and the job's attempt count, for nothing
            return None
        with self.orch.worker_pass():  # ``Orchestrator.close`` meanwhile waits for it, its job handed back
            claim = self._recover_and_claim(now)
            return self._run_claim(claim, look_ahead=look_ahead) if claim else None

    def _recover_and_claim(self, now: float | None) -> Claim | None:
        wait = self.settings.store_wait_seconds
        give_up_at, pause, lost = time.monotonic() + wait, STORE_RETRY_FIRST_SECONDS, False
        while True:
            try:
                with self.orch.store.calls_end_by(give_up_at if wait else None):  # no call outlasts the wait
                    if wait and not self._reached:  # a store that cannot be reached now is a setting to fix:
                        self.orch.store.has_jobs()  # raised at once (one call)
                        self._reached = True
                    at = self.orch.clock() if now is None else now  # PostgreSQL's first read may be a call
                    self.recover_stale(at)
                    if self.stopping:  # asked during the recovery: nothing is claimed
                        return None
                    if self.orch.closed:  # closed during the recovery: nor here (its store closes after this pass)
                        raise StoreClosedError()
                    if now is None:  # a recovery may take a while (many stale jobs): the lease starts at the claim
                        at = self.orch.clock()
                    claim = self.claim(at)
            except StorageUnavailableError as exc:
                if not wait or not self._reached:
                    raise
                lost, left = True, give_up_at - time.monotonic()
                if left > 0 and not self.stopping:
                    pause = self._wait_for_store(exc, min(pause, left))
                    if not self.stopping:
                        continue
                still = ("still cancelled" if isinstance(exc, StatementCancelledError) else "still conflicting"
                         if isinstance(exc, TransactionConflictError) else "still out of reach")
                why = ("a stop was requested while waiting for it" if self.stopping else
                       f"{still} after {wait:g}s of retries (store_wait_seconds, ORCH_STORE_WAIT_SECONDS)")
                raise StorageUnavailableError(f"{exc.message}; {why} during stale recovery or the claim: "
                                              "no job was run", **exc.details) from None
            # After a loss, a job due before the wait is over is waited for, as the loop would: on PostgreSQL the
            # candidate whose claim the loss interrupted stays reserved (skipped) for a moment (pg_queue.candidates).
            due = self.next_due
            if claim is None and lost and now is None and due is not None and due - at < give_up_at - time.monotonic():
                self.stop_request.pause(max(0.0, due - at))
                if not self.stopping:
                    continue
            return claim

    def execute(self, claim: Claim, *, look_ahead: bool = True) -> RunResult:
        """Run a claimed job's handler under its lease and timeout, then record the outcome. With ``look_ahead``, the
        next claim's read and check is done while the handler runs (``Claimer.look_ahead``).

        ``claim`` is what this worker's ``claim`` returned, and runs once: a claim whose run this worker started
        already (another thread's ``execute`` of it) is ``lease_lost`` at once (``claim_checks.StartedRuns``); else
        the job is read first (one read), and a claim whose run is no longer the job's (run already, cancelled,
        recovered as stale) or that another worker made is ``lease_lost``, nothing run nor written. Anything but a
        ``Claim`` is ``INVALID_INPUT``."""
        if not isinstance(claim, Claim):
            raise InvalidInputError(f"execute takes the Claim that claim() returned, not {type(claim).__name__}: "
                                    "nothing was run")
        if not self.started_runs.start(claim):
            return started_already(claim)
        with self.orch.worker_pass():
            gone = no_longer_held(self.orch, self.worker_id, claim)
            result = gone if gone is not None else self._run_claim(claim, look_ahead=look_ahead)
        self.started_runs.ended(claim)
        return result

    def _run_claim(self, claim: Claim, *, look_ahead: bool) -> RunResult:
        """``execute`` of a claim this worker has just made (``run_once``, ``run``), without its read of the job first
        (``RunSupervisor.run``). Also the clock-jump campaign's late run (``reliability.concurrency.run_late``): no
        public call skips it."""
        return self.supervisor.run(claim, self._recorder(), self._handler_host, look_ahead=look_ahead)

    def _recorder(self) -> OutcomeRecorder:
        """What records this run's outcome; made per run, so it holds no reference back to a worker that is kept
        (a worker that is dropped still ends its handler process at once: ``_handler_host``)."""
        return OutcomeRecorder(self.orch, actor=self.actor, worker_id=self.worker_id, backoff=self.backoff,
                               wait_for_store=self._wait_for_store, remember=self.claimer.remember,
                               stop_grace_seconds=self.settings.stop_grace_seconds)

    def _handler_host(self) -> HandlerHost | None:
        """The reused handler process (created on first use), or None with ``handler_process="per-run"``."""
        if self.settings.handler_process != "reused":
            return None
        if self._host is None:
            self._host = HandlerHost(self.folders.runs_root, call_python_handler,
                                     max_runs=self.settings.handler_max_runs, generation=registry_generation)
            # a worker used through run_once and dropped (or the interpreter exiting) still ends it
            weakref.finalize(self, self._host.close)
        return self._host

    @property
    def handler_pid(self) -> int | None:
        """The reused handler process's id while there is one (what the benchmarks measure beside the worker); in a
        forked child, none until its first run forks its own (``HandlerHost.inherited``)."""
        return self._host.pid if self._host is not None and not self._host.inherited else None

    def close(self) -> None:
        """Let the reused handler process exit and remove its folder; ``run`` does this when it returns
        (``with orch.worker() as w:`` too; a worker that is dropped does it when collected)."""
        if self._host is not None:
            self._host.close()
            self._host = None

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def backoff(self, failures: int) -> float:
        """The delay before the retry after ``failures`` failed attempts: exponential backoff with jitter,
        ``WorkerSettings.retry_delay`` times a factor in [0.5, 1)."""
        return self.settings.retry_delay(failures) * (0.5 + self.rng.random() / 2)

    def _wait_for_store(self, exc: StorageUnavailableError, pause: float, *, giving_up: bool = False) -> float:
        """Wait ``pause`` seconds before trying a store that could not be reached; returns the next pause.
        A stop request ends the wait, and with ``giving_up`` (a run's outcome in hand) raises ``exc``."""
        if not (giving_up and self.stopping):
            what = ("cancelled a statement" if isinstance(exc, StatementCancelledError) else "rolled back a transaction"
                    if isinstance(exc, TransactionConflictError) else "cannot be reached")
            log.warning("the store %s (%s); trying again in %.1fs", what, one_line(exc.message), pause,
                        extra={"code": exc.code})
            self.stop_request.pause(pause)
        if giving_up and self.stopping:
            log.warning("stopping with the store out of reach: the outcome of the run in progress is not recorded; "
                        "the job is recovered when its lease expires")
            raise exc
        return min(pause * 2, STORE_RETRY_MAX_SECONDS)

    # -- the loop -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to stop: no new claims; a running job gets the grace period. Safe from any thread (the loop
        sees it within ``STOP_CHECK_SECONDS``) and from a signal handler (``StopRequest``)."""
        self.stop_request.ask()

    @property
    def stopping(self) -> bool:
        return self.stop_request.stopping

    def handle_signals(self) -> SignalScope:
        """Context manager: SIGTERM/SIGINT stop the worker gracefully (main thread only; ``StopRequest.on_signal``)."""
        return SignalScope(self.stop_request.on_signal)

    def run(self, max_jobs: int | None = None, idle_exit: bool = False,
            on_result: Callable[[RunResult], None] | None = None,
            on_recovered: Callable[[list[dict[str, Any]]], None] | None = None) -> int:
        """Loop until stopped (or ``max_jobs`` runs, or idle with ``idle_exit``); returns the runs done.
        ``on_result`` is called with each run's ``RunResult``; ``on_recovered`` with the records of the stale jobs a
        pass's recovery ended (``recovery.recover``), when it ended any, before that pass's claim (also when the
        recovery then raised: what it wrote is written)."""
        whole_number(max_jobs, "max_jobs", or_none=True)
        true_or_false(idle_exit, "idle_exit")
        callable_or_none(on_result, "on_result")
        callable_or_none(on_recovered, "on_recovered")
        done = 0
        precise_sleeps()
        self.orch.store.has_jobs()  # a store that cannot be reached now is a setting to fix: exit (one call)
        pause = STORE_RETRY_FIRST_SECONDS  # from here on, losing the store is waited out
        self.queue.wait(0)  # start watching before the first scan, so no announcement is missed
        try:
            while not self.stopping and (max_jobs is None or done < max_jobs):
                try:
                    with self.orch.worker_pass():  # ``Orchestrator.close`` meanwhile waits for it, its job handed back
                        recovered_at = self.orch.clock()
                        self.recovered = []  # this pass's only: a looping worker tells each as it is written
                        try:
                            self.recover_stale(recovered_at)  # reads nothing at most passes (``StaleWatch``)
                        finally:
                            if self.recovered and on_recovered:
                                on_recovered(list(self.recovered))
                        if self.stopping:  # asked during the recovery: nothing is claimed
                            break
                        if self.orch.closed:  # closed during the recovery: nor here (the store closes after the pass)
                            raise StoreClosedError()
                        # read again: a recovery may take a while (many stale jobs, each append fsynced, each run's
                        # processes killed and waited for), and the claim's lease starts when it is written
                        now = self.orch.clock()
                        claim = self.claim(now)
                        pause = STORE_RETRY_FIRST_SECONDS
                        result = None
                        if claim is not None:
                            self.queue.hand_over_watch()  # another idle worker watches for the next job meanwhile
                            # the last run of ``max_jobs`` has no next claim to read ahead for
                            result = self._run_claim(claim, look_ahead=max_jobs is None or done + 1 < max_jobs)
                    if result is not None:
                        done += 1
                        if on_result:
                            on_result(result)
                        continue
                    if idle_exit and self.next_due is None:
                        break
                    wait = IDLE_MAX_WAIT
                    look = self.stale_watch.next_look(recovered_at)  # None: this pass's listing found no job running
                    if look is not None:  # another worker may die: look at its lease, and the index, in time
                        wait = min(wait, max(0.0, look - now))
                    if self.next_due is not None:
                        wait = min(wait, max(0.0, self.next_due - now))
                    self._idle(wait)
                except StorageUnavailableError as exc:
                    pause = self._wait_for_store(exc, pause)
        finally:
            self.queue.close()
            self.close()
        return done

    def _idle(self, timeout: float) -> None:
        """Wait up to ``timeout`` for new work, in steps of ``STOP_CHECK_SECONDS``: a ``stop()`` from another thread
        ends the wait that soon (a signal at once). In turn with the other idle workers of the queue, unless the last
        claim pass left a job for another worker (``QueueIndex.wait``). A turn that comes after another worker claimed
        the jobs announced meanwhile ends the wait at the stale watch's next look: ``timeout`` was set when none of them
        ran (up to ``IDLE_MAX_WAIT``), and this worker may be the only idle one looking at their leases."""
        end = time.monotonic() + timeout
        take_turns = not self.claimer.left_for_others
        try:
            self.stop_request.in_wait = True
            while not self.stopping and not self.orch.closed:  # closed: the next pass raises ``STORE_CLOSED``
                left = max(0.0, end - time.monotonic())
                if self.queue.wait(min(left, STOP_CHECK_SECONDS), take_turns) or left <= STOP_CHECK_SECONDS:
                    return
                if self.queue.claimed_while_waiting():
                    now = self.orch.clock()
                    look = self.stale_watch.next_look(now)  # after a listing that found no job: list_every after it
                    end = min(end, time.monotonic() + (0.0 if look is None else max(0.0, look - now)))
        except WorkerStop:
            pass
        finally:
            self.stop_request.in_wait = False

