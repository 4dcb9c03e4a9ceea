"""``from utils.security import sanitize_text``, as the shared ops runbook writes it: the same
functions as ``orchestrator.security`` (the one implementation), for its release check 3."""
from orchestrator.security import REDACTED, sanitize_obj, sanitize_text, validate_id

__all__ = ["REDACTED", "sanitize_obj", "sanitize_text", "validate_id"]
