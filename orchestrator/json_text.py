"""JSON text taken from outside the orchestrator: a job's input (``submit``) and a handler's terminal payload.

A job's input is UTF-8 JSON text, however it is given (``--input``, ``--input-file``, stdin): a leading UTF-8 byte
order mark is dropped, UTF-16 and UTF-32 (which ``json.loads`` of bytes guesses) and bytes that are no UTF-8 are
refused (``input_text``). A terminal payload is read as ``json.loads`` reads bytes (a handler's file, whatever its
encoding).

``json.loads`` keeps the last value of a key an object holds twice and drops the other without a word
(``{"a": 1, "a": 2}`` is ``{"a": 2}``), and a Python handler's ``{1: 2, "1": 3}`` is written with the key ``"1"``
twice. What is stored as given must lose no value so: ``loads_unique`` refuses such a text (``DuplicateKeyError``,
naming the key and where it is).

Its check costs little on the hot path (every run's payload is parsed): an ``object_pairs_hook`` that builds each
object as the decoder would and compares two lengths (~0.6 us an object); where the key was found is worked out
again only for a text that has one. Cheaper-looking pre-checks were measured and cost more (``docs/decisions.md``).
"""
from __future__ import annotations

import json
import re
from typing import Any

from orchestrator.errors import InvalidInputError
from orchestrator.security import sanitized_cut, shown

# A job's input is UTF-8 JSON text: JSON's other encodings, which ``json.loads`` guesses from bytes
_NOT_UTF8 = {"utf-16": "UTF-16", "utf-16-le": "UTF-16", "utf-16-be": "UTF-16", "utf-32": "UTF-32",
             "utf-32-le": "UTF-32", "utf-32-be": "UTF-32"}
_UTF8_BOM = b"\xef\xbb\xbf"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATH_SHOWN = 200  # characters of the path to a repeated key shown in its message


class _Twice(Exception):
    """Raised by the hook out of the decoder: where the key is, is worked out afterwards (``_first_twice``)."""


class DuplicateKeyError(ValueError):
    """An object of a JSON text holds ``key`` twice; ``path`` says where the object is (``$.output.rows[3]``)."""

    def __init__(self, key: str, path: str) -> None:
        self.key, self.path = key, path
        super().__init__(f"the key {shown(key)} twice (at {sanitized_cut(path, _PATH_SHOWN)})")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        raise _Twice
    return obj


_decode_unique = json.JSONDecoder(object_pairs_hook=_unique).decode


def loads_unique(text: str | bytes) -> Any:
    """``json.loads(text)`` (bytes decoded as it decodes them), refusing an object that holds a key twice (keys equal
    once decoded: ``"k"`` and ``"\\u006b"`` too) with ``DuplicateKeyError``. Raises what ``json.loads`` raises."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode(json.detect_encoding(text), "surrogatepass")  # as ``json.loads`` does
    elif text.startswith("\ufeff"):  # refused as ``json.loads`` refuses it
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        return _decode_unique(text)
    except _Twice:
        raise DuplicateKeyError(*_first_twice(text)) from None


class _Repeated(dict):  # type: ignore[type-arg]
    """An object that held ``key`` twice, as ``_first_twice``'s decoder leaves it."""

    key: str


def _marked(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    repeated, seen = _Repeated(obj), set()
    for key, _ in pairs:
        if key in seen:
            repeated.key = key
            break
        seen.add(key)
    return repeated


def _first_twice(text: str) -> tuple[str, str]:
    """The first repeated key in ``text`` (an object's own before those of the objects in it) and its object's
    path; walked without recursion: the text may nest as deep as the decoder goes."""
    stack: list[tuple[Any, str]] = [(json.JSONDecoder(object_pairs_hook=_marked).decode(text), "$")]
    while stack:
        value, path = stack.pop()
        if type(value) is _Repeated:
            return value.key, path
        if isinstance(value, dict):
            stack += reversed([(v, path + (f".{k}" if _NAME.fullmatch(k) else f"[{json.dumps(k)}]"))
                               for k, v in value.items()])
        elif isinstance(value, list):
            stack += reversed([(v, f"{path}[{i}]") for i, v in enumerate(value)])
    raise AssertionError("no key twice in a text the hook refused")


NOT_A_NUMBER = ("it holds NaN or an infinity (NaN, Infinity, -Infinity, or a number past a float's range such as "
                "1e999), which JSON does not allow")


def not_json_reason(exc: Exception) -> str:
    """Why ``json.dumps(..., allow_nan=False)`` (``signing.canonical`` too) refused a value, in words: its "Out of range
    float values are not JSON compliant" says a NaN or an infinity without naming either."""
    text = str(exc)
    return NOT_A_NUMBER if isinstance(exc, ValueError) and text.startswith("Out of range float values") else text


def input_text(raw: bytes) -> str:
    """A job's input as text: UTF-8, a leading byte order mark dropped; ``ValueError`` saying why bytes are not
    (UTF-16 or UTF-32, which ``json.loads`` of bytes would take, or bytes that are no UTF-8 at all)."""
    mark = len(_UTF8_BOM) if raw.startswith(_UTF8_BOM) else 0
    other = _NOT_UTF8.get(json.detect_encoding(raw))
    if other is not None:
        raise ValueError(f"it is {other} text, not UTF-8 (a job's input is UTF-8 JSON: convert it first, "
                         f"e.g. iconv -f {other} -t UTF-8)")
    try:
        return raw[mark:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = mark + exc.start  # in the bytes as given
        raise ValueError(f"it is not UTF-8 (byte {raw[at]:#04x} at offset {at}; a job's input is UTF-8 JSON)"
                         ) from None


def input_value(raw: bytes, given: str) -> Any:
    """The job input ``given`` (``--input``, ``--input-file NAME``) holds as JSON text: ``input_text``, then
    ``loads_unique``; ``InvalidInputError`` naming ``given`` and saying why (nothing is written)."""
    try:
        return loads_unique(input_text(raw))
    except DuplicateKeyError as exc:
        raise InvalidInputError(f"{given} has {exc}: JSON keeps only one of its values, so the input is refused "
                                "rather than stored without the other; nothing was written") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError(f"{given} is not valid JSON: {exc}") from None
