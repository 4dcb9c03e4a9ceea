"""Whole-project verification and the external anchor against rollback.

Signatures and the chain catch any edit, insertion, deletion, reorder or splice inside a
file; the per-job head record catches a job file cut at a line boundary. What no
check inside the store can catch is a rollback of the *whole* store (files and head records
restored from an old copy): for that, ``export_anchor`` writes a signed digest of every
head to a file kept elsewhere, and ``check_anchor`` proves nothing was rolled back since.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator import clock
from orchestrator import processes as processes_
from orchestrator.api import Orchestrator
from orchestrator.audit import AUDIT_ENTRY_MISSING, wait_for_actions
from orchestrator.errors import (InvalidInputError, JobNotFoundError, OrchestratorError, PathEscapeError,
                                 SigningKeyError, UnusableFileError)
from orchestrator.history import ROLLED_BACK, Problem, check_head_record, verify_stream
from orchestrator.limits import MAX_ANCHOR_BYTES, read_at_most
from orchestrator.output_file import OutputFile
from orchestrator.queue import QueueIndex
from orchestrator.security import shown, validate_id
from orchestrator.signing import (KEY_REVOKED, SIGNATURE_INVALID, UNKNOWN_KEY, canonical, is_key_id, line_hash,
                                  parse_line)
from orchestrator.state import QUEUED, RUNNING, JobState
from orchestrator.store.base import AUDIT_STREAM
from orchestrator.worker_folders import loose_folders

ANCHOR_FORMAT = "jsonl-orchestrator/anchor/v1"
log = logging.getLogger(__name__)


AUDIT_EVENT_MISSING = "AUDIT_EVENT_MISSING"  # an audit entry names an event its job does not hold
AUDIT_ENTRY_DUPLICATE = "AUDIT_ENTRY_DUPLICATE"  # a second entry for one event (a heal raced its writer)
# a stream's row in the store's index of streams (PostgreSQL's orch_streams) is missing, or says another head than its
# lines: a derived row, rebuilt by the stream's next append; a warning, since the lines are the truth
STREAM_INDEX_STALE = "STREAM_INDEX_STALE"
_NO_INDEX = ()  # what a chunk's job carries on a store with no index of streams (``EventStore.indexed_heads``)
# a queued or running job has no entry in the queue index (deleted by hand): no worker runs or recovers it until the
# index is rebuilt; a warning, since the events are the truth and a rebuild puts the entry back
INDEX_ENTRY_MISSING = "INDEX_ENTRY_MISSING"
# a folder a worker runs jobs in (the project folder, .orchestrator, runs/, artifacts/) that another user owns or
# others may write, or a project folder below such a folder, which a worker refuses (or changes, as it starts): a
# warning, at line 0 of the folder's path (``worker_folders.loose_folders``)
STORE_FOLDER_LOOSE = "STORE_FOLDER_LOOSE"


@dataclass
class VerifyReport:
    streams: int = 0
    events: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  # not integrity failures: verify still passes
    against: dict[str, Any] | None = None  # the anchor checked (``anchor_check``), with ``verify --against``

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "streams": self.streams, "events": self.events,
                "problems": [p.to_dict() for p in self.problems], "warnings": [w.to_dict() for w in self.warnings],
                **({"against": self.against} if self.against else {})}


def _audit_claims(orch: Orchestrator, job_id: str | None) -> tuple[dict[str, list[tuple[int, str]]], int]:
    """job id -> [(audit seq, event hash)] for every audit entry that names a job event; and how many lines the log
    held as it was read (``_still_missing``'s second look reads those after)."""
    from orchestrator.audit import entries_for

    claims: dict[str, list[tuple[int, str]]] = {}
    lines, entries = entries_for(orch, job_id=job_id)
    for seq, rec in entries:
        data = rec.get("data")
        if isinstance(data, dict) and isinstance(data.get("event_hash"), str):
            claims.setdefault(str(rec.get("job_id")), []).append((seq, data["event_hash"]))
    return claims, len(lines)


def _logged_since(orch: Orchestrator, seen: int) -> set[str]:
    """The event hashes the audit log's entries after its first ``seen`` lines name (not verified here: the log's
    own check does that)."""
    hashes = set()
    for stored in orch.store.read(AUDIT_STREAM, from_seq=seen + 1):
        try:
            data = parse_line(stored.raw).get("data")
        except (ValueError, RecursionError, AttributeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("event_hash"), str):
            hashes.add(data["event_hash"])
    return hashes


def _still_missing(orch: Orchestrator, warnings: list[Problem], seen: int) -> list[Problem]:
    """``warnings`` without the ``AUDIT_ENTRY_MISSING`` of an event whose entry was written since the audit log was
    read (its first ``seen`` lines, before the jobs): the log's later lines are read, and for an event whose entry is
    still not there, the action may be between the two (its writer holds the job's pending lock from before its
    event until after its entry, ``audit.pending``): its lock is waited for (``audit.wait_for_actions``, all jobs
    together) and those lines read again. Until 2026-12-07 a verify of a live project warned of every action since
    its first read. An entry a crash left out (its writer's lock gone with it) is still reported."""
    missing = [w for w in warnings if w.code == AUDIT_ENTRY_MISSING]
    if not missing:
        return warnings
    events: dict[int, str] = {}
    for w in missing:
        try:
            events[id(w)] = line_hash(orch.store.read(w.stream, from_seq=w.line)[0].raw)
        except (OrchestratorError, IndexError):  # gone since (a removed job): reported as it was
            continue
    logged = _logged_since(orch, seen)
    waiting = {w.stream for w in missing if events.get(id(w)) not in logged | {None}}
    if waiting:
        wait_for_actions(orch, waiting)
        logged |= _logged_since(orch, seen)
    written = {id(w) for w in missing if events.get(id(w)) in logged}
    return [w for w in warnings if id(w) not in written]


def _cross_check(report: VerifyReport, job_id: str, view: Any, claims: list[tuple[int, str]]) -> None:
    """Every entry's event must be in the job's history; every audited event should have an entry."""
    from orchestrator.audit import audited

    hashes = [line_hash(s.raw) for s in view.stream.lines] if view is not None else []
    present = set(hashes)
    first_entry: dict[str, int] = {}
    for seq, eh in claims:
        if eh in first_entry:  # not a forgery (signed), but the log says the action happened twice
            report.warnings.append(Problem(AUDIT_STREAM, seq, AUDIT_ENTRY_DUPLICATE,
                                           f"names event {eh[:16]}... of job {job_id}, as entry {first_entry[eh]} "
                                           "already does (a heal raced the event's writer)"))
        first_entry.setdefault(eh, seq)
        if eh not in present:
            report.problems.append(Problem(AUDIT_STREAM, seq, AUDIT_EVENT_MISSING,
                                           f"names event {eh[:16]}... of job {job_id}, which its history does not hold "
                                           "(the job file was cut or rolled back)"))
    if view is None:
        return
    claimed = {eh for _, eh in claims}
    for i, _action in audited(view.stream.records):
        stored, rec = view.stream.lines[i], view.stream.records[i]
        if hashes[i] not in claimed:
            report.warnings.append(Problem(job_id, stored.seq, AUDIT_ENTRY_MISSING,
                                           f"{rec['type']} has no audit entry (a crash between the two writes, or "
                                           "an audit log restored from an older copy); `orchestrator audit heal` "
                                           "writes it where the project's signing key is (after a crash, so does "
                                           "the next command on the job)"))


def _stale_row(orch: Orchestrator, stream: str, indexed: tuple[int, bytes] | None, lines: list[Any]
               ) -> Problem | None:
    """``_index_warning`` of ``stream``, whose row ``indexed`` was read before its ``lines``, read again where the two
    disagree: its row, its lines, its row. A row that moved meanwhile was moved by an append, which leaves it as its
    events say (it rebuilds one that disagrees, ``pg_append._locked_head``): no warning. Until 2026-12-07 the rows
    were compared as read at the start of a verify, and every stream appended to since was "changed by hand"."""
    if _index_warning(stream, indexed, lines) is None:
        return None
    before = _indexed_head(orch, stream)
    lines = orch.store.read(stream)
    if _indexed_head(orch, stream) != before:
        return None
    return _index_warning(stream, before, lines)


def _indexed_head(orch: Orchestrator, stream: str) -> tuple[int, bytes] | None:
    return (orch.store.indexed_heads(stream) or {}).get(stream)


def _index_warning(stream: str, indexed: tuple[int, bytes] | None, lines: list[Any]) -> Problem | None:
    """The warning for ``stream`` whose row in the store's index of streams is ``indexed`` (None: no row) and which
    holds ``lines``, or None when the row says what the lines do (``EventStore.indexed_heads``)."""
    held = (len(lines), hashlib.sha256(lines[-1].raw if lines else b"").digest())
    if (indexed or (0, hashlib.sha256(b"").digest())) == held:
        return None
    if indexed is None:
        said = "has no row in orch_streams"
    else:
        other = ", with another last line" if indexed[0] == held[0] else ""
        said = f"its row in orch_streams says {indexed[0]}{other}"
    until = ("" if stream == AUDIT_STREAM or indexed is not None
             else "; until then the jobs cache (`metrics`, `status --state`) finds the job by its head record")
    return Problem(stream, held[0], STREAM_INDEX_STALE,
                   f"holds {held[0]} events and {said}: a derived index, changed by hand (who can write to the "
                   "database did). The events are the truth and nothing of them is lost: the stream's next append "
                   f"rebuilds the row{until}")


def _built_queue(orch: Orchestrator) -> QueueIndex | None:
    """The queue index whose entries are compared with the jobs (``_missing_entry``): None when it is not built (the
    next worker rebuilds it: nothing can be missing) or cannot be opened (a link in a folder's place, which a worker
    refuses with its own message)."""
    try:
        queue = orch.queue
        return queue if queue.is_built() else None
    except OrchestratorError:
        return None


def _missing_entries(orch: Orchestrator, queue: QueueIndex, jobs: list[tuple[JobState, int]]) -> dict[str, Problem]:
    """The warning of each job, by id, that is queued or running with no entry in ``queue``; ``jobs``: the state and
    head of each verified job, read before. Their entries are looked at together after those reads
    (``QueueIndex.holding``: one statement on PostgreSQL), and an entry is dropped only after the event that ends its
    state (on PostgreSQL, in its transaction): so an entry is missing only if it is not there while the job's
    history does not grow (read again after the look, cheap: only for a job whose entry was not found), nor at a
    second look after that read (a claimer that drops an entry and puts it back: an imported job's,
    ``QueueIndex.drop_orphan_ready``). Both stores' entries are looked at since 2026-12-07. A history cut back to that
    state (its last events and head record removed: ``verify`` finds no problem, only an anchor or the audit log can)
    looks the same, its entry rightly dropped when the job ended; rebuilding the index would run the job again. So
    the advice is to compare first, then rebuild (nothing here can tell the two apart: a job's last event is no
    audited one, in general). An import that stopped half way leaves the same (a job's first lines, its entry put
    only after its last: ``transfer._put_entries``): it is named first, since running it again makes the job whole."""
    held = queue.holding([s for s, _ in jobs])
    out = {}
    for s, seq in jobs:
        if (s.job_id in held or orch.store.read(s.job_id, from_seq=seq + 1)
                or queue.holds_entry(s)):  # looked at again: a claimer that drops an entry and puts it back
            continue
        does, again = (("runs", "run it again") if s.state == QUEUED
                       else ("recovers", "recover it and run its handler again"))
        lacks, lost, rebuild = queue.missing_entry_terms(s)
        out[s.job_id] = Problem(
            s.job_id, seq, INDEX_ENTRY_MISSING,
            f"the job is {s.state} but has {lacks}, so no worker {does} it: an `orchestrator import` stopped "
            f"before it was done (run it again first: it writes what the job lacks, then its entry), {lost}, or the "
            f"job's history was cut "
            f"after it had ended (its last events and head record removed: an entry goes when the job's state ends), "
            f"which a rebuilt index would take at its word and {again}. First compare with an exported anchor "
            f"(`orchestrator verify --against ANCHOR`) and the audit log (`orchestrator audit-timeline --job-id "
            f"{s.job_id}`); only if neither shows more than event #{seq}, {rebuild} and the next worker rebuilds the "
            f"index from the events")
    return out


def verify_project(orch: Orchestrator, job_id: str | None = None, *,
                   progress: Callable[[int], None] | None = None, processes: int | None = None) -> VerifyReport:
    """Check every job's history (or one job's) and the audit log; list each problem by line. A job
    whose events are all gone is found by its head record.

    Every signature is checked (~40 us each, most of the time): a large project's jobs are checked by
    ``processes`` forked processes (``orchestrator/processes.py``), the report the same, in the same order, as
    from one process."""
    report = VerifyReport()
    if job_id is not None:  # an empty id is INVALID_ID, not "every job"
        validate_id(job_id, "job id")
    job_ids = [job_id] if job_id is not None else sorted(orch.store.job_ids())
    # the audit log is a symbolic link (never followed), a FIFO, a socket or a directory holding files: its problem,
    # as a job file's is. Looked at before it is read, so a FIFO is never opened
    audit_link = None
    seen = 0  # the audit log's lines read now, before the jobs (``_still_missing``)
    try:
        orch.store.refuse_unusable(AUDIT_STREAM)
        claims, seen = _audit_claims(orch, job_id)
    except (PathEscapeError, UnusableFileError) as exc:
        claims, audit_link = {}, Problem.unusable(AUDIT_STREAM, exc)
    named = dict(claims)  # what each entry names, for the entries found naming an event its job lacks (``_imports``)
    # the index of streams (PostgreSQL's orch_streams), compared with what each job holds (and its rows naming streams
    # that hold nothing, over the whole project only)
    index = orch.store.indexed_heads(job_id)
    chunks = processes_.chunked([(jid, claims.pop(jid, []), _NO_INDEX if index is None else index.pop(jid, None))
                                 for jid in job_ids], processes_.CHUNK)
    done = 0
    for part in processes_.in_chunks(orch, _check_chunk, chunks, len(job_ids), processes):
        report.streams += part.streams
        report.events += part.events
        report.problems.extend(part.problems)
        report.warnings.extend(part.warnings)
        processes_.report_thousands(progress, done, done + part.streams)
        done += part.streams
    for jid, rest in sorted(claims.items()):  # entries naming jobs that had no events when they were listed
        if job_id is None and _holds_events(orch, jid):  # submitted since it was listed (a live project): checked
            late = _check_chunk(orch, [(jid, rest, _NO_INDEX if index is None else index.pop(jid, None))])
            report.streams += late.streams
            report.events += late.events
            report.problems.extend(late.problems)
            report.warnings.extend(late.warnings)
        else:
            _cross_check(report, jid, None, rest)
    if job_id is None:
        for view in orch.removed_jobs(job_ids):  # a head record, and no event left (a read checks all it has)
            report.streams += 1
            report.problems.extend(view.problems)
        from orchestrator.audit import AUDIT_HEAD

        try:  # before the lines: a racing append only makes them longer
            head_raw, head_link = orch.store.get_aux(*AUDIT_HEAD), None
        except PathEscapeError as exc:
            head_raw, head_link = None, Problem.linked(AUDIT_STREAM, exc)
        lines = [] if audit_link else orch.store.read(AUDIT_STREAM)
        if lines or audit_link:
            report.streams += 1
        if lines:
            audit = verify_stream(AUDIT_STREAM, lines, orch.keyring)
            report.events += len(lines)
            report.problems.extend(audit.problems)
        cut = head_link or (None if audit_link else check_head_record(AUDIT_STREAM, lines, head_raw or None,
                                                                      orch.keyring))
        if cut:
            report.problems.append(cut)
        if index is not None:  # the audit log's row, then rows naming events of streams that held none when listed
            stale = [_stale_row(orch, AUDIT_STREAM, index.pop(AUDIT_STREAM, None), lines)]
            stale += [_stale_row(orch, stream, head, []) for stream, head in sorted(index.items()) if head[0] > 0]
            report.warnings.extend(w for w in stale if w is not None)
        report.warnings.extend(Problem(folder, 0, STORE_FOLDER_LOOSE, why)
                               for folder, why in loose_folders(orch.settings.state_dir))
    if audit_link:  # no entry could be read, so none is known missing
        report.problems.append(audit_link)
        report.warnings = [w for w in report.warnings if w.code != AUDIT_ENTRY_MISSING]
    else:
        report.warnings = _still_missing(orch, report.warnings, seen)
    _imports(orch, report, named)
    return report


def _imports(orch: Orchestrator, report: VerifyReport, named: dict[str, list[tuple[int, str]]]) -> None:
    """The ``AUDIT_EVENT_MISSING`` of ``report`` judged as ``audit-timeline`` judges them: an import writes the audit
    log before the jobs, and puts its record (``import_record``) before its first write, so while a record of an
    import not abandoned is there, such an entry is that import's doing (``IMPORT_INCOMPLETE``, a warning). With none,
    each job named is read once more: an import that wrote the entry has completed since the job's read (it removes
    its record only after its bundle's end), and its events are there now; the rest stay ``AUDIT_EVENT_MISSING``,
    beside an ``IMPORT_ABANDONED`` warning naming each abandoned record. The records are read only when such an entry
    was found (one listing), never on a healthy project. ``named``: job id -> [(audit seq, event hash)] of the
    entries read; until 2026-12-07 (import2) every such entry was ``AUDIT_EVENT_MISSING``, exit 7, import or not."""
    if not any(p.code == AUDIT_EVENT_MISSING for p in report.problems):  # a healthy project: nothing read
        return
    entry = {seq: (jid, eh) for jid, claims in named.items() for seq, eh in claims}
    missing = [p for p in report.problems
               if p.code == AUDIT_EVENT_MISSING and p.stream == AUDIT_STREAM and p.line in entry]
    if not missing:
        return
    from orchestrator.import_record import IMPORT_ABANDONED, IMPORT_INCOMPLETE, abandoned, import_begun, location

    under_way = import_begun(orch)
    if under_way is not None:
        taken = missing
        report.warnings.extend(Problem(AUDIT_STREAM, p.line, IMPORT_INCOMPLETE,
                                       f"names event {entry[p.line][1][:16]}... of job {entry[p.line][0]}, which its "
                                       "history does not hold yet: the import under way writes it (below)")
                               for p in missing)
        report.warnings.append(Problem(location(orch, under_way.records[0].key), 0, IMPORT_INCOMPLETE,
                                       under_way.explained(orch)))
    else:
        held: dict[str, set[str]] = {}  # each job named, read again
        for p in missing:
            jid = entry[p.line][0]
            if jid not in held:
                held[jid] = _events_now(orch, jid)
        taken = [p for p in missing if entry[p.line][1] in held[entry[p.line][0]]]
        if len(taken) < len(missing):
            report.warnings.extend(Problem(location(orch, r.key), 0, IMPORT_ABANDONED, text)
                                   for r, text in abandoned(orch))
    gone = set(map(id, taken))
    report.problems = [p for p in report.problems if id(p) not in gone]


def _events_now(orch: Orchestrator, job_id: str) -> set[str]:
    """The hashes of the events ``job_id`` holds now (none when it cannot be read: what was found stands)."""
    try:
        return {line_hash(s.raw) for s in orch.store.read(job_id)}
    except OrchestratorError:
        return set()


def _holds_events(orch: Orchestrator, stream: str) -> bool:
    """Whether ``stream``, which an audit entry names, now holds a line (one row read); False for a name no job can
    have (an entry edited by hand: reported as naming an event no history holds)."""
    try:
        return orch.store.first_line(stream) is not None
    except OrchestratorError:
        return False


def _check_chunk(orch: Orchestrator, chunk: list[tuple[str, list[tuple[int, str]], Any]]) -> VerifyReport:
    """Jobs read with every signature checked, each cross-checked with the audit entries that name it, with its
    row in the store's index of streams (``_NO_INDEX``: the store has none), and with its entry in the queue index
    (when that is built: ``_built_queue``, asked once a chunk)."""
    part = VerifyReport()
    queue = _built_queue(orch)
    stale: list[tuple[str, Problem | None]] = []  # each job's, in order, with its missing entry's after the reads
    needing: list[tuple[JobState, int]] = []  # the jobs that need an entry (``_missing_entries``)
    for jid, claimed, indexed in chunk:
        try:
            view = orch.load(jid, every_signature=True)
        except JobNotFoundError:  # no event and no head record left (``verify --job-id``, or removed since listed)
            if not claimed:
                raise
            _cross_check(part, jid, None, claimed)  # the audit log says it had events: they were removed
            continue
        part.streams += 1
        part.events += len(view.stream.lines)
        part.problems.extend(view.problems)
        _cross_check(part, jid, view, claimed)
        stale.append((jid, None if indexed == _NO_INDEX else _stale_row(orch, jid, indexed, view.stream.lines)))
        if queue is not None and view.ok and view.state is not None and view.state.state in (QUEUED, RUNNING):
            needing.append((view.state, view.head.seq))
    missing = _missing_entries(orch, queue, needing) if needing else {}  # needing: only with a built queue
    for jid, row in stale:
        part.warnings.extend(w for w in (row, missing.get(jid)) if w is not None)
    return part


def _heads(orch: Orchestrator) -> dict[str, dict[str, Any]]:
    heads = {}
    for stream in [*sorted(orch.store.job_ids()), AUDIT_STREAM]:
        try:
            lines = orch.store.read(stream)
        except PathEscapeError:  # a symbolic link in the file's place: no history to anchor (verify reports it)
            continue
        if lines:
            heads[stream] = {"seq": len(lines), "hash": line_hash(lines[-1].raw)}
    return heads


def export_anchor(orch: Orchestrator, target: Path | OutputFile) -> dict[str, Any]:
    """Write a signed digest of every stream's head to ``target`` (keep it outside the store).

    Written whole or not at all (``OutputFile``): an older anchor is replaced only by a complete new one.
    ``target`` may be an ``OutputFile`` the caller opened before its own work (``verify --export-head``
    opens it before verifying), so a path that cannot be written is refused first.

    Signed with the signing key this machine already has (``SigningKeyError`` if none): ``verify`` is a read
    command and never creates a key (``require_anchor_key`` checks it before the verify)."""
    require_anchor_key(orch)
    body = {"format": ANCHOR_FORMAT, "project_id": orch.project_id, "created_at": clock.to_iso(orch.clock()),
            "heads": _heads(orch)}
    kid, sig = orch.keyring.sign_bytes(canonical(body))
    data = canonical({**body, "kid": kid, "sig": sig}) + b"\n"
    if len(data) > MAX_ANCHOR_BYTES:  # verify --against would refuse it: never written, an older anchor kept
        raise InvalidInputError(f"the head anchor of {len(body['heads'])} streams would be {len(data)} bytes, more "
                                f"than the {MAX_ANCHOR_BYTES} verify --against reads; nothing was written")
    out = target if isinstance(target, OutputFile) else OutputFile(target, "the head anchor")
    with out:
        out.write(data)
    return {"path": str(out.path), "streams": len(body["heads"]), "created_at": body["created_at"]}


def require_anchor_key(orch: Orchestrator) -> str:
    """The id of the key that will sign an anchor: one this machine has (``Keyring.ensure_signer`` without
    creating one); else ``SigningKeyError`` (exit 8) saying how to get one."""
    try:
        return orch.keyring.ensure_signer(create=False)
    except SigningKeyError as exc:
        raise SigningKeyError(f"--export-head signs the anchor with this machine's signing key: {exc.message}"
                              ) from None


def _read_anchor(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The anchor at ``path`` as (document, signed body); a file that is not one is ``InvalidInputError``, one
    over ``MAX_ANCHOR_BYTES`` without being read past it (``export_anchor`` writes none that large)."""
    try:
        with open(path, "rb") as fh:
            raw = read_at_most(fh, MAX_ANCHOR_BYTES)
        if raw is None:
            raise InvalidInputError(f"{path} holds more than {MAX_ANCHOR_BYTES} bytes, more than any anchor "
                                    "verify --export-head writes: it is not an anchor")
        doc = json.loads(raw)
    except OSError as exc:
        raise InvalidInputError(f"cannot read anchor {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
        raise InvalidInputError(f"anchor {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("kid"), str) or not isinstance(doc.get("sig"), str):
        raise InvalidInputError(f"{path} is not an anchor: a JSON object with kid and sig, as verify --export-head "
                                "writes")
    return doc, {k: v for k, v in doc.items() if k not in ("kid", "sig")}


def _anchored_heads(path: Path, body: dict[str, Any]) -> dict[str, tuple[int, str]]:
    """Stream -> (seq, hash) of a signed anchor; a malformed one is ``InvalidInputError``, never a crash."""
    heads = body.get("heads")
    if not isinstance(heads, dict) or not isinstance(body.get("created_at"), str):
        raise InvalidInputError(f"anchor {path} has no heads or no created_at")
    out = {}
    for stream, head in heads.items():
        seq, digest = (head.get("seq"), head.get("hash")) if isinstance(head, dict) else (None, None)
        if type(seq) is not int or seq < 1 or not isinstance(digest, str):
            raise InvalidInputError(f"the head of {stream!r} in anchor {path} is not a sequence number and a hash")
        out[stream] = (seq, digest)
    return out


def _unsigned(orch: Orchestrator, path: Path, kid: str) -> Problem:
    """Why the anchor at ``path``, which names key ``kid``, is not one a trusted key signed: the key is another
    machine's (``UNKNOWN_KEY``: which ``.pub`` to copy, as ``import`` says it), revoked here, or the signature
    does not verify (the anchor edited since, or not an anchor)."""
    named = is_key_id(kid)  # else text from the file, shown as such (a hand-made anchor)
    if kid in orch.keyring.revoked:
        return Problem("anchor", 0, KEY_REVOKED, f"{path} is signed by key {kid if named else shown(kid)}, which this "
                                                 "machine revoked: an anchor that key signed proves nothing")
    if kid not in orch.keyring.trusted and named:
        return Problem("anchor", 0, UNKNOWN_KEY,
                       f"{path} is signed by key {kid}, which this machine's keyring does not trust: copy {kid}.pub "
                       "from the keyring of the machine that wrote the anchor into the trusted keys folder "
                       "(ORCH_TRUSTED_KEYS_DIR) of this one, then run the verify again", kid)
    return Problem("anchor", 0, SIGNATURE_INVALID, f"{path} is not an anchor signed by a trusted key")


def check_anchor(orch: Orchestrator, path: Path) -> list[Problem]:
    """Every stream in the anchor must still hold its anchored line, unchanged. A file that is not a
    well-formed anchor is ``InvalidInputError``; one not signed by a trusted key is a problem."""
    return anchor_check(orch, path)[1]


def anchor_check(orch: Orchestrator, path: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """``check_anchor``, and what was checked, as ``export_anchor`` says what it wrote: ``{"path", "streams",
    "created_at"}`` of a signed anchor (None for one no trusted key signed: its time says nothing), so that a
    check that passed can say which anchor it held against."""
    doc, body = _read_anchor(path)
    try:
        signed = orch.keyring.verify_bytes(doc["kid"], doc["sig"], canonical(body))
    except (ValueError, TypeError):  # NaN or Infinity: json.loads takes them, no anchor holds them
        raise InvalidInputError(f"anchor {path} holds NaN or Infinity, which no anchor holds") from None
    if not signed or body.get("format") != ANCHOR_FORMAT:
        return None, [_unsigned(orch, path, doc["kid"])]
    if body.get("project_id") != orch.project_id:
        raise InvalidInputError(f"{path} anchors project {body.get('project_id')!r}, not {orch.project_id!r}")
    heads = _anchored_heads(path, body)
    problems = []
    for stream, (seq, digest) in heads.items():
        try:
            lines = orch.store.read(stream)
        except PathEscapeError as exc:  # a link in the file's place, never followed: the anchored line is not there
            problems.append(Problem.linked(stream, exc))
            continue
        if len(lines) < seq:
            problems.append(Problem(stream, len(lines), ROLLED_BACK,
                                    f"holds {len(lines)} events; the anchor of {body['created_at']} saw {seq}"))
        elif line_hash(lines[seq - 1].raw) != digest:
            problems.append(Problem(stream, seq, ROLLED_BACK, "the anchored line was rewritten"))
    return {"path": str(path), "streams": len(heads), "created_at": body["created_at"]}, problems
