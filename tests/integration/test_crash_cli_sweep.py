"""Each command an operator or a worker's supervisor runs on the command line, SIGKILLed at a named crash point.

``orchestrator/reliability/crash_cli.py``: ``control approve|revise|resume|cancel``, ``resume-from-chat``, ``submit
--key``, ``audit heal``, ``import``, ``export``, ``keys rotate|revoke``, ``db migrate`` (PostgreSQL: skipped without
``ORCH_TEST_PG_URL``'s server, failed then with ``CI=true``), ``worker --once`` and a looping ``worker`` stopped by
SIGTERM or SIGINT, armed with ``ORCH_CRASH_AT``; here at one sampled pass of each point of ``crash_cli.QUICK_POINTS``
each passes, the long version (every pass of every point) in ``scripts/reliability_report.py``. The commands are
forked by a process that imported the command line once (``command_forks.py``), which must start, end and die as
``python -m orchestrator`` does.
"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from backends import require_pg
from orchestrator.reliability import crash, crash_cli, crash_cli_outputs
from orchestrator.reliability.command_forks import CommandForks
from orchestrator.reliability.common import new_project
from orchestrator.reliability.report import rows
from orchestrator.store.pg_schema import latest_version
from orchestrator.transfer import export_project

# what each command must be killed at in CI (crash_cli.QUICK_POINTS): a torn write, between its event and its audit
# entry, after the entry; a stopped worker's hand-back, a run's outcome; between the entries a heal writes; between an
# import's chunks and before its head records; an export's bundle half written, a key file half written (one of a
# rotation's three: private key, public key, active)
ACTION_POINTS = {"store.append.mid_write", "append.after_event", "append.after_audit_entry"}
WORKER_POINTS = ACTION_POINTS | {"worker.before_outcome"}
QUICK_PASSES = {
    "approve": ACTION_POINTS, "revise": ACTION_POINTS, "resume": ACTION_POINTS, "cancel": ACTION_POINTS,
    "resume-from-chat": ACTION_POINTS, "submit": {"store.append.mid_write", "append.after_event"},
    "audit-heal": {"store.append.mid_write", "audit.heal.before_entry"},
    "import": {"store.append.mid_write", "import.after_chunk", "import.before_head"},
    "export": {"export.after_stream"}, "keys-rotate": {"key_file.mid_write"}, "keys-revoke": {"key_file.mid_write"},
    "worker-once": {"store.append.mid_write", "append.after_event", "worker.before_outcome"},
    "worker-sigterm": WORKER_POINTS, "worker-sigint": WORKER_POINTS,
}


@pytest.mark.slow  # 36 kills, each a forked command, the command run again and a recovery: 12-30 s
def test_a_killed_command_loses_nothing_and_the_command_run_again_does_its_work_once(tmp_path: Path) -> None:
    """Without a PostgreSQL server the sweep leaves ``db migrate`` out (its own test below)."""
    result = crash_cli.sweep(tmp_path, points=crash_cli.QUICK_POINTS)
    assert list(result["passes"]) == [c for c in crash_cli.COMMANDS if c != "db-migrate"] == list(QUICK_PASSES)
    assert {command: set(passes) for command, passes in result["passes"].items()} == QUICK_PASSES
    assert result["crashed"] == result["runs"] == 36
    assert result["failed_runs"] == []
    assert result["again_ok"] == result["again_runs"] == 28  # all but the stopped workers', run again by the recovery
    assert (result["acked_lost"], result["jobs_lost"], result["finished_twice"]) == (0, 0, 0)
    assert all(ok for *_, ok in rows({"crash_cli": result}))


@pytest.mark.postgres
def test_a_killed_db_migrate_leaves_each_migration_applied_whole_or_not_and_run_again_completes_it(
        tmp_path: Path) -> None:
    """``db migrate`` of an empty database (of its own, on the test server) killed before a migration's version row:
    run again, it applies the rest and leaves the schema a clean run leaves, on which a job runs and verifies."""
    result = crash_cli.sweep(tmp_path, points=crash_cli.QUICK_POINTS, commands=("db-migrate",), pg_url=require_pg())
    assert result["passes"] == {"db-migrate": {"pg.migrate.before_record": latest_version()}}
    assert result["crashed"] == result["runs"] == result["again_ok"] == result["again_runs"] == 1
    assert result["failed_runs"] == []
    assert all(ok for *_, ok in rows({"crash_cli": result}))


def test_the_sweeps_checks_call_a_half_written_bundle_or_key_file_what_it_is(tmp_path: Path) -> None:
    """The checks the sweep relies on find what a command that wrote in place would leave: a bundle cut anywhere
    but at its end, or emptied; a public key file, a private key file or the revoked list cut in half."""
    project = new_project(tmp_path, "checks", keyring_signs=True)
    orch = project.orch()
    crash_cli_outputs.keys_set_up(project, orch)
    bundle = project.base.parent / crash_cli_outputs.EXPORTED
    with open(bundle, "wb") as out:
        export_project(orch, out)
    whole = bundle.read_bytes()
    assert crash_cli_outputs.bundle_problem(bundle, orch, None) == ""
    for cut in (0, 1, len(whole) // 2, len(whole) - 1):
        bundle.write_bytes(whole[:cut])
        assert crash_cli_outputs.bundle_problem(bundle, orch, whole + b"x") != "", cut
    assert crash_cli_outputs.keyring_state(project)[2] == ""
    active = project.keyring_folder / "active"
    for name in (f"{active.read_text().strip()}.pub", f"{active.read_text().strip()}.key", "revoked"):
        path = project.keyring_folder / name
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2 + 3])  # a revoked list cut after its first id and 3 bytes of the next
        assert crash_cli_outputs.keyring_state(project)[2] != "", name
        path.write_bytes(data)


def test_a_forked_command_exits_prints_and_dies_as_its_python_m_process_does(tmp_path: Path) -> None:
    """The sweep's commands are forked from a server (no import at each start): each command line here run as
    ``python -m orchestrator`` on one project and forked on another gives the same exit code and, when it fails, the
    same error; a crash point kills both; a worker stops gracefully on SIGINT, handing its job back."""
    real_project, forked_project = new_project(tmp_path, "real"), new_project(tmp_path, "forked")
    cases = [(["submit", "--kind", "rel.echo", "--key", "k1"], {}, 0),
             (["submit", "--kind", "rel.echo", "--key", "not an id"], {}, 3),
             (["submit", "--kind", "rel.echo", "--key", "k2"], {"ORCH_CRASH_AT": "append.after_event"}, -9),
             (["worker", "--once"], {}, 0)]
    err = tmp_path / "err"
    with CommandForks(forked_project.command_env()) as forks:
        for argv, extra, code in cases:
            real = subprocess.run([sys.executable, "-m", "orchestrator", *argv],
                                  env=real_project.command_env(**extra), capture_output=True, text=True, timeout=60)
            forked = forks.wait(forks.start(argv, forked_project.command_env(**extra), err), 60)
            assert (real.returncode, forked) == (code, code), (argv, real.stderr, err.read_text())
            if code not in (0, -9):
                assert err.read_text() == real.stderr
        started = forked_project.base.parent / "started"
        job_id = forked_project.orch().submit("rel.wait", {"started": str(started), "release": str(tmp_path / "no")})
        pid = forks.start(["worker", "--stop-grace-seconds", "0.2"], forked_project.command_env(), err)
        crash_cli._stop_once_started(pid, started, signal.SIGINT)
        assert forks.wait(pid, 60) == 0, err.read_text()
    assert forked_project.orch().status(job_id).state == "queued"


def test_the_cli_rows_fail_when_a_command_run_again_did_not_do_its_work() -> None:
    old = ["approve", "revise", "resume", "cancel", "worker-sigterm"]  # the commands of the sweep's first runs
    cli = {"mode": "sampled", "seeds": [0], "commands": old, "points": 5,
           "passes": {c: {"append.after_event": 1} for c in old}, "runs": 5, "crashed": 5,
           "acked_lost": 0, "jobs_lost": 0, "finished_twice": 0, "verify_problems": 0, "failed_runs": [],
           "again_runs": 4, "again_ok": 4}
    table = rows({"crash_cli": cli})
    assert table[0] == ("crash the CLI (control approve, revise, resume, cancel, a worker stopped by SIGTERM) at one "
                        "sampled pass of every point per seed (5 points x 1, seed 0): processes killed", "5/5", "all",
                        True)
    assert all(ok for *_, ok in table)
    again = [ok for figure, _, _, ok in rows({"crash_cli": {**cli, "again_ok": 3}}) if "run again" in figure]
    assert again == [False]
    every = rows({"crash_cli": {**cli, "commands": list(crash_cli.COMMANDS)}})[0][0]
    assert every.startswith("crash the CLI (control approve, revise, resume, cancel, resume-from-chat, submit --key, "
                            "audit heal, import, export, keys rotate, revoke, db migrate, worker --once, a worker "
                            "stopped by SIGTERM, one by SIGINT) at ")


def test_a_sweeps_points_count_each_point_of_each_command_as_the_crash_sweeps_count_each_point() -> None:
    """Until 2026-12-07 ``sweep_figures`` counted the command line's commands as its points, and ``crash_cli.sweep``
    wrote its own count over them."""
    by_command = {"control-approve": {"append.after_event": 1, "append.after_head": 1}, "worker": {"a": 2}}
    assert crash.sweep_figures(crash.EVERY_PASS, [], by_command)["points"] == 3
    assert crash.sweep_figures(crash.SAMPLED, [0], {"a": 3, "b": 27})["points"] == 2
