"""Documented input limits (README "Limits"): hostile or accidental inputs are refused early.

Python's ``json`` recurses per nesting level, so a deeply nested value (``[[[[...``) raises
``RecursionError``, which is not a ``ValueError``; a limit on depth, checked without
recursion, turns it into the input's own error code instead of a crash.
"""
from __future__ import annotations

from typing import Any

MAX_INPUT_BYTES = 1024 * 1024  # a job's input, as canonical JSON
MAX_JSON_DEPTH = 64  # nesting of arrays/objects in a job's input and a terminal payload


def json_depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), computed without recursion."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, (list, tuple)):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH * 4:  # deep enough to refuse; stop walking
                return deepest
            stack.extend((child, depth) for child in item)
    return deepest
