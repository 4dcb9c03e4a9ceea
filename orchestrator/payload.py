"""The terminal payload: what a handler hands back when a run ends.

A handler (a command writing ``$ORCH_TERMINAL_FILE``, a Python function returning a dict,
or the ``llm`` handler) produces one JSON object; ``parse_payload`` validates it with
pydantic and checks every artifact path against the job's own folder. Anything wrong is a
``MalformedPayloadError`` (``MALFORMED_PAYLOAD``), which the worker records as an event.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.errors import MalformedPayloadError, PathEscapeError
from orchestrator.limits import MAX_JSON_DEPTH, json_depth
from orchestrator.security import sanitize_text, validate_artifact_path

MAX_PAYLOAD_BYTES = 1024 * 1024
DONE, NEEDS_HUMAN, NEEDS_AUDIT, FAILED = "done", "needs_human", "needs_audit", "failed"


class TerminalPayload(BaseModel):
    """``{"status", "summary", "question", "output", "artifacts", "retryable"}``; ``error_code`` is optional."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: Literal["done", "needs_human", "needs_audit", "failed"]
    summary: str = Field(max_length=10_000)
    question: Optional[str] = Field(default=None, max_length=10_000)
    output: Any = None
    artifacts: list[str] = Field(default_factory=list, max_length=1000)
    retryable: bool = True
    error_code: Optional[str] = Field(default=None, pattern=r"^[A-Z][A-Z0-9_]{0,63}$")

    @model_validator(mode="after")
    def _question_for_humans(self) -> "TerminalPayload":
        if self.status == NEEDS_HUMAN and not (self.question or "").strip():
            raise ValueError("a needs_human payload needs a non-empty 'question'")
        return self


def _short(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "payload"
        parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts)


def parse_payload(raw: bytes | str | dict[str, Any], artifacts_dir: Path) -> TerminalPayload:
    """Validate a payload (JSON text or an already decoded object); raise ``MalformedPayloadError``."""
    if isinstance(raw, (bytes, str)):
        if len(raw) > MAX_PAYLOAD_BYTES:
            raise MalformedPayloadError(f"the terminal payload is {len(raw)} bytes (at most {MAX_PAYLOAD_BYTES})")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedPayloadError(f"the terminal payload is not valid JSON: {exc}") from None
        except RecursionError:
            raise MalformedPayloadError("the terminal payload is nested too deeply") from None
    else:
        data = raw
    if json_depth(data) > MAX_JSON_DEPTH:
        raise MalformedPayloadError(f"the terminal payload is nested deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(data, dict):
        raise MalformedPayloadError(f"the terminal payload must be a JSON object, not {type(data).__name__}")
    try:
        payload = TerminalPayload.model_validate(data)
    except ValidationError as exc:
        raise MalformedPayloadError(sanitize_text(f"invalid terminal payload: {_short(exc.errors())}")) from None
    try:
        json.dumps(payload.output, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MalformedPayloadError(f"the payload's output is not plain JSON: {exc}") from None
    for rel in payload.artifacts:
        try:
            validate_artifact_path(artifacts_dir, rel)
        except PathEscapeError as exc:
            raise MalformedPayloadError(f"artifact outside the job's folder: {exc.message}") from None
    return payload
