"""Real worker processes: exit codes, wake-up, SIGKILL mid-job, a SIGSTOPped zombie, graceful stop, races.

Decisions are never waited for with a fixed sleep: each test polls the store with a timeout.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, alive, finish, run_script, start_worker, stop, wait_until
from worker_process_fixtures import env, orch  # noqa: F401  (fixtures)


def records(orch, job_id: str) -> list[dict]:
    return [json.loads(line.raw) for line in orch.store.read(job_id)]


def state(orch, job_id: str) -> str | None:
    return orch.status(job_id).state


def waiting_job(orch, tmp_path: Path, **options) -> tuple[str, Path, Path]:
    started, release = tmp_path / "started", tmp_path / "release"
    job = orch.submit("t.wait", {"started": str(started), "release": str(release)}, **options)
    return job, started, release


def test_once_exits_75_when_nothing_is_runnable_and_0_after_running_a_job(env, orch) -> None:
    idle = run_script("worker", "--once", env=env)
    assert idle.returncode == 75, idle.stderr
    job = orch.submit("t.echo", "x")
    ran = run_script("worker", "--once", "--json", env=env)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["job_id"] == job and state(orch, job) == "succeeded"


def test_once_stopped_before_its_claim_says_so_exits_75_and_leaves_the_queue_untouched(
        env, orch, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import worker_handlers  # noqa: F401  (the t.* kinds, as ORCH_HANDLERS imports them)
    from orchestrator.cli import cli
    from orchestrator.worker import Worker

    job = orch.submit("t.echo", "x")
    handle_signals = Worker.handle_signals

    def stopped_at_once(self):  # a SIGTERM right after the worker started watching for it
        self.stop()
        return handle_signals(self)

    monkeypatch.setattr(Worker, "handle_signals", stopped_at_once)
    ran = CliRunner().invoke(cli, ["worker", "--once", "--json"], env=env)
    assert ran.exit_code == 75, ran.output
    assert json.loads(ran.stdout) == {"ran": False, "worker_id": json.loads(ran.stdout)["worker_id"], "stopped": True,
                                      "recovered": []}
    # before the fix: the job claimed and handed back (WORKER_STOPPED_BEFORE_START), exit 0
    assert [r["type"] for r in records(orch, job)] == ["job_submitted"]


def test_once_warns_that_max_jobs_and_idle_exit_have_no_effect_and_runs_as_usual(env, orch) -> None:
    job = orch.submit("t.echo", 1)
    ran = run_script("worker", "--once", "--json", env={**env, "ORCH_MAX_JOBS": "5", "ORCH_IDLE_EXIT": "1"})
    assert ran.returncode == 0 and json.loads(ran.stdout)["job_id"] == job
    assert "warning: --max-jobs and --idle-exit have no effect with --once" in ran.stderr
    plain = run_script("worker", "--once", env=env)
    assert plain.returncode == 75 and "warning" not in plain.stderr


def test_once_exits_11_naming_the_kinds_it_has_no_handler_for_and_leaves_their_jobs_queued(env, orch) -> None:
    jobs = [orch.submit(kind, {}) for kind in ("nosuchhandler", "nosuchhandler", "nosuchmod:fn")]
    proc = run_script("worker", "--once", "--json", env=env)
    assert proc.returncode == 11, proc.stderr
    error = json.loads(proc.stdout)
    assert error["error"] == "HANDLER_NOT_FOUND" and error["details"]["jobs"] == 3
    assert {k: v["jobs"] for k, v in error["details"]["kinds"].items()} == {"nosuchhandler": 2, "nosuchmod:fn": 1}
    assert [state(orch, job) for job in jobs] == ["queued"] * 3
    text = run_script("worker", "--once", env=env)
    assert text.returncode == 11 and "Traceback" not in text.stderr
    assert "error[HANDLER_NOT_FOUND]: 3 queued job(s)" in text.stderr and "--import MODULE" in text.stderr


def test_once_runs_a_job_it_has_a_handler_for_before_reporting_those_it_has_none_for(env, orch) -> None:
    orch.submit("nosuchhandler", {}, priority=5)
    job = orch.submit("t.echo", "x")
    assert run_script("worker", "--once", env=env).returncode == 0 and state(orch, job) == "succeeded"
    assert run_script("worker", "--once", env=env).returncode == 11


def test_a_worker_given_kinds_runs_only_those_and_leaves_the_others_queued_quietly(env, orch) -> None:
    other = orch.submit("t.echo", "for another worker", priority=5)  # first in claim order
    job = orch.submit("t.payload", {"status": "done", "summary": "mine"})
    ran = run_script("worker", "--once", "--json", "--kind", "t.payload", env=env)
    assert ran.returncode == 0 and json.loads(ran.stdout)["job_id"] == job, ran.stderr
    left = run_script("worker", "--once", env={**env, "ORCH_WORKER_KINDS": "t.ask, t.payload"})
    assert left.returncode == 75, left.stderr  # nothing of its kinds: not exit 11, no warning
    assert left.stdout == "nothing to run\n" and left.stderr == ""
    assert state(orch, other) == "queued"
    code, _out, err = finish(start_worker(env, "--idle-exit", "--kind", "t.payload"))
    assert code == 0 and "stopped after 0 run(s)" in err and "left for a worker" not in err
    assert run_script("worker", "--once", env=env).returncode == 0 and state(orch, other) == "succeeded"


@pytest.mark.parametrize("where", ["option", "environment"])
def test_a_kind_that_is_no_job_kind_is_refused_before_anything_runs(env, orch, where: str) -> None:
    job = orch.submit("t.echo", 1)
    bad = "k" * 201
    proc = (run_script("worker", "--once", "--kind", bad, env=env) if where == "option"
            else run_script("worker", "--once", env={**env, "ORCH_WORKER_KINDS": f"t.echo,{bad}"}))
    assert proc.returncode == (2 if where == "option" else 3) and "Traceback" not in proc.stderr, proc.stderr
    assert "1 to 200 characters" in proc.stderr and state(orch, job) == "queued"


@pytest.mark.parametrize("variable, value", [("ORCH_WORKER_KINDS", ","), ("ORCH_WORKER_KINDS", " "),
                                             ("ORCH_WORKER_KINDS", "t.echo,"), ("ORCH_HANDLERS", ","),
                                             ("ORCH_HANDLERS", "worker_handlers,,")])
def test_a_list_variable_with_an_empty_entry_is_a_config_error_not_read_as_unset(env, orch, variable: str,
                                                                                  value: str) -> None:
    """``ORCH_WORKER_KINDS=","`` ran every kind, ``ORCH_HANDLERS=","`` imported nothing: each as if unset."""
    job = orch.submit("t.echo", 1)
    proc = run_script("worker", "--once", "--json", env={**env, variable: value})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    error = json.loads(proc.stdout)
    assert error["error"] == "CONFIG_ERROR" and error["message"].startswith(f"{variable} must be ")
    assert error["message"].endswith(f"none of them empty, not {value!r}")
    assert state(orch, job) == "queued"


def test_a_kind_whose_module_raises_on_import_is_reported_not_a_worker_crash(env, orch, tmp_path: Path) -> None:
    (tmp_path / "t_broken_handlers.py").write_text("raise RuntimeError('bug in the handler module')\n")
    env = {**env, "PYTHONPATH": f"{env['PYTHONPATH']}{os.pathsep}{tmp_path}"}
    job = orch.submit("t_broken_handlers:fn", {})
    proc = run_script("worker", "--once", env=env)
    assert proc.returncode == 11 and "Traceback" not in proc.stderr, proc.stderr
    assert "importing module 't_broken_handlers' raised RuntimeError: bug in the handler module" in proc.stderr
    assert state(orch, job) == "queued"
    imported = run_script("worker", "--once", "--import", "t_broken_handlers", env=env)
    assert imported.returncode == 3 and "Traceback" not in imported.stderr, imported.stderr
    assert "error[CONFIG_ERROR]: cannot import handler module 't_broken_handlers'" in imported.stderr


def test_a_looping_worker_warns_once_per_kind_it_has_no_handler_for_and_counts_them_when_it_stops(env, orch) -> None:
    jobs = [orch.submit("nosuchhandler", {}) for _ in range(2)]
    code, _out, err = finish(start_worker(env, "--idle-exit"))
    assert code == 0 and [state(orch, job) for job in jobs] == ["queued"] * 2
    assert err.count("no handler for kind 'nosuchhandler'") == 1  # the warning, at the default log level
    assert "stopped after 0 run(s); 2 queued job(s) left for a worker with a handler for their kind" in err


def test_a_looping_worker_with_json_ends_with_a_stop_line_naming_the_kinds_it_left(env, orch) -> None:
    left = [orch.submit(kind, {}) for kind in ("nosuchhandler", "nosuchhandler", "nosuchmod:fn")]
    job = orch.submit("t.echo", "x")
    code, out, _err = finish(start_worker(env, "--idle-exit", "--json", "--worker-id", "w-json"))
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]  # JSON Lines: every line is one object
    assert [line.get("job_id") for line in lines[:-1]] == [job] and lines[0]["outcome"] == "succeeded"
    stopped = lines[-1]
    assert stopped["event"] == "worker_stopped" and stopped["worker_id"] == "w-json" and stopped["jobs_run"] == 1
    assert stopped["no_handler"]["jobs"] == 3
    assert {k: v["jobs"] for k, v in stopped["no_handler"]["kinds"].items()} == {"nosuchhandler": 2, "nosuchmod:fn": 1}
    assert "no handler is registered" in stopped["no_handler"]["kinds"]["nosuchhandler"]["reason"]
    assert stopped["message"].startswith(
        "worker w-json stopped after 1 run(s) of 1 job(s); 3 queued job(s) left for a worker")
    assert [state(orch, j) for j in left] == ["queued"] * 3


def test_submit_refuses_a_command_job_that_can_never_start(env, orch) -> None:
    proc = run_script("submit", "--kind", "command", "--input", "{}", "--json", env=env)
    assert proc.returncode == 3 and json.loads(proc.stdout)["error"] == "INVALID_INPUT"
    assert orch.jobs() == []


def test_worker_help_shows_an_env_var_for_every_option(env) -> None:
    text = run_script("worker", "-h", env=env).stdout
    for var in ("ORCH_WORKER_ONCE", "ORCH_MAX_JOBS", "ORCH_IDLE_EXIT", "ORCH_LEASE_SECONDS", "ORCH_WORKER_ID",
                "ORCH_HANDLERS", "ORCH_STOP_GRACE_SECONDS", "ORCH_RETRY_BASE_SECONDS", "ORCH_ARTIFACTS_IMPORT",
                "ORCH_HANDLER_PROCESS", "ORCH_HANDLER_MAX_RUNS", "ORCH_STORE_WAIT_SECONDS", "ORCH_WORKER_KINDS",
                "ORCH_PASS_STORE_CREDENTIALS"):
        assert var in text


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_python_handlers_run_outside_the_worker_in_either_handler_process_mode(env, orch, mode: str) -> None:
    job = orch.submit("t.pid", None)
    ran = run_script("worker", "--once", "--json", env={**env, "ORCH_HANDLER_PROCESS": mode})
    assert ran.returncode == 0, ran.stderr
    assert state(orch, job) == "succeeded" and json.loads(ran.stdout)["outcome"] == "succeeded"


def test_a_bad_handler_process_mode_is_a_usage_error(env) -> None:
    proc = run_script("worker", "--once", "--handler-process", "thread", env=env)
    assert proc.returncode == 2 and "'thread' is not one of 'reused', 'per-run'" in proc.stderr


def test_an_unknown_handler_module_is_a_config_error(env) -> None:
    proc = run_script("worker", "--once", "--import", "no_such_module_xyz", env=env)
    assert proc.returncode == 3 and "CONFIG_ERROR" in proc.stderr


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@pytest.mark.parametrize("wakeup", ["auto", "poll"])
def test_an_idle_worker_picks_up_a_new_job_quickly_without_busy_polling(env, orch, wakeup: str) -> None:
    proc = start_worker({**env, "ORCH_WAKEUP": wakeup}, "--max-jobs", "2")
    try:
        first = orch.submit("t.echo", 1)
        wait_until(lambda: state(orch, first) == "succeeded", what="first job")
        if sys.platform.startswith("linux"):
            before = cpu_ticks(proc.pid)
            time.sleep(1.0)  # measuring idle CPU over a second, not waiting for a decision
            assert cpu_ticks(proc.pid) - before <= 10  # <= 0.1 s of CPU in 1 s idle
        job = orch.submit("t.echo", 2)
        wait_until(lambda: len(records(orch, job)) >= 2, what="claim")
        ev = records(orch, job)
        from orchestrator.clock import from_iso
        latency = from_iso(ev[1]["ts"]) - from_iso(ev[0]["ts"])
        assert ev[1]["type"] == "job_claimed"
        assert latency < (0.5 if wakeup == "auto" else 1.0), f"picked up after {latency * 1000:.0f} ms"
        code, _out, err = finish(proc)
        assert code == 0, err
    finally:
        stop(proc)


def test_a_worker_killed_mid_job_is_recovered_by_the_next_worker(env, orch, tmp_path: Path) -> None:
    job, started, release = waiting_job(orch, tmp_path)
    victim = start_worker(env, "--worker-id", "victim", "--lease-seconds", "1")
    try:
        wait_until(started.exists, what="the job to start")
        handler_pid = json.loads(started.read_text())["pid"]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(5)
        wait_until(lambda: not alive(handler_pid), timeout=5, what="the handler to die with its worker")
        hosts = orch.settings.state_dir / "runs"
        assert len(list(hosts.glob("host-*"))) == 1  # the victim's handler folder, left behind
        release.write_text("go")
        # the next worker passes recover the job once the lease expired, then run it again
        wait_until(lambda: run_script("worker", "--once", "--worker-id", "rescuer", env=env).returncode == 0
                   and state(orch, job) == "succeeded", what="recovery")
    finally:
        stop(victim)
    assert not list(hosts.glob("host-*"))  # removed by the rescuer's stale recovery (and its own by its close)
    ev = records(orch, job)
    kinds = [e["type"] for e in ev]
    assert kinds == ["job_submitted", "job_claimed", "stale_recovered", "job_claimed", "job_succeeded"]
    stale = ev[2]["data"]
    assert stale["stale_worker_id"] == "victim" and stale["error_code"] == "NO_TERMINAL_SIGNAL_STALE"
    assert ev[3]["data"]["epoch"] == 2 and ev[4]["actor"] == "worker:rescuer"


def test_a_stopped_then_continued_worker_cannot_write_after_its_lease_was_taken_over(env, orch, tmp_path) -> None:
    job, started, release = waiting_job(orch, tmp_path)
    zombie = start_worker(env, "--once", "--worker-id", "zombie", "--lease-seconds", "1")
    rescuer = None
    try:
        wait_until(started.exists, what="the zombie's run to start")
        os.kill(zombie.pid, signal.SIGSTOP)
        started.unlink()
        rescuer = start_worker(env, "--worker-id", "rescuer", "--lease-seconds", "5", "--max-jobs", "1")
        wait_until(lambda: orch.status(job).worker_id == "rescuer" and started.exists(), what="the takeover")
        release.write_text("go")  # both runs may now finish
        code, _out, err = finish(rescuer)
        assert code == 0, err
        assert state(orch, job) == "succeeded"
        before = records(orch, job)
        os.kill(zombie.pid, signal.SIGCONT)
        code, out, err = finish(zombie)
    finally:
        stop(zombie)
        stop(rescuer)
    assert code == 0 and "lease_lost" in out, (out, err)
    assert records(orch, job) == before  # the zombie's late result was refused
    zombie_events = [e["type"] for e in before if e["actor"] == "worker:zombie"]
    assert zombie_events == ["job_claimed"]
    assert [e["data"]["epoch"] for e in before if e["type"] == "job_claimed"] == [1, 2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, prctl and pidfds")
@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_stale_recovery_kills_a_paused_workers_python_handler_process_and_what_it_started_before_the_retry(
        env, orch, tmp_path: Path, mode: str) -> None:
    """The first attempt's handler process (and what it started: a forked copy, a ``sleep``, each in a session of
    its own) is gone when the retry starts, and the recovery names them (before 2026-12-06: nothing was killed,
    the handler process ran on beside the retry)."""
    job = orch.submit("t.overlap", {"folder": str(tmp_path)}, max_attempts=2)
    paused = start_worker(env, "--once", "--json", "--worker-id", "paused", "--lease-seconds", "1",
                          "--handler-process", mode)
    first = {"pid": 0, "left": []}
    try:
        wait_until((tmp_path / "first").exists, what="the first attempt to start")
        first = json.loads((tmp_path / "first").read_text())
        os.kill(paused.pid, signal.SIGSTOP)
        outs: list[dict] = []

        def rescued() -> bool:  # --once exits 75 until the lease expired (1 s): recovery, then the retry
            proc = run_script("worker", "--once", "--json", "--worker-id", "rescuer", "--retry-base-seconds", "0",
                              "--handler-process", mode, env=env)
            outs.append(json.loads(proc.stdout))
            return state(orch, job) == "succeeded"

        wait_until(rescued, what="the recovery and the retry")
        recovered = [r for out in outs for r in out["recovered"]]
        assert [(r["job_id"], r["stale_worker_id"]) for r in recovered] == [(job, "paused")]
        warnings = recovered[0]["warnings"]
        assert [w["code"] for w in warnings] == ["RUN_PROCESSES_KILLED"], warnings
        assert "killed 3 process(es)" in warnings[0]["message"], warnings
        for pid in [first["pid"], *first["left"]]:
            assert str(pid) in warnings[0]["message"] and not alive(pid)
        assert records(orch, job)[-1]["data"]["output"] == {"alive": []}  # none of them met the retry
        before = records(orch, job)
        os.kill(paused.pid, signal.SIGCONT)  # its handler process is gone: it ends the run as a crashed one
        code, out, err = finish(paused)
    finally:
        stop(paused)
        for pid in first["left"]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert code == 0 and json.loads(out)["outcome"] == "lease_lost", (out, err)
    assert records(orch, job) == before
    assert not list((orch.settings.state_dir / "runs").iterdir())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and pidfds")
def test_a_live_run_whose_lease_record_was_deleted_is_killed_only_once_its_recovery_is_written(
        env, orch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``leases/`` is the only record of a run's renewals: deleted while a healthy run is past its claim's lease, a
    stale recovery reads the claim's expiry and recovers the live run (docs/worker.md, "Leases and heartbeats"). Its
    event is written first, then the run killed: its worker, alive, records nothing (``lease_lost``). Before
    2026-12-06 the run was killed first, its worker recorded the kill (``job_failed``, ``NO_TERMINAL_SIGNAL_EXIT``),
    and the recovery's append lost: a healthy run killed by no recovery, the job failed."""
    from orchestrator import recovery
    from orchestrator.worker import Worker, WorkerSettings

    job, started, _release = waiting_job(orch, tmp_path, max_attempts=1)

    def killing_slowly(run_id: str, **kw):  # as on a busy machine: the killed run's worker has the time to answer
        killed = real_kill(run_id, **kw)
        wait_until(lambda: len(orch.store.read(job)) > 2, timeout=5, what="an event after the claim")
        return killed

    real_kill = recovery.kill_run_processes
    monkeypatch.setattr(recovery, "kill_run_processes", killing_slowly)
    first = start_worker(env, "--once", "--json", "--worker-id", "first", "--lease-seconds", "1.5")
    rescuer = Worker(orch, WorkerSettings(worker_id="rescuer"))
    leases = orch.settings.state_dir / "leases"
    try:
        wait_until(started.exists, what="the run to start")
        handler_pid = json.loads(started.read_text())["pid"]
        claim_expiry = orch.load(job).state.lease_expires_at
        wait_until(lambda: orch.clock() > claim_expiry + 0.2 and leases.is_dir(),
                   what="the claim's lease to pass, renewed by heartbeats")

        def deleted_and_recovered() -> object:  # a heartbeat may write the record again before the read: again
            shutil.rmtree(leases, ignore_errors=True)
            return rescuer.recover_stale() or state(orch, job) != "running"

        assert wait_until(deleted_and_recovered, what="the recovery") == [job]
        code, out, err = finish(first)
    finally:
        stop(first)
    assert code == 0 and json.loads(out)["outcome"] == "lease_lost", (out, err)
    ev = records(orch, job)
    assert [e["type"] for e in ev] == ["job_submitted", "job_claimed", "stale_recovered"]
    assert ev[-1]["data"]["to"] == "failed" and ev[-1]["data"]["error_code"] == "NO_TERMINAL_SIGNAL_STALE"
    [recovered] = rescuer.recovered
    assert [w["code"] for w in recovered["warnings"]] == ["RUN_PROCESSES_KILLED"] and not alive(handler_pid)
    assert state(orch, job) == "failed"


def test_sigterm_lets_the_running_job_finish_and_claims_nothing_more(env, orch, tmp_path: Path) -> None:
    job, started, release = waiting_job(orch, tmp_path)
    proc = start_worker(env, "--stop-grace-seconds", "20")
    try:
        wait_until(started.exists, what="the job to start")
        later = orch.submit("t.echo", "later")
        proc.send_signal(signal.SIGTERM)
        release.write_text("go")
        code, _out, err = finish(proc)
    finally:
        stop(proc)
    assert code == 0, err
    assert state(orch, job) == "succeeded" and state(orch, later) == "queued"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_to_worker_once_stops_it_gracefully_exit_0_not_interrupted(env, orch, tmp_path: Path,
                                                                                 signum: int) -> None:
    """Every other command stops on SIGTERM or Ctrl-C with INTERRUPTED (143, 130); a worker, ``--once`` too, stops
    as a looping one does: its run handed back (``released``), exit 0 (README, exit codes 130 and 143)."""
    job, started, _release = waiting_job(orch, tmp_path)
    proc = start_worker(env, "--once", "--json", "--stop-grace-seconds", "0.3")
    code, out, err = signalled_once(proc, signum, started, "the job to start")
    assert code == 0, err
    assert json.loads(out) | {"run_id": None} == {"job_id": job, "run_id": None, "outcome": "released",
                                                   "state": "queued", "error_code": "WORKER_STOPPED", "details": {},
                                                   "warnings": [], "recovered": []}
    assert "INTERRUPTED" not in out + err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("once", [True, False], ids=["once", "looping"])
def test_a_stop_signal_while_the_worker_imports_its_handler_modules_is_a_stop_before_its_first_claim(
        env, orch, tmp_path: Path, signum: int, once: bool) -> None:
    """Not CONFIG_ERROR blaming the module (which the signal interrupted), nor INTERRUPTED: the worker's own stop,
    before it claimed anything (README, exit codes 0 and 75)."""
    started = tmp_path / "importing"
    (tmp_path / "slowimp.py").write_text(f"import pathlib, time\npathlib.Path({str(started)!r}).write_text('')\n"
                                         "time.sleep(30)\n")
    job = orch.submit("t.echo", "x")
    proc = start_worker({**env, "PYTHONPATH": f"{env['PYTHONPATH']}{os.pathsep}{tmp_path}"}, "--import", "slowimp",
                        "--json", *(["--once"] if once else []))
    code, out, err = signalled_once(proc, signum, started, "the module's import to start")
    line = json.loads(out)
    if once:
        assert (code, line) == (75, {"ran": False, "worker_id": line["worker_id"], "stopped": True, "recovered": []})
    else:
        assert (code, line["event"], line["jobs_run"]) == (0, "worker_stopped", 0), (out, err)
    assert "Traceback" not in err and "CONFIG_ERROR" not in out + err and "INTERRUPTED" not in out + err
    assert [r["type"] for r in records(orch, job)] == ["job_submitted"]


def test_sigterm_past_the_grace_period_kills_the_run_and_hands_the_job_back(env, orch, tmp_path: Path) -> None:
    job, started, _release = waiting_job(orch, tmp_path)
    proc = start_worker(env, "--stop-grace-seconds", "0.3", "--worker-id", "leaving")
    try:
        wait_until(started.exists, what="the job to start")
        pid = json.loads(started.read_text())["pid"]
        proc.send_signal(signal.SIGTERM)
        code, _out, err = finish(proc)
    finally:
        stop(proc)
    assert code == 0, err
    last = records(orch, job)[-1]
    assert last["type"] == "job_released" and last["data"]["error_code"] == "WORKER_STOPPED"
    st = orch.load(job).state
    assert (st.state, st.failures) == ("queued", 0)
    wait_until(lambda: not alive(pid), timeout=5, what="the killed handler to go away")
    audit = [json.loads(line.raw) for line in orch.store.read("@audit")]
    assert any(a["job_id"] == job and a["data"]["action"] == "job_released" for a in audit)


STOP_PARENT = {"command": {"argv": ["sh", "-c", "kill -TERM $PPID; exec sleep 30"]},  # $PPID: the worker
               "python": {"signal": int(signal.SIGTERM)}}
KILL_PARENT = {"command": {"argv": ["sh", "-c", "kill -KILL $PPID; exec sleep 30"]},
               "python": {"signal": int(signal.SIGKILL)}}


def supervised(env: dict[str, str], orch, job: str, *args: str, rounds: int = 12) -> list[int]:
    """Start a worker again each time one exits, as a service manager does, until ``job`` is over (at most
    ``rounds`` workers); the exit codes of the workers started."""
    codes = []
    for _ in range(rounds):
        if orch.status(job).state in ("failed", "succeeded"):
            break
        proc = start_worker(env, "--once", "--retry-base-seconds", "0", *args)
        codes.append(finish(proc, timeout=30)[0])
    return codes


@pytest.mark.parametrize("kind", ["command", "python"])
def test_a_job_whose_run_stops_its_worker_ends_failed_instead_of_stopping_every_worker_for_ever(
        env, orch, kind: str) -> None:
    """A run that sends SIGTERM to its own worker (its parent) makes it stop gracefully and hand the job back
    (``job_released``), which costs no attempt: every worker that picked the job up stopped, for ever. From the
    fourth run in a row that ends so, each counts as a failed attempt: ``max_attempts`` ends the loop."""
    job = orch.submit("command" if kind == "command" else "t.stop_worker", STOP_PARENT[kind], max_attempts=2)
    codes = supervised(env, orch, job, "--stop-grace-seconds", "0.3")
    ev = records(orch, job)
    ends = [(e["type"], e["data"].get("error_code")) for e in ev if e["type"] not in ("job_submitted", "job_claimed")]
    assert ends == [("job_released", "WORKER_STOPPED")] * 3 + [("job_failed", "WORKER_STOPPED")] * 2, ends
    assert codes == [0] * 5
    st = orch.load(job).state
    assert (st.state, st.failures, st.attempt) == ("failed", 2, 5)
    assert "4 runs in a row" in ev[-3]["data"]["error"] and "5 runs in a row" in ev[-1]["data"]["error"]
    assert "retry_at" in ev[-3]["data"] and "retry_at" not in ev[-1]["data"]
    audit = [json.loads(line.raw) for line in orch.store.read("@audit")]
    assert [a["data"]["action"] for a in audit if a["job_id"] == job] == ["job_released"] * 5


@pytest.mark.parametrize("kind", ["command", "python"])
def test_a_job_whose_run_kills_its_worker_is_recovered_as_a_failed_attempt_until_its_attempts_are_used_up(
        env, orch, kind: str) -> None:
    """SIGKILL (as a crash, or the out-of-memory killer, would end the worker): nothing is handed back, and stale
    recovery counts each run as a failed attempt, so ``max_attempts`` ends the loop."""
    job = orch.submit("command" if kind == "command" else "t.stop_worker", KILL_PARENT[kind], max_attempts=2)
    wait_until(lambda: supervised(env, orch, job, "--lease-seconds", "0.5", rounds=1) is not None
               and orch.status(job).state == "failed", timeout=60, what="the job to fail")
    ends = [(e["type"], e["data"].get("to")) for e in records(orch, job) if e["type"] != "job_claimed"]
    assert ends == [("job_submitted", None), ("stale_recovered", "queued"), ("stale_recovered", "failed")], ends
    assert orch.load(job).state.failures == 2


def test_several_worker_processes_run_each_job_exactly_once(env, orch) -> None:
    jobs = [orch.submit("t.echo", i) for i in range(24)]
    workers = [start_worker(env, "--idle-exit", "--worker-id", f"w{i}") for i in range(3)]
    try:
        for w in workers:
            code, _out, err = finish(w, timeout=60)
            assert code == 0, err
    finally:
        for w in workers:
            stop(w)
    for job in jobs:
        kinds = [e["type"] for e in records(orch, job)]
        assert kinds == ["job_submitted", "job_claimed", "job_succeeded"], kinds


@pytest.mark.parametrize("point, recovered", [
    ("worker.after_claim", True), ("worker.before_outcome", True), ("queue.after_append", True),
    ("worker.after_outcome", False),
])
def test_a_worker_crashing_at_each_write_point_loses_no_job(env, orch, point: str, recovered: bool) -> None:
    env = {**env, "ORCH_RETRY_BASE_SECONDS": "0"}
    job = orch.submit("t.echo", "x")
    crashed = run_script("worker", "--once", "--lease-seconds", "0.3", env={**env, "ORCH_CRASH_AT": point})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    wait_until(lambda: run_script("worker", "--once", env=env).returncode in (0, 75)
               and state(orch, job) == "succeeded", what=f"the job after a crash at {point}")
    kinds = [e["type"] for e in records(orch, job)]
    assert kinds.count("job_succeeded") == 1
    assert ("stale_recovered" in kinds) == recovered, kinds


def test_a_run_folder_left_by_a_worker_killed_before_its_outcome_is_removed_by_the_next_worker(env, orch) -> None:
    secret = "hunter2" + "xyz"  # printed by the run, never written in its input
    code = ("import os; print('password=hunter2' + 'xyz', 'Authorization: Bearer ' + 'hunter2' + 'xyz', flush=True);"
            "open(os.environ['ORCH_TERMINAL_FILE'], 'w').write('{\"status\": \"done\", \"summary\": \"ok\"}')")
    job = orch.submit("command", {"argv": [sys.executable, "-c", code]})
    env = {**env, "ORCH_RETRY_BASE_SECONDS": "0"}
    crashed = run_script("worker", "--once", "--lease-seconds", "0.3",
                         env={**env, "ORCH_CRASH_AT": "worker.before_outcome"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    runs = orch.settings.state_dir / "runs"
    assert [p.name for p in runs.glob("run-*/output.log")]  # what the killed worker left: the raw output
    wait_until(lambda: run_script("worker", "--once", env=env).returncode in (0, 75)
               and state(orch, job) == "succeeded", what="the job after the crash")
    assert not list(runs.glob("run-*"))
    files = [p for p in orch.settings.state_dir.rglob("*") if p.is_file()]
    assert not [p for p in files if secret.encode() in p.read_bytes()]


# -- a worker process adopts what a run leaves behind an exited parent, and ends it with the run --------------
ESCAPES = {  # each leaves a `sleep 300` outside the command's process group, holding no ORCH_RUN_ID of its run
    "cleared environment": 'setsid env -i sleep 300 & echo $! > "$1"',
    "another run id": 'ORCH_RUN_ID=run-0000000000000000 setsid sleep 300 & echo $! > "$1"',
    "double fork, cleared environment": '(env -i setsid sleep 300 & echo $! > "$1") ',
}
SLEEP_STARTED = ('while [ "$(cat /proc/$(cat "$1")/comm 2>/dev/null)" != sleep ]; do :; done; '
                 'printf \'{"status": "done", "summary": "ok"}\' > "$ORCH_TERMINAL_FILE"')


def escaping_command(orch, pidfile: Path, escape: str) -> str:
    return orch.submit("command", {"argv": ["sh", "-c", f"{escape}; {SLEEP_STARTED}", "sh", str(pidfile)]},
                       max_attempts=1)


@pytest.fixture
def pidfile(tmp_path: Path):
    path = tmp_path / "left.pid"
    yield path
    if path.exists() and alive(int(path.read_text())):
        os.kill(int(path.read_text()), signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreapers are Linux only")
@pytest.mark.parametrize("escape", list(ESCAPES))
def test_a_worker_process_ends_what_a_command_left_outside_its_group_even_without_the_runs_id(
        env, orch, pidfile: Path, escape: str) -> None:
    job = escaping_command(orch, pidfile, ESCAPES[escape])
    ran = run_script("worker", "--once", "--json", env=env)
    assert ran.returncode == 0, ran.stderr
    assert state(orch, job) == "succeeded"
    assert not alive(int(pidfile.read_text()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreapers are Linux only")
def test_a_worker_process_names_what_a_command_left_in_its_own_process_group_and_nothing_for_one_that_left_none(
        env, orch, pidfile: Path) -> None:
    """The worker command adopts what an exited command leaves; it lists the command's group only when it has
    adopted something, and names what the group's SIGTERM then ends."""
    left = orch.submit("command", {"argv": ["sh", "-c", 'sleep 300 & echo $! > "$1"; printf \'{"status": "done", '
                                            '"summary": "ok"}\' > "$ORCH_TERMINAL_FILE"', "sh", str(pidfile)]})
    clean = orch.submit("command", {"argv": ["sh", "-c", 'printf \'{"status": "done", "summary": "ok"}\' > '
                                             '"$ORCH_TERMINAL_FILE"']})
    ran = run_script("worker", "--max-jobs", "2", "--idle-exit", "--json", env=env)
    assert ran.returncode == 0, ran.stderr
    lines = {r["job_id"]: r for r in map(json.loads, ran.stdout.splitlines()) if "job_id" in r}
    pid = int(pidfile.read_text())
    assert not alive(pid)
    assert [w["code"] for w in lines[left]["warnings"]] == ["RUN_PROCESSES_KILLED"]
    assert f"(pid {pid})" in lines[left]["warnings"][0]["message"]
    assert lines[clean]["warnings"] == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreapers are Linux only")
def test_a_worker_process_spares_its_reused_handler_process_when_it_ends_what_a_command_left(
        env, orch, pidfile: Path) -> None:
    first = orch.submit("t.pid", None)
    command = escaping_command(orch, pidfile, ESCAPES["cleared environment"])
    last = orch.submit("t.pid", None)
    ran = run_script("worker", "--max-jobs", "3", "--idle-exit", "--json", env=env)
    assert ran.returncode == 0, ran.stderr
    assert [state(orch, j) for j in (first, command, last)] == ["succeeded"] * 3
    outputs = [orch.status(j).result["output"] for j in (first, last)]
    assert outputs[1] == {"pid": outputs[0]["pid"], "runs": 2}  # the same handler process served both
    assert not alive(int(pidfile.read_text()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreapers are Linux only")
@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_worker_process_ends_what_a_crashed_handler_process_left_outside_its_group_without_the_runs_id(
        env, orch, pidfile: Path, mode: str) -> None:
    job = orch.submit("t.escape_and_die", str(pidfile), max_attempts=1)
    ran = run_script("worker", "--once", "--json", env={**env, "ORCH_HANDLER_PROCESS": mode})
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert (result["job_id"], result["error_code"]) == (job, "NO_TERMINAL_SIGNAL_EXIT")
    assert not alive(int(pidfile.read_text()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreapers are Linux only")
def test_a_worker_process_ends_what_a_timed_out_command_left_outside_its_group_without_the_runs_id(
        env, orch, pidfile: Path) -> None:
    escape = ESCAPES["cleared environment"]
    job = orch.submit("command", {"argv": ["sh", "-c", f'{escape}; sleep 300', "sh", str(pidfile)]},
                      max_attempts=1, timeout=1.0)
    ran = run_script("worker", "--once", "--json", env=env)
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert (result["job_id"], result["error_code"]) == (job, "NO_TERMINAL_SIGNAL_TIMEOUT")
    assert not alive(int(pidfile.read_text()))


# -- what the worker process's own code starts (a module it imports, a thread of one) is not a run's ----------
COMMAND_DONE = 'printf \'{"status": "done", "summary": "ok"}\' > "$ORCH_TERMINAL_FILE"'


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreapers are Linux only")
def test_a_worker_process_spares_a_child_that_a_thread_of_an_imported_module_starts_while_a_command_runs(
        env, orch, tmp_path: Path, pidfile: Path) -> None:
    """A thread an imported module started (a metrics exporter, a watcher) may start processes at any time; one
    started while a command runs is the module's, not the command's leftover."""
    trigger = tmp_path / "trigger"
    (tmp_path / "starts_in_a_thread.py").write_text(
        "import os, subprocess, threading, time\n"
        "def later():\n"
        f"    while not os.path.exists({str(trigger)!r}):\n"
        "        time.sleep(0.005)\n"
        "    helper = subprocess.Popen(['sleep', '300'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        f"    open({str(pidfile)!r} + '.tmp', 'w').write(str(helper.pid))\n"
        f"    os.rename({str(pidfile)!r} + '.tmp', {str(pidfile)!r})\n"
        "threading.Thread(target=later, daemon=True).start()\n")
    script = f'touch "$1"; while [ ! -s "$2" ]; do sleep 0.01; done; {COMMAND_DONE}'
    job = orch.submit("command", {"argv": ["sh", "-c", script, "sh", str(trigger), str(pidfile)]})
    ran = run_script("worker", "--once", "--json",
                     env={**env, "PYTHONPATH": f"{env['PYTHONPATH']}{os.pathsep}{tmp_path}",
                          "ORCH_HANDLERS": "worker_handlers,starts_in_a_thread"})
    assert ran.returncode == 0, ran.stderr
    assert state(orch, job) == "succeeded"
    assert alive(int(pidfile.read_text()))


def _can_choose_the_next_pid() -> bool:
    try:
        with open("/proc/sys/kernel/ns_last_pid", "r+") as fh:
            fh.write(fh.read())
        return True
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreapers are Linux only")
@pytest.mark.skipif(not _can_choose_the_next_pid(), reason="needs /proc/sys/kernel/ns_last_pid (root)")
def test_a_worker_process_ends_a_leftover_given_the_pid_of_a_child_it_had_before_its_first_run(
        env, orch, tmp_path: Path, pidfile: Path) -> None:
    """The children a worker has before its first run (an imported module's) are spared; one that exits and is
    reaped frees its pid, and a run's leftover given that pid later is not spared for it."""
    trigger, freed = tmp_path / "trigger", tmp_path / "freed"
    (tmp_path / "frees_a_pid.py").write_text(
        "import os, subprocess, threading, time\n"
        "HELPER = subprocess.Popen(['sleep', '300'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "def later():\n"
        f"    while not os.path.exists({str(trigger)!r}):\n"
        "        time.sleep(0.005)\n"
        "    HELPER.kill()\n"
        "    HELPER.wait()\n"
        f"    open({str(freed)!r} + '.tmp', 'w').write(str(HELPER.pid))\n"
        f"    os.rename({str(freed)!r} + '.tmp', {str(freed)!r})\n"
        "threading.Thread(target=later, daemon=True).start()\n")
    script = ('touch "$1"; while [ ! -s "$2" ]; do sleep 0.01; done; '
              'echo $(($(cat "$2") - 1)) > /proc/sys/kernel/ns_last_pid; '
              f'setsid env -i sleep 300 & echo $! > "$3"; {SLEEP_STARTED.replace("$1", "$3")}')
    job = orch.submit("command", {"argv": ["sh", "-c", script, "sh", str(trigger), str(freed), str(pidfile)]},
                      max_attempts=1)
    ran = run_script("worker", "--once", "--json",
                     env={**env, "PYTHONPATH": f"{env['PYTHONPATH']}{os.pathsep}{tmp_path}",
                          "ORCH_HANDLERS": "worker_handlers,frees_a_pid"})
    assert ran.returncode == 0, ran.stderr
    assert state(orch, job) == "succeeded"
    if pidfile.read_text().strip() != freed.read_text().strip():
        pytest.skip("another process took the freed pid first")
    assert not alive(int(pidfile.read_text()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreapers are Linux only")
@pytest.mark.parametrize("how", ["same group", "session", "double fork"])
def test_a_worker_process_spares_a_process_that_a_module_imported_for_a_job_kind_started(
        env, orch, tmp_path: Path, pidfile: Path, how: str) -> None:
    """A ``module:function`` kind's module is imported in the worker process when a job of it is claimed, after
    the worker adopted orphans: what its import starts (a helper it keeps, a daemon in a session of its own, one
    re-parented to the worker by a double fork) is the module's, as it would be had the module been imported
    before the first run (``--import``), not a run's leftover."""
    start = {"same group": "subprocess.Popen(['sleep', '300'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid",
             "session": "subprocess.Popen(['sleep', '300'], start_new_session=True, stdout=subprocess.DEVNULL, "
                        "stderr=subprocess.DEVNULL).pid",
             "double fork": "int(subprocess.run(['sh', '-c', 'setsid sleep 300 >/dev/null 2>&1 & echo $!'], "
                            "capture_output=True, text=True).stdout)"}[how]
    (tmp_path / "daemon_at_import.py").write_text(
        "import subprocess\n"
        f"open({str(pidfile)!r}, 'w').write(str({start}))\n"
        "def run(ctx):\n"
        "    return {'status': 'done', 'summary': 'ok'}\n")
    first = orch.submit("daemon_at_import:run", None)
    command = orch.submit("command", {"argv": ["sh", "-c", COMMAND_DONE]})
    ran = run_script("worker", "--max-jobs", "2", "--idle-exit", "--json",
                     env={**env, "PYTHONPATH": f"{env['PYTHONPATH']}{os.pathsep}{tmp_path}"})
    assert ran.returncode == 0, ran.stderr
    assert [state(orch, j) for j in (first, command)] == ["succeeded"] * 2
    assert alive(int(pidfile.read_text()))


def paused_at(env: dict[str, str], point: str, *args: str) -> subprocess.Popen[str]:
    """``python -m orchestrator ARGS`` that stops itself (SIGSTOP, as Ctrl-Z or a frozen VM) at the ``nth`` pass of a
    crash point (``point``: ``name:nth``): a process paused in the middle of what it was doing, its locks held."""
    name, _, nth = point.partition(":")
    code = ("import os, signal; from orchestrator import faults; faults.arm(%r, lambda: os.kill(os.getpid(), "
            "signal.SIGSTOP), %d); from orchestrator.cli import main; main(prog_name='orchestrator')"
            % (name, int(nth)))
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=str(REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def signalled_once(proc: subprocess.Popen[str], signum: int, started: Path, what: str) -> tuple[int, str, str]:
    """Send ``signum`` to the worker once ``started`` exists; its exit code and output (it is killed if it hangs)."""
    try:
        wait_until(started.exists, what=what)
        proc.send_signal(signum)
        return finish(proc)
    finally:
        stop(proc)


def stopped(proc: subprocess.Popen[str]) -> bool:
    with open(f"/proc/{proc.pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_a_worker_paused_in_its_outcome_append_past_its_lease_stalls_no_other_job_nor_another_workers_stop(
        env, orch) -> None:
    """The paused worker holds its job's file lock (and pending lock) for as long as it is stopped: the other
    workers' stale recovery passes over that job (``LockHeldError``) instead of sleeping in ``flock`` for ever,
    so they run the other jobs, and SIGTERM stops them (before 2026-12-06: every worker hung in the recovery and
    ignored SIGTERM)."""
    job = orch.submit("t.echo", "held")
    paused = paused_at(env, "store.append.before_write:2", "worker", "--once", "--worker-id", "paused",
                       "--lease-seconds", "1")  # its claim is the first append, its outcome the second
    other = None
    try:
        wait_until(lambda: stopped(paused), what="the worker to stop itself inside its outcome's append")
        other = start_worker(env, "--worker-id", "other", "--lease-seconds", "1")
        time.sleep(1.5)  # past the paused run's lease: each pass of ``other`` now meets the held lock
        later = orch.submit("t.echo", "later")
        wait_until(lambda: state(orch, later) == "succeeded", what="the other job to run beside the held lock")
        assert state(orch, job) == "running"
        other.send_signal(signal.SIGTERM)
        code, _out, err = finish(other, timeout=10)
        assert code == 0, err
        os.kill(paused.pid, signal.SIGCONT)  # its outcome goes through: nobody recovered the job meanwhile
        code, out, err = finish(paused)
        assert code == 0, (out, err)
        assert state(orch, job) == "succeeded"
    finally:
        if alive(paused.pid):
            os.kill(paused.pid, signal.SIGCONT)
        stop(paused)
        stop(other)
