"""What a job's first event holds and names: its id (a ULID, or one an idempotency key maps to), the digest of the
context it was submitted with, and a long input's bytes as its line holds them.

A submit makes these (``Orchestrator.submit_job``), a read checks the digest (``context_matches``: a job whose input
or options were edited is ``CONTEXT_MISMATCH``), and a worker sends a long input's bytes to its handler process as
they are (``encoded_input``).
"""
from __future__ import annotations

import hashlib
import os
import time
from typing import TYPE_CHECKING, Any

from orchestrator.signing import SUBMITTED_CONTEXT_MIN_BYTES, canonical, submitted_context

if TYPE_CHECKING:
    from orchestrator.state import JobState
    from orchestrator.views import JobView

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_INPUT_KEY = b'{"input":'  # how a context's canonical encoding starts (its keys sort ``input``, ``kind``, ``options``)


def new_job_id(now: float | None = None) -> str:
    """A ULID: 48-bit milliseconds + 80 random bits, so ids sort by submission time."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")  # ``secrets.token_bytes``, without its imports
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def key_job_id(project_id: str, key: str) -> str:
    """The job id an idempotency key maps to: the same key always names the same job."""
    return "key-" + hashlib.sha256(f"{project_id}\0{key}".encode()).hexdigest()[:32]


def context_digest(kind: str, input: Any, options: dict[str, Any], encoded_input: bytes | None = None) -> str:
    """The SHA-256 of ``canonical({"kind": kind, "input": input, "options": options})``, hashed in its pieces (the
    keys sort ``input``, ``kind``, ``options``), so that a submit, which encoded the input to measure it, passes it
    as ``encoded_input`` and a large input is not encoded again."""
    digest = hashlib.sha256(_INPUT_KEY)
    digest.update(canonical(input) if encoded_input is None else encoded_input)
    digest.update(_after_input(kind, options) + b"}")
    return digest.hexdigest()


def _after_input(kind: Any, options: Any) -> bytes:
    """What follows the input in a context's canonical encoding: its kind and options (keys sort ``input``,
    ``kind``, ``options``)."""
    return b',"kind":' + canonical(kind) + b',"options":' + canonical(options)


def context_matches(line: bytes, record: dict[str, Any], state: JobState) -> bool:
    """Whether a ``job_submitted`` line's ``context_digest`` is that of the context its job was replayed with
    (``CONTEXT_MISMATCH`` if not). A long line's context is hashed where the line holds it (``submitted_context``:
    ~15 ms of every read of a job with a 1 MiB input), when the state holds the very values parsed from that line;
    those bytes are the context's canonical encoding when the line is canonical, which every read checks where no
    head record vouches for the line (a line vouched for was signed so by a trusted key). Otherwise, and for a
    short line, the context is encoded again."""
    data = record.get("data")
    expected = data.get("context_digest") if isinstance(data, dict) else None
    if not isinstance(expected, str):
        return False
    if (len(line) >= SUBMITTED_CONTEXT_MIN_BYTES and data.get("input") is state.input
            and data.get("options") is state.options and data.get("kind") == state.kind
            and submitted_context(line, record) is not None):
        return True
    return expected == context_digest(state.kind, state.input, dict(state.options))


def encoded_input(view: JobView) -> bytes | None:
    """A job's input as its long ``job_submitted`` line holds it, canonical JSON (``submitted_context``): what a
    worker sends its handler process as it is, rather than encoding up to 1 MiB again (~12 ms). None for a short
    line or one that does not hold it so."""
    record = view.stream.first_record()  # a claim's own line is not parsed for it
    if record is None:
        return None
    line = view.stream.lines[0].raw
    found = submitted_context(line, record)  # None for a short line; its ``data`` a dict holding a digest if not
    if found is None:
        return None
    data = record["data"]
    try:
        tail = _after_input(data.get("kind"), data.get("options"))
    except ValueError:
        return None
    context = line[found[0]:found[1]]
    head = _INPUT_KEY[1:]
    if len(context) <= len(head) + len(tail) or not context.startswith(head) or not context.endswith(tail):
        return None
    return context[len(head):len(context) - len(tail)]
