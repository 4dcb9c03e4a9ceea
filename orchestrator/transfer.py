"""Moving a project between backends: a byte-exact bundle of every stream and head record.

A bundle is a stream of lines, written and read one stream at a time (never the whole
project in memory)::

    {"format": "jsonl-orchestrator/export/v2", "project_id": ..., "created_at": ...}
    {"stream": "@audit", "lines": N, "head": "<base64 of audit-head/audit>" | null}
    <the audit log's N lines, byte for byte as stored>
    {"stream": "<job id>", "lines": N, "head": "<base64 of heads/<job id>>" | null}
    <the stream's N lines, byte for byte as stored>
    ...
    {"end": true, "streams": S, "events": E}

Lines are copied, never re-encoded or re-signed, so every signature and chain link verifies
on the other side, and an anchor exported before the move still checks after it. Every
stream, the audit log too, carries its head record, so a stream cut at a line
boundary (in the source, or in the bundle) is caught like ``verify`` catches it. Both ends
verify each stream, with its head record, before writing it: a damaged history is refused
(``IntegrityError``) unless the export is told to carry it as evidence (``allow_damaged``),
and the import refuses it anyway. A malformed bundle (a header field of the wrong type, a
head that is not base64, a line longer than ``MAX_BUNDLE_LINE_BYTES``, read no further) is
``InvalidInputError`` naming the bundle's line, before anything of that stream is written. A stream
read without a line that should hold some (a job emptied or deleted, its head record left; an audit log
emptied; a link or a FIFO in a file's place) is damage, never left out: carried with ``"lines": 0`` and its
head record, which ``import`` refuses (``TRUNCATED``) whatever that record says. Artifact files are not
carried (only histories): the export warns when jobs have some.

An import that stops half way is resumed by running it again: a stream already holding a
prefix of the bundle's lines (ending at any line: a crash may keep part of a chunk) gets the
rest; one holding all of them, and possibly more written since, is complete and left as it is;
one holding anything else is a conflict, left as it is: the other streams are imported, and every conflict is
raised at the end (``ImportConflictError``), but the audit log's, which stops the import. A stream's head
record is written under its append lock, never over a newer one (``head_records.put_head_record``). The audit log comes first (format v2) so that it is whole
before any job lands: a command run on the half-imported project that heals a job's audit entries (``metrics``, a control
action, ``audit heal``) finds them there, or writes entries *after* the bundle's, which a
second run accepts (docs/decisions.md, 2026-12-01). Until an import has read its bundle's end record, a record of it
(``IMPORTS_AREA``, naming the process that holds it) tells ``audit-timeline`` and ``verify`` that an entry naming an
event its job lacks is the import's doing, not damage, unless that process is gone (``import_record``). Bundles of
format v1 (the audit log last, with no head record) are still imported.

A job's queue entries are put only once all of its lines are in (``_put_entries``): between two chunks it reads as
what its first lines made it (queued, running), and no worker may claim or recover it then, or its next chunk is a
conflict and the job runs again. An import that stops half way leaves the job with no entry, which no worker runs
until the import, run again, completes it; into a project with no job yet the import marks the index built first,
so that a worker starting meanwhile does not rebuild it from half-written jobs.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import IO, Any, Callable, Iterator

from orchestrator import clock, faults
from orchestrator.api import JobView, Orchestrator
from orchestrator.config import STATE_DIR
from orchestrator.errors import (ConcurrencyError, ImportConflictError, IntegrityError, InvalidIdError, InvalidInputError,
                                 LeaseLostError, LockHeldError, PathEscapeError, StorageError, UnusableFileError,
                                 without_nothing_written)
from orchestrator.head_records import head_key, put_head_record
from orchestrator.history import TRUNCATED, Problem, VerifiedStream, check_head_record, verify_stream
# An import's record, from before its first write until it reads its bundle's end record: an audit entry whose event
# is not in its job yet is then that import's doing (the audit log comes first), not damage, while the process that
# holds it may still complete it (``import_record``)
from orchestrator.import_record import held_record, hold, release, stopped
from orchestrator.limits import MAX_BUNDLE_LINE_BYTES
from orchestrator.security import is_id, shown, validate_id
from orchestrator.signing import UNKNOWN_KEY, is_key_id
from orchestrator.store.base import AUDIT_STREAM, SLOT_BYTES, StoredLine

BUNDLE_FORMAT = "jsonl-orchestrator/export/v2"
# still imported: v1 put the audit log last and carried no head record of it
OLDER_FORMATS = frozenset({"jsonl-orchestrator/export/v1"})
# lines per append on import: durable when it returns, none kept after an error; a crash (or power cut) may keep
# some complete lines of it, which the next run finds as a prefix like any other (docs/guarantees.md)
CHUNK = 1000
# a stream carried with "lines": 0 (export --allow-damaged): the import refuses it whatever its head record says
CARRIED_EMPTY = ("the bundle carries no line of it: the export found its file emptied, deleted, or not one it could "
                 "read (a symbolic link, a FIFO), and carried it as damage")
PROGRESS_EVERY = 1000  # streams
CONFLICTS_NAMED, CONFLICTS_LISTED = 5, 100  # streams holding another history: in the message, in its details

Progress = Callable[[str], None]


def _header(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def _problems(orch: Orchestrator, stream: str, lines: list[StoredLine], head: bytes | None,
              verified: VerifiedStream | None = None) -> list[Problem]:
    """The stream's problems, its head record's included (a stream cut at a line boundary), as ``verify``
    finds them."""
    verified = verified or verify_stream(stream, lines, orch.keyring)
    problems = list(verified.problems)
    hp = check_head_record(stream, lines, head, orch.keyring)
    if hp:
        problems.append(hp)
    return problems


def _refuse(action: str, problems: list[Problem]) -> IntegrityError:
    first = problems[0]
    kids = sorted({p.kid for p in problems if p.kid})
    # not damage but another machine's key (a key id that is none, from a hand-made bundle, is not named as a file)
    if kids and all(p.code == UNKNOWN_KEY for p in problems) and all(map(is_key_id, kids)):
        named = ", ".join(shown(k) for k in kids)
        pubs = ", ".join(f"{k}.pub" for k in kids)
        text = (f"{action} refused: stream {first.stream} is signed by key {named}, which this machine's keyring "
                f"does not trust: copy {pubs} from the keyring of the machine that signed it into the trusted keys "
                f"folder (ORCH_TRUSTED_KEYS_DIR) of this one, then run the {action} again")
    else:
        # an import holds nothing of the stream to verify: the bundle's copy is damaged, or the project it came from
        where = ("`orchestrator verify` on the project the bundle was exported from (a copy damaged on the way: "
                 "export it again)" if action == "import" else "`orchestrator verify`")
        text = (f"{action} refused: stream {first.stream} fails verification at line {first.line}: "
                f"{first.code} ({first.message}); run {where}")
    return IntegrityError(f"{text}; nothing of that stream was written" if action == "import" else text,
                          problems=[p.to_dict() for p in problems[:20]])


def export_project(orch: Orchestrator, out: IO[bytes], *, allow_damaged: bool = False,
                   progress: Progress | None = None) -> dict[str, Any]:
    """Write the audit stream, then every job stream, each with its head record, to ``out``.

    Nothing is written before the store has been read once: a store that cannot be opened (or a removed
    job's history) leaves ``out`` empty, so ``export -o -`` prints no part of a bundle before such an error."""
    streams = events = 0
    with_artifacts: set[str] = set()  # the jobs whose events name an artifact (files the bundle does not carry)
    damaged: list[dict[str, Any]] = []

    def found(problems: list[Problem]) -> None:
        if problems and not allow_damaged:
            raise _refuse("export", problems)
        damaged.extend(p.to_dict() for p in problems)

    listed = sorted(orch.store.job_ids())
    removed = {}  # job id -> its head record: no event left to export, only what is wrong with them
    for view in orch.removed_jobs(listed):
        found(list(view.problems))
        removed[view.job_id] = _stored_head(orch, view.job_id)
    out.write(_header({"format": BUNDLE_FORMAT, "project_id": orch.project_id,
                       "created_at": clock.to_iso(orch.clock())}))

    def carry(stream: str, lines: list[StoredLine], head: bytes | None) -> None:
        nonlocal streams, events
        out.write(_header({"stream": stream, "lines": len(lines),
                           "head": base64.b64encode(head).decode() if head is not None else None}))
        out.write(b"".join(s.raw + b"\n" for s in lines))
        streams += 1
        events += len(lines)
        faults.point("export.after_stream")  # part of the bundle written (``export -o FILE``: to its temporary file)
        if progress and streams % PROGRESS_EVERY == 0:
            progress(f"exported {streams} streams, {events} events...")

    for stream in [AUDIT_STREAM, *listed]:  # the audit log first: see the module's docstring
        head = None
        try:
            head = orch.store.get_aux(*head_key(stream)) or None  # before the lines: an append only adds lines
            lines = orch.store.read(stream)
            if not lines:  # a FIFO or a folder holding files reads as no line: what is there, not "emptied"
                orch.store.refuse_unusable(stream)
        except (PathEscapeError, UnusableFileError) as exc:  # a link, never followed; a FIFO, socket..., never read
            found([Problem.unusable(stream, exc)])
            carry(stream, [], head)  # as damage: import refuses a stream of no line
            continue
        if not lines:  # an emptied audit log whose head record says it held entries; a job listed with events
            problems = _emptied(orch, stream, head)
            found(problems)
            if problems:
                carry(stream, [], head)
            continue
        verified = verify_stream(stream, lines, orch.keyring)
        found(_problems(orch, stream, lines, head, verified))
        _refuse_long_lines(stream, lines)
        carry(stream, lines, head)
        if stream != AUDIT_STREAM and any(isinstance(r.get("data"), dict) and r["data"].get("artifacts")
                                          for r in verified.records):
            with_artifacts.add(stream)
    for job_id, head in removed.items():
        carry(job_id, [], head)
    out.write(_header({"end": True, "streams": streams, "events": events}))
    out.flush()
    return {"project_id": orch.project_id, "streams": streams, "events": events, "damaged": damaged,
            "warnings": _artifacts_note(orch, with_artifacts)}


def _stored_head(orch: Orchestrator, stream: str) -> bytes | None:
    """``stream``'s head record as stored; None when there is none, or a link or a FIFO is in its place (never
    followed or read: the stream's problem already says so)."""
    try:
        return orch.store.get_aux(*head_key(stream)) or None
    except (PathEscapeError, UnusableFileError):
        return None


def _artifacts_note(orch: Orchestrator, listing: set[str]) -> list[str]:
    """A warning when jobs have artifact files, which a bundle does not carry (only histories): those ``listing``
    names (its events name them), and those with a file in their folder of ``artifacts/`` here (a killed run's too,
    which its stale recovery looks for: without them the job is queued again instead of waiting for a human)."""
    from orchestrator.worker_folders import ARTIFACTS_DIR  # here: that module loads the run machinery

    folder = orch.settings.state_dir / ARTIFACTS_DIR
    try:
        with os.scandir(folder) as entries:  # a folder with no file in it is no job's files: a worker makes one for
            held = {e.name for e in entries if is_id(e.name) and _holds_a_file(e.path)}  # every command job
    except OSError:  # no such folder (nothing ran here, or the workers run on other machines)
        held = set()
    jobs = listing | held
    if not jobs:
        return []
    return [f"the bundle carries the histories, not the artifact files: {len(jobs)} job(s) have some (named by "
            f"their events, or in {folder}); copy that folder by hand to {STATE_DIR}/{ARTIFACTS_DIR}/ under the "
            "destination's base path and project, on each machine its workers run on, before they start "
            "(a run killed while it ran is recovered to waiting_human only where its files are)"]


def _holds_a_file(path: str) -> bool:
    """Whether a job's artifact folder holds anything but folders (a link counts: it is not followed); one that
    cannot be read is said to, so the note stays."""
    folders = [path]
    try:
        while folders:
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    if not entry.is_dir(follow_symlinks=False):
                        return True
                    folders.append(entry.path)
    except OSError:
        return True
    return False


def _emptied(orch: Orchestrator, stream: str, head: bytes | None) -> list[Problem]:
    """What is wrong with ``stream`` read without a line. The audit log: only what its head record says (a project
    may have none). A job: ``job_ids`` listed it holding a line, so its events were removed since (the file emptied
    or deleted during the export): ``TRUNCATED`` as its head record says it, or as the listing does."""
    cut = check_head_record(stream, [], head, orch.keyring)
    if cut or stream == AUDIT_STREAM:
        return [cut] if cut else []
    return [Problem(stream, 0, TRUNCATED, "the job held events when the export listed it and none when it read "
                                          "it: its events file was emptied or deleted meanwhile")]


def _refuse_long_lines(stream: str, lines: list[StoredLine]) -> None:
    """No bundle holds a line that ``import`` would refuse for its length (``_records``)."""
    for s in lines:
        if len(s.raw) > MAX_BUNDLE_LINE_BYTES:
            raise InvalidInputError(f"export refused: stream {stream} line {s.seq} is {len(s.raw)} bytes, more than a "
                                    f"bundle line may be ({MAX_BUNDLE_LINE_BYTES}, what import reads of one)")


class _CutShort(Exception):
    """The bundle ends before its end record, ``where`` it ends: ``import_project`` says so with what it imported
    (``_cut_short``), which only it knows."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


def _records(inp: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(bundle line number, line without its newline). A line longer than ``MAX_BUNDLE_LINE_BYTES`` is refused having
    read that much of it, never the rest (a corrupt or hostile bundle, ``/dev/zero`` given by mistake); a last line
    without its newline is ``_CutShort``."""
    n = 0
    while raw := inp.readline(MAX_BUNDLE_LINE_BYTES + 1):
        n += 1
        if not raw.endswith(b"\n"):
            if len(raw) > MAX_BUNDLE_LINE_BYTES:
                raise _malformed(n, f"the line is longer than {MAX_BUNDLE_LINE_BYTES} bytes, more than any line an "
                                    "export writes")
            raise _CutShort(f"it ends in the middle of its line {n}")
        yield n, raw[:-1]


def _cut_short(where: str, imported: dict[str, int], conflicts: list[Any]) -> IntegrityError:
    """A bundle that ends before its end record, in one wording wherever it ends (postgres.md quotes it). What the
    import wrote of it stays, as the message says (as ``_stopped``'s; until 2026-12-07 it did not), and the whole
    bundle imported again completes it. The stream the cut is in was read, never written: nothing of it is in."""
    left = f", {len(conflicts)} holding another history here left as they are" if conflicts else ""
    before = (f"the {imported['streams']} stream(s) before the cut were imported ({imported['events']} event(s)) and "
              f"stay{left}" if imported["streams"] else f"no stream of it was imported{left}")
    return IntegrityError(f"the bundle was cut short: {where}, before its end record (export it again); {before}: "
                          f"importing the whole bundle completes {'the others' if conflicts else 'it'}")


def _malformed(n: int, what: str) -> InvalidInputError:
    return InvalidInputError(f"not a bundle: line {n}: {what}; nothing from that line on was written")


def _json(n: int, raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        raise _malformed(n, f"expected {what}, found {shown(raw)}")  # sanitized before it is cut
    return obj


def _count(n: int, rec: dict[str, Any], field: str) -> int:
    value = rec.get(field)
    if type(value) is not int or value < 0:  # not a bool, a float or a string of digits
        raise _malformed(n, f"{field} is {shown(value)}, not a count")
    return value


def _stream_header(n: int, rec: dict[str, Any]) -> tuple[str, int, bytes | None]:
    """A stream header's (stream, lines, head record); any field of the wrong type is ``InvalidInputError``
    naming the line, an unsafe job id ``InvalidIdError``."""
    stream = rec.get("stream")
    if not isinstance(stream, str):
        raise _malformed(n, f"stream is {shown(stream)}, not a job id or {AUDIT_STREAM}")
    if stream != AUDIT_STREAM:
        try:
            validate_id(stream, "job id")
        except InvalidIdError as exc:
            raise InvalidIdError(f"not a bundle: line {n}: {exc.message}; nothing from that line on was "
                                 "written") from None
    count = _count(n, rec, "lines")
    value = rec.get("head")
    if value is None:
        return stream, count, None
    if isinstance(value, str) and value:
        try:
            head = base64.b64decode(value, validate=True)
        except ValueError:  # binascii.Error (bad padding or letters), or a string that is not ASCII
            head = None
        if head is not None and len(head) >= SLOT_BYTES:  # whitespace around the JSON still verifies: refused here
            raise _malformed(n, f"the head of stream {stream} is {len(head)} bytes, more than a head record holds "
                                f"({SLOT_BYTES - 1})")
        if head is not None:
            return stream, count, head
    raise _malformed(n, f"the head of stream {stream} is {shown(value)}, not a base64 head record or null")


def import_project(orch: Orchestrator, inp: IO[bytes], *, progress: Progress | None = None) -> dict[str, Any]:
    """Write a bundle's streams into ``orch``'s store, verifying each (and its head record) before writing it."""
    imported = {"streams": 0, "events": 0}  # of the streams read: those written or found already there
    conflicts: list[dict[str, Any]] = []  # the streams holding another history here, left as they are
    held: list[str] = []  # the key of the import's record while it is there (``import_record``)
    try:
        return _import(orch, _records(inp), imported, conflicts, progress, inp, held)
    except _CutShort as cut:
        raise _cut_short(cut.where, imported, conflicts) from None
    finally:
        if held:  # stopped half way, by an error or a stop: the record says so, its process no longer holding it
            stopped(orch, held[0])


def _import(orch: Orchestrator, records: Iterator[tuple[int, bytes]], imported: dict[str, int],
            conflicts: list[dict[str, Any]], progress: Progress | None, source: IO[bytes], held: list[str]
            ) -> dict[str, Any]:
    """``import_project``'s reading and writing, counting in ``imported`` and ``conflicts`` as it goes; ``source``,
    the bundle read, is named in the import's record (its path, when it has one), whose key is in ``held`` while it is
    there."""
    n, raw = next(records, (1, b""))
    first = _json(n, raw, "a bundle header")
    fmt = first.get("format")
    if not isinstance(fmt, str) or (fmt != BUNDLE_FORMAT and fmt not in OLDER_FORMATS):  # a list: unhashable
        raise InvalidInputError(f"not a bundle of format {BUNDLE_FORMAT} (or v1): {shown(fmt)}")
    project = first.get("project_id")
    if project != orch.project_id:
        # Idempotency keys map to job ids through the project id: a renamed project would break them.
        hint = f"; import it with --project-id {project}" if isinstance(project, str) and is_id(project) else ""
        raise InvalidInputError(f"the bundle holds project {shown(project)}, not {orch.project_id!r}{hint}")
    marker = hashlib.sha256(raw).hexdigest()[:32]  # the import's record's key, put before its first write
    streams = events = written = 0
    audit_head: bool | None = None  # whether the audit log came with its head record (None: no audit log)
    for n, raw in records:
        rec = _json(n, raw, "a stream header or the end record")
        if "end" in rec:
            if rec["end"] is not True:
                raise _malformed(n, f"end is {shown(rec['end'])}, not true")
            said = (_count(n, rec, "streams"), _count(n, rec, "events"))
            if said != (streams, events):
                raise IntegrityError(f"the bundle's end record (line {n}) says {said[0]} streams and {said[1]} "
                                     f"events, it held {streams} and {events}")
            if held:  # every stream of it is in, or holds another history here
                release(orch, marker)
                held.clear()
            extra = next(records, None)
            if extra is not None:  # two bundles joined, or a file appended to: never pass over it unread
                left = f", {len(conflicts)} holding another history here left as they are" if conflicts else ""
                raise _malformed(extra[0], f"a line after the end record (line {n}), {shown(extra[1])}; "
                                 f"the {imported['streams']} streams before it were imported{left}")
            if conflicts:
                raise _conflicts(orch, conflicts, {**imported, "written": written})
            return {"project_id": orch.project_id, "format": fmt, "streams": streams, "events": events,
                    "written": written, "audit_head": audit_head}
        stream, count, head = _stream_header(n, rec)
        lines = []
        for i in range(1, count + 1):
            n, line = next(records, (n, None))
            if line is None:
                raise _CutShort(f"it ends inside stream {stream}, at its line {n}")
            lines.append(StoredLine(i, line))
        verified = verify_stream(stream, lines, orch.keyring)
        problems = _problems(orch, stream, lines, head, verified)
        if not lines:  # an export carries a stream of no line only as damage; its head record may not say so
            problems = problems or [Problem(stream, 0, TRUNCATED, CARRIED_EMPTY)]
        if problems:
            raise _refuse("import", problems)
        try:
            if not held:  # a bundle refused before its first write writes nothing, this record neither
                hold(orch, marker, held_record(orch, first, source))
                held.append(marker)
            written += _write_stream(orch, verified, head)
        except StorageError as exc:
            raise _stopped(exc, stream, imported) from None
        except ImportConflictError as exc:
            conflicts.append(exc.details)
            if stream == AUDIT_STREAM:  # the jobs' audit entries would not be there: see the module's docstring
                if not imported["streams"]:  # nothing of the bundle written (v2: the log first): no import half done
                    release(orch, marker)
                    held.clear()
                raise _conflicts(orch, conflicts, {**imported, "written": written}) from None
        else:
            imported["streams"] += 1
            imported["events"] += count
            if stream == AUDIT_STREAM:
                audit_head = head is not None
        streams += 1
        events += count
        if progress and streams % PROGRESS_EVERY == 0:
            progress(f"imported {streams} streams, {events} events...")
    raise _CutShort(f"it ends at its line {n}")


def _stopped(exc: StorageError, stream: str, imported: dict[str, int]) -> StorageError:
    """``exc``, met writing ``stream``, as the import's error, of the same class (exit 10): what the import wrote
    stands (the streams before it, and what it wrote of this one), so never "nothing was written", as the store's
    message said until 2026-12-07 of a stream whose lines were in and whose queue entry was not."""
    cause = without_nothing_written(exc.message)
    before = (f"the {imported['streams']} stream(s) before it were imported ({imported['events']} event(s))"
              if imported["streams"] else "no stream before it was imported")
    return type(exc)(f"import stopped at stream {stream}: {cause}; {before}, and what it wrote of {stream} stays (a "
                     "job's queue entry is put once all of its lines are in: no worker runs it until then); fix the "
                     "cause and run the import again: it completes it", **exc.details)


def _conflicts(orch: Orchestrator, conflicts: list[dict[str, Any]], imported: dict[str, int]) -> ImportConflictError:
    """The import's end when streams of the bundle hold another history here: each named (the first
    ``CONFLICTS_LISTED``), with what was imported and what to do. A job's conflict leaves the bundle's other streams
    imported; the audit log's stops the import there (its jobs' entries would be missing)."""
    named = ", ".join(f"{c['stream']} ({c['events_here']} event(s) here)" for c in conflicts[:CONFLICTS_NAMED])
    more = f" and {len(conflicts) - CONFLICTS_NAMED} more" if len(conflicts) > CONFLICTS_NAMED else ""
    text = (f"import incomplete: {len(conflicts)} stream(s) of the bundle already hold a different history in this "
            f"project and were left as they are, never overwritten: {named}{more}; ")
    elsewhere = (f"to keep the bundle's version, import it into a store that holds no project {orch.project_id} "
                 "(another --store, or another base path)")
    if conflicts[-1]["stream"] == AUDIT_STREAM:
        before = ("no stream of the bundle was imported" if not imported["streams"]
                  else f"the {imported['streams']} stream(s) before it were imported, none after it")
        text += (f"the import stopped at the audit log, which comes before the jobs so that their entries are there "
                 f"when they land: {before}. This store holds another project of that id, or one used since the "
                 f"bundle was exported: {elsewhere}")
    else:
        text += (f"the other {imported['streams']} stream(s) of the bundle ({imported['events']} event(s)) were "
                 "imported. A job of the same id was written here (a submit with the same --key, or another bundle "
                 "imported before): compare each with `orchestrator audit-timeline --job-id JOB` here and where the "
                 f"bundle came from; {elsewhere}")
    return ImportConflictError(text, conflicts=conflicts[:CONFLICTS_LISTED], conflicting=len(conflicts),
                               imported=imported)


def _replayed(orch: Orchestrator, verified: VerifiedStream, head: bytes | None) -> JobView:
    """The job as ``load`` replays it, whose entries the import puts in the queue index (``_put_entries``)."""
    head_problem = check_head_record(verified.stream, verified.lines, head, orch.keyring)
    return orch._view(verified.stream, verified, head_problem)


def _put_entries(orch: Orchestrator, view: JobView | None) -> None:
    """The lines bypass ``Orchestrator.append``, so the import puts the job's entries itself, by the rule a rebuild
    follows (``QueueIndex.index_job``), and only once every line of the job is in (``_write_stream``): a job written
    in chunks reads, between them, as what its first lines made it (queued, running), and a worker that met an entry
    of it then claimed or recovered it, so its next chunk was a conflict and the job ran again. A crash before the
    put leaves the job with no entry (no worker runs it): the import run again, as it must be, puts it."""
    if view is not None and view.state is not None:
        orch.queue.index_job(view.state, view.ok, view.signer, view.signers)


def _write_stream(orch: Orchestrator, verified: VerifiedStream, head: bytes | None) -> int:
    """Append what the destination lacks, then the head record; returns the number of lines written.

    A stream that already holds every line of the bundle's, followed by lines written since (an audit
    entry a heal added while the import was half done, a job an operator acted on), is complete: it
    is left as it is, its newer head record too. Any other difference is a conflict. An append that finds
    lines written since the stream was read (another import of the bundle at the same time) reads it again and
    decides again: the other's lines are as good as its own."""
    stream, lines = verified.stream, verified.lines
    view = _replayed(orch, verified, head) if stream != AUDIT_STREAM else None
    written = 0
    while True:  # again after each append refused: the stream grew, so it ends up the bundle's, longer, or another
        existing = orch.store.read(stream)
        if any(a.raw != b.raw for a, b in zip(existing, lines)):
            # its details only: the import's own message names every such stream (``_conflicts``)
            raise ImportConflictError(stream=stream, events_here=len(existing))
        if len(existing) > len(lines):
            return written
        done = len(existing)
        if done < len(lines) and view is not None:
            # a project with no job yet: its index is complete as it is (each imported job gets its entries after
            # its lines), not rebuilt by a worker starting meanwhile from a job half written (``_put_entries``)
            orch.queue.built_with_first_job(orch.store)
        try:
            while done < len(lines):
                chunk = [s.raw for s in lines[done:done + CHUNK]]
                orch.store.append(stream, lambda _h, chunk=chunk: chunk, expected_seq=done)
                faults.point("import.after_chunk")
                done += len(chunk)
                written += len(chunk)
        except (LockHeldError, LeaseLostError):
            raise  # not another writer's append first: met again at every try (a lock still held, a fence)
        except ConcurrencyError:
            continue
        break
    # the job's entries, now that all of its lines are in; a run again after a crash before this puts them too (the
    # stream then holds the bundle's lines)
    _put_entries(orch, view)
    if head is not None:
        faults.point("import.before_head")
        put_head_record(orch.store, stream, len(lines), head)
    return written
