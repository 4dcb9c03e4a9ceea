"""``bench/postgres.py`` keeps working: a smoke-size run per system (peers only when installed)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from backends import require_pg

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("system", ["ours", "procrastinate", "dbos"])
def test_the_postgres_benchmark_runs_w1_w2_w3_at_smoke_size(system: str, tmp_path: Path, cli_env) -> None:
    url = require_pg()
    if system != "ours" and importlib.util.find_spec(system) is None:
        pytest.skip(f"{system} is not installed (pip install '.[bench-pg]' to compare with it)")
    out = tmp_path / "bench.json"
    env = {k: v for k, v in cli_env.items() if k not in ("ORCH_SIGNING_KEY", "BASE_PATH", "PROJECT_ID")}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "postgres.py"), "--url", url, "--systems", system,
                           "--workers", "1", "--w1-jobs", "5", "--w2-samples", "3", "--w3-samples", "2",
                           "--json", str(out)], env=env, capture_output=True, text=True, timeout=180, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    [row] = results["runs"]
    assert row["workers"] == 1 and "| system |" in proc.stdout
    assert row["w1"]["jobs"] == 5 and row["w1"]["jobs_per_s"] > 0, row
    assert row["w2"]["n"] == 3 and row["w2"]["p50"] > 0, row
    assert row["w3"]["n"] == 2 and row["w3"]["duplicate_executions"] >= 0, row
    if system == "ours":  # a peer's duplicates are its semantics, measured, not this test's business
        assert row["w3"]["duplicate_executions"] == 0, row


def test_a_job_costs_one_durable_commit_to_submit_and_two_to_run_on_postgres(tmp_path: Path, cli_env) -> None:
    """Submit: the event with its head record and index rows. Run: the claim (with the first lease)
    and the outcome (dropping the lease); the candidate reservation commits without a WAL flush.
    Each append is one statement, one round trip (the head it was decided from is checked as it moves)."""
    url = require_pg()
    out = tmp_path / "commits.json"
    env = {k: v for k, v in cli_env.items() if k not in ("ORCH_SIGNING_KEY", "BASE_PATH", "PROJECT_ID")}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "pg_commits.py"), "--url", url, "--jobs", "20",
                           "--json", str(out)], env=env, capture_output=True, text=True, timeout=180, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    per_job = json.loads(out.read_text())
    assert per_job["submit"]["durable_commits"] == 1
    assert per_job["run"]["durable_commits"] == 2
    assert per_job["run"]["async_commits"] == 1
    # per job, with the first job's one-off calls shared by 20: one round trip per append (two before)
    assert per_job["submit"]["round_trips"] < 1.5
    # the reservation with the job's read (one statement since 2026-12-02: two before, 4.1 a job), the claim, the
    # outcome (and the index-built check, once a second)
    assert per_job["run"]["round_trips"] < 4


def test_run_once_reads_no_other_running_job_at_every_pass_on_postgres(tmp_path: Path, cli_env) -> None:
    """With 3 jobs left running by other workers, each ``run_once`` costs what a job costs the loop: its stale
    recovery remembers their leases (``recovery.StaleWatch``). Before 2026-12-02 each pass also listed the
    running index and read each of those jobs and its lease: 11 round trips a job, not 4 (3 since the claim
    statement reads the job it reserves)."""
    url = require_pg()
    out = tmp_path / "commits.json"
    env = {k: v for k, v in cli_env.items() if k not in ("ORCH_SIGNING_KEY", "BASE_PATH", "PROJECT_ID")}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "pg_commits.py"), "--url", url, "--jobs", "20",
                           "--others", "3", "--once", "--json", str(out)], env=env, capture_output=True, text=True,
                          timeout=180, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    per_job = json.loads(out.read_text())
    assert per_job["run"]["durable_commits"] == 2
    assert per_job["run"]["round_trips"] < 4


def test_the_claim_statement_benchmark_runs_and_leaves_no_row(cli_env) -> None:
    url = require_pg()
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "pg_candidates.py"), "--url", url, "--queued", "50",
                           "--repeat", "2"], env=cli_env, capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    [row] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert row["queued"] == 50 and row["any_kind_ms"] > 0 and row["kind_mine_ms"] > 0, row
    from orchestrator.store.postgres import connect

    conn = connect(url, autocommit=True)
    try:
        assert conn.execute("SELECT count(*) FROM orch_ready WHERE project LIKE 'bench-cand-%'").fetchone()[0] == 0
    finally:
        conn.close()
