"""The reused handler process: one child per worker that runs its Python handlers, one run after another.

``HandlerHost`` forks it (once, and again after a kill, a crash, ``max_runs`` runs, or a handler
registered since); the worker writes a request (kind, context) on a pipe as one frame and reads the
payload back as another, then what was killed of what the run left as a third (``HostRun``); ``_host_main`` is
the loop inside the child. Its folder, ``runs/host-*``, holds the output of the run in progress and a ``.alive``
file locked for as long as the worker or its handler process lives (made anew with each new host), so stale
recovery can remove the folders of workers that are gone (``sweep_dead_host_folders``). The
per-run child (``fork_call``) and commands are in ``orchestrator/runner.py``; see ``docs/worker.md``.
"""
from __future__ import annotations

import _signal  # ``signal.getsignal`` without its enum conversion: 60 signals in ~2.4 us instead of ~79
import fcntl
import json
import os
import shutil
import signal
import stat
import struct
import sys
import time
import weakref
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from orchestrator import pipe_ends
from orchestrator.descriptors import readable
from orchestrator.handler_result import handler_payload
from orchestrator.killed import KILLED_MAX_BYTES, decode_killed, encode_killed
from orchestrator.leftovers import end_leftovers, set_run_environment
from orchestrator.libc import load_libc
from orchestrator.payload import MAX_PAYLOAD_BYTES, too_large
from orchestrator.run_folder import make_private_folder
from orchestrator.runner import (STANDARD_FDS, UNREAPED, Child, forked_handler, give_standard_streams, handler_main,
                                 in_handler_fork, reap_exited, stop_deferred)
from orchestrator.store.files import STRAY_AGE, named_pid, open_regular, pid_alive

if TYPE_CHECKING:  # handlers imports this module
    from orchestrator.handlers import RunPaths

_FRAME = struct.Struct(">I")
SPIN_SECONDS = 0.0002  # see HostRun._spin


def _read_exact(fd: int, n: int) -> bytes | None:
    """Exactly ``n`` bytes, or None if the other end closed first (its process died)."""
    parts, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _read_frame(fd: int, limit: int | None = None) -> bytes | None:
    """One frame, or None if the other end closed first; ``FrameTooLarge`` (nothing allocated, the rest of
    the frame left unread) if it announces more than ``limit`` bytes."""
    head = _read_exact(fd, _FRAME.size)
    if head is None:
        return None
    size = _FRAME.unpack(head)[0]
    if limit is not None and size > limit:
        raise FrameTooLarge(size)
    return _read_exact(fd, size)


class FrameTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _write_frames(fd: int, *frames: bytes) -> None:
    """``frames`` one after the other, in one write: a reader that gets the first finds the others with it."""
    view = memoryview(b"".join(part for data in frames for part in (_FRAME.pack(len(data)), data)))
    while view:
        view = view[os.write(fd, view):]


def host_request(kind: str, context: dict[str, Any], encoded_input: bytes | None = None) -> bytes:
    """The request a handler process reads: ``{"kind", "context"}`` as JSON, with ``encoded_input`` (the input's
    JSON, ``submitted.encoded_input``) in the place of the context's ``input`` where it is given."""
    if encoded_input is None:
        return json.dumps({"kind": kind, "context": context}, ensure_ascii=False).encode()
    others = json.dumps({key: value for key, value in context.items() if key != "input"}, ensure_ascii=False).encode()
    return b"".join((b'{"kind":', json.dumps(kind, ensure_ascii=False).encode(), b',"context":{"input":', encoded_input,
                     b"," + others[1:] if len(others) > 2 else b"}", b"}"))


def _fd_identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class StandardStreams:
    """The standard streams the handler process was given, put back when a run changed them, after the run (before
    its output is flushed and its payload sent) and before the next: the process is the next run's too. A handler
    that closed descriptors 1 and 2 made the next run fail (the host could not size its output), one that put a
    file of its own there had that file emptied and the next run's output written into it, none of it in the
    run's record, and one that left ``sys.stdout`` closed lost its own payload (the flush raised). Costs six
    ``fstat`` a run."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.given = [_fd_identity(fd) for fd in STANDARD_FDS]
        self.files = (sys.stdin, sys.stdout, sys.stderr)

    def restore(self) -> None:
        changed = tuple(fd for fd, given in zip(STANDARD_FDS, self.given) if _fd_identity(fd) != given)
        if changed or any(f.closed for f in self.files):
            give_standard_streams(self.output, changed)
            self.given = [_fd_identity(fd) for fd in STANDARD_FDS]
            self.files = (sys.stdin, sys.stdout, sys.stderr)
        else:  # a run that only replaced the objects (``sys.stdout = io.StringIO()``)
            sys.stdin, sys.stdout, sys.stderr = self.files


TIMERS = (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)


class SignalState:
    """The signal handlers and mask the handler process was given, put back after each run, and no timer left
    armed: the process is the next run's too. A timer a run left (``signal.alarm(30)`` never cancelled on the way
    out) went off during a later run, another job's, which was killed by it (``NO_TERMINAL_SIGNAL_EXIT``) or
    interrupted by the first run's handler of it; a signal a run blocked or ignored stayed so for every later run,
    and for each process those started (both are inherited). A signal pending while blocked, which unblocking
    would deliver under the handler put back (most end the process), was the run's: it is discarded, but SIGCHLD.
    Costs three ``setitimer``, one ``pthread_sigmask`` and 60 look-ups a run (~7 us)."""

    def __init__(self) -> None:
        handlers = {sig: _signal.getsignal(sig) for sig in map(int, signal.valid_signals())
                    if sig not in (signal.SIGKILL, signal.SIGSTOP)}
        self.handlers = {sig: handler for sig, handler in handlers.items() if handler is not None}
        self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())

    @staticmethod
    def stop_timers() -> None:
        for timer in TIMERS:
            signal.setitimer(timer, 0)

    def restore(self) -> None:
        self.stop_timers()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        if blocked != self.mask:
            for sig in signal.sigpending() - self.mask:
                if sig != signal.SIGCHLD and sig in self.handlers:
                    signal.signal(sig, signal.SIG_IGN)  # a pending signal set to be ignored is discarded (POSIX)
        for sig, handler in self.handlers.items():
            if _signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)
        if blocked != self.mask:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)


def _host_main(call: Callable[[str, dict[str, Any]], Any], req_r: int, resp_w: int, output: Path) -> None:
    """The reused handler process: one request (kind, context) in, two frames out (the payload, sent as soon as the
    handler ended: what it left may take the grace to end, past the run's timeout, ``HostRun``; then what it killed of
    that, ``encode_killed``), until the worker closes."""
    streams = StandardStreams(output)
    signals = SignalState()
    me = os.getpid()
    libc = load_libc()  # the worker's handle, inherited: each run names this process after it (``set_run_environment``)
    while True:
        frame = _read_frame(req_r)
        if frame is None:  # the worker closed the pipe (or died): nothing more to run
            return
        request = json.loads(frame)
        streams.restore()
        # Emptied here as well as by the worker (``HandlerHost.clear_output``): threads or processes an
        # earlier run left behind may have printed since the worker emptied it, and only this process
        # knows when the run starts. This run's tail holds this run's output only.
        if os.fstat(1).st_size:
            os.ftruncate(1, 0)
        set_run_environment(request["context"], libc)  # its name, so stale recovery finds it if the worker stops
        try:
            payload = handler_payload(lambda: call(request["kind"], request["context"]))
        except BaseException:  # ``sys.exit`` in the handler (or its own KeyboardInterrupt): this process ends here
            if os.getpid() != me:  # a copy the handler forked: it leaves without a word (``handler_main``)
                raise
            signals.stop_timers()
            with suppress(OSError):  # an empty frame (no payload comes), then what it killed of what the run left
                _write_frames(resp_w, b"")
                _write_frames(resp_w, encode_killed(end_leftovers()))
            raise
        signals.stop_timers()  # at once: none goes off while the run's leftovers are ended, nor in the next run
        _write_frames(resp_w, payload)
        killed = end_leftovers()  # the run is over when what it started is gone (one waitid when it started nothing)
        signals.restore()
        # put back before the flush too: a run that left ``sys.stdout`` closed, or a line unfinished on a descriptor 1
        # it closed, made the flush raise, and this process died (before 2026-12-06, with the run's payload)
        streams.restore()
        sys.stdout.flush()
        sys.stderr.flush()
        _write_frames(resp_w, encode_killed(killed))


HOST_PREFIX = "host-"  # runs/host-<pid>-<random>: a worker's handler process folder
ALIVE_FILE = ".alive"  # inside it, locked for as long as the worker (or its handler process) lives


def new_host_folder(runs_dir: Path) -> Path:
    """A handler-process folder of this process in ``runs_dir`` (not made yet): ``host-<pid>-<random>``."""
    return runs_dir / f"{HOST_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"


def claim_host_folder(folder: Path) -> int:
    """Create ``folder`` holding a locked ``.alive`` file; returns the lock's descriptor (keep it open).

    The folder is made under a staging name and renamed into place once its lock is held, so a sweep
    never meets a live folder unlocked. The kernel drops the lock when this process and the handler
    process it forks (which inherits it) are both gone, however they ended and whatever pid namespace
    they ran in: what a pid check cannot tell across namespaces (``sweep_dead_host_folders``)."""
    staging = folder.with_name(f".{folder.name}.new")
    make_private_folder(staging, exist_ok=False)  # its output.log's tail goes into the run's event
    fd = os.open(staging / ALIVE_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(staging, folder)
    except BaseException:
        os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return fd


def sweep_dead_host_folders(runs_dir: Path) -> list[str]:
    """Remove the handler-process folders of workers that are gone without ``close`` (SIGKILL, a
    crash): their ``.alive`` lock is free. Their ``output.log`` may still hold what the last handler
    printed. A folder with no lock file, and a staging folder (its worker killed while making it),
    goes once it is ``STRAY_AGE`` old. Returns the names removed."""
    try:
        names = [n for n in os.listdir(runs_dir) if n.startswith((HOST_PREFIX, f".{HOST_PREFIX}"))]
    except OSError:
        return []
    removed = []
    for name in names:
        folder = runs_dir / name
        try:
            # a staging folder goes by age only: its lock file exists a moment before it is locked
            fd = -1 if name.startswith(".") else os.open(folder / ALIVE_FILE, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
        except OSError:
            continue
        if fd < 0:  # a folder of a worker from before the lock file counts as alive while its pid is
            try:
                pid = named_pid(name[len(HOST_PREFIX):].split("-", 1)[0])  # host-<pid>-<random>
                if time.time() - os.stat(folder).st_mtime >= STRAY_AGE and (
                        name.startswith(".") or pid is None or not pid_alive(pid)):
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(name)
            except OSError:
                pass
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # still that folder's lock file? A worker that closed its host removed the folder first
            # and may have made a new one of the same name since, with a new, held lock file
            same = os.path.samestat(os.fstat(fd), os.stat(folder / ALIVE_FILE))
        except OSError:  # held (its worker or handler process is alive), or gone meanwhile
            os.close(fd)
            continue
        try:
            if same:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(name)
        finally:
            os.close(fd)
    return removed


class HandlerHost:
    """One long-lived child process that runs a worker's Python handlers, one run after another.

    Forking a worker-sized process costs ~2 ms here, more than everything else a short job does;
    the host is forked once (and again after a kill, a crash, or ``max_runs`` runs) and keeps every
    property of the per-run child: handler code runs outside the worker, in its own process group
    (a timeout or a stop kills the group, and the next run gets a fresh host), it dies with the
    worker (``PR_SET_PDEATHSIG``), and a handler that crashes the process ends its run with no
    payload (``NO_TERMINAL_SIGNAL_EXIT``). What a run no longer gets is a fresh copy of the worker:
    module state a handler changes is seen by the next runs of the same host (``docs/worker.md``).

    A host belongs to the process that made it (``owner``): a process forked from it (``os.fork()``, a
    ``multiprocessing`` fork) holds a copy of the host, pipes and all, which it must neither use (its requests and the
    parent's would interleave on one pipe, and each read the other's payloads) nor end (the parent's folder and
    process), nor keep: a child holding the request pipe's write end kept the host from seeing its end when the
    parent closed the worker, so it lived on as long as the child did. The fork lets the copy go
    (``_let_the_parents_hosts_go``; at first use too, for a fork no hook saw), and a run there forks a host of its own.
    """

    def __init__(self, runs_dir: Path, call: Callable[[str, dict[str, Any]], Any], max_runs: int,
                 generation: Callable[[], int]) -> None:
        self.runs_dir = runs_dir
        self.owner = os.getpid()
        self.folder = new_host_folder(runs_dir)
        self.output = self.folder / "output.log"
        self.call = call
        self.max_runs = max_runs
        self.generation = generation  # a change (a handler registered since the fork) asks for a new host
        self.pid: int | None = None
        self.runs = 0
        self._forked_at_generation = -1
        self._req_w: int | None = None
        self._resp_r: int | None = None
        self._pidfd: int | None = None  # the host's, where the kernel has them: its death seen at once (``HostRun``)
        self._alive: int | None = None  # the folder's lock (``claim_host_folder``), held until ``close``
        _HOSTS.add(self)

    def run(self, kind: str, context: dict[str, Any], encoded_input: bytes | None = None) -> "HostRun":
        """Hand one run to the host (forking a new one if there is none); returns at once. ``encoded_input``:
        ``context["input"]`` as JSON already, put in the request as it is."""
        request = host_request(kind, context, encoded_input)
        self._leave_to_parent()
        for attempt in (1, 2):
            if self.pid is None or self.runs >= self.max_runs or self._forked_at_generation != self.generation():
                self.close()
                self._spawn()
            assert self._req_w is not None and self._resp_r is not None and self.pid is not None
            try:
                _write_frames(self._req_w, request)
            except BrokenPipeError:  # it died between runs (killed from outside): start a new one
                self.discard()
                if attempt == 2:
                    raise
                continue
            self.runs += 1
            return HostRun(self, self.pid, self._resp_r, self._pidfd)
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        """Fork a new host; ``run`` called ``close`` just before, which released the folder of the last one."""
        generation = self.generation()
        with pipe_ends.guarded():  # the folder's lock is the host's once a fork can see it (``_leave_to_parent``)
            self._alive = claim_host_folder(self.folder)
        with forked_handler(2) as (pid, (req_r, req_w, resp_r, resp_w)):  # no other fork keeps their ends
            if pid == 0:  # pragma: no cover - runs in the host, covered by the worker tests
                handler_main(self.output, (req_w, resp_r), lambda: _host_main(self.call, req_r, resp_w, self.output))
            pipe_ends.close(req_r)
            pipe_ends.close(resp_w)
        self.pid, self.runs, self._req_w, self._resp_r = pid, 0, req_w, resp_r
        self._forked_at_generation = generation
        if hasattr(os, "pidfd_open"):
            try:  # a child not reaped yet, so the pid is still its own even if it died already
                self._pidfd = pipe_ends.listed(lambda: os.pidfd_open(pid))
            except OSError:
                self._pidfd = None

    def _close_fds(self) -> None:
        """Close this process's ends of the host's pipes and its pidfd (``pipe_ends.close``: in a forked child's copy,
        none, the fork closed them, and their numbers may be another descriptor's since)."""
        for fd in (self._req_w, self._resp_r, self._pidfd):
            if fd is not None:
                pipe_ends.close(fd)
        self._req_w = self._resp_r = self._pidfd = None

    def _let_go_of_the_folder_lock(self) -> None:
        with pipe_ends.guarded():  # a fork between the close and the forgetting would close the number again
            if self._alive is not None:
                os.close(self._alive)
                self._alive = None

    def lost(self, pid: int) -> None:
        """The host ``pid`` died or was killed, and was reaped by the caller: the next run forks a new one."""
        if self.pid == pid:
            self.pid = None
            self._close_fds()

    @property
    def inherited(self) -> bool:
        """Whether this is a forked child's copy of its parent's host (``_leave_to_parent``)."""
        return os.getpid() != self.owner

    def _leave_to_parent(self) -> None:
        """In a forked child, let the parent's host go before anything else is done with it: only this process's
        copies of its descriptors are closed (the parent's host sees the end of its requests once the parent closes
        its own), its process is the parent's to reap and its folder the parent's to remove. This process's own host
        is forked when a run needs one, in a folder of its own."""
        if not self.inherited:
            return
        self._close_fds()
        self._let_go_of_the_folder_lock()  # a copy: the parent's lock stays held
        self.pid, self.runs = None, 0
        self.owner = os.getpid()
        self.folder = new_host_folder(self.runs_dir)
        self.output = self.folder / "output.log"

    def discard(self) -> None:
        """Forget a host that was killed or died; it is reaped later, and the next run forks a new one."""
        self._leave_to_parent()
        if self.pid is not None:
            UNREAPED.add(self.pid)
        self._close_fds()
        self.pid = None
        reap_exited()

    def close(self) -> None:
        """Let the host exit (it reads the end of its pipe) and remove its folder."""
        self.discard()
        shutil.rmtree(self.folder, ignore_errors=True)
        self._let_go_of_the_folder_lock()

    def clear_output(self) -> None:
        """Empty the output file once the run's tail was taken, as a per-run child's folder is removed:
        what a handler printed is not kept, and a run that ends before the host starts it (killed or
        dead before ``_host_main`` empties the file) shows no earlier run's output in its record.

        The run can reach the path and put something else there, as at a run's own output (``sanitized_tail``):
        nothing there is followed (a link: its target was truncated) nor opened but a regular file (a FIFO blocks).
        The host goes on writing into the file it was given, gone from the path, so every later run's tail would say
        what was found there instead of its output: a host whose output file is not at its path is replaced."""
        if not _empty_regular_file(self.output):
            self.close()  # the next run forks a new host, its folder made anew


_HOSTS: "weakref.WeakSet[HandlerHost]" = weakref.WeakSet()  # this process's hosts (copies of them in a child)


def _let_the_parents_hosts_go() -> None:
    """After any fork of this process but a handler process's (whose host's folder lock must stay held), the child lets
    its copies of the hosts go (``HandlerHost._leave_to_parent``; their pipe ends the fork closed already,
    ``pipe_ends``). A handler process keeps none of its worker's hosts as its own."""
    if in_handler_fork():
        _HOSTS.clear()
        return
    for host in list(_HOSTS):
        host._leave_to_parent()  # noqa: SLF001


os.register_at_fork(after_in_child=_let_the_parents_hosts_go)


def _empty_regular_file(path: Path) -> bool:
    """Empty ``path`` if a regular file is there, never through a link; False if anything else is (or nothing)."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return False
        if not st.st_size:  # a truncation is a journaled inode update, even of an empty file
            return True
        fd, _ = open_regular(path, os.O_WRONLY)  # what is at the path may have changed since the ``lstat``
    except OSError:
        return False
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    finally:
        os.close(fd)
    return True


class HostRun(Child):
    """One run inside a ``HandlerHost``: done when the host answers, or ends if the host dies.

    The host's death is seen through its pidfd, not only as the end of its reply pipe: a process the handler forked
    (``os.fork``, a ``multiprocessing`` pool, which keep every descriptor) holds the pipe's write end for as long
    as it lives, and the run waited for it (a pool's workers never end)."""

    def __init__(self, host: HandlerHost, pid: int, resp_fd: int, pidfd: int | None = None) -> None:
        self.host = host
        self.pid = pid
        self.output = host.output
        self.returncode: int | None = None
        self._payload: bytes | None = None
        self._too_large: int | None = None  # the size the host announced for a payload over the limit
        self._resp_fd = resp_fd
        self._pidfd = pidfd  # the host's (``HandlerHost``'s, closed by ``host.lost``: used only until then)
        self.reaped: int | None = None  # the host's exit status once this run reaped it (``_reaped_within``)

    def wait(self, timeout: float) -> int | None:
        """Two frames: the payload (``handler_done``: the run's timeout no longer applies), then, once what the run
        left is ended, what was killed of it (``_host_main``); the exit status once both are in."""
        if self.returncode is not None:
            return self.returncode
        end = time.monotonic() + timeout
        while True:
            left = max(0.0, end - time.monotonic())
            answered = self._spin(min(left, SPIN_SECONDS))
            if not answered:
                watched = [self._resp_fd] if self._pidfd is None else [self._resp_fd, self._pidfd]
                ready = readable(watched, max(0.0, end - time.monotonic()))
                answered = self._resp_fd in ready
                if ready and not answered:  # the host exited: all it wrote is in the pipe by now
                    answered = bool(readable([self._resp_fd], 0))
                    if not answered:  # no answer, and none can come: a process it forked may hold the pipe open
                        return self._died()
            if not answered:
                return None
            try:
                with stop_deferred():  # a frame is read whole: a stop cutting it would lose what was read of it
                    frame = _read_frame(self._resp_fd, KILLED_MAX_BYTES if self.handler_done else MAX_PAYLOAD_BYTES)
            except FrameTooLarge as exc:
                # not read (nor allocated): the host is blocked writing the rest, and a pipe that holds it cannot
                # serve another run. It is killed and replaced (``handler_payload`` refuses such a payload first,
                # so only a handler writing to the pipe itself gets here)
                self._too_large = exc.size
                self.kill_group(signal.SIGKILL)
                return self.returncode
            if frame is None:  # the pipe closed: the host died, before its payload or while it ended the leftovers
                return self._died()
            if not self.handler_done:  # empty: the host did not answer (``sys.exit`` in the handler) and exits
                self._payload, self.handler_done = frame or None, True
                continue
            self.killed = decode_killed(frame)
            if self._payload is None:
                return self._died()
            self.returncode, self.answered = 0, True
            return 0

    def _died(self) -> int | None:
        """The reply pipe closed, or the host exited without answering: it died during the run (its exit status
        is the run's), or a handler closed the pipe and still runs, which must not hang the worker: it is killed.
        What the run left (in the host's group or out of it) is ended by the worker (``end_exited_run``)."""
        self.returncode = self._reaped_within(1.0)
        if self.returncode is None:
            self.kill_group(signal.SIGKILL)
        self.host.lost(self.pid)
        return self.returncode

    def _spin(self, seconds: float) -> bool:
        """Look at the reply again and again for a moment before sleeping in ``poll``: a short handler answers within
        ~0.1 ms, and a worker that stays on its CPU that long records the outcome sooner than one that
        sleeps and is woken (terminal latency P99 2.4-2.6 -> 2.05-2.2 ms, docs/worker.md)."""
        end = time.monotonic() + seconds
        while True:
            answered = bool(readable([self._resp_fd], 0))
            if answered or time.monotonic() >= end:
                return answered

    def _reaped_within(self, seconds: float) -> int | None:
        """Reap the host if it exits within ``seconds``: its exit status (-1 if already reaped), else None.
        ``reaped`` says so too, set with the reap itself: a stop signal cannot fall between them."""
        deadline = time.monotonic() + seconds
        while True:
            with stop_deferred():
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                    if pid:
                        self.reaped = os.waitstatus_to_exitcode(status)
                except ChildProcessError:
                    self.reaped = -1
            if self.reaped is not None:
                return self.reaped
            if time.monotonic() > deadline:
                return None
            time.sleep(0.001)

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        super().kill_group(sig)
        if sig == signal.SIGKILL and self.returncode is None:
            self.returncode = -sig
            self.host.lost(self.pid)  # its process group is gone: the next run forks a new host
            try:  # reaped now, as the per-run child is; else (or a stop signal cutting the wait short) later
                self._reaped_within(5.0)
            finally:
                if self.reaped is None:  # not a pid already reaped: the kernel may give it to another child
                    UNREAPED.add(self.pid)

    def payload(self) -> bytes | None:
        if self._too_large is not None:
            raise too_large(self._too_large)
        return self._payload

    def finish(self, paths: RunPaths) -> None:
        """A run in the host made no folder (no ``rmtree`` per run): what it left is the host's output."""
        self.host.clear_output()

