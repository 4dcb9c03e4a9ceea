"""Secret redaction of structures: ``sanitize_obj`` over a JSON-like value (a payload's output), where a key, a
name/value pair or an argument list can say a value is secret that its text alone does not; and the rule that
renames an object's keys when redaction makes two of them one (``renamed_keys``)."""
from __future__ import annotations

import json
from typing import Any, Callable

from orchestrator.redaction import may_hold_secret, sanitize_text
from orchestrator.secret_patterns import REDACTED, SENSITIVE_KEY

__all__ = ["sanitize_obj", "json_source_text", "renamed_keys"]


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
    redaction starts from (``may_hold_secret``) is returned as it is. Walking it string by string costs ~3 us a
    string, ~170 ms for a handler's output of 1 MB of small objects; the look costs ~30 ms there, ~4 us for an
    output of a few fields (where the walk costs ~8). A structure the look cannot clear is walked as well.

    ``written_in``: a text holding every string of ``obj`` (keys too) as ``_json_text`` writes it, such as the JSON
    ``obj`` was parsed from (``json_source_text``): looked at instead of ``obj`` encoded again (~15 ms a MB). It may
    hold more than ``obj`` (a payload's other fields): where it may hold a secret, ``obj`` is looked at itself.
    """
    if isinstance(obj, (dict, list, tuple)):
        if written_in is not None and not may_hold_secret(written_in):
            return obj
        text = _json_text(obj)
        if text is not None and not may_hold_secret(text):
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
    literal of ``may_hold_secret`` holds; None when it is not JSON (an object of another type, a key that is not
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
