"""Reading and writing signed, chained streams: the bridge between lines and events.

``verify_stream`` checks every line of a stream (parse, canonical form, position, chain,
stream binding, signature) and names each problem by line. ``seal`` turns new events into
lines chained to a stream's head. Job histories and the audit log use the same code.

A read may start from the stream's head record (``check_head``): it names a line by its hash, that
line's signature is checked, and each line's ``prev`` (which that signature covers) covers the line before it,
so every line up to the head is vouched for byte for byte by the named line's key. Such a line's own signature
is then checked only when it names another key. ``verify``, the audit timeline and a worker's claim check every
signature regardless (``Orchestrator.load(every_signature=True)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from orchestrator.errors import PathEscapeError, UnusableFileError
from orchestrator.security import shown
from orchestrator.signing import (FORMAT_VERSION, SUBMITTED_CONTEXT_MIN_BYTES, UNKNOWN_KEY, Keyring, canonical, genesis,
                                  line_and_body, line_hash, parse_line, submitted_line_body)
from orchestrator.store.base import AUDIT_STREAM, Head, StoredLine

# Problem codes, each a different way a history can be damaged.
CORRUPT_LINE = "CORRUPT_LINE"  # not JSON, not an object, or not in canonical form
UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
SEQUENCE_MISMATCH = "SEQUENCE_MISMATCH"  # line deleted, duplicated, inserted, reordered or renumbered
CHAIN_BROKEN = "CHAIN_BROKEN"  # prev is not the hash of the line before
WRONG_STREAM = "WRONG_STREAM"  # a line from another job spliced in
TRUNCATED = "TRUNCATED"  # the file is shorter than its head record says
HEAD_MISMATCH = "HEAD_MISMATCH"  # the line the head record names was rewritten
ROLLED_BACK = "ROLLED_BACK"  # shorter than, or different from, an exported anchor
INVALID_HISTORY = "INVALID_HISTORY"  # signed events that the state machine refuses
CONTEXT_MISMATCH = "CONTEXT_MISMATCH"  # the submitted context does not match its digest
PATH_ESCAPE = "PATH_ESCAPE"  # the events file or head record is a symbolic link, never followed
NOT_A_FILE = "NOT_A_FILE"  # a FIFO, socket, device or directory holding files in the audit log's or a job file's place
# and the codes of ``Keyring.check``: SIGNATURE_MISSING, SIGNATURE_INVALID, KEY_REVOKED, UNKNOWN_KEY


@dataclass(frozen=True)
class Problem:
    stream: str
    line: int
    code: str
    message: str
    kid: str | None = None  # UNKNOWN_KEY: the key id the line (or head record) names, which the keyring lacks

    def to_dict(self) -> dict[str, Any]:
        return {"stream": self.stream, "line": self.line, "code": self.code, "message": self.message}

    @classmethod
    def linked(cls, stream: str, exc: Exception) -> "Problem":
        """A symbolic link in the place of ``stream``'s file (or its head record), never followed (``PathEscapeError``):
        nothing of it can be read, so it is the stream's problem, at line 0."""
        return cls(stream, 0, PATH_ESCAPE, getattr(exc, "message", str(exc)))

    @classmethod
    def unusable(cls, stream: str, exc: "PathEscapeError | UnusableFileError") -> "Problem":
        """What ``EventStore.refuse_unusable`` raised for ``stream``'s file: nothing of it can be read, so it is the
        stream's problem, at line 0 (``PATH_ESCAPE`` for a symbolic link, else ``NOT_A_FILE``)."""
        if isinstance(exc, PathEscapeError):
            return cls.linked(stream, exc)
        return cls(stream, 0, NOT_A_FILE, exc.message)


@dataclass
class VerifiedStream:
    """A stream's records in order, up to (not including) the first damaged line.

    ``unparsed``: the last lines, whose records are made only when ``records`` is first asked for. A writer's view
    holds its own sealed lines so (``Orchestrator.append``): a worker recording an outcome never reads it back,
    and parsing the line cost ~10 ms a MB of a handler's output. ``parsed`` and ``unparsed`` are not changed once
    the stream is made (a view made from this one shares them), so threads asking at once make equal lists."""

    stream: str
    lines: list[StoredLine]
    parsed: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    unparsed: tuple[bytes, ...] = ()
    _all: list[dict[str, Any]] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def records(self) -> list[dict[str, Any]]:
        if not self.unparsed:
            return self.parsed
        if self._all is None:
            self._all = self.parsed + [parse_line(line) for line in self.unparsed]
        return self._all

    def first_record(self) -> dict[str, Any] | None:
        """The first line's record (None for no line, or a first line that did not verify), without making the later
        ones ``records`` would."""
        records = self.parsed or self.records
        return records[0] if records else None

    def followed_by(self, lines: Sequence[bytes]) -> "VerifiedStream":
        """This stream with ``lines`` after it, lines a writer sealed and wrote itself (``Orchestrator.append``): their
        records are made when asked for; those made already are kept."""
        made = self._all is not None
        seq = len(self.lines)
        return VerifiedStream(self.stream, self.lines + [StoredLine(seq + i, line) for i, line in enumerate(lines, 1)],
                              self.records if made else self.parsed,
                              unparsed=(() if made else self.unparsed) + tuple(lines))

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def head(self) -> Head:
        return Head(len(self.lines), self.lines[-1].raw if self.lines else b"")


@dataclass(frozen=True)
class Anchor:
    """A stream's head record that names one of the lines read: lines ``1..seq`` are vouched for by key ``kid``,
    the key of line ``seq`` (its signature covers its ``prev``, the chain the lines before), or of a signed head
    record (written before 2026-12-03: its signature covers line ``seq``'s hash). ``checked``: that signature
    verified already (a signed head record's); else line ``seq``'s own is checked with the others, and the lines
    before it are vouched for only when it verifies (a result with a problem is verified again without)."""

    seq: int
    kid: str
    checked: bool = False
    line: bytes = field(default=b"", compare=False, repr=False)  # line ``seq``, as parsed to find its key ...
    record: dict[str, Any] | None = field(default=None, compare=False, repr=False)  # ... into this: not parsed twice


def verify_stream(stream: str, lines: Sequence[StoredLine], keyring: Keyring, *,
                  prev_line: bytes | None = None, anchor: Anchor | None = None) -> VerifiedStream:
    """Check every line; records stop at the first problem, problems list all of them.

    ``prev_line`` is the line before ``lines[0]`` when verifying from the middle of a stream.
    With an ``anchor`` (``check_head``) a line it vouches for, under the key it names itself, has its signature
    and its canonical form taken as checked (its bytes are fixed by the chain); everything else is checked in full.
    Only a result without problems means anything then: the lines before a broken link are not vouched for, so a
    caller that gets problems verifies again without the anchor (``Orchestrator.load``).
    """
    result = VerifiedStream(stream, list(lines))
    expected_prev = line_hash(prev_line) if prev_line is not None else genesis(stream)
    clean = True
    for stored in lines:
        code, message, rec = _check_line(stream, stored, expected_prev, keyring, anchor)
        expected_prev = line_hash(stored.raw)
        if code:
            clean = False
            kid = rec.get("kid") if code == UNKNOWN_KEY else None
            result.problems.append(Problem(stream, stored.seq, code, message, kid))
        elif clean:
            result.records.append(rec)
    return result


def _check_line(stream: str, stored: StoredLine, expected_prev: str, keyring: Keyring,
                anchor: Anchor | None = None) -> tuple[str | None, str, dict[str, Any]]:
    if anchor is not None and anchor.record is not None and stored.raw == anchor.line:
        rec = dict(anchor.record)  # the line ``check_head`` parsed to find its key (its very bytes): not parsed again
    else:
        try:
            rec = parse_line(stored.raw)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; RecursionError: nested too deeply
            return CORRUPT_LINE, "not valid JSON", {}
    if not isinstance(rec, dict):
        return CORRUPT_LINE, "not a JSON object", {}
    # a line the anchor vouches for has its bytes fixed by a checked signature (the chain up to the anchor's line,
    # whose signature covers its ``prev``): any edit of them breaks the chain, so they are not encoded again
    vouched = anchor is not None and (stored.seq < anchor.seq or (stored.seq == anchor.seq and anchor.checked)) \
        and rec.get("kid") == anchor.kid and isinstance(rec.get("sig"), str)
    body = None  # the signed bytes, made with the canonical form (each value encoded once)
    # a long submitted line holding its context as its digest says: its signed bytes made from the line, the input
    # not encoded again, and taken only if its signature verifies over them; any other line is checked in full
    signed = not vouched and _signed_as_held(stored.raw, rec, keyring)
    try:
        if not vouched and not signed:
            canonical_line, body = line_and_body(rec)
            if canonical_line != stored.raw:
                return CORRUPT_LINE, "not in canonical form (edited by hand?)", rec
    except ValueError:
        return CORRUPT_LINE, "holds a value JSON cannot carry (NaN?)", rec
    version, seq = rec.get("v"), rec.get("seq")
    if type(version) is not int or version != FORMAT_VERSION:  # true == 1.0 == 1 in Python, not in the format
        return UNSUPPORTED_VERSION, f"format version {shown(version)} is not {FORMAT_VERSION}", rec
    if type(seq) is not int or seq != stored.seq:
        return SEQUENCE_MISMATCH, f"seq {shown(rec.get('seq'))} stands at line {stored.seq}", rec
    if stored.row is not None:  # the line is in its place, its row numbered otherwise: appends would go by that number
        return SEQUENCE_MISMATCH, f"line {stored.seq} is stored as number {stored.row} (renumbered by hand)", rec
    if rec.get("prev") != expected_prev:
        return CHAIN_BROKEN, "prev is not the hash of the line before", rec
    if stream != AUDIT_STREAM and rec.get("job_id") != stream:
        return WRONG_STREAM, f"belongs to job {shown(rec.get('job_id'))}", rec
    if vouched or signed:
        return None, "", rec  # its key signed the head record these bytes chain to, or these very bytes
    sig_problem = keyring.check(rec, body)
    if sig_problem:
        return sig_problem, f"signature check failed ({sig_problem}) for key {shown(rec.get('kid'))}", rec
    return None, "", rec


def _signed_as_held(raw: bytes, rec: dict[str, Any], keyring: Keyring) -> bool:
    """Whether ``raw`` is a long ``job_submitted`` line whose signature verifies over the bytes it holds
    (``submitted_line_body``): they are then what its trusted key signed, and the canonical encoding of the record,
    the context in them being what the signed digest names. A ``False`` says nothing: the line is checked in full."""
    if len(raw) < SUBMITTED_CONTEXT_MIN_BYTES or rec.get("type") != "job_submitted":
        return False
    body = submitted_line_body(raw, rec)
    return body is not None and keyring.check(rec, body) is None


def seal(keyring: Keyring, stream: str, head: Head, records: Iterable[dict[str, Any]]) -> list[bytes]:
    """Number, chain and sign new records after ``head``; returns their lines."""
    prev = line_hash(head.last_line) if head.seq else genesis(stream)
    seq = head.seq
    out = []
    for rec in records:
        seq += 1
        line = keyring.seal({**rec, "v": FORMAT_VERSION, "seq": seq, "prev": prev})
        prev = line_hash(line)
        out.append(line)
    return out


# -- head records: detect a job file cut at a line boundary --------------------------------------

HEAD_FIELDS = frozenset({"stream", "seq", "hash"})  # a head record as written since 2026-12-03: no key, no signature


def head_record(stream: str, head: Head) -> bytes:
    """A note of a stream's length and last line's hash, kept beside the stream. Not signed: it vouches for nothing
    by itself. The line it names is signed, and that line's signature covers its ``prev``, so a read that checks
    the named line's signature has every line up to it vouched for (``check_head``); a signature of the note would
    add one Ed25519 signature to every append and one verification to a worker's claim, and vouch for no more."""
    return canonical({"stream": stream, "seq": head.seq, "hash": line_hash(head.last_line)})


def check_head_record(stream: str, lines: Sequence[StoredLine], raw: bytes | None, keyring: Keyring) -> Problem | None:
    """What is wrong with the head record ``raw`` over ``lines`` (the whole stream), or None."""
    return check_head(stream, lines, raw, keyring, anchored=False)[0]


def check_head(stream: str, lines: Sequence[StoredLine], raw: bytes | None, keyring: Keyring, *,
               anchored: bool = True) -> tuple[Problem | None, Anchor | None]:
    """The head record ``raw`` checked against ``lines`` (the whole stream, from line 1): (what is wrong
    with it, or None; the ``Anchor`` it gives when nothing is and it names a line, else None). No record at all
    is neither. Without an anchor a reader checks every signature, as ``verify`` does; ``anchored=False`` (a
    caller that checks every signature anyway) gives none."""
    if raw is None:
        return None, None
    problem, rec = _parsed_head_record(stream, raw, keyring)
    if problem is not None:
        return problem, None
    seq = rec["seq"]
    if seq > len(lines):
        held = f"the file holds {len(lines)}: events were cut" if lines else "none are left: the file was deleted or emptied"
        return Problem(stream, len(lines), TRUNCATED, f"the head record says {seq} events, {held}"), None
    if seq and line_hash(lines[seq - 1].raw) != rec.get("hash"):
        return Problem(stream, seq, HEAD_MISMATCH, "the line named by the head record was rewritten (or the record "
                       "edited)"), None
    if not (seq and anchored):
        return None, None
    if "sig" in rec:  # a signed head record (written before 2026-12-03): its key vouches for the lines
        return None, Anchor(seq, rec["kid"], checked=True)
    return None, _line_anchor(lines[seq - 1])


def _line_anchor(stored: StoredLine) -> Anchor | None:
    """Line ``stored`` as an anchor under the key it names: ``verify_stream`` checks its signature with the
    other lines, and the lines before it under that key are vouched for if it verifies. None when it names no
    key (``verify_stream`` then reports the line)."""
    try:
        rec = parse_line(stored.raw)
    except (ValueError, RecursionError):
        return None
    kid = rec.get("kid") if isinstance(rec, dict) else None
    return Anchor(stored.seq, kid, line=stored.raw, record=rec) if isinstance(kid, str) else None


def head_contradicted(stream: str, head: Head, raw: bytes | None, keyring: Keyring) -> Problem | None:
    """What the head record ``raw`` says against ``head``, the stream's last complete line, which a
    writer is about to append after: more lines than the stream holds (``TRUNCATED``), or another line at
    ``head.seq`` (``HEAD_MISMATCH``). An append there would write a new record over that evidence. None when
    the record cannot say: there is none, it is not a head record of this stream (a signed one that does not
    verify here: ``verify`` reports that), or it is behind ``head`` (a record lags its lines after a crash, and
    the lines between are not at hand)."""
    if raw is None:
        return None
    problem, rec = _parsed_head_record(stream, raw, keyring)
    if problem is not None:
        return None
    if rec["seq"] > head.seq:
        return Problem(stream, head.seq, TRUNCATED, f"the head record says {rec['seq']} lines, the stream "
                       f"holds {head.seq}: lines were cut (or the last one lost its newline)")
    if rec["seq"] == head.seq and head.seq and line_hash(head.last_line) != rec.get("hash"):
        return Problem(stream, head.seq, HEAD_MISMATCH, "the line named by the head record was rewritten")
    return None


def _parsed_head_record(stream: str, raw: bytes, keyring: Keyring) -> tuple[Problem | None, dict[str, Any]]:
    """The head record ``raw`` parsed and checked as far as it can be alone: (what is wrong with it, or None;
    the record, whose ``seq`` is then a count of lines). A signed record (the form written before 2026-12-03)
    has its signature checked too."""
    try:
        rec = parse_line(raw)
    except (ValueError, RecursionError):
        return Problem(stream, 0, CORRUPT_LINE, "the head record is not valid JSON"), {}
    if not isinstance(rec, dict):
        return Problem(stream, 0, CORRUPT_LINE, "the head record is not a JSON object"), {}
    if "sig" in rec or "kid" in rec:
        problem = _signed_head_problem(stream, rec, keyring)
        if problem is not None:
            return problem, rec
    elif rec.keys() != HEAD_FIELDS or not isinstance(rec["hash"], str):
        return Problem(stream, 0, CORRUPT_LINE, "the head record is not a stream, a seq and a hash"), rec
    elif rec["stream"] != stream:
        return Problem(stream, 0, WRONG_STREAM, f"the head record is that of stream {shown(rec['stream'])}"), rec
    seq = rec.get("seq", 0)
    if type(seq) is not int or seq < 0:  # still a problem, not a crash
        return Problem(stream, 0, CORRUPT_LINE, f"the head record's seq {seq!r} is not a count of events"), rec
    return None, {**rec, "seq": seq}


def _signed_head_problem(stream: str, rec: dict[str, Any], keyring: Keyring) -> Problem | None:
    """What is wrong with a signed head record (written before 2026-12-03), or None: its signature must verify
    under a key this keyring trusts, and it must name ``stream``."""
    sig_problem = keyring.check(rec)
    if (sig_problem and sig_problem != UNKNOWN_KEY) or rec.get("stream") != stream:
        return Problem(stream, 0, "SIGNATURE_INVALID", "the head record's signature does not verify")
    if sig_problem:  # nothing it says can be checked here; a keyring that holds its key can (a worker leaves the job)
        kid = rec.get("kid")
        return Problem(stream, 0, UNKNOWN_KEY, f"the head record is signed by key {shown(kid)}, which this keyring "
                       "does not hold", kid)
    return None


def submitted_kind(line: bytes | None) -> Any:
    """The kind a job's first line submits it as, unverified; None when it names none (no line, not JSON,
    not a ``job_submitted`` event)."""
    if line is None:
        return None
    try:
        rec = parse_line(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; RecursionError: nested too deeply
        return None
    data = rec.get("data") if isinstance(rec, dict) and rec.get("type") == "job_submitted" else None
    return data.get("kind") if isinstance(data, dict) else None
