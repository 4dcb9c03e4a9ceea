"""Drive jobs into states by appending the events a worker would append (no worker needed)."""
from __future__ import annotations

from typing import Any

from orchestrator import Orchestrator

LEASE = "2030-01-01T00:00:00.000000Z"


def claim(orch: Orchestrator, job_id: str, run_id: str, *, worker: str = "w1", lease: str = LEASE,
          now: float | None = None) -> None:
    view = orch.load(job_id)
    st = view.state
    orch.append(view, job_id, [("job_claimed", {"worker_id": worker, "epoch": st.epoch + 1, "attempt": st.attempt + 1,
                                                "lease_expires_at": lease})], run_id=run_id, actor=worker, now=now)


def finish(orch: Orchestrator, job_id: str, event: str, data: dict[str, Any], *, now: float | None = None) -> None:
    view = orch.load(job_id)
    orch.append(view, job_id, [(event, data)], run_id=view.state.run_id, actor=view.state.worker_id or "w1", now=now)


def waiting_human(orch: Orchestrator, run_id: str = "run-1", question: str = "Deploy to prod?",
                  job_id: str | None = None, now: float | None = None) -> str:
    job_id = job_id or orch.submit("echo", {"text": "hi"})
    claim(orch, job_id, run_id, now=now)
    finish(orch, job_id, "human_input_requested", {"question": question}, now=now)
    return job_id


def awaiting_audit(orch: Orchestrator, run_id: str = "run-1", job_id: str | None = None,
                   now: float | None = None) -> str:
    job_id = job_id or orch.submit("echo", {"text": "hi"}, audit=True)
    claim(orch, job_id, run_id, now=now)
    finish(orch, job_id, "audit_requested", {"summary": "draft ready"}, now=now)
    return job_id


def running(orch: Orchestrator, run_id: str = "run-1", lease: str = LEASE, now: float | None = None,
            kind: str = "echo", input: dict[str, Any] | None = None) -> str:
    job_id = orch.submit(kind, input if input is not None else {"text": "hi"})
    claim(orch, job_id, run_id, lease=lease, now=now)
    return job_id


def stale_to_waiting_human(orch: Orchestrator, run_id: str = "run-1") -> str:
    """A run that left artifacts but no terminal payload, converged to waiting_human (v1.3.2)."""
    job_id = running(orch, run_id)
    finish(orch, job_id, "stale_recovered", {"to": "waiting_human", "error_code": "NO_TERMINAL_SIGNAL_STALE",
                                             "error": "worker w1 vanished", "stale_worker_id": "w1",
                                             "artifacts": ["report.md"],
                                             "question": "The run left report.md but no result. Accept it?"})
    return job_id


def event_types(orch: Orchestrator, job_id: str) -> list[str]:
    return [e.type for e in orch.load(job_id).events]
