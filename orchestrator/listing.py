"""The project's jobs listed (``Orchestrator.jobs``: ``status --all``), those whose events were all removed included
(``Orchestrator.removed_jobs``, which ``verify``, ``metrics`` and ``export`` read too).

``job_ids`` names only the jobs holding an event; a job whose events were removed still has its head record, and a
listing names it from there. A listing by state or kind reads only the jobs the jobs cache (``projection``) puts in
it, each read again and checked.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from orchestrator.errors import InvalidIdError, JobNotFoundError
from orchestrator.limits import a_set_of_names
from orchestrator.state import STATES
from orchestrator.store.base import HEADS_AREA
from orchestrator.views import JobStatus, JobView

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator


def removed_jobs(orch: Orchestrator, listed: Iterable[str], *, unindexed: bool = False) -> list[JobView]:
    """The jobs with a head record and no event left (the file deleted or emptied), read: ``job_ids``
    lists only jobs holding an event, so it cannot name them; ``listed`` is what it gave. Any record
    counts, signed or not: its view's problem is ``TRUNCATED`` when it verifies, ``SIGNATURE_INVALID``
    (or ``CORRUPT_LINE``) when not. A record's slot never written is no job.

    ``unindexed``: also the jobs ``listed`` left out that hold events, for a listing from an index that may lack
    them (``EventStore.fingerprints`` on PostgreSQL reads ``orch_streams``, a derived index whose row a hand can
    delete), or submitted since it was made."""
    known = set(listed)
    removed = []
    for job_id in orch.store.aux_keys(HEADS_AREA):
        if job_id in known:
            continue
        try:
            view = orch.load(job_id)
        except (JobNotFoundError, InvalidIdError):  # no record after all, or not a name this code wrote
            continue
        if unindexed or not view.stream.lines:  # (a job submitted since the listing has its events)
            removed.append(view)
    return removed


def jobs(orch: Orchestrator, states: Iterable[str] | None = None, kinds: Iterable[str] | None = None) -> list[JobStatus]:
    """Every job's status, oldest first, optionally only those in ``states`` and of ``kinds``; a job whose
    events were all removed is listed too when nothing is filtered (no state, no kind, its integrity error).

    With ``states`` or ``kinds``, only the jobs the jobs cache (``projection``, brought up to date first: only
    the jobs changed since are read) says are in one of them and of one of them (or whose kind its row does not
    know: a cache written before rows had kinds) are read, each verified as ``status`` reads it and its state
    and kind checked again: no row puts a job in a listing it does not belong in, and a job that changed since
    the cache was written has a new fingerprint and is read again. A row edited by hand (the cache is not
    signed) can leave a job out, as it can skew a figure of ``metrics``; ``--rebuild`` of ``metrics``, or
    deleting the cache, makes it anew."""
    wanted, of_kinds = a_set_of_names(states, "states", STATES), a_set_of_names(kinds, "kinds")
    if wanted or of_kinds:
        out = _jobs_matching(orch, wanted, of_kinds)
    else:  # every job, and those whose events were all removed
        listed = list(orch.store.job_ids())
        out = [JobStatus.from_view(view) for view in orch.removed_jobs(listed)] + [orch.status(j) for j in listed]
    out.sort(key=lambda s: (s.submitted_at or "", s.job_id))
    return out


def _jobs_matching(orch: Orchestrator, states: set[str], kinds: set[str]) -> list[JobStatus]:
    """``jobs`` with a filter: the rows of the jobs cache (refreshed, not healed: a read) that name one of
    ``states`` (any, when empty) and one of ``kinds`` (any, when empty; a row that knows no kind is taken), each
    job then read and checked. The kinds a row did not know are noted in the cache (``learn_kinds``)."""
    from orchestrator import projection

    cols = projection.refresh(orch, heal=False).columns
    codes = ({projection.STATE_CODE[s] for s in states if s in projection.STATE_CODE} if states
             else set(range(len(projection.STATES))) | {projection.NO_STATE})
    kind_codes = ({code for code, kind in enumerate(cols.kinds, 1) if kind in kinds} | {projection.UNKNOWN_KIND}
                  if kinds else None)
    out: list[JobStatus] = []
    learned: dict[int, str] = {}  # row -> the kind of a job its row did not know (a cache older than kinds)
    for i, (code, kind) in enumerate(zip(cols.state, cols.kind)):
        if code not in codes or (kind_codes is not None and kind not in kind_codes):
            continue
        st = orch.status(cols.ids[i])
        if (not states or st.state in states) and (not kinds or st.kind in kinds):
            out.append(st)
        if kind == projection.UNKNOWN_KIND and st.kind is not None:
            learned[i] = st.kind
    if learned:
        projection.learn_kinds(orch, cols, learned)
    return out
