"""The heartbeats of one run: its lease record renewed every third of a lease while its handler runs (or while
its ``artifacts_from`` are copied), and the point past which the run must be stopped when they fail.

A heartbeat that cannot write (the store out of reach, a folder gone) is no takeover: the run goes on while the
lease last stored holds, and is stopped before it may expire (``HeldLease.must_stop``), so that stale recovery never
lets another worker run the job beside it. The worker asks when the next heartbeat is due (``next_at``) between
its waits and how the run must end after one (``beat``); see ``docs/worker.md``, "A lease that cannot be renewed".
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from orchestrator import clock as clock_mod
from orchestrator.errors import LockHeldError, StorageError, StorageUnavailableError
from orchestrator.leases import HeldLease, Lease, lease_end, write_lease
from orchestrator.security import one_line
from orchestrator.store.locks import LOCK_WAIT_SECONDS, bounded_waits

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator
    from orchestrator.outcome import Claim

log = logging.getLogger(__name__)

HEARTBEAT_RETRY_SECONDS = 1.0  # a heartbeat the store missed is tried again this soon (at most a beat later)


class Heartbeat:
    """The heartbeats of one run, under the lease ``held`` (which each renewal moves on)."""

    def __init__(self, orch: "Orchestrator", *, worker_id: str, lease_seconds: float, held: HeldLease) -> None:
        self.orch, self.worker_id, self.lease_seconds, self.held = orch, worker_id, lease_seconds, held
        self.every = max(0.05, lease_seconds / 3)
        # the first is due a third of the lease held after it was last stored (the claim, a renewal while
        # artifacts_from was copied), not a third of a lease after the handler started (monotonic)
        self.next_at = time.monotonic() + min(self.every,
                                              max(0.0, held.expires_at - lease_seconds + self.every - orch.clock()))

    def beat(self, claim: "Claim") -> tuple[str | None, "Claim"]:
        """One heartbeat (``renew``): how the run must end (``lost``, ``unrenewed``) or None, and the claim to go on
        with, marked ``renewed`` once a lease record was (or may have been) written, which the outcome drops. Sets
        when the next one is due."""
        renewal = self.renew(claim)
        if renewal == "lost":
            self.next_at = time.monotonic()
            return "lost", claim
        if renewal != "failed":  # a record was written, or may have been (a commit whose answer was lost)
            claim = replace(claim, renewed=True)
        if renewal == "renewed":
            self.next_at = time.monotonic() + self.every
            return None, claim
        # a heartbeat the store missed is tried again soon: a whole beat later may be past the lease
        self.next_at = time.monotonic() + min(self.every, HEARTBEAT_RETRY_SECONDS)
        # the failed call itself may have taken the time left
        return ("unrenewed" if self.past_margin() else None), claim

    def past_margin(self) -> bool:
        """``HeldLease.must_stop`` now; when it is, the time is kept as when the run was stopped."""
        now = self.orch.clock()
        if not self.held.must_stop(now):
            return False
        self.held.stopped_at = now
        return True

    def renew(self, claim: "Claim") -> str:
        """``renewed`` (``held`` then holds the new expiry), ``lost`` if the job's log grew since the claim (taken
        over, cancelled), ``failed`` when the store could not be written (a folder of the file store gone or
        unwritable, the lease record's lock held on by a paused process), ``unknown`` when it could not be reached
        (PostgreSQL: a write whose answer was lost may have committed). Every call ends by the time the run would be
        stopped (``EventStore.calls_end_by``), so a stalled server cannot hold the worker past it, and so does the
        wait for the lease record's lock, within ``LOCK_WAIT_SECONDS`` (``bounded_waits``)."""
        held, store = self.held, self.orch.store
        now_m, now = time.monotonic(), self.orch.clock()
        stop_m = now_m + held.stop_at - now
        bound = min(LOCK_WAIT_SECONDS, stop_m - now_m) if stop_m > now_m else 0.0
        try:
            with store.calls_end_by(stop_m if stop_m > now_m else None), bounded_waits(lambda: False, bound):
                if store.read(claim.job_id, from_seq=claim.view.head.seq + 1):
                    return "lost"
                now = self.orch.clock()
                expires = lease_end(now, self.lease_seconds)
                write_lease(store, Lease(claim.job_id, claim.run_id, claim.epoch, self.worker_id, os.getpid(),
                                         expires, now))
        except (StorageError, LockHeldError) as exc:  # StorageUnavailableError too
            held.failed(self.orch.clock(), f"{exc.code}: {one_line(exc.message)}")
            log.warning("job %s: the lease could not be renewed (%s); the run goes on until %s, when it is "
                        "stopped unless a renewal succeeds first", claim.job_id, one_line(exc.message),
                        clock_mod.to_iso(held.stop_at), extra={"job_id": claim.job_id, "run_id": claim.run_id})
            return "unknown" if isinstance(exc, StorageUnavailableError) else "failed"
        held.renewed(expires)
        return "renewed"
