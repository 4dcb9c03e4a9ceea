"""Secret redaction where text is cut or shown, id validation and path containment.

Everything a job prints or an operator types may end up in a JSONL event or a log, so ``sanitize_text``
(``orchestrator/redaction.py``; structures: ``sanitize_obj``, ``orchestrator/redaction_objects.py``; what a secret
looks like: ``orchestrator/secret_patterns.py``) runs over text before it is persisted, and here before it is cut
(``sanitized_cut``) or shown on one line (``safe_line``, ``shown``; a number of bytes: ``shown_bytes``). Ids become
file names and artifact paths come from jobs, so both are checked before they touch the filesystem.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from orchestrator.errors import InvalidIdError, PathEscapeError
from orchestrator.redaction import sanitize_text
from orchestrator.secret_literals import LINE_END, NETRC_NAMED_FIELDS, REDACTED, SPACE

if TYPE_CHECKING:  # what a type checker reads; at run time imported on first use (``__getattr__``)
    from orchestrator.redaction_objects import json_source_text, renamed_keys, sanitize_obj

__all__ = ["REDACTED", "CUT_MARGIN", "cut_read_size", "sanitize_text", "sanitized_cut", "sanitize_obj", "renamed_keys",
           "one_line", "json_source_text", "safe_line", "shown", "shown_bytes", "validate_id", "safe_join",
           "validate_artifact_path"]

# ``redaction_objects``' names, imported on first use (``__getattr__``): a command prints its output through
# ``sanitize_text`` alone, and a structure only when that redacted something (``cli_common.Output``), so a ``status``
# read does not import them (cold start)
_FROM_REDACTION_OBJECTS = frozenset({"json_source_text", "renamed_keys", "sanitize_obj"})


def __getattr__(name: str) -> Any:
    if name not in _FROM_REDACTION_OBJECTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from orchestrator import redaction_objects

    value = getattr(redaction_objects, name)
    globals()[name] = value  # looked up here only once
    return value


def __dir__() -> list[str]:
    """This module's names with those given on first use (``__getattr__``), as ``__all__`` lists them."""
    return sorted(set(globals()) | set(__all__))


# Read (or kept) beyond a cut, so that a secret the cut goes through is seen whole by ``sanitize_text`` (or
# falls in what is dropped), not left as an unrecognisable half.
CUT_MARGIN = 16 * 1024
# What a cut through one long line drops of the sanitized text: a secret is assumed shorter than this.
_EDGE = CUT_MARGIN // 2
_UTF8_MAX = 4  # bytes a character takes at most in UTF-8
_LINE_BREAK = re.compile(r"[\r\n]")
_LAST_SPACE = re.compile(r"\s(?=\S*\Z)")  # linear: each try scans one run only
# A line of a ``.netrc`` entry's fields (``login bob``, ``password x``, or several): what follows its ``machine h`` or
# ``default``, which ``sanitize_text`` knows an entry by
_NETRC_FIELD = rf"""(?:{NETRC_NAMED_FIELDS}|password)[ \t]+(?:"[^"\r\n]*"|[^\s"]+)"""
_NETRC_FIELDS = re.compile(rf"{_NETRC_FIELD}(?:[ \t]+{_NETRC_FIELD})*[ \t]*")
# indented, empty or ``.netrc`` field lines, each with its break
_VALUE_LINES = re.compile(rf"(?:(?:[ \t][^\r\n]*|{_NETRC_FIELDS.pattern})?(?:\r\n?|\n))*")


def cut_read_size(limit: int) -> int:
    """Bytes to read of a longer source (a file's end, a reply) for ``sanitized_cut(data, limit)``: one more than
    it looks at, which tells it the source goes on (``_looked_at``)."""
    return _looked_at(limit) + 1


def _looked_at(limit: int) -> int:
    """What ``sanitized_cut`` looks at of its data: ``limit + CUT_MARGIN`` characters even of 4-byte ones, in
    bytes. A margin counted in bytes holds a third as many '漢', and the cut then dropped all of them."""
    return (limit + CUT_MARGIN) * _UTF8_MAX


def sanitized_cut(data: str | bytes, limit: int, *, tail: bool = False, cut: bool = False,
                  redact_first: Callable[[str], str] | None = None) -> str:
    """``data`` (bytes are decoded as UTF-8) sanitized, then cut to its first ``limit`` characters ("..." last
    when cut), or with ``tail`` to its last ("..." first). ``data`` may be any longer: only its first (last)
    ``cut_read_size(limit) - 1`` bytes or characters are looked at, so a reader of a longer source reads
    ``cut_read_size(limit)`` and passes what it got. ``cut``: ``data`` is itself already a cut on the side that
    is dropped (a read that began after the start). ``redact_first``: the caller's own redaction of what
    ``sanitize_text`` cannot recognise (the LLM key), run before it.

    A cut must never go through a secret before it is sanitized: half a ``password=...``, a URL whose
    credentials lose their ``@``, or ``sk-`` with too few characters matches no pattern. Only ``limit +
    CUT_MARGIN`` characters are kept; all of them are sanitized, and only then is the edge where they were cut
    from more dropped (``_tail_start``, ``_head_end``), then the rest cut to ``limit``. Every index is taken in
    the sanitized text: redacting shortens it, so an index taken before moves into what should be dropped."""
    size = _looked_at(limit)
    if len(data) > size:
        data = data[-size:] if tail else data[:size]
        cut = True
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    if redact_first is not None:
        text = redact_first(text)
    if len(text) > limit + CUT_MARGIN:
        text = text[-(limit + CUT_MARGIN):] if tail else text[:limit + CUT_MARGIN]
        cut = True
    text = sanitize_text(text)
    if cut:
        text = text[_tail_start(text, len(text) - limit):] if tail else text[:_head_end(text)]
    elif len(text) <= limit:
        return text
    return "..." + text[max(len(text) - limit, 0):] if tail else text[:limit] + "..."


def _tail_start(text: str, kept_from: int) -> int:
    """Where sanitized ``text``, which begins at a cut, may be kept from. What the cut left of a secret (no key,
    no prefix) is at the start, on the first line (a private key's lines are redacted without their BEGIN
    line too) and, on one line, within ``_EDGE`` characters. So the first line is dropped when more follows
    it (a secret on it however long goes with it), and the lines under it that may be the value of a key it held
    (``_past_values_below``: needless where the last ``limit`` characters, from ``kept_from``, begin past what it
    could drop, as they do unless redaction shortened the text); when it is all there is (one long line, a line break at
    most after it), ``_EDGE`` characters are, and the rest of the word or token that drop ends in."""
    brk = _LINE_BREAK.search(text)
    if brk and text[brk.end():].strip():
        after = LINE_END.match(text, brk.start()).end()
        return after if kept_from >= CUT_MARGIN else _past_values_below(text, after)
    return _run_end(text, min(_EDGE, len(text)))


def _past_values_below(text: str, start: int) -> int:
    """``start``, the start of the line after a tail's first line, moved past the lines that may be the value of a
    key the cut took (``password:`` cut to ``word:``, or further above): what ``ValuesBelow`` would redact under it.
    That is the indented and blank lines (a YAML value or block, an INI continuation), the field lines of a
    ``.netrc`` entry whose ``machine`` line the cut took (``login bob``, ``password x``: no entry without it), and,
    after a first line ending in ``:``, the next line when it is one word (what was typed at a prompt). Only lines
    within the text's first ``CUT_MARGIN`` characters are dropped: a value of several lines is assumed shorter than
    that, and those are what the cut drops anyway unless redaction shortened the text (what brings a value there into
    the tail), so a longer indented run (a deep traceback, pretty-printed JSON) keeps its last ``limit`` characters."""
    pos = start
    if text[:start].rstrip(" \t\r\n").endswith(":"):  # a prompt's answer: one word
        brk = LINE_END.search(text, pos)
        if brk is not None and brk.end() <= CUT_MARGIN and SPACE.search(text, pos, brk.start()) is None:
            pos = brk.end()
    pos = _VALUE_LINES.match(text, pos, max(pos, CUT_MARGIN)).end()
    if pos < len(text) <= CUT_MARGIN and LINE_END.search(text, pos) is None \
            and (text[pos] in " \t" or _NETRC_FIELDS.fullmatch(text, pos) is not None):
        pos = len(text)  # the last line, indented or a .netrc field's: all the text is what may be a value
    return pos


def _head_end(text: str) -> int:
    """Where sanitized ``text``, which ends at a cut, must end: ``_tail_start`` mirrored, what the cut left of a
    secret (``sk-`` and too few characters, a URL without its ``@``) being at the end."""
    brk = max(text.rfind("\n"), text.rfind("\r"))
    if brk >= 0 and text[:brk].strip():
        return brk + 1
    return _run_start(text, max(len(text) - _EDGE, 0))


def _run_end(text: str, pos: int) -> int:
    """``pos`` moved past the rest of the run of non-space characters it falls inside, when that run ends within
    ``_EDGE``: half a token may be part of a secret longer than ``_EDGE`` that began before the cut, and half a
    word or ``[REDACTED]`` is noise. A longer run (a minified JSON line) is cut where it is, or all would go."""
    if 0 < pos < len(text) and not text[pos - 1].isspace():
        space = SPACE.search(text, pos, pos + _EDGE)
        if space:
            return space.start()
    return pos


def _run_start(text: str, pos: int) -> int:
    """``_run_end`` mirrored: ``pos`` moved back to the start of the run it falls inside."""
    if 0 < pos < len(text) and not text[pos].isspace():
        space = _LAST_SPACE.search(text, max(pos - _EDGE, 0), pos)
        if space:
            return space.end()
    return pos



# what ends, rewrites or reorders a line on a terminal: C0 and C1 controls (newline, carriage return, escape),
# DEL, the Unicode line and paragraph separators, and the bidirectional overrides and isolates
_LINE_BREAKERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def is_one_line(text: str) -> bool:
    """Whether ``text`` holds nothing that ends, rewrites or reorders a line on a terminal (``_LINE_BREAKERS``): what
    a name shown as it is must be (a job's kind, which PostgreSQL cannot even store with a NUL)."""
    return _LINE_BREAKERS.search(text) is None


def one_line(value: object) -> str:
    """``value`` as one line of human output, each control character escaped as ``repr`` writes it
    (``\\n``, ``\\r``, ``\\x1b``): text a handler or an operator supplied (a question, an error, a note)
    cannot forge a line such as ``state  succeeded`` or drive the terminal. JSON output keeps the text."""
    text = value if isinstance(value, str) else str(value)
    if is_one_line(text):
        return text
    return _LINE_BREAKERS.sub(lambda m: repr(m.group())[1:-1], text)


def safe_line(value: object) -> str:
    """``value`` as one line of human output (``one_line``), its secrets redacted first, on its own: a redaction
    that runs to the end of its text (a private key's BEGIN line, an unclosed quote) ends with this value instead of
    taking the lines shown after it, and a column cut after this cannot leave part of a secret shown."""
    return one_line(sanitize_text(value if isinstance(value, str) else str(value)))


ID_LENGTH = 128  # the most characters of an id (``validate_id``); a caller may allow more (an aux key, ``store.base``)
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# The job ids this orchestrator hands out (``submitted.new_job_id``, ``submitted.key_job_id``): a ULID, or ``key-``
# and 32 hex.
_ASSIGNED_JOB_ID_RE = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}|key-[0-9a-f]{32}", re.I)


def shown(value: object) -> str:
    """repr() for messages, sanitized (a message may be logged by library code that sanitizes nothing) and cut
    short, so a hostile 5 MB value never lands in a log. Of a long text or bytes only the start is quoted (and
    repr'd: what follows is dropped, the edge of that slice with it).

    A message that names a value (this one, a path) gives its reason after it in brackets, not after ": ": a value
    ending like a secret's key name (``'etc/passwd'``, ``backups/secret``) would make ``sanitize_text``, which every
    message shown passes through, take the reason's first word for that key's value and redact it."""
    if isinstance(value, (str, bytes)):
        value = value[:cut_read_size(80)]
    shown = repr(value)
    return sanitize_text(shown) if len(shown) <= 80 else sanitized_cut(shown, 77)  # a cut never leaves half a secret


def shown_bytes(n: int) -> str:
    """``n`` bytes for a person: ``3.0 MiB``."""
    if n < 1024:
        return f"{n} B"
    shown_n = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        shown_n /= 1024
        if shown_n < 1024:
            return f"{shown_n:.1f} {unit}"
    return f"{shown_n / 1024:.1f} TiB"


def validation_summary(errors: list[dict[str, Any]], whole: str = "value", limit: int = 5) -> str:
    """A model's errors (pydantic's ``ValidationError.errors()``) on one line, ``field: message; ...`` for the
    first ``limit`` (``whole`` names an error of the whole model): what a caller needs, without the type codes,
    input echoes and documentation links of its multi-line text."""
    parts = [f"{'.'.join(str(p) for p in err.get('loc', ())) or whole}: {err.get('msg')}" for err in errors[:limit]]
    more = len(errors) - limit
    return sanitize_text("; ".join(parts) + (f"; and {more} more" if more > 0 else ""))


def is_id(value: str) -> bool:
    """Whether ``value`` passes ``validate_id``: for names found on disk, where one that does not is
    no record this code wrote (a stray file), to be passed over rather than refused."""
    return len(value) <= ID_LENGTH and _ID_RE.fullmatch(value) is not None and ".." not in value


def is_assigned_job_id(value: str) -> bool:
    """Whether ``value`` has the shape of a job id this orchestrator assigns: tells a job id pasted in
    free text from ordinary words after a ``job id:`` ("job id: unknown")."""
    return _ASSIGNED_JOB_ID_RE.fullmatch(value) is not None


def validate_id(value: str, what: str = "job id", longest: int = ID_LENGTH) -> str:
    """Return ``value`` if it is safe as a single file-name component, else raise.

    Ids become file names, so only ``[A-Za-z0-9._-]`` (first char alphanumeric, at most
    ``longest`` chars: 128 for an id) is allowed and ``..`` is refused anywhere.
    """
    if not isinstance(value, str):
        reason = f"must be a string, not {type(value).__name__}"
    elif not value:
        reason = "must not be empty"
    elif len(value) > longest:
        reason = f"is {len(value)} characters long (at most {longest})"
    elif ".." in value:
        reason = "must not contain '..'"
    elif not value[0].isascii() or not value[0].isalnum():
        reason = "must start with an ASCII letter or digit"
    elif _ID_RE.fullmatch(value) is None:
        reason = "may contain only ASCII letters and digits, '.', '_' and '-'"
    else:
        return value
    raise InvalidIdError(f"invalid {what} {shown(value)} ({reason})")


def _inside(root: str, path: str) -> bool:
    """True if the resolved ``path`` is ``root`` or below it (both already real)."""
    return os.path.commonpath([root, path]) == root


def safe_join(root: Path, *parts: str) -> Path:
    """Join relative ``parts`` under ``root``; raise unless the result stays inside it.

    Containment is checked on the real paths, so ``..`` and symlinks pointing outside
    are caught. The joined, unresolved path is returned.
    """
    root_s = os.fspath(root)
    if not root_s or "\x00" in root_s:
        raise PathEscapeError(f"invalid root {shown(root_s)}")
    for part in parts:
        part_s = os.fspath(part)
        if not isinstance(part_s, str) or "\x00" in part_s:
            raise PathEscapeError(f"invalid path component {shown(part)}")
        if os.path.isabs(part_s):
            raise PathEscapeError(f"absolute path component {shown(part_s)} under {root_s}")
    joined = Path(root_s, *parts)
    if not _inside(os.path.realpath(root_s), os.path.realpath(joined)):
        raise PathEscapeError(f"path {shown(str(joined))} escapes {root_s}")
    return joined


def validate_artifact_path(artifacts_dir: Path, rel: str) -> Path:
    """Resolve a job-supplied artifact path; raise unless it is strictly inside the folder.

    Refuses absolute paths, backslashes, NUL and any ``..`` component outright, then follows
    symlinks so a link inside the folder cannot point out of it. A drive (``c:``) is one only
    where the OS has drives (``os.path.splitdrive``): on Linux and macOS, where the file backend
    runs, ``c:x`` is a plain name in the folder.
    """
    if not isinstance(rel, str) or not rel:
        raise PathEscapeError(f"artifact path must be a non-empty string, got {shown(rel)}")
    if "\x00" in rel or "\\" in rel:
        raise PathEscapeError(f"artifact path {shown(rel)} contains NUL or backslash")
    if os.path.isabs(rel) or os.path.splitdrive(rel)[0]:
        raise PathEscapeError(f"artifact path {shown(rel)} must be relative")
    if ".." in rel.split("/"):
        raise PathEscapeError(f"artifact path {shown(rel)} must not contain '..'")
    root = os.path.realpath(artifacts_dir)
    target = os.path.realpath(os.path.join(root, rel))
    if target == root or not _inside(root, target):
        raise PathEscapeError(f"artifact path {shown(rel)} escapes {artifacts_dir}")
    return Path(target)
