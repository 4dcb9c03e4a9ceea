"""The terminal payload's pydantic model: the reference ``orchestrator.payload`` falls back to.

Imported only when a payload is not plainly valid (see ``orchestrator.payload``), so a worker
whose handlers answer well-formed payloads never loads pydantic for them.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NEEDS_HUMAN = "needs_human"


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


def validate(data: dict[str, Any]) -> TerminalPayload:
    """The model's verdict; a ``ValueError`` whose text is the short form of pydantic's errors."""
    try:
        return TerminalPayload.model_validate(data)
    except ValidationError as exc:
        raise ValueError(_short(exc.errors())) from None
