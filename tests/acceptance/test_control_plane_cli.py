"""The operator's side of the runbook, through the real scripts as subprocesses."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import jobstates as js
from helpers import REPO, run_script, submitted_as_before
from orchestrator import Orchestrator
from orchestrator.key_files import load_keyring


@pytest.fixture
def api(base: Path, cli_env: dict[str, str]) -> Orchestrator:
    """The Python API on the same store and key the scripts use (to play the worker's part)."""
    return Orchestrator(base_path=base, project_id="proj", keyring=load_keyring(cli_env, announce=False))


def ok(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_script(name, *args, env=env, check=True)


def as_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout)


def test_the_runbook_flow_from_submit_to_metrics(api: Orchestrator, cli_env: dict[str, str]) -> None:
    env = cli_env
    # submit + status
    audited = as_json(ok("submit", "--kind", "echo", "--input", '{"text": "draft"}', "--audit", "--json", env=env))["job_id"]
    assert as_json(ok("status", audited, "--json", env=env))["state"] == "queued"
    # the worker's part: run it to awaiting_audit; the operator revises, then approves the re-run
    js.awaiting_audit(api, run_id="run-a1", job_id=audited)
    revised = as_json(ok("control", "revise", audited, "add a summary", "--json", env=env))
    assert revised["applied"] and revised["state"] == "queued"
    js.awaiting_audit(api, run_id="run-a2", job_id=audited)
    approved = as_json(ok("control", "approve", audited, "--note", "LGTM", "--json", env=env))
    assert approved["applied"] and approved["state"] == "succeeded"
    assert "already applied" in ok("control", "approve", audited, env=env).stdout

    # resume twice with the same answer: one event
    asking = js.waiting_human(api, run_id="run-h1")
    first = ok("control", "resume", asking, "yes, go ahead", env=env)
    second = ok("control", "resume", asking, "yes, go ahead", "--json", env=env)
    assert "resumed job" in first.stdout and as_json(second)["already_applied"] is True
    assert js.event_types(api, asking).count("job_resumed") == 1
    conflict = run_script("control", "resume", asking, "no", env=env)
    assert conflict.returncode == 5 and "ACTION_CONFLICT" in conflict.stderr

    # resume_from_chat, pasted from a Chinese chat client, then again: one event
    chat = js.waiting_human(api, run_id="run-c1")
    message = f"JOB_ID：{chat}；继续部署"
    assert "resumed job" in ok("resume_from_chat", chat, message, env=env).stdout
    assert "already applied" in ok("resume_from_chat", chat, message, env=env).stdout
    assert api.load(chat).state.answers == ("继续部署",)

    # cancel a running job
    busy = js.running(api, run_id="run-r1")
    assert as_json(ok("control", "cancel", busy, "--reason", "wrong input", "--json", env=env))["state"] == "cancelled"

    # audit_timeline by job and by run
    tl = as_json(ok("audit_timeline", "--job-id", audited, "--json", env=env))
    kinds = [(ln["source"], ln["what"]) for ln in tl["lines"]]
    assert ("event", "job_revised") in kinds and ("audit", "revise") in kinds and ("audit", "approve") in kinds
    assert kinds.index(("event", "job_revised")) < kinds.index(("audit", "revise")) < kinds.index(("event", "job_approved"))
    assert tl["ok"] and {ln["status"] for ln in tl["lines"]} == {"ok"}
    by_run = as_json(ok("audit_timeline", "--run-id", "run-a2", "--json", env=env))
    assert by_run["job_id"] == audited and {ln["run_id"] for ln in by_run["lines"]} == {"run-a2"}
    assert ("audit", "approve") in [(ln["source"], ln["what"]) for ln in by_run["lines"]]
    table = ok("audit_timeline", "--job-id", audited, env=env).stdout
    assert "job_approved" in table and "STATUS" in table and "OK: every line verified" in table
    only = as_json(ok("audit_timeline", "--job-id", audited, "--action", "approve", "--json", env=env))
    assert {ln["what"] for ln in only["lines"]} == {"approve", "job_approved"}

    # metrics: table, json, prometheus
    m = as_json(ok("metrics", "--project-id", "proj", "--json", env=env))
    assert m["counts"]["succeeded"] == 1 and m["counts"]["cancelled"] == 1 and m["counts"]["queued"] == 2
    assert m["stalled_count"] == 0 and m["resume_success_rate"] is None and m["alerts"] == []
    assert "stalled_count" in ok("metrics", "--project-id", "proj", env=env).stdout
    prom = ok("metrics", "--project-id", "proj", "--format", "prometheus", env=env).stdout
    assert 'orchestrator_jobs{project="proj",state="succeeded"} 1' in prom
    assert "# TYPE orchestrator_stalled_jobs gauge" in prom

    # and verify agrees with everything the control plane wrote
    verified = as_json(run_script("verify", "--json", env=env))
    assert verified["ok"] and verified["warnings"] == []


def test_audit_timeline_refuses_filters_that_could_only_match_nothing(api: Orchestrator, cli_env: dict[str, str]) -> None:
    job_id, other = js.waiting_human(api, run_id="run-mine"), js.running(api, run_id="run-theirs")
    proc = run_script("audit_timeline", "--job-id", job_id, "--action", "approved", env=cli_env)
    assert proc.returncode == 2 and "'approved' is not one of 'approve'" in proc.stderr
    assert "run_refused" in ok("audit_timeline", "-h", env=cli_env).stdout  # the actions are listed in the help
    proc = run_script("audit_timeline", "--run-id", "../x", "--json", env=cli_env)
    assert proc.returncode == 3 and as_json(proc)["error"] == "INVALID_ID"
    proc = run_script("audit_timeline", "--job-id", job_id, "--run-id", "run-theirs", "--json", env=cli_env)
    assert proc.returncode == 4 and as_json(proc)["error"] == "RUN_NOT_FOUND"
    assert as_json(ok("audit_timeline", "--run-id", "run-theirs", "--json", env=cli_env))["job_id"] == other


def test_human_output_shows_control_characters_escaped_so_handler_text_cannot_forge_lines(
        api: Orchestrator, cli_env: dict[str, str]) -> None:
    forged = "Deploy?\nstate            succeeded\r\x1b[2K\u2028x"
    job_id = js.waiting_human(api, question=forged)
    lines = ok("status", job_id, env=cli_env).stdout.splitlines()
    assert [ln for ln in lines if ln.startswith("state")] == ["state            waiting_human"]
    assert "question         Deploy?\\nstate            succeeded\\r\\x1b[2K\\u2028x" in lines
    assert as_json(ok("status", job_id, "--json", env=cli_env))["question"] == forged  # JSON keeps the text
    operator = {**cli_env, "LOGNAME": "ops\nstate            succeeded"}  # the actor of the audit trail
    ok("control", "resume", job_id, "yes\nstate            succeeded", env=operator)
    again = ok("control", "resume", job_id, "yes\nstate            succeeded", env=cli_env).stdout
    assert "already applied" in again and len(again.splitlines()) == 1  # it names the first resume's actor
    conflict = run_script("control", "resume", job_id, "no", env=cli_env)
    assert conflict.returncode == 5 and len(conflict.stderr.splitlines()) == 1
    lines = ok("audit_timeline", "--job-id", job_id, env=cli_env).stdout.splitlines()
    assert len(lines) == 2 + 5 + 1 and not any(ln.startswith("state") for ln in lines)  # head, 4 events + 1 entry, OK
    submitted_as_before(api, ["echo\nINJECTED"])
    assert len(ok("status", "--all", env=cli_env).stdout.splitlines()) == 1 + 2


def test_a_blind_retry_after_the_job_asks_the_same_again_writes_nothing_and_again_answers_it(
        api: Orchestrator, cli_env: dict[str, str]) -> None:
    job_id = js.waiting_human(api, run_id="run-1")
    ok("control", "resume", job_id, "yes", env=cli_env)
    js.waiting_human(api, run_id="run-2", job_id=job_id)  # the re-run asks exactly the same again
    retry = as_json(ok("control", "resume", job_id, "yes", "--json", env=cli_env))
    assert retry["already_applied"] is True and retry["state"] == "waiting_human" and "--again" in retry["message"]
    message = f"job_id: {job_id}; yes"
    assert "already applied" in ok("resume_from_chat", job_id, message, env=cli_env).stdout
    assert "resumed job" in ok("resume_from_chat", job_id, message, "--again", env=cli_env).stdout
    assert api.load(job_id).state.answers == ("yes", "yes")


def test_there_is_no_token_option(api: Orchestrator, cli_env: dict[str, str]) -> None:
    job_id = js.waiting_human(api)
    for args in (["resume", job_id, "yes", "--token", "x"], ["approve", job_id, "--token", "x"],
                 ["cancel", "--token", "x", job_id]):
        proc = run_script("control", *args, env=cli_env)
        assert proc.returncode == 2 and "No such option" in proc.stderr
    assert js.event_types(api, job_id)[-1] == "human_input_requested"


def test_a_refused_action_exits_non_zero_with_a_clear_code(api: Orchestrator, cli_env: dict[str, str]) -> None:
    job_id = api.submit("echo", {})
    proc = run_script("control", "approve", job_id, "--json", env=cli_env)
    assert proc.returncode == 5 and as_json(proc)["error"] == "INVALID_TRANSITION"
    assert run_script("control", "resume", "nope", "x", env=cli_env).returncode == 4
    assert run_script("control", "resume", "../etc", "x", env=cli_env).returncode == 3
    assert js.event_types(api, job_id) == ["job_submitted"]


def test_a_text_given_twice_is_a_usage_error_naming_the_options(api: Orchestrator, cli_env: dict[str, str],
                                                               tmp_path: Path) -> None:
    job_id = api.submit("echo", {})
    (tmp_path / "why.txt").write_text("why")
    for given, shown in (("why",), "an argument"), (("--text-file", str(tmp_path / "why.txt")), "--text-file"):
        for option in ("--reason", "--note"):
            proc = run_script("control", "cancel", job_id, *given, option, "because", env=cli_env)
            assert proc.returncode == 2, proc.stderr
            assert "as an argument, with --text-file or with --note or --reason" in proc.stderr, proc.stderr
            assert f"(here {shown} and --note/--reason)" in proc.stderr, proc.stderr
    assert js.event_types(api, job_id) == ["job_submitted"]


@pytest.mark.parametrize("args", [["resume", "{id}", "yes", "--note", "n\udcff"], ["cancel", "{id}", "why \udcff"],
                                  ["approve", "{id}", "ok \udcff"], ["resume", "{id}", "yes \udcff"]])
def test_a_control_text_whose_bytes_are_not_utf8_is_refused_before_anything_is_written(
        api: Orchestrator, cli_env: dict[str, str], args: list[str]) -> None:
    # bytes that are not UTF-8 on the command line reach Python as lone surrogates, which cannot be signed
    job_id = js.awaiting_audit(api) if args[0] == "approve" else js.waiting_human(api)
    before = js.event_types(api, job_id)
    proc = run_script("control", *[a.format(id=job_id) for a in args], "--json", env=cli_env)
    assert proc.returncode == 3 and as_json(proc)["error"] == "INVALID_INPUT", (proc.stdout, proc.stderr[-300:])
    assert js.event_types(api, job_id) == before
    assert ok("verify", "--json", env=cli_env).returncode == 0 and not as_json(ok("verify", "--json", env=cli_env))["warnings"]


@pytest.mark.parametrize("message", [
    "job_id: {id}; yes", "JOB_ID:{id};yes", "Job Id ： {id} ； yes", "job-id：{id}；yes", "jobid: `{id}` yes",
])
def test_resume_from_chat_accepts_the_forms_chat_clients_paste(api: Orchestrator, cli_env, message: str) -> None:
    job_id = js.waiting_human(api)
    proc = run_script("resume_from_chat", job_id, message.format(id=job_id), "--json", env=cli_env)
    assert proc.returncode == 0, proc.stderr
    assert api.load(job_id).state.answers == ("yes",)


def test_resume_from_chat_refuses_a_message_naming_another_job(api: Orchestrator, cli_env) -> None:
    mine, other = js.waiting_human(api), js.waiting_human(api)
    proc = run_script("resume_from_chat", mine, f"job_id: {other}; yes", "--json", env=cli_env)
    assert proc.returncode == 3 and as_json(proc)["error"] == "JOB_ID_MISMATCH"
    bad = run_script("resume_from_chat", mine, "yes please", env=cli_env)
    assert bad.returncode == 3 and "CHAT_MESSAGE_INVALID" in bad.stderr
    assert js.event_types(api, mine)[-1] == js.event_types(api, other)[-1] == "human_input_requested"


@pytest.mark.parametrize("message", ["job_id: {id}; job_id: «{id}»;", "job_id: {id};\njob_id: 「{id}」\n",
                                     "job_id: {id}, job_id: '{id}', job_id: \"{id}\","])
def test_resume_from_chat_refuses_a_message_that_only_repeats_its_own_key_in_other_quotes(
        api: Orchestrator, cli_env, message: str) -> None:
    job_id = js.waiting_human(api)
    proc = run_script("resume_from_chat", job_id, message.format(id=job_id), "--json", env=cli_env)
    assert proc.returncode == 3 and as_json(proc)["error"] == "CHAT_MESSAGE_INVALID", proc.stdout
    assert "holds no answer" in as_json(proc)["message"]
    assert js.event_types(api, job_id)[-1] == "human_input_requested"


def test_operators_racing_the_same_resume_in_processes_write_one_event(api: Orchestrator, cli_env) -> None:
    job_id = js.waiting_human(api)
    script = str(REPO / "scripts" / "control.py")
    procs = [subprocess.Popen([sys.executable, script, "resume", job_id, "ship it", "--json"], env=cli_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, outs
    results = [json.loads(o) for o, _ in outs]
    assert sum(r["applied"] for r in results) == 1
    assert js.event_types(api, job_id).count("job_resumed") == 1
    resume_entries = [ln for ln in (api.settings.state_dir / "audit" / "audit_events.jsonl").read_text().splitlines()
                      if '"action":"resume"' in ln]
    assert len(resume_entries) == 1


def test_metrics_does_not_alert_on_a_long_run_whose_heartbeats_renew_its_lease(api: Orchestrator, cli_env) -> None:
    from orchestrator.leases import Lease, write_lease

    job_id = js.running(api, run_id="run-1", lease="2020-01-01T00:00:00.000000Z")  # the claim's expiry: long past
    write_lease(api.store, Lease(job_id=job_id, run_id="run-1", epoch=1, worker_id="w1", pid=1,
                                 expires_at=api.clock() + 3600, renewed_at=api.clock()))  # an hour's lease
    m = as_json(ok("metrics", "--project-id", "proj", "--json", "--fail-on", "critical", env=cli_env))
    assert m["stalled_count"] == 0 and m["counts"]["running"] == 1
    api.store.put_aux("leases", f"{job_id}.1", b"")  # the record gone: the claim's expiry is all there is
    failed = run_script("metrics", "--project-id", "proj", "--json", "--fail-on", "critical", env=cli_env)
    assert failed.returncode == 12 and json.loads(failed.stdout.splitlines()[0])["stalled_count"] == 1


def test_metrics_gives_its_figures_and_a_warning_when_a_folder_of_files_is_in_its_caches_place(
        api: Orchestrator, cli_env) -> None:
    api.submit("echo", {})
    note = api.settings.state_dir / "projections" / "jobs-v2" / "note"
    note.parent.mkdir(parents=True)
    note.write_text("an operator's file")
    m = run_script("metrics", "--json", env=cli_env)  # before the fix: exit 10 until the folder was moved away
    assert m.returncode == 0 and as_json(m)["jobs"] == 1
    assert [w["code"] for w in as_json(m)["warnings"]] == ["CACHE_NOT_WRITTEN"]
    table = run_script("metrics", env=cli_env)
    assert table.returncode == 0 and "metrics cache was not written" in table.stderr and "jobs-v2" in table.stderr
    assert note.read_text() == "an operator's file"


def test_an_answer_or_notes_read_from_stdin_or_a_file_are_checked_as_an_argument_is(api: Orchestrator, cli_env,
                                                                                      tmp_path: Path) -> None:
    """A multi-line answer, revision notes or a chat message pasted from the clipboard: ``--text-file FILE`` ('-' for
    stdin) instead of the argument (which a shell history and ``ps`` keep). UTF-8 only, bounded before it is read
    whole; redacted and written in one form as an argument is, and a repeat is the same action."""
    job_id = js.waiting_human(api)
    answer = "use the blue build\nthen restart; password=hunter2\n"
    first = run_script("control", "resume", job_id, "--text-file", "-", "--json", env=cli_env, input=answer)
    assert first.returncode == 0, first.stderr
    assert as_json(first)["applied"]
    assert api.load(job_id).state.answers == ("use the blue build\nthen restart; password=[REDACTED]",)
    again = tmp_path / "answer.txt"
    again.write_text(answer)
    repeat = run_script("control", "resume", job_id, "--text-file", str(again), "--json", env=cli_env)
    assert repeat.returncode == 0 and as_json(repeat)["already_applied"]

    audited = js.awaiting_audit(api)
    (tmp_path / "notes.txt").write_bytes(b"shorten it \xff\n")
    bad = run_script("control", "revise", audited, "--text-file", str(tmp_path / "notes.txt"), "--json", env=cli_env)
    assert bad.returncode == 3 and as_json(bad)["error"] == "INVALID_INPUT" and "UTF-8" in as_json(bad)["message"]
    (tmp_path / "notes.txt").write_bytes(b"x" * 1_000_000)
    big = run_script("control", "revise", audited, "--text-file", str(tmp_path / "notes.txt"), "--json", env=cli_env)
    assert big.returncode == 3 and as_json(big)["error"] == "INVALID_INPUT" and "bytes" in as_json(big)["message"]
    assert "(the notes may be at most 20000 characters)" in as_json(big)["message"]
    both = run_script("control", "revise", audited, "notes", "--text-file", "-", env=cli_env, input="notes")
    neither = run_script("control", "revise", audited, env=cli_env)
    assert both.returncode == neither.returncode == 2
    assert js.event_types(api, audited)[-1] == "audit_requested"  # nothing was written by any of them

    chat = js.waiting_human(api)
    pasted = run_script("resume_from_chat", chat, "--text-file", "-", env=cli_env, input=f"> job_id: {chat};\nyes\n")
    assert pasted.returncode == 0, pasted.stderr
    assert api.load(chat).state.answers == ("yes",)
