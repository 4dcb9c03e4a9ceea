"""The tamper matrix: every kind of hostile edit is detected (by verify, or by the anchor where documented).

The single-kind tests live in ``test_torn_tail_and_tamper.py``; this runs each kind many
times at random positions over varied histories, with 500 random byte flips (any byte,
newlines included) across job files and the audit log.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator import Orchestrator
from orchestrator.audit import AUDIT_HEAD
from orchestrator.history import TRUNCATED, verify_stream
from orchestrator.integrity import verify_project
from orchestrator.reliability import tamper
from orchestrator.signing import Keyring
from orchestrator.store.base import AUDIT_STREAM, StoredLine


def test_a_byte_flip_anywhere_and_every_other_edit_is_detected(tmp_path: Path) -> None:
    result = tamper.campaign(tmp_path, flips=500, per_kind=10, histories=1)
    kinds = result["kinds"]
    assert kinds["byte_flip"]["trials"] == 500
    missed = {k: v for k, v in kinds.items() if v["promised"] and v["detected"] != v["trials"]}
    assert missed == {}
    # a read (status, a claiming worker) checks from the head record, and refuses the same edits
    missed_by_reads = {k: v for k, v in kinds.items() if v["promised"] and v["detected_by_read"] != v["read_trials"]}
    assert missed_by_reads == {}
    assert kinds["byte_flip"]["read_trials"] > 400  # most flips hit a job's file (the rest: the audit log)
    unanchored = {k: v for k, v in kinds.items() if v["detected_with_anchor"] != v["trials"]}
    assert unanchored == {}
    assert result["clean_after"]


def test_an_audit_log_cut_at_a_line_boundary_is_detected_by_its_head_record(orch: Orchestrator) -> None:
    from orchestrator import audit as audit_log

    job = orch.submit("echo", {})
    for note in ("one", "two", "three"):
        audit_log.record(orch, job_id=job, action="note", actor="me", note=note)
    path = orch.store.path(AUDIT_STREAM)
    path.write_bytes(b"".join(line + b"\n" for line in path.read_bytes().split(b"\n")[:2]))
    assert TRUNCATED in {p.code for p in verify_project(orch).problems}
    orch.store.delete_aux(*AUDIT_HEAD)  # documented limit: without the record only an anchor knows
    assert verify_project(orch).ok


def test_a_deeply_nested_line_is_reported_as_corrupt_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    result = verify_stream("j", [StoredLine(1, deep)], Keyring.generate())
    assert [p.code for p in result.problems] == ["CORRUPT_LINE"]


def test_verify_survives_a_deeply_nested_line_in_the_audit_log(orch: Orchestrator) -> None:
    orch.submit("echo", {})
    path = Path(orch.store.path(AUDIT_STREAM))
    path.parent.mkdir(parents=True, exist_ok=True)  # made by the log's first entry: a submit writes none
    with open(path, "ab") as fh:
        fh.write(b'{"data":{"event_hash":' + b"[" * 100_000 + b"]" * 100_000 + b'},"job_id":"x"}\n')
    assert "CORRUPT_LINE" in {p.code for p in verify_project(orch).problems}


def test_a_hostile_value_in_a_line_is_quoted_short_in_its_problem() -> None:
    # verify prints every problem: a 1 MB version, seq, job id or key id must not become a 1 MB message
    from orchestrator.signing import canonical, genesis

    huge = "x" * 1_000_000
    start = {"v": 1, "seq": 1, "prev": genesis("j"), "job_id": "j"}
    for rec in ({"v": huge}, {"v": 1, "seq": huge}, {**start, "job_id": huge}, {**start, "kid": huge, "sig": "A"}):
        [problem] = verify_stream("j", [StoredLine(1, canonical(rec))], Keyring.generate()).problems
        assert len(problem.message) < 200, (problem.code, len(problem.message))


def test_a_version_or_seq_that_only_equals_the_number_in_python_is_refused() -> None:
    """``true == 1`` and ``1.0 == 1`` in Python: a line signed with ``"seq": true`` or ``"v": 1.0`` passed the
    checks; the format says they are whole numbers (docs/format.md)."""
    from orchestrator.signing import genesis

    keyring = Keyring.generate()
    good = {"v": 1, "seq": 1, "prev": genesis("j"), "job_id": "j", "type": "x", "data": {}}
    assert verify_stream("j", [StoredLine(1, keyring.seal(dict(good)))], keyring).problems == []  # seal adds kid/sig
    for odd in ({"seq": True}, {"seq": 1.0}, {"v": True}, {"v": 1.0}):
        line = keyring.seal({**good, **odd})
        codes = [p.code for p in verify_stream("j", [StoredLine(1, line)], keyring).problems]
        assert codes in (["SEQUENCE_MISMATCH"], ["UNSUPPORTED_VERSION"]), (odd, codes)


def _context_encodings(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The inputs whose context a read encodes again to check its digest (``submitted.context_digest``)."""
    from orchestrator import submitted

    seen: list[Any] = []
    real = submitted.context_digest
    monkeypatch.setattr(submitted, "context_digest",
                        lambda kind, input, *rest: (seen.append(input), real(kind, input, *rest))[1])
    return seen


def test_a_submitted_input_that_does_not_match_its_signed_digest_is_a_context_mismatch(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``job_submitted`` line signs ``context_digest``, the SHA-256 of ``canonical({"kind", "input", "options"})``
    (a submit hashes it in pieces, with the input it encoded to measure it). A line a trusted key signed with an
    input its digest does not name (a bug, or a key holder's edit) is ``CONTEXT_MISMATCH`` for reads and ``verify``."""
    import hashlib

    from orchestrator.signing import canonical

    for value in ({"text": "d\u00e9j\u00e0 " * 5000, "n": [1, 2.5, None, True]}, "plain", None, []):
        job = orch.submit("echo", value, max_attempts=2)
        data = orch.load(job).stream.records[0]["data"]
        whole = canonical({"kind": "echo", "input": value, "options": data["options"]})
        assert data["context_digest"] == hashlib.sha256(whole).hexdigest()
        assert orch.load(job).ok
    good = orch.load(job).stream.records[0]["data"]
    long_line, short_line = orch.submit("echo", {"text": "x" * 5000}), orch.submit("echo", {"text": "short"})
    encoded_again = _context_encodings(monkeypatch)
    assert orch.load(long_line).ok and encoded_again == []
    assert orch.load(short_line).ok and encoded_again == [{"text": "short"}]
    # a long line's digest is checked on its own bytes (``submitted.context_matches``), a short one's on its context
    # encoded again
    large = orch.load(orch.submit("echo", ["x" * 5000, 1])).stream.records[0]["data"]
    forged = {"forged-input": {**good, "input": ["another"]}, "forged-large-input": {**large, "input": ["x" * 5000, 2]},
              "forged-large-options": {**large, "options": {**large["options"], "max_attempts": 9}},
              "forged-large-kind": {**large, "kind": "other"}}
    for job, data in forged.items():
        orch.append(None, job, [("job_submitted", data)])
        assert len(orch.store.read(job)[0].raw) > (4096 if job != "forged-input" else 0)
        codes = {(p.line, p.code) for p in orch.load(job).problems}
        assert codes == {(1, "CONTEXT_MISMATCH")}, job
        assert (1, "CONTEXT_MISMATCH") in {(p.line, p.code) for p in verify_project(orch, job).problems}, job


def test_a_long_input_is_taken_from_its_line_only_where_its_context_hashes_to_the_signed_digest(
        orch: Orchestrator) -> None:
    """``submitted.encoded_input``: what a worker sends its handler process in place of encoding the input again."""
    from orchestrator.submitted import encoded_input
    from orchestrator.signing import canonical

    value = {"text": "d\u00e9j\u00e0 \"x\" " * 600, "n": [1, 2.5, None, True]}
    assert encoded_input(orch.load(orch.submit("echo", value))) == canonical(value)
    assert encoded_input(orch.load(orch.submit("echo", {"short": 1}))) is None
    good = orch.load(orch.submit("echo", value)).stream.records[0]["data"]
    orch.append(None, "forged", [("job_submitted", {**good, "input": {**value, "n": []}})])
    assert encoded_input(orch.load("forged")) is None
