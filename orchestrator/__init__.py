"""jsonl-orchestrator: a local-first, event-sourced job orchestrator on signed JSONL files.

    from orchestrator import Orchestrator
    orch = Orchestrator(base_path=".", project_id="default")
    job_id = orch.submit(kind="command", input={"argv": ["echo", "hi"]})
    orch.status(job_id).state

The README's "Python API" section lists every method, what it returns and what it raises; the
errors are in ``orchestrator.errors``, all ``OrchestratorError`` with a ``code`` and an ``exit_code``.
"""
from orchestrator import start_folder

start_folder.leave_out_if_shared()  # first: ``python3 -m`` put the current folder first on the path (start_folder.py)

from typing import Any  # noqa: E402 - after the path is safe

from orchestrator import installed  # noqa: E402

try:
    from orchestrator.api import JobStatus, Orchestrator, Submission
    from orchestrator.errors import OrchestratorError
    from orchestrator.security import sanitize_text
except ModuleNotFoundError as exc:  # a Python without the dependencies: say so, and what to do (installed.py)
    installed.explain(exc)
    raise

__all__ = ["ControlResult", "JobContext", "JobStatus", "Orchestrator", "OrchestratorError", "RunResult", "Submission",
           "TerminalPayload", "Worker", "WorkerSettings", "handler", "sanitize_text"]

# name -> module: imported on first use, so read-only commands do not import the handler machinery
_LAZY = {"handler": "orchestrator.handlers", "JobContext": "orchestrator.handlers",
         "Worker": "orchestrator.worker", "WorkerSettings": "orchestrator.worker",
         "RunResult": "orchestrator.outcome", "ControlResult": "orchestrator.control",
         "TerminalPayload": "orchestrator.payload_model"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
