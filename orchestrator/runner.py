"""Child processes that run handlers, each in its own process group.

The worker never runs handler code in its own process: a command is started with
``Popen(start_new_session=True)``, a Python handler in a forked child that calls the function
and writes the terminal file. So a timeout or a stop can kill the whole group
(``killpg``), a crashing handler cannot take the worker down, and handler code cannot
swallow the worker's stop signal. On Linux the child also asks for ``SIGKILL`` when its
worker dies (``PR_SET_PDEATHSIG``), so a SIGKILLed worker does not leave its handler behind
(a grandchild that started its own session can still survive: the lease covers that).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import select
import signal
import subprocess
import sys
import threading
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

PR_SET_PDEATHSIG = 1
_libc: Any = None


def _load_libc() -> Any:
    """libc, loaded once in the worker: ``find_library`` runs ``ldconfig`` (~2 ms), too slow for every child."""
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            _libc = False
    return _libc


def _die_with_parent() -> None:
    """Linux only: the kernel SIGKILLs this process when the worker that started it dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = _load_libc()
        if libc:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Child:
    """A running handler process: its pid is also its process group id."""

    pid: int

    def poll(self) -> int | None:
        raise NotImplementedError

    def wait(self, timeout: float) -> int | None:
        """Exit status, or None if still running after ``timeout`` seconds."""
        raise NotImplementedError

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class PopenChild(Child):
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None


_UNREAPED: set[int] = set()  # children that announced their exit code and were still exiting


def _reap() -> None:
    for pid in list(_UNREAPED):
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                _UNREAPED.discard(pid)
        except ChildProcessError:
            _UNREAPED.discard(pid)


class ForkChild(Child):
    """A forked handler. ``done_fd`` is a pipe on which the child writes its exit code once its terminal
    file and output are written: the worker records the outcome while the kernel still tears the
    child's address space down (~1-2 ms for a worker-sized process), and reaps it later."""

    def __init__(self, pid: int, done_fd: int | None = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._done_fd = done_fd
        self._pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(pid)
            except OSError:
                self._pidfd = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                self._close()
        return self.returncode

    def _close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._done_fd is not None:
            os.close(self._done_fd)
            self._done_fd = None

    def _announced(self) -> bool:
        """Read the child's exit code from the pipe; False if it closed without one (it died)."""
        assert self._done_fd is not None
        data = os.read(self._done_fd, 1)
        os.close(self._done_fd)
        self._done_fd = None
        if not data:
            return False
        if self.poll() is None:  # still exiting: reaped by a later fork_call
            _UNREAPED.add(self.pid)
            self.returncode = data[0]
            self._close()
        return True

    def wait(self, timeout: float) -> int | None:
        if self.poll() is not None:
            return self.returncode
        if self._done_fd is not None:
            fds = [fd for fd in (self._done_fd, self._pidfd) if fd is not None]
            readable, _, _ = select.select(fds, [], [], max(0.0, timeout))
            if self._done_fd in readable and self._announced():
                return self.returncode
            if not readable:
                return None
        if self._pidfd is not None:
            select.select([self._pidfd], [], [], max(0.0, timeout))
            return self.poll()
        pause, waited, step = threading.Event(), 0.0, 0.005
        while waited < timeout:  # fallback without pidfd: short sleeps, only while a job runs
            pause.wait(step)
            waited += step
            step = min(step * 2, 0.05)
            if self.poll() is not None:
                break
        return self.returncode


def _open_output(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def spawn_command(argv: list[str], *, cwd: Path, env: dict[str, str], output: Path) -> Child:
    """Start ``argv`` (no shell) in a new session, stdout and stderr into ``output``."""
    _load_libc()  # in the worker, so the child's preexec_fn does not search for libc
    fd = _open_output(output)
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                start_new_session=True, close_fds=True, preexec_fn=_die_with_parent)
    finally:
        os.close(fd)
    return PopenChild(proc)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, allow_nan=False))
    os.replace(tmp, path)


def fork_call(fn: Callable[[], Any], *, terminal_file: Path, output: Path) -> Child:
    """Run ``fn()`` in a forked child (own process group); its return value becomes the terminal file.

    An exception becomes a ``failed`` payload with ``error_code`` ``HANDLER_ERROR``; a return
    value that is not JSON leaves an unparsable terminal file (``MALFORMED_PAYLOAD``).
    """
    _load_libc()  # in the worker, once: the child inherits the handle
    _reap()
    sys.stdout.flush()
    sys.stderr.flush()
    done_r, done_w = os.pipe()
    with warnings.catch_warnings():  # Python 3.12 warns about fork() with threads; the child only runs fn
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, covered by the worker tests
        code = 1
        try:
            os.close(done_r)
            os.setpgid(0, 0)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _die_with_parent()
            fd = _open_output(output)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            try:
                result = fn()
                if hasattr(result, "model_dump"):
                    result = result.model_dump(mode="json")
                try:
                    write_json_atomic(terminal_file, result)
                except (TypeError, ValueError) as exc:
                    terminal_file.write_text(f"<handler returned a value that is not JSON: {exc}>")
                code = 0
            except Exception as exc:  # the handler's failure is the job's outcome, not the worker's
                traceback.print_exc()
                write_json_atomic(terminal_file, {
                    "status": "failed", "summary": f"handler raised {type(exc).__name__}: {exc}"[:2000],
                    "error_code": "HANDLER_ERROR", "retryable": True})
                code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                try:
                    os.write(done_w, bytes([code & 0xFF]))  # everything is written: the worker may go on
                except OSError:
                    pass
                os._exit(code)
    os.close(done_w)
    try:
        os.setpgid(pid, pid)  # also done in the child: whichever runs first wins the race
    except (ProcessLookupError, PermissionError):
        pass
    return ForkChild(pid, done_r)


def tail(path: Path, limit: int = 4000) -> str:
    """The last ``limit`` bytes of a file as text (not yet sanitized)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            data = fh.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return ("..." + text) if size > limit else text
