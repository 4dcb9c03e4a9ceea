"""Event payloads: one frozen pydantic model per event type, the reference for ``events.validate_data``.

Each model's docstring names the transition it causes. The envelope (``v``, ``seq``,
``job_id``, ``run_id``, ``type``, ``ts``, ``actor``, ``data``, ``prev``, ``kid``, ``sig``)
is built by ``orchestrator.history``; ``v`` is the envelope format version (``signing.FORMAT_VERSION``) and a reader
refuses versions it does not know. Replays do not import this module (the reducer reads the
verified ``data`` directly), which keeps read-only commands fast to start.
"""
from __future__ import annotations

import json
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.config import DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY
from orchestrator.errors import InvalidInputError
from orchestrator.json_text import not_json_reason
from orchestrator.limits import (KIND_RULE, MAX_ATTEMPTS_LIMIT, MAX_DURATION_SECONDS, MAX_JSON_DEPTH, MAX_KIND_LENGTH,
                                 PRIORITY_LIMIT, encoded_depth, is_kind, plain_json)
from orchestrator.security import shown, validation_summary
from orchestrator.signing import Encoded, canonical


class _Data(BaseModel):
    # strict: each field takes its own type only (lax mode took bytes as their UTF-8 text, ``{"reason": b"x"}`` stored
    # as "x", and "3" as 3, where the README has bytes refused as a value no line can hold); a float field takes an int
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class JobOptions(_Data):
    audit: bool = False
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1, le=MAX_ATTEMPTS_LIMIT)
    timeout: Optional[float] = Field(default=None, gt=0, le=MAX_DURATION_SECONDS, allow_inf_nan=False)
    priority: int = Field(default=DEFAULT_PRIORITY, ge=-PRIORITY_LIMIT, le=PRIORITY_LIMIT)
    key: Optional[str] = Field(default=None, min_length=1, max_length=200)


class JobSubmitted(_Data):
    """(new) -> queued. ``context_digest`` is the SHA-256 of the canonical context, checked before each run."""

    kind: str = Field(min_length=1, max_length=MAX_KIND_LENGTH)
    input: Any = None
    options: JobOptions
    context_digest: str

    @field_validator("kind")
    @classmethod
    def _a_kind(cls, kind: str) -> str:
        """The rule every entry point checks (``limits.is_kind``), here for ``append`` too, on which they all write:
        a history read or imported is not checked again (one of an older release may hold such a kind)."""
        if not is_kind(kind):
            raise ValueError(f"a kind is {KIND_RULE}")
        return kind


class JobClaimed(_Data):
    """queued -> running. Starts attempt ``attempt`` as ``run_id`` under fencing ``epoch``."""

    worker_id: str
    epoch: int = Field(ge=1)
    attempt: int = Field(ge=1)
    lease_expires_at: str


class _Result(_Data):
    summary: str = ""
    output: Any = None
    artifacts: list[str] = []


class JobSucceeded(_Result):
    """running -> succeeded (payload ``done``, job not under audit)."""


class AuditRequested(_Result):
    """running -> awaiting_audit (payload ``done`` of an ``audit`` job, or ``needs_audit``)."""


class HumanInputRequested(_Result):
    """running -> waiting_human (payload ``needs_human``); ``question`` is what the operator answers."""

    question: str = Field(min_length=1)


class _Failure(_Data):
    error_code: str
    error: str = ""
    retry_at: Optional[str] = None  # set: back to queued, runnable at that time; unset: final


class JobFailed(_Failure):
    """running -> queued (``retry_at`` set) or failed. Records ``MALFORMED_PAYLOAD``, ``NO_TERMINAL_SIGNAL_EXIT``, handler failures."""

    summary: str = ""
    output_tail: str = ""


class JobTimeout(_Failure):
    """running -> queued (``retry_at`` set) or failed, after the run passed its timeout (``NO_TERMINAL_SIGNAL_TIMEOUT``).
    ``output_tail``: what the killed run printed last, sanitized (since 2026-12-01; an older event has none)."""

    timeout: float
    output_tail: str = ""


class StaleRecovered(_Failure):
    """running -> queued or waiting_human: the worker's lease expired (``NO_TERMINAL_SIGNAL_STALE``)."""

    to: Literal["queued", "waiting_human", "failed"]
    stale_worker_id: Optional[str] = None
    lease_expired_at: Optional[str] = None
    artifacts: list[str] = []
    question: Optional[str] = None


class JobApproved(_Data):
    """awaiting_audit -> succeeded."""

    note: str = ""


class JobRevised(_Data):
    """awaiting_audit -> queued; the notes join the context's ``revisions`` for the re-run. ``note``: the operator's
    comment for the audit entry, when one was given (since 2026-12-02), so an entry healed after a crash keeps it."""

    notes: str = Field(min_length=1)
    note: Optional[str] = None


class JobResumed(_Data):
    """waiting_human -> queued; the answer joins the context's ``answers`` for the re-run. ``note`` and ``via``
    (``chat``): the audit entry's comment and where the answer came from, when given (since 2026-12-02)."""

    answer: str = Field(min_length=1)
    question: Optional[str] = None
    note: Optional[str] = None
    via: Optional[str] = None


class JobCancelled(_Data):
    """any non-final state -> cancelled."""

    reason: str = ""


class JobReleased(_Data):
    """running -> queued, not a failure: a stopping worker killed the run after its grace period (``WORKER_STOPPED``),
    or handed the job back before its handler started (``WORKER_STOPPED_BEFORE_START``, ``PATH_ESCAPE``)."""

    error_code: str = "WORKER_STOPPED"
    error: str = ""
    worker_id: Optional[str] = None
    output_tail: str = ""


EVENT_MODELS: dict[str, type[_Data]] = {
    "job_submitted": JobSubmitted,
    "job_claimed": JobClaimed,
    "job_succeeded": JobSucceeded,
    "audit_requested": AuditRequested,
    "human_input_requested": HumanInputRequested,
    "job_failed": JobFailed,
    "job_timeout": JobTimeout,
    "stale_recovered": StaleRecovered,
    "job_approved": JobApproved,
    "job_revised": JobRevised,
    "job_resumed": JobResumed,
    "job_cancelled": JobCancelled,
    "job_released": JobReleased,
}


def job_options(**options: Any) -> dict[str, Any]:
    """A submit's options checked by ``JobOptions``, as plain JSON data; ``InvalidInputError`` naming each field
    it refuses. Strictly typed: lax mode took ``audit="no"`` as true, ``max_attempts="3"`` and ``priority=True``
    (a whole number may be given for ``timeout``); events already written are read as they are."""
    try:
        return JobOptions.model_validate(options, strict=True).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        raise InvalidInputError(f"invalid job options: {validation_summary(exc.errors())}") from None


def validate_with_models(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """Check an event's payload against its model and return it as plain JSON data, each value as its line will
    hold it.

    An ``Any`` field (a submit's ``input``, a result's ``output``) is not given to pydantic: its JSON dump is not
    JSON's (a ``None`` key written ``"None"`` where ``json.dumps`` writes ``"null"``, a NaN written ``null``, a set
    as a list), and a copy of a long input costs ~30 ms. It is checked by the encoding its line gets
    (``signing.canonical``), as every other field's dump is: a value that cannot be written (a NaN, an infinity, a
    lone surrogate, a type JSON has no form for) or is nested deeper than ``MAX_JSON_DEPTH`` is refused here, before
    anything is written, with ``InvalidInputError``."""
    model = EVENT_MODELS.get(event_type)
    if model is None:
        raise InvalidInputError(f"unknown event type {event_type!r}")
    free = {name: data[name] for name in _FREE_FIELDS[event_type] if data.get(name) is not None} \
        if isinstance(data, dict) else {}
    try:
        dumped = model.model_validate({**data, **dict.fromkeys(free)} if free else data).model_dump(
            mode="json", exclude_none=True)
    except ValidationError as exc:
        raise InvalidInputError(f"invalid {event_type} data: {validation_summary(exc.errors())}") from None
    if free:
        dumped.update(free)
        dumped = {name: dumped[name] for name in model.model_fields if name in dumped}  # the models' order
    if plain_json(dumped):
        return dumped
    return {name: _as_written(event_type, name, value) for name, value in dumped.items()}


# event type -> its model's fields typed ``Any``
_FREE_FIELDS = {event_type: tuple(name for name, field in model.model_fields.items() if field.annotation is Any)
                for event_type, model in EVENT_MODELS.items()}


def _as_written(event_type: str, name: str, value: Any) -> Any:
    """``value`` as its line will hold it: unchanged when plain (``plain_json``) or a submit's own ``Encoded``
    input (checked by its submit), else encoded and read back (a tuple becomes a list, a ``None`` key "null")."""
    if type(value) is Encoded or plain_json(value):
        return value
    what = f"invalid {event_type} data: {name}"
    data = encoded_value(value, what)
    refuse_too_deep(data, what)
    return json.loads(data)


def encoded_value(value: Any, what: str) -> bytes:
    """``value``'s canonical encoding (``signing.canonical``), the bytes a line holds; ``InvalidInputError`` saying
    why ``what`` (a submit's input, an appended event's field) cannot be written: a lone surrogate, a NaN or an
    infinity, a type JSON has no form for, a circular reference, nesting deep enough to stop the encoder."""
    try:
        try:
            return canonical(value)
        except TypeError:  # keys of several types (1 and "a") cannot be sorted as they are: as JSON has them, they can
            return canonical(_with_text_keys(value, what))
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} holds text that is not valid Unicode (a lone surrogate such as \\udcff)"
                                ) from None
    except RecursionError:  # the encoder recurses per level: one far deeper than the limit stops it
        raise InvalidInputError(_too_deep(what)) from None
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} is not plain JSON: {not_json_reason(exc)}") from None


def _with_text_keys(value: Any, what: str) -> Any:
    """``value`` with the keys of its mappings as ``json.dumps`` writes them (1 as "1", None as "null"); two keys
    of one mapping that JSON writes the same (1 and "1") are refused, not one of them dropped. What it cannot encode
    (a set, a NaN) raises as ``json.dumps`` does."""
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        mapping = dict(pairs)
        if len(mapping) < len(pairs):
            twice = next(k for i, (k, _) in enumerate(pairs) if any(k == other for other, _ in pairs[:i]))
            raise InvalidInputError(f"{what} has two keys written {shown(twice)} in JSON (1 and '1', say)")
        return mapping

    return json.loads(json.dumps(value, ensure_ascii=False, allow_nan=False), object_pairs_hook=unique)


def refuse_too_deep(data: bytes, what: str) -> None:
    """``InvalidInputError`` if the canonical encoding ``data`` of ``what`` nests deeper than ``MAX_JSON_DEPTH``
    (taken from the bytes: a walk of 1 MB of small objects costs ~16x)."""
    if encoded_depth(data) > MAX_JSON_DEPTH:
        raise InvalidInputError(_too_deep(what))


def _too_deep(what: str) -> str:
    return f"{what} is nested deeper than {MAX_JSON_DEPTH} levels"
