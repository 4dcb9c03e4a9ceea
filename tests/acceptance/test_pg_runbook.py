"""The runbook flow on PostgreSQL, through the real scripts, with ORCH_STORE_URL set and nothing else changed."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from backends import drop_project, require_pg, unique_project
from helpers import REPO, run_script

pytestmark = pytest.mark.postgres


@pytest.fixture
def env(cli_env: dict[str, str]):
    url = require_pg()
    project = unique_project("rb")
    yield {**cli_env, "ORCH_STORE_URL": url, "PROJECT_ID": project,
           "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "ORCH_HANDLERS": "worker_handlers"}
    drop_project(url, project)


def ok(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_script(name, *args, env=env, check=True)


def state(job: str, env: dict[str, str]) -> dict:
    return json.loads(ok("status", job, "--json", env=env).stdout)


def test_the_runbook_flow_works_the_same_on_postgres(env: dict[str, str]) -> None:
    asking = ok("submit", "--kind", "t.ask", "--input", "{}", env=env).stdout.strip()
    assert state(asking, env)["state"] == "queued"
    assert run_script("worker", "--once", env=env).returncode == 0
    st = state(asking, env)
    assert st["state"] == "waiting_human" and st["question"] == "blue or green?"
    message = f"job_id: {asking}; green"
    assert "resumed job" in ok("resume_from_chat", asking, message, env=env).stdout
    assert "already applied" in ok("resume_from_chat", asking, message, env=env).stdout
    assert run_script("worker", "--once", env=env).returncode == 0
    assert state(asking, env)["state"] == "succeeded"

    audited = ok("submit", "--kind", "t.echo", "--input", '"draft"', "--audit", env=env).stdout.strip()
    assert run_script("worker", "--once", env=env).returncode == 0
    assert state(audited, env)["state"] == "awaiting_audit"
    assert json.loads(ok("control", "approve", audited, "--json", env=env).stdout)["state"] == "succeeded"

    doomed = ok("submit", "--kind", "t.echo", "--input", '"x"', env=env).stdout.strip()
    ok("control", "cancel", doomed, "--reason", "wrong input", env=env)
    assert run_script("worker", "--once", env=env).returncode == 75  # the cancel removed it from the queue

    timeline = json.loads(ok("audit_timeline", "--job-id", audited, "--json", env=env).stdout)
    assert timeline["ok"] and ("audit", "approve") in [(ln["source"], ln["what"]) for ln in timeline["lines"]]
    assert ok("verify", env=env).returncode == 0
    listed = {j["job_id"]: j["state"] for j in json.loads(ok("status", "--all", "--json", env=env).stdout)["jobs"]}
    assert listed == {asking: "succeeded", audited: "succeeded", doomed: "cancelled"}
    assert "stalled_count" in ok("metrics", "--json", env=env).stdout
