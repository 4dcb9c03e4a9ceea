"""jsonl-orchestrator: a local-first, event-sourced job orchestrator on signed JSONL files.

    from orchestrator import Orchestrator
    orch = Orchestrator(base_path=".", project_id="default")
    job_id = orch.submit(kind="command", input={"argv": ["echo", "hi"]})
    orch.status(job_id).state
"""
from __future__ import annotations

from orchestrator.api import JobStatus, Orchestrator, Submission
from orchestrator.errors import OrchestratorError
from orchestrator.security import sanitize_text

__all__ = ["JobStatus", "Orchestrator", "OrchestratorError", "Submission", "handler", "sanitize_text"]


def __getattr__(name: str):  # lazy: read-only commands do not import the handler machinery
    if name == "handler":
        from orchestrator.handlers import handler

        return handler
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
