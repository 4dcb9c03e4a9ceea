"""A read (``status``, a claiming worker) verifies a job from its head record.

The head record names a line by its hash; that line's signature is checked, and it covers the line's
``prev``, the hash of the line before, so the named line's key vouches for every line up to it. A read
checks such a line's own signature only when the line names another key, nor encodes it again to compare it
with its canonical form (its bytes are fixed by the chain: an edit breaks the next line's ``prev``); every other check
(parse, sequence, chain, job id, key trusted and not revoked) is made on every line. ``verify``
still checks every signature. When anything fails, the read checks each line on its own, so a problem
is named at the line it is on, as ``verify`` names it. A head record is not signed since 2026-12-03; the
signed ones written before are still read (``_legacy_head``).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import libsodium_checks
import worker_handlers  # noqa: F401  (registers t.* handlers)

from orchestrator import Orchestrator
from orchestrator.api import HEADS_AREA
from orchestrator.history import head_record
from orchestrator.integrity import verify_project
from orchestrator.signing import Keyring, canonical, line_hash
from orchestrator.store.base import Head


def _finished_job(orch: Orchestrator) -> str:
    job = orch.submit("t.echo", {"x": 1})
    orch.worker().run_once()
    assert orch.status(job).state == "succeeded"
    return job


def _lines(orch: Orchestrator, job: str) -> list[bytes]:
    return orch.store.path(job).read_bytes().split(b"\n")[:-1]


def _write(orch: Orchestrator, job: str, lines: list[bytes]) -> None:
    orch.store.path(job).write_bytes(b"".join(line + b"\n" for line in lines))


def _broken_signature(line: bytes) -> bytes:
    """The same record with another (well-formed, wrong) signature."""
    rec = json.loads(line)
    rec["sig"] = rec["sig"][::-1]
    return canonical(rec)


def _fresh_head(orch: Orchestrator, job: str) -> None:
    """A fresh head record over the file as it is now (a writer that can write the store can write one)."""
    lines = _lines(orch, job)
    orch.store.put_aux(HEADS_AREA, job, head_record(job, Head(len(lines), lines[-1])))


def _legacy_head(orch: Orchestrator, job: str, ring: Keyring) -> None:
    """A head record over the file as it is now in the form written before 2026-12-03: signed by ``ring``'s key."""
    lines = _lines(orch, job)
    orch.store.put_aux(HEADS_AREA, job, ring.seal({"stream": job, "seq": len(lines), "hash": line_hash(lines[-1])}))


def _count_verifications(monkeypatch: pytest.MonkeyPatch, ring: Keyring) -> list[int]:
    calls = [0]
    real = ring._verify

    def counting(*args: object) -> bool:
        calls[0] += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(ring, "_verify", counting)
    return calls


def test_a_read_checks_the_signature_of_the_line_the_head_record_names_for_the_lines_before_it(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _finished_job(orch)
    calls = _count_verifications(monkeypatch, orch.keyring)
    assert orch.load(job).ok
    assert calls[0] == 1  # the last line's, which the head record names; its key signed all three lines
    calls[0] = 0
    assert orch.load(job, every_signature=True).ok
    assert calls[0] == len(_lines(orch, job))  # verify's way: every line (the head record has no signature)


def test_a_head_record_is_a_note_of_the_last_line_with_no_signature(orch: Orchestrator) -> None:
    job = _finished_job(orch)
    lines = _lines(orch, job)
    assert json.loads(orch.store.get_aux(HEADS_AREA, job) or b"") == {
        "stream": job, "seq": len(lines), "hash": line_hash(lines[-1])}


def test_an_append_signs_its_events_and_nothing_else(orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """One Ed25519 signature per event: a submit one, a worker's run two (its claim, its outcome)."""
    orch.submit("t.echo", {"warm": 1})
    orch.worker().run_once()  # the first run: imports, the handler process
    signed = [0]
    real = orch.keyring._sign

    def counting(*args: object) -> bytes:
        signed[0] += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(orch.keyring, "_sign", counting)
    job = orch.submit("t.echo", {"x": 1})
    assert signed[0] == 1
    orch.worker().run_once()
    assert orch.status(job).state == "succeeded" and signed[0] == 3


def test_a_head_record_naming_a_line_that_does_not_verify_vouches_for_nothing(orch: Orchestrator) -> None:
    """Anyone who can write the store can write a head record: it vouches only through the line it names,
    whose signature is checked. A last line with a bad signature and a fresh record naming it is reported."""
    job = _finished_job(orch)
    lines = _lines(orch, job)
    _write(orch, job, lines[:-1] + [_broken_signature(lines[-1])])
    _fresh_head(orch, job)
    assert [(p.line, p.code) for p in orch.load(job).problems] == [(len(lines), "SIGNATURE_INVALID")]


def test_a_signed_head_record_written_before_2026_12_03_is_still_read(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _finished_job(orch)
    _legacy_head(orch, job, orch.keyring)
    calls = _count_verifications(monkeypatch, orch.keyring)
    orch.keyring._verified.clear()
    assert orch.load(job).ok and calls[0] == 1  # the head record's signature vouches, as it did
    _write(orch, job, _lines(orch, job)[:-1])
    assert [p.code for p in orch.load(job).problems] == ["TRUNCATED"]


def test_lines_written_after_the_head_record_are_checked_one_by_one(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file store writes a head record after its lines: a read in between sees lines past it."""
    job = _finished_job(orch)
    lines = _lines(orch, job)
    orch.store.put_aux(HEADS_AREA, job, head_record(job, Head(1, lines[0])))
    calls = _count_verifications(monkeypatch, orch.keyring)
    assert orch.load(job).ok
    assert calls[0] == 1 + (len(lines) - 1)
    _write(orch, job, lines[:-1] + [_broken_signature(lines[-1])])
    problems = orch.load(job).problems
    assert [(p.line, p.code) for p in problems] == [(len(lines), "SIGNATURE_INVALID")]


def test_an_edited_signature_is_named_at_its_line_as_verify_names_it(orch: Orchestrator) -> None:
    job = _finished_job(orch)
    lines = _lines(orch, job)
    _write(orch, job, [_broken_signature(lines[0])] + lines[1:])
    read = [(p.line, p.code) for p in orch.load(job).problems]
    assert read[0] == (1, "SIGNATURE_INVALID")
    assert read == [(p.line, p.code) for p in verify_project(orch, job).problems]


@pytest.mark.parametrize("line", [0, 1, 2])
def test_a_line_rewritten_out_of_canonical_form_is_named_at_its_line_even_under_a_fresh_head_record(
        orch: Orchestrator, line: int) -> None:
    """The same record, its bytes spaced out (what a hand edit through a JSON tool leaves): the lines the head
    record vouches for are not encoded again, but their bytes are what the next line's ``prev`` hashes."""
    job = _finished_job(orch)
    lines = _lines(orch, job)
    lines[line] = json.dumps(json.loads(lines[line]), sort_keys=True).encode()  # ", " and ": " between items
    _write(orch, job, lines)
    _fresh_head(orch, job)  # a record over the file as it is now: the last line's bytes are what it names
    read = [(p.line, p.code) for p in orch.load(job).problems]
    assert read[0] == (line + 1, "CORRUPT_LINE")
    assert read == [(p.line, p.code) for p in verify_project(orch, job).problems]


def test_a_read_encodes_again_only_the_lines_its_head_record_does_not_vouch_for(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator import history

    job = _finished_job(orch)
    encoded: list[bytes] = []
    real = history.line_and_body
    monkeypatch.setattr(history, "line_and_body", lambda obj: encoded.append(real(obj)[0]) or (encoded[-1], real(obj)[1]))
    assert orch.load(job).ok
    lines = _lines(orch, job)
    assert lines[-1] in encoded and not set(lines[:-1]) & set(encoded)  # the named line only, of the three


def test_the_named_line_is_parsed_once_and_only_its_very_bytes_take_that_parse(orch: Orchestrator,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``check_head`` parses the named line to find its key and hands the record on with the line's bytes; the
    line's check takes it only for those bytes, so another line at that place is parsed (and judged) as it is."""
    from orchestrator import history
    from orchestrator.history import check_head, verify_stream
    from orchestrator.store.base import StoredLine

    job = _finished_job(orch)
    lines = _lines(orch, job)
    stored = [StoredLine(i, line) for i, line in enumerate(lines, 1)]
    raw_head = orch.store.get_aux(HEADS_AREA, job)
    parsed: list[bytes] = []
    real = history.parse_line
    monkeypatch.setattr(history, "parse_line", lambda raw: parsed.append(raw) or real(raw))
    problem, anchor = check_head(job, stored, raw_head, orch.keyring)
    assert problem is None and anchor is not None and anchor.record == json.loads(lines[-1])
    result = verify_stream(job, stored, orch.keyring, anchor=anchor)
    assert result.ok and result.records == [json.loads(line) for line in lines]
    assert parsed.count(lines[-1]) == 1  # the head record, then each line once
    other = _broken_signature(lines[-1])
    damaged = verify_stream(job, stored[:-1] + [StoredLine(len(lines), other)], orch.keyring, anchor=anchor)
    assert [(p.line, p.code) for p in damaged.problems] == [(len(lines), "SIGNATURE_INVALID")]


def _resealed(orch: Orchestrator, job: str, lines: list[bytes], signers: list[Keyring | None]) -> list[bytes]:
    """``lines`` chained again and signed again, line ``i`` by ``signers[i]`` (None: kept as it is, only
    if its ``prev`` is right already); written with a fresh head record."""
    from orchestrator.signing import genesis, line_hash

    out: list[bytes] = []
    for line, ring in zip(lines, signers):
        if ring is None:
            out.append(line)
            continue
        rec = json.loads(line)
        rec.pop("kid"), rec.pop("sig")
        rec["prev"] = line_hash(out[-1]) if out else genesis(job)
        out.append(ring.seal(rec))
    _write(orch, job, out)
    _fresh_head(orch, job)
    return out


def test_a_line_naming_another_key_is_checked_against_that_key(orch: Orchestrator) -> None:
    """The named line's key vouches only for lines under its own name: a line signed (or claiming to be
    signed) by another trusted key is checked with that key, even below the head record."""
    job = _finished_job(orch)
    other = Keyring.generate()
    orch.keyring.trusted.update(other.trusted)
    lines = _resealed(orch, job, _lines(orch, job), [orch.keyring, other, orch.keyring])
    assert orch.load(job).ok  # a valid line of another trusted key is fine
    forged = [lines[0], _broken_signature(lines[1]), lines[2]]  # the other key's name, not its signature
    _resealed(orch, job, forged, [None, None, orch.keyring])
    assert [(p.line, p.code) for p in orch.load(job).problems] == [(2, "SIGNATURE_INVALID")]


def test_a_revoked_key_fails_a_read_whether_it_signed_the_named_line_or_another(orch: Orchestrator) -> None:
    job = _finished_job(orch)
    orch.keyring.revoked = frozenset({orch.keyring.signer_id or ""})
    assert "KEY_REVOKED" in {p.code for p in orch.load(job).problems}
    orch.keyring.revoked = frozenset()
    other = Keyring.generate()  # a line under a key revoked since, below a named line of a key still trusted
    orch.keyring.trusted.update(other.trusted)
    _resealed(orch, job, _lines(orch, job), [other, orch.keyring, orch.keyring])
    assert orch.load(job).ok
    orch.keyring.revoked = frozenset({other.signer_id or ""})
    assert [(p.line, p.code) for p in orch.load(job).problems] == [(1, "KEY_REVOKED")]


def test_a_signed_head_record_that_does_not_verify_means_every_line_is_checked(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _finished_job(orch)
    stranger = Keyring.generate()
    _legacy_head(orch, job, stranger)  # an untrusted key
    calls = _count_verifications(monkeypatch, orch.keyring)
    problems = orch.load(job).problems
    # the head record's, naming its key (SIGNATURE_INVALID until 2026-12-02: a worker that lacks another machine's
    # key now leaves such a job for one that holds it, docs/worker.md)
    assert [(p.line, p.code, p.kid) for p in problems] == [(0, "UNKNOWN_KEY", stranger.signer_id)]
    assert calls[0] == len(_lines(orch, job))  # every line checked on its own (the untrusted head: no call)


def test_what_only_verify_sees_a_line_its_own_key_vouched_for_with_a_bad_signature(orch: Orchestrator) -> None:
    """The one case a read and ``verify`` differ, as documented: the holder of a trusted key wrote a
    line under that key with a signature that does not verify, then signed a later line over it
    (a key holder could as well have signed the line). ``verify`` and the audit timeline report
    it; a read for ``status`` takes the word of the line the head record names."""
    from orchestrator.timeline import timeline

    job = _finished_job(orch)
    lines = _lines(orch, job)
    _resealed(orch, job, [lines[0], _broken_signature(lines[1]), lines[2]], [None, None, orch.keyring])
    assert orch.load(job).ok
    assert [(p.line, p.code) for p in verify_project(orch, job).problems] == [(2, "SIGNATURE_INVALID")]
    assert not timeline(orch, job_id=job)["ok"]


def test_a_worker_never_runs_a_job_with_a_line_that_does_not_verify_even_one_its_head_vouches_for(
        orch: Orchestrator) -> None:
    """A claim checks every signature: the case a read takes on the head record's word is refused."""
    job = orch.submit("t.echo", {"x": 1})
    lines = _lines(orch, job)
    _write(orch, job, [_broken_signature(lines[0])])
    _legacy_head(orch, job, orch.keyring)  # a signed head record over the one line (the form before 2026-12-03)
    assert orch.load(job).ok  # status: the head record's word
    assert orch.worker().run_once() is None  # the worker: refused, not run
    assert orch.status(job).state == "queued"
    from orchestrator import audit

    _, entries = audit.entries_for(orch, job_id=job)
    assert [rec["data"]["action"] for _, rec in entries] == ["run_refused"]


def test_a_line_without_a_signature_is_reported_even_below_the_head_record(orch: Orchestrator) -> None:
    job = _finished_job(orch)
    lines = _lines(orch, job)
    rec = json.loads(lines[1])
    del rec["sig"]
    unsigned = canonical(rec)
    _resealed(orch, job, [lines[0], unsigned, lines[2]], [None, None, orch.keyring])
    assert [(p.line, p.code) for p in orch.load(job).problems] == [(2, "SIGNATURE_MISSING")]


def test_a_head_record_of_another_job_vouches_for_nothing(orch: Orchestrator,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    job, other = _finished_job(orch), _finished_job(orch)
    orch.store.put_aux(HEADS_AREA, job, orch.store.get_aux(HEADS_AREA, other) or b"")
    calls = _count_verifications(monkeypatch, orch.keyring)
    assert [p.code for p in orch.load(job).problems] == ["WRONG_STREAM"]  # the head record's
    assert calls[0] == len(_lines(orch, job))  # every line on its own


@pytest.mark.parametrize("raw", [
    b"[]", b'"text"', b"12",
    b'{"hash":"x","kid":"KID","seq":1,"sig":"AA","stream":"JOB","z":NaN}',
    b'{"seq":1,"stream":"JOB"}', b'{"hash":"x","seq":1,"stream":"JOB","z":1}', b'{"hash":7,"seq":1,"stream":"JOB"}',
    b'{"hash":"x","seq":99,"stream":"JOB"}', b'{"hash":"x","seq":1,"stream":"JOB"}',
], ids=["list", "string", "number", "nan", "no-hash", "more-fields", "hash-not-text", "more-lines", "another-line"])
def test_a_hostile_head_record_is_a_problem_not_a_crash(orch: Orchestrator, raw: bytes) -> None:
    job = _finished_job(orch)
    orch.store.put_aux(HEADS_AREA, job, raw.replace(b"KID", (orch.keyring.signer_id or "").encode())
                       .replace(b"JOB", job.encode()))
    assert orch.status(job).integrity_error is not None
    assert not verify_project(orch).ok


@pytest.mark.parametrize("signed", [False, True], ids=["note", "signed"])
@pytest.mark.parametrize("seq", [1.0, True, -1, "1"])
def test_a_head_record_with_a_seq_that_is_not_a_count_is_a_problem(orch: Orchestrator, seq: object,
                                                                   signed: bool) -> None:
    job = _finished_job(orch)
    record = {"stream": job, "seq": seq, "hash": "x"}
    orch.store.put_aux(HEADS_AREA, job, orch.keyring.seal(record) if signed else canonical(record))
    assert orch.status(job).integrity_error is not None
    assert not verify_project(orch).ok


def test_strict_reads_check_every_signature(base: Path, keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ORCH_STRICT_READS=1``: even the case a read takes on the head record's word is reported."""
    monkeypatch.setenv("ORCH_STRICT_READS", "1")
    orch = Orchestrator(base_path=base, project_id="proj", keyring=keyring)
    job = _finished_job(orch)
    lines = _lines(orch, job)
    _resealed(orch, job, [lines[0], _broken_signature(lines[1]), lines[2]], [None, None, orch.keyring])
    assert [(p.line, p.code) for p in orch.load(job).problems] == [(2, "SIGNATURE_INVALID")]
    assert orch.status(job).integrity_error is not None


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_a_strict_reads_setting_that_is_not_a_yes_or_no_is_a_config_error(base: Path, value: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.errors import ConfigError

    monkeypatch.setenv("ORCH_STRICT_READS", value)
    with pytest.raises(ConfigError, match="ORCH_STRICT_READS"):
        Orchestrator(base_path=base, project_id="proj", keyring=Keyring.generate())



def _another_process(orch: Orchestrator, base: Path) -> Orchestrator:
    """The same project and keys, with a keyring of its own: nothing verified or signed by ``orch`` is known to it."""
    ring = Keyring(trusted=dict(orch.keyring.trusted))
    ring.add_signer(orch.keyring.signer)
    return Orchestrator(base_path=base, project_id="proj", keyring=ring)


def _waiting(orch: Orchestrator) -> str:
    job = orch.submit("t.ask", {})
    orch.worker().run_once()
    assert orch.status(job).state == "waiting_human"
    return job


def test_a_resume_checks_one_signature_the_line_the_jobs_head_record_names(
        orch: Orchestrator, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit log's head record is checked against the log's last line before the event (a cut log refuses the
    action) and again under the log's lock before the entry: a note with no signature, so no Ed25519 at all; the
    job's read checks the line its head record names. What the resume signs, it does not verify."""
    first, job = _waiting(orch), _waiting(orch)
    orch.resume(first, "blue")  # the audit log and its head record exist
    calls = libsodium_checks(monkeypatch)
    operator = _another_process(orch, base)
    assert operator.resume(job, "green").applied
    assert calls[0] == 1  # the line the job's head record names
    assert operator.status(job).state == "queued" and calls[0] == 1  # the line it wrote: known to it


def test_a_reader_polling_a_job_checks_only_the_signatures_it_has_not_seen(
        orch: Orchestrator, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _finished_job(orch)
    calls = libsodium_checks(monkeypatch)
    reader = _another_process(orch, base)
    assert reader.status(job).state == "succeeded" and calls[0] == 1  # the line the head record names
    assert reader.status(job).state == "succeeded" and calls[0] == 1  # the same bytes: remembered
    lines = _lines(orch, job)
    _write(orch, job, lines[:-1] + [_broken_signature(lines[-1])])  # an edit since: still caught
    assert [p.code for p in reader.load(job).problems] == ["SIGNATURE_INVALID", "HEAD_MISMATCH"]
