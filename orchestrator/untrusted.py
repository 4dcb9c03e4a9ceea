"""Jobs signed by keys a worker does not hold: left for a worker that holds them.

In a deployment of several machines, each signing with its own key and trusting the others' ``.pub``
files (``ORCH_TRUSTED_KEYS_DIR``), a worker that lacks one machine's key finds every job that machine
wrote failing verification as ``UNKNOWN_KEY``. When that is all that is wrong with a job
(``JobView.missing_keys``), this worker cannot tell a good job from a bad one, and a worker that holds
the key can: so the job is left for it, as a job of a kind without a handler here is. Nothing is
written (no ``run_refused``), no index entry is dropped (its ready entry, or in stale recovery its
running entry), nothing is claimed; a warning is logged once per key. Any other problem, alone or
beside an unknown key, is refused as before.

The worker remembers the index entry it left each job at (``UntrustedJobs``), and passes over that
entry on later passes without reading the job: an entry names one stretch of a job's life (a ready
entry is moved or dropped by every event of a queued job, a running entry ``(job, epoch)`` by every
event of a running one), and a line under an unknown key stays in an append-only history, so the
job could not be checked here anyway. It remembers the keys too: a PostgreSQL ready row names the key
that signed its job's first line and every key of its lines (``ReadyEntry.keys``, migrations 0008 and 0009: a job
submitted on a machine it trusts and queued again by one it does not; a row from before 0009 gets them from the
first worker that reads its job and cannot check it: ``QueueIndex.name_keys``), so a row naming a key found
missing is passed over unread wherever it is met, and a claim pass's next pages leave every such row
out (``QueueIndex.next_page``): a worker reads a page of a key's jobs, not each of them (until
2026-12-07, twenty-eighth session: ``worker --once`` read 4,000 to reach the job behind them). A file
entry names no key. What is remembered is forgotten when the keys the worker
trusts or refuses change (``Keyring.reload``: at its sweep, once a minute, or when it meets a job it
cannot check), and then every such job is read again. See ``docs/worker.md``.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Hashable

from orchestrator.errors import KeyNotTrustedError
from orchestrator.limits import keep_latest
from orchestrator.notices import Notify, tell
from orchestrator.queue import ReadyEntry
from orchestrator.signing import Keyring

log = logging.getLogger(__name__)

# index entries of jobs left for want of a key that a worker remembers (the oldest forgotten; ~4 MiB when full): on
# files, more such due jobs than this are read again at each pass (a PostgreSQL row names its job's key:
# ``keys_to_leave_out``)
LEFT_KEPT = 8192
KEYS_KEPT = 1024  # the keys found missing that a worker remembers (the oldest forgotten)
SKIPPED_MAX = 256  # of the entries, the jobs (the latest met) a shared index is asked not to reserve for this worker


class UntrustedJobs:
    """The jobs one worker left because keys it does not hold signed them, by the index entry it met them at, and
    those keys (a PostgreSQL row names the keys of its job's lines)."""

    def __init__(self, keyring: Keyring, notify: Notify | None = None) -> None:
        self.keyring = keyring
        self.notify = notify  # where its warning of a key it does not trust goes (``notices``)
        self._left: OrderedDict[Hashable, frozenset[str]] = OrderedDict()  # entry -> the keys missing
        self._keys: OrderedDict[str, None] = OrderedDict()  # every key found missing
        self._trust = keyring.trust_state()  # the keys the entries and keys above were checked with
        self._warned: set[str] = set()
        self.queued: dict[str, set[str]] = {}  # key id -> the queued jobs the last claim pass left for want of it

    def new_pass(self) -> None:
        """A claim pass begins: ``queued`` counts what it leaves."""
        self.queued = {}

    def passes_over(self, mark: Hashable, job_id: str) -> bool:
        """True if this worker left the job at index entry ``mark`` (a ``ReadyEntry``, or ``running_mark``), or the
        entry names a key it found missing (``ReadyEntry.keys``), under the keys it trusts now: it is passed over
        without a read, and remembered as left at ``mark``. A ready entry counts in ``queued``."""
        if not self._left:  # the usual case: nothing left, nothing to compare
            return False
        self._check_trust()
        kids = self._left.get(mark) or self._signed_by_a_missing_key(mark)
        if not kids:
            return False
        keep_latest(self._left, mark, kids, LEFT_KEPT)
        self._count(mark, job_id, kids)
        return True

    def _signed_by_a_missing_key(self, mark: Hashable) -> frozenset[str]:
        """The keys an entry names (PostgreSQL's rows: ``ReadyEntry.keys``) that were found missing; else none."""
        return frozenset(k for k in mark.keys if k in self._keys) if isinstance(mark, ReadyEntry) else frozenset()

    def leave(self, mark: Hashable, job_id: str, kids: frozenset[str]) -> None:
        """Remember that the job at index entry ``mark`` was left for want of keys ``kids`` (read under the keys
        trusted now), and warn once for each key not warned of before."""
        self._check_trust()
        keep_latest(self._left, mark, kids, LEFT_KEPT)
        for kid in kids:
            keep_latest(self._keys, kid, None, KEYS_KEPT)
        self._count(mark, job_id, kids)
        folders = ", ".join(self.keyring.folders) or "none: a keyring made in memory"
        for kid in sorted(kids - self._warned):
            self._warned.add(kid)
            tell(self.notify, log, f"job {job_id} is signed by key {kid}, which this worker does not trust: leaving the "
                 "job (and every other job that key signed) for a worker that does. If the key is another machine's, "
                 f"copy its {kid}.pub into the trusted keys folder (ORCH_TRUSTED_KEYS_DIR) of this machine; a running "
                 f"worker reads its keyring folders ({folders}) again within a minute. A key no machine holds means "
                 "the job was written without one: `orchestrator verify` lists it", job_id=job_id, key_id=kid,
                 code=KeyNotTrustedError.code)

    def jobs_not_to_reserve(self) -> list[str]:
        """The jobs of the ready entries left (the ``SKIPPED_MAX`` met last), which a shared index is asked never to
        reserve for this worker (``QueueIndex.candidates``'s ``skip``): its claim pass's first page may still list
        them."""
        if not self._left:
            return []
        self._check_trust()
        jobs: list[str] = []
        for mark in reversed(self._left):
            if len(jobs) == SKIPPED_MAX:
                break
            if isinstance(mark, ReadyEntry):
                jobs.append(mark.job_id)
        return jobs

    def jobs_to_leave_out(self) -> list[str]:
        """The jobs of the ready entries remembered as left whose key ``keys_to_leave_out`` does not already leave out
        (a row naming another key, or none), for a shared index's next pages to leave out (``QueueIndex.next_page``):
        a line under a key not trusted stays in its history, so the job cannot be checked here whatever entry it has
        now, until the keys trusted change (then none is remembered)."""
        if not self._left:
            return []
        self._check_trust()
        return [mark.job_id for mark in self._left
                if isinstance(mark, ReadyEntry) and self._keys.keys().isdisjoint(mark.keys)]

    def keys_to_leave_out(self) -> list[str]:
        """The keys found missing, for a shared index's next pages to leave out every row they signed
        (``QueueIndex.next_page``: PostgreSQL's rows name the keys of their job's lines)."""
        if not self._left:
            return []
        self._check_trust()
        return list(self._keys)

    def error(self, worker_id: str) -> KeyNotTrustedError | None:
        """The queued jobs the last claim pass left for want of a key, by key, as the error ``worker --once`` exits
        with (8) when it ran nothing; None if it left none."""
        if not self.queued:
            return None
        jobs = len(set().union(*self.queued.values()))
        keys = {kid: len(ids) for kid, ids in sorted(self.queued.items())}
        listed = "; ".join(f"{kid} ({n} job(s))" for kid, n in list(keys.items())[:5])
        more = f"; {len(keys) - 5} more key(s)" if len(keys) > 5 else ""
        return KeyNotTrustedError(
            f"{jobs} queued job(s) left for a worker that trusts the key that signed them: {listed}{more}. Copy "
            "each key's .pub into the trusted keys folder (ORCH_TRUSTED_KEYS_DIR) of this machine, or run the jobs "
            "on a machine that trusts it; a key no machine holds means the jobs were written without one "
            "(orchestrator verify)", worker_id=worker_id, jobs=jobs, keys=keys)

    def _count(self, mark: Hashable, job_id: str, kids: frozenset[str]) -> None:
        if isinstance(mark, ReadyEntry):
            for kid in kids:
                self.queued.setdefault(kid, set()).add(job_id)  # a set: a pass may meet an entry twice

    def _check_trust(self) -> None:
        state = self.keyring.trust_state()
        if state != self._trust:  # a key trusted or revoked since (Keyring.reload): every job is read again
            self._trust = state
            self._left.clear()
            self._keys.clear()


def running_mark(job_id: str, epoch: int | None) -> tuple[str, str, int | None]:
    """What ``UntrustedJobs`` remembers a job left in stale recovery by: its running entry."""
    return ("running", job_id, epoch)
