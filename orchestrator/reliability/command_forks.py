"""Command-line processes forked from one that imported the command line once (``python -m
orchestrator.reliability.command_forks``, a pre-fork server): ``python -m orchestrator ARGS...`` without the ~0.2 s
of CPU its imports take at each start.

The command-line sweep (``crash_cli.py``) runs two commands a kill (the one killed, the one run again), and that
start was most of its time (measured 2026-12-07: 8.6 s of 11.6 s for 16 kills, on a quiet host; at a load of 15,
several times that). Each command here is still a process of its own, killed by ``ORCH_CRASH_AT`` or a signal
where it is: the server forks it before anything but the imports ran (no store opened, no command begun), and the
child does what ``python -m orchestrator`` does from there (``entry.main``: the stop signals handled first, the
crash point armed from the environment it is given, its exit run as the interpreter's: threads joined, ``atexit``).
What it does not pass is the import itself, which holds no crash point (``tests/integration/test_crash_cli_sweep.py``
runs the same command lines both ways: the same exits, errors and deaths).

The protocol, one JSON or number per line: the sweep writes ``{"argv", "env", "output", "counts"}``; the server
answers the child's pid, then its ``waitstatus_to_exitcode`` once it ended (``-9``: SIGKILLed).
"""
from __future__ import annotations

import importlib
import json
import os
import pkgutil
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

PROG_NAME = "python3 -m orchestrator"


class CommandForks:
    """The sweep's side: a server started once, each command forked by it in turn (one at a time)."""

    def __init__(self, env: dict[str, str], *, wait: bool = True) -> None:
        """Start the server; with ``wait`` False, return before its imports are done (``ready``): servers started
        together import at once (the kill storm's, one a worker)."""
        self._server = subprocess.Popen([sys.executable, "-m", __name__], env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
        if wait:
            self.ready()

    def ready(self) -> None:
        """Wait until the server's imports are done (once)."""
        answer = self._line(60.0)
        if answer != "ready":
            self.close()
            raise RuntimeError(f"the command server did not start: {answer!r}")

    def start(self, argv: list[str], env: dict[str, str], output: Path, counts: Path | None = None) -> int:
        """Fork ``python -m orchestrator ARGV`` with ``env``, its stdout and stderr into ``output``: its pid. With
        ``counts``, the name of each crash point it passes is written there, one a line (``counting.count_into``)."""
        assert self._server.stdin is not None
        request = {"argv": argv, "env": env, "output": str(output), "counts": str(counts) if counts else ""}
        self._server.stdin.write(json.dumps(request).encode() + b"\n")
        self._server.stdin.flush()
        return int(self._line(60.0))

    def wait(self, pid: int, timeout: float) -> int | None:
        """The command's exit code (``-9``: SIGKILLed), or None when it still ran after ``timeout`` (then killed)."""
        try:
            return int(self._line(timeout))
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self._line(60.0)
            return None

    def _line(self, timeout: float) -> str:
        out = self._server.stdout
        assert out is not None
        if not select.select([out], [], [], timeout)[0]:  # unbuffered: no answer read ahead, out of select's sight
            raise TimeoutError("the command server did not answer")
        line = out.readline()
        if not line:
            raise RuntimeError(f"the command server ended (exit {self._server.wait()})")
        return line.decode().strip()

    def close(self) -> None:
        """End the server (its input closed, it returns) and close its pipes."""
        for pipe in (self._server.stdin, self._server.stdout):
            if pipe is not None:
                pipe.close()
        self._server.wait()

    def __enter__(self) -> CommandForks:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """Import what a command imports, then fork one command per request and answer its pid and exit code."""
    for module in _command_modules():  # imported once here: in every child already
        importlib.import_module(module)

    def answer(text: str) -> None:
        answers.write(f"{text}\n".encode())
        answers.flush()

    answer("ready")
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            _command(request)
        answer(str(pid))
        answer(str(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])))


def _command_modules() -> list[str]:
    """The package's modules a command may import (the command line imports most of them as it needs them, inside its
    functions): all but ``__main__`` (which runs a command), the demo's handlers and the campaigns', but for the
    handlers the sweep's commands get (``ORCH_HANDLERS``)."""
    import orchestrator
    from orchestrator.reliability.common import HANDLERS_MODULE

    names = [m.name for m in pkgutil.walk_packages(orchestrator.__path__, "orchestrator.")]
    return [n for n in names if not (n.endswith("__main__") or n.startswith(("orchestrator.demo",
                                                                               "orchestrator.reliability")))
            ] + [HANDLERS_MODULE]


def _command(request: dict[str, Any]) -> None:
    """In the forked child: ``python -m orchestrator`` from its ``entry.main`` on, then its exit; never returns."""
    code = 1
    try:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        output = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.environ.clear()
        os.environ.update(request["env"])
        from orchestrator import entry, faults

        faults.arm_from_env()
        if request["counts"]:
            from orchestrator.reliability.counting import count_into

            count_into(request["counts"])
        sys.argv = [PROG_NAME, *request["argv"]]
        entry.main(request["argv"], prog_name=PROG_NAME)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - as an uncaught exception ends the interpreter: a traceback, exit 1
        import traceback

        traceback.print_exc()
    finally:
        _exit(code)


def _exit(code: int) -> None:
    """The interpreter's exit, as far as a command can tell: its other threads joined, ``atexit`` run, output
    flushed."""
    import atexit

    try:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()  # noqa: SLF001 - what the interpreter runs at its exit
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
