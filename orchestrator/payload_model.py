"""The terminal payload's pydantic model: the reference ``orchestrator.payload`` falls back to.

Imported only when a payload is not plainly valid (see ``orchestrator.payload``), so a worker
whose handlers answer well-formed payloads never loads pydantic for them.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.payload import (DONE, ERROR_CODE_PATTERN, FAILED, MAX_ARTIFACTS, MAX_TEXT, NEEDS_AUDIT,
                                  NEEDS_HUMAN, RESERVED_ERROR_CODES, cut_wait, seconds_to_wait)
from orchestrator.security import validation_summary


class TerminalPayload(BaseModel):
    """``{"status", "summary", "question", "output", "artifacts", "retryable"}``; ``error_code`` and ``retry_after``
    (seconds the next attempt waits at least, not negative, a whole number of any size; a bool or a string is
    refused) are optional."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: Literal[DONE, NEEDS_HUMAN, NEEDS_AUDIT, FAILED]  # type: ignore[valid-type]
    summary: str = Field(max_length=MAX_TEXT)
    question: Optional[str] = Field(default=None, max_length=MAX_TEXT)
    output: Any = None
    artifacts: list[str] = Field(default_factory=list, max_length=MAX_ARTIFACTS)
    retryable: bool = True
    error_code: Optional[str] = Field(default=None, pattern=f"^{ERROR_CODE_PATTERN}$")
    retry_after: Optional[float] = Field(default=None, ge=0, allow_inf_nan=False, strict=True)

    @model_validator(mode="after")
    def _question_for_humans(self) -> "TerminalPayload":
        if self.status == NEEDS_HUMAN and not (self.question or "").strip():
            raise ValueError("a needs_human payload needs a non-empty 'question'")
        return self

    @field_validator("retry_after", mode="before")
    @classmethod
    def _cut_to_the_bound(cls, value: Any) -> Any:
        """A wait past ``MAX_RETRY_AFTER_SECONDS`` cut to it (``cut_wait``), as the acceptor does: before the float
        check, which a whole number past 1e308 failed; anything else as it is, for the checks to refuse."""
        return cut_wait(value) if seconds_to_wait(value) else value

    @field_validator("error_code")
    @classmethod
    def _not_reserved(cls, code: Optional[str]) -> Optional[str]:
        if code in RESERVED_ERROR_CODES:
            raise ValueError(f"error_code {code!r} is reserved for the orchestrator, which records it for a run on "
                             f"its own account; use a code of the handler's own (reserved: "
                             f"{', '.join(sorted(RESERVED_ERROR_CODES))})")
        return code


def validate(data: dict[str, Any]) -> TerminalPayload:
    """The model's verdict; a ``ValueError`` whose text is the short form of pydantic's errors."""
    try:
        return TerminalPayload.model_validate(data)
    except ValidationError as exc:
        raise ValueError(validation_summary(exc.errors(), "payload")) from None
