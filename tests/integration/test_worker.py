"""The worker in-process on the file backend: outcomes, retries, claiming order, leases, fencing, recovery."""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from helpers import alive, events, make_worker, taken_over_while_it_runs
from orchestrator.clock import to_iso
from orchestrator.store.base import AUDIT_STREAM
from orchestrator.worker import Worker, WorkerSettings

PY = sys.executable


def write_terminal(payload: object) -> list[str]:
    """argv of a command that writes ``payload`` to $ORCH_TERMINAL_FILE."""
    code = f"import os; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write({json.dumps(json.dumps(payload))})"
    return [PY, "-c", code]


def types(orch, job_id: str) -> list[str]:
    return [e["type"] for e in events(orch, job_id)]


def audits(orch) -> list[dict]:
    return [json.loads(line.raw) for line in orch.store.read(AUDIT_STREAM)]


def kept_ahead(w: Worker) -> str | None:
    """The job whose view the worker's last look ahead kept (``Claimer.look_ahead``), if any."""
    return None if w.claimer._ahead is None else w.claimer._ahead[0].job_id


# -- outcomes ---------------------------------------------------------------------------------------
def test_a_done_payload_succeeds_with_summary_output_and_artifacts(orch) -> None:
    argv = [PY, "-c", "import os,json; open(os.path.join(os.environ['ORCH_ARTIFACTS_DIR'],'r.txt'),'w').write('x');"
            "open(os.environ['ORCH_TERMINAL_FILE'],'w').write(json.dumps({'status':'done','summary':'made r',"
            "'output':{'rows':3},'artifacts':['r.txt']}))"]
    job = orch.submit("command", {"argv": argv})
    result = make_worker(orch).run_once()
    assert (result.job_id, result.outcome) == (job, "succeeded")
    st = orch.status(job)
    assert st.state == "succeeded" and st.result == {"summary": "made r", "output": {"rows": 3}, "artifacts": ["r.txt"]}
    assert (orch.settings.state_dir / "artifacts" / job / "r.txt").read_text() == "x"
    assert types(orch, job) == ["job_submitted", "job_claimed", "job_succeeded"]


def test_an_audit_job_goes_to_awaiting_audit_on_done(orch) -> None:
    job = orch.submit("t.echo", {"a": 1}, audit=True)
    make_worker(orch).run_once()
    assert orch.status(job).state == "awaiting_audit"


def test_needs_audit_goes_to_awaiting_audit_even_without_the_option(orch) -> None:
    job = orch.submit("t.payload", {"status": "needs_audit", "summary": "please check"})
    make_worker(orch).run_once()
    assert orch.status(job).state == "awaiting_audit"


def test_needs_human_waits_with_the_question_and_the_answer_reaches_the_rerun(orch) -> None:
    job = orch.submit("t.ask")
    w = make_worker(orch)
    w.run_once()
    st = orch.status(job)
    assert (st.state, st.question) == ("waiting_human", "blue or green?")
    orch.append(orch.load(job), job, [("job_resumed", {"answer": "green"})])
    w.run_once()
    st = orch.status(job)
    assert st.state == "succeeded" and st.result["summary"] == "answered green" and st.attempt == 2


def checked_lines(monkeypatch) -> list[tuple[str, int]]:
    """Every (job, line number) ``history._check_line`` checks from now on: a line read and verified in full."""
    from orchestrator import history

    checked: list[tuple[str, int]] = []
    real = history._check_line
    monkeypatch.setattr(history, "_check_line", lambda stream, line, *a: checked.append((stream, line.seq))
                        or real(stream, line, *a))
    return checked


def test_a_worker_that_left_a_job_waiting_checks_only_the_new_lines_when_it_claims_it_again(orch,
                                                                                        monkeypatch) -> None:
    job = orch.submit("t.ask")
    w = make_worker(orch)
    w.run_once()  # submitted, claimed, human_input_requested: this worker keeps that view
    orch.resume(job, "green")
    checked = checked_lines(monkeypatch)
    w.run_once()
    assert checked[0] == (job, 4)  # the resume's line alone, not lines 1-3 again
    assert orch.status(job).state == "succeeded"
    assert job not in w.claimer._known  # finished: nothing kept
    # a job it never wrote is read and checked in full
    other = orch.submit("t.echo", "x")
    checked.clear()
    w.run_once()
    assert checked[0] == (other, 1)


@pytest.mark.parametrize("kind, data", [
    ("t.echo", "b"),
    # events above what ``remember`` keeps (``KNOWN_VIEW_MAX_BYTES``): the look keeps one view of any size
    ("t.payload", {"status": "done", "summary": "large", "output": "x" * (2 * 64 * 1024)}),
], ids=["small", "large"])
def test_while_a_handler_runs_the_worker_reads_and_checks_the_job_it_claims_next(orch, monkeypatch, kind, data) -> None:
    from orchestrator.claiming import KNOWN_VIEW_MAX_BYTES

    first, second = orch.submit("t.echo", "a"), orch.submit(kind, data)
    assert (len(str(data)) > KNOWN_VIEW_MAX_BYTES) == (kind == "t.payload")
    w = make_worker(orch)
    checked = checked_lines(monkeypatch)
    assert w.run_once().job_id == first
    assert (second, 1) in checked  # read and checked while the first one's handler ran (``Claimer.look_ahead``)
    checked.clear()
    result = w.run_once()
    assert (second, 1) not in checked  # its claim compared the lines read ahead, and checked none of them again
    assert (result.job_id, result.outcome) == (second, "succeeded")
    assert w.run_once() is None  # nothing left; and nothing looked at ahead of a claim that has nothing to take


def test_the_last_run_of_max_jobs_or_of_a_run_once_without_look_ahead_reads_nothing_ahead(orch, monkeypatch) -> None:
    looked = []
    jobs = [orch.submit("t.echo", x) for x in "abcde"]
    w = make_worker(orch)
    real = w.claimer.look_ahead
    monkeypatch.setattr(w.claimer, "look_ahead", lambda **kw: looked.append(len(looked)) or real(**kw))
    assert w.run(max_jobs=2) == 2
    assert looked == [0] and kept_ahead(w) is None  # while the first ran (its look used by the next claim), not
    # while the last did (it would have kept ``jobs[2]``)
    w = make_worker(orch)
    monkeypatch.setattr(w.claimer, "look_ahead", lambda **kw: looked.append(len(looked)))
    assert w.run_once(look_ahead=False).job_id == jobs[2]
    assert looked == [0] and kept_ahead(w) is None  # ``worker --once`` runs so


def test_worker_once_reads_no_job_ahead_of_a_claim_that_will_not_come(base, cli_env, monkeypatch) -> None:
    from click.testing import CliRunner

    from orchestrator import Orchestrator
    from orchestrator import cli as cli_mod
    from orchestrator.claiming import Claimer
    from orchestrator.key_files import load_keyring

    cli_orch = Orchestrator(base_path=base, project_id="proj", keyring=load_keyring(cli_env, announce=False))
    first = cli_orch.submit("t.echo", "a")
    cli_orch.submit("t.echo", "b")  # a next job, which a look ahead would read
    looked = []
    monkeypatch.setattr(Claimer, "look_ahead", lambda self, **kw: looked.append(self))
    done = CliRunner().invoke(cli_mod.cli, ["worker", "--once", "--import", "worker_handlers", "--json"], env=cli_env)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["job_id"] == first and looked == []


def released_many_times(orch, job_id: str, times: int) -> None:
    """``job_id``'s history made long: claimed and handed back ``times`` times (it stays queued)."""
    view = orch.load(job_id)
    for epoch in range(1, times + 1):
        view = orch.append(view, job_id, [
            ("job_claimed", {"worker_id": "w0", "epoch": epoch, "attempt": 1, "lease_expires_at": to_iso(time.time())}),
            ("job_released", {"error_code": "WORKER_STOPPED", "error": "stopped", "worker_id": "w0"})],
            run_id=f"run-{epoch:016x}")


@pytest.mark.parametrize("lease_seconds, kept", [(0.15, False), (30.0, True)])
def test_a_look_ahead_that_could_make_the_first_heartbeat_late_is_not_made(orch, monkeypatch, lease_seconds,
                                                                          kept) -> None:
    from orchestrator.claiming import look_ahead_seconds

    first, long = orch.submit("t.echo", "a"), orch.submit("t.echo", "b")
    released_many_times(orch, long, 100)  # 201 lines: checking them may take 60 ms, past a 0.15 s lease's first beat
    assert 0.05 < look_ahead_seconds(orch.store.read(long)) < 10.0
    w = make_worker(orch, lease_seconds=lease_seconds)
    checked = checked_lines(monkeypatch)
    assert w.run_once().job_id == first
    assert (kept_ahead(w) == long) is kept and ((long, 1) in checked) is kept  # not even checked, under the short lease
    result = w.run_once()
    assert (result.job_id, result.outcome) == (long, "succeeded")  # its claim checked it


def test_a_look_ahead_at_a_job_taken_elsewhere_is_let_go_at_the_next_look(orch, monkeypatch) -> None:
    from orchestrator.store import file_queue as queue

    first, taken, third, fourth = (orch.submit("t.echo", x) for x in "abcd")
    w = make_worker(orch)
    assert w.run_once().job_id == first
    assert kept_ahead(w) == taken  # looked at while ``first`` ran
    orch.cancel(taken, "done by hand")  # by an operator, meanwhile: this worker never claims it
    assert w.run_once().job_id == third
    assert kept_ahead(w) == fourth  # ``taken``'s view let go
    assert w.run_once().job_id == fourth and w.run_once() is None
    assert kept_ahead(w) is None  # nothing left to look at: nothing held
    monkeypatch.setattr(queue, "LISTING_MAX_AGE", -1.0)  # each claim pass lists ready/ again: it never meets a job
    fifth, cancelled = orch.submit("t.echo", "e"), orch.submit("t.echo", "f")  # whose entry is gone
    assert w.run_once().job_id == fifth and kept_ahead(w) == cancelled
    orch.cancel(cancelled, "not wanted")
    assert w.run_once() is None and kept_ahead(w) is None  # nothing claimed: an idle worker holds no view


def test_a_look_ahead_is_not_used_once_the_trusted_or_revoked_keys_changed(orch, monkeypatch) -> None:
    first, second = orch.submit("t.echo", "a"), orch.submit("t.echo", "b")
    w = make_worker(orch)
    assert w.run_once().job_id == first  # looked at ``second`` while it ran
    orch.keyring.revoked = orch.keyring.revoked | {"some-other-key"}  # revoked in this process meanwhile
    checked = checked_lines(monkeypatch)
    assert w.run_once().job_id == second
    assert (second, 1) in checked  # checked again, under the keys trusted now


def test_a_job_changed_after_the_worker_looked_ahead_at_it_is_checked_again_by_its_claim(orch) -> None:
    first, cancelled, tampered = (orch.submit("t.echo", x) for x in "abc")
    w = make_worker(orch)
    assert w.run_once().job_id == first  # looked ahead at ``cancelled``
    orch.cancel(cancelled, "not wanted")  # by an operator, meanwhile
    assert w.run_once().job_id == tampered  # the cancel's line seen: not run (its entry was dropped by the cancel)
    assert orch.status(cancelled).state == "cancelled" and types(orch, cancelled)[-1] == "job_cancelled"
    fourth, fifth = orch.submit("t.echo", "d"), orch.submit("t.echo", "e")
    assert w.run_once().job_id == fourth  # looked ahead at ``fifth``: its history verified then
    path = orch.store.root / "queue" / "jobs" / f"{fifth}.events.jsonl"
    path.write_bytes(path.read_bytes().replace(b'"input":"e"', b'"input":"E"'))  # edited after the look
    assert w.run_once() is None  # refused at its claim, not run on the word of the view checked before the edit
    assert orch.status(fifth).integrity_error is not None and "run_refused" in [a["data"]["action"] for a in audits(orch)]


def test_a_worker_keeps_no_look_ahead_of_a_job_it_leaves_to_others(orch) -> None:
    mine, theirs, unhandled, last = (orch.submit("t.echo", "a"), orch.submit("t.fail", "b"),
                                     orch.submit("t.nosuch", "c"), orch.submit("t.echo", "d"))
    w = make_worker(orch, kinds=("t.echo", "t.nosuch"))
    assert w.run_once().job_id == mine  # looked at ``theirs`` (another kind) while it ran: not kept
    assert kept_ahead(w) is None and theirs not in w.claimer._known
    assert w.run_once().job_id == last  # ``theirs`` and ``unhandled`` left to others on the way
    assert kept_ahead(w) not in (theirs, unhandled) and {theirs, unhandled}.isdisjoint(w.claimer._known)


def test_a_job_of_another_kind_once_left_is_not_even_read_ahead(orch, monkeypatch) -> None:
    theirs = orch.submit("t.fail", "a")
    w = make_worker(orch, kinds=("t.echo",))
    assert w.run_once() is None  # left for good to workers of its kind
    first = orch.submit("t.echo", "b", priority=5)  # listed before ``theirs``: the look-ahead meets it next
    orch.submit("t.echo", "c")
    read = []
    real = orch.load
    monkeypatch.setattr(orch, "load", lambda job_id, **kw: read.append(job_id) or real(job_id, **kw))
    assert w.run_once().job_id == first
    assert theirs not in read


def test_a_worker_asked_to_stop_while_its_handler_starts_does_not_look_ahead(orch) -> None:
    from orchestrator import faults

    first, second = orch.submit("t.echo", "a"), orch.submit("t.echo", "b")
    w = make_worker(orch)
    faults.arm("worker.after_start", w.stop)  # the request is sent, the run is watched from here on
    try:
        result = w.run_once()
    finally:
        faults.disarm_all()
    assert result is not None and result.job_id == first  # the run went on (within its grace period)
    assert kept_ahead(w) is None and second not in w.claimer._known  # no read for a claim that will not come


def test_a_kept_view_is_not_used_once_the_trusted_or_revoked_keys_changed(orch, monkeypatch) -> None:
    job = orch.submit("t.ask")
    w = make_worker(orch)
    w.run_once()
    orch.resume(job, "green")
    orch.keyring.revoked = orch.keyring.revoked | {"some-other-key"}  # revoked in this process meanwhile
    checked = checked_lines(monkeypatch)
    w.run_once()
    assert checked[:4] == [(job, n) for n in (1, 2, 3, 4)]  # every line checked again, under the keys trusted now


def test_a_worker_started_before_a_key_rotation_runs_the_jobs_signed_with_the_new_key(base, isolated_env) -> None:
    """Not refused as UNKNOWN_KEY (and dropped from the queue): the worker reads the keyring folder again."""
    from orchestrator import Orchestrator
    from orchestrator.key_files import write_keypair

    orch = Orchestrator(base_path=base, project_id="proj")  # signs with the keyring folder's active key
    w = make_worker(orch)
    orch.submit("t.echo", "a")
    assert w.run_once().outcome == "succeeded"
    write_keypair(isolated_env)  # keys rotate, in another process
    job = Orchestrator(base_path=base, project_id="proj").submit("t.echo", "b")  # a new process: the new key
    result = w.run_once()
    assert result is not None and (result.job_id, result.outcome) == (job, "succeeded")


def test_a_worker_started_before_a_key_rotation_recovers_a_run_claimed_under_the_new_key(base, isolated_env) -> None:
    from orchestrator import Orchestrator
    from orchestrator.key_files import write_keypair

    orch = Orchestrator(base_path=base, project_id="proj")
    w = make_worker(orch, worker_id="old")
    orch.submit("t.echo", "a")
    assert w.run_once().outcome == "succeeded"
    write_keypair(isolated_env)  # keys rotate, in another process
    newer = Orchestrator(base_path=base, project_id="proj")
    job = newer.submit("t.echo", "b")
    t = newer.clock()
    assert make_worker(newer, worker_id="dead", lease_seconds=30).claim(now=t) is not None  # then it dies
    assert w.recover_stale(now=t + 31) == [job]


def test_a_worker_whose_key_is_revoked_while_it_runs_writes_nothing_more_with_it(base, isolated_env) -> None:
    """Its next sweep (at most a minute) reads the revoked ids: every write is then SIGNING_KEY_ERROR."""
    from orchestrator import Orchestrator
    from orchestrator.errors import SigningKeyError
    from orchestrator.key_files import revoke, write_keypair

    orch = Orchestrator(base_path=base, project_id="proj")
    w = make_worker(orch)
    orch.submit("t.echo", "a")
    assert w.run_once().outcome == "succeeded"
    kid = orch.keyring.signer_id
    write_keypair(isolated_env)  # keys rotate, then keys revoke of the old key, in other processes
    revoke(kid)
    job = Orchestrator(base_path=base, project_id="proj").submit("t.echo", "b")
    w._next_sweep = 0.0  # a minute later
    with pytest.raises(SigningKeyError, match=f"{kid} is revoked"):
        w.run_once()
    assert types(orch, job) == ["job_submitted"]


def test_a_keyring_file_that_cannot_be_read_while_a_worker_runs_stops_nothing(base, isolated_env) -> None:
    """A ``.pub`` half written (or damaged) when a running worker reads the folder again: it keeps the keys it
    read before and goes on; only a process started now refuses that keyring."""
    from orchestrator import Orchestrator

    orch = Orchestrator(base_path=base, project_id="proj")
    w = make_worker(orch)
    orch.submit("t.echo", "a")
    assert w.run_once().outcome == "succeeded"
    (isolated_env / "k-0000000000000000.pub").write_bytes(b"")  # a key file being written
    job = orch.submit("t.echo", "b")
    w._next_sweep = 0.0  # the sweep reads the folder again
    result = w.run_once()
    assert result is not None and (result.job_id, result.outcome) == (job, "succeeded")


def test_a_worker_still_refuses_a_job_whose_history_was_edited_after_it_handed_it_back(orch) -> None:
    job = orch.submit("t.flaky", {"succeed_on": 2})
    w = make_worker(orch)
    assert w.run_once().outcome == "retry"  # queued again, due now; this worker keeps its view
    path = orch.store.path(job)
    path.write_bytes(path.read_bytes().replace(b'"succeed_on":2', b'"succeed_on":1', 1))  # line 1
    assert w.run_once() is None  # not claimed: the edited line differs from the view, so all was checked
    assert types(orch, job)[-1] == "job_failed" and len(types(orch, job)) == 3


def test_stale_recovery_removes_lease_records_of_runs_that_are_over_and_keeps_the_running_ones(orch) -> None:
    import time

    from orchestrator.leases import LEASES_AREA, Lease, write_lease

    finished = orch.submit("t.echo", "done")
    make_worker(orch).run_once()
    orch.submit("t.echo", "running")
    claim = make_worker(orch, worker_id="w2").claim()  # still running, under epoch 1
    gone = "01JAAAAAAAAAAAAAAAAAAAAAAA"  # its job no longer exists
    for job_id, run_id in ((finished, "r-old"), (claim.job_id, claim.run_id), (gone, "r-gone")):
        # the first is what an outcome append killed before its aux writes leaves behind
        write_lease(orch.store, Lease(job_id, run_id, 1, "w", os.getpid(), time.time() + 60, time.time()))
    orch.store.put_aux(LEASES_AREA, "not-a-lease", b"{}")
    (orch.store.root / LEASES_AREA / "a stray file.1").write_bytes(b"{}")  # not a job id: left alone, no crash
    assert make_worker(orch, worker_id="w3").recover_stale() == []  # a new worker sweeps on its first pass
    assert orch.store.aux_keys(LEASES_AREA) == sorted([f"{claim.job_id}.1", "a stray file.1", "not-a-lease"])


def test_a_process_that_exits_without_a_payload_records_no_terminal_signal_exit(orch) -> None:
    job = orch.submit("command", {"argv": [PY, "-c", "print('password=hunter2 working'); raise SystemExit(3)"]},
                      max_attempts=1)
    make_worker(orch).run_once()
    failed = events(orch, job)[-1]
    assert failed["type"] == "job_failed" and failed["data"]["error_code"] == "NO_TERMINAL_SIGNAL_EXIT"
    assert "status 3" in failed["data"]["error"]
    assert "working" in failed["data"]["output_tail"] and "hunter2" not in failed["data"]["output_tail"]
    assert orch.status(job).state == "failed"


@pytest.mark.parametrize("payload", ["{not json", json.dumps({"status": "done"}),
                                     json.dumps({"status": "done", "summary": "x", "artifacts": ["../../escape"]})])
def test_a_malformed_payload_is_recorded_as_malformed_payload(orch, payload: str) -> None:
    code = f"import os; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write({payload!r})"
    job = orch.submit("command", {"argv": [PY, "-c", code]}, max_attempts=1)
    make_worker(orch).run_once()
    st = orch.status(job)
    assert st.state == "failed" and st.last_error["code"] == "MALFORMED_PAYLOAD"


def test_a_python_handler_can_be_named_module_function(orch) -> None:
    job = orch.submit("worker_handlers:echo", "hi")
    make_worker(orch).run_once()
    assert orch.status(job).result["summary"] == "echo hi"


def test_a_handler_that_raises_fails_the_attempt_with_a_sanitized_message(orch) -> None:
    def boom(ctx):
        raise RuntimeError("token=abc123secret broke")
    from orchestrator.handlers import register
    register("t.boom", boom)
    job = orch.submit("t.boom", max_attempts=1)
    make_worker(orch).run_once()
    err = orch.status(job).last_error
    assert err["code"] == "HANDLER_ERROR" and "broke" in err["message"] and "abc123secret" not in err["message"]


def test_secrets_nested_under_a_secret_key_or_in_artifact_names_are_stored_redacted(orch) -> None:
    def nested(ctx):
        (ctx.artifacts_dir / "token=hunter2xyz.txt").write_text("x")
        return {"status": "done", "summary": "s", "artifacts": ["token=hunter2xyz.txt"],
                "output": {"x": {"token": {"a": "hunter2xyz"}}, "password": ["hunter2xyz"], "rows": 3}}
    from orchestrator.handlers import register
    register("t.nested_secret", nested)
    job = orch.submit("t.nested_secret", max_attempts=1)
    make_worker(orch).run_once()
    st = orch.status(job)
    assert st.state == "succeeded"  # the artifact path was checked as given, then stored sanitized
    assert st.result["output"] == {"x": {"token": "[REDACTED]"}, "password": "[REDACTED]", "rows": 3}
    assert st.result["artifacts"] == ["token=[REDACTED]"]
    assert not any(b"hunter2xyz" in p.read_bytes() for p in orch.settings.state_dir.rglob("*") if p.is_file())


def test_a_secret_a_command_wrote_with_json_escapes_is_stored_redacted(orch) -> None:
    # "\u0070assword" and ":\/\/" spell a secret only once parsed: the payload's text itself does not hold one
    payload = (r'{"status": "done", "summary": "s", '
               r'"output": {"a": "\u0070assword=hunter2xyz", "b": "x:\/\/u:hunter2xyz@h"}}')
    code = f"import os; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write({payload!r})"
    job = orch.submit("command", {"argv": [PY, "-c", code]}, max_attempts=1)
    make_worker(orch).run_once()
    st = orch.status(job)
    assert st.state == "succeeded" and st.result["output"] == {"a": "password=[REDACTED]", "b": "x://u:[REDACTED]@h"}
    assert b"hunter2xyz" not in orch.store.read(job)[-1].raw  # (its input, the command, holds it as the job gave it)


def test_an_artifact_named_with_a_secret_is_renamed_on_disk_to_the_name_its_event_records(orch) -> None:
    def secret_names(ctx):
        folder = ctx.artifacts_dir
        (folder / "token=abc123.txt").write_text("first")
        (folder / "token=def456.txt").write_text("second")  # sanitized, it would take the first one's name
        (folder / "password=hunter2").mkdir()
        (folder / "password=hunter2" / "report.md").write_text("third")
        (folder / "plain.txt").write_text("plain")
        return {"status": "needs_audit", "summary": "s", "artifacts": [
            "token=abc123.txt", "token=def456.txt", "password=hunter2/report.md", "plain.txt"]}
    from orchestrator.handlers import register
    register("t.secret_names", secret_names)
    job = orch.submit("t.secret_names", max_attempts=1)
    make_worker(orch).run_once()
    recorded = events(orch, job)[-1]["data"]["artifacts"]
    assert recorded == ["token=[REDACTED]", "2-token=[REDACTED]", "password=[REDACTED]", "plain.txt"]
    folder = orch.settings.state_dir / "artifacts" / job
    assert [(folder / name).read_text() for name in recorded] == ["first", "second", "third", "plain"]
    names = "/".join(p.name for p in orch.settings.state_dir.rglob("*"))
    assert not any(secret in names for secret in ("abc123", "def456", "hunter2"))


def test_a_job_of_an_unknown_kind_stays_queued_for_a_capable_worker(orch) -> None:
    job = orch.submit("nobody.handles.this")
    assert make_worker(orch).run_once() is None
    assert orch.status(job).state == "queued"


def test_a_worker_that_ran_nothing_says_which_kinds_it_has_no_handler_for_and_how_many_jobs(orch) -> None:
    for kind in ("nobody.handles.this", "nobody.handles.this", "no_such_module:fn"):
        orch.submit(kind)
    worker = make_worker(orch)
    assert worker.run_once() is None
    missing = worker.handler_not_found()
    assert missing is not None and missing.code == "HANDLER_NOT_FOUND" and missing.exit_code == 11
    assert missing.details["jobs"] == 3
    assert missing.details["kinds"] == {
        "nobody.handles.this": {"jobs": 2, "reason": "no handler is registered with this name"},
        "no_such_module:fn": {"jobs": 1, "reason": "no module 'no_such_module' can be imported here: it is neither in "
                              f"the current folder, {os.getcwd()}, nor on the Python path (start the worker in the "
                              "folder that holds it, or add that folder to PYTHONPATH)"}}
    assert "--import MODULE" in missing.message and "--kind" in missing.message


def test_a_worker_of_some_kinds_reads_a_job_of_another_kind_once_then_passes_over_it(orch, monkeypatch) -> None:
    """A file entry holds no kind: the job's first line tells it (unverified, ~25 us; a verified read of the whole
    job ~0.2 ms, which is what a worker of some kinds did), once: a job's kind never changes."""
    other = orch.submit("t.echo", "not mine", priority=5)
    worker = make_worker(orch, kinds=("t.payload",))
    loads, first_lines = count_reads(orch, monkeypatch)
    assert worker.run_once() is None and first_lines == [other] and loads == []
    assert worker.handler_not_found() is None  # not a missing handler: nothing to report
    assert worker.run_once() is None and first_lines == [other], "a job's kind never changes: not read again"
    mine = orch.submit("t.payload", {"status": "done", "summary": "mine"})
    assert worker.run_once().job_id == mine and orch.status(other).state == "queued"


def test_a_workers_kinds_are_a_list_of_job_kinds_each_kept_once() -> None:
    from orchestrator.errors import InvalidInputError

    assert WorkerSettings(kinds=["t.echo", "t.ask", "t.echo"]).kinds == ("t.echo", "t.ask")
    for bad in ("t.echo", ("t.echo", ""), ("x" * 201,), (None,)):  # a string is not a list of kinds
        with pytest.raises(InvalidInputError):
            WorkerSettings(kinds=bad)


def test_a_delayed_retry_of_another_kind_is_not_waited_for_by_a_worker_of_some_kinds(orch) -> None:
    """``next_due`` is what an idle worker sleeps until, and what keeps ``--idle-exit`` from exiting: a retry of a
    job this worker will never run must not count (a file entry has no kind: the job is read once, then remembered)."""
    job = orch.submit("t.flaky", {"succeed_on": 2})
    assert make_worker(orch, retry_base_seconds=600).run_once().outcome == "retry"  # due in about 600 s
    any_kind = make_worker(orch)
    assert any_kind.claim() is None and any_kind.next_due is not None  # a worker that runs it waits for it
    other_kinds = make_worker(orch, kinds=("t.payload",))
    assert other_kinds.claim() is None and other_kinds.next_due is None
    assert orch.status(job).state == "queued"


def test_a_worker_of_some_kinds_reads_a_delayed_retry_of_its_own_kinds_once_not_at_every_pass(orch, monkeypatch) -> None:
    """A file entry holds no kind, so a worker of some kinds reads a delayed entry's job to learn whether to wait for
    it. One of another kind was remembered; one of its own kinds was read again at every pass: with 300 retries
    waiting, 300 reads (56 ms) a pass, against none (1.2 ms) for a worker of every kind."""
    jobs = [orch.submit("t.flaky", {"succeed_on": 2}) for _ in range(3)]
    first = make_worker(orch, retry_base_seconds=600)
    for _ in jobs:
        assert first.run_once().outcome == "retry"  # each due in about 600 s
    worker = make_worker(orch, kinds=("t.flaky",))
    loads, first_lines = count_reads(orch, monkeypatch)
    assert worker.claim() is None and worker.next_due is not None and sorted(first_lines) == sorted(jobs)
    assert worker.claim() is None and worker.next_due is not None and len(first_lines) == 3, "its kind never changes"
    assert loads == []


def count_reads(orch, monkeypatch) -> tuple[list[str], list[str]]:
    """The jobs ``orch`` reads whole (``load``) and by their first line only (``store.first_line``), in order."""
    loads: list[str] = []
    first_lines: list[str] = []
    real_load, real_first = orch.load, orch.store.first_line
    monkeypatch.setattr(orch, "load", lambda job_id, **kw: loads.append(job_id) or real_load(job_id, **kw))
    monkeypatch.setattr(orch.store, "first_line", lambda job_id: first_lines.append(job_id) or real_first(job_id))
    return loads, first_lines


def test_a_worker_with_no_queued_job_it_lacks_a_handler_for_has_nothing_to_report(orch) -> None:
    worker = make_worker(orch)
    assert worker.run_once() is None and worker.handler_not_found() is None
    orch.submit("t.echo", "x")
    assert worker.run_once().outcome == "succeeded" and worker.handler_not_found() is None


@pytest.mark.parametrize("kind, reason", [
    ("nobody.handles.this", "no handler is registered with this name"),
    ("no_such_module:fn", "no module 'no_such_module' can be imported here"),
    ("os:no_such_function", "module 'os' has no function 'no_such_function'"),
    ("..relative:fn", "'..relative' is not a module name"),
    (":fn", "'' is not a module name"),
])
def test_lookup_says_why_a_kind_has_no_handler(kind: str, reason: str) -> None:
    from orchestrator.errors import HandlerNotFoundError
    from orchestrator.handlers import lookup

    with pytest.raises(HandlerNotFoundError) as caught:
        lookup(kind)
    assert caught.value.details["kind"] == kind and caught.value.details["reason"].startswith(reason)
    assert caught.value.details["reason"] == reason or reason.endswith(("can be imported here", "has no function "
                                                                        "'no_such_function'"))


def test_a_kind_whose_module_imports_but_lacks_the_function_is_advised_to_check_the_name_not_the_python_path(
        orch) -> None:
    """The module was found and imported: PYTHONPATH, the advice for a module that cannot be imported, is not the
    cause; the kind's function name, or this worker's copy of the module, is."""
    orch.submit("os:no_such_function")
    worker = make_worker(orch)
    assert worker.run_once() is None
    reason = worker.handler_not_found().details["kinds"]["os:no_such_function"]["reason"]
    assert reason == ("module 'os' has no function 'no_such_function' (the module imports here: check the function's "
                      "name in the kind, or give this worker the version of 'os' that defines it)")
    assert "PYTHONPATH" not in reason


@pytest.mark.parametrize("kind", ["refresh_token", "jobs.api-key"])
def test_why_a_kind_has_no_handler_survives_sanitizing_when_the_kind_is_named_like_a_secret(kind: str) -> None:
    """The message is shown and logged sanitized: a kind named like a secret's key must not get its reason
    redacted as that key's value."""
    from orchestrator.errors import HandlerNotFoundError
    from orchestrator.handlers import lookup
    from orchestrator.security import sanitize_text

    with pytest.raises(HandlerNotFoundError) as caught:
        lookup(kind)
    shown = sanitize_text(caught.value.message)
    assert shown == f"no handler for kind {kind!r} (no handler is registered with this name)"


@pytest.fixture
def broken_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``t_raises_on_import`` (its own bug) and ``t_missing_dependency`` (imports a module that is not there)."""
    (tmp_path / "t_raises_on_import.py").write_text("raise RuntimeError('bug in the handler module')\n"
                                                     "def fn(ctx): return {'status': 'done', 'summary': 'x'}\n")
    (tmp_path / "t_missing_dependency.py").write_text("import t_not_installed_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("module, error", [("t_raises_on_import", "RuntimeError: bug in the handler module"),
                                           ("t_missing_dependency", "ModuleNotFoundError: No module named "
                                                                    "'t_not_installed_anywhere'")])
def test_a_kind_whose_module_raises_on_import_stays_queued_and_the_worker_runs_the_next_job(
        orch, broken_modules, module: str, error: str) -> None:
    broken = orch.submit(f"{module}:fn")
    runnable = orch.submit("t.echo", "x")
    worker = make_worker(orch)
    assert worker.run_once().job_id == runnable
    assert orch.status(broken).state == "queued"
    assert worker.run_once() is None
    reason = worker.handler_not_found().details["kinds"][f"{module}:fn"]["reason"]
    assert reason.startswith(f"importing module {module!r} raised {error}")


@pytest.mark.parametrize("module", ["t_raises_on_import", "t_missing_dependency", "t_no_such_handler_module"])
def test_a_handler_module_that_cannot_be_imported_is_a_config_error_naming_why(orch, broken_modules,
                                                                               module: str) -> None:
    from orchestrator.errors import ConfigError

    with pytest.raises(ConfigError, match=f"cannot import handler module {module!r} "
                                          f"\\((importing module {module!r} raised|no module {module!r})"):
        make_worker(orch, imports=(module,))


# -- retries ----------------------------------------------------------------------------------------
def test_a_failed_attempt_is_retried_after_a_backoff_and_then_succeeds(orch) -> None:
    job = orch.submit("t.flaky", {"succeed_on": 2}, max_attempts=3)
    w = make_worker(orch, retry_base_seconds=10.0)
    first = w.run_once()
    st = orch.status(job)
    assert first.outcome == "retry" and st.state == "queued" and st.retry_at is not None
    retry_at = orch.load(job).state.retry_at
    assert w.run_once(now=retry_at - 0.5) is None  # not runnable before its time
    assert w.next_due == pytest.approx(retry_at, abs=1e-3)
    assert w.run_once(now=retry_at + 0.01).outcome == "succeeded"
    assert orch.status(job).attempt == 2


def retried_after(orch, payload: dict, **settings) -> tuple[float, float]:
    """Run a ``t.payload`` job that answers ``payload`` once: (the time just before its run, its ``retry_at``)."""
    job = orch.submit("t.payload", payload, max_attempts=3)
    before = orch.clock()
    assert make_worker(orch, **settings).run_once().outcome == "retry"
    return before, orch.load(job).state.retry_at


def test_a_failed_payload_s_retry_after_puts_the_next_attempt_no_earlier_than_it_asks(orch) -> None:
    """The service a handler called said when to come back (``Retry-After``); the worker's backoff (here 0) decided
    alone, and the next attempt was refused again, its attempt spent for nothing."""
    before, retry_at = retried_after(orch, {"status": "failed", "summary": "busy", "retry_after": 600})
    assert before + 600 <= retry_at <= orch.clock() + 600
    w = make_worker(orch)
    assert w.run_once(now=retry_at - 1) is None and w.next_due == pytest.approx(retry_at, abs=1e-3)


def test_a_retry_after_longer_than_the_bound_waits_the_bound(orch) -> None:
    """A service asking for a day (a quota reset, a date far ahead) does not park the job for a day at each attempt."""
    from orchestrator.payload import MAX_RETRY_AFTER_SECONDS

    before, retry_at = retried_after(orch, {"status": "failed", "summary": "busy", "retry_after": 86400})
    assert MAX_RETRY_AFTER_SECONDS == 3600
    assert before + 3600 <= retry_at <= orch.clock() + 3600


def test_a_retry_after_of_400_digits_from_a_python_handler_waits_the_bound(orch) -> None:
    """``10**400`` from a Python handler (JSON's integers have no bound, a float's do) was ``MALFORMED_PAYLOAD``."""
    before, retry_at = retried_after(orch, {"status": "failed", "summary": "busy", "retry_after": 10 ** 400})
    assert before + 3600 <= retry_at <= orch.clock() + 3600


def test_a_retry_after_reaching_past_the_latest_time_a_line_holds_waits_until_that_time(orch) -> None:
    """A clock an hour from 9999-12-31T23:59:59Z leaves room for a claim's lease but not for the hour a payload may
    ask: the retry is put at the latest time an event can hold, not a ``ValueError`` after the run (the run's
    outcome lost and the job left running until its lease ran out)."""
    from orchestrator.limits import LATEST_TIME

    late = LATEST_TIME - 1000
    orch.clock = lambda: late
    _, retry_at = retried_after(orch, {"status": "failed", "summary": "busy", "retry_after": 3600})
    assert retry_at == LATEST_TIME


def test_a_backoff_longer_than_the_retry_after_asked_for_is_kept(orch) -> None:
    """``retry_after`` is a floor, never a shortcut past the worker's own backoff."""
    before, retry_at = retried_after(orch, {"status": "failed", "summary": "busy", "retry_after": 1},
                                     retry_base_seconds=100.0)
    assert retry_at >= before + 50  # 100 s times a jitter in [0.5, 1)


def test_a_retry_after_on_a_payload_that_is_not_retried_changes_nothing(orch) -> None:
    job = orch.submit("t.payload", {"status": "failed", "summary": "no", "retryable": False, "retry_after": 60})
    assert make_worker(orch).run_once().outcome == "failed"
    assert orch.load(job).state.retry_at is None


def test_a_job_queued_before_the_clock_stepped_back_is_run_at_once(orch) -> None:
    """Only a retry's backoff makes a queued job wait: the time in its entry's name orders it (FIFO), and a clock
    stepped back 10 minutes (NTP, a VM restored) does not hold up the jobs submitted or resumed in those minutes."""
    submitted = orch.submit("t.echo", 1)
    asked = orch.submit("t.ask", 1, priority=-1)
    w = make_worker(orch)
    back = orch.clock() - 600
    assert w.run_once(now=back).job_id == submitted and w.next_due is None
    assert w.run_once(now=back).outcome == "waiting_human"
    orch.resume(asked, "blue")
    assert w.claim(now=back).job_id == asked


def test_a_retry_still_waits_its_backoff_after_the_clock_stepped_back(orch) -> None:
    job = orch.submit("t.flaky", {"succeed_on": 2}, max_attempts=3)
    w = make_worker(orch, retry_base_seconds=10.0)
    assert w.run_once().outcome == "retry"
    retry_at = orch.load(job).state.retry_at
    assert w.run_once(now=retry_at - 600) is None and w.next_due == pytest.approx(retry_at, abs=1e-3)


def test_an_entry_named_before_jobs_ran_at_once_is_claimed_at_its_time(orch) -> None:
    """An index folder written by an earlier version: its entries' names hold no 'at once' mark, and each is due at
    its time, as it was (a rebuild, ``rm index/built``, names them anew); ``verify`` finds the entry there."""
    from orchestrator.queue import ReadyEntry

    job = orch.submit("t.echo", 1)
    entry = ReadyEntry.for_state(orch.load(job).state)
    old = ReadyEntry(entry.neg_priority, entry.runnable_at_us, job)
    ready = orch.settings.state_dir / "index" / "ready"
    (ready / entry.name).rename(ready / old.name)
    assert old.name != entry.name and ReadyEntry.parse(old.name).at_once is False
    report = orch.verify(job)
    assert report.ok and report.warnings == []
    w = make_worker(orch)
    assert w.claim(now=entry.runnable_at - 600) is None and w.next_due == pytest.approx(entry.runnable_at, abs=1e-3)
    assert w.claim(now=entry.runnable_at).job_id == job


def test_failures_stop_at_max_attempts(orch) -> None:
    job = orch.submit("t.flaky", {"succeed_on": 99}, max_attempts=2)
    w = make_worker(orch)
    assert w.run_once().outcome == "retry"
    assert w.run_once(now=orch.clock() + 1).outcome == "failed"
    st = orch.status(job)
    assert st.state == "failed" and st.attempt == 2


def test_retryable_false_fails_at_once(orch) -> None:
    job = orch.submit("t.payload", {"status": "failed", "summary": "bad input", "retryable": False,
                                    "error_code": "BAD_INPUT"}, max_attempts=5)
    make_worker(orch).run_once()
    st = orch.status(job)
    assert (st.state, st.attempt, st.last_error["code"]) == ("failed", 1, "BAD_INPUT")


def test_backoff_is_exponential_with_jitter_and_capped(orch) -> None:
    w = make_worker(orch, retry_base_seconds=2.0, retry_max_seconds=20.0)
    delays = {n: [w.backoff(n) for _ in range(200)] for n in (1, 2, 3, 10)}
    for n, expected in ((1, 2.0), (2, 4.0), (3, 8.0), (10, 20.0)):
        assert all(expected * 0.5 <= d < expected for d in delays[n])
        assert len(set(delays[n])) > 100  # jittered


# -- claiming -------------------------------------------------------------------------------------------
def test_claims_follow_priority_then_fifo(orch) -> None:
    t = orch.clock()
    low = orch.submit("t.echo", 1)
    high = orch.submit("t.echo", 2, priority=10)
    low2 = orch.submit("t.echo", 3)
    w = make_worker(orch)
    order = [w.claim(now=t + 1).job_id for _ in range(3)]
    assert order == [high, low, low2]
    assert w.claim(now=t + 1) is None


def test_a_worker_draining_a_backlog_lists_the_ready_folder_once_not_per_claim(orch, monkeypatch) -> None:
    import orchestrator.store.file_queue as queue_mod

    jobs = [orch.submit("t.echo", i) for i in range(20)]
    listings: list[str] = []
    real_listdir = os.listdir
    monkeypatch.setattr(queue_mod.os, "listdir", lambda p: listings.append(str(p)) or real_listdir(p))
    monkeypatch.setattr(queue_mod, "LISTING_MAX_AGE", 60.0)
    w = make_worker(orch)
    assert [w.claim().job_id for _ in jobs] == jobs  # FIFO, from one listing
    assert sum(p.endswith("ready") for p in listings) == 1
    assert w.claim() is None  # the walk reached its end: listed again, nothing left
    late = orch.submit("t.echo", "late")
    assert w.claim().job_id == late  # a new listing at once: the previous one was used up


def test_a_higher_priority_job_submitted_during_a_drain_waits_at_most_one_listing_age(orch, monkeypatch) -> None:
    import orchestrator.store.file_queue as queue_mod

    now = [1000.0]
    monkeypatch.setattr(queue_mod.time, "monotonic", lambda: now[0])
    low = [orch.submit("t.echo", i) for i in range(3)]
    w = make_worker(orch)
    assert w.claim().job_id == low[0]
    urgent = orch.submit("t.echo", "urgent", priority=5)
    assert w.claim().job_id == low[1]  # the listing is fresh: the walk goes on
    now[0] += queue_mod.LISTING_MAX_AGE + 0.001
    assert w.claim().job_id == urgent  # listed again: priority first


def test_a_retry_queued_during_a_drain_is_run_before_an_idle_worker_exits(orch) -> None:
    flaky = orch.submit("t.flaky", {"succeed_on": 2}, max_attempts=3)
    others = [orch.submit("t.echo", i) for i in range(3)]
    unknown = orch.submit("t.no-such-handler", None)  # skipped: the walk of the listing ends on it
    w = make_worker(orch, retry_base_seconds=0.05)  # the retry gets a new ready entry, due a little later
    assert w.run(idle_exit=True) == 5
    assert {orch.status(j).state for j in [flaky, *others]} == {"succeeded"}
    assert orch.status(unknown).state == "queued"


def test_claiming_does_not_read_finished_jobs(orch, monkeypatch) -> None:
    done = [orch.submit("t.echo", i) for i in range(30)]
    w = make_worker(orch)
    for _ in done:
        w.run_once()
    fresh = orch.submit("t.echo", "new")
    reads: list[str] = []
    real_read = orch.store.read
    monkeypatch.setattr(orch.store, "read", lambda stream, from_seq=1: reads.append(stream) or real_read(stream, from_seq))
    assert w.claim().job_id == fresh
    assert set(reads) == {fresh}


def test_the_ready_index_is_a_cache_deleting_it_is_safe(orch) -> None:
    finished = orch.submit("t.echo", 0)
    w = make_worker(orch)
    w.run_once()
    a = orch.submit("t.echo", 1)
    b = orch.submit("t.echo", 2, priority=3)
    shutil.rmtree(orch.settings.state_dir / "index")
    w2 = make_worker(orch)
    assert [w2.claim().job_id, w2.claim().job_id] == [b, a]
    assert w2.claim() is None and orch.status(finished).state == "succeeded"


def test_an_entry_written_before_a_crashed_submit_is_kept_then_dropped(orch) -> None:
    from orchestrator import faults

    class Crash(Exception):
        pass

    def crash() -> None:
        raise Crash()
    faults.arm("store.append.before_write", crash)
    with pytest.raises(Crash):
        orch.submit("t.echo", 1)
    entries = orch.queue.ready()
    assert len(entries) == 1  # the entry exists although the event does not
    w = make_worker(orch)
    assert w.claim(now=entries[0].runnable_at + 1) is None and orch.queue.ready() == entries  # in flight: kept
    assert w.claim(now=entries[0].runnable_at + 3600) is None and orch.queue.ready() == []  # abandoned: dropped


def test_a_stale_entry_of_a_finished_job_is_dropped_when_met(orch) -> None:
    from orchestrator.queue import ReadyEntry

    job = orch.submit("t.echo", 1)
    w = make_worker(orch)
    w.run_once()
    st = orch.load(job).state
    orch.queue.put_ready(ReadyEntry.for_state(st))  # as if a crash left it behind
    assert w.claim() is None and orch.queue.ready() == []


@pytest.mark.parametrize("folder, name", [("running", "not a job"), ("ready", "0000.00000000000000001.not a job")])
def test_an_index_entry_whose_name_is_no_job_id_is_dropped_and_the_worker_runs_on(orch, folder, name) -> None:
    """The index is a cache: a file planted in it (a copy, an editor's) is not a reason to stop every worker."""
    job = orch.submit("t.echo", 1)
    planted = orch.settings.state_dir / "index" / folder / name
    planted.touch()
    result = make_worker(orch).run_once()  # before the fix: INVALID_ID at every worker's every pass
    assert result is not None and (result.job_id, result.state) == (job, "succeeded")
    assert not planted.exists()


def test_an_outcome_committed_as_the_store_was_lost_is_not_reported_lost_when_the_job_moved_on_since(
        orch, monkeypatch) -> None:
    """The outcome's commit went through as its connection dropped (PostgreSQL), and before the store was back
    another worker claimed the retry: the read-back finds the outcome followed by that claim."""
    from orchestrator.errors import StorageUnavailableError

    job = orch.submit("t.flaky", {"succeed_on": 3})
    real_append, other = orch.append, make_worker(orch, worker_id="other")

    def append_then_lose_the_connection(view, job_id, new, **kw):
        written = real_append(view, job_id, new, **kw)
        if new[0][0] == "job_failed":
            assert other.claim(now=orch.clock() + 1).job_id == job  # the retry, claimed before the store is back
            raise StorageUnavailableError("the connection was lost; the write may have committed")
        return written

    monkeypatch.setattr(orch, "append", append_then_lose_the_connection)
    result = make_worker(orch).run_once()
    assert types(orch, job) == ["job_submitted", "job_claimed", "job_failed", "job_claimed"]  # written once
    assert (result.outcome, result.error_code) == ("retry", "HANDLER_FAILED")  # before the fix: lease_lost


def test_two_workers_never_claim_the_same_attempt(orch) -> None:
    job = orch.submit("t.echo", 1)
    a, b = make_worker(orch, worker_id="a"), make_worker(orch, worker_id="b")
    view = orch.load(job)
    first = a.claim()
    assert first is not None
    entry = next(iter([e for e in orch.queue.ready()]), None)
    assert entry is None
    # b decided from the same (old) view: its claim append is refused by the expected sequence
    from orchestrator.errors import ConcurrencyError
    with pytest.raises(ConcurrencyError):
        orch.append(view, job, [("job_claimed", {"worker_id": "b", "epoch": 1, "attempt": 1,
                                                 "lease_expires_at": "2030-01-01T00:00:00.000000Z"})], run_id="run-b")
    assert b.claim() is None
    assert types(orch, job).count("job_claimed") == 1


def _second_worker(base, keyring, worker_id: str = "b") -> Worker:
    """A worker with an ``Orchestrator`` of its own on the ``orch`` fixture's project, as in another process: its own
    queue index, whose listing of ready/ it walks on its own."""
    from orchestrator import Orchestrator

    return make_worker(Orchestrator(base_path=base, project_id="proj", keyring=keyring), worker_id=worker_id)


def test_a_worker_walking_an_older_listing_passes_over_a_job_another_worker_claimed_without_reading_it(
        orch, base, keyring, monkeypatch) -> None:
    """Workers on one queue walk their own listings of ready/ in the same order: one that meets a job another
    claimed since it listed (its ready entry gone) passes over it without reading and checking it, which cost as
    much as a claim of its own (``python -m bench.workers``)."""
    from orchestrator.store import file_queue as queue

    monkeypatch.setattr(queue, "LISTING_MAX_AGE", 60.0)  # each worker keeps walking its first listing
    first, second, third = (orch.submit("t.echo", x) for x in "abc")
    a, b = make_worker(orch, worker_id="a"), _second_worker(base, keyring)
    assert a.claim().job_id == first  # a's listing holds the three jobs
    assert b.claim().job_id == second  # b lists after a's claim
    read: list[str] = []
    real_load = orch.load
    monkeypatch.setattr(orch, "load", lambda job_id, **kw: read.append(job_id) or real_load(job_id, **kw))
    assert a.claim().job_id == third  # a's walk goes on at ``second``, which b took
    assert read == [third] and a.claimer.races == {"taken": 0, "lost": 0}
    assert [types(orch, j).count("job_claimed") for j in (first, second, third)] == [1, 1, 1]


def test_a_worker_counts_the_jobs_it_read_and_found_claimed_by_another_and_the_claims_it_lost(
        orch, base, keyring, monkeypatch) -> None:
    """``Claimer.races``: what workers on one queue cost each other, which ``python -m bench.workers`` reports."""
    from orchestrator import faults

    first, second, third = (orch.submit("t.echo", x) for x in "abc")
    a, b = make_worker(orch, worker_id="a"), _second_worker(base, keyring)
    real_load = orch.load
    taken_meanwhile = iter([lambda: b.claim()])  # b claims ``first`` just before a reads it, once

    def load(job_id, **kw):
        next(taken_meanwhile, lambda: None)()
        return real_load(job_id, **kw)

    monkeypatch.setattr(orch, "load", load)
    assert a.claim().job_id == second and a.claimer.races == {"taken": 1, "lost": 0}
    monkeypatch.setattr(orch, "load", real_load)
    faults.arm("worker.before_claim", lambda: b.claim())  # b claims ``third`` after a read it, before a's append
    assert a.claim() is None and a.claimer.races == {"taken": 1, "lost": 1}
    assert b.claimer.races == {"taken": 0, "lost": 0}
    assert [types(orch, j).count("job_claimed") for j in (first, second, third)] == [1, 1, 1]


def test_a_worker_passes_over_a_job_another_worker_is_claiming_without_reading_it(orch, base, keyring,
                                                                                  monkeypatch) -> None:
    """The claimer makes the job's running entry before its claim's event, and drops the ready entry after it: a
    worker that meets the job in between takes the next one, unread (reading it found it running, or claimed it
    only to lose the append: with four workers, most jobs were read so by one that did not get them)."""
    from orchestrator import faults

    first, second = orch.submit("t.echo", "a"), orch.submit("t.echo", "b")
    a, b = make_worker(orch, worker_id="a"), _second_worker(base, keyring)
    read: list[str] = []
    real_load = orch.load

    def load(job_id, **kw):
        assert job_id != first, "read while b's claim of it was in flight"  # (its claim would wait on b's lock)
        read.append(job_id)
        return real_load(job_id, **kw)

    monkeypatch.setattr(orch, "load", load)
    claimed_meanwhile = []
    # b's claim of ``first``: its running entry made, its line not yet written (it holds the file's lock)
    faults.arm("store.append.before_write", lambda: claimed_meanwhile.append(a.claim().job_id))
    assert b.claim().job_id == first and claimed_meanwhile == [second]
    assert read == [second] and a.claimer.races == {"taken": 0, "lost": 0}
    assert [types(orch, j).count("job_claimed") for j in (first, second)] == [1, 1]


def test_a_running_entry_a_crash_left_before_a_first_claim_delays_its_job_by_one_meeting_at_most(orch) -> None:
    """A worker that dies between a first claim's running entry and its event leaves the entry for good (stale
    recovery cannot tell it from a claim in flight): the job is passed over once, then read and claimed, even while
    other jobs keep coming; and a pass that finds nothing else claims it (``worker --once`` does not exit idle)."""
    lone = orch.submit("t.echo", "a")
    orch.queue.put_running(lone, 1)  # the crash's leftover
    w = make_worker(orch)
    assert w.claim().job_id == lone  # passed over, then read at the end of the pass that found nothing else
    left, second = orch.submit("t.echo", "b"), orch.submit("t.echo", "c")
    orch.queue.put_running(left, 1)
    w2 = make_worker(orch)
    assert w2.claim().job_id == second  # ``left`` passed over once
    third = orch.submit("t.echo", "d")
    assert w2.claim().job_id == left  # met again: read and claimed before the job queued after it
    assert w2.claim().job_id == third
    assert [types(orch, j).count("job_claimed") for j in (lone, left, second, third)] == [1, 1, 1, 1]


def test_a_worker_does_not_read_ahead_a_job_another_worker_is_claiming(orch) -> None:
    first, second, third = (orch.submit("t.echo", x) for x in "abc")
    w = make_worker(orch)
    assert w.claim().job_id == first
    assert orch.queue.upcoming().job_id == second  # what the look ahead reads while ``first`` runs
    orch.queue.put_running(second, 1)  # another worker's claim of ``second`` in flight (its running entry made)
    assert orch.queue.upcoming() is None
    w.claimer.look_ahead()
    assert kept_ahead(w) is None  # not read
    assert w.claim().job_id == third  # passed over (its claim still in flight, as far as this worker can tell)
    assert w.claim().job_id == second  # the entry left for good: read at the next meeting


# -- leases, stale recovery, fencing ----------------------------------------------------------------
def test_heartbeats_renew_the_lease_without_writing_events(orch) -> None:
    job = orch.submit("t.lease", {"sleep": 0.6})
    w = make_worker(orch, lease_seconds=0.15)
    w.run_once()
    assert types(orch, job) == ["job_submitted", "job_claimed", "job_succeeded"]
    [record] = orch.status(job).result["output"]  # what the handler saw while it ran
    from orchestrator.clock import from_iso
    claimed = from_iso(events(orch, job)[1]["data"]["lease_expires_at"]) - 0.15
    assert record["renewed_at"] > claimed + 0.3 and record["expires_at"] == pytest.approx(record["renewed_at"] + 0.15)
    assert not list((orch.settings.state_dir / "leases").iterdir())  # dropped when the run ended


def test_a_heartbeat_the_store_missed_is_tried_again_soon_not_a_whole_beat_later(orch, monkeypatch) -> None:
    """A beat is a third of the lease: two missed in a row would leave the run past its lease."""
    import time

    import orchestrator.heartbeat as heartbeat_mod
    from orchestrator.errors import StorageUnavailableError

    monkeypatch.setattr(heartbeat_mod, "HEARTBEAT_RETRY_SECONDS", 0.1)
    tries, real_write = [], heartbeat_mod.write_lease

    def write_lease(store, lease):
        tries.append(time.monotonic())
        if len(tries) == 1:
            raise StorageUnavailableError("the server went away")
        real_write(store, lease)

    monkeypatch.setattr(heartbeat_mod, "write_lease", write_lease)
    job = orch.submit("t.lease", {"sleep": 0.9})
    make_worker(orch, lease_seconds=1.5).run_once()  # beats every 0.5 s
    assert types(orch, job)[-1] == "job_succeeded"
    assert len(tries) >= 2 and tries[1] - tries[0] < 0.3


def test_only_a_run_whose_heartbeat_wrote_a_lease_record_drops_one_with_its_outcome(orch, monkeypatch) -> None:
    w = make_worker(orch, lease_seconds=0.3)
    outcomes, real_append = [], orch.append

    def append(view, job_id, evs, **kw):
        if evs[0][0] not in ("job_submitted", "job_claimed"):
            outcomes.append((job_id, evs[0][0], kw.get("aux") is not None))
        return real_append(view, job_id, evs, **kw)

    monkeypatch.setattr(orch, "append", append)
    renewed = orch.submit("t.lease", {"sleep": 0.6})
    w.run_once()
    short = orch.submit("t.echo", "quick")  # the same worker's next run, shorter than a heartbeat
    w.run_once()
    assert outcomes == [(renewed, "job_succeeded", True), (short, "job_succeeded", False)]


def test_an_expired_lease_is_recovered_to_queued_with_evidence(orch) -> None:
    job = orch.submit("t.echo", 1)
    dead = make_worker(orch, worker_id="dead", lease_seconds=30)
    t = orch.clock()
    claim = dead.claim(now=t)
    assert claim is not None  # ... and the worker dies before running it
    other = make_worker(orch, worker_id="other")
    assert other.recover_stale(now=t + 29) == []
    assert other.recover_stale(now=t + 31) == [job]
    ev = events(orch, job)[-1]
    assert ev["type"] == "stale_recovered" and ev["data"]["to"] == "queued"
    assert ev["data"]["error_code"] == "NO_TERMINAL_SIGNAL_STALE" and ev["data"]["stale_worker_id"] == "dead"
    assert ev["data"]["lease_expired_at"] and ev["data"]["retry_at"]
    entry = [a for a in audits(orch) if a["job_id"] == job]
    assert entry and entry[-1]["data"]["action"] == "stale_recovered"
    assert orch.status(job).last_error["code"] == "NO_TERMINAL_SIGNAL_STALE"
    assert other.run_once(now=t + 3600).outcome == "succeeded"


def test_a_recovery_whose_backoff_reaches_past_the_latest_time_a_line_holds_waits_until_that_time(orch) -> None:
    """The clock's own time a minute from 9999-12-31T23:59:59Z:
    the recovered job's retry is put at the latest time an event can hold, as a run's retry is, not a ``ValueError``
    at every pass that leaves the job running for good."""
    from orchestrator.limits import LATEST_TIME

    job = orch.submit("t.echo", 1)
    late = LATEST_TIME - 60
    orch.clock = lambda: late
    assert make_worker(orch, worker_id="dead", lease_seconds=10).claim() is not None
    orch.clock = lambda: late + 11
    assert make_worker(orch, retry_base_seconds=3600.0).recover_stale() == [job]
    ev = events(orch, job)[-1]
    assert ev["type"] == "stale_recovered" and ev["data"]["retry_at"] == to_iso(LATEST_TIME)


def test_a_renewed_lease_record_delays_recovery(orch) -> None:
    from orchestrator.leases import Lease, write_lease

    job = orch.submit("t.echo", 1)
    t = orch.clock()
    claim = make_worker(orch, worker_id="busy", lease_seconds=10).claim(now=t)
    write_lease(orch.store, Lease(job, claim.run_id, claim.epoch, "busy", 1, t + 100, t + 90))
    assert make_worker(orch).recover_stale(now=t + 50) == []
    assert make_worker(orch).recover_stale(now=t + 101) == [job]


def test_status_shows_the_lease_as_renewed_by_heartbeats(orch) -> None:
    from orchestrator.clock import to_iso
    from orchestrator.leases import Lease, write_lease

    job = orch.submit("t.echo", 1)
    t = orch.clock()
    claim = make_worker(orch, worker_id="busy", lease_seconds=10).claim(now=t)
    assert orch.status(job).lease_expires_at == to_iso(t + 10)
    write_lease(orch.store, Lease(job, claim.run_id, claim.epoch, "busy", 1, t + 100, t + 90))
    assert orch.status(job).lease_expires_at == to_iso(t + 100)


def test_a_zombies_lease_record_cannot_extend_the_new_owners_lease(orch) -> None:
    from orchestrator.leases import Lease, lease_expiry, write_lease

    job = orch.submit("t.echo", 1)
    t = orch.clock()
    old = make_worker(orch, worker_id="zombie", lease_seconds=10).claim(now=t)
    make_worker(orch).recover_stale(now=t + 11)
    new = make_worker(orch, worker_id="new", lease_seconds=10).claim(now=t + 3600)
    write_lease(orch.store, Lease(job, old.run_id, old.epoch, "zombie", 1, t + 10**6, t + 3600))
    assert new.epoch == old.epoch + 1
    assert lease_expiry(orch.store, orch.load(job).state, t + 3600) == pytest.approx(t + 3610, abs=1e-3)


def _plant_lease(orch, job: str, run_id: str, **fields) -> None:
    record = {"job_id": job, "run_id": run_id, "epoch": 1, "worker_id": "w", "pid": 1,
              "expires_at": orch.clock() + 5, "renewed_at": orch.clock(), **fields}
    orch.store.put_aux("leases", f"{job}.1", json.dumps(record).encode())


@pytest.mark.parametrize("fields", [
    pytest.param({"expires_at": "soon"}, id="expiry_a_string"),
    pytest.param({"expires_at": None}, id="expiry_null"),
    pytest.param({"expires_at": True}, id="expiry_a_bool"),
    pytest.param({"renewed_at": [1]}, id="renewal_a_list"),
    pytest.param({"epoch": "1"}, id="epoch_a_string"),
    pytest.param({"pid": 1.5}, id="pid_a_float"),
    pytest.param({"worker_id": 7}, id="worker_a_number"),
    pytest.param({"extra": 1}, id="an_unknown_field"),
])
def test_a_lease_record_of_the_wrong_types_reads_as_no_record_so_the_claims_expiry_counts(orch, fields) -> None:
    job = orch.submit("t.echo", 1)
    t = orch.clock()
    claim = make_worker(orch, worker_id="dead", lease_seconds=10).claim(now=t)
    _plant_lease(orch, job, claim.run_id, **fields)
    assert orch.status(job).lease_expires_at == to_iso(t + 10)  # before the fix: TypeError
    assert [j.state for j in orch.jobs()] == ["running"]
    assert make_worker(orch).recover_stale(now=t + 9) == []
    assert make_worker(orch).recover_stale(now=t + 11) == [job]


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"a lease"', b"7", b"{not json"])
def test_a_lease_record_that_is_not_a_json_object_reads_as_no_record(orch, raw: bytes) -> None:
    from orchestrator.leases import read_lease

    job = orch.submit("t.echo", 1)
    make_worker(orch, worker_id="dead", lease_seconds=10).claim(now=orch.clock())
    orch.store.put_aux("leases", f"{job}.1", raw)
    assert read_lease(orch.store, job, 1) is None


@pytest.mark.parametrize("expires, renewed", [
    pytest.param(1e12, None, id="a_lease_longer_than_the_longest"),  # before the fix: "year 33658 is out of range"
    pytest.param(1e12, 1e12 - 30, id="a_renewal_from_the_far_future"),
    pytest.param(float("inf"), None, id="an_infinite_expiry"),
    pytest.param(None, "later", id="a_renewal_before_its_expiry"),
])
def test_a_lease_record_no_heartbeat_could_have_written_does_not_delay_recovery(orch, expires, renewed) -> None:
    job = orch.submit("t.echo", 1)
    t = orch.clock()
    claim = make_worker(orch, worker_id="dead", lease_seconds=10).claim(now=t)
    if renewed == "later":
        expires, renewed = t + 5, t + 50
    _plant_lease(orch, job, claim.run_id, expires_at=expires, renewed_at=t if renewed is None else renewed)
    assert orch.status(job).lease_expires_at == to_iso(t + 10)
    assert make_worker(orch).recover_stale(now=t + 11) == [job]


def test_a_renewed_lease_is_bounded_by_the_longest_lease_a_worker_takes(orch) -> None:
    from orchestrator.config import MAX_LEASE_SECONDS
    from orchestrator.errors import InvalidInputError

    job = orch.submit("t.echo", 1)
    t = orch.clock()
    claim = make_worker(orch, worker_id="busy", lease_seconds=10).claim(now=t)
    _plant_lease(orch, job, claim.run_id, expires_at=t + MAX_LEASE_SECONDS, renewed_at=t)  # the longest a heartbeat sets
    assert make_worker(orch).recover_stale(now=t + MAX_LEASE_SECONDS - 1) == []
    assert make_worker(orch).recover_stale(now=t + MAX_LEASE_SECONDS + 1) == [job]
    with pytest.raises(InvalidInputError, match="lease_seconds"):
        WorkerSettings(lease_seconds=MAX_LEASE_SECONDS + 1)


def test_status_shows_the_claims_expiry_when_the_renewed_one_is_past_the_last_date_it_can_show(base, keyring) -> None:
    from orchestrator import Orchestrator

    t = 253_402_290_000.0  # 9999-12-31T21:00:00Z: a day-long lease renewed now ends after year 9999
    orch = Orchestrator(base_path=base, project_id="proj", keyring=keyring, clock=lambda: t)
    job = orch.submit("t.echo", 1)
    claim = make_worker(orch, worker_id="busy", lease_seconds=10).claim(now=t)
    _plant_lease(orch, job, claim.run_id, expires_at=t + 86_000, renewed_at=t)
    assert orch.status(job).lease_expires_at == to_iso(t + 10)  # not "year 10000 is out of range"


@pytest.mark.parametrize("left, stored", [("half.csv", "half.csv"),
                                          ("password=hunter2xyz.csv", "password=[REDACTED]"),  # named as stored
                                          ("caf\udce9.csv", "caf\ufffd.csv")])  # bytes b"caf\xe9.csv": not UTF-8
def test_a_dead_run_that_left_artifacts_goes_to_waiting_human(orch, left: str, stored: str) -> None:
    job = orch.submit("t.echo", 1)
    t = orch.clock()
    make_worker(orch, worker_id="dead", lease_seconds=5).claim(now=t)
    folder = orch.settings.state_dir / "artifacts" / job
    folder.mkdir(parents=True)
    (folder / left).write_text("1,2")
    make_worker(orch).recover_stale(now=t + 6)
    st = orch.status(job)
    assert st.state == "waiting_human" and stored in st.question
    assert events(orch, job)[-1]["data"]["artifacts"] == [stored]
    assert "hunter2xyz" not in json.dumps(events(orch, job))
    assert [p.name for p in folder.iterdir()] == [stored]  # the file is found under the name recorded


def test_stale_recovery_removes_the_folders_of_runs_that_are_over_and_keeps_those_that_may_be_live(orch) -> None:
    import fcntl
    dead_job, live_job = orch.submit("t.echo", 1), orch.submit("t.echo", 2)
    t = orch.clock()
    dead = make_worker(orch, worker_id="dead", lease_seconds=5).claim(now=t)
    live = make_worker(orch, worker_id="other", lease_seconds=600).claim(now=t)
    assert (dead.job_id, live.job_id) == (dead_job, live_job)
    runs = orch.settings.state_dir / "runs"
    gone = "run-00000000000000aa"  # a run of a job that is gone (or finished long ago)
    zombie = "run-00000000000000bb"  # over by the events, but its handler still runs (holds its output)
    for run_id in (dead.run_id, live.run_id, gone, zombie):
        (runs / run_id).mkdir(parents=True)
        (runs / run_id / "output.log").write_text("password=hunter2 Authorization: Bearer hunter2xyz\n")
        (runs / run_id / "terminal.json").write_text('{"status": "done", "summary": "token=hunter2xyz"}')
    (runs / "host-1-ab").mkdir()  # a handler process folder: not a run's, left to its own sweep
    held = os.open(runs / zombie / "output.log", os.O_WRONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert make_worker(orch).recover_stale(now=t + 6) == [dead_job]  # the run of dead_job is over now
        assert sorted(p.name for p in runs.iterdir()) == sorted([live.run_id, zombie, "host-1-ab"])
    finally:
        os.close(held)
    make_worker(orch).recover_stale(now=t + 7)  # a new worker sweeps at once; the zombie has exited
    assert sorted(p.name for p in runs.iterdir()) == sorted([live.run_id, "host-1-ab"])


def test_a_stale_job_out_of_attempts_fails(orch) -> None:
    job = orch.submit("t.echo", 1, max_attempts=1)
    t = orch.clock()
    make_worker(orch, lease_seconds=5).claim(now=t)
    make_worker(orch).recover_stale(now=t + 6)
    assert orch.status(job).state == "failed"


def test_stale_recovery_reads_only_running_jobs(orch, monkeypatch) -> None:
    for i in range(20):
        orch.submit("t.echo", i)
    w = make_worker(orch)
    for _ in range(20):
        w.run_once()
    job = orch.submit("t.echo", "x")
    t = orch.clock()
    make_worker(orch, lease_seconds=1).claim(now=t)
    reads: list[str] = []
    real_read = orch.store.read
    monkeypatch.setattr(orch.store, "read", lambda stream, from_seq=1: reads.append(stream) or real_read(stream, from_seq))
    assert w.recover_stale(now=t + 2) == [job]
    assert set(reads) - {AUDIT_STREAM} == {job}


def test_a_worker_whose_lease_was_taken_over_cannot_write(orch) -> None:
    job = orch.submit("t.echo", "late")
    t = orch.clock()
    zombie = make_worker(orch, worker_id="zombie", lease_seconds=5)
    claim = zombie.claim(now=t)
    rescuer = make_worker(orch, worker_id="rescuer", lease_seconds=5)
    before: list[str] = []

    def rescued() -> None:
        rescuer.recover_stale(now=t + 6)
        assert rescuer.run_once(now=t + 3600).outcome == "succeeded"
        before.extend(types(orch, job))

    result = taken_over_while_it_runs(zombie, claim, rescued)  # wakes up and finishes its old run
    assert result.outcome == "lease_lost" and result.error_code == "LEASE_LOST"
    assert types(orch, job) == before and before[-1] == "job_succeeded"
    assert not any(e["actor"] == "worker:zombie" and e["type"] != "job_claimed" for e in events(orch, job))


def test_a_zombie_cannot_write_while_the_new_owner_is_still_running(orch) -> None:
    job = orch.submit("t.echo", "late")
    t = orch.clock()
    zombie = make_worker(orch, worker_id="zombie", lease_seconds=5)
    claim = zombie.claim(now=t)
    rescuer = make_worker(orch, worker_id="rescuer", lease_seconds=5)
    before: list[str] = []

    def reclaimed() -> None:
        rescuer.recover_stale(now=t + 6)
        assert rescuer.claim(now=t + 3600).epoch == claim.epoch + 1  # running under epoch 2
        before.extend(types(orch, job))

    assert taken_over_while_it_runs(zombie, claim, reclaimed).outcome == "lease_lost"
    assert types(orch, job) == before and orch.status(job).state == "running"


@pytest.mark.parametrize("how", ["run_once", "run"])
def test_a_claim_after_a_long_stale_recovery_takes_its_lease_from_when_it_is_claimed(
        base, keyring, monkeypatch, how: str) -> None:
    """The pass read the clock once, before stale recovery: a recovery that took a while (many stale jobs, each
    append fsynced, each run's processes killed and waited for) left the claim with a lease that had already run
    that long, or expired before it was written, and stamped before events written meanwhile."""
    import orchestrator.worker as worker_mod
    from orchestrator import Orchestrator
    from orchestrator.clock import from_iso

    wall = [1_800_000_000.0]
    orch = Orchestrator(base_path=base, project_id="proj", keyring=keyring, clock=lambda: wall[0])
    job = orch.submit("t.echo", "x")
    real = worker_mod.recover_expired

    def slow_recovery(*args, **kwargs):
        wall[0] += 40.0  # longer than the lease
        return real(*args, **kwargs)

    monkeypatch.setattr(worker_mod, "recover_expired", slow_recovery)
    w = make_worker(orch, lease_seconds=30.0)
    assert (w.run_once().job_id if how == "run_once" else w.run(max_jobs=1)) in (job, 1)
    claimed = next(e for e in events(orch, job) if e["type"] == "job_claimed")
    assert from_iso(claimed["ts"]) == 1_800_000_040.0
    assert from_iso(claimed["data"]["lease_expires_at"]) == 1_800_000_070.0
    assert orch.status(job).state == "succeeded"


# -- integrity ----------------------------------------------------------------------------------------
def test_a_tampered_job_is_never_run_and_the_refusal_is_audited(orch, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    job = orch.submit("command", {"argv": ["touch", str(marker)]})
    path = orch.store.path(job)
    path.write_bytes(path.read_bytes().replace(b"touch", b"rm -rf", 1))
    w = make_worker(orch)
    assert w.run_once() is None and not marker.exists()
    assert orch.status(job).integrity_error["code"] == "CONTEXT_SIGNATURE_INVALID"
    refusal = [a for a in audits(orch) if a["job_id"] == job]
    assert refusal[-1]["data"]["action"] == "run_refused" and "CONTEXT_SIGNATURE_INVALID" in refusal[-1]["data"]["note"]
    assert orch.queue.ready() == []  # dropped: not met again
    assert w.run_once() is None and len([a for a in audits(orch) if a["job_id"] == job]) == 1


# -- artifacts ------------------------------------------------------------------------------------------
def _two_jobs_sharing(orch, worker: Worker) -> tuple[str, str]:
    argv = [PY, "-c", "import os,json; open(os.path.join(os.environ['ORCH_ARTIFACTS_DIR'],'a.txt'),'w').write('A');"
            "open(os.environ['ORCH_TERMINAL_FILE'],'w').write(json.dumps({'status':'done','summary':'a'}))"]
    first = orch.submit("command", {"argv": argv})
    worker.run_once()
    second = orch.submit("t.echo", {"artifacts_from": [first]})
    worker.run_once()
    return first, second


def test_artifacts_are_never_shared_between_jobs_by_default(orch) -> None:
    first, second = _two_jobs_sharing(orch, make_worker(orch))
    root = orch.settings.state_dir / "artifacts"
    assert sorted(p.name for p in (root / first).iterdir()) == ["a.txt"]
    assert list((root / second).rglob("*")) == []


def test_the_explicit_artifacts_import_setting_copies_never_moves(orch) -> None:
    first, second = _two_jobs_sharing(orch, make_worker(orch, artifacts_import=True))
    root = orch.settings.state_dir / "artifacts"
    assert (root / second / "inputs" / first / "a.txt").read_text() == "A"
    assert (root / first / "a.txt").read_text() == "A"


def test_a_command_job_gets_a_copy_of_its_artifacts_from_in_its_folder_where_it_runs(orch) -> None:
    """``artifacts_from`` is a key of a command's input too (before: refused at submit, "unknown keys")."""
    worker = make_worker(orch, artifacts_import=True)
    first, _ = _two_jobs_sharing(orch, worker)
    code = ("import os,json; a=open(os.path.join('inputs', os.environ['FIRST'], 'a.txt')).read();"
            "open(os.environ['ORCH_TERMINAL_FILE'],'w').write(json.dumps({'status':'done','summary':'read '+a}))")
    job = orch.submit("command", {"argv": [PY, "-c", code], "env": {"FIRST": first}, "artifacts_from": first})
    assert worker.run_once().job_id == job
    st = orch.status(job)
    assert st.state == "succeeded" and st.result["summary"] == "read A"
    assert (orch.settings.state_dir / "artifacts" / first / "a.txt").read_text() == "A"  # copied, never moved


@pytest.mark.parametrize("names", [["../x"], "a b", 5, {"a": 1}, [1]], ids=["dotdot", "space", "number", "object",
                                                                       "number-in-list"])
def test_submit_refuses_a_command_input_whose_artifacts_from_names_no_job_id(orch, names: object) -> None:
    from orchestrator.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="^input artifacts_from"):  # its own message, not "unknown keys"
        orch.submit("command", {"argv": ["true"], "artifacts_from": names})
    assert list(orch.store.job_ids()) == []


@pytest.mark.parametrize("names", [["../x"], "a b", 5, {"a": 1}, [1]], ids=["dotdot", "space", "number", "object",
                                                                       "number-in-list"])
def test_an_artifacts_from_that_names_no_job_id_fails_the_run_as_bad_input_and_the_worker_runs_on(
        orch, names: object) -> None:
    w = make_worker(orch, artifacts_import=True)
    job = orch.submit("t.echo", {"artifacts_from": names})
    result = w.run_once()  # before the fix: InvalidIdError or TypeError out of the worker, the job left running
    assert (result.job_id, result.outcome, result.error_code) == (job, "failed", "INVALID_INPUT")
    assert "artifacts_from" in orch.status(job).last_error["message"]
    assert list((orch.settings.state_dir / "artifacts").glob("*/inputs")) == []
    nxt = orch.submit("t.echo", 1)
    assert w.run_once().job_id == nxt and orch.status(nxt).state == "succeeded"


class SlowCopy:
    """``os.sendfile`` (how ``shutil`` and the worker copy a file) taking ``pause`` s per call; ``at_call`` is run at
    the ``at``-th call, mid-copy."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, pause: float, at: int, at_call) -> None:
        self.calls, self.pause, self.at, self.at_call, self.real = 0, pause, at, at_call, os.sendfile
        monkeypatch.setattr(os, "sendfile", self)

    def __call__(self, *args):
        self.calls += 1
        if self.calls == self.at:
            self.at_call()
        time.sleep(self.pause)
        return self.real(*args)


def test_an_artifacts_from_job_with_no_folder_here_is_copied_from_nothing_and_the_run_says_so(
        orch, caplog: pytest.LogCaptureFixture) -> None:
    """A job imported without its artifact files (they stay where its worker ran: docs/postgres.md, step 4), or one
    that ran on another machine, has no folder here: its copy is passed over, and the run, which then goes on without
    those inputs, says so (until 2026-12-07 it said nothing)."""
    with_files, without = _a_job_with_files(orch, 1), orch.submit("t.echo", "ran elsewhere")
    orch.cancel(without, "not to run here")
    job = orch.submit("t.echo", {"artifacts_from": [with_files, without]})
    with caplog.at_level(logging.WARNING, logger="orchestrator.artifacts_import"):
        ran = make_worker(orch, artifacts_import=True).run_once()
    assert ran.job_id == job and ran.outcome == "succeeded"
    assert [w["code"] for w in ran.warnings] == ["ARTIFACTS_FROM_MISSING"]
    message = ran.warnings[0]["message"]
    assert without in message and with_files not in message, message
    assert "copy that folder" in message, message
    assert any(without in r.getMessage() for r in caplog.records)


def _a_job_with_files(orch, files: int) -> str:
    first = orch.submit("t.echo", 1)
    make_worker(orch).run_once()
    folder = orch.settings.state_dir / "artifacts" / first
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (folder / f"f{i:02d}.txt").write_text(f"file {i}")
    return first


def test_a_copy_of_artifacts_from_longer_than_the_lease_renews_it_so_no_other_worker_recovers_the_job(
        orch, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _a_job_with_files(orch, 12)
    job = orch.submit("t.echo", {"artifacts_from": [first]})
    other = make_worker(orch, worker_id="w2")
    recovered: list[list[str]] = []
    # 12 files, 0.1 s each: the copy takes 1.2 s, twice the lease; at 1 s in, another worker looks for stale jobs
    copy = SlowCopy(monkeypatch, 0.1, 10, lambda: recovered.append(other.recover_stale()))
    result = make_worker(orch, artifacts_import=True, lease_seconds=0.6).run_once()
    assert recovered == [[]]  # before the fix: [[job]], the job recovered (and run again) while it was copying
    assert (result.job_id, result.outcome) == (job, "succeeded") and copy.calls >= 12
    inputs = orch.settings.state_dir / "artifacts" / job / "inputs" / first
    assert sorted(p.name for p in inputs.iterdir()) == [f"f{i:02d}.txt" for i in range(12)]
    assert types(orch, job) == ["job_submitted", "job_claimed", "job_succeeded"]
    assert not any((orch.settings.state_dir / "leases").glob(f"{job}.*"))  # the renewed record went with it


def test_a_job_cancelled_while_its_artifacts_from_are_copied_stops_the_copy_at_the_next_heartbeat(
        orch, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _a_job_with_files(orch, 12)
    job = orch.submit("t.echo", {"artifacts_from": [first]})
    copy = SlowCopy(monkeypatch, 0.1, 3, lambda: orch.cancel(job, "no longer needed"))
    result = make_worker(orch, artifacts_import=True, lease_seconds=0.6).run_once()
    assert (result.job_id, result.outcome) == (job, "lease_lost")
    assert copy.calls < 12  # before the fix: every file copied, and the handler run, for a cancelled job
    assert orch.status(job).state == "cancelled"


def test_a_heartbeat_error_while_artifacts_from_are_copied_stops_the_worker_and_is_not_the_jobs_bad_input(
        orch, monkeypatch: pytest.MonkeyPatch) -> None:
    """A link planted in the lease record's place (``PATH_ESCAPE``) is the store's fault: the worker stops on it, as
    while a handler runs, and the job is left to stale recovery instead of failing as bad input, not retried."""
    import orchestrator.heartbeat as heartbeat_mod
    from orchestrator.errors import PathEscapeError

    def linked(*_a, **_k) -> None:
        raise PathEscapeError("leases/x is a symbolic link")

    first = _a_job_with_files(orch, 12)
    monkeypatch.setattr(heartbeat_mod, "write_lease", linked)
    job = orch.submit("t.echo", {"artifacts_from": [first]})
    SlowCopy(monkeypatch, 0.1, 0, lambda: None)
    with pytest.raises(PathEscapeError):
        make_worker(orch, artifacts_import=True, lease_seconds=0.6).run_once()
    assert orch.status(job).state == "running"


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_a_device_linked_from_an_artifacts_from_folder_fails_the_run_as_bad_input_and_is_never_read(
        orch, device: str) -> None:
    """``/dev/zero`` would be copied for ever (a lease renewed all along): no file but a regular one is copied."""
    first = _a_job_with_files(orch, 1)
    os.symlink(device, orch.settings.state_dir / "artifacts" / first / "dev")
    job = orch.submit("t.echo", {"artifacts_from": [first]}, max_attempts=3)
    result = make_worker(orch, artifacts_import=True).run_once()
    assert (result.job_id, result.outcome, result.error_code) == (job, "failed", "INVALID_INPUT")
    assert "not a regular file" in orch.status(job).last_error["message"]


def test_a_link_a_run_left_where_its_copied_input_was_is_replaced_by_the_next_copy_never_written_through(
        orch, tmp_path: Path) -> None:
    """The handler writes the job's folder, its copied inputs too: a link it left there to a file of the worker's
    (``~/.bashrc``) had the next run's copy write the other job's file into it."""
    first = _a_job_with_files(orch, 1)
    outside = tmp_path / "bashrc"
    outside.write_text("the worker's own")
    job = orch.submit("t.plant_link", {"artifacts_from": [first], "at": f"inputs/{first}/f00.txt",
                                       "to": str(outside)}, max_attempts=2)
    w = make_worker(orch, artifacts_import=True)
    first_run = w.run_once()
    assert first_run.outcome == "retry" and first_run.warnings == []  # nothing was there to remove
    second = w.run_once()
    assert (second.job_id, orch.status(job).state) == (job, "succeeded")
    assert outside.read_text() == "the worker's own"  # before the fix: "file 0"
    assert events(orch, job)[-1]["data"]["output"] == "file 0"  # the real copy, in the link's place
    # reported with the run (worker --json's "warnings"), not only logged: a run of this job planted it
    assert [w["code"] for w in second.warnings] == ["ARTIFACT_LINK_REMOVED"]
    assert f"never followed: inputs/{first}/f00.txt;" in second.warnings[0]["message"]


class _Killed(BaseException):
    """The worker dies where this is raised, as if SIGKILLed: no ``except Exception`` of it runs."""


def _die() -> None:
    raise _Killed()


@pytest.mark.parametrize("refusal", ["ENOSPC", "EDQUOT"])  # a full disk; a quota used up, which statvfs does not show
def test_a_full_disk_while_artifacts_from_are_copied_hands_the_job_back_and_stops_the_worker(
        orch, monkeypatch: pytest.MonkeyPatch, refusal: str) -> None:
    """A disk that takes no more is the host's fault, not the job's: failing the run spent an attempt per try, and
    ended the job failed because the machine's disk was full."""
    import errno

    from orchestrator.errors import StorageError

    first = _a_job_with_files(orch, 3)
    job = orch.submit("t.echo", {"artifacts_from": [first]}, max_attempts=3)
    calls: list[int] = []
    number = getattr(errno, refusal)

    def full(*_args):
        calls.append(1)
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr(os, "sendfile", full)
    with pytest.raises(StorageError) as err:
        make_worker(orch, artifacts_import=True).run_once()
    # before the fix: job_failed, HANDLER_START_FAILED, retried (each try an attempt), every file tried in turn
    _handed_back(orch, job)
    assert err.value.exit_code == 10 and err.value.message.endswith(f": {os.strerror(number)}")
    assert f"inputs/{first}/f0" in err.value.message and len(calls) == 1  # the file named; the copy stopped there
    assert not list((orch.settings.state_dir / "runs").iterdir())  # the run's folder removed
    # the file it failed on removed, its space given back (before the fix: left, empty here)
    assert list((orch.settings.state_dir / "artifacts" / job / "inputs" / first).iterdir()) == []
    monkeypatch.undo()
    result = make_worker(orch, artifacts_import=True).run_once()
    assert (result.job_id, result.outcome) == (job, "succeeded")


class SmallDisk:
    """The store's file system holding ``total`` bytes, ``free`` of them free, as ``os.fstatvfs`` says and as a copy
    finds: ``sendfile`` (how the copy writes) refuses once it wrote more than that, ``ENOSPC``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, free: int, total: int = 1 << 40) -> None:
        import errno

        real_sendfile, real_fstatvfs, self.written = os.sendfile, os.fstatvfs, 0

        def sendfile(out: int, source: int, offset, count: int) -> int:
            sent = real_sendfile(out, source, offset, count)
            self.written += sent
            if self.written > free:
                raise OSError(errno.ENOSPC, "No space left on device")
            return sent

        def fstatvfs(fd: int) -> os.statvfs_result:
            st = real_fstatvfs(fd)
            return os.statvfs_result((4096, 4096, total // 4096, free // 4096, free // 4096, 0, 0, 0, st.f_flag,
                                      st.f_namemax))

        monkeypatch.setattr(os, "sendfile", sendfile)
        monkeypatch.setattr(os, "fstatvfs", fstatvfs)


def test_a_sparse_file_in_an_artifacts_from_folder_is_copied_as_one_on_a_disk_smaller_than_its_size(
        orch, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's ``truncate -s 1G big`` takes no room; copied byte for byte on a 40 MB disk, it filled the disk: the
    store's fault, so the job was handed back and every worker that claimed it exited 10, for ever."""
    first = _a_job_with_files(orch, 1)
    with open(orch.settings.state_dir / "artifacts" / first / "big", "wb") as f:
        f.truncate(1 << 30)
    job = orch.submit("t.echo", {"artifacts_from": [first]}, max_attempts=2)
    SmallDisk(monkeypatch, free=40 << 20, total=40 << 20)
    result = make_worker(orch, artifacts_import=True).run_once()  # before the fix: StorageError, exit 10
    assert (result.job_id, result.outcome) == (job, "succeeded")
    copy = orch.settings.state_dir / "artifacts" / job / "inputs" / first / "big"
    assert copy.stat().st_size == 1 << 30 and copy.stat().st_blocks == 0


@pytest.mark.parametrize("total, outcomes, code", [(1 << 40, ["retry", "failed"], "HANDLER_START_FAILED"),
                                                   (2 << 20, ["failed"], "INVALID_INPUT")],
                         ids=["free-space", "whole-disk"])
def test_an_artifacts_from_folder_larger_than_the_disk_has_room_for_fails_the_job_and_never_stops_the_worker(
        orch, monkeypatch: pytest.MonkeyPatch, total: int, outcomes: list[str], code: str) -> None:
    """3 MiB to copy where 2 MiB are free: the job's input does not fit, the disk is not full. Copied until the disk
    refused, it was a full disk: the job handed back, no attempt spent, the worker stopped, and so every worker
    after it. Now a failed attempt, retried (room may be freed), and bad input where the whole disk is smaller."""
    first = _a_job_with_files(orch, 1)
    (orch.settings.state_dir / "artifacts" / first / "data.bin").write_bytes(os.urandom(3 << 20))
    job = orch.submit("t.echo", {"artifacts_from": [first]}, max_attempts=2)
    SmallDisk(monkeypatch, free=2 << 20, total=total)
    w = make_worker(orch, artifacts_import=True)
    for outcome in outcomes:
        result = w.run_once()  # before the fix: StorageError, exit 10, each time
        assert (result.job_id, result.outcome, result.error_code) == (job, outcome, code)
    message = orch.status(job).last_error["message"]
    assert "3.0 MiB" in message and "2.0 MiB" in message, message
    assert orch.status(job).state == "failed"
    assert not (orch.settings.state_dir / "artifacts" / job / "inputs" / first / "data.bin").exists()
    other = orch.submit("t.echo", 2)
    assert w.run_once().job_id == other  # the worker runs on


def test_a_link_loop_in_an_artifacts_from_folder_fails_the_run_as_bad_input_and_copies_nothing(orch) -> None:
    """``ln -s . d`` beside a file: followed 40 levels deep (40 copies), then ``HANDLER_START_FAILED``, retried,
    copying it all again each time."""
    first = _a_job_with_files(orch, 1)
    (orch.settings.state_dir / "artifacts" / first / "big.bin").write_bytes(b"x" * 100_000)
    os.symlink(".", orch.settings.state_dir / "artifacts" / first / "d")
    job = orch.submit("t.echo", {"artifacts_from": [first]}, max_attempts=3)
    result = make_worker(orch, artifacts_import=True).run_once()
    assert (result.job_id, result.outcome, result.error_code) == (job, "failed", "INVALID_INPUT")
    assert orch.status(job).last_error["message"].startswith(f"input artifacts_from: {first}/d leads back to ")
    assert not (orch.settings.state_dir / "artifacts" / job / "inputs" / first).exists()


def test_a_broken_link_in_an_artifacts_from_folder_fails_the_run_as_bad_input_and_copies_nothing(orch) -> None:
    """A link to nothing in the other job's folder fails every attempt the same way: a failed attempt, retried
    (``HANDLER_START_FAILED``, "No such file or directory") until 2026-12-07, each copying the files walked before."""
    first = _a_job_with_files(orch, 1)
    os.symlink("/nonexistent/report.md", orch.settings.state_dir / "artifacts" / first / "latest.md")
    job = orch.submit("t.echo", {"artifacts_from": [first]}, max_attempts=3)
    result = make_worker(orch, artifacts_import=True).run_once()
    assert (result.job_id, result.outcome, result.error_code) == (job, "failed", "INVALID_INPUT")
    assert orch.status(job).last_error["message"].startswith(
        f"input artifacts_from: {first}/latest.md is a symbolic link to '/nonexistent/report.md', which leads to nothing")
    assert not (orch.settings.state_dir / "artifacts" / job / "inputs" / first).exists()


@pytest.mark.parametrize("where", ["folder", "file"])
def test_an_artifacts_from_source_that_cannot_be_read_fails_the_run_and_the_worker_runs_on(
        orch, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Another job's folder the worker cannot read is this job's input, not the store: a failed attempt, retried
    (it may be made readable), as a file in it always was. The folder itself was taken for the worker's own
    (``WorkerFolders.made_by_worker``): the job handed back and the worker stopped, at every restart."""
    import errno

    first = _a_job_with_files(orch, 3)
    job = orch.submit("t.echo", {"artifacts_from": [first]}, max_attempts=3)
    source = orch.settings.state_dir / "artifacts" / first
    denied = source if where == "folder" else source / "f01.txt"
    open_ = os.open

    def opening(path, *args, **kw):  # the copy opens each entry relative to its folder's descriptor
        if kw.get("dir_fd") is not None and path == denied.name:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return open_(path, *args, **kw)

    monkeypatch.setattr(os, "open", opening)
    other = orch.submit("t.echo", 2)
    w = make_worker(orch, artifacts_import=True)
    result = w.run_once()  # before the fix ("folder"): StorageError, the job handed back, the worker stopped
    assert (result.job_id, result.outcome, result.error_code) == (job, "retry", "HANDLER_START_FAILED")
    relative = f"artifacts/{first}" + ("" if where == "folder" else "/f01.txt")
    assert orch.status(job).last_error["message"] == f"cannot copy input artifacts_from: {relative}: Permission denied"
    assert w.run_once().job_id == other  # the worker runs on


@pytest.mark.parametrize("point, nth", [("artifacts_import.after_chunk", 2), ("worker.after_start", 1)],
                         ids=["mid-copy", "after-the-copy"])
def test_a_worker_killed_after_copying_artifacts_from_left_no_artifact_so_stale_recovery_queues_the_job(
        orch, point: str, nth: int) -> None:
    """Files copied in from other jobs are not what the run produced: a run that died having made nothing else is
    queued again, not put to a human as if it had left work behind."""
    from orchestrator import faults

    first = _a_job_with_files(orch, 3)  # written just now: their copies' times fall within the run
    job = orch.submit("t.echo", {"artifacts_from": [first]}, max_attempts=3)
    faults.arm(point, _die, nth=nth)
    with pytest.raises(_Killed):
        make_worker(orch, worker_id="dead", artifacts_import=True, lease_seconds=5).run_once()
    inputs = orch.settings.state_dir / "artifacts" / job / "inputs" / first
    assert len(list(inputs.iterdir())) >= 2
    assert make_worker(orch).recover_stale(now=orch.clock() + 6) == [job]
    st = orch.load(job).state
    # before the fix: waiting_human, "left 3 artifact(s): inputs/<first>/f00.txt, ..."
    assert (st.state, st.failures) == ("queued", 1)
    assert events(orch, job)[-1]["data"]["artifacts"] == []
    assert len(list(inputs.iterdir())) >= 2  # the copies stay, as after any run: the next one copies over them


def test_a_dead_run_that_wrote_beside_its_copied_inputs_still_goes_to_waiting_human(orch) -> None:
    first = _a_job_with_files(orch, 1)
    job = orch.submit("t.echo", {"artifacts_from": [first]})
    t = orch.clock()
    make_worker(orch, worker_id="dead", lease_seconds=5).claim(now=t)
    folder = orch.settings.state_dir / "artifacts" / job
    (folder / "inputs" / first).mkdir(parents=True)
    (folder / "inputs" / first / "f00.txt").write_text("copied")
    (folder / "inputs" / "notes.md").write_text("its own")  # in inputs/, but not a copied job's folder
    (folder / "half.csv").write_text("1,2")
    make_worker(orch).recover_stale(now=t + 6)
    assert orch.status(job).state == "waiting_human"
    assert events(orch, job)[-1]["data"]["artifacts"] == ["half.csv", "inputs/notes.md"]


# -- a stop before the handler starts, and the grace period ---------------------------------------------------------
def _stop_at_start(worker: Worker, then=lambda: None) -> None:
    """``worker.stop()`` right after the next handler started (as a SIGTERM arriving then would), then ``then()``."""
    from orchestrator import faults

    faults.arm("worker.after_start", lambda: (worker.stop(), then()))


def test_a_worker_stopped_while_artifacts_from_are_copied_never_starts_the_handler_even_within_the_grace_period(
        orch, monkeypatch: pytest.MonkeyPatch) -> None:
    """The grace period lets a running handler finish; a job whose handler has not started is handed back at once."""
    first = _a_job_with_files(orch, 12)
    job = orch.submit("t.echo", {"artifacts_from": [first]})
    w = make_worker(orch, artifacts_import=True, stop_grace_seconds=30.0)
    copy = SlowCopy(monkeypatch, 0.05, 3, w.stop)
    asked = time.monotonic()
    result = w.run_once()
    # before the fix: the copy went on within the 30 s grace, then the handler started on a stopping worker: succeeded
    assert (result.job_id, result.outcome, result.error_code) == (job, "released", "WORKER_STOPPED_BEFORE_START")
    assert types(orch, job) == ["job_submitted", "job_claimed", "job_released"]
    assert copy.calls < 12 and time.monotonic() - asked < 5.0
    assert "before running it" in events(orch, job)[-1]["data"]["error"]
    assert orch.status(job).state == "queued" and orch.load(job).state.failures == 0


def test_a_stop_that_came_during_the_claim_hands_the_job_back_without_starting_its_handler(orch) -> None:
    from orchestrator import faults

    job = orch.submit("t.echo", 1)
    w = make_worker(orch, stop_grace_seconds=30.0)
    faults.arm("worker.after_claim", w.stop)  # a SIGTERM as the claim was written
    result = w.run_once()
    # before the fix: the handler started on the stopping worker (and, here, finished within the grace: succeeded)
    assert (result.job_id, result.outcome, result.error_code) == (job, "released", "WORKER_STOPPED_BEFORE_START")
    assert types(orch, job) == ["job_submitted", "job_claimed", "job_released"]
    assert not (orch.settings.state_dir / "runs" / result.run_id).exists()  # its run folder removed


def test_a_stop_before_the_handler_starts_is_not_counted_among_the_stops_in_a_row_that_fail_a_job(
        orch, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Four stops in a row fail a job (its run may be what stops its workers); a stop that came before its handler
    started is the worker's alone: neither a stop of the series nor its end."""
    first = _a_job_with_files(orch, 12)
    job = orch.submit("t.wait", {"artifacts_from": [first], "started": str(tmp_path / "started"),
                                 "release": str(tmp_path / "never")}, max_attempts=3)
    for _ in range(3):  # three runs a stop ended after their handler started (nothing copied): handed back, forgiven
        w = make_worker(orch, stop_grace_seconds=0.0)
        _stop_at_start(w)
        assert w.run_once().error_code == "WORKER_STOPPED"
    assert orch.load(job).state.stops == 3
    w = make_worker(orch, artifacts_import=True, stop_grace_seconds=0.0)
    SlowCopy(monkeypatch, 0.05, 3, w.stop)
    result = w.run_once()
    # before the fix: job_failed, WORKER_STOPPED, "4 runs in a row": an attempt used up for the worker's own stop
    assert (result.outcome, result.error_code) == ("released", "WORKER_STOPPED_BEFORE_START")
    st = orch.load(job).state
    assert (st.state, st.stops, st.failures) == ("queued", 3, 0)
    w = make_worker(orch, stop_grace_seconds=0.0)
    _stop_at_start(w)
    result = w.run_once()  # the series goes on: this is the fourth run in a row a stop ended
    assert (result.outcome, result.error_code) == ("retry", "WORKER_STOPPED")
    assert "4 runs in a row" in events(orch, job)[-1]["data"]["error"]


def test_a_handler_failing_with_a_code_the_orchestrator_reserves_is_malformed_payload_and_no_stop_of_its_worker(
        orch) -> None:
    """A handler's own ``failed`` with ``WORKER_STOPPED`` was recorded under that code (``status`` showed a stop that
    never was) and counted among the job's stops in a row: after three, a real stop of its worker (a restart) was a
    failed attempt instead of a hand-back at no cost. Such a failure is bounded by ``max_attempts`` either way."""
    from orchestrator.handlers import register

    register("t.says_stopped", lambda ctx: time.sleep(30) if ctx.attempt > 3 else {
        "status": "failed", "summary": "the upstream worker stopped", "error_code": "WORKER_STOPPED"})
    job = orch.submit("t.says_stopped", max_attempts=10)
    for _ in range(3):
        result = make_worker(orch).run_once()
        assert (result.job_id, result.outcome, result.error_code) == (job, "retry", "MALFORMED_PAYLOAD")
    st = orch.load(job).state
    assert (st.stops, st.failures, st.last_error["code"]) == (0, 3, "MALFORMED_PAYLOAD")
    assert "error_code 'WORKER_STOPPED' is reserved for the orchestrator" in st.last_error["message"]
    w = make_worker(orch, stop_grace_seconds=0.0)
    _stop_at_start(w)
    result = w.run_once()  # a restart while the fourth run runs: handed back, no attempt used
    assert (result.outcome, result.error_code) == ("released", "WORKER_STOPPED")
    st = orch.load(job).state
    assert (st.state, st.stops, st.failures) == ("queued", 1, 3)


def test_a_stop_that_came_while_the_handler_was_starting_gives_it_the_grace_period_from_the_stop_not_from_its_start(
        orch) -> None:
    """The grace period counts from the stop request: a handler whose start took a second after the stop gets what
    is left of it, not a whole grace period more."""
    job = orch.submit("t.sleep", 1.5)
    w = make_worker(orch, stop_grace_seconds=1.0)
    _stop_at_start(w, lambda: time.sleep(1.0))  # the stop came as the handler started, which took 1 s more
    result = w.run_once()
    # before the fix: 1 s of grace from when the worker first looked (2 s after the stop): the handler finished
    assert (result.job_id, result.outcome, result.error_code) == (job, "released", "WORKER_STOPPED")


def test_a_second_stop_signal_ends_the_grace_period_at_once(orch) -> None:
    import signal
    import threading

    job = orch.submit("t.sleep", 30)
    w = make_worker(orch, stop_grace_seconds=30.0)

    def signal_twice() -> None:
        for _ in range(2):
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGTERM)

    from orchestrator import faults

    faults.arm("worker.after_start", threading.Thread(target=signal_twice, daemon=True).start)
    started = time.monotonic()
    with w.handle_signals():
        result = w.run_once()
    assert (result.job_id, result.outcome, result.error_code) == (job, "released", "WORKER_STOPPED")
    assert time.monotonic() - started < 10.0  # not the 30 s grace period


def test_a_worker_asked_to_stop_claims_nothing_and_writes_nothing(orch) -> None:
    """A claim by a stopping worker would only be handed back: two events and one of the job's attempts for
    nothing. Nor does it recover stale jobs: a stop means end soon, and a recovery may take a while (many stale
    jobs, each run's processes killed and waited for); the workers that go on recover them."""
    dead = orch.submit("t.echo", 0)
    t = orch.clock()
    assert make_worker(orch, worker_id="dead", lease_seconds=1).claim(now=t).job_id == dead  # ... and it died
    job = orch.submit("t.echo", 1)
    w = make_worker(orch)
    w.stop()
    assert w.run_once(now=t + 60) is None
    # before the fix: the job claimed, then handed back (WORKER_STOPPED_BEFORE_START), its attempt count raised
    assert types(orch, job) == ["job_submitted"]
    st = orch.load(job).state
    assert (st.state, st.attempt, st.failures) == ("queued", 0, 0)
    assert orch.status(dead).state == "running"  # not recovered by the stopping worker
    assert make_worker(orch).run_once(now=t + 60) is not None  # the next worker recovers it, and runs a job


@pytest.mark.parametrize("how", ["run_once", "run"])
def test_a_stop_during_stale_recovery_claims_nothing(orch, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    job = orch.submit("t.echo", 1)
    w = make_worker(orch)
    recover = w.recover_stale

    def recover_then_stop(now=None):  # a SIGTERM while the worker recovered stale jobs
        recovered = recover(now)
        w.stop()
        return recovered

    monkeypatch.setattr(w, "recover_stale", recover_then_stop)
    if how == "run_once":
        assert w.run_once() is None
    else:
        assert w.run(idle_exit=True) == 0
    # before the fix: claimed, then handed back (WORKER_STOPPED_BEFORE_START)
    assert types(orch, job) == ["job_submitted"] and orch.load(job).state.attempt == 0


# -- command handler environment ---------------------------------------------------------------
def test_a_command_gets_the_orch_variables_but_never_the_orchestrators_secrets(orch, monkeypatch) -> None:
    monkeypatch.setenv("ORCH_SIGNING_KEY", "c2VjcmV0LXNlZWQ")
    monkeypatch.setenv("LLM_API_KEY", "sk-test-should-not-leak-000000000000")
    monkeypatch.setenv("HARMLESS", "1")
    code = ("import os,json; e=dict(os.environ); ctx=json.load(open(e['ORCH_CONTEXT_FILE']));"
            "open(e['ORCH_TERMINAL_FILE'],'w').write(json.dumps({'status':'done','summary':'env',"
            "'output':{'env':sorted(e),'ctx':ctx,'cwd':os.getcwd(),'extra':e.get('EXTRA')}}))")
    job = orch.submit("command", {"argv": [PY, "-c", code], "env": {"EXTRA": "yes"}})
    make_worker(orch).run_once()
    out = orch.status(job).result["output"]
    assert {"ORCH_JOB_ID", "ORCH_RUN_ID", "ORCH_CONTEXT_FILE", "ORCH_ARTIFACTS_DIR", "ORCH_TERMINAL_FILE",
            "HARMLESS"} <= set(out["env"])
    assert not {"ORCH_SIGNING_KEY", "LLM_API_KEY", "ORCH_KEYRING_DIR"} & set(out["env"])
    assert out["extra"] == "yes" and out["cwd"] == str(orch.settings.state_dir / "artifacts" / job)
    ctx = out["ctx"]
    assert ctx["job_id"] == job and ctx["attempt"] == 1 and ctx["run_id"] == orch.status(job).run_id
    assert ctx["answers"] == [] and ctx["revisions"] == [] and ctx["input"]["env"] == {"EXTRA": "yes"}


def test_a_command_that_does_not_exist_fails_without_retry(orch) -> None:
    job = orch.submit("command", {"argv": ["/no/such/program"]}, max_attempts=3)
    make_worker(orch).run_once()
    st = orch.status(job)
    assert st.state == "failed" and st.last_error["code"] == "COMMAND_NOT_FOUND"


@pytest.fixture
def programs(tmp_path: Path) -> Path:
    """A folder of things that are not programs: a folder, a file not executable, a script whose interpreter is
    missing, an executable file with no ``#!`` line."""
    folder = tmp_path / "programs"
    (folder / "a-folder").mkdir(parents=True)
    for name, text, mode in (("not-executable", "#!/bin/sh\n", 0o644), ("no-interpreter", "#!/no/such/sh\n", 0o755),
                             ("no-shebang", "echo hi\n", 0o755)):
        (folder / name).write_text(text)
        (folder / name).chmod(mode)
    return folder


@pytest.mark.parametrize("argv0, why", [
    ("/no/such/program", "command '/no/such/program' does not exist"),
    ("no-such-program-xyz", "command 'no-such-program-xyz' was not found on the PATH"),
    ("{programs}/a-folder", "command '{programs}/a-folder' is a folder, not a program"),
    ("{programs}/not-executable", "command '{programs}/not-executable' is not executable"),
    ("{programs}/no-interpreter", "command '{programs}/no-interpreter' names an interpreter on its #! line that "
                                  "does not exist"),
    ("{programs}/no-shebang", "command '{programs}/no-shebang' is not a program this system can run"),
], ids=["missing", "not-on-path", "folder", "not-executable", "no-interpreter", "no-shebang"])
def test_a_command_whose_program_cannot_be_run_is_command_not_found_saying_why_and_not_retried(
        orch, programs: Path, argv0: str, why: str) -> None:
    argv0, why = argv0.format(programs=programs), why.format(programs=programs)
    job = orch.submit("command", {"argv": [argv0]}, max_attempts=3)
    result = make_worker(orch).run_once()
    st = orch.status(job)
    assert (result.outcome, st.state, st.last_error["code"]) == ("failed", "failed", "COMMAND_NOT_FOUND")
    assert st.last_error["message"].startswith(why), st.last_error["message"]


@pytest.mark.parametrize("given_cwd", [None, "sub"], ids=["artifact-folder", "cwd"])
def test_a_relative_program_that_does_not_exist_is_command_not_found_naming_the_folder_it_was_looked_in(
        orch, given_cwd: str | None) -> None:
    """``./report.sh`` is looked up in the folder the command runs in (the job's artifact folder, or its ``cwd``),
    not where it was submitted: the message says which folder, and how to name the program instead."""
    job = orch.submit("command", {"argv": ["./report.sh"], **({"cwd": given_cwd} if given_cwd else {})})
    if given_cwd:
        (orch.settings.state_dir / "artifacts" / job / given_cwd).mkdir(parents=True)
    make_worker(orch).run_once()
    st = orch.status(job)
    folder = orch.settings.state_dir / "artifacts" / job / (given_cwd or "")
    assert (st.state, st.last_error["code"]) == ("failed", "COMMAND_NOT_FOUND")
    assert st.last_error["message"] == (
        f"command './report.sh' does not exist in {str(folder).rstrip('/')}, the folder the command runs in (the "
        "job's artifact folder, or its \"cwd\"): give the program's absolute path, or the \"cwd\" it is in")


@pytest.mark.parametrize("make, why", [
    (lambda p: p.write_text("a file"), "is not a folder"),
    (lambda p: p.symlink_to(p.with_name("nowhere")), "is a link to nothing"),
    (lambda p: None, "does not exist"),
], ids=["file", "dangling-link", "missing"])
def test_a_command_cwd_that_is_not_a_folder_is_invalid_input_naming_it(orch, tmp_path: Path, make, why: str) -> None:
    cwd = tmp_path / "cwd"
    make(cwd)
    job = orch.submit("command", {"argv": ["true"], "cwd": str(cwd)}, max_attempts=3)
    make_worker(orch).run_once()
    st = orch.status(job)
    assert (st.state, st.last_error["code"]) == ("failed", "INVALID_INPUT")
    assert st.last_error["message"] == f"command cwd {str(cwd)!r} {why}"


def test_a_command_cwd_that_cannot_be_entered_is_invalid_input_naming_it_not_a_missing_program(
        orch, tmp_path: Path, monkeypatch) -> None:
    """``chdir`` fails in the child after the worker saw a folder: removed meanwhile here (the tests run as root,
    for whom a folder's permission bits do not stop a ``chdir``; for other users a folder without ``x`` does)."""
    import orchestrator.handlers.command as command

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    spawn = command.spawn_command

    def removed_first(*args, **kwargs):
        cwd.rmdir()
        return spawn(*args, **kwargs)

    monkeypatch.setattr(command, "spawn_command", removed_first)
    job = orch.submit("command", {"argv": ["true"], "cwd": str(cwd)}, max_attempts=3)
    make_worker(orch).run_once()
    st = orch.status(job)
    assert (st.state, st.last_error["code"]) == ("failed", "INVALID_INPUT")
    assert st.last_error["message"] == f"command cwd {str(cwd)!r} cannot be entered: No such file or directory"


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), OSError(28, "No space left on device")],
                         ids=["permission", "disk-full"])
def test_a_command_whose_run_folder_cannot_be_written_is_handed_back_and_the_worker_stops(orch, monkeypatch,
                                                                                          error: OSError) -> None:
    """A file of the worker's own run folder it cannot write (a permission, as for a user other than root; a full
    disk) is the store's, not the job's: no attempt is used up, and the worker stops (``STORAGE_ERROR``, exit 10)
    instead of failing every job it claims the same way."""
    import orchestrator.handlers.command as command
    from orchestrator.errors import StorageError

    def refused(path, data):
        raise type(error)(error.errno, error.strerror, str(path))

    monkeypatch.setattr(command, "write_json_atomic", refused)
    job = orch.submit("command", {"argv": write_terminal({"status": "done", "summary": "ok"})}, max_attempts=3)
    with pytest.raises(StorageError, match="context.json"):
        make_worker(orch).run_once()  # before the fix: a failed attempt (HANDLER_START_FAILED), and on to the next job
    _handed_back(orch, job)
    monkeypatch.undo()
    assert make_worker(orch).run_once().outcome == "succeeded"


def _handed_back(orch, job: str) -> None:
    """``job`` was given back by a worker that could not use its own folders, as if never claimed."""
    assert types(orch, job) == ["job_submitted", "job_claimed", "job_released"]
    assert events(orch, job)[-1]["data"]["error_code"] == "STORAGE_ERROR"
    st = orch.load(job).state
    assert (st.state, st.failures, st.stops) == ("queued", 0, 0)


@pytest.mark.parametrize("kind, value, mode", [
    ("command", {"argv": write_terminal({"status": "done", "summary": "ok"})}, "reused"),
    ("t.echo", "x", "reused"), ("t.echo", "x", "per-run")])
def test_a_file_in_place_of_the_runs_folder_hands_every_job_back_and_stops_the_worker(
        orch, kind: str, value: object, mode: str) -> None:
    """Put there after the worker started (one that starts refuses it): each claimed run would fail on it, its
    attempts used up by a fault of the store."""
    from orchestrator.errors import StorageError

    w = make_worker(orch, handler_process=mode)
    job = orch.submit(kind, value, max_attempts=3)
    runs = orch.settings.state_dir / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.write_text("not a folder")
    with pytest.raises(StorageError, match="runs is a file where a folder belongs"):
        w.run_once()  # before the fix: job_failed, HANDLER_START_FAILED, retried (and the next job, and the next)
    _handed_back(orch, job)
    runs.unlink()
    assert make_worker(orch, handler_process=mode).run_once().outcome == "succeeded"


@pytest.fixture
def immutable():
    """``immutable(folder)``: a folder in which nothing can be made, even by root (``chattr +i``), undone after the
    test; the test is skipped where the file system cannot."""
    import subprocess

    made: list[Path] = []

    def make(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
        made.append(folder)

    yield make
    for folder in made:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize("folder", ["runs", "artifacts"])
def test_a_worker_that_cannot_write_in_runs_or_artifacts_refuses_to_start_and_claims_nothing(
        orch, immutable, folder: str) -> None:
    """Found at the first run, the job was claimed, handed back, and the worker stopped: a supervisor restarting it
    at once wrote that pair of events per restart until the path was fixed."""
    from orchestrator.errors import StorageError

    job = orch.submit("command", {"argv": write_terminal({"status": "done", "summary": "ok"})}, max_attempts=3)
    immutable(orch.settings.state_dir / folder)
    with pytest.raises(StorageError) as err:
        make_worker(orch).run_once()
    # before the fix: job_claimed and job_released (STORAGE_ERROR) on every start of the worker
    assert types(orch, job) == ["job_submitted"] and orch.load(job).state.attempt == 0
    assert err.value.code == "STORAGE_ERROR" and err.value.exit_code == 10
    assert err.value.message.endswith(f"/{folder}: permission denied; run the command as the store's owner, or fix "
                                      "the owner and mode")


def test_a_worker_checks_that_it_can_write_its_folders_by_making_one_and_leaves_nothing(orch) -> None:
    shutil.rmtree(orch.settings.state_dir / "runs", ignore_errors=True)
    make_worker(orch)
    for folder in ("runs", "artifacts"):  # made if missing, as a run would, and the probe removed
        assert list((orch.settings.state_dir / folder).iterdir()) == []


@pytest.mark.parametrize("kind,value,mode", [
    ("command", {"argv": write_terminal({"status": "done", "summary": "ok"})}, "reused"),
    ("command", {"argv": ["/no/such/program"]}, "reused"),  # its folder is made, then it cannot start
    ("t.echo", "x", "per-run"),
], ids=["command", "command-not-started", "python-per-run"])
def test_a_runs_folder_is_removed_once_its_outcome_is_recorded(orch, kind: str, value: object, mode: str) -> None:
    job = orch.submit(kind, value, max_attempts=1)
    assert make_worker(orch, handler_process=mode).run_once().job_id == job
    assert orch.status(job).state in ("succeeded", "failed")
    assert list((orch.settings.state_dir / "runs").iterdir()) == []


BAD_COMMAND_INPUTS = [None, "echo hi", {}, {"argv": []}, {"argv": "echo"}, {"argv": ["echo", 1]}, {"args": ["echo"]},
                      {"argv": ["ec\0ho"]}, {"argv": ["echo"], "cwd": 3}, {"argv": ["echo"], "env": ["A=1"]},
                      {"argv": ["echo"], "env": {"A": 1}}, {"argv": ["echo"], "env": {"A=B": "1"}},
                      {"argv": ["echo"], "env": {"A": "1\0"}}]


@pytest.mark.parametrize("value", BAD_COMMAND_INPUTS)
def test_submit_refuses_a_command_input_that_can_never_start_and_writes_nothing(orch, value: object) -> None:
    from orchestrator.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="command input"):
        orch.submit("command", value)
    assert list(orch.store.job_ids()) == []


@pytest.mark.parametrize("value", [{"args": "echo"}, {"argv": ["ec\0ho"]}, {"argv": ["echo"], "env": {"A": "\0"}}])
def test_a_command_job_stored_before_submit_checked_its_input_fails_with_invalid_input(orch, value: object) -> None:
    from orchestrator.submitted import context_digest, new_job_id

    options = {"audit": False, "max_attempts": 3, "priority": 0}
    job = new_job_id()
    orch.append(None, job, [("job_submitted", {"kind": "command", "input": value, "options": options,
                                               "context_digest": context_digest("command", value, options)})])
    result = make_worker(orch).run_once()
    assert (result.job_id, result.outcome, result.error_code) == (job, "failed", "INVALID_INPUT")


# -- timeouts -------------------------------------------------------------------------------------------
def test_a_run_past_its_timeout_is_killed_with_its_process_group(orch, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    code = (f"import subprocess,time; p=subprocess.Popen(['sleep','30']); open({str(pidfile)!r},'w').write(str(p.pid));"
            "time.sleep(30)")
    job = orch.submit("command", {"argv": [PY, "-c", code]}, timeout=0.5, max_attempts=2)
    result = make_worker(orch).run_once()
    assert result.outcome == "retry" and result.error_code == "NO_TERMINAL_SIGNAL_TIMEOUT"
    ev = events(orch, job)[-1]
    assert ev["type"] == "job_timeout" and ev["data"]["timeout"] == 0.5 and ev["data"]["retry_at"]
    grandchild = int(pidfile.read_text())
    assert wait_until(lambda: not alive(grandchild), 5.0)


def test_a_timeout_is_audited_with_its_event_not_left_for_heal(orch) -> None:
    from orchestrator.integrity import verify_project

    job = orch.submit("command", {"argv": [PY, "-c", "import time; time.sleep(30)"]}, timeout=0.3, max_attempts=1)
    make_worker(orch).run_once()
    entries = [json.loads(s.raw) for s in orch.store.read(AUDIT_STREAM)]
    timeouts = [e["data"] for e in entries if e["job_id"] == job and e["data"]["action"] == "job_timeout"]
    assert len(timeouts) == 1 and "healed" not in timeouts[0]
    assert verify_project(orch).warnings == []


def wait_until(predicate, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# -- a store out of reach ----------------------------------------------------------------------------
def _unreachable() -> None:
    from orchestrator.errors import StorageUnavailableError

    raise StorageUnavailableError("the connection was lost")


def test_an_outcome_whose_acknowledgement_was_lost_is_found_written_not_taken_for_a_takeover(orch) -> None:
    from orchestrator import faults

    job = orch.submit("t.echo", {"x": 1})
    worker = make_worker(orch)
    claim = worker.claim()
    faults.arm("append.after_event", _unreachable)  # the outcome is durable; its acknowledgement is lost
    try:
        result = worker.execute(claim)
    finally:
        faults.disarm_all()
    assert result.outcome == "succeeded"
    assert [e["type"] for e in events(orch, job)] == ["job_submitted", "job_claimed", "job_succeeded"]


def test_an_outcome_refused_by_a_store_out_of_reach_is_written_once_it_is_back(orch) -> None:
    from orchestrator import faults

    job = orch.submit("t.echo", {"x": 1})
    worker = make_worker(orch)
    claim = worker.claim()
    faults.arm("store.append.before_write", _unreachable)  # nothing written: the worker waits, then appends
    try:
        assert worker.execute(claim).outcome == "succeeded"
    finally:
        faults.disarm_all()
    assert [e["type"] for e in events(orch, job)] == ["job_submitted", "job_claimed", "job_succeeded"]


def _claims_failing_at(worker, failing: set[int], monkeypatch) -> None:
    """Make the worker's n-th claims (counted from 1) find the store out of reach."""
    real_claim, calls = worker.claim, []

    def claim(now=None):
        calls.append(now)
        if len(calls) in failing:
            _unreachable()
        return real_claim(now)

    monkeypatch.setattr(worker, "claim", claim)


def test_a_worker_lives_through_a_store_out_of_reach_once_it_has_reached_it(orch, monkeypatch) -> None:
    jobs = [orch.submit("t.echo", {"x": i}) for i in range(2)]
    worker = make_worker(orch)
    _claims_failing_at(worker, {2, 3}, monkeypatch)  # after the first job, the store goes away for a while
    assert worker.run(max_jobs=2) == 2
    assert [orch.status(j).state for j in jobs] == ["succeeded", "succeeded"]


def test_a_worker_that_never_reached_its_store_exits_with_the_error(orch, monkeypatch) -> None:
    from orchestrator.errors import StorageUnavailableError

    orch.submit("t.echo", {"x": 1})
    worker = make_worker(orch)
    monkeypatch.setattr(orch.store, "has_jobs", _unreachable)  # its first call, before anything else
    with pytest.raises(StorageUnavailableError):  # a wrong URL, a server that is not there: a setting to fix
        worker.run(max_jobs=1)


def test_a_worker_whose_first_pass_loses_the_store_it_reached_waits_for_it(orch, monkeypatch) -> None:
    job = orch.submit("t.echo", {"x": 1})
    worker = make_worker(orch)
    _claims_failing_at(worker, {1}, monkeypatch)  # a restart of the server right after the worker connected
    assert worker.run(max_jobs=1) == 1 and orch.status(job).state == "succeeded"


def test_once_waits_out_a_store_lost_during_its_claim_and_runs_the_job(orch, monkeypatch) -> None:
    job = orch.submit("t.echo", {"x": 1})
    worker = make_worker(orch)
    _claims_failing_at(worker, {1, 2}, monkeypatch)  # a server restart between the recovery and the claim
    result = worker.run_once()
    assert result is not None and result.outcome == "succeeded" and orch.status(job).state == "succeeded"


def test_once_waits_out_a_store_lost_during_stale_recovery(orch, monkeypatch) -> None:
    job = orch.submit("t.echo", {"x": 1})
    worker = make_worker(orch)
    real_recover, calls = worker.recover_stale, []

    def recover_stale(now=None):
        calls.append(now)
        if len(calls) == 1:
            _unreachable()
        return real_recover(now)

    monkeypatch.setattr(worker, "recover_stale", recover_stale)
    result = worker.run_once()
    assert len(calls) == 2 and result is not None and orch.status(job).state == "succeeded"


def test_once_gives_up_on_a_store_lost_for_longer_than_store_wait_seconds_and_says_so(orch, monkeypatch) -> None:
    import time

    from orchestrator.errors import StorageUnavailableError

    job = orch.submit("t.echo", {"x": 1})
    worker = make_worker(orch, store_wait_seconds=0.5)
    _claims_failing_at(worker, set(range(1, 100)), monkeypatch)
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as caught:
        worker.run_once()
    assert 0.5 <= time.monotonic() - started < 5.0
    assert "the connection was lost; still out of reach after 0.5s of retries" in caught.value.message
    assert "no job was run" in caught.value.message and orch.status(job).state == "queued"


def test_once_with_store_wait_seconds_0_raises_the_first_loss(orch, monkeypatch) -> None:
    from orchestrator.errors import StorageUnavailableError

    orch.submit("t.echo", {"x": 1})
    worker = make_worker(orch, store_wait_seconds=0)
    _claims_failing_at(worker, {1}, monkeypatch)
    with pytest.raises(StorageUnavailableError, match="^the connection was lost$"):
        worker.run_once()


def test_once_stopped_while_it_waits_for_the_store_raises_without_claiming(orch, monkeypatch) -> None:
    from orchestrator.errors import StorageUnavailableError

    job = orch.submit("t.echo", {"x": 1})
    worker = make_worker(orch, store_wait_seconds=30)
    real_claim = worker.claim

    def claim(now=None):
        worker.stop()  # SIGTERM as the store goes away
        monkeypatch.setattr(worker, "claim", real_claim)
        _unreachable()

    monkeypatch.setattr(worker, "claim", claim)
    with pytest.raises(StorageUnavailableError, match="a stop was requested while waiting for it"):
        worker.run_once()
    assert orch.status(job).state == "queued"


def test_once_that_never_reached_its_store_raises_at_once(orch, monkeypatch) -> None:
    from orchestrator.errors import StorageUnavailableError

    job = orch.submit("t.echo", {"x": 1})
    worker = make_worker(orch)  # store_wait_seconds: 30 by default
    monkeypatch.setattr(orch.store, "has_jobs", _unreachable)  # its first call, before anything else
    with pytest.raises(StorageUnavailableError, match="^the connection was lost$"):
        worker.run_once()
    assert orch.status(job).state == "queued"


def test_a_heartbeat_that_cannot_reach_the_store_lets_the_run_go_on_while_its_lease_holds(orch, monkeypatch) -> None:
    """Every heartbeat fails (from 0.5 s on), yet the run, done at 0.8 s, ends before it had to be stopped
    (at 1.2 s, a fifth of its 1.5 s lease before the claim's lease ends): it succeeds, not taken over."""
    job = orch.submit("t.lease", {"sleep": 0.8})
    worker = make_worker(orch, lease_seconds=1.5)
    real_read, failed = orch.store.read, []

    def read(stream, from_seq=1):
        if stream == job and from_seq > 1:  # the heartbeat's look for events since the claim
            failed.append(from_seq)
            _unreachable()
        return real_read(stream, from_seq)

    monkeypatch.setattr(orch.store, "read", read)
    (orch.settings.state_dir / "leases").mkdir(exist_ok=True)  # the handler lists it: none was renewed
    assert worker.run_once().outcome == "succeeded" and failed  # not killed as "taken over"
