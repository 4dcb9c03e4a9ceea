"""Handlers: what a job's ``kind`` runs.

Built in: ``command`` (a subprocess, no shell) and ``llm`` (an OpenAI-compatible endpoint).
Python handlers are registered by name with ``@handler("name")`` in a module the worker
imports (``--import MODULE`` / ``ORCH_HANDLERS``), or named ``module:function`` as the kind.
A Python handler receives a ``JobContext`` and returns the terminal payload (a dict or a
``TerminalPayload``); it runs in a child process of the worker, reused from run to run by
default (see ``orchestrator/handler_host.py``; the per-run child is ``runner.fork_call``).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from orchestrator.errors import ConfigError, HandlerNotFoundError, Interrupted
from orchestrator.handler_host import HandlerHost
from orchestrator.leftovers import own_code
from orchestrator.limits import KIND_RULE, is_kind
from orchestrator.run_folder import make_private_folder
from orchestrator.runner import Child, fork_call
from orchestrator.security import shown
from orchestrator.start_folder import refused as start_folder_refused


@dataclass(frozen=True)
class RunPaths:
    """Where one run reads its context and leaves its terminal payload and output."""

    run_dir: Path
    context_file: Path
    terminal_file: Path
    output_file: Path
    artifacts_dir: Path

    @classmethod
    def create(cls, run_dir: Path, artifacts_dir: Path) -> "RunPaths":
        """The paths of a run; nothing is created yet (each handler makes the folders it uses)."""
        return cls(run_dir, run_dir / "context.json", run_dir / "terminal.json", run_dir / "output.log",
                   artifacts_dir)

    def make_run_dir(self) -> None:
        make_private_folder(self.run_dir)  # owner-only: another user who could write in it chose the outcome

    def make_artifacts_dir(self) -> None:
        make_private_folder(self.artifacts_dir)

    def remove(self) -> None:
        """Remove the run's folder once its outcome is recorded or it could not start (the output's
        tail is in the event); the job's artifact folder stays."""
        shutil.rmtree(self.run_dir, ignore_errors=True)


class JobContext:
    """The handler context as an object: ``ctx.input``, ``ctx.answers``, ``ctx["job_id"]``, ``ctx.artifacts_dir``.

    The job's artifact folder is created the first time a handler asks for it (``ctx.artifacts_dir``,
    ``ctx["artifacts_dir"]``, ``to_dict()``, which the llm handler always calls): a folder costs ~0.25 ms
    here, and most Python runs write none.
    """

    def __init__(self, data: Mapping[str, Any], artifacts_dir: Path) -> None:
        self._data = dict(data)
        self._artifacts_dir = Path(artifacts_dir)
        self._artifacts_made = False

    @property
    def artifacts_dir(self) -> Path:
        if not self._artifacts_made:
            make_private_folder(self._artifacts_dir)
            self._artifacts_made = True
        return self._artifacts_dir

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        if name == "artifacts_dir":
            self.artifacts_dir  # noqa: B018 - created on first use
        return self._data[name]

    def to_dict(self) -> dict[str, Any]:
        self.artifacts_dir  # noqa: B018 - created on first use
        return dict(self._data)


class Handler:
    name: str = "?"

    def start(self, context: dict[str, Any], paths: RunPaths, host: HandlerHost | None = None,
              encoded_input: bytes | None = None) -> Child:
        """Start the run; ``host`` is the worker's reused handler process (None: a process for this run);
        ``encoded_input``, when given, is ``context["input"]`` as JSON already (``submitted.encoded_input``)."""
        raise NotImplementedError


class PythonHandler(Handler):
    def __init__(self, name: str, fn: Callable[[JobContext], Any]) -> None:
        self.name = name
        self.fn = fn

    def start(self, context: dict[str, Any], paths: RunPaths, host: HandlerHost | None = None,
              encoded_input: bytes | None = None) -> Child:
        if host is not None:
            return host.run(self.name, context, encoded_input)
        paths.make_run_dir()
        ctx = JobContext(context, paths.artifacts_dir)
        return fork_call(lambda: self.fn(ctx), terminal_file=paths.terminal_file, output=paths.output_file,
                         context=context)


def call_python_handler(kind: str, context: dict[str, Any]) -> Any:
    """What a ``HandlerHost`` runs for one request: the Python handler of ``kind`` on ``context``."""
    found = resolve(kind)
    if not isinstance(found, PythonHandler):
        raise LookupError(f"no Python handler for kind {kind!r} in the handler process")
    return found.fn(JobContext(context, Path(context["artifacts_dir"])))  # the worker sets it for every run


_REGISTRY: dict[str, Handler] = {}
_generation = 0  # bumped by every registration: a reused handler process forked before it is replaced


def register(name: str, fn: Callable[[JobContext], Any]) -> None:
    global _generation
    if not is_kind(name) or name in ("command",):
        raise ConfigError(f"a handler name must be a job kind of {KIND_RULE}, other than 'command' (built in), "
                          f"not {shown(name)}")
    if not callable(fn):
        raise ConfigError(f"the handler {name!r} must be a function taking the job's context, not {shown(fn)}")
    _REGISTRY[name] = PythonHandler(name, fn)
    _generation += 1


def registry_generation() -> int:
    """Changes whenever a handler is registered, so a ``HandlerHost`` forked earlier is not reused."""
    return _generation


def handler(name: str) -> Callable[[Callable[[JobContext], Any]], Callable[[JobContext], Any]]:
    """Decorator: ``@handler("report")`` makes jobs of kind ``report`` call the function."""
    if callable(name):  # ``@handler`` without a name: the function would be replaced, and nothing registered
        raise ConfigError(f"name the handler: @handler(\"report\") above def {getattr(name, '__name__', '...')}(ctx)")

    def deco(fn: Callable[[JobContext], Any]) -> Callable[[JobContext], Any]:
        register(name, fn)
        return fn

    return deco


def lookup(kind: str) -> Handler:
    """The handler for a kind: built-in, registered, or ``module:function``.

    Raises ``HandlerNotFoundError`` saying why (its ``reason`` detail), also when the module of a
    ``module:function`` kind raises while importing, whatever it raises (``sys.exit()``, a
    ``KeyboardInterrupt`` of its own: ``_stops_the_worker``): any job's kind is imported, and a
    broken module must not stop the worker that meets it.
    """
    _builtins()
    found = _REGISTRY.get(kind)
    if found is not None:
        return found
    if ":" not in kind:
        raise _not_found(kind, "no handler is registered with this name")
    module_name, _, attr = kind.partition(":")
    if not all(part.isidentifier() for part in module_name.split(".")):  # "", "..x", "a b"
        raise _not_found(kind, f"{module_name!r} is not a module name")
    try:
        module = _import(module_name)
    except BaseException as exc:
        if _stops_the_worker(exc):
            raise
        raise _not_found(kind, _import_failure(module_name, exc)) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        # found and imported: its PYTHONPATH (the advice for a module that cannot be imported) is not the cause
        raise _not_found(kind, f"module {module_name!r} has no function {attr!r} (the module imports here: check the "
                               f"function's name in the kind, or give this worker the version of {module_name!r} "
                               "that defines it)")
    return PythonHandler(kind, fn)


def resolve(kind: str) -> Handler | None:
    """The handler for a kind, or None (``lookup`` says why)."""
    try:
        return lookup(kind)
    except HandlerNotFoundError:
        return None


def _not_found(kind: str, reason: str) -> HandlerNotFoundError:
    # the reason in brackets (``security.shown``): after "'refresh_token': " it would be redacted as a secret's value
    return HandlerNotFoundError(f"no handler for kind {kind!r} ({reason})", kind=kind, reason=reason)


def _import(module_name: str) -> Any:
    """Import a handler module in this process (the worker's, at claim time), keeping the worker's
    SIGTERM/SIGINT handlers: a module that replaces them at import would keep the worker from stopping.
    A module already imported whole is returned as it is: no import runs, so no handler can change (and
    each job's lookup does not pay for saving them, ~5 us)."""
    module = sys.modules.get(module_name)
    if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False):
        return module
    saved = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    try:
        # what the module starts at import is the worker's, not a run's leftover; what it prints is a diagnostic,
        # for stderr: the worker's stdout carries its results (with --json, JSON Lines and nothing else)
        with own_code(), _stdout_to_stderr():
            return importlib.import_module(module_name)
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in saved.items():
                if handler is not None and signal.getsignal(sig) is not handler:
                    signal.signal(sig, handler)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send this process's stdout to stderr in the block: ``sys.stdout``, and descriptor 1 itself, which a program
    the module starts at import (``subprocess.run``) or C code writes to. What was printed before is flushed to the
    real stdout first. A process without a descriptor 1 or 2 (closed by its parent) keeps the Python-level
    redirection alone."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # a stdout closed, or none: nothing to keep
        sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:
        saved = None
    try:
        if saved is not None:
            try:
                os.dup2(2, 1)
            except OSError:
                os.close(saved)
                saved = None
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 1)
            os.close(saved)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _stops_the_worker(exc: BaseException) -> bool:
    """Whether ``exc``, raised while a handler module was imported, is (or may be) a request to stop the worker
    rather than the module's own doing: the worker's ``WorkerStop`` (raised only inside its waits, so not
    expected here); the command line's ``Interrupted``, raised by its SIGTERM and SIGINT handler, which is the one in
    place while the ``worker`` command imports its ``--import`` modules, before the worker handles its signals; or a
    ``KeyboardInterrupt`` while SIGINT still has Python's default handler (a worker used from Python without
    ``handle_signals``, or the command before it: it may be the operator's Ctrl-C). A worker that handles its
    signals never gets a ``KeyboardInterrupt`` from SIGINT, so there one, like a ``SystemExit``, is the
    module's and only fails the lookup."""
    stop = getattr(sys.modules.get("orchestrator.worker_stop"), "WorkerStop", None)  # loaded with a worker only
    if isinstance(exc, Interrupted) or (stop is not None and isinstance(exc, stop)):
        return True
    return isinstance(exc, KeyboardInterrupt) and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def look_in_start_folder() -> str | None:
    """Let handler modules (``--import``, a ``module:function`` kind) be found in the folder this process was started
    in, as ``python -m orchestrator`` finds them, whichever way the ``worker`` command was started (the console
    script and ``scripts/worker.py`` put their own folder first on ``sys.path``, not the current one). The folder goes
    LAST on the path: a file there named like the standard library's, an installed package's or the orchestrator's
    own module is never what an import finds; only a module found nowhere else comes from it. Absolute, so a later
    change of the current folder changes nothing; a folder removed meanwhile adds nothing. Never a folder someone
    other than this user or root could put a module in (``start_folder.refused``): None then, and a module
    not found says why (``_where_modules_are_looked_for``); ``python3 -m orchestrator`` took such a folder off the path
    before (``start_folder.leave_out_if_shared``). The ``worker`` command calls it; the Python API leaves ``sys.path``
    to its caller."""
    global _START_FOLDER_REFUSED
    folder, on_path = _current_folder()
    if folder is None or on_path:
        return folder
    refused = start_folder_refused(folder)
    if refused:
        _START_FOLDER_REFUSED = (folder, refused)
        return None
    sys.path.append(folder)
    return folder


# the current folder ``look_in_start_folder`` did not put on the path, and why
_START_FOLDER_REFUSED: tuple[str, str] | None = None


def _current_folder() -> tuple[str | None, bool]:
    """The current folder (None: it cannot be named, removed meanwhile) and whether ``sys.path`` looks in it."""
    try:
        folder = os.getcwd()
    except OSError:
        return None, False
    return folder, any(entry in ("", ".") or os.path.abspath(entry) == folder for entry in sys.path)


def _where_modules_are_looked_for() -> str:
    """Where a missing module was looked for, and how to make it found: the current folder, when it is on the path
    (the ``worker`` command, ``python -m``), and the Python path; or why the current folder is not looked in."""
    folder, on_path = _current_folder()
    if on_path:
        return (f"it is neither in the current folder, {folder}, nor on the Python path (start the worker in the "
                "folder that holds it, or add that folder to PYTHONPATH)")
    if _START_FOLDER_REFUSED is not None and _START_FOLDER_REFUSED[0] == folder:
        return (f"it is not on the Python path, and the current folder is never looked in when others may write "
                f"it: {_START_FOLDER_REFUSED[1]}")
    return "it is not on the Python path (add the folder that holds it to PYTHONPATH)"


def _import_failure(module_name: str, exc: BaseException) -> str:
    """Why a handler module did not import: not there (saying where the worker looked), or its own error (a bug, a
    missing dependency)."""
    missing = getattr(exc, "name", None)
    if isinstance(exc, ModuleNotFoundError) and missing and (module_name + ".").startswith(missing + "."):
        return f"no module {module_name!r} can be imported here: {_where_modules_are_looked_for()}"
    raised = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__  # KeyboardInterrupt: no text
    return f"importing module {module_name!r} raised {raised} (python -c 'import {module_name}' shows the traceback)"


def import_modules(names: Iterable[str]) -> list[str]:
    """Import modules that register handlers (``--import``/``ORCH_HANDLERS``); raise ``ConfigError``, also for an empty
    name (``--import "$MOD"`` with MOD unset imports nothing its jobs need: refused, not passed over)."""
    done = []
    for name in names:
        name = name.strip()
        if not name:
            raise ConfigError(f"cannot import handler module {name!r} (no module name given)")
        try:
            _import(name)
        except BaseException as exc:  # a module's own error too (sys.exit() included), not only a missing one
            if _stops_the_worker(exc):
                raise
            raise ConfigError(f"cannot import handler module {name!r} ({_import_failure(name, exc)})") from None
        done.append(name)
    return done


def _builtins() -> None:
    if "command" not in _REGISTRY:
        from orchestrator.handlers.command import CommandHandler
        from orchestrator.handlers.llm import call_llm

        _REGISTRY["command"] = CommandHandler()
        _REGISTRY.setdefault("llm", PythonHandler("llm", call_llm))
