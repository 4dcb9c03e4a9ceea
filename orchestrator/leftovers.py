"""What a run leaves running, ended when the run is over.

A handler may start processes and leave them running (``sleep 313 &``, a forgotten ``Popen``, a
daemon). They are part of its run: once the run is over they are ended, as systemd's
``KillMode=control-group`` ends a service's processes, so that a job never runs twice at once
(its retry, or its recovery after a dead worker, beside what its first run left). Three places:

* a ``command``: its process group, when it exits (``runner.PopenChild``), then the processes that left
  the group (``setsid``): in a worker that is a process of its own (the ``worker`` command), which is a child
  subreaper (``adopt_orphans``), every process a run left behind its exited parent is the worker's child by
  then (``end_adopted``); elsewhere (a worker inside another program), those that hold the run's
  ``ORCH_RUN_ID`` (``end_exited_run``);
* a Python handler's process (``HandlerHost`` or the per-run child): after every run, every
  process it left (``end_leftovers``), but multiprocessing's own helpers (its forkserver, its resource
  tracker), which serve the next runs. The handler process is a *child subreaper*, so a process
  whose parent exits (a double fork, a daemon that called ``setsid``) becomes its child, and it
  only ever signals its own children: a pid cannot be reused while its parent has not reaped it.
  If it dies without answering (``os._exit``, a signal), the worker ends its group and what holds the
  run's ``ORCH_RUN_ID`` instead (``end_exited_run``);
* a run the worker kills (a timeout, a stop, a lost lease: ``kill_run``), and a run whose worker died or
  was stopped past its lease: stale recovery on the same machine kills the processes whose environment
  holds the run's ``ORCH_RUN_ID``, and those named after the run (``kill_run_processes``): a Python handler's
  process takes the run's name (``set_run_environment``), since the ``ORCH_RUN_ID`` it puts in its own
  environment is not where ``/proc/<pid>/environ`` looks (the environment it was started with).

What a run leaves in its group or in a handler process gets SIGTERM, then SIGKILL after
``LEFTOVER_GRACE_SECONDS``; the rest SIGKILL at once. Linux only (``/proc``, ``prctl``, pidfds);
elsewhere nothing here does anything. Limits: docs/worker.md.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from orchestrator.descriptors import readable
from orchestrator.killed import Killed

if TYPE_CHECKING:  # runner imports this module
    from orchestrator.runner import Child

LEFTOVER_GRACE_SECONDS = 1.0  # what a run left running gets between SIGTERM and SIGKILL once the run is over
HARD_LIMIT_SECONDS = 5.0  # past the grace, how long a handler process goes on killing before it gives up
POLL_SECONDS = 0.01
KILL_WAIT_SECONDS = 1.0  # how long a SIGKILLed process of a run is waited for before the outcome is recorded anyway
# how long a run whose handler ended in time may go on past its timeout, ending what it left (``supervisor.py``):
# a handler process gives up on its leftovers past the grace and ``HARD_LIMIT_SECONDS`` (a command's wait, at the grace)
LEFTOVERS_END_SECONDS = LEFTOVER_GRACE_SECONDS + HARD_LIMIT_SECONDS + KILL_WAIT_SECONDS
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
NAME_BYTES = 15  # what the kernel keeps of a process's name (``comm``: TASK_COMM_LEN, 16, with its NUL)
RUN_ID_VARIABLE = "ORCH_RUN_ID"


def become_subreaper(libc: Any) -> None:
    """Linux: orphaned descendants of this process are re-parented to it, not to init, so it can end them."""
    if libc and sys.platform.startswith("linux"):
        try:
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass


_adopting = False  # this process adopts orphans (``adopt_orphans`` was called)
_own_children: dict[int, bytes] = {}  # pid -> start time of each child this process started itself, or had before


def adopt_orphans(libc: Any) -> None:
    """For a worker that is a process of its own (the ``worker`` command), never for one inside another program:
    become a child subreaper, so that what a run leaves running behind a parent that exited (a ``setsid``
    daemon, a double fork, a process that cleared its environment) is re-parented to the worker, and
    ``end_adopted`` ends it with the run. The children this process has at that moment are not a run's
    (something an imported handler module started): they are spared, held with their start times as the
    children it starts are, so that a leftover given the pid of one that exited is not taken for it."""
    global _adopting
    if not sys.platform.startswith("linux"):
        return
    become_subreaper(libc)
    if libc and _is_subreaper(libc):
        _adopting = True
        for pid in _child_pids():
            started_child(pid)


def _forget_adoption() -> None:
    """In a forked child (a handler process): the worker's adoption and children are not its own."""
    global _adopting
    _adopting = False
    _own_children.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_adoption)


def _is_subreaper(libc: Any) -> bool:
    flag = ctypes.c_int(0)
    try:
        return libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0 and flag.value == 1
    except (OSError, AttributeError):
        return False


def started_child(pid: int) -> None:
    """Called by whatever starts a child of this process (``runner``): it is not a run's leftover. Held with
    its start time, so a pid that a leftover is given later is not taken for it."""
    if _adopting:
        started = start_time(pid)
        if started is not None:
            _own_children[pid] = started


@contextmanager
def own_code() -> Iterator[None]:
    """Around code of this process's own that may start processes (a handler module imported when a job of its
    kind is claimed, ``handlers._import``): the children that appear meanwhile (a daemon in a session of its own,
    one re-parented here by a double fork) are not a run's, as those it had before adopting orphans are not.
    Two reads of ``/proc/self/task/*/children``, in a worker that adopts orphans only."""
    if not _adopting:
        yield
        return
    before = set(_child_pids())
    try:
        yield
    finally:
        for pid in _child_pids():
            if pid not in before:
                started_child(pid)


def _stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces and parentheses):
    ``[0]`` the state, ``[1]`` the parent, ``[2]`` the process group, ``[19]`` the start time; None if gone.
    Read with ``os.open`` and one ``os.read`` (the file is a few hundred bytes): ~9 us a process here, against
    ~15 us through a buffered file object, in a read of every process's."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.read(fd, 4096).rsplit(b")", 1)[1].split()
        finally:
            os.close(fd)
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> bytes | None:
    """When the process started (clock ticks since boot), which a pid given to another process changes (also what
    an import's record names its process by, ``import_record``)."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _adopted() -> list[int]:
    """This process's children that it did not start: what runs left behind a parent that exited. One in this
    process's own process group is not a run's: every run's process has a group of its own (a command a session
    too), and what it starts stays in that group or one it makes (a command's descendants cannot join a group of
    another session); what this process's own code starts (a module it imported, at import or from a thread of
    its, at any time) is in this process's group, unless it was given a group or a session of its own."""
    assert _adopting
    children = _child_pids()
    for pid in [pid for pid in _own_children if pid not in children]:
        del _own_children[pid]  # reaped: its pid may be given to another process
    own_group = os.getpgrp()
    return [pid for pid in children if (pid not in _own_children or _own_children[pid] != start_time(pid))
            and _group_of(pid) != own_group]


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:  # reaped meanwhile (by whoever started it)
        return None


def end_adopted(wait: float = KILL_WAIT_SECONDS) -> list[int] | None:
    """In a worker that adopts orphans: SIGKILL every child it did not start (and the group each one leads), then
    what their deaths re-parent to it, reaping each by its pid, until none is left or ``wait`` seconds have
    passed; the pids killed. None in a process that does not adopt orphans (the caller falls back to
    ``kill_run_processes``). With nothing adopted (nearly every run) this is one read of
    ``/proc/self/task/*/children`` per thread. A pid is signalled only while it is an unreaped child of this
    process, so it cannot belong to another process meanwhile."""
    if not _adopting:
        return None
    return _end_children(_adopted, grace=0.0, give_up_after=wait)


def run_process_name(run_id: str) -> bytes:
    """The name (``/proc/<pid>/comm``) a Python handler's process takes for the run ``run_id``: the id's first
    ``NAME_BYTES`` characters (``run-`` and 11 of its 16 hex digits, 44 random bits), all the kernel keeps."""
    return run_id.encode()[:NAME_BYTES]


def set_run_environment(context: Mapping[str, Any], libc: Any = None) -> None:
    """In a Python handler's process, for the run of ``context``: ``ORCH_JOB_ID`` and ``ORCH_RUN_ID`` in its
    environment, as a command has them, and, with ``libc`` (Linux), the run's name as the process's
    (``run_process_name``, ``PR_SET_NAME``: ~1.4 us). A process the handler starts inherits the variables, and one
    it forks the name, which is how stale recovery finds them (``kill_run_processes``) once its worker died or was
    paused past its lease: the handler process itself too, by its name. Its environment as ``/proc`` shows it is
    the one it was started with, the worker's, without the run's ``ORCH_RUN_ID``; ``os.environ`` changes only a
    copy in its memory (until 2026-12-06 a reused or per-run handler process went on running beside its job's
    retry). The reused process keeps the name of its last run until the next (``ps`` shows it)."""
    for name, key in (("ORCH_JOB_ID", "job_id"), (RUN_ID_VARIABLE, "run_id")):
        if context.get(key) is not None:
            os.environ[name] = str(context[key])
    if libc and context.get("run_id") is not None:
        try:
            libc.prctl(PR_SET_NAME, run_process_name(str(context["run_id"])), 0, 0, 0)
        except (OSError, AttributeError):
            pass


def _has_children() -> bool:
    """Whether this process has a child, running or exited, without reaping any (``WNOWAIT``): the one call the
    common case (a run that started nothing) costs."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _reaped(pid: int) -> bool:
    """Reap the child ``pid`` if it has exited (True; also when it is no longer a child of this process). A
    child is waited for by its pid, never ``waitpid(-1)``: that would reap multiprocessing's helpers too."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True


def _multiprocessing_helpers() -> dict[int, int | None]:
    """The long-lived helpers multiprocessing started in this process (the forkserver, the resource tracker),
    each with the descriptor that keeps it running. They serve every later use of multiprocessing here: one
    killed or reaped behind multiprocessing's back fails its next use (``ChildProcessError`` from the
    forkserver), and the resource tracker ignores SIGTERM (each run would wait out the grace for SIGKILL).
    Only modules already imported are looked at."""
    helpers: dict[int, int | None] = {}
    for module, holder, pid_name, fd_name in (
            ("multiprocessing.forkserver", "_forkserver", "_forkserver_pid", "_forkserver_alive_fd"),
            ("multiprocessing.resource_tracker", "_resource_tracker", "_pid", "_fd")):
        helper = getattr(sys.modules.get(module), holder, None)
        pid = getattr(helper, pid_name, None)
        if isinstance(pid, int) and pid > 0:
            helpers[pid] = getattr(helper, fd_name, None)
    return helpers


def _release_helpers() -> None:
    """For a handler process about to exit: close what keeps multiprocessing's helpers running, so they end on
    their own (the forkserver when its pipe closes, the resource tracker once no process writes to it) instead
    of waiting out the grace for SIGKILL."""
    for fd in _multiprocessing_helpers().values():
        if isinstance(fd, int) and fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def _child_pids() -> list[int]:
    """This process's children (every thread's), from ``/proc/self/task/*/children``; a scan of every
    process's parent where the kernel has no such file."""
    me = os.getpid()
    pids: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return []
    listed = False
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as fh:
                pids.extend(int(p) for p in fh.read().split())
            listed = True
        except (OSError, ValueError):
            continue
    if listed:
        return pids
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(name)
            if fields and len(fields) > 1 and int(fields[1]) == me:
                pids.append(int(name))
    return pids


def _signal_child(pid: int, sig: int) -> None:
    """Signal a child of this process, and its process group if it leads one (``setsid``): the child is not
    reaped yet, so neither its pid nor the group's id can belong to another process."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


last_end_seconds = 0.0  # how long the last ``end_leftovers`` took, in this process (tests, diagnosis)


def end_leftovers(grace: float = LEFTOVER_GRACE_SECONDS, *, keep_helpers: bool = True) -> list[int]:
    """In a handler process, once a run is over: end every process the run left; the pids it had to signal (none
    that had exited already). With no child at all (the common case) this is one ``waitid``. multiprocessing's
    helpers stay for the next run (``keep_helpers``), or are let go when the process is about to exit
    (``_release_helpers``). Takes ``last_end_seconds``."""
    global last_end_seconds
    started = time.monotonic()
    try:
        if sys.platform.startswith("linux") and _has_children():
            if keep_helpers:
                spared = set(_multiprocessing_helpers())
            else:
                _release_helpers()
                spared = set()
            return _end_children(lambda: [pid for pid in _child_pids() if pid not in spared], grace,
                                 HARD_LIMIT_SECONDS)
        return []
    finally:
        last_end_seconds = time.monotonic() - started


def _end_children(which: Callable[[], list[int]], grace: float, give_up_after: float) -> list[int]:
    """End the children ``which()`` lists, passing over those already exited (reaped here): each gets SIGTERM
    once and, past ``grace``, SIGKILL (with the group it leads); what a killed child leaves is re-parented here
    (subreaper) and met by the next pass. Gives up ``give_up_after`` seconds past the grace (a process forking
    faster than it is killed). The pids signalled."""
    grace_ends = time.monotonic() + grace
    signalled: list[int] = []
    termed: set[int] = set()
    pause = 0.001
    while True:
        left = [pid for pid in which() if not _reaped(pid)]
        now = time.monotonic()
        if not left or now >= grace_ends + give_up_after:
            return signalled
        sig = signal.SIGKILL if now >= grace_ends else signal.SIGTERM
        for pid in left:
            if sig == signal.SIGKILL or pid not in termed:
                _signal_child(pid, sig)
                termed.add(pid)
            if pid not in signalled:
                signalled.append(pid)
        time.sleep(pause if now >= grace_ends else min(pause, grace_ends - now))
        pause = min(pause * 2, POLL_SECONDS)


def group_alive(pgid: int) -> bool:
    """Whether the process group ``pgid`` has a member that is not a zombie. ``killpg(pgid, 0)`` alone counts
    exited members nobody reaped: a leftover whose parent exited is re-parented to pid 1, which in a container
    without an init may never reap it. Only when it answers yes is ``/proc`` read (each process's group and
    state, from ``stat``); where it cannot be read, the group counts as alive."""
    members = _live_members(pgid, first_only=True)
    return members is None or bool(members)


def group_members(pgid: int) -> list[int] | None:
    """The live members (not zombies) of the process group ``pgid``, listed before the group is signalled so that
    they are named with the run (``RUN_PROCESSES_KILLED``); None where ``/proc`` cannot tell (the group then counts
    as alive, as for ``group_alive``). A full read of ``/proc`` (~0.8 ms with ~85 processes here)."""
    return _live_members(pgid, first_only=False)


def _live_members(pgid: int, *, first_only: bool) -> list[int] | None:
    """The processes of group ``pgid`` that are not zombies (the first one only, if ``first_only``), from each
    process's ``/proc/<pid>/stat``, read only when ``killpg(pgid, 0)`` finds the group; None where there is no
    ``/proc`` to read."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):  # none, or only members of another user (not ours to end)
        return []
    if not sys.platform.startswith("linux"):
        return None
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    found: list[int] = []
    for name in names:
        if name.isdigit():
            fields = _stat_fields(name)
            if fields and len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                found.append(int(name))
                if first_only:
                    break
    return found


def nothing_adopted() -> bool:
    """In a worker that adopts orphans (``adopt_orphans``): whether it has no child it did not start, which is what
    an exited command's processes became. One read of ``/proc/self/task/*/children``; False elsewhere (nothing
    can be told so cheaply)."""
    return _adopting and not _adopted()


def wait_group_empty(pgid: int, deadline: float) -> bool:
    """Wait until the process group ``pgid`` has no live member (``group_alive``), up to ``deadline``
    (``time.monotonic()``); whether it is empty. What the caller does past the deadline (SIGKILL the group,
    tell its worker the run still runs, give up) is its own. The pauses between looks grow from
    ``POLL_SECONDS`` to 0.1 s: each look may read every process's stat."""
    pause = POLL_SECONDS
    while group_alive(pgid):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.1)
    return True


def kill_run_processes(run_id: str, wait: float = KILL_WAIT_SECONDS, *, named: bool = False) -> list[int]:
    """SIGKILL every process of this machine (and pid namespace) whose environment holds
    ``ORCH_RUN_ID=<run_id>``: what a run left running that its process group does not hold (it called
    ``setsid``), or whose worker died (or stopped past its lease). With ``named`` (stale recovery), also every
    process named after the run (``run_process_name``) that is not a zombie: a Python handler's process running
    it, which ``/proc`` shows without the run's variable (``set_run_environment``), and what it forked. Each
    process is held by a pidfd and read again through it before the signal, so a pid reused meanwhile is never
    signalled; then waited for, up to ``wait`` seconds, so it is gone when the caller records the run's outcome.
    Processes of other users, and those that emptied their environment (or renamed themselves), are not found.
    Returns the pids killed. ``named`` reads each process's name too (~0.5 ms more with ~100 processes)."""
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
        return []
    marker = f"\0{RUN_ID_VARIABLE}={run_id}\0".encode()
    name = run_process_name(run_id) + b"\n" if named else None
    me = os.getpid()
    try:
        pids = [pid for pid in os.listdir("/proc") if pid.isdigit() and int(pid) != me]
    except OSError:
        return []
    held: dict[int, int] = {}  # pid -> pidfd of each process killed
    try:
        for pid in pids:
            if _is_runs(pid, marker, name):
                pidfd = _kill_held(pid, marker, name)
                if pidfd is not None:
                    held[int(pid)] = pidfd
        _wait_exited(list(held.values()), wait)
    finally:
        for pidfd in held.values():
            os.close(pidfd)
    return list(held)


def _is_runs(pid: str, marker: bytes, name: bytes | None) -> bool:
    """Whether ``pid``'s environment holds ``marker``, or (``name`` given) it is named ``name`` and not a zombie (a
    handler process killed already, not yet reaped by its paused worker: nothing to kill, nor to name)."""
    if name is not None and _comm(pid) == name:
        fields = _stat_fields(pid)
        if fields and fields[0] not in (b"Z", b"X"):
            return True
    return _has_marker(pid, marker)


def _kill_held(pid: str, marker: bytes, name: bytes | None = None) -> int | None:
    """SIGKILL ``pid`` through a pidfd if, held by it, its environment still holds ``marker`` (or its name is still
    ``name``); the pidfd, or None (gone, reused, not ours). A pid given to another process meanwhile carries neither:
    a process takes a run's name only from that run's handler process (``PR_SET_NAME``, or a fork of it)."""
    try:
        pidfd = os.pidfd_open(int(pid))
    except OSError:
        return None
    try:
        if _is_runs(pid, marker, name):  # still that process: the pidfd holds it now
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            return pidfd
    except OSError:
        pass
    os.close(pidfd)
    return None


def _comm(pid: str) -> bytes | None:
    """The process's name as ``/proc/<pid>/comm`` gives it (newline included); None if gone."""
    try:
        fd = os.open(f"/proc/{pid}/comm", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.read(fd, 64)
        finally:
            os.close(fd)
    except OSError:
        return None


def _wait_exited(pidfds: list[int], seconds: float) -> None:
    """Wait until each process held by ``pidfds`` has exited (a pidfd turns readable), up to ``seconds``: a
    SIGKILLed process takes a moment to die, longer in an uninterruptible wait (a stuck NFS read)."""
    pending, deadline = set(pidfds), time.monotonic() + seconds
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        pending -= readable(pending, left)


def kill_run(child: Child, run_id: str) -> Killed:
    """The worker killing a run (a timeout, a stop past its grace, a lost lease): its process group, then what
    left the group (``setsid``): the worker's adopted children, or, in a worker that does not adopt orphans, any
    process of this machine that kept the run's ``ORCH_RUN_ID`` (``kill_run_processes``). Returns what it killed
    besides the handler's own process: the group's other members (listed before the signal, ``group_members``: one
    read of ``/proc``, on a run ended early only) and what left the group, for ``RUN_PROCESSES_KILLED``."""
    members = [pid for pid in group_members(child.pid) or [] if pid != child.pid]
    child.kill_group(signal.SIGKILL)
    child.wait(5.0)
    return Killed.of(members).plus(_end_left_group(run_id))


def end_exited_run(pgid: int, run_id: str) -> list[int]:
    """The worker's part once a run's handler exited and nothing of the run ended what it left: a command (a
    child that left its group with ``setsid`` outlives the group's SIGTERM), or a Python handler's process that
    died without answering (``os._exit``, a signal: its ``end_leftovers`` never ran). SIGKILL what is left in
    the run's process group (waiting, up to ``KILL_WAIT_SECONDS``, until it is empty), then what left the group:
    in a worker that adopts orphans, its adopted children (``end_adopted``, ~17 us when there are none); else
    every process with its ``ORCH_RUN_ID`` (``kill_run_processes``: ~0.5 ms, docs/worker.md). The group is
    signalled only while it has a live member, which keeps its id from reuse. Returns the pids killed, the
    group's members first (listed before the signal)."""
    members = group_members(pgid)
    if members is None or members:  # None: alive, as far as can be told without ``/proc``
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        wait_group_empty(pgid, time.monotonic() + KILL_WAIT_SECONDS)
    return (members or []) + _end_left_group(run_id)


def _end_left_group(run_id: str) -> list[int]:
    """What a run left outside its process group, killed: the worker's adopted children (``end_adopted``), or,
    in a worker that does not adopt orphans, every process with the run's ``ORCH_RUN_ID``."""
    adopted = end_adopted()
    return kill_run_processes(run_id) if adopted is None else adopted


def _has_marker(pid: str, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return marker in b"\0" + fh.read() + b"\0"
    except OSError:
        return False
