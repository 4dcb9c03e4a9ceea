"""Torn tails are ignored and repaired; every kind of edit to a history is detected.

The tamper tests run on every backend (``raw`` rewrites a file, or UPDATEs rows in
PostgreSQL); torn tails exist only in files, so those tests use ``file_orch`` alone.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from orchestrator import Orchestrator
from orchestrator.api import HEADS_AREA
from orchestrator.history import head_record
from orchestrator.store.base import Head
from orchestrator.integrity import check_anchor, export_anchor, verify_project
from orchestrator.signing import Keyring

from backends import BACKENDS, RawHistory, with_raw_access


def events_file(orch: Orchestrator, job_id: str) -> Path:
    return orch.store.path(job_id)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, base: Path, keyring: Keyring):
    """An orchestrator on each backend, with raw write access to its storage."""
    with with_raw_access(request.param, base, keyring) as pair:
        yield pair


@pytest.fixture
def orch(backend) -> Orchestrator:
    """Overrides conftest's ``orch``: every test below runs on each backend."""
    return backend[0]


@pytest.fixture
def raw(backend) -> RawHistory:
    return backend[1]


@pytest.fixture
def file_orch(base: Path, keyring: Keyring) -> Orchestrator:
    return Orchestrator(base_path=base, project_id="proj", keyring=keyring)


def job_with_history(orch: Orchestrator) -> str:
    """A job with four events: submitted, claimed, asked a human, resumed."""
    job_id = orch.submit("echo", {"text": "hello"})
    view = orch.load(job_id)
    view = orch.append(view, job_id, [("job_claimed", {"worker_id": "w1", "epoch": 1, "attempt": 1,
                                                        "lease_expires_at": "2030-01-01T00:00:00.000000Z"})],
                       run_id="run-1")
    view = orch.append(view, job_id, [("human_input_requested", {"question": "go on?"})], run_id="run-1")
    orch.append(view, job_id, [("job_resumed", {"answer": "yes", "question": "go on?"})])
    return job_id


def codes(orch: Orchestrator) -> set[str]:
    return {p.code for p in verify_project(orch).problems}


# -- torn tails ------------------------------------------------------------------------------------
def test_torn_tail_at_every_byte_offset_of_the_last_line_is_ignored_then_repaired(file_orch: Orchestrator) -> None:
    # A crash while writing event 4: its head record was never written, so the record says 3.
    job_id = job_with_history(file_orch)
    path = events_file(file_orch, job_id)
    whole = path.read_bytes()
    last_start = whole.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(whole[:last_start])
    three = file_orch.store.read(job_id)
    file_orch.store.put_aux(HEADS_AREA, job_id, head_record(job_id, Head(3, three[-1].raw)))
    for cut in range(last_start, len(whole)):  # every offset inside the last line, newline excluded
        path.write_bytes(whole[:cut])
        view = file_orch.load(job_id)
        assert view.ok, f"cut at {cut}: {view.problems}"
        assert view.head.seq == 3 and view.state.state == "waiting_human"
    # the next writer repairs the torn tail and loses no complete event
    path.write_bytes(whole[:last_start + 17])
    file_orch.append(file_orch.load(job_id), job_id, [("job_cancelled", {"reason": "repair check"})])
    repaired = file_orch.load(job_id)
    assert repaired.ok and repaired.head.seq == 4 and repaired.state.state == "cancelled"
    assert path.read_bytes().startswith(whole[:last_start]) and path.read_bytes().endswith(b"\n")


@pytest.mark.parametrize("garbage", [b"\x00\x00\x00", b'{"seq": 5, "half', b"\xff\xfe not utf8"])
def test_garbage_after_the_last_newline_is_a_torn_tail_not_corruption(file_orch: Orchestrator, garbage: bytes) -> None:
    job_id = job_with_history(file_orch)
    with open(events_file(file_orch, job_id), "ab") as fh:
        fh.write(garbage)
    assert file_orch.load(job_id).ok
    assert verify_project(file_orch).ok


def test_a_complete_line_that_does_not_parse_is_corruption_never_a_torn_tail(file_orch: Orchestrator) -> None:
    job_id = job_with_history(file_orch)
    with open(events_file(file_orch, job_id), "ab") as fh:
        fh.write(b'{"seq": 5, "half\n')
    report = verify_project(file_orch)
    assert [(p.line, p.code) for p in report.problems] == [(5, "CORRUPT_LINE")]


# -- tamper matrix -------------------------------------------------------------------------------
def test_every_single_byte_flip_is_detected(orch: Orchestrator, raw: RawHistory) -> None:
    job_id = job_with_history(orch)
    whole = raw.read_bytes(job_id)
    rng = random.Random(7)
    offsets = [i for i in range(len(whole)) if whole[i:i + 1] != b"\n"]
    for offset in rng.sample(offsets, 300):
        flipped = bytearray(whole)
        flipped[offset] ^= 1 << rng.randrange(8)
        raw.write_bytes(job_id, bytes(flipped))
        assert not orch.load(job_id).ok, f"flip at byte {offset} went undetected"
    raw.write_bytes(job_id, whole)
    assert orch.load(job_id).ok


def _rewrite(raw: RawHistory, stream: str, edit) -> None:
    lines = raw.read_bytes(stream).split(b"\n")[:-1]
    raw.write_bytes(stream, b"".join(line + b"\n" for line in edit(lines)))


@pytest.mark.parametrize("name, edit, expected", [
    ("delete", lambda ls: ls[:1] + ls[2:], {"SEQUENCE_MISMATCH"}),
    ("duplicate", lambda ls: ls[:2] + ls[1:], {"SEQUENCE_MISMATCH"}),
    ("swap", lambda ls: [ls[0], ls[2], ls[1], ls[3]], {"SEQUENCE_MISMATCH"}),
    ("delete first", lambda ls: ls[1:], {"SEQUENCE_MISMATCH"}),
])
def test_deleted_duplicated_or_reordered_lines_are_detected(orch: Orchestrator, raw: RawHistory, name, edit,
                                                            expected) -> None:
    job_id = job_with_history(orch)
    _rewrite(raw, job_id, edit)
    assert expected <= codes(orch)
    assert orch.status(job_id).integrity_error["code"] == "CONTEXT_SIGNATURE_INVALID"


def test_a_line_spliced_from_another_job_is_detected(orch: Orchestrator, raw: RawHistory) -> None:
    a, b = job_with_history(orch), job_with_history(orch)
    b_lines = raw.read_bytes(b).split(b"\n")
    _rewrite(raw, a, lambda ls: ls[:2] + [b_lines[2]] + ls[3:])
    found = codes(orch)
    assert {"CHAIN_BROKEN", "WRONG_STREAM"} & found


def test_a_whole_file_copied_under_another_job_id_is_detected(orch: Orchestrator, raw: RawHistory) -> None:
    a = job_with_history(orch)
    raw.write_bytes("copied", raw.read_bytes(a))
    problems = orch.load("copied").problems
    assert problems and problems[0].code in {"CHAIN_BROKEN", "WRONG_STREAM"}


def test_an_event_re_signed_with_an_untrusted_key_is_detected(orch: Orchestrator, raw: RawHistory) -> None:
    job_id = job_with_history(orch)
    intruder = Keyring.generate()
    rec = json.loads(raw.read_bytes(job_id).split(b"\n")[0])
    rec["data"]["input"] = {"text": "rm -rf /"}
    for k in ("kid", "sig"):
        rec.pop(k)
    forged = intruder.seal(rec)
    _rewrite(raw, job_id, lambda ls: [forged] + ls[1:])
    assert "UNKNOWN_KEY" in codes(orch)


def test_a_revoked_key_no_longer_verifies(orch: Orchestrator, raw: RawHistory) -> None:
    job_id = job_with_history(orch)
    orch.keyring.revoked = frozenset({orch.keyring.signer_id})
    assert "KEY_REVOKED" in {p.code for p in orch.load(job_id).problems}


def test_old_events_verify_after_key_rotation(orch: Orchestrator, raw: RawHistory) -> None:
    job_id = orch.submit("echo", {})
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    old_kid = orch.keyring.signer_id
    orch.keyring.add_signer(Ed25519PrivateKey.generate())  # rotate: old public key stays trusted
    orch.append(orch.load(job_id), job_id, [("job_cancelled", {})])
    kids = {json.loads(line)["kid"] for line in raw.read_bytes(job_id).splitlines()}
    assert kids == {old_kid, orch.keyring.signer_id} and verify_project(orch).ok


def test_tail_cut_at_a_line_boundary_is_detected_by_the_head_record(orch: Orchestrator, raw: RawHistory) -> None:
    job_id = job_with_history(orch)
    _rewrite(raw, job_id, lambda ls: ls[:2])
    assert "TRUNCATED" in codes(orch)


def test_a_history_removed_whole_is_detected_by_its_head_record(orch: Orchestrator, raw: RawHistory) -> None:
    # every event gone (the file emptied; every row deleted): no job file lists it, its head record still does
    job_id = job_with_history(orch)
    orch.submit("echo", {})
    raw.write_bytes(job_id, b"")
    assert [(p.stream, p.code) for p in verify_project(orch).problems] == [(job_id, "TRUNCATED")]
    assert [p.code for p in verify_project(orch, job_id).problems] == ["TRUNCATED"]
    status = orch.status(job_id)  # a read reports the cut, not a job that never was
    assert status.state is None and [p["code"] for p in status.integrity_error["problems"]] == ["TRUNCATED"]


def test_a_keyed_submit_never_writes_over_a_removed_history(orch: Orchestrator, raw: RawHistory) -> None:
    from orchestrator.errors import ContextSignatureInvalid

    job_id = orch.submit("echo", {"n": 1}, key="nightly")
    raw.write_bytes(job_id, b"")
    with pytest.raises(ContextSignatureInvalid, match="TRUNCATED"):
        orch.submit("echo", {"n": 1}, key="nightly")  # the same key names the same job
    assert raw.read_bytes(job_id) == b""  # nothing was written over the evidence
    assert [p.code for p in verify_project(orch).problems] == ["TRUNCATED"]


def test_every_job_listing_shows_a_removed_history(orch: Orchestrator, raw: RawHistory) -> None:
    from orchestrator.metrics import Thresholds, compute
    from orchestrator.projection import refresh

    kept, removed = orch.submit("echo", {}), job_with_history(orch)
    assert compute("p", refresh(orch).columns, 0.0, Thresholds()).integrity_errors == 0
    raw.write_bytes(removed, b"")
    listed = {st.job_id: st for st in orch.jobs()}  # status --all
    assert set(listed) == {kept, removed} and listed[removed].integrity_error is not None
    m = compute("p", refresh(orch).columns, 0.0, Thresholds())  # metrics
    assert (m.jobs, m.integrity_errors) == (2, 1)
    assert refresh(orch).replayed == 0  # and the cache stays as it is until something changes


def test_a_deleted_job_file_is_reported_never_run_nor_acted_on(file_orch: Orchestrator) -> None:
    from orchestrator.audit import entries_for
    from orchestrator.errors import ContextSignatureInvalid

    job_id = job_with_history(file_orch)  # queued again after its resume: its ready entry is there
    events_file(file_orch, job_id).unlink()
    assert [p.code for p in verify_project(file_orch).problems] == ["TRUNCATED"]
    with pytest.raises(ContextSignatureInvalid):
        file_orch.cancel(job_id)
    assert file_orch.worker().run_once() is None
    assert [rec["data"]["action"] for _, rec in entries_for(file_orch, job_id=job_id)[1]] == [
        "integrity_refusal", "run_refused"]
    assert file_orch.queue.ready() == []  # refused once, not again on every poll


def test_a_head_record_slot_created_but_never_written_is_no_job(file_orch: Orchestrator) -> None:
    # a crash between creating the slot and writing it: no record, so neither a job nor a removed one
    from orchestrator.errors import JobNotFoundError

    file_orch.submit("echo", {})
    slot = file_orch.store.root / HEADS_AREA / "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    slot.write_bytes(b"")
    (slot.parent / "not a job id").write_bytes(b"{}")
    assert verify_project(file_orch).ok
    with pytest.raises(JobNotFoundError):
        file_orch.status(slot.name)


def test_without_the_head_record_a_cut_is_caught_only_by_the_external_anchor(orch: Orchestrator, raw: RawHistory,
                                                                             tmp_path: Path) -> None:
    job_id = job_with_history(orch)
    anchor = tmp_path / "anchor.json"
    export_anchor(orch, anchor)
    _rewrite(raw, job_id, lambda ls: ls[:2])
    raw.drop_head_record(job_id)
    assert verify_project(orch).ok  # documented limit: nothing inside the store knows
    assert [p.code for p in check_anchor(orch, anchor)] == ["ROLLED_BACK"]


def test_anchor_passes_when_the_store_only_grew(orch: Orchestrator, raw: RawHistory, tmp_path: Path) -> None:
    job_id = job_with_history(orch)
    anchor = tmp_path / "anchor.json"
    export_anchor(orch, anchor)
    orch.append(orch.load(job_id), job_id, [("job_cancelled", {})])
    orch.submit("echo", {})
    assert check_anchor(orch, anchor) == []


@pytest.mark.parametrize("heads", [[1, 2], {"j": [1]}, {"j": {"seq": "1", "hash": "x"}}, {"j": {"seq": 0, "hash": "x"}},
                                   {"j": {"seq": 1}}, {"j": {"seq": True, "hash": "x"}}])
def test_a_signed_anchor_with_malformed_heads_is_invalid_input_not_a_crash(orch: Orchestrator, tmp_path: Path,
                                                                           heads: object) -> None:
    import json

    from orchestrator.errors import InvalidInputError
    from orchestrator.integrity import ANCHOR_FORMAT
    from orchestrator.signing import canonical

    body = {"format": ANCHOR_FORMAT, "project_id": orch.project_id, "created_at": "2026-01-01T00:00:00.000000Z",
            "heads": heads}
    kid, sig = orch.keyring.sign_bytes(canonical(body))
    anchor = tmp_path / "anchor.json"
    anchor.write_text(json.dumps({**body, "kid": kid, "sig": sig}))
    with pytest.raises(InvalidInputError, match="anchor"):
        check_anchor(orch, anchor)


def test_a_tampered_job_refuses_further_writes(orch: Orchestrator, raw: RawHistory) -> None:
    from orchestrator.errors import ContextSignatureInvalid

    job_id = job_with_history(orch)
    raw.write_bytes(job_id, raw.read_bytes(job_id).replace(b'"hello"', b'"HELLO"'))
    with pytest.raises(ContextSignatureInvalid):
        orch.append(orch.load(job_id), job_id, [("job_cancelled", {})])


def test_a_line_from_a_divergent_copy_of_the_same_job_breaks_the_chain(orch: Orchestrator, raw: RawHistory) -> None:
    # Two histories of one job that share line 1 (e.g. a restored backup written to again):
    # mixing them keeps every seq, job id and signature valid; only the chain catches it.
    job_id = orch.submit("echo", {"text": "hello"})
    line1 = raw.read_bytes(job_id)
    claim = {"worker_id": "w1", "epoch": 1, "attempt": 1, "lease_expires_at": "2030-01-01T00:00:00.000000Z"}
    view = orch.append(orch.load(job_id), job_id, [("job_claimed", claim)], run_id="run-a")
    orch.append(view, job_id, [("job_succeeded", {"summary": "a"})], run_id="run-a")
    fork_a = raw.read_bytes(job_id).split(b"\n")
    raw.write_bytes(job_id, line1)
    raw.drop_head_record(job_id)  # the restored copy predates the head record
    view = orch.append(orch.load(job_id), job_id, [("job_claimed", {**claim, "worker_id": "w2"})], run_id="run-b")
    orch.append(view, job_id, [("job_failed", {"error_code": "X"})], run_id="run-b")
    fork_b = raw.read_bytes(job_id).split(b"\n")
    raw.write_bytes(job_id, b"\n".join([fork_a[0], fork_a[1], fork_b[2]]) + b"\n")
    assert [(p.line, p.code) for p in orch.load(job_id).problems if p.line] == [(3, "CHAIN_BROKEN")]


def test_a_reformatted_line_is_corrupt_even_when_its_content_still_verifies(orch: Orchestrator,
                                                                           raw: RawHistory) -> None:
    job_id = job_with_history(orch)
    lines = raw.read_bytes(job_id).split(b"\n")[:-1]
    pretty = json.dumps(json.loads(lines[-1]), sort_keys=True, separators=(", ", ": "), ensure_ascii=False).encode()
    _rewrite(raw, job_id, lambda ls: ls[:-1] + [pretty])
    assert [(p.line, p.code) for p in orch.load(job_id).problems][0] == (4, "CORRUPT_LINE")


# -- reading on from a verified view (a claimer that waited for an event) --------------------------------
def _two_steps(orch: Orchestrator) -> tuple[str, object]:
    """A job read after its first two events, then two more events written."""
    job_id = orch.submit("echo", {"text": "hello"})
    view = orch.append(orch.load(job_id), job_id, [("job_claimed", {
        "worker_id": "w1", "epoch": 1, "attempt": 1, "lease_expires_at": "2030-01-01T00:00:00.000000Z"})],
        run_id="run-1")
    seen = orch.load(job_id)
    view = orch.append(view, job_id, [("human_input_requested", {"question": "go on?"})], run_id="run-1")
    orch.append(view, job_id, [("job_resumed", {"answer": "yes", "question": "go on?"})])
    return job_id, seen


def test_reading_on_checks_only_the_new_lines_and_ends_where_a_full_read_does(orch: Orchestrator, monkeypatch) -> None:
    from orchestrator import history

    job_id, seen = _two_steps(orch)
    checked = []
    real = history._check_line
    monkeypatch.setattr(history, "_check_line", lambda stream, stored, *a: checked.append(stored.seq) or real(stream, stored, *a))
    more = orch.load_more(seen)
    assert checked == [3, 4]  # the two lines written since; the first two were verified by ``seen``
    full = orch.load(job_id)
    assert more.ok and more.state == full.state and more.head == full.head
    assert more.stream.records == full.stream.records


def test_reading_on_still_detects_an_edit_of_a_line_it_had_verified_or_of_a_new_one(orch: Orchestrator,
                                                                                    raw: RawHistory) -> None:
    job_id, seen = _two_steps(orch)
    whole = raw.read_bytes(job_id)
    lines = whole.split(b"\n")[:-1]
    raw.write_bytes(job_id, whole.replace(b'"w1"', b'"w2"', 1))  # line 2, which ``seen`` verified
    assert not orch.load_more(seen).ok
    raw.write_bytes(job_id, b"".join(x + b"\n" for x in lines[:3] + [lines[3].replace(b"yes", b"yep")]))
    problems = orch.load_more(seen).problems
    assert problems and problems[0].line == 4


def test_an_anchor_file_over_the_anchor_limit_is_invalid_input_and_never_parsed(
        orch: Orchestrator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``verify --against`` reads at most ``MAX_ANCHOR_BYTES`` + 1 of the file it is given (a log or a device given by
    mistake), and refuses a larger one as no anchor (INVALID_INPUT, exit 3)."""
    import orchestrator.integrity as integrity
    from orchestrator.errors import InvalidInputError

    orch.submit("k", {})
    anchor = tmp_path / "anchor.json"
    export_anchor(orch, anchor)
    monkeypatch.setattr(integrity, "MAX_ANCHOR_BYTES", anchor.stat().st_size, raising=False)
    assert check_anchor(orch, anchor) == []  # an anchor of exactly the limit is read
    anchor.write_bytes(anchor.read_bytes() + b" ")
    with pytest.raises(InvalidInputError, match=f"^{anchor} holds more than {anchor.stat().st_size - 1} bytes"):
        check_anchor(orch, anchor)


def test_an_anchor_over_the_limit_verify_against_reads_is_never_written(
        orch: Orchestrator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Else a project that large would write anchors it can never check: refused, and an older anchor is kept."""
    import orchestrator.integrity as integrity
    from orchestrator.errors import InvalidInputError

    orch.submit("k", {})
    anchor = tmp_path / "anchor.json"
    export_anchor(orch, anchor)
    older = anchor.read_bytes()
    orch.submit("k", {"second": True})
    monkeypatch.setattr(integrity, "MAX_ANCHOR_BYTES", len(older), raising=False)
    with pytest.raises(InvalidInputError, match="more than the .* verify --against reads; nothing was written"):
        export_anchor(orch, anchor)
    assert anchor.read_bytes() == older


def _cut_audit_log(raw: RawHistory, keep: int) -> bytes:
    """Keep the audit log's first ``keep`` entries (at a line boundary), as an intruder would; returns what is kept."""
    from orchestrator.store.base import AUDIT_STREAM

    kept = b"".join(line + b"\n" for line in raw.read_bytes(AUDIT_STREAM).split(b"\n")[:keep])
    raw.write_bytes(AUDIT_STREAM, kept)
    return kept


def test_an_audit_log_cut_at_a_line_boundary_is_never_written_over(orch: Orchestrator, raw: RawHistory) -> None:
    # the next entry would rewrite the log's head record over the cut, and verify would pass again
    from orchestrator.errors import IntegrityError
    from orchestrator.store.base import AUDIT_STREAM

    first, second, third = (orch.submit("echo", {}) for _ in range(3))
    orch.cancel(first, "one")
    orch.cancel(second, "two")
    kept = _cut_audit_log(raw, 1)
    with pytest.raises(IntegrityError, match="audit log") as refused:
        orch.cancel(third, "three")
    assert refused.value.exit_code == 7 and "TRUNCATED" in refused.value.message
    if not orch.store.atomic_aux:  # files: refused before its event was written (PostgreSQL: audit.require_writable)
        assert orch.status(third).state == "queued"
    assert raw.read_bytes(AUDIT_STREAM) == kept
    assert "TRUNCATED" in codes(orch)


def test_no_audit_entry_is_appended_to_a_cut_audit_log(orch: Orchestrator, raw: RawHistory) -> None:
    # what writes entries without a control action (a worker's refusal, a heal) meets the same check, as it appends
    from orchestrator import audit as audit_log
    from orchestrator.errors import IntegrityError
    from orchestrator.store.base import AUDIT_STREAM

    job = orch.submit("echo", {})
    for note in ("one", "two"):
        audit_log.record(orch, job_id=job, action="note", actor="me", note=note)
    kept = _cut_audit_log(raw, 1)
    with pytest.raises(IntegrityError, match="TRUNCATED"):
        audit_log.record(orch, job_id=job, action="run_refused", actor="w", note="three")
    assert raw.read_bytes(AUDIT_STREAM) == kept and "TRUNCATED" in codes(orch)


def test_an_audit_log_whose_last_newline_was_damaged_keeps_that_entry(file_orch: Orchestrator) -> None:
    # a complete entry without its newline reads as a torn tail; the writer that refuses must not cut it off either
    from orchestrator import audit as audit_log
    from orchestrator.errors import IntegrityError
    from orchestrator.store.base import AUDIT_STREAM

    job = file_orch.submit("echo", {})
    for note in ("one", "two"):
        audit_log.record(file_orch, job_id=job, action="note", actor="me", note=note)
    path = file_orch.store.path(AUDIT_STREAM)
    path.write_bytes(path.read_bytes()[:-1])
    damaged = path.read_bytes()
    with pytest.raises(IntegrityError):
        audit_log.record(file_orch, job_id=job, action="note", actor="me", note="three")
    assert path.read_bytes() == damaged


def test_read_commands_still_read_a_cut_audit_log_without_healing_into_it(orch: Orchestrator, raw: RawHistory) -> None:
    # audit-timeline and metrics heal what a crash left unaudited; over a cut log they write nothing and still answer
    from orchestrator import audit as audit_log
    from orchestrator.signing import line_hash
    from orchestrator.store.base import AUDIT_STREAM

    first, second = orch.submit("echo", {}), orch.submit("echo", {})
    orch.cancel(first, "one")
    orch.cancel(second, "two")
    kept = _cut_audit_log(raw, 1)
    cancelled = raw.read_bytes(second).split(b"\n")[-2]
    orch.store.delete_aux(audit_log.MARKERS_AREA, line_hash(cancelled))  # as if its entry had never been written
    assert [line["what"] for line in orch.timeline(second)["lines"]] == ["job_submitted", "job_cancelled"]
    assert orch.metrics(rebuild=True).jobs == 2
    assert raw.read_bytes(AUDIT_STREAM) == kept and "TRUNCATED" in codes(orch)


def test_a_worker_that_must_audit_a_stale_recovery_over_a_cut_audit_log_writes_nothing_and_stops(
        orch: Orchestrator, raw: RawHistory) -> None:
    # the stale_recovered event would stand without its entry (files: refused before it; PostgreSQL: as a control
    # action there, the event commits and the entry is refused, as after a crash between the two)
    import random

    from orchestrator import audit as audit_log
    from orchestrator.errors import IntegrityError
    from orchestrator.store.base import AUDIT_STREAM
    from orchestrator.worker import Worker, WorkerSettings

    job = orch.submit("command", {"argv": ["true"]})
    claim = Worker(orch, WorkerSettings(worker_id="w1"), rng=random.Random(7)).claim()  # its worker then dies
    assert claim is not None and claim.job_id == job
    for note in ("one", "two"):
        audit_log.record(orch, job_id=job, action="note", actor="me", note=note)
    kept = _cut_audit_log(raw, 1)
    before = raw.read_bytes(job)
    recovering = Worker(orch, WorkerSettings(worker_id="w2"), rng=random.Random(7))
    with pytest.raises(IntegrityError) as refused:
        recovering.recover_stale(orch.clock() + 3600)  # long past the lease
    assert refused.value.exit_code == 7
    message = refused.value.message
    assert f"job {job}" in message and "TRUNCATED" in message and "docs/runbook.md, section E" in message
    assert raw.read_bytes(AUDIT_STREAM) == kept
    if not orch.store.atomic_aux:
        assert raw.read_bytes(job) == before and orch.status(job).state == "running"
    assert "TRUNCATED" in codes(orch)


def test_a_worker_that_must_audit_refusing_a_tampered_job_over_a_cut_audit_log_writes_nothing_and_stops(
        orch: Orchestrator, raw: RawHistory) -> None:
    import random

    from orchestrator import audit as audit_log
    from orchestrator.errors import IntegrityError
    from orchestrator.store.base import AUDIT_STREAM
    from orchestrator.worker import Worker, WorkerSettings

    job = orch.submit("command", {"argv": ["echo", "hello"]})
    for note in ("one", "two"):
        audit_log.record(orch, job_id=job, action="note", actor="me", note=note)
    kept = _cut_audit_log(raw, 1)
    raw.write_bytes(job, raw.read_bytes(job).replace(b"hello", b"HELLO"))
    tampered = raw.read_bytes(job)
    with pytest.raises(IntegrityError) as refused:
        Worker(orch, WorkerSettings(worker_id="w1"), rng=random.Random(7)).claim()
    assert refused.value.exit_code == 7 and "docs/runbook.md, section E" in refused.value.message
    assert raw.read_bytes(AUDIT_STREAM) == kept and raw.read_bytes(job) == tampered
    assert [entry.job_id for entry in orch.queue.ready()] == [job]  # kept: the refusal is audited once it can be


def _remove_audit_log(orch: Orchestrator, removed: str) -> Path:
    """The audit log removed whole (its head record kept): the file, its folder, or the file left as an empty folder."""
    import os
    import shutil

    from orchestrator.store.base import AUDIT_STREAM

    path = orch.store.path(AUDIT_STREAM)
    if removed == "folder":
        shutil.rmtree(path.parent)
    else:
        path.unlink()
        if removed == "file, an empty folder in its place":
            os.mkdir(path)
    return path


REMOVED = ["file", "folder", "file, an empty folder in its place"]


def _shape(path: Path) -> tuple[bool, bool, bool]:
    """Whether the audit log's folder is there, and the log as a file, or as a folder."""
    return path.parent.is_dir(), path.is_file(), path.is_dir()


def _shape_after(removed: str) -> tuple[bool, bool, bool]:
    return removed != "folder", False, removed == "file, an empty folder in its place"


@pytest.mark.parametrize("removed", REMOVED)
@pytest.mark.parametrize("action", ["cancel", "approve"])  # approve: refused anyway (the job is queued)
def test_an_action_over_a_removed_audit_log_is_refused_and_makes_no_new_one(
        file_orch: Orchestrator, removed: str, action: str) -> None:
    # the check that the log can take the entry opened it for append, which made an empty log (and its folder)
    # before finding it cut: the evidence changed from "no log" to "an empty log", by a command that wrote nothing
    from orchestrator.errors import IntegrityError

    file_orch.cancel(file_orch.submit("echo", {}), "one")  # an entry, and the log's head record
    job = file_orch.submit("echo", {})
    path = _remove_audit_log(file_orch, removed)
    with pytest.raises(IntegrityError, match="TRUNCATED"):
        getattr(file_orch, action)(job)
    assert file_orch.status(job).state == "queued"
    assert _shape(path) == _shape_after(removed) and "TRUNCATED" in codes(file_orch)


@pytest.mark.parametrize("removed", REMOVED)
def test_read_commands_that_would_heal_into_a_removed_audit_log_make_no_new_one(
        file_orch: Orchestrator, removed: str) -> None:
    # audit-timeline and metrics heal what a crash left unaudited; over a removed log they write nothing at all
    from orchestrator import audit as audit_log
    from orchestrator.signing import line_hash

    first, second = file_orch.submit("echo", {}), file_orch.submit("echo", {})
    file_orch.cancel(first, "one")
    file_orch.cancel(second, "two")
    cancelled = file_orch.store.path(second).read_bytes().split(b"\n")[-2]
    file_orch.store.delete_aux(audit_log.MARKERS_AREA, line_hash(cancelled))  # as if its entry had never been written
    path = _remove_audit_log(file_orch, removed)
    assert [line["what"] for line in file_orch.timeline(second)["lines"]] == ["job_submitted", "job_cancelled"]
    assert file_orch.metrics(rebuild=True).jobs == 2
    assert _shape(path) == _shape_after(removed)


@pytest.mark.parametrize("head_record", ["kept", "deleted"])
def test_an_action_over_an_audit_log_whose_last_line_is_corrupt_is_refused_before_its_event(
        file_orch: Orchestrator, head_record: str) -> None:
    # no writer appends after a last line it cannot read; the check before the event met it only with a head record
    # (a derived record, deletable): without one, the job was cancelled and then its entry refused (exit 7)
    from orchestrator import audit as audit_log
    from orchestrator.errors import IntegrityError
    from orchestrator.store.base import AUDIT_STREAM

    file_orch.cancel(file_orch.submit("echo", {}), "one")
    job = file_orch.submit("echo", {})
    path = file_orch.store.path(AUDIT_STREAM)
    path.write_bytes(path.read_bytes() + b"not an entry\n")
    if head_record == "deleted":
        file_orch.store.delete_aux(*audit_log.AUDIT_HEAD)
    damaged, events = path.read_bytes(), file_orch.store.path(job).read_bytes()
    with pytest.raises(IntegrityError, match="last line is corrupt") as refused:
        file_orch.cancel(job, "two")
    assert refused.value.exit_code == 7
    assert file_orch.store.path(job).read_bytes() == events and file_orch.status(job).state == "queued"
    assert path.read_bytes() == damaged


# -- a long submitted line, checked on the bytes it holds (signing.submitted_line_body) --------------------------
LONG = {"rows": [{"id": i, "name": "d\u00e9j\u00e0 \"vu\"", "x": i / 7, "tags": [None, True, -0.0]} for i in range(120)]}


def _long_line_edits(line: bytes, keyring: Keyring) -> dict[str, bytes]:
    """Edits of a long ``job_submitted`` line that a check on its own bytes could miss if it were wrong."""
    import hashlib

    from orchestrator.signing import canonical

    rec = json.loads(line)
    at = line.index(b'"tags":[null,true,-0.0]')
    edits = {"space in the input": line[:at] + b" " + line[at:],
             "key before data": line.replace(b'{"actor":', b'{"a":1,"actor":', 1),
             "sig of another line": line.replace(rec["sig"].encode(), keyring.seal({**rec, "seq": 2})
                                                 .split(b'"sig":"')[1].split(b'"')[0], 1)}
    # the input edited and its digest made again, by someone without the key: the bytes hash to the digest
    forged = json.loads(line)
    forged["data"]["input"] = {**LONG, "rows": LONG["rows"][1:]}
    forged["data"]["context_digest"] = hashlib.sha256(canonical(
        {k: forged["data"][k] for k in ("input", "kind", "options")})).hexdigest()
    edits["input and digest made again"] = canonical(forged)
    rng = random.Random(5)
    for offset in rng.sample(range(len(line)), 40):
        flipped = bytearray(line)
        flipped[offset] ^= 1 << rng.randrange(8)
        edits[f"flip at {offset}"] = bytes(flipped)
    return edits


def test_a_long_submitted_line_is_checked_on_its_own_bytes_and_every_edit_of_it_is_found_as_before(
        file_orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``job_submitted`` line of 4 KiB or more whose context hashes to the digest it signs has its signature
    checked over the bytes it holds, its input not encoded again (``history._signed_as_held``); any other line is
    checked in full. Every edit gives the problems the full check gives."""
    from orchestrator import history
    from orchestrator.store.base import StoredLine

    job = file_orch.submit("echo", LONG)
    line = file_orch.store.read(job)[0].raw
    assert len(line) > 4096
    encoded: list[str] = []
    real_encode = history.line_and_body
    monkeypatch.setattr(history, "line_and_body", lambda rec: (encoded.append(rec.get("type")), real_encode(rec))[1])
    assert file_orch.load(job, every_signature=True).ok and encoded == []
    short = file_orch.submit("echo", {"short": 1})
    assert file_orch.load(short, every_signature=True).ok and encoded == ["job_submitted"]

    def problems(raw: bytes, shortcut: bool) -> list[tuple[int, str]]:
        with monkeypatch.context() as m:
            if not shortcut:
                m.setattr(history, "_signed_as_held", lambda *a: False)
            found = history.verify_stream(job, [StoredLine(1, raw)], file_orch.keyring).problems
        return [(p.line, p.code) for p in found]

    for name, edited in _long_line_edits(line, file_orch.keyring).items():
        assert problems(edited, shortcut=True) == problems(edited, shortcut=False) != [], name
