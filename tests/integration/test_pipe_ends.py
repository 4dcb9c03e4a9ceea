"""A fork by another thread of the program never keeps a handler process's pipe ends, nor closes a number they had
(``orchestrator/pipe_ends.py``): the ends are listed as they are made and unlisted as they are closed, under a lock
every fork takes, and a forked child closes the listed ones at once.

Each test widens the window it is about by a hook in the worker's thread that waits (a second at most) for another
thread to fork in it; with the fix that fork waits for the lock instead, and comes once the window is over.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator.libc import load_libc
from orchestrator.worker import Worker, WorkerSettings


def make_worker(orch, mode: str = "reused") -> Worker:
    return Worker(orch, WorkerSettings(worker_id="w1", retry_base_seconds=0.0, handler_process=mode))


def host_pid(orch, worker: Worker) -> int:
    job = orch.submit("t.pid", None)
    assert worker.run_once().job_id == job
    return orch.status(job).result["output"]["pid"]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"  # a zombie (exited, not yet reaped) counts as gone
    except OSError:
        return False


def a_handler_process_pipe() -> bool:
    """Whether the ``os.pipe()`` calling this is one made for a handler process (``pipe_ends.make``; before the fix,
    ``runner.forked_handler``), not another's of the worker's thread (``subprocess``'s, ``find_library`` running
    ``ldconfig`` as libc is first loaded)."""
    return sys._getframe(2).f_code.co_name in ("make", "forked_handler")


def held_pipes(pid: int) -> set[str]:
    where = f"/proc/{pid}/fd"
    return {os.readlink(f"{where}/{fd}") for fd in os.listdir(where)}


class ForkingThread(threading.Thread):
    """Another thread of the program: once ``go`` is set, ``prepare()`` then a plain ``os.fork()`` (a program's own,
    or a ``multiprocessing`` fork). The child writes ``report()``'s byte on a pipe, then waits to be killed."""

    def __init__(self, prepare=lambda: None, report=lambda: b"1") -> None:
        super().__init__(daemon=True)
        self.go, self.forked = threading.Event(), threading.Event()
        self.prepare, self.report = prepare, report
        self.said_r, self.said_w = os.pipe()
        self.pid: int | None = None

    def run(self) -> None:
        if not self.go.wait(10):
            return
        self.prepare()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: what its fork's hooks left it
            try:
                os.write(self.said_w, self.report())
                time.sleep(60)
            finally:
                os._exit(0)
        self.pid = pid
        self.forked.set()

    def said(self) -> bytes:
        return os.read(self.said_r, 1)

    def end(self) -> None:
        self.go.set()
        self.join(10)
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.said_r)
        os.close(self.said_w)


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_fork_by_another_thread_while_a_handler_process_starts_keeps_none_of_its_pipe_ends(
        orch, monkeypatch, mode: str) -> None:
    """Its pipes made, the handler process not yet forked (its ends not yet listed, before the fix): a plain fork by
    another thread kept all four ends of a reused one's, so it never saw the end of its requests when its worker
    closed (it lived as long as that fork's child did); and the end a per-run child writes its end on."""
    load_libc()  # loaded before the window is widened (it once ran ``ldconfig`` through ``subprocess``, whose own
    # pipe a fork by another thread kept: ``orchestrator.libc``), so the hooks see only the handler process's pipes
    worker_thread, ours = threading.get_ident(), set()
    other = ForkingThread()
    real_pipe = os.pipe

    def pipe_then_let_the_other_thread_fork() -> tuple[int, int]:
        fds = real_pipe()
        if threading.get_ident() == worker_thread and a_handler_process_pipe():
            ours.add(os.fstat(fds[0]).st_ino)
            if len(ours) == 1:
                other.go.set()
                other.forked.wait(1.0)  # with the fix it cannot fork now: it does as soon as the pipes are listed
        return fds

    other.start()
    monkeypatch.setattr(os, "pipe", pipe_then_let_the_other_thread_fork)
    w = make_worker(orch, mode)
    try:
        host = host_pid(orch, w)  # starts its handler process in this thread
        monkeypatch.undo()
        assert other.said() == b"1"  # the child is past its fork's hooks
        assert other.pid is not None and alive(other.pid)
        assert not {f"pipe:[{ino}]" for ino in ours} & held_pipes(other.pid)  # before the fix: all the ends
        w.close()
        deadline = time.monotonic() + 5
        while alive(host) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not alive(host)  # before the fix: alive while the other thread's child lives
    finally:
        monkeypatch.undo()
        w.close()
        other.end()


def test_a_fork_by_another_thread_while_a_handler_process_is_closed_never_closes_a_number_given_again(
        orch, monkeypatch) -> None:
    """``HandlerHost.close`` closed its request pipe's end, then forgot its number: a fork in between, by another
    thread, had the child let the host's copy go (``_leave_to_parent``) and close that number again, which another
    thread may have given to a descriptor of its own meanwhile (here: ``/dev/null``, put there by ``dup2``)."""
    load_libc()  # as above
    worker_thread, ends = threading.get_ident(), []
    devnull = os.open(os.devnull, os.O_RDONLY)
    given: list[int] = []

    def take_the_number() -> None:  # the request end's number, now free: another descriptor gets it
        os.dup2(devnull, ends[1], inheritable=False)
        given.append(ends[1])

    def still_open() -> bytes:
        try:
            os.fstat(ends[1])
        except OSError:
            return b"0"
        return b"1"

    other = ForkingThread(take_the_number, still_open)
    real_pipe, real_close = os.pipe, os.close

    def noted_pipe() -> tuple[int, int]:
        fds = real_pipe()
        if threading.get_ident() == worker_thread and a_handler_process_pipe() and not ends:
            ends.extend(fds)  # the host's request pipe: read end, write end (the worker's)
        return fds

    def close_then_let_the_other_thread_fork(fd: int) -> None:
        real_close(fd)
        if threading.get_ident() == worker_thread and ends and fd == ends[1] and not other.go.is_set():
            other.go.set()
            other.forked.wait(1.0)  # with the fix it cannot fork now: it does once the host forgot the number

    other.start()
    monkeypatch.setattr(os, "pipe", noted_pipe)
    w = make_worker(orch)
    try:
        host_pid(orch, w)
        monkeypatch.setattr(os, "close", close_then_let_the_other_thread_fork)
        w.close()
        monkeypatch.undo()
        assert other.said() == b"1"  # before the fix: b"0", the child closed this thread's /dev/null
    finally:
        monkeypatch.undo()
        w.close()
        other.end()
        for fd in (devnull, *given):
            os.close(fd)
