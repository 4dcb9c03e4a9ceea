"""The audit timeline (merged, verified, one job) and the projection behind ``metrics``."""
from __future__ import annotations

import json
import os
import sys
import shutil

import pytest

import jobstates as js
from helpers import submitted_as_before
from orchestrator import Orchestrator
from orchestrator.api import HEADS_AREA
from orchestrator.errors import InvalidIdError, InvalidInputError, JobNotFoundError, RunNotFoundError
from orchestrator.leases import Lease, write_lease
from orchestrator.metrics import Thresholds, compute
from orchestrator.projection import Columns, refresh, summarize
from orchestrator.signing import Keyring
from orchestrator.store.base import AUDIT_STREAM
from orchestrator.timeline import timeline


def test_timeline_merges_events_and_entries_in_order_with_status(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch, run_id="run-1")
    orch.resume(job_id, "yes")
    tl = timeline(orch, job_id=job_id)
    assert [(ln["source"], ln["what"]) for ln in tl["lines"]] == [
        ("event", "job_submitted"), ("event", "job_claimed"), ("event", "human_input_requested"),
        ("event", "job_resumed"), ("audit", "resume")]
    assert tl["ok"] and {ln["status"] for ln in tl["lines"]} == {"ok"}


T0 = 1_796_141_640.0  # 2026-12-01T16:14:00Z


def order(tl: dict) -> list[tuple[str, str]]:
    return [(ln["source"], ln["what"]) for ln in tl["lines"]]


def test_a_jobs_events_stay_in_sequence_order_when_the_clock_steps_back(base, keyring) -> None:
    """Clocks affect only liveness (docs/guarantees.md section 2): an event written by a clock an hour behind
    is still shown after the events it follows, and its audit entry right after it."""
    orch = Orchestrator(base_path=base, project_id="proj", keyring=keyring, clock=lambda: T0)
    job_id = js.waiting_human(orch)
    orch.resume(job_id, "blue", now=T0 - 3600)
    orch.cancel(job_id, "stop", now=T0 + 60)
    tl = timeline(orch, job_id=job_id)
    assert [(ln["source"], ln["seq"]) for ln in tl["lines"]] == [
        ("event", 1), ("event", 2), ("event", 3), ("event", 4), ("audit", 1), ("event", 5), ("audit", 2)]
    assert order(tl)[3:5] == [("event", "job_resumed"), ("audit", "resume")] and tl["ok"]


def test_an_entry_naming_no_event_is_merged_in_by_time_and_never_moves_an_event(base, keyring) -> None:
    from orchestrator import audit

    orch = Orchestrator(base_path=base, project_id="proj", keyring=keyring, clock=lambda: T0)
    job_id = orch.submit("echo", {})
    js.claim(orch, job_id, "run-1", now=T0 + 10)
    audit.record(orch, job_id=job_id, run_id="run-1", action="run_refused", actor="w2", note="early", now=T0 + 15)
    js.finish(orch, job_id, "human_input_requested", {"question": "Deploy?"}, now=T0 + 20)
    orch.resume(job_id, "blue", now=T0 - 3600)  # the clock stepped back an hour
    audit.record(orch, job_id=job_id, run_id="run-1", action="run_refused", actor="w2", note="late", now=T0 - 3500)
    assert [(ln["what"], ln["detail"]) for ln in timeline(orch, job_id=job_id)["lines"]] == [
        ("job_submitted", "kind=echo"), ("job_claimed", "worker=w1 attempt=1"), ("run_refused", "early"),
        ("human_input_requested", "question: Deploy?"), ("job_resumed", "answer: blue (question: Deploy?)"),
        ("resume", "blue -> job_resumed #4"), ("run_refused", "late")]


def test_since_cuts_the_timeline_at_its_first_line_at_or_after_the_time(base, keyring) -> None:
    """Every line after the cut happened later, even one stamped earlier by a clock stepped back."""
    orch = Orchestrator(base_path=base, project_id="proj", keyring=keyring, clock=lambda: T0)
    job_id = js.waiting_human(orch)  # events 1-3 at T0
    orch.resume(job_id, "blue", now=T0 - 3600)
    orch.cancel(job_id, "stop", now=T0 + 60)

    def since(iso: str) -> list[tuple[str, int]]:
        return [(ln["source"], ln["seq"]) for ln in timeline(orch, job_id=job_id, since=iso)["lines"]]

    assert since("2026-12-01T16:14:00Z") == since("2026-12-01T15:00:00Z") == [
        ("event", 1), ("event", 2), ("event", 3), ("event", 4), ("audit", 1), ("event", 5), ("audit", 2)]
    assert since("2026-12-01T16:14:30Z") == [("event", 5), ("audit", 2)]
    assert since("2026-12-01T16:16:00Z") == []
    # with --action: the lines of that action after the cut
    assert [ln["seq"] for ln in timeline(orch, job_id=job_id, since="2026-12-01T16:14:00", action="resume")["lines"]
            ] == [4, 1]


def test_a_resume_line_shows_the_answer(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch, question="Which colour?")
    orch.resume(job_id, "blue")
    details = {ln["what"]: ln["detail"] for ln in timeline(orch, job_id=job_id)["lines"]}
    assert details["human_input_requested"] == "question: Which colour?"
    assert details["job_resumed"] == "answer: blue (question: Which colour?)"


def test_timeline_marks_a_tampered_audit_entry_and_a_missing_event(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch)
    orch.resume(job_id, "yes")
    orch.cancel(job_id, "stop")
    audit_path = orch.store.path(AUDIT_STREAM)
    audit_path.write_bytes(audit_path.read_bytes().replace(b'"note":"stop"', b'"note":"STOP"'))
    path = orch.store.path(job_id)
    path.write_bytes(b"".join(ln + b"\n" for ln in path.read_bytes().split(b"\n")[:4]))  # cut the cancel
    (orch.settings.state_dir / "heads" / job_id).unlink()
    statuses = {ln["what"]: ln["status"] for ln in timeline(orch, job_id=job_id)["lines"] if ln["source"] == "audit"}
    assert statuses == {"resume": "ok", "cancel": "SIGNATURE_INVALID"}
    audit_path.write_bytes(audit_path.read_bytes().replace(b'"note":"STOP"', b'"note":"stop"'))
    tl = timeline(orch, job_id=job_id)
    assert {ln["what"]: ln["status"] for ln in tl["lines"] if ln["source"] == "audit"}["cancel"] == "AUDIT_EVENT_MISSING"
    assert not tl["ok"]


def test_a_job_whose_files_were_deleted_shows_its_audit_entries_as_audit_event_missing(orch: Orchestrator) -> None:
    """Its events file and head record gone, the audit log still says what happened to it: that is shown, as
    ``verify`` reports it (AUDIT_EVENT_MISSING, exit 7), not JOB_NOT_FOUND, by job id or by one of its runs."""
    job_id = js.stale_to_waiting_human(orch, run_id="run-gone")
    orch.resume(job_id, "yes")
    orch.store.path(job_id).unlink()
    (orch.settings.state_dir / HEADS_AREA / job_id).unlink()
    tl = timeline(orch, job_id=job_id)
    assert [(ln["source"], ln["what"], ln["status"]) for ln in tl["lines"]] == [
        ("audit", "stale_recovered", "AUDIT_EVENT_MISSING"), ("audit", "resume", "AUDIT_EVENT_MISSING")]
    assert not tl["ok"] and [p["code"] for p in tl["problems"]] == ["AUDIT_EVENT_MISSING"]
    assert job_id in tl["problems"][0]["message"]
    by_run = timeline(orch, run_id="run-gone")
    assert by_run["job_id"] == job_id and not by_run["ok"]
    assert all(ln["status"] == "AUDIT_EVENT_MISSING" and ln["run_id"] == "run-gone" for ln in by_run["lines"])


def test_a_job_with_neither_events_nor_audit_entries_is_not_found(orch: Orchestrator) -> None:
    job_id = orch.submit("echo", {"text": "hello"})
    orch.store.path(job_id).unlink()
    (orch.settings.state_dir / HEADS_AREA / job_id).unlink()
    with pytest.raises(JobNotFoundError):
        timeline(orch, job_id=job_id)
    with pytest.raises(JobNotFoundError):
        timeline(orch, job_id="job-never-submitted")


def test_timeline_reads_one_job_never_the_others(orch: Orchestrator, monkeypatch) -> None:
    others = [js.waiting_human(orch) for _ in range(3)]
    job_id = js.waiting_human(orch, run_id="run-x")
    orch.resume(job_id, "yes")
    read = []
    real_read = orch.store.read
    monkeypatch.setattr(orch.store, "read", lambda stream, from_seq=1: read.append(stream) or real_read(stream, from_seq))
    monkeypatch.setattr(orch.store, "job_ids", lambda: pytest.fail("listed every job"))
    timeline(orch, run_id="run-x")
    assert set(read) == {job_id, AUDIT_STREAM} and not set(others) & set(read)


def test_a_run_without_audit_entries_is_found_through_the_projection(orch: Orchestrator) -> None:
    job_id = js.running(orch, run_id="run-quiet")
    tl = timeline(orch, run_id="run-quiet")
    assert tl["job_id"] == job_id and [ln["what"] for ln in tl["lines"]] == ["job_claimed"]
    with pytest.raises(RunNotFoundError):
        timeline(orch, run_id="run-nobody")


@pytest.mark.parametrize("action", ["approved", "bogus", "Resume", ""])
def test_an_action_filter_that_names_no_audit_action_or_event_type_is_refused(orch: Orchestrator, action: str) -> None:
    """It would match nothing: an empty timeline that reads as "it never happened"."""
    job_id = js.waiting_human(orch)
    with pytest.raises(InvalidInputError, match="no audit action or event type"):
        timeline(orch, job_id=job_id, action=action)
    orch.resume(job_id, "yes")
    assert [ln["what"] for ln in timeline(orch, job_id=job_id, action="resume")["lines"]] == ["job_resumed", "resume"]


@pytest.mark.parametrize("action, event", [("resume", "job_resumed"), ("cancel", "job_cancelled"),
                                            ("job_timeout", "job_timeout")])
def test_an_action_filter_shows_the_audited_event_with_its_entry_by_either_name(orch: Orchestrator, action,
                                                                                 event) -> None:
    """``--action resume`` and ``--action job_resumed`` name the same thing: the event and the entry that explains
    it (as ``--action job_timeout`` does, where both have one name); by the event type, the entry was left out."""
    job_id = js.waiting_human(orch) if event != "job_timeout" else js.running(orch)
    if event == "job_timeout":
        js.finish(orch, job_id, "job_timeout", {"error_code": "NO_TERMINAL_SIGNAL_TIMEOUT", "timeout": 5.0})
        from orchestrator import audit
        audit.heal(orch, [orch.load(job_id)])
    else:
        getattr(orch, action)(job_id, *(["yes"] if action == "resume" else []))
    by_action, by_event = (timeline(orch, job_id=job_id, action=a)["lines"] for a in (action, event))
    assert [(ln["source"], ln["what"]) for ln in by_event] == [("event", event), ("audit", action)]
    assert by_event == by_action


def test_every_audit_action_the_code_records_is_one_the_filter_accepts() -> None:
    import re
    from pathlib import Path

    import orchestrator
    from orchestrator.timeline import FILTERS

    root = Path(orchestrator.__file__).parent
    recorded = {name for path in root.rglob("*.py") if "reliability" not in path.parts  # its campaigns' own notes
                for name in re.findall(r'(?:action=|audit=\()"(\w+)"', path.read_text())}
    assert recorded and recorded <= set(FILTERS), recorded - set(FILTERS)


def test_a_malformed_run_id_is_invalid_id_not_run_not_found(orch: Orchestrator) -> None:
    job_id = js.running(orch)
    for run_id in ("../x", "a b", ""):
        with pytest.raises(InvalidIdError, match="run id"):
            timeline(orch, run_id=run_id)
        with pytest.raises(InvalidIdError, match="run id"):
            timeline(orch, job_id=job_id, run_id=run_id)


def test_a_run_of_another_job_is_run_not_found_not_an_empty_timeline(orch: Orchestrator) -> None:
    mine, theirs = js.running(orch, run_id="run-mine"), js.running(orch, run_id="run-theirs")
    with pytest.raises(RunNotFoundError, match=f"job {mine} has no run 'run-theirs'"):
        timeline(orch, job_id=mine, run_id="run-theirs")
    assert [ln["what"] for ln in timeline(orch, job_id=theirs, run_id="run-theirs")["lines"]] == ["job_claimed"]


def test_summary_counts_each_resume_by_what_happened_next(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch, run_id="r1")
    orch.resume(job_id, "try A")
    js.waiting_human(orch, run_id="r2", job_id=job_id)  # asked again: that resume failed
    orch.resume(job_id, "try B")
    js.claim(orch, job_id, "r3")
    js.finish(orch, job_id, "job_succeeded", {"summary": "done"})
    row = summarize(orch.load(job_id))
    assert (row.resumes_ok, row.resumes_failed, row.state, row.runs) == (1, 1, "succeeded", ["r1", "r2", "r3"])
    assert row.final_at is not None and row.final_at >= row.submitted_at


def test_projection_replays_only_changed_jobs_and_can_be_deleted(orch: Orchestrator, monkeypatch) -> None:
    ids = [js.waiting_human(orch) for _ in range(4)]
    first = refresh(orch)
    assert first.replayed == 4
    assert refresh(orch).replayed == 0
    orch.resume(ids[0], "yes")
    loads = []
    real_load = orch.load
    monkeypatch.setattr(orch, "load", lambda j, **kw: loads.append(j) or real_load(j, **kw))
    again = refresh(orch)
    assert again.replayed == 1 and loads == [ids[0]] and again.rows[ids[0]].state == "queued"
    shutil.rmtree(orch.settings.state_dir / "projections")
    rebuilt = refresh(orch)
    assert rebuilt.replayed == 4 and rebuilt.rows == again.rows


def test_a_job_rewritten_to_the_same_size_is_replayed_again(orch: Orchestrator) -> None:
    job_id = orch.submit("echo", {"text": "hello"})
    assert refresh(orch).rows[job_id].ok
    path = orch.store.path(job_id)
    path.write_bytes(path.read_bytes().replace(b"hello", b"HELLO"))
    assert refresh(orch).rows[job_id].ok is False


def test_a_head_record_damaged_in_place_after_the_cache_was_written_is_an_integrity_error(orch: Orchestrator) -> None:
    """A torn sector (or a hand) changes the head record, never the events file: the job gets no new event after
    it, so its row would stay as it was, the job healthy in ``metrics`` while ``verify`` reports TRUNCATED."""
    job_id = orch.submit("echo", {"text": "hello"})
    assert refresh(orch).rows[job_id].ok
    head = orch.settings.state_dir / HEADS_AREA / job_id
    data = head.read_bytes()
    record = json.loads(data.split(b"\n")[0])
    record["seq"] = 5
    line = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    with open(head, "r+b") as f:
        f.write(line + b"\n" + b" " * (len(data) - len(line) - 1))
    assert refresh(orch).rows[job_id].ok is False
    assert orch.metrics().integrity_errors == 1


def test_an_events_file_put_back_with_its_old_size_and_mtime_is_replayed_again(orch: Orchestrator) -> None:
    """A copy restored with ``cp -a`` / ``rsync -a``, or an edit followed by ``touch -d``, keeps the size and mtime
    the row was written with; the inode's change time (ctime), which no tool sets, tells it apart."""
    job_id = orch.submit("echo", {"text": "hello"})
    assert refresh(orch).rows[job_id].ok
    path = orch.store.path(job_id)
    before = path.stat()
    path.write_bytes(path.read_bytes().replace(b"hello", b"HELLO"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert refresh(orch).rows[job_id].ok is False


def test_a_job_read_again_and_unchanged_keeps_metrics_on_its_warm_path(orch: Orchestrator) -> None:
    """Reading a job (``status``, ``verify``, a refresh) changes neither its events file nor its head record."""
    ids = [orch.submit("echo", {"text": str(i)}) for i in range(3)]
    assert refresh(orch).replayed == 3
    for job_id in ids:
        orch.load(job_id)
    orch.verify()
    assert refresh(orch).replayed == 0


def test_stalled_jobs_are_counted_at_the_injected_now(base, keyring) -> None:
    now = [1_900_000_000.0]
    orch = Orchestrator(base_path=base, project_id="proj", keyring=keyring, clock=lambda: now[0])
    js.running(orch, lease="2030-03-17T17:46:40.000000Z")  # 1_900_000_000 + 0
    js.running(orch, lease="2030-03-17T17:56:40.000000Z")  # + 600 s
    rows = refresh(orch).rows.values()
    assert compute("proj", rows, now[0] + 1, Thresholds()).stalled_count == 1
    assert compute("proj", rows, now[0] + 601, Thresholds()).stalled_count == 2
    assert compute("proj", rows, now[0] - 1, Thresholds()).stalled_count == 0


def test_a_running_job_whose_heartbeat_renewed_its_lease_is_not_stalled(base, keyring) -> None:
    now = [1_900_000_000.0]
    orch = Orchestrator(base_path=base, project_id="proj", keyring=keyring, clock=lambda: now[0])
    healthy = js.running(orch, run_id="run-1", lease="2030-03-17T17:46:40.000000Z")  # claim's expiry: now + 0
    gone = js.running(orch, run_id="run-2", lease="2030-03-17T17:46:40.000000Z")
    write_lease(orch.store, Lease(job_id=healthy, run_id="run-1", epoch=1, worker_id="w1", pid=1,
                                  expires_at=now[0] + 600, renewed_at=now[0]))
    cols = refresh(orch).columns
    renewed = orch.lease_expiry
    assert compute("proj", cols, now[0] + 1, Thresholds(), renewed_lease=renewed).stalled_count == 1  # only `gone`
    assert compute("proj", cols, now[0] + 601, Thresholds(), renewed_lease=renewed).stalled_count == 2
    assert compute("proj", cols, now[0] + 601, Thresholds(stall_grace=5), renewed_lease=renewed).stalled_count == 1
    # a record left by an earlier run of the same epoch key does not count for this run
    write_lease(orch.store, Lease(job_id=gone, run_id="run-0", epoch=1, worker_id="w1", pid=1,
                                  expires_at=now[0] + 600, renewed_at=now[0]))
    assert compute("proj", cols, now[0] + 1, Thresholds(), renewed_lease=renewed).stalled_count == 1
    assert orch.lease_expiry(gone) == now[0] and orch.lease_expiry("no-such-job") is None
    js.finish(orch, gone, "job_succeeded", {"summary": "late but done"})  # after the projection was read
    assert compute("proj", cols, now[0] + 1, Thresholds(), renewed_lease=renewed).stalled_count == 0


def test_metrics_refresh_heals_a_missing_audit_entry(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch)
    view = orch.load(job_id)
    orch.append(view, job_id, [("job_resumed", {"answer": "yes", "question": "Deploy to prod?"})])  # no entry
    assert refresh(orch).healed == 1
    entries = [json.loads(s.raw) for s in orch.store.read(AUDIT_STREAM)]
    assert [e["data"]["action"] for e in entries] == ["resume"]
    assert refresh(orch, rebuild=True).healed == 0


def _mixed_project(orch: Orchestrator) -> list[str]:
    ids = [js.waiting_human(orch, run_id="r1")]
    orch.resume(ids[0], "yes")
    js.claim(orch, ids[0], "r2")
    js.finish(orch, ids[0], "job_succeeded", {"summary": "done"})
    ids += [js.running(orch, run_id="r3", lease="2020-01-01T00:00:00.000000Z"), orch.submit("echo", {"x": 1})]
    orch.cancel(ids[-1], "no longer needed")
    ids.append(orch.submit("report", {"x": 2}))  # another kind
    return ids


def test_columns_cache_round_trips_every_row_and_figure(orch: Orchestrator) -> None:
    ids = _mixed_project(orch)
    built = refresh(orch)
    loaded = refresh(orch)
    assert built.replayed == 4 and loaded.replayed == 0
    assert dict(loaded.rows) == dict(built.rows) == {j: summarize(orch.load(j)) for j in ids}
    now = orch.clock()
    from_columns = compute("p", loaded.columns, now, Thresholds(resume_min_samples=1))
    from_rows = compute("p", list(loaded.rows.values()), now, Thresholds(resume_min_samples=1))
    assert from_columns == from_rows
    assert (from_columns.stalled_count, from_columns.resumes_decided, from_columns.converged_jobs) == (1, 1, 2)


def test_nothing_changed_reads_the_cache_without_rewriting_it(orch: Orchestrator, monkeypatch) -> None:
    _mixed_project(orch)
    refresh(orch)
    writes = []
    monkeypatch.setattr(orch.store, "put_aux", lambda *a: writes.append(a))
    monkeypatch.setattr(orch, "load", lambda j: pytest.fail(f"{j} replayed although unchanged"))
    assert refresh(orch).replayed == 0 and writes == []


@pytest.mark.parametrize("damage", ["truncated", "bad_state_code", "bad_kind_code", "kind_listed_twice",
                                    "old_version", "garbage"])
def test_a_damaged_columns_cache_is_rebuilt_and_never_gives_wrong_figures(orch: Orchestrator, damage: str) -> None:
    ids = _mixed_project(orch)
    good = refresh(orch)
    path = orch.settings.state_dir / "projections" / "jobs-v2"
    data = path.read_bytes()
    header, _, body = data.partition(b"\n")
    if damage == "truncated":
        data = data[:-3]
    elif damage == "bad_state_code":
        meta = json.loads(header)
        state_at = len(header) + 1 + meta["lengths"][0]
        data = data[:state_at] + b"\x07" + data[state_at + 1:]  # 7 names no state
    elif damage == "bad_kind_code":  # the last section: a kind code per job, 4 bytes each
        meta = json.loads(header)
        data = data[:-4] + (len(meta["kinds"]) + 1).to_bytes(4, sys.byteorder)  # names no kind
    elif damage == "kind_listed_twice":
        meta = json.loads(header)
        meta["kinds"] = [meta["kinds"][0]] * len(meta["kinds"])
        data = json.dumps(meta, separators=(",", ":")).encode() + b"\n" + body
    elif damage == "old_version":
        data = header.replace(b'"version":5', b'"version":2') + b"\n" + body
    else:
        data = b"\x00\xff" * 50
    path.write_bytes(data)
    again = refresh(orch)
    assert again.replayed == len(ids) and dict(again.rows) == dict(good.rows)


def _kindless(data: bytes, version: int) -> bytes:
    """A cache of format 5 as format 3 or 4 wrote it: no kinds in the header, no kind section at the end."""
    header, _, body = data.partition(b"\n")
    meta = json.loads(header)
    body = body[:len(body) - meta["lengths"][-1]]
    meta = {"version": version, "n": meta["n"], "byteorder": meta["byteorder"], "lengths": meta["lengths"][:-1]}
    return json.dumps(meta, separators=(",", ":")).encode() + b"\n" + body


@pytest.mark.parametrize("version", [3, 4])
def test_a_cache_of_format_3_or_4_is_read_as_it_is_its_rows_kinds_unknown(orch: Orchestrator, version: int) -> None:
    """Format 4 only added entries to format 3, and 5 a kind per row to 4: an upgrade replays nothing. A listing by
    kind reads the jobs whose row knows no kind (``Orchestrator.jobs``); a job replayed since gets its kind."""
    ids = _mixed_project(orch)
    refresh(orch)
    path = orch.settings.state_dir / "projections" / "jobs-v2"
    path.write_bytes(_kindless(path.read_bytes(), version))  # what the previous code wrote
    again = refresh(orch)
    assert again.replayed == 0 and sorted(again.rows) == sorted(ids)
    assert {row.kind for row in again.rows.values()} == {None}
    assert {s.job_id for s in orch.jobs(kinds=["echo"])} == {j for j in ids if orch.status(j).kind == "echo"}
    learned = refresh(orch)  # the listing above read every job and noted each kind in the cache
    assert learned.replayed == 0 and {j: r.kind for j, r in learned.rows.items()} == {j: orch.status(j).kind for j in ids}
    read: list[str] = []
    real = orch.load
    orch.load = lambda job_id, **kw: read.append(job_id) or real(job_id, **kw)
    assert [s.job_id for s in orch.jobs(kinds=["report"])] == [ids[-1]] and read == [ids[-1]]


def test_any_kind_text_round_trips_in_the_cache(orch: Orchestrator) -> None:
    """A kind stored is any text of 1-200 characters: the kinds are kept in the header as JSON, not split on newlines.
    (A submit refuses a control character since 2026-12-07; a history written before may hold one.)"""
    odd = ["with\nnewline", "tab\tand \u2028", 'quote " and \\', "ü"]
    ids = submitted_as_before(orch, [*odd, odd[0]])
    assert refresh(orch).replayed == len(ids)
    again = refresh(orch)
    assert again.replayed == 0 and [again.rows[j].kind for j in ids] == [*odd, odd[0]]
    assert sorted(again.columns.kinds) == sorted(odd)  # each kind once


def test_the_json_cache_of_the_previous_version_is_removed(orch: Orchestrator) -> None:
    orch.submit("echo", {"x": 1})
    orch.store.put_aux("projections", "jobs-v1", b'{"version":2,"rows":{}}')
    refresh(orch)
    assert orch.store.get_aux("projections", "jobs-v1") is None


def test_every_changed_job_is_replayed_among_many_unchanged(orch: Orchestrator) -> None:
    ids = [orch.submit("echo", {"i": i}) for i in range(30)]
    assert refresh(orch).replayed == 30
    for job_id in ids[3::7]:
        orch.cancel(job_id, "changed")
    removed = ids[5]
    orch.store.path(removed).unlink()  # its head record says it had events: it stays, as an integrity error
    again = refresh(orch)
    assert again.replayed == len(ids[3::7]) + 1
    assert {j for j, r in again.rows.items() if r.state == "cancelled"} == set(ids[3::7])
    assert not again.rows[removed].ok and len(again.rows) == 30
    assert refresh(orch).replayed == 0
    orch.store.delete_aux(HEADS_AREA, removed)  # nothing is left of it: no job at all
    assert removed not in refresh(orch).rows and len(refresh(orch).rows) == 29


def test_metrics_skips_what_is_no_job_in_the_jobs_folder(orch: Orchestrator) -> None:
    # a submit killed mid-write leaves a file with no complete line; a stray folder is not a file
    job = orch.submit("echo", {})
    jobs_dir = orch.store.path(job).parent
    (jobs_dir / "01ARZ3NDEKTSV4RRFFQ69G5FAV.events.jsonl").write_bytes(b'{"seq":1,"ty')
    (jobs_dir / "01ARZ3NDEKTSV4RRFFQ69G5FAW.events.jsonl").mkdir()
    rows = refresh(orch).rows
    assert list(rows) == [job]
    assert compute("p", refresh(orch).columns, 0.0, Thresholds()).jobs == 1


def test_metrics_looks_for_removed_histories_only_when_the_job_listing_changed(orch: Orchestrator,
                                                                              monkeypatch) -> None:
    ids = [orch.submit("echo", {"i": i}) for i in range(3)]
    refresh(orch)
    looked: list[int] = []
    real = Orchestrator.removed_jobs
    monkeypatch.setattr(Orchestrator, "removed_jobs",
                        lambda self, listed, **kw: looked.append(1) or real(self, listed, **kw))
    orch.cancel(ids[0], "changed")  # a job grew: the listing is the same
    assert refresh(orch).replayed == 1 and looked == []
    orch.store.path(ids[1]).unlink()  # a job left the listing: its head record is looked for
    again = refresh(orch)
    assert looked == [1] and not again.rows[ids[1]].ok


def test_a_file_or_folder_in_the_jobs_folder_that_is_no_job_keeps_metrics_on_its_warm_path(
        orch: Orchestrator, monkeypatch) -> None:
    job = orch.submit("echo", {})
    jobs_dir = orch.store.path(job).parent
    (jobs_dir / "01ARZ3NDEKTSV4RRFFQ69G5FAV.events.jsonl").write_bytes(b'{"seq":1,"ty')  # a submit killed mid-write
    (jobs_dir / "01ARZ3NDEKTSV4RRFFQ69G5FAW.events.jsonl").mkdir()
    assert list(refresh(orch).rows) == [job]  # the torn file is read once, and the cache says it is no job
    writes = []
    monkeypatch.setattr(orch.store, "put_aux", lambda *a: writes.append(a))
    monkeypatch.setattr(orch, "load", lambda j: pytest.fail(f"{j} read although nothing changed"))
    warm = refresh(orch)
    assert warm.replayed == 0 and writes == [] and list(warm.rows) == [job]
    assert compute("p", warm.columns, 0.0, Thresholds()).jobs == 1


def test_a_torn_submit_is_read_again_only_when_its_file_changes(orch: Orchestrator, monkeypatch) -> None:
    job = orch.submit("echo", {"n": 1}, key="nightly")
    path = orch.store.path(job)
    path.write_bytes(path.read_bytes()[:40])  # a submit killed mid-write: half a line, and no head record yet
    (orch.settings.state_dir / "heads" / job).unlink()
    read, load = [], orch.load
    monkeypatch.setattr(orch, "load", lambda j, **kw: read.append(j) or load(j, **kw))
    assert job not in refresh(orch).rows and job not in refresh(orch).rows
    assert read == [job]  # once: then the cache says the file, as it is, holds no job
    assert orch.submit_job("echo", {"n": 1}, key="nightly").created  # the retry cuts the torn bytes first
    assert refresh(orch).rows[job].state == "queued" and read == [job, job]
    path.write_bytes(b'{"seq":1,"ty')  # torn once its head record exists: tampering, never "no job"
    assert not refresh(orch).rows[job].ok
    path.unlink()
    (orch.settings.state_dir / "heads" / job).unlink()
    assert len(refresh(orch).columns) == 0


def test_a_running_job_whose_history_was_cut_is_an_integrity_error_not_stalled(base, keyring) -> None:
    """A job that succeeded and lost its last line replays as "running" with its claim's lease long past: it is
    counted in integrity_errors (INTEGRITY_ERRORS, runbook E), never as a stalled job a worker would recover."""
    orch = Orchestrator(base_path=base, project_id="proj", keyring=keyring, clock=lambda: T0)
    cut = js.running(orch, run_id="r1", lease="2020-01-01T00:00:00.000000Z")
    js.finish(orch, cut, "job_succeeded", {"summary": "done"})
    path = orch.store.path(cut)
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-1]))
    gone = js.running(orch, run_id="r2", lease="2020-01-01T00:00:00.000000Z")
    m = compute("proj", refresh(orch).columns, T0, Thresholds(), renewed_lease=orch.lease_expiry)
    assert (m.counts["running"], m.integrity_errors, m.stalled_count) == (2, 1, 1)
    assert orch.status(gone).integrity_error is None
    assert [a["code"] for a in m.alerts] == ["INTEGRITY_ERRORS", "STALLED_JOBS"]
    assert m.alerts[1]["message"].startswith("1 running job(s)")


def test_a_clock_stepped_back_before_the_final_event_never_makes_mean_converge_time_negative(base, keyring) -> None:
    orch = Orchestrator(base_path=base, project_id="proj", keyring=keyring, clock=lambda: T0)
    early = js.running(orch, run_id="r1", now=T0)
    js.finish(orch, early, "job_succeeded", {"summary": "done"}, now=T0 - 3600)  # stamped an hour before its submit
    on_time = js.running(orch, run_id="r2", now=T0)
    js.finish(orch, on_time, "job_failed", {"error": "boom", "error_code": "E"}, now=T0 + 30)
    m = compute("proj", refresh(orch).columns, T0 + 60, Thresholds())
    assert (m.mean_converge_time, m.converged_jobs) == (15.0, 2)


def test_jobs_read_without_their_key_are_read_again_once_it_is_trusted(base, keyring) -> None:
    """A row's verification depends on the keys trusted when it was made, not only on the job's file: a `metrics`
    run without the signing key (a cron without ORCH_SIGNING_KEY, a machine that lacks a key) must not leave every
    later reader with its INTEGRITY_ERRORS and an empty `status --all --state queued`."""
    orch = Orchestrator(base_path=base, project_id="proj", keyring=keyring)
    queued, done = orch.submit("echo", {"i": 1}), orch.submit("echo", {"i": 2})
    orch.cancel(done, "not needed")
    keyless = Orchestrator(base_path=base, project_id="proj", keyring=Keyring())
    assert compute("proj", refresh(keyless).columns, T0, Thresholds()).integrity_errors == 2
    read = refresh(orch)
    assert read.replayed == 2 and read.rows[queued].ok and read.rows[queued].state == "queued"
    m = compute("proj", read.columns, T0, Thresholds())
    assert (m.integrity_errors, m.counts["queued"], m.counts["cancelled"]) == (0, 1, 1)
    assert [s.job_id for s in orch.jobs(["queued"])] == [queued]
    assert refresh(orch).replayed == 0  # the keys are the same as the cache's now: the warm path again


def test_a_job_signed_by_a_key_revoked_since_the_cache_was_written_is_an_integrity_error(base, keyring) -> None:
    orch = Orchestrator(base_path=base, project_id="proj", keyring=keyring)
    job_id = orch.submit("echo", {"i": 1})
    assert refresh(orch).rows[job_id].ok
    revoked = Keyring(trusted=dict(keyring.trusted), revoked=frozenset({keyring.signer_id}))
    after = refresh(Orchestrator(base_path=base, project_id="proj", keyring=revoked))
    assert after.replayed == 1 and not after.rows[job_id].ok
    assert compute("proj", after.columns, T0, Thresholds()).integrity_errors == 1


def test_a_cache_that_does_not_say_its_keys_has_its_failed_rows_read_again(orch: Orchestrator) -> None:
    """A cache written before rows were tied to the keys (format 3 to 5 without them): the rows that failed
    verification are read again, once (they may have failed for want of a key); the others are kept."""
    bad = orch.submit("echo", {"i": 1})
    good = orch.submit("echo", {"i": 2})
    keyless = Orchestrator(base_path=orch.settings.base_path, project_id="proj", keyring=Keyring())
    refresh(keyless)
    path = orch.settings.state_dir / "projections" / "jobs-v2"
    cols = Columns.load(path.read_bytes())
    cols.ok[cols.ids.index(good)] = 1  # as if `good` had been read with its key
    cols.trust = None  # what the previous code wrote
    path.write_bytes(cols.dump())
    assert b"trusted" not in path.read_bytes()
    loads: list[str] = []
    real = orch.load
    orch.load = lambda job_id, **kw: loads.append(job_id) or real(job_id, **kw)
    again = refresh(orch)
    assert loads == [bad] and again.rows[bad].ok and again.rows[bad].state == "queued"
