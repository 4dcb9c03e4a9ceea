"""What an on-call operator trips over when following the runbook with the real commands: an id the text
output shows must be an id the next command takes, the result to review must be on screen, and a check
that passed must say what it checked (docs/runbook.md sections A, B, E and Rollback)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import jobstates as js
from helpers import run_module, run_script
from orchestrator import Orchestrator
from orchestrator.clock import to_iso
from orchestrator.key_files import load_keyring

RUN_ID = "run-0123456789abcdef"  # the shape a worker gives run ids: "run-" and 16 hex digits


@pytest.fixture
def api(base: Path, cli_env: dict[str, str]) -> Orchestrator:
    return Orchestrator(base_path=base, project_id="proj", keyring=load_keyring(cli_env, announce=False))


def test_the_run_id_the_timeline_shows_is_one_audit_timeline_run_id_takes(api: Orchestrator, cli_env) -> None:
    job_id = js.waiting_human(api, run_id=RUN_ID)
    text = run_script("audit_timeline", "--job-id", job_id, env=cli_env, check=True).stdout
    shown = {line.split()[5] for line in text.splitlines() if " job_claimed " in line}
    assert shown == {RUN_ID}, text  # not cut to its first 14 characters
    proc = run_script("audit_timeline", "--run-id", shown.pop(), "--json", env=cli_env)
    assert proc.returncode == 0 and json.loads(proc.stdout)["job_id"] == job_id, proc.stdout + proc.stderr


def test_status_shows_the_output_and_artifacts_a_reviewer_must_look_at(api: Orchestrator, cli_env) -> None:
    job_id = api.submit("echo", {"text": "hi"}, audit=True)
    js.claim(api, job_id, RUN_ID)
    js.finish(api, job_id, "audit_requested", {"summary": "draft ready", "output": {"rows": 120},
                                               "artifacts": ["report.md", "notes/extra.txt"]})
    text = run_script("status", job_id, env=cli_env, check=True).stdout
    rows = dict(line.split(None, 1) for line in text.splitlines())
    assert rows["state"] == "awaiting_audit" and rows["summary"] == "draft ready"
    assert rows["output"] == '{"rows": 120}', text
    assert rows["artifacts"] == "report.md, notes/extra.txt", text


def test_status_cuts_a_long_output_and_says_where_the_whole_of_it_is(api: Orchestrator, cli_env) -> None:
    job_id = api.submit("echo", {"text": "hi"}, audit=True)
    js.claim(api, job_id, RUN_ID)
    js.finish(api, job_id, "audit_requested", {"summary": "big", "output": {"rows": list(range(1000))}})
    line = next(ln for ln in run_script("status", job_id, env=cli_env, check=True).stdout.splitlines()
                if ln.startswith("output"))
    assert len(line) < 300 and line.endswith("(status --json shows all of it)"), line


def test_status_says_a_running_jobs_lease_has_expired(api: Orchestrator, cli_env) -> None:
    expired = js.running(api, RUN_ID, lease=to_iso(time.time() - 60))
    live = js.running(api, "run-fedcba9876543210", lease=to_iso(time.time() + 3600))
    shown = {}
    for job_id in (expired, live):
        text = run_script("status", job_id, env=cli_env, check=True).stdout
        shown[job_id] = next(ln for ln in text.splitlines() if ln.startswith("lease_expires_at"))
    assert "expired" in shown[expired] and "worker --once" in shown[expired], shown
    assert "expired" not in shown[live], shown


def test_verify_against_an_anchor_says_it_checked_it_in_text_and_json(api: Orchestrator, cli_env,
                                                                      tmp_path: Path) -> None:
    js.waiting_human(api, run_id=RUN_ID)
    anchor = tmp_path / "anchor.json"
    created = json.loads(run_script("verify", "--export-head", str(anchor), "--json", env=cli_env,
                                    check=True).stdout)["exported"]["created_at"]
    proc = run_script("verify", "--against", str(anchor), "--json", env=cli_env, check=True)
    assert json.loads(proc.stdout)["against"] == {"path": str(anchor), "streams": 1, "created_at": created}
    text = run_script("verify", "--against", str(anchor), env=cli_env, check=True).stdout
    assert f"anchor {anchor} of {created} (1 stream(s)): nothing rolled back" in text, text
    assert "against" not in json.loads(run_script("verify", "--json", env=cli_env, check=True).stdout)


def test_revise_retried_after_the_same_output_says_these_notes(api: Orchestrator, cli_env) -> None:
    job_id = js.awaiting_audit(api, run_id=RUN_ID)
    api.revise(job_id, "shorter")
    js.claim(api, job_id, "run-fedcba9876543210")
    js.finish(api, job_id, "audit_requested", {"summary": "draft ready"})
    proc = run_module("control", "revise", job_id, "shorter", env=cli_env)
    assert proc.returncode == 0 and "was revised with these notes at" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("command", [["audit-timeline"], ["verify"], ["audit", "heal"]])
def test_a_job_id_given_bare_where_the_command_takes_job_id_names_the_option(api: Orchestrator, cli_env,
                                                                              command: list[str]) -> None:
    job_id = js.waiting_human(api, run_id=RUN_ID)  # `status J` and `control approve J` take it bare; these do not
    proc = run_module(*command, job_id, "--json", env=cli_env)
    error = json.loads(proc.stdout)
    assert proc.returncode == 2 and error["error"] == "USAGE_ERROR", proc.stdout
    assert f"--job-id {job_id}" in error["message"], error
    text = run_module(*command, job_id, env=cli_env)
    assert text.returncode == 2 and f"--job-id {job_id}" in text.stderr, text.stderr
    assert run_module(*command, "--job-id", job_id, "--bogus", env=cli_env).returncode == 2  # still an unknown option
