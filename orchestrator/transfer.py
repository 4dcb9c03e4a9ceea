"""Moving a project between backends: a byte-exact bundle of every stream and head record.

A bundle is a stream of lines, written and read one stream at a time (never the whole
project in memory)::

    {"format": "jsonl-orchestrator/export/v1", "project_id": ..., "created_at": ...}
    {"stream": "<job id or @audit>", "lines": N, "head": "<base64 head record>" | null}
    <the stream's N lines, byte for byte as stored>
    ...
    {"end": true, "streams": S, "events": E}

Lines are copied, never re-encoded or re-signed, so every signature and chain link verifies
on the other side, and an anchor exported before the move still checks after it. Both ends
verify each stream before writing it: a damaged history is refused (``IntegrityError``)
unless the export is told to carry it as evidence (``allow_damaged``), and the import
refuses it anyway. An import that stops half way is resumed by running it again: a stream
already holding a prefix of the bundle's lines gets the rest; one holding anything else is a
conflict.
"""
from __future__ import annotations

import base64
import json
from typing import IO, Any, Callable, Iterator

from orchestrator import clock, faults
from orchestrator.api import HEADS_AREA, Orchestrator
from orchestrator.errors import ImportConflictError, IntegrityError, InvalidInputError, PathEscapeError
from orchestrator.history import PATH_ESCAPE, Problem, VerifiedStream, check_head_record, verify_stream
from orchestrator.security import validate_id
from orchestrator.store.base import AUDIT_STREAM, StoredLine

BUNDLE_FORMAT = "jsonl-orchestrator/export/v1"
CHUNK = 1000  # lines per append on import: each chunk is one atomic, durable append
PROGRESS_EVERY = 1000  # streams

Progress = Callable[[str], None]


def _header(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def _problems(orch: Orchestrator, stream: str, lines: list[StoredLine], head: bytes | None,
              verified: VerifiedStream | None = None) -> list[Problem]:
    verified = verified or verify_stream(stream, lines, orch.keyring)
    problems = list(verified.problems)
    if stream != AUDIT_STREAM:
        hp = check_head_record(stream, lines, head, orch.keyring)
        if hp:
            problems.append(hp)
    return problems


def _refuse(action: str, problems: list[Problem]) -> IntegrityError:
    first = problems[0]
    return IntegrityError(f"{action} refused: stream {first.stream} fails verification at line {first.line}: "
                          f"{first.code} ({first.message}); run `orchestrator verify`",
                          problems=[p.to_dict() for p in problems[:20]])


def export_project(orch: Orchestrator, out: IO[bytes], *, allow_damaged: bool = False,
                   progress: Progress | None = None) -> dict[str, Any]:
    """Write every job stream, the audit stream and the head records of ``orch`` to ``out``.

    Nothing is written before the store has been read once: a store that cannot be opened (or a removed
    job's history) leaves ``out`` empty, so ``export -o -`` prints no part of a bundle before such an error."""
    streams = events = 0
    damaged: list[dict[str, Any]] = []

    def found(problems: list[Problem]) -> None:
        if problems and not allow_damaged:
            raise _refuse("export", problems)
        damaged.extend(p.to_dict() for p in problems)

    listed = sorted(orch.store.job_ids())
    for view in orch.removed_jobs(listed):  # no event left to export: only what is wrong with them
        found(list(view.problems))
    out.write(_header({"format": BUNDLE_FORMAT, "project_id": orch.project_id,
                       "created_at": clock.to_iso(orch.clock())}))
    for stream in [*listed, AUDIT_STREAM]:
        try:
            lines = orch.store.read(stream)
            head = orch.store.get_aux(HEADS_AREA, stream) if stream != AUDIT_STREAM else None
        except PathEscapeError as exc:  # a symbolic link in the file's place is never followed
            found([Problem(stream, 0, PATH_ESCAPE, exc.message)])
            continue
        if not lines:
            continue
        found(_problems(orch, stream, lines, head))
        out.write(_header({"stream": stream, "lines": len(lines),
                           "head": base64.b64encode(head).decode() if head is not None else None}))
        out.write(b"".join(s.raw + b"\n" for s in lines))
        streams += 1
        events += len(lines)
        if progress and streams % PROGRESS_EVERY == 0:
            progress(f"exported {streams} streams, {events} events...")
    out.write(_header({"end": True, "streams": streams, "events": events}))
    out.flush()
    return {"project_id": orch.project_id, "streams": streams, "events": events, "damaged": damaged}


def _records(inp: IO[bytes]) -> Iterator[bytes]:
    for raw in inp:
        if not raw.endswith(b"\n"):
            raise IntegrityError("the bundle ends in the middle of a line: it was cut short (export again)")
        yield raw[:-1]


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        raise InvalidInputError(f"not a bundle: expected {what}, found {raw[:60]!r}")
    return obj


def import_project(orch: Orchestrator, inp: IO[bytes], *, progress: Progress | None = None) -> dict[str, Any]:
    """Write a bundle's streams into ``orch``'s store, verifying each before writing it."""
    records = _records(inp)
    first = _json(next(records, b""), "a bundle header")
    if first.get("format") != BUNDLE_FORMAT:
        raise InvalidInputError(f"not a bundle of format {BUNDLE_FORMAT}: {first.get('format')!r}")
    if first.get("project_id") != orch.project_id:
        # Idempotency keys map to job ids through the project id: a renamed project would break them.
        raise InvalidInputError(f"the bundle holds project {first.get('project_id')!r}; import it with "
                                f"--project-id {first.get('project_id')}")
    streams = events = written = 0
    for raw in records:
        rec = _json(raw, "a stream header")
        if rec.get("end"):
            if (rec.get("streams"), rec.get("events")) != (streams, events):
                raise IntegrityError(f"the bundle's trailer says {rec.get('streams')} streams and {rec.get('events')} "
                                     f"events, it held {streams} and {events}")
            return {"project_id": orch.project_id, "streams": streams, "events": events, "written": written}
        stream, count = rec.get("stream"), rec.get("lines")
        if not isinstance(stream, str) or not isinstance(count, int) or count < 1:
            raise InvalidInputError(f"not a bundle: bad stream header {raw[:80]!r}")
        if stream != AUDIT_STREAM:
            validate_id(stream, "job id")
        head = base64.b64decode(rec["head"]) if rec.get("head") else None
        lines = []
        for i in range(1, count + 1):
            line = next(records, None)
            if line is None:
                raise IntegrityError(f"the bundle was cut short inside stream {stream}")
            lines.append(StoredLine(i, line))
        verified = verify_stream(stream, lines, orch.keyring)
        problems = _problems(orch, stream, lines, head, verified)
        if problems:
            raise _refuse("import", problems)
        written += _write_stream(orch, verified, head)
        streams += 1
        events += count
        if progress and streams % PROGRESS_EVERY == 0:
            progress(f"imported {streams} streams, {events} events...")
    raise IntegrityError("the bundle has no end record: it was cut short (export again)")


def _index(orch: Orchestrator, verified: VerifiedStream, head: bytes | None) -> None:
    """The lines bypass ``Orchestrator.append``, so put the job's index entry here, before they land,
    as an append would (an entry before the event; a crash in between leaves an extra entry, never
    a missing one), by the rule a rebuild follows: the job replayed as ``load`` replays it, then
    ``QueueIndex.index_job``."""
    head_problem = check_head_record(verified.stream, verified.lines, head, orch.keyring)
    view = orch._view(verified.stream, verified, head_problem)
    if view.state is not None:
        orch.queue.index_job(view.state, view.ok)


def _write_stream(orch: Orchestrator, verified: VerifiedStream, head: bytes | None) -> int:
    """Append what the destination lacks; returns the number of lines written."""
    stream, lines = verified.stream, verified.lines
    existing = orch.store.read(stream)
    if len(existing) > len(lines) or any(a.raw != b.raw for a, b in zip(existing, lines)):
        raise ImportConflictError(f"stream {stream} already holds a different history in the destination "
                                  f"({len(existing)} events); nothing of it was overwritten", stream=stream)
    done = len(existing)
    if done < len(lines) and stream != AUDIT_STREAM:
        _index(orch, verified, head)
    while done < len(lines):
        chunk = [s.raw for s in lines[done:done + CHUNK]]
        orch.store.append(stream, lambda _h, chunk=chunk: chunk, expected_seq=done)
        faults.point("import.after_chunk")
        done += len(chunk)
    if head is not None:
        orch.store.put_aux(HEADS_AREA, stream, head)
    return len(lines) - len(existing)
