"""What the ``llm`` handler must never return: the API key and the password of ``LLM_URL`` (``Secrets``), found
in every form an endpoint may echo them in, and replaced in a reply (``without_secrets``) and in any text it quotes
(``scrub``). A key has no shape ``sanitize_text`` could recognise, so its own value is looked for: as sent, upper- or
lower-cased or reversed, as JSON text may write it (``\\/``, ``\\u0041``: ``_json_forms``), percent-encoded (``%2F``),
as HTML writes it (``&gt;``, ``&#x41;``), and its bytes in base64 (either alphabet, from any offset: ``"user:" + key``
in a Basic header; cut by line breaks into lines of any length, MIME's 76 or a narrow terminal's) or hex
(``_encodings``); the forms of those too; and, cut short, any end of it of ``SHORTEST_PART`` (12) characters or more
and any start reaching that far past its vendor's public prefix (``sk-ant-api03-``), in any case (``_without_parts``).
A key shorter than ``MIN_SECRET_LENGTH`` (8) characters is not looked for: such a value (``x``, ``EMPTY``, a local
server's dummy) cannot be told from text, and replacing it turned "explain" into "[REDACTED]plain"."""
from __future__ import annotations

import base64
import functools
import re
from typing import Any

from orchestrator.secret_literals import MIN_SECRET_LENGTH, PUBLIC_KEY_PREFIXES
from orchestrator.security import REDACTED, renamed_keys, sanitized_cut


def _hex(unit: int, digits: int = 4) -> str:
    """A pattern of ``unit`` in hex of ``digits`` digits, each letter of either case."""
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{unit:0{digits}x}")


_HTML_NAMED = {"<": "lt", ">": "gt", "&": "amp", '"': "quot", "'": "apos"}  # what ``html.escape`` writes by name
# A line break inside base64 (MIME's lines of 76, PEM's of 64): LF or CRLF, as it is or JSON-escaped at any depth
_BREAK = r"(?:\r?\n|\\+r\\+n|\\+n)?"


def _json_forms(secret: str, wrapped: bool = False) -> str:
    """A pattern of ``secret`` as sent or as JSON text may write it, at any depth of JSON quoted in JSON: each
    character as itself, also after backslashes if it is no letter nor digit (PHP writes ``/`` as ``\\/``, quoted
    again ``\\\\\\/``; a letter after one is another character: ``\\n``), or as ``\\u`` and its code in hex of either
    case (a surrogate pair beyond U+FFFF); percent-encoded, as a URL quotes it (``/`` as ``%2F`` or ``%2f``: a key is
    ASCII, ``_config_problem``, one byte a character); or as an HTML entity (``&gt;``, ``&#62;``, ``&#x3E;``, zeros
    before the code allowed). ``wrapped``: a line break may stand between two characters (``_BREAK``: base64's).
    It starts only where no backslash precedes: tried at each backslash of a long run, it would scan the rest of
    the run each time."""
    forms = []
    for char in secret:
        code = ord(char)
        units = [code] if code <= 0xFFFF else [0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)]
        percent = f"|%{_hex(code, 2)}" if code < 0x80 else ""
        named = f"|&{_HTML_NAMED[char]};" if char in _HTML_NAMED else ""
        entity = rf"|&#0*{code};|&#[xX]0*{_hex(code, 1)};{named}"
        escaped = "" if char.isalnum() else r"\\*"
        forms.append(rf"(?:{escaped}{re.escape(char)}|" + "".join(rf"\\+u{_hex(unit)}" for unit in units) + percent
                     + entity + ")")
    return r"(?<!\\)" + (_BREAK if wrapped else "").join(forms)


def _percent_escapes(chars: set[str]) -> re.Pattern[str]:
    """A pattern of a percent escape of any of ``chars`` (those ``_json_forms`` percent-encodes: ASCII), its hex
    digits of either case; the codes grouped by their first digit (``%4[1-9a-fA-F]``), so each ``%`` of a text costs
    one test of a class, where a branch a code took a third longer on a log."""
    lasts: dict[str, set[str]] = {}
    for code in {ord(char) for char in chars if ord(char) < 0x80}:
        first, last = f"{code:02x}"
        lasts.setdefault(first, set()).update((last, last.upper()))
    return re.compile("%(?:" + "|".join(f"{first}[{''.join(sorted(digits))}]"
                                        for first, digits in sorted(lasts.items())) + ")")


_URL_SAFE = str.maketrans("+/", "-_")  # base64's URL-safe alphabet (RFC 4648, section 5)


def _encodings(secret: str) -> tuple[list[str], list[str]]:
    """``secret`` as sent, upper- or lower-cased (a model "correcting" it, an endpoint lowering what it echoes),
    reversed, and its bytes in hex (lower or upper case); and its bytes in base64, standard and URL-safe,
    from each of the 3 offsets in a group of 3 bytes an encoding of a longer text may start them at: the characters
    those bytes alone decide (the first and last may hold bits of what is around them, and are not looked for: a few
    bits of the key's first and last bytes are left). A key is ASCII (``_config_problem``)."""
    data = secret.encode()
    encoded = []
    for offset in range(3):
        first, end = -(-8 * offset // 6), 8 * (offset + len(data)) // 6  # whole 6-bit characters of the key's bits
        standard = base64.b64encode(bytes(offset) + data).decode()[first:end]
        encoded += [standard, standard.translate(_URL_SAFE)]
    return [secret, secret.upper(), secret.lower(), secret[::-1], data.hex(), data.hex().upper()], encoded


@functools.lru_cache(maxsize=4)  # a worker asks with the same key each time: the pattern is made once
def _forms_of(forms: tuple[tuple[str, bool], ...]) -> re.Pattern[str]:
    return re.compile("|".join(_json_forms(form, wrapped) for form, wrapped in forms))


class Secrets:
    """What ``call_llm`` must never return: the API key and the password of ``LLM_URL``, those of at least
    ``MIN_SECRET_LENGTH`` characters, and their encodings (``_encodings``), each in any of its JSON forms
    (``_json_forms``)."""

    def __init__(self, *values: str) -> None:
        self.values = sorted({value for value in values if len(value) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        encodings = [_encodings(value) for value in self.values]
        wrapped = {(form, False) for plain, _ in encodings for form in plain} \
            | {(form, True) for _, base64_forms in encodings for form in base64_forms}
        forms = {form for form, _ in wrapped}
        self._pattern = _forms_of(tuple(sorted(wrapped, key=lambda pair: (-len(pair[0]), pair)))) if wrapped else None
        self._entities = ("&#", *sorted({f"&{name};" for char, name in _HTML_NAMED.items()
                                         if any(char in form for form in forms)}))
        self._base64_forms = sorted({form for form, cut in wrapped if cut}, key=len)
        self._percent_escapes = _percent_escapes({char for form in forms for char in form})
        shortest_starts = [(value, _shortest_start(value)) for value in self.values]
        # the parts are looked for lower-cased, in the text lower-cased (``_without_parts``): in any case
        self._starts = [(value.lower(), shortest) for value, shortest in shortest_starts]
        # a value longer than its shortest start is replaced whole, as sent, upper- or lower-cased, by the search for
        # its starts: three replaces less
        found_by_starts = {form for value, shortest in shortest_starts if shortest < len(value)
                           for form in (value, value.upper(), value.lower())}
        self._plain_forms = sorted({form for form, cut in wrapped if not cut} - found_by_starts, key=len, reverse=True)

    def drop(self, text: str) -> str:
        """``text`` with each secret replaced by ``REDACTED``, then what is left of one cut short (``_without_parts``).
        The pattern (~0.4 s a MB: each form tried at each character) runs only on a text that may hold a form no
        replace finds, written with escapes (``_escaped_in``) or in base64, whole or cut by line breaks
        (``_base64_in``); else the plain forms are replaced, each as it is the only one (the key as sent, where its
        starts are searched for, by that search), and the base64 ones are known absent."""
        if self._pattern is None:
            return text
        if self._escaped_in(text) or self._base64_in(text):
            text = self._pattern.sub(REDACTED, text)
        else:
            for form in self._plain_forms:
                text = text.replace(form, REDACTED)
        for value, shortest_start in self._starts:
            text = _without_parts(text, value, shortest_start)
        return text

    def _escaped_in(self, text: str) -> bool:
        """Whether ``text`` may hold a form written with escapes: it holds a backslash (JSON's), a percent escape of
        a character of a form (``%2F``: a ``%`` alone, pytest's ``[ 42%]`` on each line of a log, is none), or an
        entity."""
        return "\\" in text or "%" in text and self._percent_escapes.search(text) is not None \
            or "&" in text and any(entity in text for entity in self._entities)

    def _base64_in(self, text: str) -> bool:
        """Whether ``text`` holds a base64 form, whole or cut into lines of any length: it does where the text without
        its line breaks holds one (a copy and a search a form, ~0.7 ms a MB, where a search for pieces of a line's
        length missed lines shorter than 60)."""
        has_cr = "\r" in text
        unwrapped = text.replace("\n", "") if "\n" in text else text
        unwrapped = unwrapped.replace("\r", "") if has_cr else unwrapped
        return any(form in unwrapped for form in self._base64_forms)


SHORTEST_PART = 12  # a start or an end of a key this long is looked for on its own; a shorter one is text ("plain.")


# A JWT's header (base64url of JSON naming its algorithm: ``eyJhbGciOiJIUzI1NiJ9`` is every HS256 token's), its ``.``
# and its payload's ``eyJ`` (``{"``): no secret, the same in many tokens
_JWT_PUBLIC = re.compile(r"eyJ[A-Za-z0-9_-]*\.(?:eyJ)?")


def _shortest_start(value: str) -> int:
    """How long a start of ``value`` is looked for: ``SHORTEST_PART`` characters past its public prefix, which every
    key of its kind begins with: its vendor's (the longest of ``PUBLIC_KEY_PREFIXES`` it begins with; counted, every
    reply naming ``sk-ant-api03`` lost it), or a JWT's header (``_JWT_PUBLIC``)."""
    jwt = _JWT_PUBLIC.match(value)
    public = max((len(prefix) for prefix in PUBLIC_KEY_PREFIXES if value.startswith(prefix)), default=0)
    return SHORTEST_PART + max(public, jwt.end() if jwt else 0)


def _case_folded(text: str) -> str:
    """``text`` lower-cased character for character (same length, same offsets): ``str.lower`` (in C), but for 'İ',
    the one character it lowers to two, lowered to 'i'."""
    return (text.replace("\u0130", "I") if "\u0130" in text else text).lower()


def _without_parts(given: str, value: str, shortest_start: int) -> str:
    """``given`` with each start of ``value`` (lower-cased) of ``shortest_start`` characters or more and each end of
    ``SHORTEST_PART`` or more replaced, in any case, as long as it goes on as the value does: what is left of the key
    where an endpoint or a model echoed it cut short ("your key begins sk-proj-AbCdEfGhIjKl...", or "SK-PROJ-ABCD..."
    from one that upper-cases what it quotes). Looked for in ``given`` lower-cased (``_case_folded``), replaced in
    ``given``. Linear: each of the two searches goes through the text once, and a part found is taken whole, so no
    character is looked at again."""
    if len(value) <= SHORTEST_PART:  # its parts are the whole value, replaced before
        return given
    text = _case_folded(given)
    start_of, end_of = value[:shortest_start], value[-SHORTEST_PART:]
    at_start, at_end = text.find(start_of), text.find(end_of)
    out: list[str] = []
    pos = 0
    while at_start >= 0 or at_end >= 0:
        if at_end < 0 or 0 <= at_start <= at_end:
            start, end = at_start, at_start + _same_ahead(text, at_start, value, len(start_of))
        else:
            end = at_end + SHORTEST_PART
            start = end - _same_behind(text, end, value, pos)
        out += (given[pos:start], REDACTED)
        pos = end
        at_start = text.find(start_of, pos) if 0 <= at_start < pos else at_start
        at_end = text.find(end_of, pos) if 0 <= at_end < pos else at_end
    if not out:
        return given
    out.append(given[pos:])
    return "".join(out)


def _same_ahead(text: str, at: int, value: str, found: int) -> int:
    """How many characters of ``text`` from ``at`` are those ``value`` begins with (the ``found`` first at least)."""
    n, most = found, min(len(value), len(text) - at)
    while n < most and text[at + n] == value[n]:
        n += 1
    return n


def _same_behind(text: str, end: int, value: str, floor: int) -> int:
    """How many characters of ``text`` before ``end``, down to ``floor``, are those ``value`` ends with."""
    n, most = SHORTEST_PART, min(len(value), end - floor)
    while n < most and text[end - n - 1] == value[-n - 1]:
        n += 1
    return n


def _renamed(obj: dict[str, Any], secrets: Secrets) -> dict[str, Any]:
    """``obj`` with the secrets replaced in its keys, no value lost when two keys become one: a key that changes
    gets ``2-``, ``3-``, ... in front of its new name when that is taken (``security.renamed_keys``, the rule
    ``sanitize_obj`` renames keys by: ``{"<key>": 1, "[REDACTED]": 2}`` is ``{"2-[REDACTED]": 1, "[REDACTED]":
    2}``)."""
    names = renamed_keys(obj, secrets.drop)
    return obj if all(new == name for name, new in names.items()) else {names[k]: v for k, v in obj.items()}


def without_secrets(value: Any, secrets: Secrets) -> Any:
    """``value`` (a decoded JSON reply, changed in place) with the secrets replaced in every string and object key
    (``_renamed``). A loop, not a recursion: a reply nested deeper than the walk could go was ``LLM_BAD_RESPONSE``
    with a key set and passed on (``MALFORMED_PAYLOAD``) without one."""
    if not secrets.values:
        return value
    top = [value]
    todo: list[list[Any] | dict[str, Any]] = [top]
    while todo:
        items = todo.pop()
        for at, item in enumerate(items) if isinstance(items, list) else items.items():
            if isinstance(item, str):
                items[at] = secrets.drop(item)  # type: ignore[index]
            elif isinstance(item, dict):
                items[at] = item = _renamed(item, secrets)  # type: ignore[index]
                todo.append(item)
            elif isinstance(item, list):
                todo.append(item)
    return top[0]


def scrub(data: str | bytes, secrets: Secrets, limit: int) -> str:
    """The start of ``data`` (a message, a reply or its first ``cut_read_size(limit)`` bytes) without the secrets,
    sanitized and only then cut to ``limit`` (``security.sanitized_cut``): a cut through a secret or the key
    leaves a part that no pattern, and no replace, recognises."""
    return sanitized_cut(data, limit, redact_first=secrets.drop)
