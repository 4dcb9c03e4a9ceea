"""One job's events and audit entries, merged, each with its verification status.

The order (docs/decisions.md, "The audit-timeline's order"): the job's events in sequence order,
always; an audit entry naming one of them right after it; an entry naming none (a released or refused
run, an integrity refusal, or an event the history no longer holds) merged in by its time, never
moving an event, nor above an entry written before it. Times are what each writer's clock said: a
clock stepped back must not show an event above the ones it follows (docs/guarantees.md section 2:
clocks affect only liveness).

Finding the data reads one job and the audit log, never every job:

* ``--job-id J``: the job's events file, and the audit lines that name ``J`` (canonical JSON
  makes ``"job_id":"J"`` an exact byte pattern, so only those lines are parsed);
* ``--run-id R``: the job is found from the audit lines naming ``R``; a run with no audit
  entry is found in the projection cache (``projection.job_of_run``), refreshed incrementally.

The audit log is read before the job, as ``verify`` reads it: an entry is written once its event is durable, so an
action while the timeline reads can never leave an entry naming an event the job's read lacks (only a cut or rolled
back job file can); the entries of the job's read that the log's read lacks are read on, after the action in flight
between its event and its entry (``audit.wait_for_actions``), so that action is no missing entry either.

Status per line: ``ok``; for a job event, the verification problem of that line, or
``AFTER_DAMAGE`` for lines after the first damaged one (never trusted), or
``AUDIT_ENTRY_MISSING`` for an audited event without entry (a warning, as in ``verify``: the event
is the truth, and the entry is written by the next command that may sign); for an audit entry, its
own signature/chain problem (checked against the line before it) or ``AUDIT_EVENT_MISSING`` when
the job event it names is not in the job's history (a cut or rolled back file), or ``IMPORT_INCOMPLETE`` then while
an import into the project has not completed (``import_record.import_begun``: it writes the audit log before the
jobs; one whose process is gone is abandoned, named by an ``IMPORT_ABANDONED`` warning beside those entries), a
warning; its record is read after the job, and the job once more when there is none (``_read_job``: an import
that completed meanwhile wrote the event).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator import audit
from orchestrator.audit import AUDIT_ENTRY_MISSING
from orchestrator.clock import ISO_FORMS, from_iso
from orchestrator.errors import InvalidInputError, JobNotFoundError, PathEscapeError, RunNotFoundError, UnusableFileError
from orchestrator.history import Problem, VerifiedStream, check_head_record, verify_stream
from orchestrator.import_record import IMPORT_ABANDONED, IMPORT_INCOMPLETE, abandoned, import_begun
from orchestrator.security import safe_line, shown, validate_id
from orchestrator.signing import line_hash, parse_line
from orchestrator.state import TRANSITIONS
from orchestrator.store.base import AUDIT_STREAM

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator
    from orchestrator.import_record import UnderWay
    from orchestrator.views import JobView

AUDIT_EVENT_MISSING = "AUDIT_EVENT_MISSING"
AFTER_DAMAGE = "AFTER_DAMAGE"
# what ``action=`` filters on: an audit action or an event type (any other name would silently match nothing)
FILTERS = tuple(sorted(audit.ACTIONS)) + tuple(sorted(set(TRANSITIONS) - audit.ACTIONS))


@dataclass(frozen=True)
class Line:
    ts: str
    source: str  # "event" or "audit"
    seq: int
    what: str  # event type, or audit action
    actor: str
    run_id: str | None
    detail: str
    status: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _detail(rec: dict[str, Any]) -> str:
    d = rec.get("data") or {}
    t = rec.get("type")
    if t == "audit":
        extra = f" -> {d.get('event_type')} #{d.get('event_seq')}" if d.get("event_hash") else ""
        return f"{d.get('note', '')}{extra}{' (healed)' if d.get('healed') else ''}"
    if t == "job_submitted":
        return f"kind={d.get('kind')}"
    if t == "job_claimed":
        return f"worker={d.get('worker_id')} attempt={d.get('attempt')}"
    if t in ("job_failed", "job_timeout", "stale_recovered", "job_released"):
        return f"{d.get('error_code')}: {d.get('error', '')}" + (f" -> {d['to']}" if d.get("to") else "")
    if t == "job_resumed":  # it also holds the question it answers: the answer is what happened
        return f"answer: {d.get('answer', '')}" + (f" (question: {d['question']})" if d.get("question") else "")
    for key in ("question", "answer", "notes", "note", "reason", "summary"):
        if d.get(key):
            return f"{key}: {d[key]}"
    return ""


def find_job_of_run(orch: "Orchestrator", run_id: str) -> str:
    try:
        orch.store.refuse_unusable(AUDIT_STREAM)
        _, entries = audit.entries_for(orch, run_id=run_id)
    except (PathEscapeError, UnusableFileError):  # the audit log is a link (never followed), a FIFO...: ask the cache
        entries = []  # (``timeline`` reports it)
    if entries:
        return entries[0][1]["job_id"]
    from orchestrator.projection import job_of_run

    job_id = job_of_run(orch, run_id)
    if job_id is None:
        raise RunNotFoundError(f"no job in project {orch.project_id!r} has a run {run_id!r}", run_id=run_id)
    return job_id


def timeline(orch: "Orchestrator", *, job_id: str | None = None, run_id: str | None = None,
             since: str | None = None, action: str | None = None, heal: bool = True) -> dict[str, Any]:
    if job_id is None and run_id is None:
        raise InvalidInputError("timeline needs a job_id or a run_id")  # the command says --job-id or --run-id itself
    if action is not None and action not in FILTERS:
        raise InvalidInputError(f"action {shown(action)} is no audit action or event type; one of: {', '.join(FILTERS)}")
    if run_id is not None:
        validate_id(run_id, "run id")
    if job_id is None:
        job_id = find_job_of_run(orch, run_id)  # type: ignore[arg-type]
    try:
        if since is not None and not isinstance(since, str):
            raise ValueError(since)
        since_t = from_iso(since) if since is not None else None  # "" is no time, not no filter
    except (ValueError, OverflowError):
        raise InvalidInputError(f"since {shown(since)} is not an ISO-8601 time ({ISO_FORMS})") from None
    # the audit log BEFORE the job: an entry is written once its event is durable, so each entry read names an event
    # the job's read holds, unless its file was cut back (until 2026-12-07 the job was read first, and an action
    # between the two reads was AUDIT_EVENT_MISSING, exit 7, on a healthy job)
    log = _read_log(orch, job_id)
    view, hashes, import_began = _read_job(orch, job_id, log)
    known = set(hashes)
    _read_entries_since(orch, log, view, known)
    not_healed: list[str] = []  # why the missing entries were not written here (a full disk)
    # the entries the log lacks, found in the log itself: a marker outlives its entry in a log restored from an older
    # copy (``audit.unmarked``)
    if (heal and view.ok and log.problem is None
            and audit.heal_quietly(orch, [view], logged=log.named, not_written=not_healed)):
        _read_on(orch, log, job_id, known)
    audited = log.named
    bad = {p.line: p.code for p in view.problems if p.stream == job_id and p.line}
    first_bad = min(bad) if bad else None
    needs_entry = {view.stream.lines[i].seq: act for i, act in audit.audited(view.stream.records)}  # seq -> action
    events: list[Line] = []
    for stored, eh in zip(view.stream.lines, hashes):
        try:
            rec = parse_line(stored.raw)
        except (ValueError, RecursionError):
            rec = {}
        status = bad.get(stored.seq) or ("ok" if first_bad is None or stored.seq < first_bad else AFTER_DAMAGE)
        if status == "ok" and stored.seq in needs_entry and eh not in audited and not log.link:
            status = AUDIT_ENTRY_MISSING
        events.append(Line(str(rec.get("ts", "")), "event", stored.seq, str(rec.get("type", "?")),
                           str(rec.get("actor", "")), rec.get("run_id"), _detail(rec), status))
    named: dict[str, list[Line]] = {}  # event hash -> the entries naming that event, in audit-log order
    loose: list[Line] = []  # entries naming no event of this history, in audit-log order
    for seq, rec in log.entries:
        checked = verify_stream(AUDIT_STREAM, [log.lines[seq - 1]], orch.keyring,
                                prev_line=log.lines[seq - 2].raw if seq > 1 else None)
        eh = (rec.get("data") or {}).get("event_hash")
        names_event = isinstance(eh, str) and eh in known
        status = (checked.problems[0].code if checked.problems else "ok" if names_event or not eh
                  else AUDIT_EVENT_MISSING if import_began is None else IMPORT_INCOMPLETE)
        line = Line(str(rec.get("ts", "")), "audit", seq, str(rec.get("data", {}).get("action", "?")),
                    str(rec.get("actor", "")), rec.get("run_id"), _detail(rec), status)
        if names_event:
            named.setdefault(eh, []).append(line)
        else:
            loose.append(line)
    out = _merge(events, hashes, named, loose)
    if run_id and not any(ln.run_id == run_id for ln in out):
        # a run of another job: an empty timeline would read as "nothing happened in that run"
        raise RunNotFoundError(f"job {job_id} has no run {run_id!r} (without --job-id, the run's own job is "
                               "found)", run_id=run_id, job_id=job_id)
    if since_t is not None:  # the job's timeline from its first line at or after the time (see ``_first_since``)
        out = out[_first_since(out, since_t):]
    if run_id:
        out = [ln for ln in out if ln.run_id == run_id]
    if action:  # an audited event and the action of its entry are one filter, by either name
        wanted = {action}.union(*({event, act} for event, act in audit.AUDITED_EVENTS.items()
                                  if action in (event, act)))
        # and a stop counted as a failed attempt (a job_failed) under its entry's action, job_released
        out = [ln for ln in out if ln.what in wanted or (ln.source == "event" and needs_entry.get(ln.seq) == action)]
    unaudited = [ln.seq for ln in out if ln.status == AUDIT_ENTRY_MISSING]
    if log.cut is not None:
        why = ("the audit log was cut (its problem above): keep the store as it is, restore the log from a backup "
               "(docs/runbook.md, section E), then run")
    elif not_healed:
        why = f"not written here ({not_healed[0]}); once the store takes writes again, run"
    else:
        why = ("not written here, since a read command writes one only with a signing key this machine already has "
               "and may use: run")
    cause = "" if log.cut is not None else " (a crash came between the event and its entry)"
    warnings = [{"code": AUDIT_ENTRY_MISSING, "events": unaudited,
                 "message": f"event(s) {', '.join(f'#{n}' for n in unaudited)} of job {job_id} have no audit entry"
                            f"{cause}; {why} `orchestrator audit heal --job-id {job_id}` where the project's signing "
                            "key is"}
                ] if unaudited else []
    ahead = [ln.seq for ln in out if ln.status == IMPORT_INCOMPLETE]
    if ahead:
        warnings.append(_import_warning(orch, job_id, ahead, import_began))
    if any(ln.status == AUDIT_EVENT_MISSING for ln in out):  # an abandoned import's record is named, never silent
        warnings.extend(_abandoned_imports(orch))
    return {"job_id": job_id, "run_id": run_id, "lines": [ln.to_dict() for ln in out],
            "ok": all(ln.status in ("ok", AUDIT_ENTRY_MISSING, IMPORT_INCOMPLETE) for ln in out) and view.ok
                  and not log.problem,
            "problems": [p.to_dict() for p in [*view.problems, *filter(None, [log.problem])]], "warnings": warnings}


def _read_job(orch: "Orchestrator", job_id: str, log: "_LogRead"
              ) -> tuple["JobView", list[str], "UnderWay | None"]:
    """The job read after the audit log (``log``), the hashes of its lines, and when an import into the project that
    has not completed began (None: there is none), read only when an entry of ``log`` names an event the job's read
    lacks (rare). Free of races with an import: it puts its record (``import_record.hold``) before its first
    write and removes it only once every stream of its bundle is in, so an entry the log's read held, naming an event
    the job's read lacked, with no record found after that, was written by no import, or by one that completed
    since the job's read: the job, read once more, then holds that event; one it still lacks is missing (until
    2026-12-07 an import completing between the job's read and the record's made a healthy job
    ``AUDIT_EVENT_MISSING``, exit 7)."""
    def read() -> tuple["JobView | None", list[str]]:
        try:
            view = orch.load(job_id, every_signature=True)  # it says "every line verified": each signature checked
        except JobNotFoundError:  # its files deleted, and the audit log says what happened to it; or not imported yet
            return None, []
        return view, [line_hash(s.raw) for s in view.stream.lines]

    view, hashes = read()
    began: "UnderWay | None" = None
    # a job not found: its entries may all name no event (a released run), and an import may not have written it yet
    if log.entries and (view is None or not log.named <= set(hashes)):
        began = _import_began(orch)
        if began is None:  # no import under way, or one completed since the read: its events are there now
            view, hashes = read()
    if view is None:
        view = _gone(orch, job_id, log.entries, importing=began is not None)
    return view, hashes, began


def _gone(orch: "Orchestrator", job_id: str, entries: list[tuple[int, dict[str, Any]]], *,
          importing: bool = False) -> "JobView":
    """The job that has neither events nor a head record (both deleted) but ``entries`` in the audit log: a history
    with no line and one problem, ``AUDIT_EVENT_MISSING`` (as ``verify`` reports each of those entries), so that its
    timeline shows the entries, each ``AUDIT_EVENT_MISSING``, and exits 7; ``importing`` (an import into the project
    has not completed): a history with no line and no problem, its entries each ``IMPORT_INCOMPLETE``. A job the log
    names nowhere either is ``JOB_NOT_FOUND`` (raised again), as is every job when the log cannot be read (a link, a
    FIFO: no entries)."""
    from orchestrator.views import JobView

    if not entries:
        raise JobNotFoundError(f"no job {job_id!r} in project {orch.project_id!r}", job_id=job_id)
    if importing:
        return JobView(job_id, VerifiedStream(job_id, []), None, ())
    message = (f"job {job_id} has no events file and no head record, yet the audit log holds {len(entries)} "
               "entr" + ("y" if len(entries) == 1 else "ies") + " of it: its files were deleted; restore them from "
               "a backup (docs/runbook.md, section E)")
    return JobView(job_id, VerifiedStream(job_id, []), None, (Problem(job_id, 0, AUDIT_EVENT_MISSING, message),))


def _import_began(orch: "Orchestrator") -> "UnderWay | None":
    """``import_record.import_begun`` (an abandoned import's record is none): read only when an entry names an event
    its job lacks (``_read_job``); a name of its own, which a test replaces to complete an import in between."""
    return import_begun(orch)


def _import_warning(orch: "Orchestrator", job_id: str, entries: list[int], began: "UnderWay | None"
                    ) -> dict[str, Any]:
    """What the ``IMPORT_INCOMPLETE`` entries of the job shown mean, and what to do (``UnderWay.explained``)."""
    under_way = began.explained(orch) if began else "an import into the project has not completed"
    return {"code": IMPORT_INCOMPLETE, "entries": entries,
            "message": f"audit entr{'y' if len(entries) == 1 else 'ies'} {', '.join(f'#{n}' for n in entries)} name "
                       f"event(s) of job {job_id} that its history does not hold yet: {under_way}"}


def _abandoned_imports(orch: "Orchestrator") -> list[dict[str, Any]]:
    """A warning naming each abandoned import's record (``import_record.abandoned``): shown with the
    ``AUDIT_EVENT_MISSING`` entries it may explain."""
    return [{"code": IMPORT_ABANDONED, "record": r.key, "message": text} for r, text in abandoned(orch)]


@dataclass
class _LogRead:
    """What ``timeline`` read of the audit log: its lines (an entry is verified against the one before it), the job's
    entries among them, and the log's own problem, as ``verify`` lists it: a symbolic link (never followed), a FIFO,
    a socket or a directory holding files in its place (``link``: nothing read), or a cut against its head record
    (``cut``: entries removed from its end, so its missing entries are the cut's, not a crash's, and nothing is
    written onto it, ``audit.refuse_cut``)."""

    lines: list[Any] = field(default_factory=list)
    entries: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    link: Problem | None = None
    cut: Problem | None = None

    @property
    def problem(self) -> Problem | None:
        return self.link or self.cut

    @property
    def named(self) -> set[str]:
        return _named_events(self.entries)


def _read_log(orch: "Orchestrator", job_id: str) -> _LogRead:
    """The audit log's lines and the job's entries. What is in the log's place is looked at before it is read, so a
    FIFO is never opened."""
    try:
        orch.store.refuse_unusable(AUDIT_STREAM)
        head_raw = orch.store.get_aux(*audit.AUDIT_HEAD)  # before the lines: a racing append only makes them longer
        lines, entries = audit.entries_for(orch, job_id=job_id)
    except (PathEscapeError, UnusableFileError) as exc:
        return _LogRead(link=Problem.unusable(AUDIT_STREAM, exc))
    return _LogRead(lines, entries, cut=check_head_record(AUDIT_STREAM, lines, head_raw or None, orch.keyring))


def _read_on(orch: "Orchestrator", log: _LogRead, job_id: str, known: set[str]) -> None:
    """``log`` with the lines written since it was read, and of the job's entries among them those naming an event
    of its history as read (``known``, read after the log): the others came after what the timeline shows."""
    try:
        lines, entries = audit.entries_for(orch, job_id=job_id, from_seq=len(log.lines) + 1)
    except (PathEscapeError, UnusableFileError):  # put in the log's place since: what was read stands
        return
    log.lines.extend(lines)
    log.entries.extend(entry for entry in entries if _named_events([entry]) & known)


def _read_entries_since(orch: "Orchestrator", log: _LogRead, view: "JobView", known: set[str]) -> None:
    """Read on for the entries of the job's audited events that the log's read lacks: written since (an action
    between the log's read and the job's), or about to be (an action between its event and its entry holds the
    job's pending lock: waited for, ``audit.wait_for_actions``, as ``verify`` does). An entry a crash left out is
    still missing after that: a warning (``AUDIT_ENTRY_MISSING``), written by the heal where the key is."""
    for wait in (False, True):
        if log.problem is not None or _audited_events(view) <= log.named:
            return
        if wait:
            audit.wait_for_actions(orch, [view.job_id])
        _read_on(orch, log, view.job_id, known)


def _audited_events(view: "JobView") -> set[str]:
    """The hashes of the job's events that must have an audit entry (``audit.audited``)."""
    return {line_hash(view.stream.lines[i].raw) for i, _ in audit.audited(view.stream.records)}


def _named_events(entries: list[tuple[int, dict[str, Any]]]) -> set[str]:
    """The hashes of the job events these audit entries name."""
    return {eh for _, rec in entries if isinstance(eh := (rec.get("data") or {}).get("event_hash"), str)}


def _merge(events: list[Line], hashes: list[str], named: dict[str, list[Line]], loose: list[Line]) -> list[Line]:
    """The events in sequence order, each followed by the entries naming it (in audit-log order); the other
    entries, in audit-log order, merged in by time: one goes before the first event stamped later than it, but
    never above an entry written before it in the audit log (so never above the event that entry names).
    Neither order depends on a clock: one stepped back leaves an event, or an entry, after the ones it follows.
    Times compare as text (each writer stamps ``clock.to_iso``: sortable; a damaged line's time sorts wherever
    its text does)."""
    # for each loose entry, the last event it must follow: the latest one named by an entry written before it
    attached = sorted((ln.seq, k) for k, eh in enumerate(hashes) for ln in named.get(eh, ()))  # (audit seq, event)
    after: list[int] = []
    last, j = -1, 0
    for entry in loose:
        while j < len(attached) and attached[j][0] < entry.seq:
            last = max(last, attached[j][1])
            j += 1
        after.append(last)
    out: list[Line] = []
    i = 0
    for k, (event, eh) in enumerate(zip(events, hashes)):
        while i < len(loose) and after[i] < k and loose[i].ts < event.ts:
            out.append(loose[i])
            i += 1
        out.append(event)
        out.extend(named.pop(eh, ()))  # a line repeated in the history is named once, after its first copy
    out.extend(loose[i:])
    return out


def _first_since(out: list[Line], since_t: float) -> int:
    """Where ``--since`` cuts the timeline: at its first line stamped at or after ``since_t``; every line after
    it is kept, even one stamped earlier (a clock stepped back), since it happened later. With clocks that
    never step back, these are exactly the lines stamped at or after ``since_t``."""
    for i, ln in enumerate(out):
        try:
            if ln.ts and from_iso(ln.ts) >= since_t:
                return i
        except (ValueError, OverflowError):  # a damaged line's time says nothing
            continue
    return len(out)


def render(result: dict[str, Any]) -> str:
    """The table; each field on one line, redacted on its own before it is cut (``security.safe_line``): what a
    line holds was written by handlers, operators or, on a damaged line, anyone."""
    rows = [f"timeline of job {result['job_id']}" + (f", run {result['run_id']}" if result["run_id"] else ""),
            f"{'TIME':<27} {'SRC':<5} {'SEQ':>4}  {'WHAT':<22} {'ACTOR':<20} {'RUN':<20} {'STATUS':<20} DETAIL"]
    for ln in result["lines"]:
        ts, what, actor, status, detail = (safe_line(ln[k]) for k in ("ts", "what", "actor", "status", "detail"))
        run = safe_line(ln["run_id"] or "-")  # whole, never cut: it is what `--run-id` takes
        rows.append(f"{ts:<27} {ln['source']:<5} {ln['seq']:>4}  {what[:22]:<22} {actor[:20]:<20} "
                    f"{run:<20} {status:<20} {detail[:120]}")
    if not result["lines"]:
        rows.append("(no lines match)")
    for p in result["problems"]:
        where = "the audit log's line" if p.get("stream") == AUDIT_STREAM else "line"
        rows.append(safe_line(f"PROBLEM {where} {p['line']}: {p['code']}: {p['message']}"))
    for w in result.get("warnings", ()):
        rows.append(safe_line(f"warning: {w['code']}: {w['message']}"))
    rows.append("OK: every line verified" if result["ok"] else "NOT OK: see the STATUS column and problems")
    return "\n".join(rows)
