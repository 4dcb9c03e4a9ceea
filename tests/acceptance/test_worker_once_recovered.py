"""`worker --once` shows the stale jobs it recovered before its claim: with `--json` under `recovered` in its one
object (an error's `details` included), in text one line each on stderr, as a looping worker prints them (with
`--json` also in a `recovered` line) (docs/decisions.md, "worker --once shows what its stale recovery did")."""
from __future__ import annotations

import json

import jobstates as js
from helpers import run_script
from worker_process_fixtures import env, orch  # noqa: F401  (fixtures)

EXPIRED = "2020-01-01T00:00:00.000000Z"  # a lease long past: its worker is gone


def stale(orch, *, max_attempts: int) -> str:
    """A job claimed by a worker that died: running, its lease expired."""
    job_id = orch.submit("t.echo", {"x": 1}, max_attempts=max_attempts)
    js.claim(orch, job_id, "run-dead", worker="dead-worker", lease=EXPIRED)
    return job_id


def test_once_json_with_nothing_runnable_lists_each_job_it_recovered_and_to_which_state(env, orch) -> None:
    retried, failed = stale(orch, max_attempts=3), stale(orch, max_attempts=1)
    proc = run_script("worker", "--once", "--json", env=env)
    assert proc.returncode == 75, proc.stderr
    out = json.loads(proc.stdout)  # still one object
    assert out["ran"] is False and out["worker_id"]
    by_job = {r["job_id"]: r for r in out["recovered"]}
    assert set(by_job) == {retried, failed}
    assert by_job[retried]["to"] == "queued" and by_job[retried]["retry_at"] == orch.status(retried).retry_at
    assert by_job[failed]["to"] == "failed" and by_job[failed]["retry_at"] is None
    for record in by_job.values():
        assert record["run_id"] == "run-dead" and record["stale_worker_id"] == "dead-worker"
        assert record["lease_expired_at"] == EXPIRED and record["artifacts"] == []
    assert orch.status(retried).state == "queued" and orch.status(failed).state == "failed"


def test_once_json_that_ran_a_job_keeps_its_keys_and_adds_what_it_recovered(env, orch) -> None:
    dead = stale(orch, max_attempts=1)
    job = orch.submit("t.echo", {"x": 2})
    proc = run_script("worker", "--once", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["job_id"] == job and out["outcome"] == "succeeded" and out["state"] == "succeeded"
    assert {"run_id", "error_code", "details"} <= set(out)  # the keys it had
    assert [(r["job_id"], r["to"]) for r in out["recovered"]] == [(dead, "failed")]


def test_once_json_that_recovered_nothing_says_so_with_an_empty_list(env, orch) -> None:
    job = orch.submit("t.echo", {"x": 2})
    ran = json.loads(run_script("worker", "--once", "--json", env=env).stdout)
    idle = json.loads(run_script("worker", "--once", "--json", env=env).stdout)
    assert ran["job_id"] == job and ran["recovered"] == [] and idle == {**idle, "ran": False, "recovered": []}


def test_once_json_that_exits_11_names_what_it_recovered_in_the_errors_details(env, orch) -> None:
    dead = stale(orch, max_attempts=1)
    orch.submit("nosuchkind", {})
    proc = run_script("worker", "--once", "--json", env=env)
    assert proc.returncode == 11, proc.stderr
    error = json.loads(proc.stdout)
    assert error["error"] == "HANDLER_NOT_FOUND" and "nosuchkind" in error["details"]["kinds"]
    assert [(r["job_id"], r["to"]) for r in error["details"]["recovered"]] == [(dead, "failed")]


def test_once_text_says_on_stderr_one_line_per_recovered_job_with_its_retry_time(env, orch) -> None:
    retried, failed = stale(orch, max_attempts=3), stale(orch, max_attempts=1)
    proc = run_script("worker", "--once", env=env)
    assert proc.returncode == 75 and proc.stdout == "nothing to run\n", proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("recovered stale job ")]
    assert sorted(lines) == sorted([f"recovered stale job {retried} -> queued (retry at {orch.status(retried).retry_at})",
                                    f"recovered stale job {failed} -> failed"])


def test_once_with_nothing_runnable_names_the_jobs_running_under_a_lease_not_yet_expired(env, orch) -> None:
    """A `worker --once` run again after one died holding a job said only "nothing to run" (until the twenty-ninth
    session): not that the job waits for its lease to expire, nor until when."""
    live = orch.submit("t.echo", {"x": 1})
    js.claim(orch, live, "run-gone", worker="gone-worker", lease="2099-01-01T00:00:00.000000Z")
    proc = run_script("worker", "--once", "--json", env=env)
    assert proc.returncode == 75, proc.stderr
    assert json.loads(proc.stdout)["leased"] == [{"job_id": live, "lease_expires_at": "2099-01-01T00:00:00.000000Z"}]
    text = run_script("worker", "--once", env=env)
    assert text.returncode == 75
    assert (f"nothing to run; 1 job running under a lease ({live} until 2099-01-01T00:00:00.000000Z): a worker "
            "recovers a job whose worker is gone once its lease expired") in text.stdout
