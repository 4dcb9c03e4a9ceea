"""What ``Orchestrator.append`` is given, checked before anything is written.

``append`` is the low-level write of every method and of the worker, and public: each argument a line, an audit entry
or a record would hold as given is checked here, so that a bad one is ``INVALID_INPUT`` (or ``INVALID_ID``) naming it,
never a ``TypeError`` or ``ValueError`` raised after the events were written (until 2026-12-07 a malformed ``aux`` raised
so on files with its events durable, an ``actor`` was stored unredacted, a ``run_id`` of 5 or ``"r\\nx"`` as given). The
events' data is checked by their models (``events.validate_data``).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from orchestrator.audit import MARKERS_AREA
from orchestrator.errors import InvalidInputError
from orchestrator.limits import an_actor, instance_or_none, is_unicode, whole_number
from orchestrator.security import is_id, shown, validate_id
from orchestrator.store.base import AUDIT_HEAD, HEADS_AREA, SLOT_BYTES, check_aux_name
from orchestrator.views import JobView

MAX_ACTION_CHARS = 64  # an audit entry's action: a name such as ``cancel`` or ``stale_recovered``
# the records an append writes itself (a head record, the audit log's, an entry's marker): never a caller's ``aux``
OWN_AREAS = frozenset({HEADS_AREA, AUDIT_HEAD[0], MARKERS_AREA})


def checked_append(view: Any, new: Any, *, run_id: Any, actor: Any, audit: Any, fence: Any,
                   aux: Any) -> tuple[str | None, tuple[str, str] | None]:
    """Check ``append``'s arguments (``INVALID_INPUT`` or ``INVALID_ID`` naming the first that is wrong); returns the
    actor as it is stored (``limits.an_actor``: sanitized), None for the orchestrator's own, and the audit pair as
    it was checked (``checked_audit``), which is what the entry holds.

    Run on every append (each claim and outcome of a worker): each check's usual case is decided inline, and only a
    value it does not settle goes to the function that refuses it with its message."""
    if view is not None and not isinstance(view, JobView):
        instance_or_none(view, JobView, "view", "a JobView (from load or append)")
    check_events(new)
    if run_id is not None and not (type(run_id) is str and is_id(run_id)):
        validate_id(run_id, "run id")
    if fence is not None and not (type(fence) is int and fence >= 0):
        whole_number(fence, "fence", 0, or_none=True)
    if audit is not None:
        audit = checked_audit(audit)
    if aux is not None:
        check_aux(aux)
    return None if actor is None else stored_actor(actor), audit


# an actor's stored form by its text: a worker's is the same on every append it makes (its redaction, repeated, was
# most of these checks' cost); a few kept, for a program with several workers of its own
_stored_text = functools.lru_cache(maxsize=16)(an_actor)


def stored_actor(actor: Any) -> str:
    """``limits.an_actor(actor)``, kept for a text given before (``_stored_text``). Only an exact ``str`` is looked
    up: a subclass may compare equal to a text it is not."""
    return _stored_text(actor) if type(actor) is str else an_actor(actor)


def check_events(new: Any) -> None:
    """``new``: one or more ``(event type, data)`` pairs (the data is its model's to check)."""
    if isinstance(new, (list, tuple)) and new:
        for pair in new:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)):
                break
        else:
            return
    raise InvalidInputError(f"new must be a list of one or more (event type, data) pairs, not {shown(new)}")


def checked_audit(audit: Any) -> tuple[str, str]:
    """``audit``: an ``(action, note)`` pair; the action a name (it is shown and filtered on as it is), the note text
    (redacted when the entry is made). Returns the pair as it was checked, unpacked once (``tuple``: a tuple as it
    is): a list subclass whose indexing and iteration disagree had one pair checked and another written until
    2026-12-07 (its items typed by index, then unpacked by iterating, and the entry made by index). Each item an
    exact ``str``: a subclass answers the checks and the redaction by its own methods (``isidentifier``, ``lower``),
    so a note it says holds no secret, or an action it says is a name, was written as its text is."""
    pair = tuple(audit) if isinstance(audit, (list, tuple)) else ()
    if not (len(pair) == 2 and type(pair[0]) is str and type(pair[1]) is str):
        raise InvalidInputError(f"audit must be None or an (action, note) pair of texts (str, not a subclass), "
                                f"not {shown(audit)}")
    action, note = pair
    if not (action.isascii() and action.isidentifier() and len(action) <= MAX_ACTION_CHARS):
        raise InvalidInputError(f"audit's action must be a name of 1 to {MAX_ACTION_CHARS} ASCII letters, digits and "
                                f"'_' (such as 'cancel'), not {shown(action)}")
    if not is_unicode(note):
        raise InvalidInputError("audit's note holds text that is not valid Unicode (a lone surrogate such as \\udcff)")
    return pair


def check_aux(aux: Any) -> None:
    """``aux``: ``(area, key) -> bytes`` (None deletes), each a name every store can hold, none of an area the append
    writes itself, each record under ``SLOT_BYTES`` as every store keeps it."""
    if not isinstance(aux, Mapping):
        raise InvalidInputError(f"aux must be None or a mapping of (area, key) to bytes or None, not {shown(aux)}")
    for name, record in aux.items():
        if not (isinstance(name, tuple) and len(name) == 2 and all(isinstance(part, str) for part in name)):
            raise InvalidInputError(f"aux's keys must be (area, key) pairs of texts, not {shown(name)}")
        check_aux_name(*name)
        area, key = name
        if area in OWN_AREAS:
            raise InvalidInputError(f"aux may not write {area}/{key}: the append writes the records of {area}/ itself")
        if record is not None and not (isinstance(record, bytes) and len(record) < SLOT_BYTES):
            raise InvalidInputError(f"aux record {area}/{key} must be None (to delete it) or bytes, fewer than "
                                    f"{SLOT_BYTES} bytes, not {shown(record)}")
