"""The ``command`` handler: input ``{"argv": [...], "cwd": optional, "env": optional}``, no shell (and
``"artifacts_from"``, which the worker reads before the command starts: ``command_input``).

The child gets the worker's environment minus the orchestrator's own settings and secrets
(every ``ORCH_*`` variable, ``LLM_API_KEY``, and any name listed in ``SECRET_ENV``), plus the
job's ``env``, plus ``ORCH_JOB_ID``, ``ORCH_RUN_ID``, ``ORCH_CONTEXT_FILE``,
``ORCH_ARTIFACTS_DIR`` and ``ORCH_TERMINAL_FILE``. It runs in the job's artifact folder
unless ``cwd`` says otherwise (a relative ``cwd`` is taken inside that folder). A ``cwd`` that is not a
folder or cannot be entered is ``INVALID_INPUT``, a program that cannot be run ``COMMAND_NOT_FOUND``
(``start_error``): neither is retried.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Mapping

from orchestrator.command_input import parse_command_input
from orchestrator.errors import InvalidInputError
from orchestrator.handler_env import SECRET_ENV, handler_environment
from orchestrator.handlers import Handler, RunPaths
from orchestrator.handler_host import HandlerHost
from orchestrator.run_folder import write_json_atomic
from orchestrator.runner import Child, spawn_command
from orchestrator.security import safe_join

__all__ = ["SECRET_ENV", "CommandHandler", "CommandNotFound", "child_env", "start_error"]

# what a ``chdir`` or an ``exec`` fails with when the path is wrong, not the machine (no memory, no process to spare)
_BAD_PATH = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.ENOTDIR, errno.ELOOP,
                       errno.ENAMETOOLONG})


class CommandNotFound(Exception):
    """A command's program cannot be run (missing, a folder, not executable, not a program): the job's input, so
    the run fails as ``COMMAND_NOT_FOUND`` and is not retried. Not an ``OrchestratorError``: no command exits so."""

    code = "COMMAND_NOT_FOUND"

    @property
    def message(self) -> str:
        return str(self.args[0])


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

    def start(self, context: dict[str, Any], paths: RunPaths, host: HandlerHost | None = None,
              encoded_input: bytes | None = None) -> Child:
        argv, cwd, extra = parse_command_input(context.get("input"))
        paths.make_artifacts_dir()  # the command runs there (or below it)
        if cwd is None:
            workdir = paths.artifacts_dir
        elif os.path.isabs(cwd):
            workdir = Path(cwd)
        else:
            workdir = safe_join(paths.artifacts_dir, cwd)
        if not workdir.is_dir():
            raise InvalidInputError(f"command cwd {cwd!r} {_not_a_folder(workdir)}")
        paths.make_run_dir()
        write_json_atomic(paths.context_file, context)
        try:
            return spawn_command(argv, cwd=workdir, env=child_env(context, paths, extra), output=paths.output_file,
                                 terminal_file=paths.terminal_file)
        except OSError as exc:
            raise start_error(exc, argv[0], cwd, workdir) from None


def _not_a_folder(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        return "is a link to nothing"
    return "is not a folder" if os.path.lexists(path) else "does not exist"


def start_error(exc: OSError, program: str, cwd: str | None, workdir: Path) -> Exception:
    """What a command that could not start (``exc``, from ``Popen``) is: the job's ``cwd`` (``InvalidInputError``)
    or its program (``CommandNotFound``), named so that the input can be fixed, neither retried; or ``exc`` itself,
    the machine's (no process or memory to spare, the job's own folder), which may pass: retried.

    ``Popen`` names the path that failed: ``cwd`` when the child's ``chdir`` did, else the program. The worker
    checked that ``cwd`` is a folder, but it may be one that cannot be entered (no ``x`` permission) or be gone."""
    why = exc.strerror or str(exc)
    failed = os.fsdecode(exc.filename) if isinstance(exc.filename, (str, bytes, os.PathLike)) else None
    if exc.errno == errno.E2BIG:
        return InvalidInputError(f"command argv and env are too long to start a process ({why})")
    if exc.errno not in _BAD_PATH or failed is None:
        return exc
    if failed == str(workdir) and failed != program:
        return InvalidInputError(f"command cwd {cwd!r} cannot be entered: {why}") if cwd is not None else exc
    if failed != program:
        return exc
    path = os.path.join(workdir, program) if "/" in program else None  # else looked up on the PATH
    if exc.errno == errno.ENOENT:
        if path is None:
            return CommandNotFound(f"command {program!r} was not found on the PATH")
        if os.path.isfile(path):  # the kernel's ENOENT for a missing #! interpreter names the script
            return CommandNotFound(f"command {program!r} names an interpreter on its #! line that does not exist")
        if not os.path.isabs(program):  # looked up where the command runs, not where it was submitted
            return CommandNotFound(f"command {program!r} does not exist in {workdir}, the folder the command runs in "
                                   "(the job's artifact folder, or its \"cwd\"): give the program's absolute path, "
                                   "or the \"cwd\" it is in")
        return CommandNotFound(f"command {program!r} does not exist")
    if exc.errno == errno.EACCES and path is not None:
        if os.path.isdir(path):
            return CommandNotFound(f"command {program!r} is a folder, not a program")
        if os.path.isfile(path) and not os.access(path, os.X_OK):
            return CommandNotFound(f"command {program!r} is not executable (no x permission: chmod +x)")
    if exc.errno == errno.ENOEXEC:
        return CommandNotFound(f"command {program!r} is not a program this system can run: no #! line, or built "
                               f"for another system ({why})")
    return CommandNotFound(f"command {program!r} cannot be run: {why}")
