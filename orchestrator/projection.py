"""A derived per-job summary cache, so project-wide figures never replay every job.

One row per job, computed by replaying that job's verified events, stored with the
*fingerprint* of the job's events file (size and mtime in nanoseconds on the file backend;
the event count elsewhere). A refresh lists the fingerprints (one ``scandir``, no file is
opened) and replays only the jobs whose fingerprint changed or that have no row, so the
cost of ``metrics`` on an unchanged project of 100,000 jobs is one directory listing plus
one cache read. Append-only files only grow, so a changed job always changes its size; the
mtime also catches a file rewritten to the same size.

The cache is ``projections/jobs-v1`` (one JSON document). It is derived (ADR: events > audit
log > caches): delete it at any time, or pass ``--rebuild``, and the next refresh recomputes it.
Rows are never trusted for anything but figures: no job is run or changed because of a row.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from orchestrator.clock import from_iso
from orchestrator.state import FAILED, SUCCEEDED, CANCELLED, WAITING_HUMAN, Event, apply

if TYPE_CHECKING:
    from orchestrator.api import JobView, Orchestrator

AREA, KEY, VERSION = "projections", "jobs-v1", 2
HEAL_BATCH = 500


class Row(NamedTuple):
    """What metrics need of one job (times are epoch seconds). A tuple: 100k of them load fast."""

    state: str | None
    ok: bool
    submitted_at: float | None
    updated_at: float | None
    final_at: float | None  # when it reached succeeded/failed/cancelled
    lease_expires_at: float | None  # of the current run, while running
    resumes_ok: int  # resumes after which the job next reached succeeded
    resumes_failed: int  # resumes after which it asked again, failed or was cancelled
    runs: list[str]  # run ids, oldest first

    def dump(self, fp: list[int]) -> list[Any]:
        return [*fp, *self]  # flat: fewer JSON tokens to parse

    @classmethod
    def load(cls, raw: list[Any]) -> "Row":
        return cls._make(raw[2:])


def summarize(view: "JobView") -> Row:
    """Replay the verified events once, noting each resume's outcome and when the job ended."""
    state = None
    pending_resume = False
    ok = failed = 0
    final_at = None
    runs: list[str] = []
    for rec in view.stream.records:
        try:
            state = apply(state, Event.from_record(rec))
        except Exception:  # INVALID_HISTORY: the view already reports it; stop here like replay does
            break
        if rec.get("run_id") and rec["type"] == "job_claimed" and rec["run_id"] not in runs:
            runs.append(rec["run_id"])
        if rec["type"] == "job_resumed":
            pending_resume = True
        elif pending_resume and state.state in (SUCCEEDED, WAITING_HUMAN, FAILED, CANCELLED):
            ok, failed = (ok + 1, failed) if state.state == SUCCEEDED else (ok, failed + 1)
            pending_resume = False
        if state.is_final and final_at is None:
            final_at = from_iso(rec["ts"])
    s = view.state
    return Row(state=s.state if s else None, ok=view.ok, submitted_at=s.submitted_at if s else None,
               updated_at=s.updated_at if s else None, final_at=final_at,
               lease_expires_at=s.lease_expires_at if s and s.state == "running" else None,
               resumes_ok=ok, resumes_failed=failed, runs=runs)


def fingerprints(orch: "Orchestrator") -> dict[str, list[int]]:
    """job id -> fingerprint of its events, without opening any events file when possible."""
    store = orch.store
    custom = getattr(store, "fingerprints", None)
    if callable(custom):  # a backend may offer a cheap one (e.g. head seqs from one SQL query)
        return {k: list(v) for k, v in custom().items()}
    jobs_dir = getattr(store, "jobs_dir", None)
    if jobs_dir is not None:
        from orchestrator.store.jsonl import EVENTS_SUFFIX

        out = {}
        try:
            with os.scandir(jobs_dir) as entries:
                for entry in entries:
                    if entry.name.endswith(EVENTS_SUFFIX):
                        st = entry.stat()
                        if st.st_size:
                            out[entry.name[: -len(EVENTS_SUFFIX)]] = [st.st_size, st.st_mtime_ns]
        except FileNotFoundError:
            pass
        return out
    return {job_id: [len(store.read(job_id)), 0] for job_id in store.job_ids()}  # slow generic fallback


@dataclass
class Refresh:
    rows: dict[str, Row]
    replayed: int
    healed: int


def refresh(orch: "Orchestrator", *, rebuild: bool = False, heal: bool = True,
            progress: Callable[[int], None] | None = None) -> Refresh:
    """Bring the cache up to date with the events and return every job's row.

    Jobs replayed here are also healed (a missing audit entry is written), as any command
    touching a job does.
    """
    from orchestrator import audit

    raw = {} if rebuild else _read(orch)
    fps = fingerprints(orch)  # taken before reading: a job that grows meanwhile is seen again next time
    rows: dict[str, Row] = {}
    out_raw: dict[str, list[Any]] = {}
    changed = 0
    healed = 0
    batch: list[Any] = []
    for job_id, fp in fps.items():
        cached = raw.get(job_id)
        if cached is not None and cached[0] == fp[0] and cached[1] == fp[1]:
            rows[job_id] = Row.load(cached)
            out_raw[job_id] = cached
            continue
        view = orch.load(job_id)
        row = summarize(view)
        rows[job_id] = row
        out_raw[job_id] = row.dump(fp)
        changed += 1
        if heal and view.ok:
            batch.append(view)
            if len(batch) >= HEAL_BATCH:
                healed += len(audit.heal_quietly(orch, batch))
                batch = []
        if progress and changed % 1000 == 0:
            progress(changed)
    if batch:
        healed += len(audit.heal_quietly(orch, batch))
    if changed or len(out_raw) != len(raw):
        orch.store.put_aux(AREA, KEY, json.dumps({"version": VERSION, "rows": out_raw}, separators=(",", ":")).encode())
    return Refresh(rows, changed, healed)


def _read(orch: "Orchestrator") -> dict[str, list[Any]]:
    data = orch.store.get_aux(AREA, KEY)
    if not data:
        return {}
    try:
        doc = json.loads(data)
        return doc["rows"] if doc.get("version") == VERSION and isinstance(doc.get("rows"), dict) else {}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return {}  # a damaged cache is just rebuilt


def job_of_run(orch: "Orchestrator", run_id: str) -> str | None:
    """The job that ran ``run_id``, from the rows (refreshed incrementally)."""
    for job_id, row in refresh(orch).rows.items():
        if run_id in row.runs:
            return job_id
    return None
