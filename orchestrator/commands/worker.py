"""``orchestrator worker`` (runbook: ``scripts/worker.py``): run jobs once or in a loop."""
from __future__ import annotations

import os
from typing import Any

import click

from orchestrator.cli import cli
from orchestrator.cli_common import CONTEXT, Output, echo, project_command
from orchestrator.cli_values import OutputBound, WholeRange, job_kinds, seconds
from orchestrator.config import (DEFAULT_HANDLER_MAX_RUNS, DEFAULT_HANDLER_PROCESS, DEFAULT_LEASE_SECONDS,
                                 DEFAULT_OUTPUT_MAX_BYTES, DEFAULT_RETRY_BASE_SECONDS, DEFAULT_RETRY_MAX_SECONDS,
                                 DEFAULT_STOP_GRACE_SECONDS, DEFAULT_STORE_WAIT_SECONDS, HANDLER_PROCESS_MODES,
                                 MAX_LEASE_SECONDS, MIN_LEASE_SECONDS, MIN_OUTPUT_MAX_BYTES)
from orchestrator.command_stop import COMMAND_STOP
from orchestrator.errors import ConfigError, HandlerNotFoundError, KeyNotTrustedError, OrchestratorError
from orchestrator.limits import KIND_RULE, is_kind
from orchestrator.security import sanitize_text, shown

EXIT_RAN = 0
EXIT_NOTHING_TO_DO = 75  # sysexits EX_TEMPFAIL: nothing runnable now, try again later
LEASED_SHOWN, LEASED_LISTED = 3, 100  # the leased jobs ``worker --once`` names when it ran nothing: in text, in JSON


def _env_list(name: str, what: str) -> tuple[str, ...]:
    """The entries of a variable that lists them, comma-separated (``ORCH_HANDLERS``, ``ORCH_WORKER_KINDS``); none when
    it is unset or empty. An entry left empty (``,``, `` ``, ``a,,b``, ``a,``) is a bad setting (exit 3), named, as
    an option given empty is refused: not read as no entry (for ``ORCH_WORKER_KINDS``, every kind)."""
    value = os.environ.get(name) or ""
    entries = tuple(entry.strip() for entry in value.split(",")) if value else ()
    if not all(entries):
        raise ConfigError(f"{name} must be {what} separated by commas, none of them empty, not {shown(value)}")
    return entries


def _env_kinds() -> tuple[str, ...]:
    """``ORCH_WORKER_KINDS``: a kind that ``--kind`` refuses (exit 2) is a bad setting here, named (exit 3)."""
    kinds = _env_list("ORCH_WORKER_KINDS", "job kinds")
    for kind in kinds:
        if not is_kind(kind):
            raise ConfigError(f"ORCH_WORKER_KINDS: a job kind is {KIND_RULE}, not {shown(kind)}")
    return kinds


class WorkerCommand(click.Command):
    """The ``worker`` command, which stops on SIGTERM and SIGINT in its own way (``Worker.handle_signals``)."""

    def stopped_before_start(self, args: list[str]) -> int:
        """A stop signal before the worker handled them itself (while the command line was read, the store opened,
        a handler module imported: ``cli._interrupted``) is a stop before the first claim, told as the worker's own:
        ``--once`` exits 75 (``"stopped": true``), a looping worker prints its ``worker_stopped`` line and exits 0.
        Its options are read again from ``args``: the signal may have come before they were."""
        params = self.make_context("worker", list(args), resilient_parsing=True).params
        worker_id = params.get("worker_id")
        if worker_id is None:
            from orchestrator.worker_settings import default_worker_id

            worker_id = default_worker_id()
        out = Output(bool(params.get("as_json")))
        if params.get("once"):
            return _ran_nothing(out, worker_id, [], stopped=True)
        return _stopped(out, worker_id, 0, 0, None, None)


@cli.command(cls=WorkerCommand, context_settings=CONTEXT)
@click.option("--once", is_flag=True, envvar="ORCH_WORKER_ONCE", show_envvar=True,
              help="Recover stale jobs (each named on stderr; with --json under \"recovered\"), claim and run at most "
                   "one job, then exit "
                   f"(exit {EXIT_RAN}: ran a job; exit {EXIT_NOTHING_TO_DO}: nothing was runnable; exit "
                   f"{HandlerNotFoundError.exit_code}: ran nothing and left queued jobs of a kind it has no "
                   f"handler for; exit {KeyNotTrustedError.exit_code}: ran nothing and left queued jobs signed by a "
                   "key it does not trust).")
@click.option("--max-jobs", type=WholeRange(min=1), default=None, envvar="ORCH_MAX_JOBS", show_envvar=True,
              help="Exit after this many runs: each run of a job counts, a retry or a re-run after an answer "
                   "included (one job failing twice, then succeeding, is 3 runs).")
@click.option("--idle-exit", is_flag=True, envvar="ORCH_IDLE_EXIT", show_envvar=True,
              help="Exit when no queued job is left that this worker can run (a delayed retry still counts as "
                   "queued; a job of a kind it has no handler for, or does not run (--kind), or signed by a key it "
                   "does not trust, does not).")
@click.option("--lease-seconds", type=seconds(MIN_LEASE_SECONDS, max=MAX_LEASE_SECONDS),
              default=DEFAULT_LEASE_SECONDS, show_default=True, envvar="ORCH_LEASE_SECONDS", show_envvar=True,
              help="Lease length; renewed every third of it while a job runs. A job whose lease "
                   "expired is recovered by the next worker; a run whose lease cannot be renewed (the store out "
                   "of reach) is stopped when a fifth of it is left (LEASE_NOT_RENEWED); keep it at 10 or more on PostgreSQL.")
@click.option("--worker-id", default=None, envvar="ORCH_WORKER_ID", show_envvar=True,
              help="Name of this worker in events and leases.  [default: host-pid-random]")
@click.option("--kind", "kinds", multiple=True, callback=job_kinds,
              help="Run only jobs of this kind (repeatable); jobs of other kinds stay queued for other workers "
                   "(--once exits 75, not 11, when it met only those), and on PostgreSQL are never reserved by this "
                   "one (a job queued before migration 0004: once, to read its kind).  [default: every kind it has a "
                   "handler for; "
                   "env var: ORCH_WORKER_KINDS=kind1,kind2, added to --kind]")
@click.option("--import", "imports", multiple=True, help="Import MODULE to register Python handlers (repeatable).  "
              "[env var: ORCH_HANDLERS=mod1,mod2, added to --import]")
@click.option("--stop-grace-seconds", type=seconds(), default=DEFAULT_STOP_GRACE_SECONDS,
              show_default=True, envvar="ORCH_STOP_GRACE_SECONDS", show_envvar=True,
              help="On SIGTERM/SIGINT, how long the running job may still take, from the signal, before it is "
                   "killed and handed back (a job whose handler has not started is handed back at once; a second "
                   "signal ends the grace period; a run whose own process dies of the same stop, a service manager "
                   "signalling every process of the unit, is handed back too: prefer systemd's KillMode=mixed).")
@click.option("--retry-base-seconds", type=seconds(), default=DEFAULT_RETRY_BASE_SECONDS,
              show_default=True, envvar="ORCH_RETRY_BASE_SECONDS", show_envvar=True,
              help="First retry delay; doubles per failed attempt, with jitter.")
@click.option("--retry-max-seconds", type=seconds(), default=DEFAULT_RETRY_MAX_SECONDS, show_default=True,
              envvar="ORCH_RETRY_MAX_SECONDS", show_envvar=True,
              help="Longest retry backoff (a failed payload's retry_after may ask for longer, up to 3600 s).")
@click.option("--artifacts-import", is_flag=True, envvar="ORCH_ARTIFACTS_IMPORT", show_envvar=True,
              help="Copy the artifact folders of the jobs a job's input names in 'artifacts_from' into "
                   "its own folder (inputs/<job_id>/). Off by default: nothing crosses between jobs.")
@click.option("--handler-process", type=click.Choice(HANDLER_PROCESS_MODES), default=DEFAULT_HANDLER_PROCESS,
              show_default=True, envvar="ORCH_HANDLER_PROCESS", show_envvar=True,
              help="Python handlers run in a child process: 'reused' keeps one for many runs (replaced after a "
                   "crash, a timeout or --handler-max-runs runs); 'per-run' forks a fresh one for every run "
                   "(~2 ms more per job; nothing a handler leaves in memory reaches the next run).")
@click.option("--handler-max-runs", type=WholeRange(min=1), default=DEFAULT_HANDLER_MAX_RUNS, show_default=True,
              envvar="ORCH_HANDLER_MAX_RUNS", show_envvar=True,
              help="Runs one reused handler process serves before a new one replaces it.")
@click.option("--output-max-bytes", type=OutputBound(MIN_OUTPUT_MAX_BYTES), default=DEFAULT_OUTPUT_MAX_BYTES,
              show_default=True, envvar="ORCH_OUTPUT_MAX_BYTES", show_envvar=True,
              help="Disk a run's output file (what its handler prints) may take: past it the start of the file is "
                   "dropped and its end kept (the tail a failure records), or, on a file system that cannot punch "
                   "holes, the run is stopped (OUTPUT_TOO_LARGE, not retried). 0: no bound; else at least 1 MiB.")
@click.option("--store-wait-seconds", type=seconds(), default=DEFAULT_STORE_WAIT_SECONDS, show_default=True,
              envvar="ORCH_STORE_WAIT_SECONDS", show_envvar=True,
              help="With --once: how long a store lost during stale recovery or the claim (a PostgreSQL restart) is "
                   "tried again before exiting 10; 0: exit at once. A store out of reach at the first call exits 10 "
                   "at once; a looping worker waits for a lost store as long as it takes.")
@click.option("--pass-store-credentials", is_flag=True, envvar="ORCH_PASS_STORE_CREDENTIALS", show_envvar=True,
              help="On PostgreSQL: give handlers libpq's credential variables of this worker's environment "
                   "(PGPASSWORD, PGPASSFILE, PGSERVICE, PGSERVICEFILE, PGSSLKEY), withheld by default since they may "
                   "be the store's own (docs/worker.md, \"What a handler can see\"). No effect on files.")
@project_command
def worker(orch: Any, out: Output, once: bool, max_jobs: int | None, idle_exit: bool, lease_seconds: float,
           worker_id: str | None, imports: tuple[str, ...], stop_grace_seconds: float, retry_base_seconds: float,
           retry_max_seconds: float, artifacts_import: bool, handler_process: str, handler_max_runs: int,
           output_max_bytes: int, store_wait_seconds: float, kinds: tuple[str, ...],
           pass_store_credentials: bool) -> int:
    """Run jobs: recover stale runs, claim by priority then FIFO, run the handler, record the outcome.

    Without --once it loops, waking as soon as a job is submitted; SIGTERM/SIGINT stop it
    gracefully (no new claims; the running job finishes within --stop-grace-seconds, or is
    killed and handed back to the queue).

    With --json it prints JSON Lines, one JSON object per line: one per job it ran (one in all with
    --once), and last, without --once, {"event": "worker_stopped", ...} when it stops (jobs run,
    the queued jobs of kinds it has no handler for, by kind, and those signed by keys it does not
    trust, by key), or an error object if it stops on an error. The stale jobs its recovery ended
    (job_id, to: queued, failed or waiting_human, retry_at, ...): without --once a line
    {"event": "recovered", "worker_id", "recovered": [...]} for each pass that ended any, before
    that pass's claim; with --once, under "recovered" in its one object (the job it ran, or
    {"ran": false, ...}; an error's under details.recovered). Each is also a line on stderr,
    "recovered stale job J -> STATE", printed by the command whatever a handler module does to
    logging, as are its warnings of a kind it has no handler for and of a key it does not trust.

    Exit codes: 0 ran a job (--once) or stopped normally, 75 nothing was runnable, or a stop signal came
    before the claim (--once),
    11 ran nothing but left queued jobs of a kind this worker has no handler for (--once; the
    error names the kinds, how many jobs, and why), 2 unknown option, choice or out-of-range
    value on the command line, 3 the same from the environment or .env, a bad setting, a handler
    module that cannot be imported, or a folder of the store that is a symbolic link
    (PATH_ESCAPE), 7 the audit log was cut against its head record: an entry it must write
    stops it (a stale recovery or a refused job before anything is written, on PostgreSQL after a
    recovery's event; a timeout after its outcome; docs/runbook.md, section E), 8 no usable
    signing key, or (--once) ran nothing but left queued jobs signed by
    a key this worker does not trust (UNKNOWN_KEY; the error names the keys and how many jobs;
    11 comes first when it left both kinds of jobs), 10 the store refused a write or
    could not be reached (a looping worker that reached it once waits for it instead; --once
    retries a store lost during stale recovery or the claim for --store-wait-seconds, and waits
    for its run's outcome as long as it takes), or a folder of the store (the project folder,
    .orchestrator, runs/, artifacts/) is owned by another user, or writable by others and not
    its to change, or lies below such a folder, or the job's folder it claimed is owned by
    another user (the job handed back), or the disk is full (when it starts, before a claim)
    or a quota used up (when it starts), or a run failed with the disk full (handed back,
    unless its payload said retryable false).
    """
    from orchestrator.runner import adopt_orphans
    from orchestrator.worker import Worker, WorkerSettings
    from orchestrator.worker_settings import default_worker_id

    from orchestrator.handlers import look_in_start_folder

    look_in_start_folder()  # --import and module:function kinds, as `python -m orchestrator` finds them
    modules = tuple(imports) + _env_list("ORCH_HANDLERS", "module names")
    worker_id = default_worker_id() if worker_id is None else worker_id
    settings = WorkerSettings(worker_id=worker_id, lease_seconds=lease_seconds, stop_grace_seconds=stop_grace_seconds,
                              retry_base_seconds=retry_base_seconds, retry_max_seconds=retry_max_seconds,
                              imports=modules, artifacts_import=artifacts_import, handler_process=handler_process,
                              handler_max_runs=handler_max_runs, store_wait_seconds=store_wait_seconds,
                              kinds=tuple(kinds) + _env_kinds(),
                              pass_store_credentials=pass_store_credentials, output_max_bytes=output_max_bytes)
    # the lines it promises on stderr are printed here, not left to logging, which a handler module may set up
    # (``notices``); a stderr that cannot take one does not stop the worker. A stop signal before ``handle_signals``
    # (while it imports its handler modules, say, which the signal interrupts: ``handlers._stops_the_worker`` lets it
    # through) is a stop before its first claim (``WorkerCommand.stopped_before_start``)
    w = Worker(orch, settings, notify=lambda line: echo(sanitize_text(line), err=True))
    adopt_orphans()  # a process of its own: what a run leaves behind an exited parent becomes its child

    jobs_seen: set[str] = set()  # the jobs of its runs: a job retried is one job of several runs

    def report(result: Any, **extra: Any) -> None:
        jobs_seen.add(result.job_id)
        out.emit({**result.to_dict(), **extra}, f"{result.job_id} {result.run_id}: {result.outcome}"
                 + (f" ({result.error_code})" if result.error_code else ""))

    with w.handle_signals():
        COMMAND_STOP.taken_over()  # a signal once its handlers are gone (its last line, its exit) is ignored
        if once:
            ignored = [name for name, given in (("--max-jobs", max_jobs is not None), ("--idle-exit", idle_exit))
                       if given]
            if ignored:  # set in the environment for a looping worker, say: told, not a reason to refuse
                echo(f"warning: {' and '.join(ignored)} {'has' if len(ignored) == 1 else 'have'} no effect "
                           "with --once, which runs at most one job", err=True)
            # the stale jobs its recovery wrote (each also logged on stderr, as a looping worker's are) are part of
            # what it did: under --json in its one object, "recovered", an error's details included
            try:
                result = w.run_once(look_ahead=False)  # no next claim to read ahead for
                left = _left_queued(w.handler_not_found(), w.untrusted_keys()) if result is None else None
                if left is not None:
                    raise left
            except OrchestratorError as exc:
                if w.recovered:
                    exc.details = {**exc.details, "recovered": w.recovered}
                raise
            finally:
                w.close()
            if result is None:  # w.stopping: a signal before the claim, nothing claimed (Worker.run_once)
                return _ran_nothing(out, w.worker_id, w.recovered, stopped=w.stopping,
                                    leased=[] if w.stopping else _leased(orch))
            report(result, recovered=w.recovered)
            return EXIT_RAN
        out.progress(f"worker {w.worker_id} started")

        def recovered(records: list[dict[str, Any]]) -> None:  # with --json, a line of its own; text: on stderr
            if out.as_json:
                out.emit({"event": "recovered", "worker_id": w.worker_id, "recovered": records}, "")

        done = w.run(max_jobs=max_jobs, idle_exit=idle_exit, on_result=report, on_recovered=recovered)
    # what its last pass left queued: a looping worker only warned of it
    return _stopped(out, w.worker_id, done, len(jobs_seen), w.handler_not_found(), w.untrusted_keys())


def _ran_nothing(out: Output, worker_id: str, recovered: list[dict[str, Any]], *, stopped: bool,
                 leased: list[dict[str, Any]] | None = None) -> int:
    """``worker --once`` that claimed nothing: nothing was runnable, or a stop signal came before its claim (the
    queue untouched). Nothing runnable names the jobs running under a lease not yet expired (``leased``): a worker
    run again after one died holding a job finds it so, and no worker takes it over before its lease expires."""
    if stopped:
        out.emit({"ran": False, "worker_id": worker_id, "stopped": True, "recovered": recovered},
                 "stopped before claiming a job: nothing run")
        return EXIT_NOTHING_TO_DO
    text, leased = "nothing to run", leased or []
    if leased:
        shown_jobs = ", ".join(f"{j['job_id']} until {j['lease_expires_at']}" for j in leased[:LEASED_SHOWN])
        more = f" and {len(leased) - LEASED_SHOWN} more" if len(leased) > LEASED_SHOWN else ""
        text += (f"; {len(leased)} job{'s' * (len(leased) > 1)} running under a lease ({shown_jobs}{more}): a worker "
                 "recovers a job whose worker is gone once its lease expired")
    out.emit({"ran": False, "worker_id": worker_id, "recovered": recovered, "leased": leased[:LEASED_LISTED]}, text)
    return EXIT_NOTHING_TO_DO


def _leased(orch: Any) -> list[dict[str, Any]]:
    """The jobs running under a lease not yet expired (a live worker's, or a dead one's), by expiry; a job that cannot
    be read is left out (``verify``'s business), and so is one whose lease expired (stale recovery passed it over: a
    record held, a key not trusted, a history that fails verification)."""
    from orchestrator import clock

    now = orch.clock()
    found = []
    for job_id in orch.queue.running():
        try:
            expiry = orch.lease_expiry(job_id, now)
        except OrchestratorError:
            continue
        if expiry is not None and expiry > now:
            found.append((expiry, job_id))
    return [{"job_id": job_id, "lease_expires_at": clock.to_iso(expiry)} for expiry, job_id in sorted(found)]


def _stopped(out: Output, worker_id: str, done: int, jobs: int, left: HandlerNotFoundError | None,
             untrusted: KeyNotTrustedError | None) -> int:
    """A looping worker's last word: the runs it did (``done``, each retry one) of how many jobs, and the jobs its
    last pass left queued for want of a handler (``left``) or of a trusted key. With --json, ``runs`` and ``jobs``;
    ``jobs_run``, the same number as ``runs`` (it always counted runs), is kept for the readers that use it."""
    message = (f"worker {worker_id} stopped after {done} run(s)" + (f" of {jobs} job(s)" if done else "")
               + (f"; {left.message}" if left else "")
               + (f"; {untrusted.message}" if untrusted else ""))
    if out.as_json:  # the last JSON line, told from a run's line ("job_id") and an error's ("error") by "event"
        no_handler = {key: left.details[key] for key in ("jobs", "kinds")} if left else {"jobs": 0, "kinds": {}}
        unknown_keys = ({key: untrusted.details[key] for key in ("jobs", "keys")} if untrusted
                        else {"jobs": 0, "keys": {}})
        out.emit({"event": "worker_stopped", "worker_id": worker_id, "jobs_run": done, "runs": done, "jobs": jobs,
                  "no_handler": no_handler,
                  "unknown_keys": unknown_keys, "message": message}, message)
    else:
        echo(sanitize_text(message), err=True)
    return EXIT_RAN


def _left_queued(no_handler: HandlerNotFoundError | None,
                 untrusted: KeyNotTrustedError | None) -> HandlerNotFoundError | KeyNotTrustedError | None:
    """What ``worker --once`` that ran nothing exits with: the jobs it left for want of a handler (11), else those
    it left for want of a key (8); when it left both, the first names the second too."""
    if no_handler is None or untrusted is None:
        return no_handler or untrusted
    return HandlerNotFoundError(f"{no_handler.message}. Also: {untrusted.message}", **no_handler.details,
                                unknown_keys={key: untrusted.details[key] for key in ("jobs", "keys")})
