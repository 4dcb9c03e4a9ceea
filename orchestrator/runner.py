"""Child processes that run handlers, each in its own process group.

The worker never runs handler code in its own process: a command is started with
``Popen(start_new_session=True)``, a Python handler in a child process that calls the function
(a ``HandlerHost`` reused from run to run, ``orchestrator/handler_host.py``, or ``fork_call`` per
run). So a timeout or a stop can kill the whole group (``killpg``), a crashing handler cannot
take the worker down, and handler code cannot swallow the worker's stop signal. On Linux the
child also asks for ``SIGKILL`` when its worker dies (``PR_SET_PDEATHSIG``), so a SIGKILLed
worker does not leave its handler behind; what the handler started is ended with its run, or
found by stale recovery (``orchestrator/leftovers.py``).
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from orchestrator import pipe_ends
from orchestrator.descriptors import readable
from orchestrator.errors import MalformedPayloadError
from orchestrator.forked_logging import fresh_streams, standard_streams
from orchestrator.handler_env import strip_private_environment
from orchestrator.killed import KILLED_MAX_BYTES, NONE_KILLED, Killed, decode_killed, encode_killed
from orchestrator.leftovers import (LEFTOVER_GRACE_SECONDS, become_subreaper, end_leftovers, group_members,
                                    nothing_adopted, set_run_environment, started_child, wait_group_empty)
from orchestrator.leftovers import adopt_orphans as _adopt_orphans
from orchestrator.handler_result import handler_payload, leave_if_forked
from orchestrator.payload import MAX_PAYLOAD_BYTES, too_large
from orchestrator.libc import load_libc
from orchestrator.process_title import arguments_area, name_handler_process
from orchestrator.run_folder import DISK_REFUSALS, open_output, write_bytes_atomic
from orchestrator.store.files import NotRegularFileError, open_regular

if TYPE_CHECKING:  # handlers imports this module
    from orchestrator.handlers import RunPaths

PR_SET_PDEATHSIG = 1


def _prctl(option: int, value: int) -> None:
    """Linux only: ``prctl(option, value)`` for this process (or thread); elsewhere, or without libc, nothing
    (``load_libc`` is False there)."""
    try:
        libc = load_libc()
        if libc:
            libc.prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux only: the kernel sends ``sig`` to this process when the worker (the thread of it) that started it dies."""
    _prctl(PR_SET_PDEATHSIG, sig)


def adopt_orphans() -> None:
    """For the ``worker`` command's process: what a run leaves running behind an exited parent becomes its
    child, and is ended with the run (``leftovers.adopt_orphans``)."""
    _adopt_orphans(load_libc())


PR_SET_TIMERSLACK = 29


def precise_sleeps() -> None:
    """Linux only: let this thread's short sleeps end on time. The kernel may wake a thread up to
    50 us late (its timer slack, to batch wake-ups); a worker polls in steps of 50 us for an event's
    line (``EventStore.wait_for_more``), which that slack made 100 us. Measured here: a 50 us sleep
    took 106 us at P50 with the default slack, 56 us with 1 us."""
    _prctl(PR_SET_TIMERSLACK, 1000)  # nanoseconds


_stop_deferred = 0  # > 0 inside a part of a ``Child.wait`` that a stop signal must not cut (``stop_deferred``)


@contextmanager
def stop_deferred() -> Iterator[None]:
    """A part of a ``Child.wait`` that a stop signal must not cut in two: a payload frame half read (the bytes
    read so far would be lost, and the next read would take the middle of the payload for a frame's length), a
    child reaped and not yet recorded as reaped (its pid, free again, would be waited for or signalled later).
    The worker's signal handler raises ``WorkerStop`` only outside it (``StopRequest.on_signal``); the stop is
    seen once the wait returns."""
    global _stop_deferred
    _stop_deferred += 1
    try:
        yield
    finally:
        _stop_deferred -= 1


def stop_is_deferred() -> bool:
    return _stop_deferred > 0


class Child:
    """A running handler process: its pid is also its process group id.

    ``output`` holds what it printed (stdout and stderr); its terminal payload is read with
    ``payload()`` once it is done, and ``finish(paths)`` removes what the run left behind.
    """

    pid: int
    output: Path
    terminal_file: Path | None = None
    answered = False  # a Python handler's process answered: it ended what its run left (``end_leftovers``)
    # the handler itself is over (a command exited; a Python handler returned, raised or called ``sys.exit``): what is
    # left of the run is the end of what it left running, which its timeout does not cut (``RunSupervisor.supervise``)
    handler_done = False
    killed: Killed = NONE_KILLED  # what it had to kill of that, as it told the worker with its answer
    # a file of the worker's own for the run that its disk refused (no room, over quota, read-only), written in the
    # child: a per-run child's terminal file (``fork_call``). The store's fault, not the job's (``Worker.execute``)
    store_refused: OSError | None = None

    def payload(self) -> bytes | None:
        """The terminal payload the run produced, or None if it left none; ``MalformedPayloadError`` for one over
        ``MAX_PAYLOAD_BYTES`` (never read past the limit: ``truncate -s 400M`` costs the worker nothing), that
        is a symbolic link (never followed: until 2026-12-03 a link to any file the worker may read, a key, made
        that file the payload, into the job's events), that is not a regular file (a FIFO nobody writes would
        block the read forever), or that cannot be opened or read (a socket, a file without read permission):
        what the run left there is its own."""
        if self.terminal_file is None:
            return None
        try:
            fd, st = open_regular(self.terminal_file)
        except FileNotFoundError:
            return None
        except NotRegularFileError:
            raise MalformedPayloadError("the terminal payload is not a regular file (a FIFO, a device, a "
                                        "folder)") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise MalformedPayloadError("the terminal payload is a symbolic link, which the worker never follows "
                                            "(it could lead to any file the worker may read): write the file "
                                            "itself") from None
            raise _unreadable(exc) from None
        try:
            if st.st_size > MAX_PAYLOAD_BYTES:
                raise too_large(st.st_size)
            with open(fd, "rb", closefd=False) as fh:  # closed below, whatever happens
                data = fh.read(MAX_PAYLOAD_BYTES + 1)
            if len(data) > MAX_PAYLOAD_BYTES:  # what a process that outlived the run appended since
                raise too_large(max(len(data), os.fstat(fd).st_size))
            return data
        except OSError as exc:
            raise _unreadable(exc) from None
        finally:
            os.close(fd)

    def finish(self, paths: RunPaths) -> None:
        """After the outcome is recorded: remove what the run left behind (its folder, ``paths.remove``)."""
        paths.remove()

    def wait(self, timeout: float) -> int | None:
        """Exit status, or None if still running after ``timeout`` seconds."""
        raise NotImplementedError

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass




class PopenChild(Child):
    """A command. Its run is over when its process has exited *and* nothing is left in its process group: as
    systemd's ``KillMode=control-group``, what it started and left running (``sleep 313 &``) is sent SIGTERM
    when it exits, and SIGKILL after ``LEFTOVER_GRACE_SECONDS``; until then ``wait`` says "still running", so
    the worker keeps renewing the lease. The SIGTERM is sent while the exited process is not yet reaped (a
    zombie, seen through a pidfd): its pid, the group's id, cannot be given to another process meanwhile; and
    after, only while the group still has a member, which holds that id too. A process that left the group
    (``setsid``) is not found (``docs/worker.md``)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.returncode: int | None = None  # the process's exit status, once reaped
        self._grace_ends: float | None = None
        self._pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(proc.pid)
            except OSError:
                self._pidfd = None

    def wait(self, timeout: float) -> int | None:
        end = time.monotonic() + max(0.0, timeout)
        if self.returncode is None:
            if not self._exited(timeout):
                return None
            self._grace_ends = time.monotonic() + LEFTOVER_GRACE_SECONDS
            self.handler_done = True
        assert self._grace_ends is not None
        if wait_group_empty(self.pid, min(end, self._grace_ends)):
            return self.returncode
        if time.monotonic() >= self._grace_ends:
            self.kill_group(signal.SIGKILL)  # a member is left, so the group's id is still its own
            return self.returncode
        return None

    def _exited(self, timeout: float) -> bool:
        """Wait for the process to exit; once it has, SIGTERM its group and reap it."""
        if self._pidfd is not None:
            if not readable([self._pidfd], timeout):
                return False
            with stop_deferred():  # a stop between the reap and the next line would send this SIGTERM again, later
                self._end_group()  # exited, not reaped: the group's id is not reused meanwhile
                self.returncode = self.proc.wait()
                self._close()
            return True
        try:  # no pidfd (not Linux 5.3+): reaped first, then the group signalled (it holds the id if not empty)
            self.returncode = self.proc.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return False
        self._end_group()
        return True

    def _end_group(self) -> None:
        """SIGTERM what the exited command left running in its process group, listed first to be named with the run
        (``killed``, ``RUN_PROCESSES_KILLED``). In a worker that adopts orphans, a command that left nothing (nearly
        every run) costs one read of the worker's children: what it left in its group was re-parented to the worker
        when it exited, so with no such child there is nothing to list. Elsewhere it is a read of ``/proc``, as the
        search for the run's ``ORCH_RUN_ID`` that follows there already is (``end_exited_run``)."""
        self.killed = Killed.of([] if nothing_adopted() else group_members(self.pid) or [])
        self.kill_group(signal.SIGTERM)

    def _close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def finish(self, paths: RunPaths) -> None:
        self._close()
        super().finish(paths)


def _unreadable(exc: OSError) -> MalformedPayloadError:
    """A terminal file the worker cannot open or read (``Child.payload``): the run's doing, not the worker's."""
    return MalformedPayloadError(f"the terminal payload cannot be read: {exc.strerror or exc}")


UNREAPED: set[int] = set()  # children that announced their exit code and were still exiting


def reap_exited() -> None:
    """Reap the children in ``UNREAPED`` that have exited since."""
    for pid in list(UNREAPED):
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                UNREAPED.discard(pid)
        except ChildProcessError:
            UNREAPED.discard(pid)


# What a per-run child writes on its pipe to the worker (``ForkChild``), each message in one write (under ``PIPE_BUF``:
# atomic): ``HANDLER_ENDED`` as soon as its handler ended (returned, raised, ``sys.exit``), while what the run left is
# ended (its timeout no longer applies); ``NOT_WRITTEN`` and an errno (one byte), if its disk refused the terminal file
# (``DISK_REFUSALS``); ``EXIT_CODE``, its exit code (one byte) and what it killed (``encode_killed``), once its terminal
# file is written. A child that dies says none of them.
HANDLER_ENDED, NOT_WRITTEN, EXIT_CODE = b"e", b"w", b"x"


class ForkChild(Child):
    """A forked handler. ``done_fd`` is a pipe on which the child writes its exit code once its terminal
    file and output are written (``HANDLER_ENDED`` first): the worker records the outcome while the kernel still
    tears the child's address space down (~1-2 ms for a worker-sized process), and reaps it later."""

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
        """The exit status if the child has exited (reaped here), else None."""
        if self.returncode is None:
            with stop_deferred():  # a stop between the reap and its record would lose the status, and a later
                pid, status = os.waitpid(self.pid, os.WNOHANG)  # ``kill_group`` signal a group id given away
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
                    self._hear_the_rest()
                    self._close()
        return self.returncode

    def _hear_the_rest(self) -> None:
        """Read what the exited child said on its pipe and was not read yet (``_announced``) before the pipe is
        closed: a child that had exited before the worker first looked (a busy host) was reaped and its pipe closed
        unread, so a terminal file a full disk refused (``NOT_WRITTEN``) was charged to the job as
        ``NO_TERMINAL_SIGNAL_EXIT`` (until 2026-12-07). Only what is there is read: the child is gone."""
        while self._done_fd is not None and self._done_fd in readable([self._done_fd], 0):
            if self._announced() is not None:
                return

    def _close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._done_fd is not None:
            pipe_ends.close(self._done_fd)
            self._done_fd = None

    def _announced(self) -> bool | None:
        """Read the child's exit code from the pipe; False if it closed without one (it died), None if it only said
        that its handler ended (``HANDLER_ENDED``: ``handler_done``)."""
        assert self._done_fd is not None
        # each message written at once, so all here: ``HANDLER_ENDED`` (twice at most), ``NOT_WRITTEN`` and its errno,
        # ``EXIT_CODE``, code, report
        data = os.read(self._done_fd, 2 + 2 + 2 + KILLED_MAX_BYTES)
        if data.startswith(HANDLER_ENDED):
            self.handler_done = True
            data = data.lstrip(HANDLER_ENDED)  # said again if the body failed after it (``handler_main``)
            if not data:
                return None
        if data.startswith(NOT_WRITTEN) and len(data) >= 2:
            self.store_refused = OSError(data[1], os.strerror(data[1]), str(self.terminal_file))
            data = data[2:]
            if not data:
                return None
        pipe_ends.close(self._done_fd)
        self._done_fd = None
        if not data.startswith(EXIT_CODE):
            return False
        self.answered = True
        self.killed = decode_killed(data[2:])
        if self.poll() is None:  # still exiting: reaped by a later fork_call
            UNREAPED.add(self.pid)
            self.returncode = data[1]
            self._close()
        return True

    def wait(self, timeout: float) -> int | None:
        if self.poll() is not None:
            return self.returncode
        end = time.monotonic() + timeout
        while self._done_fd is not None:
            ready = readable([fd for fd in (self._done_fd, self._pidfd) if fd is not None],
                             max(0.0, end - time.monotonic()))
            if not ready:
                return None
            said = self._announced() if self._done_fd in ready else False
            if said:
                return self.returncode
            if said is False:
                break
        if self._pidfd is not None:
            readable([self._pidfd], max(0.0, end - time.monotonic()))
            return self.poll()
        pause, waited, step = threading.Event(), 0.0, 0.005
        while waited < timeout:  # fallback without pidfd: short sleeps, only while a job runs
            pause.wait(step)
            waited += step
            step = min(step * 2, 0.05)
            if self.poll() is not None:
                break
        return self.returncode


def spawn_command(argv: list[str], *, cwd: Path, env: dict[str, str], output: Path, terminal_file: Path) -> Child:
    """Start ``argv`` (no shell) in a new session, stdout and stderr into ``output``."""
    load_libc()  # in the worker, so the child's preexec_fn does not load it (a dlopen between fork and exec)
    fd = open_output(output)
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                start_new_session=True, close_fds=True, preexec_fn=die_with_parent)
    finally:
        os.close(fd)
    started_child(proc.pid)
    child = PopenChild(proc)
    child.terminal_file, child.output = terminal_file, output
    return child


def _become_handler_process(output: Path) -> None:
    """In a freshly forked child: own process group, a command line of its own, default signals, die with the
    worker, output to a file, and stdin from ``/dev/null``, as a command gets (not the worker's terminal or pipe); the
    app's logging handlers write through file objects of their own (``forked_logging``: none holds a lock another
    thread held)."""
    os.setpgid(0, 0)
    name_handler_process()  # not the worker's command line, which ``pkill -f`` would match
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    die_with_parent()
    strip_private_environment()  # no signing key, no API key in os.environ (docs/worker.md)
    become_subreaper(load_libc())  # what a run leaves is re-parented here, and ended (``end_leftovers``)
    standard = standard_streams()
    give_standard_streams(output)
    fresh_streams(standard)  # no logging handler writes through a lock another thread of the worker's process held


STANDARD_FDS = (0, 1, 2)


def give_standard_streams(output: Path, fds: tuple[int, ...] = STANDARD_FDS) -> None:
    """Point descriptors ``fds`` (of 0-2) at what a handler process gets, stdin ``/dev/null`` and stdout and stderr
    the output file, and make ``sys.stdin``/``sys.stdout``/``sys.stderr`` new files on 0-2: ``print()`` goes to
    the output file even if the worker had replaced ``sys.stdout`` (a logger, a test runner)."""
    for target in fds:
        fd = os.open(os.devnull, os.O_RDONLY) if target == 0 else open_output(output)
        if fd != target:  # a closed standard descriptor is the lowest free number: the one just opened
            os.dup2(fd, target)
            os.close(fd)
    sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)


def fork_handler() -> int:
    load_libc()  # in the worker, once: the child inherits the handle
    arguments_area()  # as libc: found once, the title written by each child (``name_handler_process``)
    reap_exited()
    sys.stdout.flush()
    sys.stderr.flush()
    with warnings.catch_warnings():  # Python 3.12 warns about fork() with threads; the child only runs handlers
        warnings.simplefilter("ignore", DeprecationWarning)
        _handler_fork.now = True
        try:
            pid = os.fork()
        finally:
            _handler_fork.now = False  # in the child too, once the fork hooks ran: it forks as a handler's process
    if pid:
        started_child(pid)
        try:
            os.setpgid(pid, pid)  # also done in the child: whichever runs first wins the race
        except (ProcessLookupError, PermissionError):
            pass
    return pid


# Set by the thread forking a handler process around its ``os.fork``, so the fork hooks tell that fork (whose child
# keeps what a handler process keeps, ``handler_main``) from any other of the program's (``in_handler_fork``).
_handler_fork = threading.local()


def in_handler_fork() -> bool:
    """In a fork hook: whether this fork is the worker's, of a handler process (``fork_handler``)."""
    return getattr(_handler_fork, "now", False)


@contextmanager
def forked_handler(pipes: int) -> Iterator[tuple[int, list[int]]]:
    """Make ``pipes`` pipes, listed (``pipe_ends.make``: no other fork keeps their ends), and fork a handler process
    (``fork_handler``) that keeps them all: yields the pid (0 in the child) and the pipes' descriptors (read end, write
    end, each pipe in turn). The parent closes the child's ends inside the block (``pipe_ends.close``), the child the
    parent's (``handler_main``). A refused fork (EAGAIN at a process limit, EMFILE) keeps no pipe."""
    fds = pipe_ends.make(pipes)
    try:
        with pipe_ends.keeping(fds):
            pid = fork_handler()
    except BaseException:
        for fd in fds:
            pipe_ends.close(fd)
        raise
    yield pid, fds


def handler_main(output: Path, close: tuple[int, ...], body: Callable[[], bytes | None],
                 announce: int | None = None) -> None:
    """What a freshly forked handler process runs: close the worker's ends of its pipes, ``close`` (the fork closed
    those of the worker's other handler processes, ``pipe_ends``), become a handler process, run
    ``body``, then exit 0 (1 if it raised; the traceback goes to ``output``), first writing the exit code on
    ``announce`` if given, followed by what ``body`` returned, or, if it did not return (``sys.exit`` in a handler),
    by what was killed of the run's leftovers on the way out (``encode_killed``). Never returns."""
    code, me, said = 1, os.getpid(), b""
    try:
        for fd in close:
            os.close(fd)
        _become_handler_process(output)
        said = body() or b""
        code = 0
    except SystemExit as exc:  # sys.exit(N) in a handler: the run ends without a payload, and with status N
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        leave_if_forked(me, code)  # a copy the handler forked: no traceback, no announcement
        traceback.print_exc()
    except BaseException:  # a KeyboardInterrupt of its own, a broken pipe: the run ends without a payload
        leave_if_forked(me, code)
        traceback.print_exc()
    finally:
        leave_if_forked(me, code)
        try:  # before it exits: its orphans would go to init, out of reach. A body that returned ended them already
            if not said and announce is not None:  # it did not return: what it kills (but multiprocessing's
                tell(announce, HANDLER_ENDED)  # helpers) is told all the same, where there is one to tell, and
                said = encode_killed(end_leftovers())  # that its handler ended first, as a body that returned does
            end_leftovers(keep_helpers=False)
        except BaseException:  # noqa: S110 - exiting anyway
            pass
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            if announce is not None:
                tell(announce, EXIT_CODE + bytes([code & 0xFF]) + said)  # everything is written: the worker may go on
            os._exit(code)


def tell(fd: int, message: bytes) -> None:
    """Write one message to the worker on a per-run child's pipe; a worker gone meanwhile hears nothing."""
    with suppress(OSError):
        os.write(fd, message)


def fork_call(fn: Callable[[], Any], *, terminal_file: Path, output: Path,
              context: dict[str, Any] | None = None) -> Child:
    """Run ``fn()`` in a child forked for this run alone; its payload (``handler_payload``) becomes the
    terminal file. Used with ``handler_process="per-run"``; the default reuses one ``HandlerHost``.
    ``context``: the run's, whose ids go in the child's environment and name (``set_run_environment``)."""
    with forked_handler(1) as (pid, (done_r, done_w)):  # no other fork keeps ``done_w`` (its end of file)
        if pid == 0:  # pragma: no cover - runs in the child, covered by the worker tests
            def body() -> bytes:
                set_run_environment(context or {}, load_libc())
                payload = handler_payload(fn)
                tell(done_w, HANDLER_ENDED)  # at once: what it left may take the grace to end, past the timeout
                killed = end_leftovers()  # before the payload is there: the run is over when what it started is gone
                try:
                    write_bytes_atomic(terminal_file, payload)
                except OSError as exc:  # a full disk is the store's fault, told to the worker (``store_refused``);
                    if exc.errno not in DISK_REFUSALS:  # anything else in the run's folder may be the run's doing
                        raise
                    tell(done_w, NOT_WRITTEN + bytes([exc.errno]))
                return encode_killed(killed)  # told to the worker with the exit code

            handler_main(output, (done_r,), body, done_w)
        pipe_ends.close(done_w)
    child = ForkChild(pid, done_r)
    child.terminal_file, child.output = terminal_file, output
    return child
