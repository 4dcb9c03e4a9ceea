"""A submit: a job's first event (``job_submitted``) checked, made and written, or, for an idempotency key that
names a job already, that job (``Orchestrator.submit_job``).

The kind, key and actor are checked and the input measured before anything is written; what the first event holds
and names (its id, its context digest) is ``submitted``'s.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.appending import append_lines
from orchestrator.command_input import COMMAND_KIND, parse_command_input
from orchestrator.errors import ConcurrencyError, ContextSignatureInvalid, InvalidInputError
from orchestrator.limits import KIND_RULE, MAX_INPUT_BYTES, an_actor, is_kind
from orchestrator.security import shown, validate_id
from orchestrator.signing import SUBMITTED_CONTEXT_MIN_BYTES, Encoded, canonical
from orchestrator.store.base import HEADS_AREA
from orchestrator.submitted import context_digest, key_job_id, new_job_id
from orchestrator.views import Submission

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator


def submit_job(orch: Orchestrator, kind: str, input: Any, *, audit: bool, key: str | None, max_attempts: int,
               timeout: float | None, priority: int, actor: str | None) -> Submission:
    """``Orchestrator.submit_job``. The key is checked here, not in ``JobOptions``, which also describes older
    histories (free-text keys)."""
    from orchestrator.event_models import encoded_value, job_options, refuse_too_deep

    if not is_kind(kind):  # named here, not as a model's error
        raise InvalidInputError(f"the kind must be a handler name of {KIND_RULE}, not {shown(kind)}")
    if key is not None:  # it is stored in the job's first event and printed: an id, never free text
        validate_id(key, "idempotency key")
    if actor is not None:  # stored in the first event as given to Orchestrator(actor=...) is: checked, sanitized
        actor = an_actor(actor)
    options = job_options(audit=audit, max_attempts=max_attempts, timeout=timeout, priority=priority, key=key)
    encoded_input = encoded_value(input, "the job input")
    size = len(encoded_input)
    if size > MAX_INPUT_BYTES:
        raise InvalidInputError(f"the job input is {size} bytes as JSON (at most {MAX_INPUT_BYTES}); "
                                "pass large data as a file path or an artifact")
    refuse_too_deep(encoded_input, "the job input")  # after the size: a large input is refused unwalked
    # a long input's line holds the bytes measured and hashed here, not the input encoded again (~17 ms a MB); a
    # short one is encoded again, which costs less than the splice (``Encoded``)
    sealed = Encoded(input, encoded_input) if size >= SUBMITTED_CONTEXT_MIN_BYTES else input
    data = {"kind": kind, "input": sealed, "options": options,
            "context_digest": context_digest(kind, input, options, encoded_input)}
    job_id = key_job_id(orch.project_id, key) if key else new_job_id(orch.clock())
    # a key names the same job every time: one whose events were all removed still has its head
    # record, and a submit must not write a new first event over that evidence
    if key and orch.store.get_aux(HEADS_AREA, job_id) is not None:
        return _submitted_before(orch, job_id, key, (kind, encoded_input, options))
    if kind == COMMAND_KIND:  # after the key's job: one submitted before this check is still the same job
        parse_command_input(input)  # a few microseconds; llm takes any input, a Python handler's is its own
    try:
        _, _, warnings = append_lines(orch, None, job_id, [("job_submitted", data)], actor=actor)  # no view
    except ConcurrencyError:
        if not key:
            raise
        return _submitted_before(orch, job_id, key, (kind, encoded_input, options))
    return Submission(job_id, created=True, warnings=warnings)


def _submitted_before(orch: Orchestrator, job_id: str, key: str,
                      request: tuple[str, bytes, dict[str, Any]]) -> Submission:
    """A submit whose idempotency ``key`` names an existing job: that job, if it was the same
    ``(kind, input, options)``, the input given as the submit encoded it (not encoded again); refused if its
    history does not verify (or was removed)."""
    existing = orch.load(job_id)
    if not existing.ok:
        err = existing.integrity_error() or {}
        raise ContextSignatureInvalid(f"idempotency key {key!r} names job {job_id}, whose {err.get('message', '')}; "
                                      "nothing was written", job_id=job_id, problems=err.get("problems", []))
    first = existing.stream.records[0]["data"]
    kind, encoded, options = request  # the input as its JSON form: a tuple given is the list stored
    if (first.get("kind"), canonical(first.get("input")), first.get("options")) != (kind, encoded, options):
        raise InvalidInputError(f"idempotency key {key!r} already names job {job_id} with a different "
                                "kind, input or options", job_id=job_id) from None
    return Submission(job_id, created=False)
