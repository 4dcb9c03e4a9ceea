"""A derived per-job summary cache, so project-wide figures never replay every job.

One row per job, computed by replaying that job's verified events, stored with the
*fingerprint* of the job's files (on the file backend the events file's size and a change stamp of its ctime and
its head record's ctime and size, ``JsonlStore.fingerprints``; on PostgreSQL the event count and the count of hand
edits of its rows; the event count elsewhere: ``EventStore.fingerprints``). A
refresh lists the fingerprints (on files one directory listing and two ``stat`` calls per job, on PostgreSQL every
stream's row of ``orch_streams``; no job is read) and replays only the jobs whose fingerprint changed or that have
no row, and the rows whose verification a change of the trusted keys may change. An append
always grows its file and rewrites its head record; the ctime also catches a file rewritten to the same size, put
back with its old mtime (``cp -a``, ``touch -d``: no tool sets a ctime), and a head record damaged in place (a torn
sector: ``TRUNCATED``, ``HEAD_MISMATCH``), which no later event would bring to a refresh. Only a cut (a torn tail
repaired, a failed append cut back) followed by an append of exactly as many bytes, all within one tick of the
file system's clock, and with a refresh's listing and read on either side of the cut, brings a changed file
back to a fingerprint a row was stored with: that row is stale until the job's next append (or ``--rebuild``).
Like a row edited by hand, it can skew a figure or leave a job out of a filtered listing, never put one in it
nor run or change one (docs/metrics.md).

The cache is ``projections/jobs-v2``, stored by *columns* (``Columns``): one JSON header line,
then the job ids as text and every figure as a packed ``array`` (machine numbers; ``NaN`` for
"none"). Decoding 100,000 rows is a few ``array.frombytes`` calls (memory copies) instead of
parsing 100,000 JSON lists, and the figures are computed straight from the columns without
building a Python object per job. A listed file that holds no event (a submit killed mid-write)
has an entry too, with its fingerprint and in no state (``NOT_A_JOB``, counted nowhere), so that
an unchanged listing still matches the cache. Every section's length is checked before use, so a
damaged file is just rebuilt; a cache that cannot be read is rebuilt too, and one that cannot be
written is a warning, never a failed command. It is derived (ADR: events > audit log > caches):
delete it at any time, or pass ``--rebuild``, and the next refresh recomputes it. Rows are trusted only
for figures and to pick the jobs ``status --all --state/--kind`` reads (each verified, its state and kind checked
again; format 5 holds each job's kind):
no job is run or changed because of a row.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import sys
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from orchestrator import processes
from orchestrator.clock import from_iso
from orchestrator.errors import InvalidIdError, JobNotFoundError, PathEscapeError, StorageError
from orchestrator.limits import is_unicode
from orchestrator.state import CANCELLED, FAILED, STATES, SUCCEEDED, WAITING_HUMAN, Event, apply

if TYPE_CHECKING:
    from orchestrator.api import JobView, Orchestrator

AREA, KEY, VERSION = "projections", "jobs-v2", 5
# format 3 is format 4 with no NOT_A_JOB entry, and 4 is 5 without kinds: read as they are (their rows' kinds
# unknown), not rebuilt; a listing by kind reads a job whose kind its row does not know
READABLE = (3, 4, VERSION)
KINDLESS = (3, 4)
UNKNOWN_KIND = 0  # kind code of a row that does not know its job's kind; the others are 1 + an index into ``kinds``
OLD_KEYS = ("jobs-v1",)  # earlier formats, removed when the new cache is written
NO_STATE = 255  # state code of a job with no valid first event
NOT_A_JOB = 254  # state code of a listed file holding no event (format 4): no job, but part of the listing
STATE_CODE = {s: i for i, s in enumerate(STATES)}
NAN = math.nan
_KNOWN_CODES = bytes([*range(len(STATES)), NOT_A_JOB, NO_STATE])

log = logging.getLogger(__name__)
Trust = tuple[tuple[str, ...], tuple[str, ...]]  # (trusted key ids, revoked key ids), each sorted


class Row(NamedTuple):
    """What metrics need of one job (times are epoch seconds)."""

    state: str | None
    ok: bool
    submitted_at: float | None
    updated_at: float | None
    final_at: float | None  # when it reached succeeded/failed/cancelled
    lease_expires_at: float | None  # of the current run, while running
    resumes_ok: int  # resumes after which the job next reached succeeded
    resumes_failed: int  # resumes after which it asked again, failed or was cancelled
    runs: list[str]  # run ids, oldest first
    kind: str | None = None  # the kind submitted


def _f(value: float | None) -> float:
    return NAN if value is None else float(value)


def _opt(value: float) -> float | None:
    return None if value != value else value  # NaN means none


class Columns:
    """Rows stored column by column, in one order: ``ids[i]`` is the job of every column's ``[i]``.

    ``size``/``stamp`` are the fingerprint the row was computed from; times are ``NaN`` when
    absent; ``state`` holds an index into ``STATES`` (``NO_STATE`` for none); ``runs`` holds each
    job's run ids joined by spaces (ids never contain one); ``kind`` holds 1 + an index into ``kinds``
    (each kind once, stored in the header as JSON: a kind may be any text), ``UNKNOWN_KIND`` for none.
    """

    NUMERIC = (("size", "q"), ("stamp", "q"), ("submitted", "d"), ("updated", "d"), ("final", "d"),
               ("lease", "d"), ("resumes_ok", "q"), ("resumes_failed", "q"))

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.state = bytearray()
        self.ok = bytearray()
        self.runs: list[str] = []
        for name, code in self.NUMERIC:
            setattr(self, name, array(code))
        self.kind = array("I")
        self.kinds: list[str] = []
        self._kind_codes: dict[str, int] = {}
        # the keys the rows were verified with: (trusted ids, revoked ids), sorted; None when not known (a cache
        # written before 2026-12-02 does not say)
        self.trust: Trust | None = None

    def _kind_code(self, kind: str | None) -> int:
        if kind is None:
            return UNKNOWN_KIND
        code = self._kind_codes.get(kind)
        if code is None:
            self.kinds.append(kind)
            code = self._kind_codes[kind] = len(self.kinds)
        return code

    def kind_of(self, i: int) -> str | None:
        code = self.kind[i]
        return None if code == UNKNOWN_KIND else self.kinds[code - 1]

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, job_id: str, fp: tuple[int, int], row: Row) -> None:
        self.ids.append(job_id)
        self.size.append(fp[0])
        self.stamp.append(fp[1])
        self.state.append(STATE_CODE.get(row.state, NO_STATE))
        self.ok.append(1 if row.ok else 0)
        self.submitted.append(_f(row.submitted_at))
        self.updated.append(_f(row.updated_at))
        self.final.append(_f(row.final_at))
        self.lease.append(_f(row.lease_expires_at))
        self.resumes_ok.append(row.resumes_ok)
        self.resumes_failed.append(row.resumes_failed)
        self.runs.append(" ".join(row.runs))
        self.kind.append(self._kind_code(row.kind))

    def add_not_a_job(self, name: str, fp: tuple[int, int]) -> None:
        """A listed file that holds no event: kept with its fingerprint, so that an unchanged listing
        still matches the cache (the warm path) and a change of the file has it read again."""
        self.add(name, fp, Row(None, True, None, None, None, None, 0, 0, []))
        self.state[-1] = NOT_A_JOB

    @property
    def jobs(self) -> int:
        """The rows that are jobs: ``len`` counts the NOT_A_JOB entries too."""
        return len(self.ids) - self.state.count(NOT_A_JOB)

    def copy_from(self, other: "Columns", i: int) -> None:
        self.ids.append(other.ids[i])
        self.state.append(other.state[i])
        self.ok.append(other.ok[i])
        self.runs.append(other.runs[i])
        for name, _ in self.NUMERIC:
            getattr(self, name).append(getattr(other, name)[i])
        self.kind.append(self._kind_code(other.kind_of(i)))

    def row(self, i: int) -> Row:
        code = self.state[i]
        return Row(state=None if code == NO_STATE else STATES[code], ok=bool(self.ok[i]),
                   submitted_at=_opt(self.submitted[i]), updated_at=_opt(self.updated[i]),
                   final_at=_opt(self.final[i]), lease_expires_at=_opt(self.lease[i]),
                   resumes_ok=self.resumes_ok[i], resumes_failed=self.resumes_failed[i],
                   runs=self.runs[i].split() if self.runs[i] else [], kind=self.kind_of(i))

    @classmethod
    def from_rows(cls, rows: Iterable[Row]) -> "Columns":
        cols = cls()
        for i, row in enumerate(rows):
            cols.add(str(i), (0, 0), row)
        return cols

    def dump(self) -> bytes:
        sections = ["\n".join(self.ids).encode(), bytes(self.state), bytes(self.ok), "\n".join(self.runs).encode()]
        sections += [getattr(self, name).tobytes() for name, _ in self.NUMERIC]
        sections.append(self.kind.tobytes())
        header: dict[str, Any] = {"version": VERSION, "n": len(self.ids), "byteorder": sys.byteorder,
                                  "kinds": self.kinds, "lengths": [len(s) for s in sections]}
        if self.trust is not None:
            header["trusted"], header["revoked"] = self.trust
        return json.dumps(header, separators=(",", ":")).encode() + b"\n" + b"".join(sections)

    @classmethod
    def load(cls, data: bytes) -> "Columns | None":
        """Decode ``dump``'s bytes; ``None`` when they are not exactly a cache of this version."""
        end = data.find(b"\n")
        try:
            header = json.loads(data[:end]) if end > 0 else None
            if not (isinstance(header, dict) and header.get("version") in READABLE
                    and header.get("byteorder") == sys.byteorder):
                return None
            n, lengths = header["n"], header["lengths"]
            kindless = header["version"] in KINDLESS
            kinds = [] if kindless else header["kinds"]
            if (not isinstance(n, int) or not isinstance(lengths, list)
                    or len(lengths) != 4 + len(cls.NUMERIC) + (0 if kindless else 1)
                    or not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds)
                    or not all(isinstance(x, int) and x >= 0 for x in lengths)
                    or end + 1 + sum(lengths) != len(data)):
                return None
            parts, pos = [], end + 1
            for length in lengths:
                parts.append(data[pos:pos + length])
                pos += length
            cols = cls()
            cols.ids = parts[0].decode().split("\n") if n else []
            cols.state, cols.ok = bytearray(parts[1]), bytearray(parts[2])
            cols.runs = parts[3].decode().split("\n") if n else []
            for (name, _), raw in zip(cls.NUMERIC, parts[4:]):
                getattr(cols, name).frombytes(raw)
            if kindless:
                cols.kind.frombytes(bytes(cols.kind.itemsize * n))  # every row's kind unknown
            else:
                cols.kind.frombytes(parts[-1])
            cols.kinds = kinds
            cols._kind_codes = {kind: code for code, kind in enumerate(kinds, 1)}
            trusted, revoked = header.get("trusted"), header.get("revoked")
            if isinstance(trusted, list) and isinstance(revoked, list):
                if not all(isinstance(k, str) for k in (*trusted, *revoked)):
                    return None
                cols.trust = (tuple(trusted), tuple(revoked))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
            return None  # a damaged cache is just rebuilt
        columns = [cols.ids, cols.state, cols.ok, cols.runs, cols.kind, *(getattr(cols, name) for name, _ in cls.NUMERIC)]
        if any(len(c) != n for c in columns) or cols.state.translate(None, _KNOWN_CODES):
            return None  # a column of the wrong length, or a state code that names no state
        if max(cols.kind, default=UNKNOWN_KIND) > len(kinds) or len(cols._kind_codes) != len(kinds):
            return None  # a kind code that names no kind, or a kind listed twice
        return cols


class Rows(Mapping[str, Row]):
    """A read-only ``job id -> Row`` view of the jobs in columns (rows are built only when looked at)."""

    def __init__(self, cols: Columns) -> None:
        self.columns = cols
        self._index: dict[str, int] | None = None

    def _pos(self) -> dict[str, int]:
        if self._index is None:
            cols = self.columns
            self._index = {job_id: i for i, job_id in enumerate(cols.ids) if cols.state[i] != NOT_A_JOB}
        return self._index

    def __getitem__(self, job_id: str) -> Row:
        return self.columns.row(self._pos()[job_id])

    def __iter__(self) -> Iterator[str]:
        return iter(self._pos())

    def __len__(self) -> int:
        return len(self._pos())


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
               resumes_ok=ok, resumes_failed=failed, runs=runs, kind=s.kind if s else None)


def scan(orch: "Orchestrator") -> tuple[list[str], array, array]:
    """Every job's id and fingerprint (two integers), without reading any job where the store can
    (``EventStore.fingerprints``)."""
    return orch.store.fingerprints()


@dataclass
class Refresh:
    rows: Rows
    replayed: int
    healed: int
    warnings: list[dict[str, str]] = field(default_factory=list)  # {code, message}: the cache or a healed entry
    # was not written

    @property
    def columns(self) -> Columns:
        return self.rows.columns


def refresh(orch: "Orchestrator", *, rebuild: bool = False, heal: bool = True,
            progress: Callable[[int], None] | None = None, workers: int | None = None) -> Refresh:
    """Bring the cache up to date with the events and return every job's row.

    Jobs replayed here are also healed (a missing audit entry is written), as any command
    touching a job does. Many jobs to replay (a first refresh, a ``--rebuild``) are read by forked processes
    (``orchestrator/processes.py``; ``workers``: how many, default the CPUs this process may use); this process
    builds the same cache from what they read, and heals.
    """
    from orchestrator import audit

    cached = (None if rebuild else _read(orch)) or Columns()
    trust = trust_of(orch)
    ids, sizes, stamps = scan(orch)  # taken before reading: a job that grows meanwhile is seen again next time
    n = len(ids)  # the cache holds these, then the jobs whose events were all removed (size 0: no listed job has it)
    same_jobs = ids == cached.ids[:n] and not any(cached.size[n:]) and _still_removed(orch, cached.ids[n:])
    if (same_jobs and sizes == cached.size[:n] and stamps == cached.stamp[:n]
            and (cached.trust == trust or not len(cached))):
        return Refresh(Rows(cached), 0, 0)  # nothing changed: three list comparisons in C, and the same keys
    # removing a job's events whole takes it off the listing: only then is there a new one to look for
    # (in heads/, a listing of every job); jobs that only grew keep the removed ones the cache holds
    # (and, on PostgreSQL, a job whose row in orch_streams was deleted by hand: its events are read as any job's, and
    # its next append, which rebuilds the row, lists it again, with a new fingerprint)
    removed = cached.ids[n:] if same_jobs else [view.job_id for view in orch.removed_jobs(ids, unindexed=True)]
    for job_id in removed:  # a head record, and no event left: an integrity error
        ids.append(job_id)
        sizes.append(0)
        stamps.append(0)
    where = dict(zip(cached.ids, range(len(cached))))
    kept = [where.get(job_id) for job_id in ids]
    again = _verify_again(cached.trust, trust) if len(cached) else None
    stale = [j for j, i, size, stamp in zip(ids, kept, sizes, stamps)
             if i is None or cached.size[i] != size or cached.stamp[i] != stamp
             or again == "all" or (again == "failed" and not cached.ok[i])]
    rows: dict[str, Row | None] = {}
    unaudited: list[Any] = []
    changed = 0
    for summaries, found in processes.in_chunks(orch, functools.partial(_summarized, heal=heal),
                                                processes.chunked(stale, audit.HEAL_BATCH), len(stale),
                                                processes=workers):
        before = changed
        for job_id, row in summaries:
            rows[job_id] = row
            changed += row is not None
        unaudited.extend(found)
        processes.report_thousands(progress, before, changed)
    cols = Columns()
    cols.trust = trust
    for job_id, i, size, stamp in zip(ids, kept, sizes, stamps):
        if job_id not in rows:
            cols.copy_from(cached, i)  # unchanged
            continue
        row = rows[job_id]
        if row is not None:
            cols.add(job_id, (size, stamp), row)
        elif _storable(job_id):  # no complete line (a submit killed mid-write), or removed since the scan, or a
            cols.add_not_a_job(job_id, (size, stamp))  # stray file whose name is no id
    not_healed: list[str] = []
    healed = len(audit.heal_found_quietly(orch, unaudited, not_written=not_healed)) if unaudited else 0
    warnings = [{"code": audit.AUDIT_ENTRY_MISSING, "message": why} for why in not_healed]
    return Refresh(Rows(cols), changed, healed, warnings + _write(orch, cols))


def trust_of(orch: "Orchestrator") -> Trust:
    """The keys a job's verification depends on, as the cache records them."""
    revoked, trusted = orch.keyring.trust_state()
    return tuple(sorted(trusted)), tuple(sorted(revoked))


def _verify_again(was: Trust | None, now: Trust) -> str | None:
    """Which rows to verify again, their files unchanged, because the keys changed since they were made: a row's
    ``ok`` holds only for the keys it was verified with. ``"failed"`` when keys were only added (or un-revoked):
    a job that verified still does, one that failed may have lacked a key; ``"all"`` when a key is no longer
    trusted or was revoked; None when nothing changed. A cache that does not say its keys (written before
    2026-12-02) has its failed rows read again, once: a key missing when it was written was the usual cause."""
    if was == now:
        return None
    if was is None or (set(was[0]) <= set(now[0]) and set(now[1]) <= set(was[1])):
        return "failed"
    return "all"


def _summarized(orch: "Orchestrator", job_ids: Sequence[str], *, heal: bool
                ) -> tuple[list[tuple[str, Row | None]], list[Any]]:
    """Each job's row (None: no job there) and, with ``heal``, the audited events of these jobs that have no marker
    (``audit.unmarked``, one look-up for them all). Read here or in a forked process (``processes``); the caller
    alone writes (the entries healed, the cache)."""
    from orchestrator import audit

    rows: list[tuple[str, Row | None]] = []
    ok_views = []
    for job_id in job_ids:
        try:  # a record a paused writer holds is read around (its row is read again once the record changes)
            view = orch.load(job_id, around_a_held_record=True)
        except (JobNotFoundError, InvalidIdError):
            rows.append((job_id, None))
            continue
        rows.append((job_id, summarize(view)))
        if heal and view.ok:
            ok_views.append(view)
    return rows, (audit.unmarked(orch, ok_views) if ok_views else [])


def _storable(name: str) -> bool:
    """Whether a stray file's name can be an entry of the cache, which holds one UTF-8 line per id: one
    with a newline, or bytes that are not UTF-8 (``os.listdir`` gives them as surrogates), cannot."""
    return is_unicode(name) and "\n" not in name


def _still_removed(orch: "Orchestrator", job_ids: list[str]) -> bool:
    """Whether these jobs, whose events were all removed, still have the head record that says so."""
    from orchestrator.api import HEADS_AREA

    return all(orch.store.get_aux(HEADS_AREA, job_id) is not None for job_id in job_ids)


def _read(orch: "Orchestrator") -> Columns | None:
    """The cache, or None to rebuild it: one that cannot be read (no permission, a symbolic link, a
    folder in its place) is as damaged as one whose bytes do not decode."""
    try:
        data = orch.store.get_aux(AREA, KEY)
    except (OSError, PathEscapeError, StorageError):  # the store reports its OSErrors as StorageError
        return None
    return Columns.load(data) if data else None


def _write(orch: "Orchestrator", cols: Columns) -> list[dict[str, str]]:
    """Store the cache; the warning to give when it cannot be. A cache that cannot be written (a folder
    holding files in its place, a full disk) fails no command: the figures are right without it, and
    only the next call is slower. Nothing in its place is removed unless it is the cache's own."""
    try:
        orch.store.put_aux(AREA, KEY, cols.dump())
        for old in OLD_KEYS:
            orch.store.delete_aux(AREA, old)
    except (OSError, StorageError) as exc:
        reason = exc.message if isinstance(exc, StorageError) else str(exc)
        message = f"the metrics cache was not written, so every call replays every job until it can be: {reason}"
        log.warning(message, extra={"area": AREA, "key": KEY})
        return [{"code": "CACHE_NOT_WRITTEN", "message": message}]
    return []


def learn_kinds(orch: "Orchestrator", cols: Columns, kinds: Mapping[int, str]) -> None:
    """Note in the cache the kinds of jobs whose rows did not know them (a cache of format 3 or 4: an upgrade
    replays nothing), read meanwhile (each verified) by a listing by kind, which need not read them again. A job's
    kind is its first event's and never changes, so it is right whatever the row's fingerprint. Written only when a
    row learned something (``kinds``: row -> kind); a cache that cannot be written stays as it was (``_write`` logs
    why)."""
    learned = False
    for i, kind in kinds.items():
        if cols.kind[i] == UNKNOWN_KIND:
            cols.kind[i] = cols._kind_code(kind)
            learned = True
    if learned:
        _write(orch, cols)


def job_of_run(orch: "Orchestrator", run_id: str) -> str | None:
    """The job that ran ``run_id``, from the rows (refreshed incrementally)."""
    cols = refresh(orch).columns
    for job_id, runs in zip(cols.ids, cols.runs):
        if run_id in runs.split():
            return job_id
    return None
