"""Event payload validation, cheap for the data a worker writes: pydantic only when needed.

The reference is one frozen pydantic model per event type (``orchestrator.event_models``, each
documented with the transition it causes). Importing pydantic and building those models costs a
worker about 10 MB, so ``validate_data`` first tries a small, strict *acceptor*: for the event
types a worker writes, data that is plainly well formed (exact types, known keys, JSON values
only) is returned as the models would return it. Anything else - a missing or extra key, a
subclass, a tuple, a NaN, an unknown type - goes to ``event_models.validate_with_models``, so every
error (and its message) still comes from there. ``tests/unit/test_events_fast_path.py`` checks the acceptor
against the models field by field and on generated data.
"""
from __future__ import annotations

import math
from typing import Any

from orchestrator.limits import plain_json, plain_str

_REQUIRED = object()
_STR, _STR1, _OPT_STR, _POS_INT, _STR_LIST, _JSON = "str", "str1", "optstr", "posint", "strlist", "json"
_FLOAT, _STALE_TO = "float", "stale_to"  # a finite float (an int is left to the models: they dump 3.0)
_RESULT = (("summary", _STR, ""), ("output", _JSON, None), ("artifacts", _STR_LIST, ()))
_FAILURE = (("error_code", _STR, _REQUIRED), ("error", _STR, ""), ("retry_at", _OPT_STR, None))

# event type -> (field, kind, default) in the models' field order (the order of their dumps)
SPECS: dict[str, tuple[tuple[str, str, Any], ...]] = {
    "job_claimed": (("worker_id", _STR, _REQUIRED), ("epoch", _POS_INT, _REQUIRED),
                    ("attempt", _POS_INT, _REQUIRED), ("lease_expires_at", _STR, _REQUIRED)),
    "job_succeeded": _RESULT,
    "audit_requested": _RESULT,
    "human_input_requested": (*_RESULT, ("question", _STR1, _REQUIRED)),
    "job_failed": (*_FAILURE, ("summary", _STR, ""), ("output_tail", _STR, "")),
    "job_timeout": (*_FAILURE, ("timeout", _FLOAT, _REQUIRED), ("output_tail", _STR, "")),
    "stale_recovered": (*_FAILURE, ("to", _STALE_TO, _REQUIRED), ("stale_worker_id", _OPT_STR, None),
                        ("lease_expired_at", _OPT_STR, None), ("artifacts", _STR_LIST, ()),
                        ("question", _OPT_STR, None)),
    "job_released": (("error_code", _STR, "WORKER_STOPPED"), ("error", _STR, ""), ("worker_id", _OPT_STR, None),
                     ("output_tail", _STR, "")),
    "job_approved": (("note", _STR, ""),),
    "job_revised": (("notes", _STR1, _REQUIRED), ("note", _OPT_STR, None)),
    "job_resumed": (("answer", _STR1, _REQUIRED), ("question", _OPT_STR, None), ("note", _OPT_STR, None),
                    ("via", _OPT_STR, None)),
    "job_cancelled": (("reason", _STR, ""),),
}
_NAMES = {event: frozenset(name for name, _, _ in spec) for event, spec in SPECS.items()}


def _fits(kind: str, value: Any) -> bool:
    if kind == _STR:
        return plain_str(value)
    if kind == _STR1:
        return plain_str(value) and len(value) >= 1
    if kind == _OPT_STR:
        return value is None or plain_str(value)
    if kind == _POS_INT:
        return type(value) is int and value >= 1
    if kind == _FLOAT:
        return type(value) is float and math.isfinite(value)
    if kind == _STALE_TO:
        return type(value) is str and value in ("queued", "waiting_human", "failed")
    if kind == _STR_LIST:
        return type(value) is list and all(plain_str(v) for v in value)
    return plain_json(value)


def accept(event_type: str, data: Any) -> dict[str, Any] | None:
    """The models' dump of ``data`` when it is plainly valid, else ``None`` (ask the models)."""
    spec = SPECS.get(event_type)
    if spec is None or type(data) is not dict or not data.keys() <= _NAMES[event_type]:
        return None
    out: dict[str, Any] = {}
    for name, kind, default in spec:
        if name in data:
            value = data[name]
            if not _fits(kind, value):
                return None
        elif default is _REQUIRED:
            return None
        else:
            value = default
        if value is not None:
            out[name] = list(value) if kind == _STR_LIST else value
    return out


def validate_data(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """Check an event's payload against its model and return it as plain JSON data."""
    fast = accept(event_type, data)
    if fast is not None:
        return fast
    from orchestrator.event_models import validate_with_models

    return validate_with_models(event_type, data)

