"""jsonl-orchestrator: a local-first, event-sourced job orchestrator on signed JSONL files.

    from orchestrator import Orchestrator
    orch = Orchestrator(base_path=".", project_id="default")
    job_id = orch.submit(kind="command", input={"argv": ["echo", "hi"]})
    orch.status(job_id).state

The README's "Python API" section lists every method, what it returns and what it raises; the
errors are in ``orchestrator.errors``, all ``OrchestratorError`` with a ``code`` and an ``exit_code``.
"""
import sys

if sys.argv[:1] == ["-m"]:  # first: ``python3 -m`` put the current folder first on the path (start_folder.py); only
    from orchestrator import start_folder  # then imported (a script's cold start, or a program's import, has no use)

    start_folder.leave_out_if_shared()

from typing import TYPE_CHECKING, Any  # noqa: E402 - after the path is safe

from orchestrator import installed  # noqa: E402

installed.require()  # a Python without the dependencies: say so, and what to do, as the package is imported

if TYPE_CHECKING:  # what a type checker reads; at run time each name is imported on first use (``__getattr__``)
    from orchestrator.api import JobStatus, Orchestrator, Submission
    from orchestrator.control import ControlResult
    from orchestrator.errors import OrchestratorError
    from orchestrator.handlers import JobContext, handler
    from orchestrator.outcome import RunResult
    from orchestrator.payload_model import TerminalPayload
    from orchestrator.security import sanitize_text
    from orchestrator.worker import Worker, WorkerSettings

__all__ = ["ControlResult", "JobContext", "JobStatus", "Orchestrator", "OrchestratorError", "RunResult", "Submission",
           "TerminalPayload", "Worker", "WorkerSettings", "handler", "sanitize_text"]

# name -> its module, imported on first use: ``import orchestrator`` (every command's start, before it can handle a
# stop signal: ``entry``) imports none of them, and a read-only command none of the handler machinery
_SOURCES = {"Orchestrator": "orchestrator.api", "JobStatus": "orchestrator.api", "Submission": "orchestrator.api",
            "OrchestratorError": "orchestrator.errors", "sanitize_text": "orchestrator.security",
            "handler": "orchestrator.handlers", "JobContext": "orchestrator.handlers",
            "Worker": "orchestrator.worker", "WorkerSettings": "orchestrator.worker",
            "RunResult": "orchestrator.outcome", "ControlResult": "orchestrator.control",
            "TerminalPayload": "orchestrator.payload_model"}


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value  # looked up here only once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
