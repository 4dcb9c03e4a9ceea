"""Torn tails: a crash part-way through writing the last line, at every byte offset, and garbage tails.

For each stream kind (a job's events, the audit log) the campaign writes the first ``k``
bytes of a would-be next line, for every ``k`` (or every ``step``-th), and checks: readers
ignore the partial line (the job still verifies, with the state it had), and the next append
cuts it and lands exactly after the last complete line, losing nothing. Garbage tails (NUL
runs, invalid UTF-8, half JSON, a whole line missing only its newline) are checked the same
way. Garbage *containing a newline* is a different thing: a complete line that does not
verify is corruption and must be reported, never skipped.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from orchestrator.api import HEADS_AREA, Orchestrator
from orchestrator.audit import AUDIT_HEAD
from orchestrator.integrity import verify_project
from orchestrator.reliability.common import new_project, progress
from orchestrator.store.base import AUDIT_STREAM

GARBAGE = [b"\x00", b"\x00" * 4096, b"\xff\xfe\xfd not utf-8", b'{"seq":4,"ha', b"{", b" ", b"\r",
           b"\xef\xbb\xbf", os.urandom(64).replace(b"\n", b"")]


def _job_with_three_events(orch: Orchestrator) -> str:
    job_id = orch.submit("rel.ask", {"torn": True})
    view = orch.load(job_id)
    view = orch.append(view, job_id, [("job_claimed", {"worker_id": "w", "epoch": 1, "attempt": 1,
                                                        "lease_expires_at": "2030-01-01T00:00:00.000000Z"})],
                       run_id="run-1")
    orch.append(view, job_id, [("human_input_requested", {"question": "go on?"})], run_id="run-1")
    return job_id


def _append_next(orch: Orchestrator, stream: str, job_id: str) -> None:
    if stream == AUDIT_STREAM:
        from orchestrator import audit as audit_log

        audit_log.record(orch, job_id=job_id, action="note", actor="rel", note="after a torn tail")
    else:
        orch.append(orch.load(job_id), job_id, [("job_cancelled", {"reason": "after a torn tail"})])


def campaign(root: Path, step: int = 1) -> dict[str, Any]:
    """Every ``step``-th byte offset of the last line of a job file and of the audit log."""
    project = new_project(root, "torn")
    orch = project.orch()
    job_id = _job_with_three_events(orch)
    from orchestrator import audit as audit_log

    audit_log.record(orch, job_id=job_id, action="note", actor="rel", note="first entry")
    offsets = recovered = garbage_ok = garbage_total = 0
    failures: list[str] = []
    for stream in (job_id, AUDIT_STREAM):
        path = orch.store.path(stream)
        before = path.read_bytes()
        head_key = AUDIT_HEAD if stream == AUDIT_STREAM else (HEADS_AREA, job_id)
        head_before = orch.store.get_aux(*head_key)
        _append_next(orch, stream, job_id)
        whole = path.read_bytes()
        next_line = whole[len(before):]

        def restore(tail: bytes) -> None:
            path.write_bytes(before + tail)
            if head_before is not None:  # the crash came before the head record was rewritten
                orch.store.put_aux(*head_key, head_before)

        def check(tail: bytes) -> bool:
            restore(tail)
            n_before = before.count(b"\n")
            if len(orch.store.read(stream)) != n_before:
                return False
            if stream != AUDIT_STREAM and not orch.load(job_id).ok:
                return False
            _append_next(orch, stream, job_id)
            after = path.read_bytes()
            ok = after.startswith(before) and after.count(b"\n") == n_before + 1 and after.endswith(b"\n")
            return ok and verify_project(orch).ok

        for cut in range(1, len(next_line), step):  # 1..len-1: the newline never made it
            offsets += 1
            if check(next_line[:cut]):
                recovered += 1
            else:
                failures.append(f"{'audit' if stream == AUDIT_STREAM else 'job'} offset {cut}")
        for junk in GARBAGE + [next_line[:-1]]:
            garbage_total += 1
            if check(junk):
                garbage_ok += 1
            else:
                failures.append(f"garbage {junk[:16]!r}")
        restore(b"")
        progress(f"torn tails of {'the audit log' if stream == AUDIT_STREAM else 'a job file'}: done")
    # a complete garbage line is corruption: reported, never skipped
    path = orch.store.path(job_id)
    with open(path, "ab") as fh:
        fh.write(b"\x00\x00garbage\n")
    corrupt_reported = any(p.code == "CORRUPT_LINE" for p in verify_project(orch).problems)
    return {"offsets": offsets, "recovered": recovered, "garbage": garbage_total, "garbage_recovered": garbage_ok,
            "complete_garbage_line_reported": corrupt_reported, "failures": failures[:20]}
