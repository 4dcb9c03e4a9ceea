"""Operator actions: approve, revise, resume, cancel.

Each action reads the job, decides from the replayed state, heals a missing audit entry left by
a crash (unless it refuses: a refused action writes nothing), and appends one event (plus its
audit entry) with the head it decided from as the expected sequence. Deciding is where
idempotency lives:

* the state fits the action: it is applied (a pending question or audit is open), unless the job
  asks again exactly what the last decision answered (same question, same output) and this is that
  same decision again: a retry of it, already applied, unless the caller says ``again``;
* the state does not fit, but the decision that closed the *last* open question/audit is this
  same action with the same text: it was already applied, nothing is written, success;
* it was closed by this action with a *different* text: ``ACTION_CONFLICT`` (exit 5);
* otherwise: ``INVALID_TRANSITION`` (exit 5), from the reducer's own transition table.

Two operators racing the same action both decide "apply"; the store lets exactly one append
through (``expected_seq``), the other gets ``ConcurrencyError``, re-reads, and now finds the
action already applied. Text typed by an operator is sanitized before it is written anywhere.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from orchestrator import audit
from orchestrator.errors import (ActionConflictError, ChatMessageError, JobIdMismatchError, ConcurrencyError, ContextSignatureInvalid, InvalidInputError,
                                 InvalidTransitionError)
from orchestrator.limits import MAX_TEXT_CHARS, a_time, is_unicode, true_or_false
from orchestrator.security import is_assigned_job_id, one_line, sanitize_text, validate_id
from orchestrator.state import AWAITING_AUDIT, CANCELLED, WAITING_HUMAN, check_transition

if TYPE_CHECKING:
    from orchestrator.api import JobView, Orchestrator

MAX_RACE_RETRIES = 8
# invisible characters that chat clients and web pages paste into text: trimmed like spaces at its ends
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"

# action -> (event type, the data field compared for "same action", the state it needs)
ACTIONS: dict[str, tuple[str, str | None]] = {
    "approve": ("job_approved", None),  # a repeated approve is the same action whatever its note
    "revise": ("job_revised", "notes"),
    "resume": ("job_resumed", "answer"),
    "cancel": ("job_cancelled", None),
}
DECISIONS = frozenset(event_type for event_type, _ in ACTIONS.values())
_PAST = {"approve": "approved", "revise": "revised", "resume": "resumed", "cancel": "cancelled"}


@dataclass(frozen=True)
class ControlResult:
    """What an action did: ``applied`` (an event was written) or ``already_applied`` (nothing was)."""

    job_id: str
    action: str
    applied: bool
    event_type: str
    event_seq: int  # the event written now, or the earlier event that already did it
    state: str
    message: str
    # ``{code, message}``: the event and its entry are durable, a record after them is not (``HEAD_RECORD_NOT_WRITTEN``,
    # also logged); the action is done all the same, and is not to be repeated
    warnings: tuple[dict[str, str], ...] = ()

    @property
    def already_applied(self) -> bool:
        return not self.applied

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "already_applied": self.already_applied}


def approve(orch: "Orchestrator", job_id: str, note: str = "", *, now: float | None = None) -> ControlResult:
    return _act(orch, job_id, "approve", {"note": _clean(note, "note")}, now)


def revise(orch: "Orchestrator", job_id: str, notes: str, *, note: str = "", now: float | None = None,
           again: bool = False) -> ControlResult:
    """``note`` is an optional comment for the audit entry (default: the notes themselves); ``again``: the
    same notes as the last revise are a new decision even when the job shows the same output again."""
    return _act(orch, job_id, "revise", {"notes": _clean(notes, "revision notes", required=True)}, now,
                note=_clean(note, "note"), again=again)


def resume(orch: "Orchestrator", job_id: str, answer: str, *, note: str = "", now: float | None = None,
           via: str | None = None, again: bool = False) -> ControlResult:
    """``note`` is an optional comment for the audit entry (default: the answer itself); ``again``: the same
    answer as the last resume is a new decision even when the job asks the same question again."""
    return _act(orch, job_id, "resume", {"answer": _clean(answer, "answer", required=True)}, now,
                note=_clean(note, "note"), via=via, again=again)


def cancel(orch: "Orchestrator", job_id: str, reason: str = "", *, now: float | None = None) -> ControlResult:
    return _act(orch, job_id, "cancel", {"reason": _clean(reason, "reason")}, now)


def trim(text: str) -> str:
    """``text`` without the spaces and invisible characters (``ZERO_WIDTH``) at its ends."""
    start, end = 0, len(text)
    while start < end and (text[start].isspace() or text[start] in ZERO_WIDTH):
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] in ZERO_WIDTH):
        end -= 1
    return text[start:end]


def canonical_text(text: str) -> str:
    """A control text in the one form it is written and compared in: NFC (an "é" typed as one code point or as "e"
    and an accent is the same text), lines ending in LF (a message pasted with CRLF), trimmed (``trim``)."""
    return trim(unicodedata.normalize("NFC", text.replace("\r\n", "\n")))


def _same(stored: Any, given: str) -> bool:
    """Whether a text written by an earlier action (perhaps before texts were written canonically) is ``given``."""
    return isinstance(stored, str) and canonical_text(stored) == given


def _require_text(text: Any, what: str) -> str:
    """``text`` if it is a string (a Python caller may pass anything), else ``INVALID_INPUT``."""
    if not isinstance(text, str):
        raise InvalidInputError(f"the {what} must be text (str), not {type(text).__name__}; nothing was written")
    return text


def _clean(text: str | None, what: str, *, required: bool = False) -> str:
    """An operator's text as it is written: canonical (``canonical_text``), then redacted (``sanitize_text``).
    Its length is checked before the redaction, which can lengthen it: the limit is on what the operator gave."""
    text = _require_text("" if text is None else text, what)
    if not is_unicode(text):  # checked before anything is written: the event could be signed, and its entry not
        raise InvalidInputError(f"the {what} is not valid Unicode (bytes that are not UTF-8?); nothing was written")
    text = canonical_text(text)
    if required and not text:
        raise InvalidInputError(f"the {what} must not be empty; nothing was written")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInputError(f"the {what} is {len(text)} characters long, more than the {MAX_TEXT_CHARS} a control "
                                "text may have; nothing was written")
    return sanitize_text(text)


def _act(orch: "Orchestrator", job_id: str, action: str, data: dict[str, Any], now: float | None, *,
         note: str = "", via: str | None = None, again: bool = False) -> ControlResult:
    event_type, _ = ACTIONS[action]
    true_or_false(again, "again")  # "no" is truthy: a repeat would be written as a new decision
    a_time(now)  # not a TypeError, nor a bool's event stamped 1970-01-01T00:00:01Z
    # the entry's comment and channel go into the event too, so an entry healed after a crash keeps them
    extra = {k: v for k, v in (("note", note if note not in data.values() else ""), ("via", via)) if v}
    healed: list[dict[str, str]] = []  # warnings of an entry healed whose records after it were not written
    for _ in range(MAX_RACE_RETRIES):
        view = orch.load(job_id)
        # every action may write the audit log (its entry, a healed one, a refusal): none starts without it
        audit.require_writable(orch, f"cannot {action} job {job_id}: its audit entry could not be written, so "
                                     "nothing was written")
        if not view.ok:
            _refuse_tampered(orch, view, action, now)
        earlier = _already_applied(view, action, data, again)  # ACTION_CONFLICT before anything is written
        if earlier is None:
            _check_fits(view, action)
        # the action goes ahead or was applied already (a retry after a crash): an entry a crash left missing is
        # written now, before this action's own; a refused action writes nothing, not even that one
        entries = audit.heal(orch, [view], now=now, warnings=healed)  # kept if a racing writer decides again
        if earlier is not None:
            return replace(earlier, warnings=(*healed, *earlier.warnings),
                           message=_healed_note(earlier.message, entries))
        event_data = {**data, **extra}
        if action == "resume":
            event_data["question"] = view.state.question
        try:
            new = orch.append(view, job_id, [(event_type, event_data)], run_id=view.state.run_id, now=now,
                              audit=(action, audit.note_of(event_type, event_data)))
        except ConcurrencyError:
            continue  # someone wrote first: read again and decide again
        return ControlResult(job_id, action, True, event_type, new.head.seq, new.state.state,
                             f"{_PAST[action]} job {job_id} (event {new.head.seq}); state is now {new.state.state}"
                             + (f" (via {via})" if via else ""), (*healed, *new.warnings))
    raise ConcurrencyError(f"job {job_id} kept changing while deciding {action}; run the command again", job_id=job_id)


def _check_fits(view: "JobView", action: str) -> None:
    """``INVALID_TRANSITION`` (from the reducer's table) when ``action`` does not fit the job's state, naming the
    other decision that came first if one did."""
    state = view.state.state if view.state else None
    try:
        check_transition(state, ACTIONS[action][0])
    except InvalidTransitionError as exc:
        why = exc.message + _decided_otherwise(view, action)
        raise InvalidTransitionError(f"cannot {action} job {view.job_id}: {why}; nothing was written",
                                     job_id=view.job_id, **exc.details) from None


def _refuse_tampered(orch: "Orchestrator", view: "JobView", action: str, now: float | None) -> None:
    """A job whose history does not verify is never acted on; the refusal is a system decision."""
    err = view.integrity_error() or {}
    audit.record(orch, job_id=view.job_id, action="integrity_refusal", actor=orch.actor,
                 run_id=view.state.run_id if view.state else None,
                 note=f"{action} refused: {err.get('message', '')}", now=now)
    raise ContextSignatureInvalid(f"refusing to {action} job {view.job_id}: {err.get('message', '')}",
                                  job_id=view.job_id, problems=err.get("problems", []))


def _opens(action: str, rec: dict[str, Any]) -> bool:
    """Does this event open the question (or audit) that ``action`` answers?"""
    if action == "resume":
        return rec["type"] == "human_input_requested" or (
            rec["type"] == "stale_recovered" and rec.get("data", {}).get("to") == WAITING_HUMAN)
    return rec["type"] == "audit_requested"


def _closing(records: list[dict[str, Any]], opened: int) -> dict[str, Any] | None:
    """The decision that closed the question or audit opened at ``records[opened]``, if any yet."""
    return next((r for r in records[opened + 1:] if r["type"] in DECISIONS), None)


def _decided_otherwise(view: "JobView", action: str) -> str:
    """For a refusal: the other decision that closed the last question or audit ``action`` answers, if one did
    (the loser of an approve/revise or resume/cancel race learns what won, by whom)."""
    if action == "cancel":
        return ""
    opened = max((i for i, r in enumerate(view.stream.records) if _opens(action, r)), default=None)
    closing = _closing(view.stream.records, opened) if opened is not None else None
    if closing is None or closing["type"] == ACTIONS[action][0]:
        return ""
    past = _PAST[next(a for a, (t, _) in ACTIONS.items() if t == closing["type"])]
    return f"; it was {past} at {closing['ts']} by {one_line(closing['actor'])} (event {closing['seq']})"


def _already_applied(view: "JobView", action: str, data: dict[str, Any], again: bool = False) -> ControlResult | None:
    """The earlier event that already did exactly this, or None; raises on a conflicting one."""
    state = view.state.state if view.state else None
    event_type, field = ACTIONS[action]
    records = view.stream.records
    if action == "cancel":
        if state != CANCELLED:
            return None
        done = next(r for r in reversed(records) if r["type"] == "job_cancelled")
        return _repeat(view, action, done)
    if state == (WAITING_HUMAN if action == "resume" else AWAITING_AUDIT):
        return None if again else _asked_again(view, action, data)
    opened = max((i for i, r in enumerate(records) if _opens(action, r)), default=None)
    if opened is None:
        return None
    closing = _closing(records, opened)
    if closing is None or closing["type"] != event_type:
        return None  # closed by another action (or not at all): the transition check explains
    if field is None or _same(closing["data"].get(field), data[field]):
        return _repeat(view, action, closing)
    raise ActionConflictError(
        f"job {view.job_id} was already {_PAST[action]} at {closing['ts']} by {one_line(closing['actor'])} "
        f"(event {closing['seq']}) with {'other' if field == 'notes' else 'a different'} {field}: "
        f"{closing['data'].get(field)!r}; "
        f"nothing was written", job_id=view.job_id, event_seq=closing["seq"])


def _asked_again(view: "JobView", action: str, data: dict[str, Any]) -> ControlResult | None:
    """A question (or audit) is open. If the job asks exactly what the last one asked (same question,
    summary, output and artifacts) and that one was closed by this same decision, this command is a
    retry of that decision, made after the job already re-ran on it: already applied, or every blind
    retry would answer a question its operator never saw. None: a new decision (``again`` also says so)."""
    event_type, field = ACTIONS[action]
    records = view.stream.records
    opened = [i for i, r in enumerate(records) if _opens(action, r)]
    if len(opened) < 2 or records[opened[-2]]["data"] != records[opened[-1]]["data"]:
        return None
    closing = _closing(records, opened[-2])
    if closing is None or closing["type"] != event_type or not _same(closing["data"].get(field), data[field]):
        return None
    asked = records[opened[-1]]
    thing = "asks the same question" if action == "resume" else "shows the same output for audit"
    these = "these" if field == "notes" else "this"
    return ControlResult(view.job_id, action, False, closing["type"], closing["seq"], view.state.state,
                         f"already applied: job {view.job_id} was {_PAST[action]} with {these} {field} at "
                         f"{closing['ts']} by {closing['actor']} (event {closing['seq']}), and {thing} again since "
                         f"(event {asked['seq']}){_NOTHING_WRITTEN}; state is {view.state.state}. To give the same "
                         f"{field} again, add --again")


def _repeat(view: "JobView", action: str, done: dict[str, Any]) -> ControlResult:
    return ControlResult(view.job_id, action, False, done["type"], done["seq"], view.state.state,
                         f"already applied: job {view.job_id} was {_PAST[action]} at {done['ts']} by {done['actor']} "
                         f"(event {done['seq']}){_NOTHING_WRITTEN}; state is {view.state.state}")


_NOTHING_WRITTEN = "; nothing written"  # said of an action already applied, unless the audit heal wrote an entry


def _healed_note(message: str, entries: list[int]) -> str:
    """An action already applied writes nothing of its own, but the audit heal before it may have written the entry
    its first run could not (a full disk): the message says so (it said "nothing written" until 2026-12-06)."""
    if not entries:
        return message
    said = ", ".join(map(str, entries))
    return message.replace(_NOTHING_WRITTEN, f"; only the missing audit entry written now (audit log line {said})", 1)


# -- chat messages ------------------------------------------------------------------------------------
# ``job_id: <id>; <answer>`` as typed or pasted from a chat client: any case and spacing for the
# key (job_id, job id, job-id, jobid), ``:``/``：``/``=`` after it, ``;``/``；``/``,``/``，``/``:`` or
# just a space after the id, optional quotes or backticks around the id, leading chat noise ("> ", "@bot"),
# and the invisible characters chat clients paste (``ZERO_WIDTH``) wherever spacing may be.
# The id must end at a separator (quote, ``;``, ``,``, ``:``, a space, the end): "J<look-alike letter>X" names no
# job, nor does "J<zero-width space>X". A mention's name ends in a letter or digit and the gap after it holds none,
# so mentions split one way only: no backtracking through every split (80 characters of ``@.`` took days).
_GAP = rf"[\s{ZERO_WIDTH}]*"
_JOB_KEY = (rf"job[ \t\xa0_-]?id{_GAP}[:：=]{_GAP}[`'\"“‘]?(?P<id>[A-Za-z0-9][A-Za-z0-9._-]*)[`'\"”’]?"
            rf"(?=[{ZERO_WIDTH}]*(?:[\s;；,，:：]|\Z))")
_NOISE = r"(?:[^A-Za-z0-9]*@[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)*[^A-Za-z0-9]*?"  # "> @bot " before a key
_KEYED = _NOISE + _JOB_KEY + rf"{_GAP}(?:[;；,，:：]{_GAP})?"  # the key, up to where the answer starts
_CHAT = re.compile(rf"^{_KEYED}(?P<answer>.*)\Z", re.I | re.S)
# Further on, in ``_skeleton(answer)``: an id ends at the first character that is not an id character (``K)``,
# ``K。``, ``K<Cyrillic Е>`` name K); markdown may wrap the key (``**job_id:** K``), and any run of characters that
# are neither letters nor digits (spaces, punctuation, symbols, quotes and brackets of any script: ``«K»``, ``「K」``,
# ``{K}``, ``#K``, ``@K``) may stand between the key and the id. The id is matched in a lookahead, so the next search
# starts at it: in ``job_id: job_id: K`` the first key's "id" is the second key. Each run is scanned once: linear.
_NAMED_AGAIN = re.compile(r"(?<![A-Za-z0-9])job[ \t_-]?id[\s*_~]*[:=][\W_]*"
                          r"(?=(?P<id>[A-Za-z0-9][A-Za-z0-9._-]*))", re.I)
# The answer starting with the job's own key again ("job_id: J; job_id: J; ..."), in ``_skeleton(answer)`` too: the key
# in the variants found further on, any run between it and the id (``«J»``, ``「J」``, ``**J**``), and after the id the
# quotes, brackets and markdown that close it (``_closes``) and spacing, then a separator if any (``_AFTER_OWN_KEY``).
_OWN_KEY_AGAIN = re.compile(_NOISE + r"job[ \t_-]?id[\s*_~]*[:=][\W_]*(?P<id>[A-Za-z0-9][A-Za-z0-9._-]*)", re.I)
_AFTER_OWN_KEY = re.compile(r"\s*(?:[;,:.。]\s*)?")


def _skeleton(text: str) -> str:
    """``text`` as a reader sees it, to find the keys in it (never what is stored): full-width forms and no-break
    spaces as ASCII (NFKC), invisible format characters dropped, every dash a '-'."""
    text = unicodedata.normalize("NFKC", text)
    return "".join("-" if unicodedata.category(c) == "Pd" else c for c in text if unicodedata.category(c) != "Cf")


def parse_chat_message(job_id: str, message: str) -> str:
    """The answer in a chat message naming ``job_id``; refuse malformed or other-job messages.

    Ids are compared ignoring case (ULIDs are case-insensitive); the command line's id is used. A message
    that names another job later on (a pasted thread) is refused, like one that names it first; later on, only
    an id shaped like one this orchestrator assigns counts, so an answer may say "job id: unknown".
    """
    m = _CHAT.match(trim(_require_text(message, "chat message")))
    if m is None:
        raise ChatMessageError(f"the message must look like 'job_id: {job_id}; <answer>'; nothing was written")
    named = m.group("id")
    if named.lower() != job_id.lower():
        raise JobIdMismatchError(f"the message names job {named}, not {job_id}; nothing was written "
                                 "(paste the message into the command of the job it names)",
                                 job_id=job_id, message_job_id=named)
    answer = trim(m.group("answer"))
    for other in _NAMED_AGAIN.finditer(_skeleton(answer)):  # a pasted thread, or "job_id: J; job_id: K; ..."
        # An id may end a sentence ("job id: K."): '.', '-', '_' are id characters, but no assigned id ends in one.
        again = other.group("id").rstrip("._-")
        if again.lower() != job_id.lower() and is_assigned_job_id(again):
            raise JobIdMismatchError(f"the message names job {job_id} and then job {again}; nothing was "
                                     "written (paste only the message that answers this job)",
                                     job_id=job_id, message_job_id=again)
    if _only_its_own_keys(job_id, answer):
        raise ChatMessageError(f"the message names job {job_id} but holds no answer after the id; nothing was written")
    return answer


def _only_its_own_keys(job_id: str, answer: str) -> bool:
    """Whether ``answer`` is empty, or holds nothing but ``job_id``'s own key again, once or more, in any form a key
    further on takes (``job_id: J;\njob_id: «J»;``): no answer then. An answer going on after such keys is kept whole
    by the caller. Each key is scanned once: linear."""
    text = _skeleton(answer)
    pos = 0
    while (key := _OWN_KEY_AGAIN.match(text, pos)) and key.group("id").rstrip("._-").lower() == job_id.lower():
        pos = key.end()
        while pos < len(text) and (_closes(text[pos]) or text[pos].isspace()):  # "«J»", "« J »"
            pos += 1
        pos = _AFTER_OWN_KEY.match(text, pos).end()  # type: ignore[union-attr]  (it matches the empty string)
    return not text[pos:].strip()


def _closes(char: str) -> bool:
    """A character that may close an id: a closing quote or bracket of any script (``»``, ``」``, ``”``, ``)``), or
    ASCII quotes, backticks and markdown."""
    return char in "\"'`*_~" or unicodedata.category(char) in ("Pe", "Pf", "Pi")


def resume_from_chat(orch: "Orchestrator", job_id: str, message: str, *, note: str = "",
                     now: float | None = None, again: bool = False) -> ControlResult:
    """Resume ``job_id`` with the answer of a pasted chat message (idempotent like ``resume``)."""
    validate_id(job_id)  # a bad id (an empty one too) is INVALID_ID, as for ``resume``, before the message is read
    return resume(orch, job_id, parse_chat_message(job_id, message), note=note, now=now, via="chat", again=again)
