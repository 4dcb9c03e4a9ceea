"""The ``command`` handler: input ``{"argv": [...], "cwd": optional, "env": optional}``, no shell.

The child gets the worker's environment minus the orchestrator's own settings and secrets
(every ``ORCH_*`` variable, ``LLM_API_KEY``, and any name listed in ``SECRET_ENV``), plus the
job's ``env``, plus ``ORCH_JOB_ID``, ``ORCH_RUN_ID``, ``ORCH_CONTEXT_FILE``,
``ORCH_ARTIFACTS_DIR`` and ``ORCH_TERMINAL_FILE``. It runs in the job's artifact folder
unless ``cwd`` says otherwise (a relative ``cwd`` is taken inside that folder).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from orchestrator.command_input import parse_command_input
from orchestrator.errors import InvalidInputError
from orchestrator.handler_env import SECRET_ENV, handler_environment
from orchestrator.handlers import Handler, RunPaths
from orchestrator.handler_host import HandlerHost
from orchestrator.runner import Child, spawn_command, write_json_atomic
from orchestrator.security import safe_join

__all__ = ["SECRET_ENV", "CommandHandler", "child_env"]


def child_env(context: Mapping[str, Any], paths: RunPaths, extra: Mapping[str, str] | None,
              environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a command runs with: never the orchestrator's keys or settings."""
    env = handler_environment(os.environ if environ is None else environ)
    env.update(extra or {})  # checked by parse_command_input
    env.update(ORCH_JOB_ID=str(context["job_id"]), ORCH_RUN_ID=str(context["run_id"]),
               ORCH_CONTEXT_FILE=str(paths.context_file), ORCH_ARTIFACTS_DIR=str(paths.artifacts_dir),
               ORCH_TERMINAL_FILE=str(paths.terminal_file))
    return env


class CommandHandler(Handler):
    name = "command"

    def start(self, context: dict[str, Any], paths: RunPaths, host: HandlerHost | None = None) -> Child:
        argv, cwd, extra = parse_command_input(context.get("input"))
        paths.make_artifacts_dir()  # the command runs there (or below it)
        if cwd is None:
            workdir = paths.artifacts_dir
        elif os.path.isabs(cwd):
            workdir = Path(cwd)
        else:
            workdir = safe_join(paths.artifacts_dir, cwd)
        if not workdir.is_dir():
            raise InvalidInputError(f"command cwd {cwd!r} is not a folder")
        paths.make_run_dir()
        write_json_atomic(paths.context_file, context)
        return spawn_command(argv, cwd=workdir, env=child_env(context, paths, extra), output=paths.output_file,
                             terminal_file=paths.terminal_file)
