"""Documented input limits (README "Limits"): hostile or accidental inputs are refused early.

Python's ``json`` recurses per nesting level, so a deeply nested value (``[[[[...``) raises
``RecursionError``, which is not a ``ValueError``; a limit on depth, checked without
recursion, turns it into the input's own error code instead of a crash.
"""
from __future__ import annotations

import math
import os
import stat
from collections import OrderedDict
from itertools import compress
from operator import not_
from typing import IO, Any, Iterable, Sequence

from orchestrator.errors import InvalidInputError
from orchestrator.security import is_one_line, sanitize_text, shown

MAX_INPUT_BYTES = 1024 * 1024  # a job's input, as canonical JSON; also a file it is read from (submit --input-file)
# A head anchor (verify --export-head / --against): about 130 bytes a stream (a 36-character id, a 64-digit hash
# and a sequence number), so about two million jobs. Bounds what ``--against`` reads of a file given by mistake
# (a log, a device): an anchor larger than this is refused when it would be written, so none is ever unreadable.
MAX_ANCHOR_BYTES = 256 * 1024 * 1024
# A line of an export bundle (``import`` reads no more of one, ``export`` never writes a longer one). The longest an
# export writes is an event line: a job's input (MAX_INPUT_BYTES) or a terminal payload (payload.MAX_PAYLOAD_BYTES)
# of 1 MiB, which redaction can grow a few times (a one-character secret becomes "[REDACTED]"), with texts of
# 20,000 characters as given (a few times that once redacted); a stream header holds a head record of under 512
# bytes (``store.base.SLOT_BYTES``).
# 64 MiB is far above any of them, and bounds what a corrupt bundle, or ``/dev/zero`` given by mistake, costs.
MAX_BUNDLE_LINE_BYTES = 64 * 1024 * 1024
# an operator's answer, notes, note or reason, as given (canonical: NFC, trimmed), before redaction, which can lengthen
# it: a text is never refused over secrets it held
MAX_TEXT_CHARS = 20_000
# what ``control ... --text-file`` reads of a file at most: the longest text in UTF-8 (never a byte more than one past)
MAX_TEXT_FILE_BYTES = 4 * MAX_TEXT_CHARS
MAX_JSON_DEPTH = 64  # nesting of arrays/objects in a job's input and a terminal payload
MAX_ATTEMPTS_LIMIT = 1000  # a job's max_attempts is 1..MAX_ATTEMPTS_LIMIT
PRIORITY_LIMIT = 1000  # a job's priority is -PRIORITY_LIMIT..PRIORITY_LIMIT
MAX_KIND_LENGTH = 200  # a job's kind (a handler name, or module:function) is 1..MAX_KIND_LENGTH characters
# what a kind is, as every message refusing one says it (``is_kind``)
KIND_RULE = (f"1 to {MAX_KIND_LENGTH} characters of valid Unicode on one line (no control character, line separator "
             "or bidirectional control)")
# The longest duration any option takes (a job's timeout, the worker's lease, stop grace and retry delays): a
# year. Finite, so it can be signed (canonical JSON has no Infinity), and far inside the limits a duration
# meets in the code: ``now + lease`` or ``now + retry delay`` is written as an ISO timestamp (year <= 9999,
# ~2.5e11 s away; put at ``LATEST_TIME`` at the latest where it is written) and waits are capped by ``threading.TIMEOUT_MAX`` (~292 years).
MAX_DURATION_SECONDS = 366 * 24 * 3600.0
# A ``now`` the Python API takes (``a_time``): seconds since 1970-01-01T00:00:00Z (a negative time would make no
# ready-index name) up to 9999-12-31T23:59:59Z, the last second ``clock.to_iso`` writes (a deadline a run adds past it
# is shown as its claim's, ``Orchestrator.status``)
LATEST_TIME = 253402300799.0
MAX_PROCESSES = 256  # verify --processes, metrics --processes (and their ``processes`` from Python)


_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})
# containers walked at most: a value of more holds more than any input or payload may (each takes 2 bytes or more as
# JSON), or shares containers (a cycle, a list holding itself many times), which the encoder refuses or the size limit
# does; the walk stops there, with the depth it reached
_MAX_CONTAINERS = 1 << 20


def json_depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), computed without recursion: level by level, each
    container's children sorted out by C loops (``map``, ``compress``), so that only containers cost Python work
    (1 MB of small objects 47 -> 18 ms; a list of 200,000 numbers 42 -> 8 ms). Stops at ``4 * MAX_JSON_DEPTH``
    levels (deep enough to refuse), or once ``_MAX_CONTAINERS`` values were met below the top, with the depth
    reached."""
    deepest, met, level = 0, 0, [value]
    while True:
        children: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                item = item.values()
            elif not isinstance(item, (list, tuple)):
                continue
            children.append(item)
        if not children:
            return deepest
        deepest += 1
        if deepest > MAX_JSON_DEPTH * 4:
            return deepest
        level = []
        for items in children:  # the children that are not plain scalars: containers (and odd values, passed over)
            level.extend(compress(items, map(not_, map(_SCALAR_TYPES.__contains__, map(type, items)))))
            if met + len(level) > _MAX_CONTAINERS:
                return deepest
        met += len(level)


_TO_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(byte for byte in range(256) if byte not in b'[]{}"')


def encoded_depth(encoded: bytes) -> int:
    """Nesting depth of a value from its canonical JSON (``signing.canonical``), ``json_depth`` of the value, for
    a caller that encodes it anyway (a submit): C loops over the bytes, not a walk of the objects (1 MB of small
    objects ~16x faster). Its escapes dropped (a run of backslashes pairs from the left, as a decoder reads it, so
    the quotes left are the strings' own), then everything but quotes and brackets; the strings are dropped with
    what they hold (two quotes side by side close one string and open the next, or hold nothing: either way no
    bracket between them), and each pass then takes away the innermost pairs: one level. Stops past
    ``4 * MAX_JSON_DEPTH`` levels, as ``json_depth`` does."""
    if b"\\" in encoded:
        encoded = encoded.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = encoded.translate(_TO_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in structure:  # strings holding a bracket: their insides dropped
        structure = b"".join(structure.split(b'"')[::2])
    depth = 0
    while structure and depth <= MAX_JSON_DEPTH * 4:
        structure = structure.replace(b"[]", b"")
        depth += 1
    return depth


def is_number(value: Any, least: float, most: float) -> bool:
    """Whether ``value`` is a finite int or float from ``least`` to ``most``: the durations and thresholds the Python
    API and the settings take. Not a bool (``True`` is no count), nor NaN (it fails every comparison, so a NaN
    duration never expires and a NaN threshold never alerts), nor an infinity or text."""
    return (type(value) is not bool and isinstance(value, (int, float))
            and (isinstance(value, int) or math.isfinite(value)) and least <= value <= most)


def a_time(value: Any, name: str = "now") -> Any:
    """``value`` when it is None (read the clock) or a time the clock could give (``is_number`` from 0 to
    ``LATEST_TIME``), else ``INVALID_INPUT`` naming ``name``: the ``now`` of every worker call and control action,
    refused before any work, not a ``TypeError``, ``ValueError`` or ``OverflowError`` when it is written, nor (a
    bool, a time before 1970) an event stamped 1970-01-01T00:00:01Z."""
    if value is None or is_number(value, 0.0, LATEST_TIME):
        return value
    raise InvalidInputError(f"{name} must be None or a time in seconds since 1970-01-01T00:00:00Z (a finite number "
                            f"from 0 to {LATEST_TIME:.0f}: 9999-12-31T23:59:59Z), not {shown(value)}")


def whole_number(value: Any, name: str, least: int = 1, most: int | None = None, *, or_none: bool = False) -> Any:
    """``value`` when it is an int (not a bool) from ``least`` to ``most`` (no limit: None), or None with
    ``or_none``: the counts the Python API takes (``processes``, ``handler_max_runs``, ``max_jobs``); else
    ``INVALID_INPUT`` naming ``name``, as the command's option refuses the same value (exit 2)."""
    if (value is None and or_none) or (type(value) is not bool and isinstance(value, int)
                                       and least <= value and (most is None or value <= most)):
        return value
    span = f"of at least {least}" if most is None else f"from {least} to {most}"
    raise InvalidInputError(f"{name} must be {'None or ' if or_none else ''}a whole number {span}, not {shown(value)}")


def true_or_false(value: Any, name: str) -> bool:
    """``value`` when it is a bool, else ``INVALID_INPUT`` naming ``name``: a flag the Python API takes (``"no"`` is
    truthy, and would do the opposite of what it says)."""
    if isinstance(value, bool):
        return value
    raise InvalidInputError(f"{name} must be True or False, not {shown(value)}")


def callable_or_none(value: Any, name: str) -> Any:
    """``value`` when it is None or can be called (a callback the Python API takes), else ``INVALID_INPUT`` naming
    ``name``: refused before any work, not when it is first called, mid-run."""
    if value is None or callable(value):
        return value
    raise InvalidInputError(f"{name} must be None or a function, not {shown(value)}")


def instance_or_none(value: Any, kinds: type | tuple[type, ...], name: str, described: str) -> Any:
    """``value`` when it is None or an instance of ``kinds``, else ``INVALID_INPUT`` naming ``name`` and what it must
    be (``described``): an object the Python API takes, refused before any work rather than as an ``AttributeError``
    from deep inside."""
    if value is None or isinstance(value, kinds):
        return value
    raise InvalidInputError(f"{name} must be None or {described}, not {shown(value)}")


def require_kinds(kinds: Any, name: str = "kinds") -> Any:
    """``kinds`` when each can be a job's kind (``is_kind``), else ``INVALID_INPUT``: a filter or a worker's list of
    kinds naming one no job can have would match nothing, silently."""
    if all(map(is_kind, kinds)):
        return kinds
    raise InvalidInputError(f"{name} must be job kinds, each {KIND_RULE}, not {shown(kinds)}")


def is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode: no lone surrogate, which is how Python gives bytes that are not UTF-8 (a
    command-line argument, a file name) and which nothing can sign, store or write as UTF-8."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def is_kind(value: Any) -> bool:
    """Whether ``value`` can be a job's kind (a submit's, a worker's ``--kind``, a handler's name): ``KIND_RULE``. A
    name, shown as it is: no NUL, which PostgreSQL cannot store (files took ``"a\\x00b"``), nor a newline or an
    escape."""
    return isinstance(value, str) and 0 < len(value) <= MAX_KIND_LENGTH and is_unicode(value) and is_one_line(value)


def keep_latest(memory: OrderedDict[Any, Any], key: Any, value: Any, kept: int) -> None:
    """Put ``key`` in ``memory`` as the latest met, forgetting the oldest beyond ``kept`` (most likely done with): the
    bounded memories of a worker (``claiming``, ``untrusted``)."""
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > kept:
        memory.popitem(last=False)


def read_at_most(source: IO[bytes], limit: int) -> bytes | None:
    """The bytes of ``source`` if it holds at most ``limit``, else None, having read ``limit + 1`` of them and never
    the rest (a pipe, ``/dev/zero`` or a log given by mistake costs ``limit`` bytes of memory, not all of it)."""
    fd = _may_wait(source)
    data = source.read(limit + 1) if fd is None else _read_in_slices(source, fd, limit + 1)
    return None if len(data) > limit else data


READ_WAIT_SLICE = 0.25  # seconds: a stop that missed the wait for stdin's bytes is raised this late at most


def _may_wait(source: IO[bytes]) -> int | None:
    """The descriptor of ``source`` when a read of it may wait without end (a pipe nobody writes to yet, a terminal,
    a socket), else None (a regular file, a stream with no descriptor: a test runner's)."""
    try:
        fd = source.fileno()
        return None if stat.S_ISREG(os.fstat(fd).st_mode) else fd
    except (AttributeError, OSError, ValueError):
        return None


READ_PART_BYTES = 64 * 1024  # one read of a pipe at most: what Linux's pipe buffer holds


def _read_in_slices(source: IO[bytes], fd: int, size: int) -> bytes:
    """Up to ``size`` bytes of ``source`` (nothing of it read yet), to its end, waiting for each in slices: a stop
    signal handled just before a read without end began (or taken by another thread) is raised only when the read
    returns (``command_stop``), so ``submit --input-file -`` from a pipe nobody writes to yet ignored it.

    Read ``READ_PART_BYTES`` at a time into one ``bytearray``: a buffered reader's ``read1(n)`` makes an object of
    ``n`` bytes for each read and shrinks it to what the read gave, so asking for all that is left each time made a
    50 MB pipe cost 0.18 s instead of 0.09 s (one ``read()``; docs/decisions.md)."""
    read_once = getattr(source, "read1", source.read)  # one read of the descriptor, which has bytes or its end now
    data = bytearray()
    while len(data) < size:
        if not _readable_soon(fd):
            continue
        part = read_once(min(size - len(data), READ_PART_BYTES))
        if not part:
            break
        data += part
    return bytes(data)


def _readable_soon(fd: int) -> bool:
    """Whether ``fd`` has bytes or its end within ``READ_WAIT_SLICE``: ``select``, as macOS's ``poll`` supports no
    device (a terminal); ``descriptors.readable`` (``poll``) for a descriptor numbered past what ``select`` takes
    (1023: ``ValueError``), as an anchor's pipe of ``Orchestrator.verify(against=)`` in a service may be."""
    import select  # here: only a read of a file or a pipe waits (``status``' cold start)

    try:
        return bool(select.select([fd], [], [], READ_WAIT_SLICE)[0])
    except ValueError:  # numbered FD_SETSIZE or more
        from orchestrator.descriptors import readable

        return bool(readable([fd], READ_WAIT_SLICE))


# -- plainly valid JSON: what the fast acceptors (events.py, payload.py) take without pydantic --------
def plain_str(value: Any) -> bool:
    # the acceptors' hot path (every string of every event): ASCII decided here, without a call
    return type(value) is str and (value.isascii() or is_unicode(value))  # lone surrogates: left to pydantic


def plain_json(value: Any, depth: int = 0) -> bool:
    """True for values the models' ``Any`` dumps unchanged: dict (str keys), list, str, int, bool, finite float, None,
    no container deeper than ``MAX_JSON_DEPTH`` (``depth``: where ``value`` sits).

    A container's scalars are checked in its own loop (``plain_str``'s test written out, without its call) and only
    containers recurse: a call per value cost more than the check (900 KB of small objects, a handler's output,
    checked twice on its way to an event: 18-20 -> 8 ms)."""
    kind = type(value)
    if kind is str:
        return plain_str(value)
    if value is None or kind is bool or kind is int:
        return True
    if kind is float:
        return math.isfinite(value)
    if depth >= MAX_JSON_DEPTH:
        return False
    if kind is dict:
        for key in value:
            if type(key) is not str or not (key.isascii() or is_unicode(key)):
                return False
        items: Any = value.values()
    elif kind is list:
        items = value
    else:
        return False
    for item in items:
        kind = type(item)
        if kind is str:
            if item.isascii() or is_unicode(item):
                continue
            return False
        if kind is int or kind is bool or item is None:
            continue
        if kind is float:
            if math.isfinite(item):
                continue
            return False
        if not plain_json(item, depth + 1):
            return False
    return True


MAX_ACTOR_CHARS = 200  # Orchestrator(actor=...), as given


def an_actor(actor: object) -> str:
    """Who acts, as given to ``Orchestrator(actor=...)``: text, stored sanitized in every event and entry. A ``str``
    subclass is taken as the text it holds, an exact ``str`` made by ``str``'s own method: its own ``strip``,
    ``__str__`` or ``__len__`` may say anything (until 2026-12-07 its ``strip`` gave the stored actor: unsanitized,
    or no text at all)."""
    text = str.__str__(actor) if isinstance(actor, str) else None
    if text is None or not text.strip() or not is_unicode(text) or len(text) > MAX_ACTOR_CHARS:
        raise InvalidInputError(f"actor must be a name of 1 to {MAX_ACTOR_CHARS} characters of valid Unicode, "
                                f"not {shown(actor)}")
    return sanitize_text(text.strip())


def a_set_of_names(values: Iterable[str] | None, what: str, known: Sequence[str] | None = None) -> set[str]:
    """``jobs``' ``states`` or ``kinds`` as a set: a collection of names (a single string is refused, not read
    letter by letter), and for states only the seven there are, so a typo is an error, not an empty listing."""
    if values is None:
        return set()
    try:
        names = None if isinstance(values, (str, bytes)) else list(values)
    except TypeError:  # not iterable
        names = None
    if names is None or not all(isinstance(v, str) for v in names):
        raise InvalidInputError(f"{what} must be a list of names, not {shown(values)}")
    values = names
    if known is None:  # a kind no job can have: refused as worker(kinds=) refuses it
        require_kinds(values, what)
    unknown = sorted(set(values) - set(known)) if known is not None else []
    if unknown:
        raise InvalidInputError(f"unknown {what}: {', '.join(map(shown, unknown))}; one of: {', '.join(known or ())}")
    return set(values)


def a_process_count(processes: int | None) -> int | None:
    """The ``processes`` of ``verify`` and ``metrics``: None (the CPUs this process may use) or 1 to 256."""
    return whole_number(processes, "processes", 1, MAX_PROCESSES, or_none=True)
