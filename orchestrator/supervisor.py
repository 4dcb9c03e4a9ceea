"""Running one claim of a worker: its folders, the copy of ``artifacts_from``, the handler's start, then the watch
until it ends (lease heartbeats, the timeout, the stop grace period, the output cap), and which outcome it is recorded
as (``OutcomeRecorder``, ``orchestrator/outcome.py``).

``RunSupervisor`` is one per ``Worker`` (``Worker.supervisor``), which makes a claim and hands it over
(``Worker._run_claim``); it shares the worker's ``StopRequest`` (``orchestrator/worker_stop.py``) and its ``Claimer``
(the look ahead at the next claim while a handler runs), and holds no reference back to the worker: a worker that is
dropped still ends its handler process at once (``Worker._handler_host``). See ``docs/worker.md``.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from orchestrator import faults
from orchestrator.artifacts_import import (CopyFailed, HeartbeatFailed, artifacts_from, copy_under_lease,
                                          imported_folders)
from orchestrator.errors import InvalidInputError, PathEscapeError, StorageError
from orchestrator.handlers import RunPaths, resolve
from orchestrator.handlers.command import CommandNotFound
from orchestrator.heartbeat import Heartbeat
from orchestrator.leases import HeldLease
from orchestrator.leftovers import LEFTOVERS_END_SECONDS, kill_run
from orchestrator.outcome import Claim, OutcomeRecorder, RunResult, noting_killed
from orchestrator.output_cap import OUTPUT_TOO_LARGE, OutputCap
from orchestrator.payload import HANDLER_START_FAILED, NO_TERMINAL_SIGNAL_TIMEOUT
from orchestrator.run_folder import folders_given_back
from orchestrator.runner import Child
from orchestrator.store.files import path_error
from orchestrator.store.locks import LOCK_WAIT_SECONDS, bounded_waits
from orchestrator.submitted import encoded_input
from orchestrator.worker_stop import STOP_CHECK_SECONDS, StopRequest, WorkerStop

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator
    from orchestrator.claiming import Claimer
    from orchestrator.handler_host import HandlerHost
    from orchestrator.worker_folders import WorkerFolders
    from orchestrator.worker_settings import WorkerSettings

log = logging.getLogger(__name__)

# A stop that signals every process of the worker (systemd's default ``KillMode=control-group``, ``pkill -f``) may reach
# the run's process first: a handler that died of a stop signal is given this long for the worker's own to come
# before it is recorded as a failed attempt (``OutcomeRecorder.record_exit``)
STOP_SIGNAL_WINDOW_SECONDS = 0.5


@dataclass(eq=False)
class RunSupervisor:
    """Runs a worker's claims, one at a time, each to its recorded outcome (``run``)."""

    orch: Orchestrator
    settings: WorkerSettings
    worker_id: str
    folders: WorkerFolders
    claimer: Claimer
    stop_request: StopRequest

    @property
    def stopping(self) -> bool:
        """Asked to stop, or its ``Orchestrator`` closed (``close`` waits for the job to be handed back)."""
        return self.stop_request.stopping or self.orch.closed

    def run(self, claim: Claim, record: OutcomeRecorder, handler_host: Callable[[], HandlerHost | None], *,
            look_ahead: bool) -> RunResult:
        """Run ``claim`` to its outcome, recorded by ``record``; ``handler_host``: the reused handler process, or None
        (``Worker._handler_host``, asked once the handler is about to start). ``look_ahead``: ``supervise``."""
        s = claim.state
        try:
            paths = RunPaths.create(self.folders.run_dir(claim.run_id),
                                    self.folders.artifacts_dir(s.job_id, trusted=True))  # its own folder checked too
        except PathEscapeError as exc:
            if self.folders.linked():  # the store's fault, not the job's: hand it back, and stop
                record.hand_back_and_raise(claim, exc)
            return record.fail(claim, exc.code, exc.message, retryable=False)  # its own folder, a link out
        except StorageError as exc:  # its folder another user owns, or others may use: the store's, as runs/ is
            record.hand_back_and_raise(claim, exc)
        handler = resolve(s.kind)
        held = HeldLease(self.settings.lease_seconds, s.lease_expires_at or 0.0)
        try:
            if handler is None:
                raise InvalidInputError(f"no handler for kind {s.kind!r}")
            cut, claim = self._import_artifacts(claim, held, paths.artifacts_dir)
            if cut is None and self.stopping:  # asked for before the handler started: the grace is for a running one
                cut = "stopped"
            if cut is not None:
                paths.remove()
                return record.cut_short(cut, claim, held, paths.output_file, started=False)
            context = {**s.context(), "artifacts_dir": str(paths.artifacts_dir)}
            host = handler_host()  # only a request to it carries the input's bytes (``HandlerHost.run``)
            child = handler.start(context, paths, host=host,
                                  encoded_input=encoded_input(claim.view) if host is not None else None)
            faults.point("worker.after_start")
        except HeartbeatFailed as failed:
            raise failed.error from None
        except CopyFailed as failed:  # artifacts_from could not be copied (artifacts_import.py says whose fault)
            return self._copy_failed(claim, record, paths, failed)
        except (InvalidInputError, PathEscapeError, CommandNotFound) as exc:  # bad input: not retried
            return record.not_started(claim, paths, exc.code, exc.message, retryable=False)
        except OSError as exc:
            if self.folders.made_by_worker(exc.filename):  # the store's fault, not the job's: hand it back, and stop
                paths.remove()  # first: the room it took on a full disk is the hand-back's
                record.hand_back_and_raise(claim, path_error(exc))
            # the machine's (no process to spare, no memory): may pass, retried
            return record.not_started(claim, paths, HANDLER_START_FAILED, f"cannot start the handler: {exc}",
                                      retryable=True)
        log.info("running job %s (%s) as %s", s.job_id, s.kind, claim.run_id,
                 extra={"job_id": s.job_id, "run_id": claim.run_id, "pid": child.pid})
        cap = OutputCap(child.output, self.settings.output_max_bytes, time.monotonic(), extra={
            "what": f"job {s.job_id} run {claim.run_id}", "job_id": s.job_id, "run_id": claim.run_id})
        how = None
        try:
            try:
                how, code, claim = self.supervise(claim, child, held, cap, look_ahead=look_ahead)
            except BaseException:
                # the worker can no longer watch the run, nor renew its lease (a store error at a heartbeat, a link
                # planted in leases/: PATH_ESCAPE, an interrupt): the run ends with the worker, as one past its stop
                # grace does, instead of going on unwatched beside its retry
                kill_run(child, claim.run_id)
                raise
            dropped = cap.warning()
            if dropped is not None:  # reported with the run, whatever it ended as (also logged when it happened)
                claim = claim.noting(dropped)
            if how in ("lost", "unrenewed", "stopped", "hurried", "closed"):
                return record.cut_short(how, claim, held, child.output)
            if how == "timeout":
                return record.fail(claim, NO_TERMINAL_SIGNAL_TIMEOUT, f"killed after its timeout of {s.timeout:g}s",
                                   output=child.output, event="job_timeout")
            if how == "output":  # its output could not be bounded on this file system: a retry would print as much
                return record.fail(claim, OUTPUT_TOO_LARGE, f"stopped: {cap.refused}", output=child.output,
                                   retryable=False)
            if child.store_refused is not None:  # its result, in a file of the worker's own that a full disk refused
                paths.remove()
                record.hand_back_and_raise(claim, path_error(child.store_refused), ran=True)
            return record.record_exit(claim, code, child, self.folders, stopped=self._stopped_with_its_run)
        finally:
            child.finish(paths)
            if how is not None and how not in ("lost", "unrenewed"):  # another worker may run the job there now
                _give_back_owner_bits(paths.artifacts_dir, s.job_id, s.input)

    def _copy_failed(self, claim: Claim, record: OutcomeRecorder, paths: RunPaths, failed: CopyFailed) -> RunResult:
        """A copy of ``artifacts_from`` that failed: the store's fault (a full disk, the job's own folder that cannot
        be made, a source folder another user could change) hands the job back and stops the worker, as ``runs/``
        that cannot be written does; the job's (a source it cannot read, a file in its folder it cannot replace) is a
        failed attempt, retried, as before."""
        paths.remove()
        if failed.store:
            record.hand_back_and_raise(claim, failed.store_error())
        exc = failed.error
        where = "" if exc.filename is None else f": {os.path.relpath(exc.filename, self.folders.state_dir)}"
        return record.fail(claim, HANDLER_START_FAILED, f"cannot copy input artifacts_from{where}: "
                           f"{exc.strerror or exc}", retryable=True)

    def _stopped_with_its_run(self) -> bool:
        """Whether this worker is stopping, asked when its run's handler died of a stop signal without a payload
        (``OutcomeRecorder.record_exit``): the stop signalled the run too. That signal may have reached the run first
        (each process is signalled in turn): the worker's own is waited for, ``STOP_SIGNAL_WINDOW_SECONDS`` at most."""
        if not self.stopping:
            self.stop_request.pause(STOP_SIGNAL_WINDOW_SECONDS)
        return self.stopping

    def supervise(self, claim: Claim, child: Child, held: HeldLease, cap: OutputCap | None = None, *,
                  look_ahead: bool = True) -> tuple[str, int | None, Claim]:
        """Wait for the child; renew the lease; enforce the timeout and the stop grace period, and stop a run
        whose lease could not be renewed before it may have expired (``held``, ``HeldLease.must_stop``); keep its
        output file within ``cap`` (``output_cap.py``: its start dropped, or the run stopped where that cannot be
        done). Returns how it ended, its exit status, and the claim to record its outcome under: marked ``renewed``
        once a heartbeat wrote a lease record, so the flag belongs to this run and cannot reach the next. The timeout is
        the handler's: one that ended before it (``Child.handler_done``) has its payload recorded, what it left given
        its grace to end, for up to ``LEFTOVERS_END_SECONDS`` past the timeout."""
        start = time.monotonic()
        cap = cap or OutputCap(child.output, self.settings.output_max_bytes, start)
        heart = self._heartbeat(held)
        if look_ahead and not self.stopping:  # the next claim's read and check, done while the handler runs, if it
            within = heart.next_at - time.monotonic()  # ends before the first heartbeat is due
            # a lock held on (a writer paused inside the job's head record) ends the look, never makes a heartbeat late
            with bounded_waits(lambda: self.stopping, max(0.0, min(LOCK_WAIT_SECONDS, within))):
                self.claimer.look_ahead(within=within)
        timeout = claim.state.timeout
        deadline = start + timeout if timeout else None
        ending = False  # the deadline was moved: the handler had ended by its timeout, its leftovers were being ended
        stop_deadline: float | None = None
        hurried = False  # a second stop signal ended the grace period
        closing = False  # its ``Orchestrator`` was closed (``Orchestrator.close`` waits for the job's hand-back)
        while True:
            stop_at = self.stop_request.at
            if stop_at is not None and stop_deadline is None:  # the grace counts from the stop request, which may
                stop_deadline = stop_at + self.settings.stop_grace_seconds  # have come while the handler started
            if self.stop_request.hurried and stop_deadline is not None and not hurried:  # do not wait any longer
                stop_deadline, hurried = min(stop_deadline, time.monotonic()), True
            if self.orch.closed and not closing:  # no grace: the store closes once the job is handed back
                stop_deadline, closing = time.monotonic(), True
            limits = [heart.next_at] + [t for t in (deadline, stop_deadline) if t is not None]
            if not closing:  # a stop asked, or a close, from another thread is seen this soon
                limits.append(time.monotonic() + STOP_CHECK_SECONDS)
            if held.failing_since is not None:  # wake up in time to stop the run
                limits.append(time.monotonic() + held.stop_at - self.orch.clock())
            if cap.next_check is not None:
                limits.append(cap.next_check)
            try:
                self.stop_request.in_wait = True
                code = child.wait(max(0.0, min(limits) - time.monotonic()))
            except WorkerStop:  # the stop is seen at the top of the loop (a second one: ``StopRequest.hurried``)
                continue
            finally:
                self.stop_request.in_wait = False
            if code is not None:
                return "exited", code, claim
            now_m = time.monotonic()
            if deadline is not None and now_m >= deadline and child.handler_done and not ending:
                deadline, ending = now_m + LEFTOVERS_END_SECONDS, True  # ended in time: not a timeout
            if deadline is not None and now_m >= deadline:
                return _killed(child, claim, "timeout", "at its timeout")
            if stop_deadline is not None and now_m >= stop_deadline:
                how = "closed" if closing else "hurried" if hurried else "stopped"
                return _killed(child, claim, how, "when its Orchestrator was closed" if closing else
                               "when its worker stopped")
            if heart.past_margin():
                return _killed(child, claim, "unrenewed", "when its lease could not be renewed")
            if cap.next_check is not None and now_m >= cap.next_check and not cap.check(now_m):
                return _killed(child, claim, "output", "when its output passed its cap")
            if now_m >= heart.next_at:
                end, claim = heart.beat(claim)
                if end:
                    return _killed(child, claim, end, "when its job was cancelled or taken over" if end == "lost"
                                   else "when its lease could not be renewed")

    def _heartbeat(self, held: HeldLease) -> Heartbeat:
        """The heartbeats of a run under ``held`` (``orchestrator/heartbeat.py``), the first due a third of a lease
        after ``held`` was last stored."""
        return Heartbeat(self.orch, worker_id=self.worker_id, lease_seconds=self.settings.lease_seconds, held=held)

    def _import_artifacts(self, claim: Claim, held: HeldLease, target: Path) -> tuple[str | None, Claim]:
        """Only with ``artifacts_import`` on: copy (never move) the folders of jobs named in input ``artifacts_from``,
        a job id or a list of them; anything else is the job's bad input (``InvalidInputError``, not retried).
        The lease is renewed while it copies, as while a handler runs (``artifacts_import.copy_under_lease``);
        returns how the copy was cut short (``lost``, ``unrenewed``, ``stopped``) or None, and the claim to go on
        with."""
        s = claim.state
        if not self.settings.artifacts_import:
            if isinstance(s.input, dict) and s.input.get("artifacts_from"):
                log.info("job %s names artifacts_from, but ORCH_ARTIFACTS_IMPORT is off: nothing copied", s.job_id)
            return None, claim
        names = artifacts_from(s.input)
        if not names:
            return None, claim
        return copy_under_lease(claim, names, self._heartbeat(held), self.folders, target, lambda: self.stopping)


def _give_back_owner_bits(folder: Path, job_id: str, job_input: object) -> None:
    """The folders below the job's ``folder`` its run left without its owner's bits given them back
    (``run_folder.folders_given_back``; not the copies of ``artifacts_from``), said in a warning."""
    given = folders_given_back(folder, imported_folders(job_id, job_input))
    if given:
        shown = ", ".join(given[:5]) + (", ..." if len(given) > 5 else "")
        log.warning("job %s: its run left %d folder(s) in its folder that its owner could not use in full (a chmod): "
                    "given their owner's bits back, so that a copy for artifacts_from, one by hand and its removal can "
                    "read them: %s", job_id, len(given), shown, extra={"job_id": job_id, "path": str(folder)})


def _killed(child: Child, claim: Claim, how: str, when: str) -> tuple[str, None, Claim]:
    """End a run before its handler did (``kill_run``): ``how`` it ended, with no exit status, and its claim noting
    what the kill ended besides the handler's own process ``when`` (``RUN_PROCESSES_KILLED``, with its result), as a
    run that exited has. Until 2026-12-07 (twenty-ninth session) a timeout, a stop, an output cap or a lost lease
    said nothing of it."""
    return how, None, noting_killed(claim, kill_run(child, claim.run_id), when)
