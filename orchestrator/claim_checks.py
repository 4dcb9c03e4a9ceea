"""What ``Worker.execute`` checks of a claim handed to it before it runs it: that this worker has not started its run
already (``StartedRuns``), then that the job, read now, is still under that run and the claim this worker's
(``no_longer_held``). A claim runs once, by the worker that made it (README, "Python API")."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from orchestrator.outcome import Claim, RunResult, lost
from orchestrator.state import RUNNING

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator


class StartedRuns:
    """The runs, ``(run_id, epoch)``, a worker's ``execute`` started and has not seen recorded, under a lock: two
    threads that executed one claim at once both read the job running under it, and both ran its handler, in one run
    folder (one recorded, the other ``lease_lost`` after it had run). A run whose outcome was recorded, or refused
    (the job no longer under it), is forgotten: the read refuses it from then on, and a looping caller's set stays
    small. One that raised is kept: its job may still be running under it (a hand-back the store refused)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: set[tuple[str, int]] = set()

    def start(self, claim: Claim) -> bool:
        """Mark ``claim``'s run started; False when it is already (run by another thread, or raised)."""
        run = (claim.run_id, claim.epoch)
        with self._lock:
            if run in self._started:
                return False
            self._started.add(run)
            return True

    def ended(self, claim: Claim) -> None:
        """Forget ``claim``'s run, whose outcome is recorded or was refused."""
        with self._lock:
            self._started.discard((claim.run_id, claim.epoch))


def started_already(claim: Claim) -> RunResult:
    """``lease_lost`` for a claim whose run this worker started already (``StartedRuns``): nothing run nor read."""
    return lost(claim, f"job {claim.job_id} run {claim.run_id}: this worker started it already (execute called again "
                       "before that run ended); nothing was run", RUNNING)


def no_longer_held(orch: Orchestrator, worker_id: str, claim: Claim) -> RunResult | None:
    """``lease_lost`` for a claim handed to ``execute`` whose run the job, as read now, is not, or whose run is
    another worker's; None while it is this worker's (``worker_id``) to run. ``run_once`` and ``run`` run the claim
    they have just made, and skip this read (it is on their hot path)."""
    view = orch.load_more(claim.view)
    s = view.state if view.ok else None
    if s is not None and s.state == RUNNING and (s.run_id, s.epoch) == (claim.run_id, claim.epoch):
        if s.worker_id == worker_id:
            return None
        why = f"worker {s.worker_id} made it, not this worker ({worker_id})"
    elif s is None:
        why = "the job's history does not verify"
    else:
        why = f"the job is {s.state}" + (f" under run {s.run_id}" if s.state == RUNNING else "")
    return lost(claim, f"job {claim.job_id} run {claim.run_id}: {why}; nothing was run", None if s is None else s.state)
