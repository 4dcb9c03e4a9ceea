"""Tamper matrix: every kind of hostile edit, many times each, and whether ``verify`` reports it.

A project with varied histories (run, asked, audited, approved, resumed, cancelled) is built
once; each trial edits a copy of one stream's bytes, runs the whole-project ``verify``, and
restores the bytes. A trial counts as *detected* when ``verify`` reports an integrity
problem, and as *detected by a read* when reading the job as ``status`` and a claiming worker
do (``Orchestrator.load``: from the head record, ``history.check_head``) refuses it too.
``promised`` says whether ``docs/format.md`` promises detection without an external anchor;
the cuts it does not promise are checked against an anchor instead.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable

from orchestrator.api import HEADS_AREA, Orchestrator
from orchestrator.audit import AUDIT_HEAD
from orchestrator.errors import JobNotFoundError
from orchestrator.integrity import check_anchor, export_anchor, verify_project
from orchestrator.reliability.common import new_project, progress
from orchestrator.reliability.crash import workload
from orchestrator.signing import Keyring
from orchestrator.store.base import AUDIT_STREAM

Lines = list[bytes]


def _split(data: bytes) -> Lines:
    return data.split(b"\n")[:-1]


def _join(lines: Lines) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _resign(line: bytes, ring: Keyring, edit: Callable[[dict[str, Any]], None]) -> bytes:
    rec = json.loads(line)
    rec.pop("kid"), rec.pop("sig")
    edit(rec)
    return ring.seal(rec)


class Matrix:
    def __init__(self, orch: Orchestrator, rng: random.Random, anchor: Path) -> None:
        self.orch, self.rng, self.anchor = orch, rng, anchor
        self.jobs = sorted(orch.store.job_ids())
        self.intruder = Keyring.generate()

    def _stream(self, multi: bool = True) -> str:
        """A random job with at least 2 lines (or the audit log, now and then)."""
        choices = [j for j in self.jobs if len(self.orch.store.read(j)) >= 2] if multi else self.jobs
        return self.rng.choice(choices + [AUDIT_STREAM])

    def read_detects(self, stream: str) -> bool | None:
        """A read of the job reports it: the job does not verify (a job "not found" is not a report).
        None for the audit log, which has no such read (only ``verify`` counts for it)."""
        if stream == AUDIT_STREAM:
            return None
        try:
            return not self.orch.load(stream).ok
        except JobNotFoundError:
            return False

    def trial(self, stream: str, new_bytes: bytes | None, *, drop_head: bool = False) -> tuple[bool, bool, bool | None]:
        """Write ``new_bytes`` as ``stream`` (None: delete its file); (verify detected it, the anchor
        detected it, a read reported it); then restore."""
        path = self.orch.store.path(stream)
        old = path.read_bytes()
        head_key = AUDIT_HEAD if stream == AUDIT_STREAM else (HEADS_AREA, stream)
        head = self.orch.store.get_aux(*head_key)
        if new_bytes is None:
            path.unlink()
        else:
            path.write_bytes(new_bytes)
        if drop_head:
            self.orch.store.delete_aux(*head_key)
        try:
            detected = not verify_project(self.orch).ok
            anchored = bool(check_anchor(self.orch, self.anchor))
            read = self.read_detects(stream)
        finally:
            path.write_bytes(old)
            if head is not None:
                self.orch.store.put_aux(*head_key, head)
        return detected, anchored, read

    def copied_trial(self, stream: str, data: bytes) -> tuple[bool, bool | None]:
        """``data`` (a job's whole file) written as the new job ``stream``, with its source's head record;
        (verify detected it, a read refused it); then removed."""
        source = json.loads(data.split(b"\n", 1)[0])["job_id"]
        head = self.orch.store.get_aux(HEADS_AREA, source)
        self.orch.store.path(stream).write_bytes(data)
        if head is not None:
            self.orch.store.put_aux(HEADS_AREA, stream, head)
        try:
            return not self.orch.load(stream, every_signature=True).ok, self.read_detects(stream)
        finally:
            self.orch.store.delete_aux(HEADS_AREA, stream)
            self.orch.store.path(stream).unlink()

    # -- kinds: each returns (stream, new bytes, drop_head) or None when it does not apply ---------------
    def byte_flip(self) -> tuple[str, bytes, bool]:
        stream = self._stream(multi=False)
        data = bytearray(self.orch.store.path(stream).read_bytes())
        i = self.rng.randrange(len(data))
        data[i] ^= 1 << self.rng.randrange(8)
        return stream, bytes(data), False

    def _lines(self) -> tuple[str, Lines]:
        stream = self._stream()
        return stream, _split(self.orch.store.path(stream).read_bytes())

    def delete(self) -> tuple[str, bytes, bool]:
        stream, ls = self._lines()
        i = self.rng.randrange(len(ls) - 1)  # not the last: that is a cut (below)
        return stream, _join(ls[:i] + ls[i + 1:]), False

    def duplicate(self) -> tuple[str, bytes, bool]:
        stream, ls = self._lines()
        i = self.rng.randrange(len(ls))
        return stream, _join(ls[:i + 1] + ls[i:]), False

    def reorder(self) -> tuple[str, bytes, bool]:
        stream, ls = self._lines()
        i = self.rng.randrange(len(ls) - 1)
        return stream, _join(ls[:i] + [ls[i + 1], ls[i]] + ls[i + 2:]), False

    def insert_forged(self) -> tuple[str, bytes, bool]:
        """A new line signed by the real key holder's format but an untrusted key."""
        stream, ls = self._lines()
        i = self.rng.randrange(len(ls))
        forged = _resign(ls[i], self.intruder, lambda r: r.update(actor="intruder"))
        return stream, _join(ls[:i + 1] + [forged] + ls[i + 1:]), False

    def splice_other_job(self) -> tuple[str, bytes, bool]:
        stream = self.rng.choice([j for j in self.jobs if len(self.orch.store.read(j)) >= 2])
        other = self.rng.choice([j for j in self.jobs if j != stream])
        ls, theirs = _split(self.orch.store.path(stream).read_bytes()), _split(self.orch.store.path(other).read_bytes())
        i = self.rng.randrange(min(len(ls), len(theirs)))
        return stream, _join(ls[:i] + [theirs[i]] + ls[i + 1:]), False

    def cut_with_head(self) -> tuple[str, bytes, bool]:
        stream = self.rng.choice([j for j in self.jobs if len(self.orch.store.read(j)) >= 2])
        ls = _split(self.orch.store.path(stream).read_bytes())
        return stream, _join(ls[: self.rng.randrange(1, len(ls))]), False

    def cut_without_head(self) -> tuple[str, bytes, bool]:
        stream, data, _ = self.cut_with_head()
        return stream, data, True

    def audit_cut(self) -> tuple[str, bytes, bool]:
        ls = _split(self.orch.store.path(AUDIT_STREAM).read_bytes())
        return AUDIT_STREAM, _join(ls[: self.rng.randrange(1, len(ls))]), False

    def audit_cut_without_head(self) -> tuple[str, bytes, bool]:
        stream, data, _ = self.audit_cut()
        return stream, data, True

    def last_newline_flipped(self) -> tuple[str, bytes, bool]:
        """The last line loses its newline: it now looks like a torn tail, so only the head record can tell."""
        stream = self._stream(multi=False)
        data = bytearray(self.orch.store.path(stream).read_bytes())
        data[-1] ^= 1 << self.rng.randrange(8)
        return stream, bytes(data), False

    def unknown_key_id(self) -> tuple[str, bytes, bool]:
        stream, ls = self._lines()
        i = self.rng.randrange(len(ls))
        rec = json.loads(ls[i])
        rec["kid"] = "k-" + "%016x" % self.rng.getrandbits(64)
        from orchestrator.signing import canonical

        return stream, _join(ls[:i] + [canonical(rec)] + ls[i + 1:]), False

    def resigned_untrusted(self) -> tuple[str, bytes, bool]:
        """A valid event, its data edited, re-signed with an untrusted key (seq, chain and job id kept)."""
        stream, ls = self._lines()
        i = self.rng.randrange(len(ls))
        forged = _resign(ls[i], self.intruder, lambda r: r["data"].update(edited=True))
        return stream, _join(ls[:i] + [forged] + ls[i + 1:]), False

    def emptied(self) -> tuple[str, bytes, bool]:
        """Every line of a job removed: no file lists the job any more, its head record still does."""
        return self.rng.choice(self.jobs), b"", False

    def file_deleted(self) -> tuple[str, None, bool]:
        return self.rng.choice(self.jobs), None, False

    def copied_under_other_id(self) -> tuple[str, bytes, bool]:
        """A job's file, and its head record, copied under another job id."""
        src = self.rng.choice(self.jobs)
        return "copied-" + src[-8:], self.orch.store.path(src).read_bytes(), False


KINDS: dict[str, tuple[Callable[[Matrix], tuple[str, bytes | None, bool]], bool]] = {
    # name -> (mutation, detection promised without an anchor)
    "byte_flip": (Matrix.byte_flip, True),
    "delete_line": (Matrix.delete, True),
    "duplicate_line": (Matrix.duplicate, True),
    "reorder_lines": (Matrix.reorder, True),
    "insert_forged_line": (Matrix.insert_forged, True),
    "splice_from_other_job": (Matrix.splice_other_job, True),
    "copy_under_other_job_id": (Matrix.copied_under_other_id, True),
    "unknown_key_id": (Matrix.unknown_key_id, True),
    "resigned_untrusted_key": (Matrix.resigned_untrusted, True),
    "cut_at_line_boundary": (Matrix.cut_with_head, True),
    "cut_and_head_record_deleted": (Matrix.cut_without_head, False),
    "job_file_emptied": (Matrix.emptied, True),
    "job_file_deleted": (Matrix.file_deleted, True),
    "last_newline_damaged": (Matrix.last_newline_flipped, True),
    "audit_log_cut_at_line_boundary": (Matrix.audit_cut, True),
    "audit_log_cut_and_head_record_deleted": (Matrix.audit_cut_without_head, False),
}


def build_project(root: Path, histories: int = 2) -> Orchestrator:
    project = new_project(root, "tamper")
    orch = project.orch()
    for _ in range(histories):
        workload(orch)  # 6 jobs with varied histories, and their audit entries
    return orch


def campaign(root: Path, flips: int = 500, per_kind: int = 50, seed: int = 6, histories: int = 2) -> dict[str, Any]:
    orch = build_project(root, histories)
    anchor = root / "tamper" / "anchor.json"
    export_anchor(orch, anchor)
    matrix = Matrix(orch, random.Random(seed), anchor)
    kinds: dict[str, dict[str, Any]] = {}
    for name, (mutate, promised) in KINDS.items():
        n = flips if name == "byte_flip" else per_kind
        detected = anchored = read = read_trials = 0
        for _ in range(n):
            stream, data, drop_head = mutate(matrix)
            r: bool | None
            if stream.startswith("copied-"):
                d, r = matrix.copied_trial(stream, data)
                detected += d
                anchored += 1  # not in the anchor, but verify already reports it
            else:
                d, a, r = matrix.trial(stream, data, drop_head=drop_head)
                detected += d
                anchored += d or a
            if r is not None:  # a job's file: a read counts too
                read_trials += 1
                read += r
        kinds[name] = {"trials": n, "detected": detected, "detected_with_anchor": anchored, "detected_by_read": read,
                       "read_trials": read_trials, "promised": promised}
        progress(f"tamper {name}: {detected}/{n} detected by verify, {read}/{read_trials} job files by a read, "
                 f"{anchored}/{n} with the anchor")
    # a revoked key: every line it signed stops verifying
    ring = orch.keyring
    ring.revoked = frozenset({ring.signer_id or ""})
    kinds["revoked_key"] = {"trials": 1, "detected": int(not verify_project(orch).ok), "detected_with_anchor": 1,
                            "detected_by_read": int(all(matrix.read_detects(j) for j in matrix.jobs)), "read_trials": 1,
                            "promised": True}
    ring.revoked = frozenset()
    return {"kinds": kinds, "clean_after": verify_project(orch).ok}
