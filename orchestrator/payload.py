"""The terminal payload: what a handler hands back when a run ends.

A handler (a command writing ``$ORCH_TERMINAL_FILE``, a Python function returning a dict,
or the ``llm`` handler) produces one JSON object; ``parse_payload`` validates it and checks
every artifact path against the job's own folder. Anything wrong is a
``MalformedPayloadError`` (``MALFORMED_PAYLOAD``), which the worker records as an event.

The reference is the pydantic model ``orchestrator.payload_model.TerminalPayload``. A plainly
valid payload (exact types, known keys, limits met) is accepted by a small check here without
importing pydantic (about 10 MB of a worker's memory); anything else goes to the model, so every
rejection and its message still come from it. Either way the result is a ``Payload``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import (ContextSignatureInvalid, IntegrityError, LeaseLostError, MalformedPayloadError,
                                 PathEscapeError, StorageError)
from orchestrator.json_text import DuplicateKeyError, loads_unique, not_json_reason
from orchestrator.limits import MAX_JSON_DEPTH, json_depth, plain_json, plain_str
from orchestrator.security import sanitize_text, validate_artifact_path

MAX_PAYLOAD_BYTES = 1024 * 1024
DONE, NEEDS_HUMAN, NEEDS_AUDIT, FAILED = "done", "needs_human", "needs_audit", "failed"
STATUSES = (DONE, NEEDS_HUMAN, NEEDS_AUDIT, FAILED)
MAX_TEXT, MAX_ARTIFACTS = 10_000, 1000  # shared with the model (payload_model.py)
ERROR_CODE_PATTERN = r"[A-Z][A-Z0-9_]{0,63}"
_FIELDS = frozenset({"status", "summary", "question", "output", "artifacts", "retryable", "error_code", "retry_after"})
# The longest wait a failed payload's ``retry_after`` puts before the job's next attempt
# (``OutcomeRecorder.retry_delay``): a service that asks for more (a quota reset a day ahead, a date far off, a header
# gone wrong) has the job tried again this long after, not parked for days at each attempt
MAX_RETRY_AFTER_SECONDS = 3600.0
_ERROR_CODE = re.compile(ERROR_CODE_PATTERN)
# the error codes of a run that ended without a terminal payload: its process exited, it was killed after
# its timeout, or its worker stopped renewing the lease (stale recovery)
NO_TERMINAL_SIGNAL_EXIT = "NO_TERMINAL_SIGNAL_EXIT"
NO_TERMINAL_SIGNAL_TIMEOUT = "NO_TERMINAL_SIGNAL_TIMEOUT"
NO_TERMINAL_SIGNAL_STALE = "NO_TERMINAL_SIGNAL_STALE"
HANDLER_START_FAILED = "HANDLER_START_FAILED"  # the handler could not be started (no process to spare, a copy failed)
# The error codes the orchestrator records for a run on its own account: what became of the run around its handler
# (a stop, a lease, a timeout, no payload, the output's bound, a start that failed) and of the store. A handler's
# payload may not use one (``MALFORMED_PAYLOAD``): ``status`` would show a stop or a broken store that never was, and
# a handler's own ``WORKER_STOPPED`` could be taken for a stop of its worker (``state.counted_stop``). The
# handler's side of the orchestrator writes ``MALFORMED_PAYLOAD`` and ``HANDLER_ERROR`` in payloads (``handler_result``,
# ``llm``), and ``INVALID_INPUT`` is a handler's own check of its input: those stay open.
# ``tests/unit/test_payload.py`` checks that every code the worker writes is here; the literals stand for constants of
# modules that import this one
# (``state``: WORKER_STOPPED*, ``leases``, ``output_cap``, ``handlers.command``).
RESERVED_ERROR_CODES = frozenset({
    "WORKER_STOPPED", "WORKER_STOPPED_BEFORE_START", NO_TERMINAL_SIGNAL_EXIT, NO_TERMINAL_SIGNAL_TIMEOUT,
    NO_TERMINAL_SIGNAL_STALE, "LEASE_NOT_RENEWED", LeaseLostError.code, "OUTPUT_TOO_LARGE", HANDLER_START_FAILED,
    "COMMAND_NOT_FOUND", PathEscapeError.code, StorageError.code, IntegrityError.code, ContextSignatureInvalid.code})
# a terminal file holding none but these (JSON's whitespace) holds no payload: its run ended without one
JSON_WHITESPACE = b" \t\n\r"
NOT_UNICODE = ("the terminal payload holds text that is not valid Unicode (a lone surrogate such as \\udcff, "
               "e.g. a file name or bytes that are not UTF-8 decoded with 'surrogateescape'): decode such bytes "
               "with errors='replace', or send them as base64")


@dataclass(frozen=True)
class Payload:
    """A validated terminal payload (the fields of ``TerminalPayload``)."""

    status: str
    summary: str
    question: str | None = None
    output: Any = None
    artifacts: list[str] = field(default_factory=list)
    retryable: bool = True
    error_code: str | None = None
    retry_after: float | None = None  # seconds the next attempt waits at least (a service's ``Retry-After``)


def seconds_to_wait(value: Any) -> bool:
    """Whether ``value`` is a ``retry_after`` the model takes: a finite float, or a whole number of any size (JSON's
    have no bound), not negative (a bool, a string, anything else: the model's error)."""
    return (type(value) is float and math.isfinite(value) or type(value) is int) and value >= 0


def cut_wait(seconds: float) -> float:
    """A valid ``retry_after`` as the wait the retry keeps: at most ``MAX_RETRY_AFTER_SECONDS``, a longer one asked
    cut to it. A whole number no float holds (400 digits; a Python handler's ``10**400``) is compared as it is, never
    made a float first: until 2026-12-07 it was ``MALFORMED_PAYLOAD`` ("Input should be a valid number")."""
    return float(min(seconds, MAX_RETRY_AFTER_SECONDS))


def _accept(data: dict[str, Any]) -> Payload | None:
    """``data`` as a ``Payload`` when it is plainly valid, else ``None`` (ask the model)."""
    if not data.keys() <= _FIELDS:
        return None
    status, summary = data.get("status"), data.get("summary")
    question, artifacts = data.get("question"), data.get("artifacts", [])
    retryable, error_code = data.get("retryable", True), data.get("error_code")
    output, retry_after = data.get("output"), data.get("retry_after")
    if not (type(status) is str and status in STATUSES and plain_str(summary) and len(summary) <= MAX_TEXT
            and (question is None or (plain_str(question) and len(question) <= MAX_TEXT))
            and type(artifacts) is list and len(artifacts) <= MAX_ARTIFACTS and all(map(plain_str, artifacts))
            and type(retryable) is bool
            and (error_code is None or (plain_str(error_code) and _ERROR_CODE.fullmatch(error_code)
                                        and error_code not in RESERVED_ERROR_CODES))
            and (retry_after is None or seconds_to_wait(retry_after))
            and plain_json(output, 1)):  # output sits one level down: the payload's depth limit holds
        return None
    if status == NEEDS_HUMAN and not (question or "").strip():
        return None  # the model's own error message
    return Payload(status, summary, question, output, list(artifacts), retryable, error_code,
                   None if retry_after is None else cut_wait(retry_after))


def too_large(size: int) -> MalformedPayloadError:
    """The error for a payload of ``size`` bytes, over ``MAX_PAYLOAD_BYTES``: whoever reads one stops at the limit
    (``runner.Child.payload``, ``handler_host.HostRun``), so a 400 MB file costs the worker no more than 1 MiB."""
    return MalformedPayloadError(f"the terminal payload is {size} bytes (at most {MAX_PAYLOAD_BYTES})",
                                 size=size)


def parse_payload(raw: bytes | str | dict[str, Any], artifacts_dir: Path) -> Payload:
    """Validate a payload (JSON text or an already decoded object); raise ``MalformedPayloadError``."""
    if isinstance(raw, (bytes, str)):
        if len(raw) > MAX_PAYLOAD_BYTES:
            raise too_large(len(raw))
        try:
            data = loads_unique(raw)
        except DuplicateKeyError as exc:  # JSON would keep one of its values: the other would be lost unsaid
            raise MalformedPayloadError(f"the terminal payload has {exc}: JSON keeps only one of its values, so "
                                        "the payload is refused rather than stored without the other (a Python "
                                        "handler's keys 1 and '1' are both written \"1\")") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedPayloadError(f"the terminal payload is not valid JSON: {exc}") from None
        except RecursionError:
            raise MalformedPayloadError("the terminal payload is nested too deeply") from None
    else:
        data = raw
    payload = _accept(data) if isinstance(data, dict) else None  # a plainly valid payload is walked once
    if payload is None:
        if json_depth(data) > MAX_JSON_DEPTH:
            raise MalformedPayloadError(f"the terminal payload is nested deeper than {MAX_JSON_DEPTH} levels")
        if not isinstance(data, dict):
            raise MalformedPayloadError(f"the terminal payload must be a JSON object, not {type(data).__name__}")
        from orchestrator.payload_model import validate

        try:
            model = validate(data)
        except ValueError as exc:
            raise MalformedPayloadError(sanitize_text(f"invalid terminal payload: {exc}")) from None
        payload = Payload(model.status, model.summary, model.question, model.output, list(model.artifacts),
                          model.retryable, model.error_code, model.retry_after)
        try:  # the fast check (``plain_json``) already guarantees this for the payloads it accepts
            # UTF-8, as every event is written: the model takes a lone surrogate in the output (an object's key
            # too) and in an artifact path, which no event can hold (``signing.canonical`` would raise)
            json.dumps([payload.output, payload.artifacts], ensure_ascii=False, allow_nan=False).encode()
        except UnicodeEncodeError:
            raise MalformedPayloadError(NOT_UNICODE) from None
        except (TypeError, ValueError) as exc:
            raise MalformedPayloadError(f"the payload's output is not plain JSON: {not_json_reason(exc)}") from None
    for rel in payload.artifacts:
        try:
            validate_artifact_path(artifacts_dir, rel)
        except PathEscapeError as exc:
            raise MalformedPayloadError(f"artifact outside the job's folder: {exc.message}") from None
    return payload
