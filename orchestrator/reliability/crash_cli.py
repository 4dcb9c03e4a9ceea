"""Crash-point sweep of the command line: each command an operator or a worker's supervisor runs, killed at each point.

The crash sweep (``crash.py``) drives the Python API in one forked process. Here each command is a real command-line
process armed with ``ORCH_CRASH_AT=point:n`` (``orchestrator.faults``): ``control approve``, ``revise``, ``resume``
and ``cancel`` and ``resume-from-chat`` on jobs waiting for them, ``submit --key``, ``audit heal`` on a project whose
audit entries a crash lost, ``import`` of a bundle into an empty project, ``export`` over an earlier bundle, ``keys
rotate`` and ``keys revoke`` on a keyring folder whose active key signs the project, ``db migrate`` of an empty
PostgreSQL database (given a server: ``pg_url``), ``worker --once`` on a queued job, and a looping ``worker`` sent
SIGTERM, or SIGINT (Ctrl-C), once its run started (its graceful stop: the run killed after the grace period and handed
back). Every command is forked by a process that imported the command line once
(``command_forks.py``): the entry point of ``python -m orchestrator``, without its ~0.2 s of imports at each start. A
clean run of each, counted (``counting.count_into``), gives the points it passes and how often; each is killed at
every pass (``every-pass``) or at one the seed picks (``sampled``), on its set-up put back before each kill. Then the
command is run again, as the runbook says to after any failure (exit 0: applied now, or already
applied, with what the kill left out written), and must leave its work done once (``Command.done``); a worker is not
run again but by the recovery; the crash sweep's recovery and checks follow (``crash.checked``), with the streams a
command writes allowed lines nobody acknowledged (a command is acknowledged only by its exit). What a command that
writes outside the store (a bundle, the keyring, a schema) left is checked before it is run again
(``crash_cli_outputs``: never part of a file under its name, never a migration half applied).
"""
from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator import audit as audit_log
from orchestrator.api import Orchestrator
from orchestrator.head_records import head_key
from orchestrator.reliability import crash
from orchestrator.reliability import crash_cli_outputs as outputs
from orchestrator.reliability.command_forks import CommandForks
from orchestrator.reliability.common import (PROJECT, Project, keep_aside, new_project, progress, put_back,
                                             record_acks, run_forked, streams)
from orchestrator.reliability.counting import counts_in
from orchestrator.signing import line_hash
from orchestrator.store.pg_schema import latest_version
from orchestrator.submitted import key_job_id
from orchestrator.transfer import export_project
from orchestrator.worker import Worker, WorkerSettings

SUBMIT_KEY = "cli-submit"
STOPPED_WORKER_ARGS = ("worker", "--worker-id", "stopped", "--stop-grace-seconds", "0.2")


@dataclass(frozen=True)
class Command:
    """A command the sweep kills: its arguments (``{job}``: what its set-up made for it), the set-up it runs on, and
    what it must have done once it was run again after the kill (``done``, by name; "": it is not run again); what
    it writes (``writes``: the store's streams, or, checked before it is run again, ``crash_cli_outputs``'s)."""

    argv: tuple[str, ...]
    set_up: str = "shared"
    done: str = ""
    writes: str = "store"  # or "bundle", "keyring", "schema" (PostgreSQL's: swept only given a database)
    event: str = ""  # the job event it writes, which must be there once
    stop: int = 0  # the signal sent once its run started (a looping worker's graceful stop)
    again_exits: tuple[int, ...] = (0,)  # the exits of the command run again that may be right (``done`` says)
    what: str = ""  # how the report's row names it


COMMANDS = {
    "approve": Command(("control", "approve", "{job}", "looks right"), done="event", event="job_approved",
                       what="control approve"),
    "revise": Command(("control", "revise", "{job}", "once more"), done="event", event="job_revised",
                      what="revise"),
    "resume": Command(("control", "resume", "{job}", "yes"), done="event", event="job_resumed", what="resume"),
    "cancel": Command(("control", "cancel", "{job}", "not needed"), done="event", event="job_cancelled",
                      what="cancel"),
    "resume-from-chat": Command(("resume-from-chat", "{job}", "job_id: {job}; yes"), done="event",
                                event="job_resumed", what="resume-from-chat"),
    "submit": Command(("submit", "--kind", "rel.echo", "--input", '{{"for": "submit"}}', "--key", SUBMIT_KEY),
                      done="event", event="job_submitted", what="submit --key"),
    "audit-heal": Command(("audit", "heal"), set_up="heal", done="event", event="job_cancelled", what="audit heal"),
    "import": Command(("import", "{job}"), set_up="import", done="imported", what="import"),
    "export": Command(("export", "-o", "{job}"), set_up="export", done="bundle", writes="bundle", what="export"),
    # the keyring folder's active key signs this project's events (``keys_set_up``): after a rotation the recovery
    # runs the project's queued job with the new key, and verify must then pass
    "keys-rotate": Command(("keys", "rotate"), set_up="keys", done="rotated", writes="keyring", what="keys rotate"),
    "keys-revoke": Command(("keys", "revoke", "{job}"), set_up="keys", done="revoked", writes="keyring",
                           what="revoke"),
    "db-migrate": Command(("db", "migrate", "--store", "{job}"), set_up="pg", done="migrated", writes="schema",
                          what="db migrate"),
    # run again at once: it runs the job (a kill before its claim was durable), or finds it already final, or finds
    # it running under the dead worker's lease, which the recovery's worker takes over once it expired (exit 75)
    "worker-once": Command(("worker", "--once", "--worker-id", "once", "--retry-base-seconds", "0"),
                           set_up="once", done="run", again_exits=(0, 75), what="worker --once"),
    "worker-sigterm": Command(STOPPED_WORKER_ARGS, stop=signal.SIGTERM, what="a worker stopped by SIGTERM"),
    "worker-sigint": Command(STOPPED_WORKER_ARGS, stop=signal.SIGINT, what="one by SIGINT"),
}
# the points of the quick run (and the test suite): a torn write, between an event and its audit entry, after the
# entry, the stopped worker's hand-back, between two audit entries a heal writes, between an import's chunks and
# before its head record, an export's bundle half written, a key file half written, a migration applied before its
# version row (a file whole but not yet renamed, ``output_file.before_rename`` and ``key_file.before_rename``, only at
# every pass: a file written in place or a rotation made active first fails at these too); 36 kills on files (and db
# migrate's 1) where every pass of every point is 224 (128 points; and 9), 0.4 to 0.6 s each at a load of 5 on 2 cores
QUICK_POINTS = ("store.append.mid_write", "append.after_event", "append.after_audit_entry", "worker.before_outcome",
                "audit.heal.before_entry", "import.after_chunk", "import.before_head", "export.after_stream",
                "key_file.mid_write", "pg.migrate.before_record")
WAIT_SECONDS = 60.0  # a command still running then is killed by the sweep: its run failed (``crashed`` False)


def describe(commands: list[str]) -> str:
    """The commands a sweep ran, as its report's row names them."""
    return ", ".join(COMMANDS[c].what for c in commands if c in COMMANDS)


def _started(project: Project) -> Path:
    return project.base.parent / "started"


def _bundle(project: Project) -> Path:
    return project.base.parent / "bundle.jsonl"


def _shared(project: Project, orch: Orchestrator) -> dict[str, str]:
    """Two jobs awaiting audit, two waiting for an answer, one queued, and the stopped worker's (claimed first, it
    waits for its release); the job ``submit --key`` makes."""
    jobs = {"approve": orch.submit("rel.echo", {"for": "approve"}, audit=True),
            "revise": orch.submit("rel.echo", {"for": "revise"}, audit=True), "resume": orch.submit("rel.ask", {}),
            "resume-from-chat": orch.submit("rel.ask", {"for": "chat"})}
    with Worker(orch, WorkerSettings(worker_id="set-up", retry_base_seconds=0)) as worker:
        crash.drain(worker)
    jobs["cancel"] = orch.submit("rel.echo", {"for": "cancel"})
    jobs["worker-sigterm"] = jobs["worker-sigint"] = orch.submit(
        "rel.wait", {"started": str(_started(project)), "release": str(crash.released_file(orch))}, priority=1)
    jobs["submit"] = key_job_id(PROJECT, SUBMIT_KEY)
    return jobs


def _heal(project: Project, orch: Orchestrator) -> dict[str, str]:
    """Two jobs cancelled by events whose audit entries a crash lost: ``audit heal`` writes both."""
    lost = [orch.submit("rel.echo", {"lost": n}) for n in range(2)]
    for job_id in lost:
        orch.append(orch.load(job_id), job_id, [("job_cancelled", {"reason": "entry lost"})])
    return {"audit-heal": lost[0], "audit-heal-2": lost[1]}


def _once(project: Project, orch: Orchestrator) -> dict[str, str]:
    """One queued job, the project's only one."""
    return {"worker-once": orch.submit("rel.echo", {"for": "once"})}


def _import(project: Project, orch: Orchestrator) -> dict[str, str]:
    """An empty project, and a bundle of another's (signed with the same key): a job succeeded, one approved after its
    audit, one queued."""
    source = Project(project.base.parent.parent / "import-source" / "base", seed=project.seed)
    source.base.mkdir(parents=True)
    src = source.orch()
    done = [src.submit("rel.echo", {"i": 1}), src.submit("rel.echo", {"i": 2}, audit=True)]
    with Worker(src, WorkerSettings(worker_id="source", retry_base_seconds=0)) as worker:
        crash.drain(worker)
    src.approve(done[1], "looks right")
    src.submit("rel.echo", {"i": 3})
    with open(_bundle(project), "wb") as out:
        export_project(src, out)
    return {"import": str(_bundle(project)), "import-source": str(source.base)}


SET_UPS: dict[str, Callable[[Project, Orchestrator], dict[str, str]]] = {
    "shared": _shared, "heal": _heal, "once": _once, "import": _import, "export": outputs.export_set_up,
    "keys": outputs.keys_set_up, "pg": lambda project, orch: {}}  # "pg": the database is the sweep's (``_set_up``)


@dataclass
class _SetUp:
    project: Project
    kept: Path
    jobs: dict[str, str]
    database: outputs.ScratchDatabase | None = None  # ``db migrate``'s, made empty again at each ``put_back``
    schema: list[Any] | None = None  # the database's once the clean run migrated it

    def put_back(self) -> None:
        put_back(self.kept, self.project.base.parent)
        if self.database is not None:
            self.database.reset()


def _set_up(root: Path, name: str, pg_url: str | None) -> _SetUp:
    """Make the set-up ``name`` in a forked child whose appends are acknowledged, and keep it aside."""
    project = new_project(root, "cli" if name == "shared" else f"cli-{name}", keyring_signs=name == "keys")
    jobs_file = project.base.parent / "jobs.json"

    def body() -> int:
        orch = project.orch()
        record_acks(orch, project.acks_file)
        jobs_file.write_text(json.dumps(SET_UPS[name](project, orch)))
        return 0

    result = run_forked(body)
    if result.exit_code != 0:
        raise RuntimeError(f"the command-line sweep's set-up {name} failed: {result.stderr}")
    kept = project.base.parent.parent / f"{project.base.parent.name}.set-up"
    keep_aside(project.base.parent, kept)
    setup = _SetUp(project, kept, json.loads(jobs_file.read_text()))
    if name == "pg":
        assert pg_url is not None
        setup.database = outputs.ScratchDatabase(pg_url)
        setup.jobs["db-migrate"] = setup.database.url
    return setup


def _argv(command: str, jobs: dict[str, str]) -> list[str]:
    return [arg.format(job=jobs.get(command, "")) for arg in COMMANDS[command].argv]


def _stop_once_started(pid: int, started: Path, signum: int) -> None:
    """Send ``signum`` to the command once its run started (nothing if it ended first; or once ``WAIT_SECONDS``
    passed)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while _alive(pid) and not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _run(forks: CommandForks, project: Project, command: str, argv: list[str], *, crash_at: str = "",
         counts: Path | None = None) -> tuple[int | None, str]:
    """Run the command to its end (a worker sent its stop signal once its run started), armed to die at ``crash_at``
    or counting the points it passes into ``counts``: its exit status (``-9``: SIGKILLed; None: still running after
    ``WAIT_SECONDS``, killed by the sweep) and the end of its output (stdout and stderr)."""
    env = project.command_env(**({"ORCH_CRASH_AT": crash_at} if crash_at else {}))
    output = project.base.parent.parent / "command.output"
    pid = forks.start(argv, env, output, counts)
    if COMMANDS[command].stop:
        _stop_once_started(pid, _started(project), COMMANDS[command].stop)
    code = forks.wait(pid, WAIT_SECONDS)
    text = output.read_bytes().decode("utf-8", "replace")[-2000:] if output.exists() else ""
    output.unlink(missing_ok=True)
    return code, text


def _alive(pid: int) -> bool:
    """Whether the command still runs (a zombie the server has not reaped yet counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _count(forks: CommandForks, setup: _SetUp, command: str) -> dict[str, int]:
    """The points a clean run of ``command`` on its set-up passes, and how often."""
    setup.put_back()
    counts_file = setup.project.base.parent.parent / f"cli-{command}.counts"
    counts_file.unlink(missing_ok=True)
    code, err = _run(forks, setup.project, command, _argv(command, setup.jobs), counts=counts_file)
    if code != 0:
        raise RuntimeError(f"the clean run of {command} exited {code}: {err}")
    if setup.database is not None:
        setup.schema = setup.database.schema()[2]
    return dict(counts_in(counts_file))


def _audit_entries_once(orch: Orchestrator, job_id: str) -> bool:
    """Whether each of the job's events that needs an audit entry has exactly one."""
    records = orch.load(job_id).stream.records
    _, entries = audit_log.entries_for(orch, job_id=job_id)
    hashes = Counter(rec.get("data", {}).get("event_hash") for _, rec in entries)
    lines = orch.store.read(job_id)
    return all(hashes[line_hash(lines[i].raw)] == 1 for i, _ in audit_log.audited(records))


def _done(orch: Orchestrator | None, command: str, setup: _SetUp, code: int | None, output: str
          ) -> tuple[bool, str]:
    """Whether the command run again (its exit ``code``, the end of its ``output``) did its work once, and what was
    found."""
    spec, jobs = COMMANDS[command], setup.jobs
    if spec.writes != "store":
        return _output_done(orch, command, setup, output)
    assert orch is not None
    if spec.done == "event":
        job_ids = [jobs[command]] + ([jobs["audit-heal-2"]] if command == "audit-heal" else [])
        events = [sum(r["type"] == spec.event for r in orch.load(j).stream.records) for j in job_ids]
        entries = all(_audit_entries_once(orch, j) for j in job_ids)
        return all(n == 1 for n in events) and entries, f"{spec.event} x {events}, audit entries once: {entries}"
    if spec.done == "imported":
        source = Project(Path(jobs["import-source"]), seed=setup.project.seed).orch()
        differ = [s for s in streams(source) if [x.raw for x in source.store.read(s)] !=
                  [x.raw for x in orch.store.read(s)] or source.store.get_aux(*head_key(s)) !=
                  orch.store.get_aux(*head_key(s))]
        return not differ, f"streams or head records unlike the bundle's: {differ}"
    # ``run``: the worker run again ran the job, found it final, or left it to the lease's expiry (exit 75), saying so
    job_id = jobs[command]
    records = orch.load(job_id).stream.records
    state = orch.status(job_id).state
    outcomes = sum(r["type"] == "job_succeeded" for r in records)
    said = f"running under a lease ({job_id} until " in output
    ok = (state == "succeeded" and outcomes == 1) or (code == 75 and state == "running" and outcomes == 0 and said)
    return ok, f"{state}, job_succeeded x {outcomes}" + (", its lease named" if said else "")


def _output_done(orch: Orchestrator | None, command: str, setup: _SetUp, output: str) -> tuple[bool, str]:
    """``_done`` of a command that writes outside the store: a whole bundle of the project at the path given; a new
    key active, the revoked list as it was; the key revoked once, the active key as it was (and no killed writer's
    temporary file left in the keyring folder, which the one run again removes); every migration applied, the
    schema as a clean run left it, and a project run on it verifying."""
    spec, jobs = COMMANDS[command], setup.jobs
    if spec.done == "bundle":
        assert orch is not None
        path = Path(jobs[command])
        problem = outputs.bundle_problem(path, orch, None) if path.exists() else "no bundle written"
        return not problem, problem or "a whole bundle of the project"
    if spec.done == "migrated":
        assert setup.database is not None
        version, listed, schema = setup.database.schema()
        problem = ("" if version == latest_version() and listed == list(range(1, version + 1))
                   and schema == setup.schema else f"version {version} (rows {listed}), schema as the clean run's: "
                   f"{schema == setup.schema}") or setup.database.used(setup.project)
        return not problem, problem or f"version {version}, the schema as a clean run left it, a job run and verified"
    active, revoked, problem = outputs.keyring_state(setup.project)
    before, was_revoked = jobs["keys-rotate"], set(jobs["keys-revoked"].split())
    if spec.done == "rotated":
        ok = active != before and f"new signing key {active} " in output and revoked == was_revoked
    else:  # ``revoked``
        ok = active == before and revoked == was_revoked | {jobs[command]}
    left = outputs.left_over(setup.project)
    return ok and not problem and not left, (f"active {active} (was {before}), revoked {sorted(revoked)}"
                                             + (f"; {problem}" if problem else "") + (f"; left {left}" if left else ""))


def _left(orch: Orchestrator | None, command: str, setup: _SetUp) -> str:
    """What is wrong with what the kill left outside the store, before the command is run again ("": nothing): the
    bundle at the path given the earlier one or a whole one; the keyring's files whole, its active key and revoked
    list as they were or as the command makes them; the migrations listed each applied (``crash_cli_outputs``)."""
    spec, jobs = COMMANDS[command], setup.jobs
    if spec.writes == "bundle":
        assert orch is not None
        earlier = setup.kept / outputs.EXPORTED
        return outputs.bundle_problem(Path(jobs[command]), orch, earlier.read_bytes() if earlier.exists() else None)
    if spec.writes == "schema":
        assert setup.database is not None
        version, listed, _ = setup.database.schema()
        return "" if listed == list(range(1, version + 1)) else f"version {version}, rows {listed}"
    if spec.writes != "keyring":
        return ""
    active, revoked, problem = outputs.keyring_state(setup.project)
    was_revoked = set(jobs["keys-revoked"].split())
    revokes = {frozenset(was_revoked)} | ({frozenset(was_revoked | {jobs[command]})} if command == "keys-revoke"
                                          else set())
    if problem or revoked not in revokes or (command == "keys-revoke" and active != jobs["keys-rotate"]):
        return f"active {active}, revoked {sorted(revoked)}" + (f": {problem}" if problem else "")
    return ""


def _run_again(forks: CommandForks, setup: _SetUp, orch: Orchestrator | None, command: str) -> dict[str, Any]:
    """The operator's next step after a command died: the same command, which must exit as ``again_exits`` says and
    leave its work done once (``_done``); what the kill left outside the store is checked first (``_left``)."""
    left = _left(orch, command, setup)
    code, err = _run(forks, setup.project, command, _argv(command, setup.jobs))
    done, found = _done(orch, command, setup, code, err)
    out = {"again_exit": code, "again_found": found, "left": left or "nothing wrong found",
           "again_ok": code in COMMANDS[command].again_exits and done and not left}
    return out if out["again_ok"] else {**out, "again_output": err}


def _one_kill(forks: CommandForks, setup: _SetUp, command: str, point: str, nth: int,
              streams_per_crash: int) -> dict[str, Any]:
    setup.put_back()
    code, err = _run(forks, setup.project, command, _argv(command, setup.jobs), crash_at=f"{point}:{nth}")
    killed = code == -signal.SIGKILL
    error = "" if killed or code == 0 else f"exit {code}: {err}"
    if COMMANDS[command].writes == "schema":  # no project to recover: the database migrated, then a job run on it
        run = _unrecovered(killed, error, ok=killed and not error, **_run_again(forks, setup, None, command))
    else:
        again = (lambda orch: _run_again(forks, setup, orch, command)) if COMMANDS[command].done else None
        try:
            run = crash.checked(setup.project, killed=killed, error=error, streams_per_crash=streams_per_crash,
                                before_recovery=again)
        except Exception as exc:  # noqa: BLE001 - a project the kill left that cannot be opened (its keyring): failed
            run = _unrecovered(killed, error, ok=False,
                               recovery_error=f"the project did not open: {type(exc).__name__}: {exc}")
    run.update(command=command, point=point, nth=nth, ok=run["ok"] and run.get("again_ok", True))
    return run


def _unrecovered(killed: bool, error: str, **found: Any) -> dict[str, Any]:
    """The figures of a run that recovered no project (``db migrate``'s, or one that did not open: ``found`` says
    its failure), with what else was ``found``."""
    return {"crashed": killed, "child_error": error, "acked_lost": 0, "jobs_lost": 0, "finished_twice": 0,
            "verify_problems": 0, **found}


def _streams_written(command: str, setup: _SetUp) -> int:
    """How many streams a kill of ``command`` may leave with lines nobody acknowledged: the job's and the audit log's
    (``import``: every stream of the bundle, none acknowledged before its exit; a command that writes outside the
    store: none)."""
    if COMMANDS[command].writes != "store":
        return 0
    if command != "import":
        return 2
    return len(list(streams(Project(Path(setup.jobs["import-source"]), seed=setup.project.seed).orch())))


def sweep(root: Path, mode: str = crash.SAMPLED, points: tuple[str, ...] | None = None,
          commands: tuple[str, ...] | None = None, pg_url: str | None = None) -> dict[str, Any]:
    """Kill each of ``COMMANDS`` (or of ``commands``) at each point it passes (or each of ``points`` it passes): at
    every pass, or once at a pass seed 0 picks (one seed: each kill runs a command and the command run again).
    ``db migrate`` only given ``pg_url`` (a server on which a database of the sweep's own is made, then dropped)."""
    chosen = [c for c in COMMANDS if (not commands or c in commands) and (pg_url or COMMANDS[c].writes != "schema")]
    setups: dict[str, _SetUp] = {}
    seed_list = [0]
    passes: dict[str, dict[str, int]] = {}
    runs: list[dict[str, Any]] = []
    try:
        for name in dict.fromkeys(COMMANDS[c].set_up for c in chosen):
            setups[name] = _set_up(root, name, pg_url)
        with CommandForks(setups[COMMANDS[chosen[0]].set_up].project.command_env()) as forks:
            for command in chosen:
                setup = setups[COMMANDS[command].set_up]
                passes[command] = {p: n for p, n in _count(forks, setup, command).items()
                                   if not points or p in points}
                allowed = _streams_written(command, setup)
                command_runs = [_one_kill(forks, setup, command, point, nth, allowed)
                                for point, count in sorted(passes[command].items())
                                for nth in crash.kill_passes(f"{command}/{point}", count, mode, seed_list).values()]
                progress(f"crash {command} (CLI): {len(command_runs)} kills ({mode}), "
                         f"{sum(not r['ok'] for r in command_runs)} failed")
                runs += command_runs
    finally:
        for setup in setups.values():
            if setup.database is not None:
                setup.database.drop()
    again = [r for r in runs if "again_ok" in r]
    return crash.summary(runs, {**crash.sweep_figures(mode, seed_list, passes), "commands": chosen,
                                "again_runs": len(again), "again_ok": sum(r["again_ok"] for r in again)})
