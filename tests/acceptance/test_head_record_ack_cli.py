"""The command lines of an event acknowledged although its head record could not be written: exit 0, the warning
on stderr and, with --json, in `"warnings"` (`HEAD_RECORD_NOT_WRITTEN`); the event and its audit entry durable,
`verify` passing, and the job's next event writing the record once it can (docs/runbook.md, "If you see this exit
code", 0). In-process: tests/integration/test_head_record_ack.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jobstates as js
import worker_process_fixtures
from helpers import run_module, run_script

from orchestrator.errors import HEAD_RECORD_NOT_WRITTEN
from orchestrator.store.base import AUDIT_STREAM, HEADS_AREA

env, orch = worker_process_fixtures.env, worker_process_fixtures.orch  # the fixtures of the worker-process tests


def block_head_record(orch, job_id: str) -> Path:
    """A folder holding an operator's file in the place of the job's head record (``heads/<job_id>``): the store
    never writes through it nor removes it, so each write of the record fails (``STORAGE_ERROR``, naming it), as
    on a disk that refuses it; a read finds no record there. The events file is written as ever."""
    path = orch.settings.state_dir / "heads" / job_id
    path.unlink(missing_ok=True)
    path.mkdir(parents=True)
    (path / "note").write_text("an operator's file")
    return path


def head_seq(orch, job_id: str) -> int | None:
    raw = orch.store.get_aux(HEADS_AREA, job_id)
    return None if raw is None else json.loads(raw)["seq"]


def verified(env, job_id: str) -> bool:
    """`verify --job-id` exits 0 and warns of nothing (an audited event without its entry would be a warning)."""
    done = run_module("verify", "--job-id", job_id, "--json", env=env)
    return done.returncode == 0 and json.loads(done.stdout)["warnings"] == []


def codes(data: dict) -> list[str]:
    return [w["code"] for w in data["warnings"]]


def test_control_approve_json_exits_0_with_the_warning_and_writes_the_audit_entry(env, orch) -> None:
    """Before: exit 10, STORAGE_ERROR ("nothing was acknowledged"), the job approved and its entry missing."""
    job = js.awaiting_audit(orch)
    block_head_record(orch, job)
    done = run_script("control", "approve", job, "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert (out["applied"], out["state"], out["event_seq"]) == (True, "succeeded", 4)
    assert codes(out) == [HEAD_RECORD_NOT_WRITTEN] and "is a directory that holds files" in out["warnings"][0]["message"]
    assert f"{HEAD_RECORD_NOT_WRITTEN}: event 4 (job_approved) of job {job} and its audit entry are durable" in done.stderr
    assert orch.status(job).state == "succeeded" and verified(env, job)
    again = run_script("control", "approve", job, "--json", env=env)  # an operator who tries again
    assert again.returncode == 0 and json.loads(again.stdout)["already_applied"] and codes(json.loads(again.stdout)) == []
    assert len(orch.load(job).events) == 4


def test_control_resume_exits_0_and_the_jobs_claim_writes_its_head_record_once_it_can(env, orch) -> None:
    job = js.waiting_human(orch, job_id=orch.submit("t.ask", {}))
    blocked = block_head_record(orch, job)
    done = run_script("control", "resume", job, "blue", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"resumed job {job} (event 4); state is now queued"
    assert HEAD_RECORD_NOT_WRITTEN in done.stderr and "nothing is to be done again" in done.stderr.lower()
    assert orch.status(job).state == "queued" and verified(env, job)
    shutil.rmtree(blocked)  # the operator moves it away
    ran = run_script("worker", "--once", "--json", env=env)
    assert ran.returncode == 0, ran.stderr
    assert (json.loads(ran.stdout)["state"], codes(json.loads(ran.stdout))) == ("succeeded", [])
    assert head_seq(orch, job) == len(orch.load(job).events) == 6 and verified(env, job)


def test_resume_from_chat_json_exits_0_with_the_warning(env, orch) -> None:
    job = js.waiting_human(orch)
    block_head_record(orch, job)
    done = run_script("resume_from_chat", job, f"job_id: {job}; go ahead", "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert (out["applied"], out["state"], codes(out)) == (True, "queued", [HEAD_RECORD_NOT_WRITTEN])
    assert verified(env, job)


def test_worker_once_json_runs_the_job_and_exits_0_with_the_claims_and_outcomes_warnings(env, orch) -> None:
    """Before: the claim raised, exit 10, the job claimed and left to stale recovery (an attempt spent)."""
    job = orch.submit("t.ask", {})
    blocked = block_head_record(orch, job)
    done = run_script("worker", "--once", "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert (out["job_id"], out["outcome"]) == (job, "waiting_human")
    assert codes(out) == [HEAD_RECORD_NOT_WRITTEN] * 2  # the claim's and the outcome's
    assert "(job_claimed)" in out["warnings"][0]["message"] and "(human_input_requested)" in out["warnings"][1]["message"]
    assert done.stderr.count(f"{HEAD_RECORD_NOT_WRITTEN}: ") == 2
    assert js.event_types(orch, job) == ["job_submitted", "job_claimed", "human_input_requested"]  # the outcome once
    assert verified(env, job)
    shutil.rmtree(blocked)
    resumed = run_script("control", "resume", job, "green", "--json", env=env)
    assert resumed.returncode == 0 and codes(json.loads(resumed.stdout)) == []
    assert head_seq(orch, job) == 4 and verified(env, job)


def test_submit_json_exits_0_with_the_warning_and_the_same_key_names_the_same_job(env, orch) -> None:
    from orchestrator.submitted import key_job_id

    job = key_job_id(orch.project_id, "k1")
    block_head_record(orch, job)
    args = ("--kind", "t.echo", "--input", "{}", "--key", "k1", "--json")
    first, second = run_script("submit", *args, env=env), run_script("submit", *args, env=env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert (json.loads(first.stdout)["created"], codes(json.loads(first.stdout))) == (True, [HEAD_RECORD_NOT_WRITTEN])
    assert json.loads(second.stdout) == {"job_id": job, "created": False, "warnings": []}
    assert list(orch.store.job_ids()) == [job] and verified(env, job)


def test_audit_heal_writes_the_head_record_of_a_finished_job_left_behind_its_events(env, orch) -> None:
    """A job approved while its head record could not be written has no next event to write it: `audit heal` does,
    once what was in its place is moved away; run again, it writes nothing. Before 2026-12-04 the record stayed
    behind for good (accepted, but a cut of the last event went unseen by it)."""
    job, other = js.awaiting_audit(orch), orch.submit("t.echo", {})
    blocked = block_head_record(orch, job)
    done = run_script("control", "approve", job, env=env)
    assert done.returncode == 0 and HEAD_RECORD_NOT_WRITTEN in done.stderr, done.stderr
    shutil.rmtree(blocked)  # the operator moves it away; the job is final: nothing comes next
    assert head_seq(orch, job) is None and head_seq(orch, other) == 1
    healed = run_module("audit", "heal", "--json", env=env)
    assert healed.returncode == 0, healed.stderr
    assert json.loads(healed.stdout) == {"jobs": 2, "written": 0, "audit_seqs": [], "head_records": [job],
                                         "audit_head_record": False, "warnings": []}
    assert head_seq(orch, job) == 4 and verified(env, job)
    again = run_module("audit", "heal", env=env)
    assert again.returncode == 0
    assert again.stdout.strip() == "checked 2 job(s); wrote 0 missing audit entries and 0 head record(s) behind their events"


def test_audit_heal_writes_the_audit_logs_own_head_record_left_behind_its_entries(env, orch) -> None:
    """The audit log's record failed after an approval's entry (a folder in its place): once that is moved away,
    `audit heal` writes it (``"audit_head_record": true``), and the next heal writes nothing."""
    job = js.awaiting_audit(orch)
    blocked = orch.settings.state_dir / "audit-head" / "audit"
    blocked.unlink(missing_ok=True)
    blocked.mkdir(parents=True)
    (blocked / "note").write_text("an operator's file")
    done = run_script("control", "approve", job, "--json", env=env)
    assert done.returncode == 0 and codes(json.loads(done.stdout)) == [HEAD_RECORD_NOT_WRITTEN], done.stderr
    shutil.rmtree(blocked)
    healed = run_module("audit", "heal", "--json", env=env)
    assert healed.returncode == 0, healed.stderr
    assert json.loads(healed.stdout)["audit_head_record"] is True
    entries = len(orch.store.read(AUDIT_STREAM))
    assert json.loads(orch.store.get_aux("audit-head", "audit"))["seq"] == entries and verified(env, job)
    again = run_module("audit", "heal", env=env)
    assert again.returncode == 0 and again.stdout.strip().endswith("and 0 head record(s) behind their events")
