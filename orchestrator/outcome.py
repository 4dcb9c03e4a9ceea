"""Recording a run's outcome: the terminal payload read and decided on, then appended under the claim.

The outcome is appended with the sequence seen at claim time and the claim's fencing epoch. If
anything else was written meanwhile (stale recovery by another worker, a cancel), the append
fails and the job is read again: a run that no longer holds the job has its late result refused
(``LEASE_LOST``, nothing written); a store out of reach is waited for, since the result exists only
in the worker's process. See ``docs/worker.md`` (Claims and fencing).
"""
from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from orchestrator import clock as clock_mod
from orchestrator import faults
from orchestrator.artifacts import recorded_names
from orchestrator.errors import (AuditEntryNotWrittenError, ConcurrencyError, InvalidInputError, LeaseLostError,
                                 MalformedPayloadError, OrchestratorError, PathEscapeError, StorageError,
                                 StorageUnavailableError)
from orchestrator.limits import LATEST_TIME
from orchestrator.leases import LEASE_NOT_RENEWED, HeldLease, drop_lease_aux
from orchestrator.killed import Killed, logged_killed
from orchestrator.leftovers import end_exited_run
from orchestrator.payload import (DONE, FAILED, JSON_WHITESPACE, NEEDS_AUDIT, NO_TERMINAL_SIGNAL_EXIT,
                                  NO_TERMINAL_SIGNAL_STALE, Payload, parse_payload)
from orchestrator.run_folder import sanitized_tail
from orchestrator.runner import Child
from orchestrator.security import json_source_text, sanitize_obj, sanitize_text, sanitized_cut
from orchestrator.state import (CANCELLED, COUNTED_STOP_WORDS, RUNNING, STOPS_FORGIVEN, WORKER_STOPPED,
                                WORKER_STOPPED_BEFORE_START, JobState)

if TYPE_CHECKING:
    from orchestrator.api import JobView, Orchestrator
    from orchestrator.handlers import RunPaths
    from orchestrator.worker_folders import WorkerFolders

log = logging.getLogger(__name__)

OUTPUT_TAIL_BYTES = 4000
# A worker that has reached its store waits this long, doubling up to the maximum, before it tries
# again after losing it (a PostgreSQL restart): it stays up instead of exiting with the fleet.
STORE_RETRY_FIRST_SECONDS, STORE_RETRY_MAX_SECONDS = 0.2, 5.0


@dataclass(frozen=True)
class Claim:
    view: JobView
    run_id: str
    epoch: int
    renewed: bool = False  # a heartbeat of this run wrote its lease record, which the outcome drops (supervisor.py)
    # ``{code, message}`` of what the run met besides its appends (``ARTIFACT_LINK_REMOVED``, ``OUTPUT_START_DROPPED``,
    # ``RUN_PROCESSES_KILLED``), reported with its result after the claim's warnings
    notes: tuple[dict[str, str], ...] = ()

    @property
    def job_id(self) -> str:
        return self.view.job_id

    def noting(self, warning: dict[str, str]) -> "Claim":
        """This claim with ``warning`` added to its ``notes``."""
        return replace(self, notes=(*self.notes, warning))

    @property
    def state(self) -> JobState:
        assert self.view.state is not None
        return self.view.state


@dataclass
class RunResult:
    """What one run ended as: the job's new state and how it got there."""

    job_id: str
    run_id: str
    outcome: str  # succeeded, awaiting_audit, waiting_human, retry, failed (a timeout too), released, lease_lost
    state: str | None
    error_code: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # ``{code, message}`` of its claim's and outcome's appends: ``HEAD_RECORD_NOT_WRITTEN``, the event durable and a
    # record after it not (``Orchestrator.append``; also logged). The run is recorded all the same. Between them, the
    # run's own (``Claim.notes``)
    warnings: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def noting_killed(claim: Claim, killed: Killed, when: str) -> Claim:
    """``claim`` with the ``RUN_PROCESSES_KILLED`` warning of what was killed of its run ``when`` (logged too), if
    anything was: reported with its result, whatever it ends as."""
    warning = logged_killed(log, killed, claim.job_id, claim.run_id, when)
    return claim if warning is None else claim.noting(warning)


def ended(code: int | None) -> str:
    """How a handler's process ended, from its exit code as Python gives it: a negative one is the signal that
    killed it (``-9``: SIGKILL, what the out-of-memory killer sends), which no process exits with."""
    if code is None or code >= 0:
        return f"exited with status {code}"
    try:
        name = f" ({signal.Signals(-code).name})"
    except ValueError:
        name = ""
    return f"was killed by signal {-code}{name}"


# The signals a stop of the worker may also send its run's processes (a service manager's stop of every process of
# its unit: systemd's SIGTERM, and SIGHUP with ``SendSIGHUP=yes``; ``pkill -f`` matching them; Ctrl-C in a terminal)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def stop_signal(code: int | None) -> str | None:
    """The name of the stop signal (``STOP_SIGNALS``) that killed a handler's process, from its exit code as Python
    gives it (``-15``), or None."""
    return signal.Signals(-code).name if code is not None and -code in STOP_SIGNALS else None


def lost_to(claim: Claim, state: str | None) -> str:
    """What ended a run that lost its job, as the job's ``state`` read after the loss says: its cancel, else a
    takeover (recovered as stale, another run); either, when the state could not be read. Until 2026-12-07 a run
    whose job was cancelled was said "taken over"."""
    if state == CANCELLED:
        return (f"job {claim.job_id} was cancelled: run {claim.run_id} (epoch {claim.epoch}) no longer holds it, "
                "and its result is not recorded")
    what = "was taken over" if state is not None else "was taken over, or the job cancelled"
    return f"job {claim.job_id}: run {claim.run_id} (epoch {claim.epoch}) {what}; its result is not recorded"


def lost(claim: Claim, why: str, state: str | None = None) -> RunResult:
    """The result of a run whose job was taken over or cancelled: nothing is recorded (``LEASE_LOST``); ``why``: what
    ended it (``lost_to``, where the job was read); ``state``: the job's, as the worker found it when it saw the loss
    (``cancelled``, ``running`` under another run), where it read it."""
    log.warning("lease lost for job %s run %s: %s", claim.job_id, claim.run_id, why,
                extra={"job_id": claim.job_id, "run_id": claim.run_id})
    return RunResult(claim.job_id, claim.run_id, "lease_lost", state, LeaseLostError.code, {"message": why},
                     [*claim.view.warnings, *claim.notes])


class OutcomeRecorder:
    """Records the outcomes of one worker's runs. What it needs of the worker is passed in: ``backoff``
    (the delay of a retry after that many failures), ``wait_for_store`` (a pause while the store is out of
    reach, giving up on a stop request), ``remember`` (keeps the view of a job left unfinished) and its
    ``stop_grace_seconds`` (what a run its stop killed is said to have had)."""

    def __init__(self, orch: Orchestrator, *, actor: str, worker_id: str, backoff: Callable[[int], float],
                 wait_for_store: Callable[..., float], remember: Callable[[JobView], None],
                 stop_grace_seconds: float = 0.0) -> None:
        self.orch = orch
        self.actor = actor
        self.worker_id = worker_id
        self.backoff = backoff
        self.wait_for_store = wait_for_store
        self.remember = remember
        self.stop_grace_seconds = stop_grace_seconds

    def record_exit(self, claim: Claim, code: int | None, child: Child, folders: WorkerFolders, *,
                    stopped: Callable[[], bool] | None = None) -> RunResult:
        """The outcome of a run whose handler exited: its terminal payload, parsed and decided on. The job's folder
        is checked again first (``escaped``): the run may have made it a link out of the store. A handler killed by
        a stop signal (``stop_signal``) without leaving a payload, while ``stopped()`` says its worker is stopping,
        was cut short by that stop, which signalled the run too: handed back (``release``), not a failed attempt."""
        s = claim.state
        if child.answered:  # a Python handler's process: it ended what the run left, and said what it killed
            killed, when = child.killed, "when its handler ended"
        else:  # a command, or a handler process that died (having said what it killed, if it could): ended here
            killed, when = child.killed.plus(end_exited_run(child.pid, claim.run_id)), "after its handler exited"
        # (a command's: in its group or out of it, ``setsid``, a daemon) reported with the run, logged
        claim = noting_killed(claim, killed, when)
        try:  # checked again now that the run, and what it left running, are over: before anything in it is read
            artifacts_dir = folders.artifacts_dir(claim.job_id)
        except PathEscapeError as exc:
            return self.escaped(claim, exc, folders, child.output)
        try:
            raw = child.payload()
        except MalformedPayloadError as exc:  # too large to read, not a regular file, or unreadable
            return self.run_failed(claim, folders, exc.code, exc.message, output=child.output)
        if raw is None or not raw.strip(JSON_WHITESPACE):  # none, or opened (``> "$ORCH_TERMINAL_FILE"``) but empty
            signal_name = stop_signal(code)
            if signal_name is not None and stopped is not None and stopped():
                return self.release(claim, child.output, f"the run was ended by {signal_name}, the stop signal "
                                                         "sent to it too")
            left = "" if raw is None else ": the terminal file is " + ("empty" if not raw else
                                                                      "holding only whitespace")
            return self.run_failed(claim, folders, NO_TERMINAL_SIGNAL_EXIT,
                                   f"the process {ended(code)} without writing a terminal payload{left}",
                                   output=child.output)
        try:
            payload = parse_payload(raw, artifacts_dir)
        except MalformedPayloadError as exc:  # a terminal file a full disk cut short among others
            return self.run_failed(claim, folders, exc.code, exc.message, output=child.output)
        if payload.status == FAILED:
            return self.run_failed(claim, folders, payload.error_code or "HANDLER_FAILED", payload.summary,
                                   output=child.output, retryable=payload.retryable, payload=payload)
        # the output's secret look is taken on the payload's own text where it can be (not the output encoded again)
        output = sanitize_obj(payload.output, json_source_text(raw))
        # the artifact paths were checked as given (parse_payload); what is stored is their sanitized text,
        # and a file whose name that changes is moved to match (artifacts.recorded_names)
        result = {"summary": sanitize_text(payload.summary), "output": output,
                  "artifacts": recorded_names(artifacts_dir, payload.artifacts)}
        if payload.status == DONE and not s.options.get("audit"):
            return self.finish(claim, [("job_succeeded", result)], "succeeded")
        if payload.status in (DONE, NEEDS_AUDIT):
            return self.finish(claim, [("audit_requested", result)], "awaiting_audit")
        question = sanitize_text(payload.question or "")  # needs_human, the one status left
        return self.finish(claim, [("human_input_requested", {**result, "question": question})], "waiting_human")

    def run_failed(self, claim: Claim, folders: WorkerFolders, code: str, message: str, *, output: Path,
                   retryable: bool = True, payload: Payload | None = None) -> RunResult:
        """A run whose handler ended failed (``record_exit``): a failed attempt (``fail``), unless the disk of
        ``runs/`` is full now (``WorkerFolders.check_room``). A handler's own writes that a full disk refused fail
        it as any failure does (its stderr is its own text, and may speak of another disk): the worker cannot tell
        whether the disk is why, so the run is handed back rather than charged (``release``: one of the job's stops
        in a row, so that a job that fills the disk itself is charged from the fourth; not a failed attempt, so not
        counted against ``max_attempts``), and the worker stops, the room check's ``StorageError`` (exit 10), as it
        would at its next claim. A failure its handler said must not be run again (``retryable`` false: a card
        declined after a charge) is recorded as it is, final, whatever the disk: the worker stops at its next claim."""
        if retryable:
            try:
                folders.check_room()
            except StorageError as full:
                why = (f"its run ended failed ({code}: {sanitized_cut(message, 500)}) with the disk of runs/ full, "
                       f"which may be why: {full.message}")
                self._raise_after(lambda: self.release(claim, output, why), full)
        return self.fail(claim, code, message, output=output, retryable=retryable, payload=payload)

    def cut_short(self, how: str, claim: Claim, held: HeldLease, output: Path, *, started: bool = True) -> RunResult:
        """The outcome of a run the worker cut short, while it ran or before its handler ``started`` (while its
        ``artifacts_from`` were copied): ``lost`` (taken over or cancelled: nothing written), ``unrenewed``,
        ``stopped``, ``hurried`` or ``closed`` (killed after the grace period, or at once on a second stop signal or
        as its ``Orchestrator`` was closed: handed back; before the start, not counted among the job's stops in a row:
        its run did not stop this worker, no run of it having begun)."""
        if how == "lost":
            state = self.state_of(claim.job_id)
            return lost(claim, lost_to(claim, state), state)
        if how == "unrenewed":
            why = held.why_stopped()
            log.error("job %s run %s: %s", claim.job_id, claim.run_id, why,
                      extra={"job_id": claim.job_id, "run_id": claim.run_id, "code": LEASE_NOT_RENEWED})
            return self.fail(claim, LEASE_NOT_RENEWED, why, output=output)
        if not started:
            return self.hand_back(claim, WORKER_STOPPED_BEFORE_START, "a stop was requested before its handler started")
        grace = self.stop_grace_seconds
        if how == "closed":
            return self.release(claim, output, "the run was killed at once: its Orchestrator was closed (close())")
        return self.release(claim, output, f"the run was killed at once on a second stop signal, before the end of "
                                           f"its {grace:g}s grace period" if how == "hurried" else
                            f"the run was killed after the {grace:g}s grace period")

    def state_of(self, job_id: str) -> str | None:
        """The job's state as the store holds it now (one read, made only when a run lost its job), or None when it
        cannot be told: what the result of a run says of a job it no longer holds (``cancelled``, ``running``)."""
        try:
            view = self.orch.load(job_id)
        except OrchestratorError:
            return None
        return view.state.state if view.ok and view.state is not None else None

    def escaped(self, claim: Claim, exc: PathEscapeError, folders: WorkerFolders, output: Path) -> RunResult:
        """The outcome of a run that left the job's folder leading out of the store (``record_exit``): ``artifacts/``
        or its own ``artifacts/<job_id>`` made a link out (``WorkerFolders.artifacts_dir``, the check a run's start
        makes). Nothing it names is looked at, listed or moved (they would be resolved, and files renamed, wherever
        the link leads): the run fails, ``PATH_ESCAPE``, not retried. When ``artifacts/`` itself is the link, the
        worker then stops (``exc`` raised), as it does when it meets that link at a run's start."""
        result = self.fail(claim, exc.code, "the job's artifact folder leads out of the store after its run, so "
                           f"nothing the run names is recorded: {exc.message}", output=output, retryable=False)
        if folders.linked():
            raise exc
        return result

    def fail(self, claim: Claim, code: str, message: str, *, output: Path | None = None, retryable: bool = True,
             event: str = "job_failed", payload: Payload | None = None, action: str | None = None) -> RunResult:
        """Record a failed attempt (a retry while attempts remain); ``output`` holds what the run printed; ``action``:
        the worker decided it (an audit entry of that action)."""
        s = claim.state
        now = self.orch.clock()
        failures = s.failures + 1
        data: dict[str, Any] = {"error_code": code, "error": sanitize_text(message)[:4000]}
        if retryable and failures < s.max_attempts:
            # never past the latest time a line holds: a clock near 9999-12-31 has room for a lease, not an hour
            data["retry_at"] = clock_mod.to_iso(min(now + self.retry_delay(failures, payload), LATEST_TIME))
        if event == "job_timeout":
            data["timeout"] = s.timeout
        else:
            data["summary"] = sanitize_text(payload.summary if payload else "")[:4000]
        data["output_tail"] = sanitized_tail(output, OUTPUT_TAIL_BYTES) if output else ""
        outcome = "retry" if "retry_at" in data else "failed"
        # a timeout is the worker's decision, so it has its audit entry (``audit.AUDITED_EVENTS``)
        action = action or ("job_timeout" if event == "job_timeout" else None)
        audit = (action, data["error"]) if action else None
        return self.finish(claim, [(event, data)], outcome, error_code=code, audit=audit)

    def retry_delay(self, failures: int, payload: Payload | None) -> float:
        """The worker's backoff after ``failures``, or the wait the run's payload asks for when longer
        (``retry_after``, cut to ``MAX_RETRY_AFTER_SECONDS`` as the payload is read: ``payload.cut_wait``): a service
        that said when to come back (an HTTP ``Retry-After``) is not asked again sooner, which would spend an attempt
        on a refusal."""
        asked = payload.retry_after if payload is not None and payload.retry_after is not None else 0.0
        return max(self.backoff(failures), asked)

    def not_started(self, claim: Claim, paths: RunPaths, code: str, message: str, *, retryable: bool) -> RunResult:
        """The handler could not start: record the failed attempt and remove the run's folder."""
        try:
            return self.fail(claim, code, message, retryable=retryable, output=paths.output_file)
        finally:
            paths.remove()

    def hand_back(self, claim: Claim, code: str, why: str, *, ran: bool = False) -> RunResult:
        """Give a claimed job back before its handler started, as if this worker had never claimed it: not a
        failure, nor one of the job's stops in a row (``JobState.stops`` keeps its count). ``code`` says why: the
        worker cannot run anything (``PATH_ESCAPE``: a folder of the store became a link; ``STORAGE_ERROR``), or it
        was asked to stop (``WORKER_STOPPED_BEFORE_START``). ``ran``: after its handler ran, whose result could not
        be kept (the disk refused the worker's own file of it): the job runs again, as after a worker that died."""
        when = "after running it, its result not kept" if ran else "before running it"
        data = {"error_code": code, "worker_id": self.worker_id, "output_tail": "",
                "error": f"worker {self.worker_id} stopped {when}: {why}"}
        return self.finish(claim, [("job_released", data)], "released", error_code=code,
                           audit=("job_released", data["error"]))

    def hand_back_and_raise(self, claim: Claim, error: OrchestratorError, *, ran: bool = False) -> NoReturn:
        """The store's fault, not the job's: hand the job back (``hand_back``, no attempt used), then raise ``error``,
        which stops the worker (``_raise_after``)."""
        self._raise_after(lambda: self.hand_back(claim, error.code, error.message, ran=ran), error)

    def _raise_after(self, hand_back: Callable[[], RunResult], error: OrchestratorError) -> NoReturn:
        """Give the job back (``hand_back``), then raise ``error``, which stops the worker. A hand-back the store
        cannot take either (a disk with no byte left for its line) leaves the job running until its lease expires,
        and stale recovery then ends its run as a dead worker's, an attempt used: ``error`` then says so, not only
        what failed first."""
        try:
            hand_back()
        except AuditEntryNotWrittenError:
            pass  # handed back: the release stands, saying why itself; ``audit heal`` writes its entry (``AUDITED_EVENTS``)
        except StorageError as failed:
            raise type(error)(f"{error.message}; and the job could not be handed back ({failed.message}): it stays "
                              f"running until its lease expires, then stale recovery ends its run as one whose worker "
                              f"died ({NO_TERMINAL_SIGNAL_STALE}, an attempt used)", **error.details) from None
        raise error from None

    def release(self, claim: Claim, output: Path, how: str) -> RunResult:
        """Hand a run back that a stop cut short (``how``: "the run was killed after the 10s grace period", at once
        on a second signal, or ended by the stop signal sent to it too), or that failed with the disk full when it
        ended (``run_failed``: the worker stops then): not a failure, unless the
        job's last ``STOPS_FORGIVEN`` runs ended so too. Then the job's run is likely what stops its workers (a
        signal to its parent): the run is a failed attempt, so that ``max_attempts`` ends what would stop every
        worker that picks the job up, for ever (``docs/worker.md``, "Graceful stop")."""
        stopped = f"worker {self.worker_id} stopped; {how}"
        runs = claim.state.stops + 1
        if runs > STOPS_FORGIVEN:
            # no payload, and the words ``state.counted_stop`` knows it by (a handler's own failure has neither)
            return self.fail(claim, WORKER_STOPPED, f"{stopped}: {runs} {COUNTED_STOP_WORDS}, so this one counts as a "
                             f"failed attempt (a run that stops its own worker would stop every worker that picks the "
                             f"job up)", output=output, action="job_released")
        data = {"error_code": WORKER_STOPPED, "worker_id": self.worker_id, "error": f"{stopped} and handed back",
                "output_tail": sanitized_tail(output, OUTPUT_TAIL_BYTES)}
        return self.finish(claim, [("job_released", data)], "released", error_code=WORKER_STOPPED,
                           audit=("job_released", data["error"]))

    def finish(self, claim: Claim, events: list[tuple[str, dict[str, Any]]], outcome: str,
               *, error_code: str | None = None, audit: tuple[str, str] | None = None) -> RunResult:
        """Append the outcome with the claim's expected sequence; refuse it if the lease was taken over."""
        faults.point("worker.before_outcome")
        view = claim.view
        # a renewed lease record is dropped with the outcome (in its transaction where the store can)
        drop = drop_lease_aux(claim.job_id, claim.epoch) if claim.renewed else None
        try:
            view = self._append_outcome(claim, events, audit, drop)
        except LeaseLostError as exc:
            return lost(claim, exc.message, exc.details.get("state"))
        except InvalidInputError as exc:  # a value no event can hold (a NaN, a lone surrogate) past every check of
            # the payload, refused by the append's own check of each field before it seals anything: nothing was
            # written; the run failed, the worker goes on
            if error_code == MalformedPayloadError.code:
                raise
            return self.fail(claim, MalformedPayloadError.code, f"the outcome cannot be written: {exc.message}")
        faults.point("worker.after_outcome")
        self.remember(view)
        state = view.state.state if view.state else None
        log.info("job %s run %s: %s", claim.job_id, claim.run_id, outcome,
                 extra={"job_id": claim.job_id, "run_id": claim.run_id, "outcome": outcome})
        return RunResult(claim.job_id, claim.run_id, outcome, state, error_code,
                         warnings=[*claim.view.warnings, *claim.notes, *view.warnings])

    def _append_outcome(self, claim: Claim, events: list[tuple[str, dict[str, Any]]],
                        audit: tuple[str, str] | None, drop: Any) -> JobView:
        """Append the outcome on the claim's head. After a conflict or a lost connection the job is read
        again (the view is kept afterwards: ``Claimer.remember``): the outcome is appended again while this run
        still holds the job, taken as written when it is there right after the claim (the connection broke after
        the commit; whatever came after it, such as the retry's claim, does not matter), and refused
        (``LeaseLostError``) when another run has the job. A store out of reach is waited
        for, since the result exists only in this process; a stop request gives it up to stale recovery."""
        view, conflicts, pause = claim.view, 0, STORE_RETRY_FIRST_SECONDS
        while True:
            try:
                return self.orch.append(view, claim.job_id, events, run_id=claim.run_id, actor=self.actor,
                                        audit=audit, fence=claim.epoch, aux=drop)
            except ConcurrencyError:
                conflicts += 1
                if conflicts >= 3:
                    raise LeaseLostError(f"job {claim.job_id}: could not record the outcome") from None
            except StorageUnavailableError as exc:
                pause = self.wait_for_store(exc, pause, giving_up=True)
            view, pause = self._read_back(claim.job_id, pause)
            since_claim = [(r["type"], r.get("run_id")) for r in view.stream.records[len(claim.view.stream.records):]]
            mine = [(etype, claim.run_id) for etype, _ in events]
            if view.ok and since_claim[:len(mine)] == mine:
                return view  # written before the connection broke (the job may have moved on since)
            cur = view.state
            if not (view.ok and cur is not None and cur.state == RUNNING and (cur.epoch, cur.run_id) == (
                    claim.epoch, claim.run_id)):
                state = cur.state if view.ok and cur is not None else None
                raise LeaseLostError(lost_to(claim, state), job_id=claim.job_id, state=state)

    def _read_back(self, job_id: str, pause: float) -> tuple[JobView, float]:
        """The job read again, every signature checked (the store waited for while out of reach), and the next
        pause (``Worker._wait_for_store``)."""
        while True:
            try:
                return self.orch.load(job_id, every_signature=True), pause
            except StorageUnavailableError as exc:
                pause = self.wait_for_store(exc, pause, giving_up=True)
