"""The input of the built-in ``command`` kind: ``{"argv": [...], "cwd": optional, "env": optional}``, and, as
any job's input, ``"artifacts_from"`` (a job id or a list of them: the worker copies their folders into the job's
``inputs/`` before the command starts, with ``ORCH_ARTIFACTS_IMPORT`` on; ``artifacts_import``).

Checked at submit (``Orchestrator.submit_job``), so a job that can never start is refused there
instead of failing at run time, and again when it runs (``handlers/command.py``), for jobs
submitted before submit checked it. A module of its own: importing ``orchestrator.handlers``
loads the process machinery (``runner``), which a submit has no use for.
"""
from __future__ import annotations

from typing import Any

from orchestrator.errors import InvalidInputError

COMMAND_KIND = "command"
KEYS = frozenset({"argv", "cwd", "env", "artifacts_from"})
EXAMPLE = '{"argv": ["echo", "hi"]}'


def parse_command_input(value: Any) -> tuple[list[str], str | None, dict[str, str] | None]:
    """``(argv, cwd, env)`` of a command job's input; ``InvalidInputError`` if it cannot start a process
    (a NUL byte cannot reach ``exec``: the process would not start)."""
    if not isinstance(value, dict):
        raise InvalidInputError(f"command input must be an object like {EXAMPLE}")
    if not value.keys() <= KEYS:
        raise InvalidInputError(f"command input has unknown keys: {sorted(set(value) - KEYS)}; it is like {EXAMPLE}")
    argv = value.get("argv")
    if not isinstance(argv, list) or not argv or not all(_plain(a) for a in argv):
        raise InvalidInputError(f"command input 'argv' must be a non-empty list of strings without NUL, "
                                f"like {EXAMPLE}")
    cwd = value.get("cwd")
    if cwd is not None and not _plain(cwd):
        raise InvalidInputError("command input 'cwd' must be a string without NUL")
    env = value.get("env")
    if env is not None and not (isinstance(env, dict) and all(
            _plain(k) and k and "=" not in k and _plain(v) for k, v in env.items())):
        raise InvalidInputError("command input 'env' must map names (no '=', no NUL) to strings without NUL")
    if value.get("artifacts_from"):  # checked as the worker reads it (imported only then: most commands name none)
        from orchestrator.artifacts_import import artifacts_from

        artifacts_from(value)
    return argv, cwd, env


def _plain(text: Any) -> bool:
    return isinstance(text, str) and "\0" not in text
