"""Secret redaction, id validation and path containment.

Everything a job prints or an operator types may end up in a JSONL event or a log, so
``sanitize_text`` runs over text before it is persisted. Ids become file names and
artifact paths come from jobs, so both are checked before they touch the filesystem.

What a secret looks like (the patterns, and the literals each one's match holds) is in
``orchestrator/secret_patterns.py``; here, when each pattern runs and what it replaces. Every
regex of both runs in linear time (see there), and so does every loop here: a 5 MB line costs
one pass.
"""
from __future__ import annotations

import json
import os
import re
import string
from pathlib import Path
from typing import Any, Callable, Sequence

from orchestrator.errors import InvalidIdError, PathEscapeError
from orchestrator.secret_patterns import (ANY_LITERAL, AS_IS_WORDS, BEARER, CASE_FOLDED_TO_ASCII, CLI, CLI_USER,
                                         CLI_USER_WORDS, HEADER, HEADER_WORDS, KEY_WORDS, KV, LINE_END, LOOKED_FOR,
                                         MYSQL, NETRC, NETRC_WORDS, PRIVATE_KEY, PRIVATE_KEY_END, PUTTY, REDACTED,
                                         SECRET_KEY_WORDS, SENSITIVE_KEY, SHAPES, SHAPE_STARTS, SSHPASS, URL_CREDS,
                                         YamlBlocks, a_number, os_error)

__all__ = ["REDACTED", "CUT_MARGIN", "cut_read_size", "sanitize_text", "sanitized_cut", "sanitize_obj", "renamed_keys",
           "one_line", "json_source_text", "safe_line", "shown", "validate_id", "safe_join", "validate_artifact_path"]

# Looking for a literal of several characters costs ~0.7 ms a MB (CPython's search), for one character ~0.05 ms
# (``memchr``): in a text this long or longer a literal is looked for only where each of its characters is there
# (``_literals_held``), its rarest first. Data (JSON records, numbers, hex, base64) lacks most literals' rarer
# characters; in a shorter text the plain search costs less than the look at the characters.
_LONG_TEXT = 1024
_BY_FREQUENCY = "etaoinshrdlcumwfgypbvkjxqz"  # English letters, the most frequent first: others (a '-') are rarer
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _rarest_first(literal: str) -> str:
    """The distinct characters of ``literal``, those a text is least likely to hold first."""
    return "".join(sorted(set(literal), key=lambda char: -_BY_FREQUENCY.find(char) if char in _BY_FREQUENCY else -99))


# what ``sanitize_text`` looks for in a long text as it is, and lowered
_AS_IS_LITERALS = SHAPE_STARTS + AS_IS_WORDS + (PUTTY,)
_LOWERED_LITERALS = SECRET_KEY_WORDS + ("bearer",) + NETRC_WORDS + CLI_USER_WORDS
_CHARS_OF = {literal: _rarest_first(literal)
             for literal in LOOKED_FOR + SHAPE_STARTS + NETRC_WORDS + (PUTTY,)}


def _literals_held(text: str, literals: tuple[str, ...], *, any_case: bool = False) -> tuple[str, ...]:
    """The literals of ``literals`` whose every character ``text`` holds (with ``any_case``, in either case: those
    ASCII-lowering ``text`` may give; ``str.lower`` too, but for ``CASE_FOLDED_TO_ASCII``'s 'İ' and the Kelvin sign,
    which lower to 'i' and 'k'). Only these can be in it: the others need no search. For a long text (``_LONG_TEXT``)."""
    held: dict[str, bool] = {}
    found = []
    for literal in literals:
        for char in _CHARS_OF[literal]:
            there = held.get(char)
            if there is None:
                there = held[char] = char in text or (any_case and char != char.upper() and char.upper() in text)
            if not there:
                break
        else:
            found.append(literal)
    return tuple(found)


def _ascii_lowered(text: str) -> str:
    """``text`` with A-Z lowered and nothing else changed (same length, same offsets). ``str.lower`` does that for
    ASCII text in C; ``translate`` (a dictionary look-up per character, ~0.1 us each) only for the rest, where
    ``lower`` would also change other letters, some into two ('İ')."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def _redact_values(rx: re.Pattern[str], text: str, keep: Callable[[str, re.Match[str]], bool] | None = None,
                   lowered: str | None = None, blocks: type[YamlBlocks] | None = None) -> str:
    """Replace each match's value group, keeping its key, separator, quote and scheme (the whole match, where
    ``keep(text, match)`` says so). ``text`` itself when nothing was replaced. ``blocks``: a value may be a YAML
    block indicator, whose block is redacted (a match inside it is then passed over).

    Matching runs on an ASCII-lowered copy (same length, same offsets; ``lowered`` when the caller has it) so key
    names are case-insensitive; the kept text is sliced from the original.
    """
    out: list[str] = []
    pos = 0
    block = blocks(text) if blocks is not None else None
    for m in rx.finditer(_ascii_lowered(text) if lowered is None else lowered):
        if m.start() < pos or keep is not None and keep(text, m):
            continue
        group = "v" if m.start("v") >= 0 else "u"
        start, end = m.start(group), m.end(group)
        if block is not None:
            span = block(m, start, end)
            if span is None:
                continue
            start, end = span
        out.append(text[pos:start])
        out.append(REDACTED)
        pos = end
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


_BASE64 = string.ascii_letters + string.digits + "+/="
_DIGIT_RUN = re.compile(r"[0-9]+")


def _redact_headless_keys(text: str) -> str:
    """Redact a private key's END line with the body lines before it, when its BEGIN line is not there
    (``PRIVATE_KEY`` has already taken every whole key): what is left of a key in a cut text. A body line is base64
    after a prefix of the END line's shape (``_prefix_shape``: an indent, a quote, a log's timestamp), or, as the
    text's first line (a cut may begin in it), after the end of such a prefix; lines may end in LF, CRLF or CR.
    Walking back from the END line stops at the first line that is not one.
    Linear: the text between two END lines is split into lines once, and each line is looked at once."""
    out: list[str] = []
    pos = 0
    for m in PRIVATE_KEY_END.finditer(text):
        breaks = [(brk.start(), brk.end()) for brk in LINE_END.finditer(text, pos, m.start())]
        line_starts = [pos] + [end for _start, end in breaks]
        prefix = text[line_starts[-1]:m.start()]
        shape = _prefix_shape(prefix)
        start = line_starts[-1] + len(prefix.rstrip(" \t"))  # no body line above: what precedes the END is kept
        for (line_end, _), line_start in zip(reversed(breaks), reversed(line_starts[:-1])):
            above = _prefix_shape(text[line_start:line_end].rstrip(" \t").rstrip(_BASE64))
            if not (above == shape or line_start == 0 and shape.endswith(above)):  # the text may begin in a line
                break
            start = line_start
        out.append(text[pos:start])
        out.append(REDACTED)
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def _prefix_shape(prefix: str) -> str:
    """What two lines' prefixes must share to be lines of one key: the prefix without blanks around it, each run
    of digits as one ``0`` (a timestamp, a pid, a line number, changing from line to line)."""
    return _DIGIT_RUN.sub("0", prefix.strip(" \t"))


def sanitize_text(text: str) -> str:
    """Return ``text`` with secret values replaced by ``[REDACTED]``, key names kept.

    Idempotent, linear-time, and ordinary prose ("the password policy", "token count 5")
    is left alone: a key word only triggers redaction when a value follows it after a separator (``=``, ``:``,
    ``=>``, ``:=``, ``==``), a command's flag, or ``.netrc``'s ``login x password``.
    """
    if not isinstance(text, str):
        text = str(text)
    # Each pattern runs only on a text holding the literal it cannot match without (``KEY_WORDS``, ``SHAPE_STARTS``
    # and the literals below): most texts (a summary, a path) hold none, and a regex scan costs ~0.1 ms per kB where
    # ``in`` costs ~1 us.
    lowered = _ascii_lowered(text)
    held: frozenset[str] | None = None  # in a long text, the literals whose every character it holds
    if len(text) >= _LONG_TEXT:  # looked at for their characters first, all at once (a call costs ~2 us)
        held = frozenset(_literals_held(text, _AS_IS_LITERALS) + _literals_held(lowered, _LOWERED_LITERALS))
    elif ANY_LITERAL.search(lowered) is None:
        return text
    given = text
    putty = (held is None or PUTTY in held) and PUTTY in text
    if putty or "-----BEGIN" in text:
        text = PRIVATE_KEY.sub(REDACTED, text)
    if putty or "-----END" in text:
        text = _redact_headless_keys(text)
    if "://" in text and "@" in text:
        text = _redact_values(URL_CREDS, text)
    # the lowered copy, made again only after a redaction changed the text; a redaction adds no literal
    # ("[REDACTED]"), so what the first copy holds stays a superset of what the text holds
    if text is not given:
        lowered = _ascii_lowered(text)
    keyed = _holds(lowered, KEY_WORDS, held)
    for rx, wanted, keep, blocks in (
            (HEADER, _holds(lowered, HEADER_WORDS, held), None, None),
            (BEARER, _holds(lowered, ("bearer",), held), None, None),  # before a key's value: ``token: Bearer x``
            (CLI, keyed, None, None),
            (KV, keyed, os_error, YamlBlocks),
            (NETRC, keyed and _holds(lowered, NETRC_WORDS, held), None, None),
            (CLI_USER, _holds(lowered, CLI_USER_WORDS, held), a_number, None)):
        if wanted:
            redacted = _redact_values(rx, text, keep, lowered, blocks)
            if redacted is not text:
                text, lowered = redacted, _ascii_lowered(redacted)
    words = AS_IS_WORDS if held is None else [word for word in AS_IS_WORDS if word in held]
    if words and "-p" in text:
        for rx, word in ((SSHPASS, "sshpass"), (MYSQL, "mysql")):
            if word in words and word in text:
                text = _redact_values(rx, text, lowered=text)  # as it is: ``-P`` is another flag
    if _holds(text, SHAPE_STARTS, held):
        text = SHAPES.sub(REDACTED, text)
    return text


def _holds(text: str, literals: tuple[str, ...], held: frozenset[str] | None) -> bool:
    """Whether ``text`` holds any of ``literals``. ``held``: those of them that may be there (the text is long), each
    searched for where the stem it shares with others is there (``_any_in``)."""
    if held is None:
        return any(literal in text for literal in literals)
    return _any_in(text, [literal for literal in literals if literal in held])


# A literal's stem, which several literals share: in a long text, each literal whose characters are all there (in
# prose, most) costs a search (~0.7 ms a MB); one search for their stem passes over all of them where it is not.
_STEMS = {"passw": "pass", "passp": "pass", "_pass": "pass", "apikey": "key", "api_key": "key", "api-key": "key",
          "accesskey": "key", "access_key": "key", "access-key": "key", "accountkey": "key", "account_key": "key",
          "account-key": "key", "sessionid": "session", "session_id": "session", "session-id": "session"}


def _any_in(text: str, literals: Sequence[str]) -> bool:
    """Whether ``text`` holds any of ``literals``, each searched for only where its stem (``_STEMS``) is there."""
    stems: dict[str, bool] = {}
    for literal in literals:
        stem = _STEMS.get(literal)
        if stem is not None:
            there = stems.get(stem)
            if there is None:
                there = stems[stem] = stem in text
            if not there:
                continue
        if literal in text:
            return True
    return False


# Read (or kept) beyond a cut, so that a secret the cut goes through is seen whole by ``sanitize_text`` (or
# falls in what is dropped), not left as an unrecognisable half.
CUT_MARGIN = 16 * 1024
# What a cut through one long line drops of the sanitized text: a secret is assumed shorter than this.
_EDGE = CUT_MARGIN // 2
_UTF8_MAX = 4  # bytes a character takes at most in UTF-8
_LINE_BREAK = re.compile(r"[\r\n]")
_SPACE = re.compile(r"\s")
_LAST_SPACE = re.compile(r"\s(?=\S*\Z)")  # linear: each try scans one run only


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
        text = text[_tail_start(text):] if tail else text[:_head_end(text)]
    elif len(text) <= limit:
        return text
    return "..." + text[max(len(text) - limit, 0):] if tail else text[:limit] + "..."


def _tail_start(text: str) -> int:
    """Where sanitized ``text``, which begins at a cut, may be kept from. What the cut left of a secret (no key,
    no prefix) is at the start, on the first line (a private key's lines are redacted without their BEGIN
    line too) and, on one line, within ``_EDGE`` characters. So the first line is dropped when more follows
    it (a secret on it however long goes with it); when it is all there is (one long line, a line break at
    most after it), ``_EDGE`` characters are, and the rest of the word or token that drop ends in."""
    brk = _LINE_BREAK.search(text)
    if brk and text[brk.end():].strip():
        return brk.end()
    return _run_end(text, min(_EDGE, len(text)))


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
        space = _SPACE.search(text, pos, pos + _EDGE)
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


def _holds_something(value: Any) -> bool:
    """False for a value that cannot carry a secret: ``None``, a bool, or an empty string or container."""
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) > 0
    return True


def sanitize_obj(obj: Any, written_in: str | None = None) -> Any:
    """Return a copy of a JSON-like structure with every string sanitized, object keys included; ``obj`` itself
    when nothing in it can be a secret.

    Whatever is stored under a secret-looking key is redacted whole: a scalar (``{"password": "x"}``),
    since its text alone looks harmless, and a list or an object (``{"token": {"a": "x"}}``), since
    nothing inside it says it is secret; so is the ``value`` of a name/value pair whose name is such a key
    (``_secret_pair_value``). A key is secret-looking when a key word of ``sanitize_text`` ends it, blanks and
    punctuation after it aside (``SENSITIVE_KEY``). Only a value that holds nothing (``None``, a bool, ``""``,
    ``[]``, ``{}``) is kept as is. A key is itself text a handler chose (``{"note password=x": 1}``):
    it is sanitized too (``_sanitized_keys``), and no value is lost when two keys become one.

    A structure is first looked at whole, as JSON text (C loops): one whose text holds none of the literals
    redaction starts from (``_may_hold_secret``) is returned as it is. Walking it string by string costs ~3 us a
    string, ~170 ms for a handler's output of 1 MB of small objects; the look costs ~30 ms there, ~4 us for an
    output of a few fields (where the walk costs ~8). A structure the look cannot clear is walked as well.

    ``written_in``: a text holding every string of ``obj`` (keys too) as ``_json_text`` writes it, such as the JSON
    ``obj`` was parsed from (``json_source_text``): looked at instead of ``obj`` encoded again (~15 ms a MB). It may
    hold more than ``obj`` (a payload's other fields): where it may hold a secret, ``obj`` is looked at itself.
    """
    if isinstance(obj, (dict, list, tuple)):
        if written_in is not None and not _may_hold_secret(written_in):
            return obj
        text = _json_text(obj)
        if text is not None and not _may_hold_secret(text):
            return obj
    return _sanitized(obj)


_PAIR_VALUES = ("value", "Value", "VALUE")
_PAIR_NAMES = ("name", "Name", "NAME", "key", "Key", "KEY")


def _secret_pair_value(obj: dict[Any, Any]) -> str | None:
    """The key of ``obj``'s value when ``obj`` is a name/value pair whose name is a secret's key name
    (``{"name": "DB_PASSWORD", "value": "x"}``, Kubernetes' env; ``{"Key": "api_key", "Value": "x"}``), else None."""
    for value_key in _PAIR_VALUES:
        if value_key in obj:
            for name_key in _PAIR_NAMES:
                name = obj.get(name_key)
                if isinstance(name, str) and SENSITIVE_KEY.search(name) is not None:
                    return value_key
            return None
    return None


def _sanitized(obj: Any) -> Any:
    """``sanitize_obj``'s walk: a copy with every string sanitized."""
    if isinstance(obj, str):
        return sanitize_text(obj)
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        paired = _secret_pair_value(obj)
        for key, stored in _sanitized_keys(obj).items():
            value = obj[key]
            secret = isinstance(key, str) and (key == paired or SENSITIVE_KEY.search(key) is not None)
            out[stored] = REDACTED if secret and _holds_something(value) else _sanitized(value)
        return out
    if isinstance(obj, list):
        return [_sanitized(item) for item in obj]
    if isinstance(obj, tuple):
        return tuple(_sanitized(item) for item in obj)
    return obj


_encode_json = json.JSONEncoder(ensure_ascii=False).encode  # stateless between calls: shared by threads


def _json_text(obj: Any) -> str | None:
    """``obj`` as JSON text, every string of it (keys too) in it as written except for JSON's escapes, which no
    literal of ``_may_hold_secret`` holds; None when it is not JSON (an object of another type, a key that is not
    a scalar, a cycle), which is left to the walk."""
    try:
        return _encode_json(obj)
    except (TypeError, ValueError, RecursionError):
        return None


def json_source_text(raw: bytes) -> str | None:
    """The text ``json.loads`` reads from ``raw`` when every string in it is written as ``_json_text`` writes strings
    (``sanitize_obj``'s ``written_in``), else None. A strict parse leaves no control character unescaped in a string,
    and the escapes of a quote, a backslash and ``\\b \\f \\n \\r \\t`` are the encoder's own; only ``\\u`` (any
    character: ``\\u0070assword`` is "password", which the text does not hold) and ``\\/`` (the "/" of "://") write a
    character no other way, so a text holding either is not taken."""
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")  # as ``json.loads`` decodes bytes
    except (UnicodeDecodeError, LookupError):
        return None
    if "\\" in text and ("\\u" in text or "\\/" in text):
        return None
    return text


def _may_hold_secret(text: str) -> bool:
    """Whether ``text`` holds any literal a redaction starts from: ``sanitize_text``'s guards (``LOOKED_FOR``, in
    any case), and the key words of ``SENSITIVE_KEY`` (under ``re.IGNORECASE``). False: ``sanitize_text`` leaves
    every string in ``text`` as it is, and no key in it is a secret's. On the text of a whole structure a literal
    made of two of its strings side by side is only a false alarm (the walk then runs). ``str.lower`` where
    ``sanitize_text`` lowers ASCII letters only: it lowers them the same, so it finds every key word that holds,
    and may find more."""
    if "://" in text and "@" in text:  # (a private key's BEGIN or END line, or PuTTY's, holds "private": a key word)
        return True
    long = len(text) >= _LONG_TEXT  # looked at for each literal's characters first
    if any(start in text for start in (_literals_held(text, SHAPE_STARTS) if long else SHAPE_STARTS)):
        return True
    if not text.isascii() and any(char in text for char in CASE_FOLDED_TO_ASCII):
        return True
    words = _literals_held(text, LOOKED_FOR, any_case=True) if long else LOOKED_FOR
    if not words:  # a long text is lowered only if one of them may be in it
        return False
    return _any_in(text.lower(), words)


def _sanitized_keys(obj: dict[Any, Any]) -> dict[Any, Any]:
    """Each key of ``obj`` and the key it is stored under, sanitized (``renamed_keys`` with ``sanitize_text``)."""
    return renamed_keys(obj, sanitize_text)


def renamed_keys(obj: dict[Any, Any], rename: Callable[[str], str]) -> dict[Any, Any]:
    """Each key of ``obj`` and the key it is stored under, ``rename``d, in the object's order. A key that
    ``rename`` leaves as it is keeps its name; one that it changes gets its new name, or, when that name is taken
    (``{"password=a": 1, "password=b": 2}`` sanitized), ``2-``, ``3-``, ... in front of it, as an artifact does (a
    number after it would be taken into the redacted value). So no two keys become one, and no value is lost (the
    ``llm`` handler renames the keys holding its API key so too). Linear: each name tries from the number it was
    last given."""
    renamed = {key: rename(key) for key in obj if isinstance(key, str)}
    renamed = {key: new for key, new in renamed.items() if new != key}
    if not renamed:
        return {key: key for key in obj}
    taken = {key for key in obj if key not in renamed}
    last_n: dict[str, int] = {}  # the number each name was last given: the next of its keys tries from there
    names = {}
    for key in obj:
        name = renamed.get(key, key)
        if key in renamed:
            n = last_n.get(name, 1)
            base, name = name, name if n == 1 else f"{n}-{name}"
            while name in taken:
                n += 1
                name = f"{n}-{base}"
            taken.add(name)
            last_n[base] = n
        names[key] = name
    return names


# what ends, rewrites or reorders a line on a terminal: C0 and C1 controls (newline, carriage return, escape),
# DEL, the Unicode line and paragraph separators, and the bidirectional overrides and isolates
_LINE_BREAKERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def one_line(value: object) -> str:
    """``value`` as one line of human output, each control character escaped as ``repr`` writes it
    (``\\n``, ``\\r``, ``\\x1b``): text a handler or an operator supplied (a question, an error, a note)
    cannot forge a line such as ``state  succeeded`` or drive the terminal. JSON output keeps the text."""
    text = value if isinstance(value, str) else str(value)
    if _LINE_BREAKERS.search(text) is None:
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
