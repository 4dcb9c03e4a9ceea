"""Lease records: heartbeats that do not bloat the event log.

The claim event carries the first lease expiry, so a run shorter than a heartbeat writes no
record. While a job runs, the worker renews the lease every ``lease_seconds / 3`` by replacing
one small record per (job, epoch) in the store's aux area ``leases`` (on the file backend a
512-byte slot ``.orchestrator/leases/<job_id>.<epoch>`` written in place). The outcome of a run
that renewed, and stale recovery, drop the record with their event (``drop_lease_aux``: in its
transaction on PostgreSQL, right after it on files; one left behind by a worker killed in
between is removed by stale recovery's sweep, ``Worker._sweep_left_over_leases``). Keying by epoch means a paused ("zombie") worker that wakes up can
only rewrite its own, superseded record, never the lease of the worker that took over.

A lease record is a derived cache like any other: a missing or unreadable one falls back to
the expiry in the claim event, which can only make recovery earlier, never later than the
event says.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator import clock, faults
from orchestrator.state import JobState
from orchestrator.store.base import EventStore

LEASES_AREA = "leases"


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
    raw = store.get_aux(LEASES_AREA, _key(job_id, epoch))
    if not raw:
        return None
    try:
        data = json.loads(raw)
        data.pop("expires_at_iso", None)
        return Lease(**data)
    except (ValueError, TypeError, RecursionError):
        return None


def lease_expiry(store: EventStore, state: JobState) -> float | None:
    """When the current run's lease ends: the renewed record if it belongs to this epoch, else the claim's."""
    lease = read_lease(store, state.job_id, state.epoch)
    if lease is not None and lease.run_id == state.run_id:
        return max(lease.expires_at, state.lease_expires_at or 0.0)
    return state.lease_expires_at
