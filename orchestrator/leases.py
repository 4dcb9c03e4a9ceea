"""Lease records: heartbeats that do not bloat the event log.

The claim event carries the first lease expiry, so a run shorter than a heartbeat writes no
record. While a job runs, the worker renews the lease every ``lease_seconds / 3`` by replacing
one small record per (job, epoch) in the store's aux area ``leases`` (on the file backend a
512-byte slot ``.orchestrator/leases/<job_id>.<epoch>`` written in place). The outcome of a run
that renewed, and stale recovery, drop the record with their event (``drop_lease_aux``: in its
transaction on PostgreSQL, right after it on files; one left behind by a worker killed in
between is removed by stale recovery's sweep, ``recovery.sweep_left_over_leases``). Keying by epoch means a paused ("zombie") worker that wakes up can
only rewrite its own, superseded record, never the lease of the worker that took over.

A missing or unreadable record falls back to the expiry in the claim event, which can only make
recovery earlier, never later than the event says. So does a record no heartbeat could have written
(``read_lease``, ``_plausible``): fields of the wrong type, a lease longer than ``MAX_LEASE_SECONDS``
(the largest ``lease_seconds`` a worker takes; a heartbeat extends the lease by its own from when it
writes), or an expiry further ahead of ``now`` than that and ``CLOCK_SKEW_SECONDS``. A record planted
in the folder delays stale recovery by at most that much, never forever. The record is the only record
of the renewals, though: no cache to delete while its run lives. Deleted then, a stale recovery that
reads it before the next heartbeat writes it again recovers a live run older than its claim's lease
(docs/worker.md, "Leases and heartbeats").

A worker that cannot renew its lease (the store out of reach: PostgreSQL down, a folder of the file
store gone or unwritable) keeps its run going while the lease it last stored still holds, and stops
it (``RunSupervisor.supervise``) once ``LEASE_STOP_MARGIN`` of the lease is left (``HeldLease``): before
stale recovery, comparing the same expiry with the same clock, may let another worker run the job.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator import clock, faults
from orchestrator.config import MAX_LEASE_SECONDS
from orchestrator.errors import PathEscapeError
from orchestrator.limits import LATEST_TIME
from orchestrator.signing import parse_line
from orchestrator.state import JobState
from orchestrator.store.base import EventStore

LEASES_AREA = "leases"
# A run whose lease could not be renewed is stopped when this share of the lease is left (a fifth: 6 s of the
# default 30 s): time to kill it, and for clocks that differ a little, before another worker may take the job
LEASE_STOP_MARGIN = 0.2
LEASE_NOT_RENEWED = "LEASE_NOT_RENEWED"  # the error code of a run its worker stopped for that
# How far ahead of the reader's clock a heartbeat may have been written and still count (a worker on
# another host, a clock stepped back); a record that could only come from further ahead is not trusted
CLOCK_SKEW_SECONDS = 60.0
_FIELDS = {"job_id": str, "run_id": str, "epoch": int, "worker_id": str, "pid": int,
           "expires_at": float, "renewed_at": float}


@dataclass(frozen=True)
class Lease:
    job_id: str
    run_id: str
    epoch: int
    worker_id: str
    pid: int
    expires_at: float
    renewed_at: float

    def to_json(self) -> bytes:
        data: dict[str, Any] = asdict(self)
        data["expires_at_iso"] = clock.to_iso(self.expires_at)
        return json.dumps(data, sort_keys=True).encode()


def lease_end(now: float, lease_seconds: float) -> float:
    """The end of a lease taken (the claim's) or renewed (a heartbeat's) at ``now``: ``LATEST_TIME`` at the latest, as a
    retry's time is, so any ``now`` a worker takes (``limits.a_time``) can be written: within a lease of
    9999-12-31T23:59:59Z the end raised ``ValueError: year 10000`` until 2026-12-07; it is shorter there, which only
    makes recovery earlier."""
    return min(now + lease_seconds, LATEST_TIME)


def _key(job_id: str, epoch: int) -> str:
    return f"{job_id}.{epoch}"


def drop_lease_aux(job_id: str, epoch: int) -> dict[tuple[str, str], bytes | None]:
    """The deletion of the lease record of (job, epoch), as an ``aux`` write of an append."""
    return {(LEASES_AREA, _key(job_id, epoch)): None}


def write_lease(store: EventStore, lease: Lease) -> None:
    """Replace the lease record of this (job, epoch) atomically."""
    store.put_aux(LEASES_AREA, _key(lease.job_id, lease.epoch), lease.to_json())
    faults.point("lease.after_write")


def read_lease(store: EventStore, job_id: str, epoch: int) -> Lease | None:
    """The record of (job, epoch); ``None`` when there is none or it is not a record of the right shape."""
    try:
        raw = store.get_aux(LEASES_AREA, _key(job_id, epoch))
    except PathEscapeError:  # a symbolic link in the record's place, never followed: no record
        return None
    if not raw:
        return None
    try:
        data = parse_line(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    data.pop("expires_at_iso", None)
    if data.keys() != _FIELDS.keys():
        return None
    for name, kind in _FIELDS.items():
        value = data[name]
        accepted = (int, float) if kind is float else kind
        if type(value) is bool or not isinstance(value, accepted):
            return None  # "soon", null, true: not what ``Lease.to_json`` writes
        if kind is float:
            if not math.isfinite(value):  # (json reads NaN and Infinity too)
                return None
            data[name] = float(value)
    if data["job_id"] != job_id or data["epoch"] != epoch:
        return None
    return Lease(**data)


def _plausible(lease: Lease, state: JobState, now: float) -> bool:
    """Whether a heartbeat of the current run could have written ``lease`` by ``now``: it belongs to the
    run, extends the lease by at most ``MAX_LEASE_SECONDS`` from when it was written, and was not
    written further ahead of ``now`` than ``CLOCK_SKEW_SECONDS``."""
    return (lease.run_id == state.run_id
            and 0.0 <= lease.expires_at - lease.renewed_at <= MAX_LEASE_SECONDS
            and lease.expires_at <= now + MAX_LEASE_SECONDS + CLOCK_SKEW_SECONDS)


def lease_expiry(store: EventStore, state: JobState, now: float) -> float | None:
    """When the current run's lease ends, as seen at ``now``: the renewed record if a heartbeat of
    this run could have written it (``_plausible``), else the claim's."""
    lease = read_lease(store, state.job_id, state.epoch)
    if lease is not None and _plausible(lease, state, now):
        return max(lease.expires_at, state.lease_expires_at or 0.0)
    return state.lease_expires_at


@dataclass
class HeldLease:
    """What a running worker knows of its own lease, to stop a run it cannot renew before the lease expires.

    ``expires_at`` is the latest expiry a write is known to have stored: the claim event's, then each renewed
    record's. A renewal that failed is not counted even if it was stored (a PostgreSQL commit whose answer
    was lost): that can only stop the run earlier. Times are the worker's clock (``Orchestrator.clock``),
    the one its stale recovery compares the same expiry with; ``now`` is always a parameter."""

    lease_seconds: float
    expires_at: float
    failing_since: float | None = None  # the first failed renewal since the last one that succeeded
    last_error: str = ""
    stopped_at: float | None = None  # when the worker stopped the run for it

    @property
    def stop_at(self) -> float:
        """When a run that is still failing to renew is stopped: ``LEASE_STOP_MARGIN`` of a lease before it ends."""
        return self.expires_at - self.lease_seconds * LEASE_STOP_MARGIN

    def renewed(self, expires_at: float) -> None:
        self.expires_at = max(self.expires_at, expires_at)
        self.failing_since, self.last_error = None, ""

    def failed(self, now: float, error: str) -> None:
        if self.failing_since is None:
            self.failing_since = now
        self.last_error = error

    def must_stop(self, now: float) -> bool:
        """True once renewals have failed since the last success and the lease is within its margin of ending.
        A run whose renewals succeed is never stopped here, whatever the clock says (a takeover is seen by the
        heartbeat's own check instead)."""
        return self.failing_since is not None and now >= self.stop_at

    def why_stopped(self) -> str:
        """The error of the run's failed attempt, for its ``job_failed`` (``LEASE_NOT_RENEWED``)."""
        failing, stopped = self.failing_since or 0.0, self.stopped_at or 0.0
        return (f"the lease could not be renewed since {clock.to_iso(failing)} ({self.last_error}); the run was "
                f"stopped at {clock.to_iso(stopped)}, before the lease it held ended at {clock.to_iso(self.expires_at)}, "
                "so that no other worker could run the job while it still ran")
