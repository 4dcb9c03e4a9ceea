"""Python handlers run in a child process that the worker reuses from run to run (``HandlerHost``).

Reusing the process must keep what a process per run gave: handler code never runs in the
worker, a crash or a timeout ends only that run (the next run gets a new process), a handler
registered later is seen, and nothing one run printed leaks into the next run's record.
"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator import faults
from orchestrator.errors import InvalidInputError
from orchestrator.handlers import register
from orchestrator.worker import Worker, WorkerSettings


def make_worker(orch, **kw) -> Worker:
    kw.setdefault("worker_id", "w1")
    kw.setdefault("retry_base_seconds", 0.0)
    return Worker(orch, WorkerSettings(**kw))


def run(orch, worker: Worker, kind: str, value: object, **options) -> dict:
    job = orch.submit(kind, value, **options)
    result = worker.run_once()
    assert result is not None and result.job_id == job
    return {"result": result, "status": orch.status(job), "events": [json.loads(x.raw) for x in orch.store.read(job)]}


def pid_of(orch, worker: Worker) -> dict:
    return run(orch, worker, "t.pid", None)["status"].result["output"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def test_runs_share_one_handler_process_that_is_not_the_worker(orch) -> None:
    w = make_worker(orch)
    first, second = pid_of(orch, w), pid_of(orch, w)
    assert first["pid"] == second["pid"] != os.getpid()
    assert (first["runs"], second["runs"]) == (1, 2)  # module state lives on between runs of one process
    w.close()


def test_per_run_mode_forks_a_fresh_process_for_every_run(orch) -> None:
    w = make_worker(orch, handler_process="per-run")
    first, second = pid_of(orch, w), pid_of(orch, w)
    assert len({first["pid"], second["pid"], os.getpid()}) == 3
    assert (first["runs"], second["runs"]) == (1, 1)


def test_the_process_is_replaced_after_max_runs(orch) -> None:
    w = make_worker(orch, handler_max_runs=2)
    pids = [pid_of(orch, w)["pid"] for _ in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    w.close()


def test_a_handler_that_kills_its_process_ends_only_that_run(orch) -> None:
    w = make_worker(orch)
    before = pid_of(orch, w)["pid"]
    crashed = run(orch, w, "t.die", 3, max_attempts=1)
    assert crashed["status"].state == "failed"
    assert crashed["events"][-1]["data"]["error_code"] == "NO_TERMINAL_SIGNAL_EXIT"
    assert "status 3" in crashed["events"][-1]["data"]["error"]
    after = pid_of(orch, w)
    assert after["pid"] != before and after["runs"] == 1  # a new process for the next run
    w.close()


def test_sys_exit_in_a_handler_records_no_terminal_signal_exit(orch) -> None:
    w = make_worker(orch)
    out = run(orch, w, "t.sysexit", None, max_attempts=1)
    assert out["events"][-1]["data"]["error_code"] == "NO_TERMINAL_SIGNAL_EXIT"
    assert pid_of(orch, w)["runs"] == 1
    w.close()


def test_a_handler_that_closes_the_pipes_and_runs_on_is_killed_not_waited_for(orch) -> None:
    w = make_worker(orch)
    started = time.monotonic()
    out = run(orch, w, "t.closefds", 30, max_attempts=1)
    assert time.monotonic() - started < 10
    assert out["events"][-1]["data"]["error_code"] == "NO_TERMINAL_SIGNAL_EXIT"
    assert pid_of(orch, w)["runs"] == 1  # a new process for the next run
    w.close()


def test_a_timeout_kills_the_process_and_the_next_run_gets_a_new_one(orch) -> None:
    w = make_worker(orch)
    before = pid_of(orch, w)["pid"]
    started = time.monotonic()
    out = run(orch, w, "t.sleep", 30, timeout=0.3, max_attempts=1)
    assert time.monotonic() - started < 10
    assert out["events"][-1]["type"] == "job_timeout"
    assert not alive(before)
    assert pid_of(orch, w)["pid"] != before
    w.close()


def test_a_process_killed_between_runs_is_replaced(orch) -> None:
    w = make_worker(orch)
    before = pid_of(orch, w)["pid"]
    os.kill(before, signal.SIGKILL)
    time.sleep(0.05)
    assert pid_of(orch, w)["pid"] != before
    w.close()


def test_a_handler_registered_after_the_process_started_is_found(orch) -> None:
    w = make_worker(orch)
    pid_of(orch, w)
    register("t.late", lambda ctx: {"status": "done", "summary": "late", "output": os.getpid()})
    out = run(orch, w, "t.late", None)
    assert out["status"].state == "succeeded"
    w.close()


def test_output_of_one_run_never_reaches_the_next_runs_record_and_is_not_kept(orch) -> None:
    w = make_worker(orch)
    failed = {"status": "failed", "summary": "no", "retryable": False}
    first = run(orch, w, "t.print", {"text": "first run password=hunter2", "err": "oops", "payload": failed})
    tail = first["events"][-1]["data"]["output_tail"]
    assert "first run" in tail and "oops" in tail and "hunter2" not in tail  # sanitized
    second = run(orch, w, "t.print", {"text": "second run", "payload": failed})
    assert "first run" not in second["events"][-1]["data"]["output_tail"]
    assert w._host is not None and w._host.output.read_bytes() == b""  # emptied once the tail was taken
    w.close()


def test_what_a_thread_left_by_one_run_prints_late_never_reaches_the_next_runs_record(orch) -> None:
    w = make_worker(orch)
    failed = {"status": "failed", "summary": "no", "retryable": False}
    run(orch, w, "t.print_late", {"text": "first run", "late": "late line of the first run", "payload": failed})
    assert w._host is not None
    deadline = time.monotonic() + 5  # the thread writes once the worker emptied the output file
    while b"late line" not in w._host.output.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert b"late line" in w._host.output.read_bytes()
    second = run(orch, w, "t.print", {"text": "second run", "payload": failed})
    tail = second["events"][-1]["data"]["output_tail"]
    assert "second run" in tail and "late line" not in tail
    w.close()


def test_a_run_that_ends_before_its_handler_process_starts_it_shows_no_earlier_runs_output(orch) -> None:
    w = make_worker(orch, stop_grace_seconds=0)
    failed = {"status": "failed", "summary": "no", "retryable": False}
    run(orch, w, "t.print", {"text": "first run", "payload": failed})
    assert w._host is not None and w._host.pid is not None
    os.kill(w._host.pid, signal.SIGSTOP)  # it never reads the next request: killed before it starts the run
    faults.arm("worker.after_start", w.stop)  # once the request is sent: a worker stopping before it sends none
    released = run(orch, w, "t.print", {"text": "second run", "payload": failed})
    assert (released["result"].outcome, released["result"].error_code) == ("released", "WORKER_STOPPED")
    assert released["events"][-1]["data"]["output_tail"] == ""
    w.close()


def assert_handler_process_ended(orch, pid: int) -> None:
    """The process is gone (within 5 s: it exits once it reads the end of its pipe) and so is its folder."""
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(pid)
    assert not list((orch.settings.state_dir / "runs").glob("host-*"))


def test_run_closes_the_handler_process_and_removes_its_folder(orch) -> None:
    w = make_worker(orch)
    job = orch.submit("t.pid", None)
    assert w.run(max_jobs=1) == 1
    assert_handler_process_ended(orch, orch.status(job).result["output"]["pid"])


@pytest.mark.parametrize("how", ["with", "dropped"])
def test_a_worker_used_run_by_run_ends_its_handler_process_too(orch, how: str) -> None:
    import gc

    job = orch.submit("t.pid", None)
    if how == "with":
        with make_worker(orch) as w:
            assert w.run_once() is not None
    else:
        assert make_worker(orch).run_once() is not None  # the worker is dropped at once
        gc.collect()
    assert_handler_process_ended(orch, orch.status(job).result["output"]["pid"])


def test_a_sweep_removes_the_handler_folders_of_workers_that_are_gone_and_keeps_live_ones(tmp_path) -> None:
    from orchestrator import handler_host

    live = handler_host.claim_host_folder(tmp_path / "host-live")
    pid = os.fork()
    if pid == 0:  # a worker that dies without close (SIGKILL, a crash): the kernel drops its lock
        handler_host.claim_host_folder(tmp_path / "host-dead")
        (tmp_path / "host-dead" / "output.log").write_text("what its last handler printed")
        os._exit(0)
    os.waitpid(pid, 0)
    (tmp_path / "host-young-unlocked").mkdir()  # being made right now (no lock file yet)
    old = tmp_path / "host-old-unlocked"
    old.mkdir()
    os.utime(old, (time.time() - handler_host.STRAY_AGE - 1,) * 2)
    older_worker = tmp_path / f"host-{os.getpid()}-0000"  # a live worker from before the lock file
    older_worker.mkdir()
    os.utime(older_worker, (time.time() - handler_host.STRAY_AGE - 1,) * 2)
    (tmp_path / "r-0001").mkdir()  # a run's own folder is not the sweep's business
    staging = tmp_path / ".host-making.new"  # a worker between creating its lock file and locking it
    staging.mkdir()
    (staging / handler_host.ALIVE_FILE).touch()
    old_staging = tmp_path / ".host-killed.new"
    old_staging.mkdir()
    os.utime(old_staging, (time.time() - handler_host.STRAY_AGE - 1,) * 2)
    assert sorted(handler_host.sweep_dead_host_folders(tmp_path)) == [".host-killed.new", "host-dead",
                                                                       "host-old-unlocked"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".host-making.new", older_worker.name, "host-live",
                                                          "host-young-unlocked", "r-0001"]
    os.close(live)  # its worker is gone now too
    assert handler_host.sweep_dead_host_folders(tmp_path) == ["host-live"]


@pytest.mark.parametrize("how", ["command", "per-run"])
def test_a_runs_folder_is_never_removed_while_its_handler_runs(tmp_path, how: str) -> None:
    """Whatever the job's events say (a worker paused past its lease, a cancel not yet noticed), a
    handler that still runs holds its output's lock, and its run's folder stays."""
    import sys

    from helpers import wait_until
    from orchestrator import run_folder, runner

    folder, release = tmp_path / "run-0000000000000001", tmp_path / "release"
    folder.mkdir()
    output, terminal = folder / "output.log", folder / "terminal.json"
    if how == "command":
        code = (f"import os, time\nprint('started', flush=True)\n"
                f"while not os.path.exists({str(release)!r}): time.sleep(0.01)")
        child = runner.spawn_command([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ), output=output,
                                     terminal_file=terminal)
    else:
        def wait() -> dict:
            print("started", flush=True)
            while not release.exists():
                time.sleep(0.01)
            return {"status": "done", "summary": "ok"}
        child = runner.fork_call(wait, terminal_file=terminal, output=output)
    try:
        wait_until(lambda: output.exists() and "started" in output.read_text(), what="the handler to start")
        assert run_folder.remove_run_folder(folder) is False and output.exists()
    finally:
        release.touch()
        assert child.wait(10) is not None
    # a forked handler announces its exit a moment before it is gone (and its lock with it)
    wait_until(lambda: run_folder.remove_run_folder(folder), timeout=5, what="the folder to go with its handler")
    assert not folder.exists()


def test_a_sweep_never_removes_a_folder_whose_lock_file_was_replaced_meanwhile(tmp_path, monkeypatch) -> None:
    """A worker that closes its host removes the folder, then may claim one of the same name again
    (a new host after a timeout): a sweep that locked the old, free lock file must not remove it."""
    import fcntl
    import shutil

    from orchestrator import handler_host

    pid = os.fork()
    if pid == 0:
        handler_host.claim_host_folder(tmp_path / "host-1-x")
        os._exit(0)
    os.waitpid(pid, 0)
    real_flock, held = fcntl.flock, []

    def flock_then_the_folder_is_claimed_again(fd, op):
        real_flock(fd, op)
        if op & fcntl.LOCK_NB and not held:  # the sweep's try, which wins the old, free lock
            shutil.rmtree(tmp_path / "host-1-x")
            held.append(handler_host.claim_host_folder(tmp_path / "host-1-x"))

    monkeypatch.setattr(fcntl, "flock", flock_then_the_folder_is_claimed_again)
    assert handler_host.sweep_dead_host_folders(tmp_path) == []
    assert (tmp_path / "host-1-x" / handler_host.ALIVE_FILE).exists()
    os.close(held[0])


def test_a_short_python_run_leaves_no_run_folder_and_no_lease_record(orch) -> None:
    w = make_worker(orch)
    pid_of(orch, w)
    runs = orch.settings.state_dir / "runs"
    assert [p.name for p in runs.iterdir() if not p.name.startswith("host-")] == []
    assert not (orch.settings.state_dir / "leases").exists() or not list((orch.settings.state_dir / "leases").iterdir())
    w.close()


@pytest.mark.parametrize("settings", [{"handler_process": "fork"}, {"handler_max_runs": 0}])
def test_bad_handler_process_settings_are_refused(settings: dict) -> None:
    with pytest.raises(InvalidInputError):
        WorkerSettings(**settings)


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_the_artifact_folder_exists_once_a_handler_asks_for_it_and_not_before(orch, mode: str) -> None:
    w = make_worker(orch, handler_process=mode)
    quiet = run(orch, w, "t.echo", "no files")
    assert not (orch.settings.state_dir / "artifacts" / quiet["result"].job_id).exists()
    wrote = run(orch, w, "t.artifact_by_key", None)
    assert wrote["status"].state == "succeeded" and wrote["status"].result["artifacts"] == ["note.txt"]
    assert (orch.settings.state_dir / "artifacts" / wrote["result"].job_id / "note.txt").read_text() == "hi"
    w.close()


def test_a_handler_process_that_cannot_start_is_a_retried_failure_not_a_missing_command(orch, monkeypatch) -> None:
    from orchestrator.handler_host import HandlerHost

    def denied(*_a, **_k):  # the machine's (its own folders that cannot be made are the store's: test_worker.py)
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(HandlerHost, "run", denied)
    job = orch.submit("t.echo", "x")
    assert make_worker(orch).run_once() is not None
    st = orch.status(job)
    assert st.last_error["code"] == "HANDLER_START_FAILED" and st.state == "queued"  # a retry is due


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_handler_process_that_cannot_be_forked_keeps_no_descriptor(orch, monkeypatch, mode: str) -> None:
    """A fork refused (EAGAIN at the process limit) is a retried failure; the pipes made for it are closed."""
    import errno

    import orchestrator.runner as runner

    def refused() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    w = make_worker(orch, handler_process=mode)
    monkeypatch.setattr(runner, "fork_handler", refused)  # both kinds of handler process are forked through it
    counts = []
    for _ in range(3):
        out = run(orch, w, "t.echo", "x", max_attempts=1)
        assert out["status"].last_error["code"] == "HANDLER_START_FAILED"
        counts.append(len(os.listdir("/proc/self/fd")))
    assert counts[0] == counts[1] == counts[2]  # before the fix: +4 (reused) or +2 (per-run) a run
    monkeypatch.undo()
    assert run(orch, w, "t.echo", "x")["status"].state == "succeeded"
    w.close()


def test_closing_one_of_two_workers_of_a_process_ends_its_handler_process(orch) -> None:
    """The second worker's handler process was forked holding the first one's request pipe, so the first
    never read the end of its requests when its worker closed: it lived on until the second exited."""
    first, second = make_worker(orch, worker_id="a"), make_worker(orch, worker_id="b")
    mine = pid_of(orch, first)["pid"]
    pid_of(orch, second)  # forked after the first one
    first.close()
    deadline = time.monotonic() + 5
    while alive(mine) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(mine)
    assert pid_of(orch, second)["runs"] == 2  # the other worker's process is untouched
    second.close()


def test_a_handler_fork_in_another_thread_never_keeps_the_pipes_of_a_handler_process_being_started(
        orch, tmp_path, monkeypatch) -> None:
    """Two workers of one process: a handler process forked by one while the other's was being started (its
    pipes made, the child's ends not yet closed here, the worker's not yet registered) kept those ends, so the
    death of the other's handler process could go unseen (no end of file on its pipe)."""
    import threading

    import orchestrator.runner as runner

    starter, made, forked, theirs = threading.get_ident(), threading.Event(), threading.Event(), set()
    real_pipe, real_fork = os.pipe, runner.fork_handler

    def noted_pipe() -> tuple[int, int]:
        fds = real_pipe()
        if threading.get_ident() == starter:
            theirs.add(os.fstat(fds[0]).st_ino)
        return fds

    def fork_once_the_other_thread_forked() -> int:  # the host's pipes are made: let the other thread fork now
        if threading.get_ident() != starter:
            return real_fork()
        made.set()
        forked.wait(1.0)  # it cannot while the host is being started (the test then waits this second)
        return real_fork()

    monkeypatch.setattr(os, "pipe", noted_pipe)
    monkeypatch.setattr(runner, "fork_handler", fork_once_the_other_thread_forked)
    started, release = tmp_path / "started", tmp_path / "release"
    children: list = []

    def handler() -> dict:
        started.touch()
        while not release.exists():
            time.sleep(0.01)
        return {"status": "done", "summary": "ok"}

    def other_worker() -> None:
        made.wait(5)
        children.append(runner.fork_call(handler, terminal_file=tmp_path / "terminal.json",
                                         output=tmp_path / "output.log"))
        forked.set()

    other = threading.Thread(target=other_worker)
    other.start()
    w = make_worker(orch)
    try:
        pid_of(orch, w)  # starts the host in this thread
        other.join(10)
        deadline = time.monotonic() + 5
        while not started.exists() and time.monotonic() < deadline:  # its handler runs: its start is over
            time.sleep(0.01)
        held = {os.readlink(f"/proc/{children[0].pid}/fd/{fd}") for fd in os.listdir(f"/proc/{children[0].pid}/fd")}
        assert not {f"pipe:[{ino}]" for ino in theirs} & held  # before the fix: all four ends of the host's pipes
    finally:
        release.touch()
        if children:
            assert children[0].wait(10) is not None
        monkeypatch.undo()
        w.close()


def test_a_stop_signal_while_a_large_payload_is_read_loses_none_of_it(orch, monkeypatch) -> None:
    """A SIGTERM handled between two reads of one payload frame (a frame over 64 KiB takes several) raised
    ``WorkerStop`` out of the read: the bytes read so far were lost, and the next read took the middle of the
    payload for a frame's length (a succeeded run recorded as MALFORMED_PAYLOAD, or a read that never ends)."""
    register("t.big", lambda ctx: {"status": "done", "summary": "big", "output": "x" * 300_000})
    w = make_worker(orch)
    pid_of(orch, w)  # the host is running, forked before os.read is wrapped
    resp_fd, worker_pid, real_read, reads = w._host._resp_r, os.getpid(), os.read, []

    def read_then_signal(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        if fd == resp_fd and os.getpid() == worker_pid:
            reads.append(len(data))
            if len(reads) == 2:  # the signal arrives just after this read returned
                w.stop_request.on_signal(signal.SIGTERM, None)
        return data

    monkeypatch.setattr(os, "read", read_then_signal)
    out = run(orch, w, "t.big", None)
    monkeypatch.setattr(os, "read", real_read)
    assert len(reads) > 2
    assert out["status"].state == "succeeded", out["events"][-1]["data"]
    assert out["status"].result["output"] == "x" * 300_000
    assert w.stopping
    w.close()


@pytest.mark.parametrize("how", ["close", "file", "dup", "closed", "with", "partial"])
def test_a_handler_that_changes_its_processs_standard_streams_leaves_the_next_run_its_own_output(
        orch, tmp_path, how: str) -> None:
    """A reused handler process is the next run's too: a handler that closed descriptors 1 and 2 made the next run
    fail (the host could not size its output), and one that put a file of its own on them had that file emptied
    before the next run and the next run's output written into it, none of it in the run's record. One that left
    ``sys.stdout`` closed (``closed``, ``with``), or an unfinished line on a descriptor 1 it closed (``partial``),
    lost its own payload: the process flushed its streams before sending it, and died of the error
    (NO_TERMINAL_SIGNAL_EXIT; a handler process per run wrote the payload first, and recorded it)."""
    w = make_worker(orch)
    own = tmp_path / "handlers-own.log"
    first = run(orch, w, "t.stdio", {"how": how, "path": str(own)})
    assert first["status"].state == "succeeded", first["events"][-1]
    failed = {"status": "failed", "summary": "no", "retryable": False}
    second = run(orch, w, "t.print", {"text": "second run", "err": "second err", "payload": failed})
    data = second["events"][-1]["data"]
    assert data["error_code"] == "HANDLER_FAILED", data  # its own payload, not a crash of the process
    assert "second run" in data["output_tail"] and "second err" in data["output_tail"]
    if how in ("file", "dup", "with"):
        assert "second" not in own.read_text()
    if how in ("file", "with"):
        assert own.read_text() == "the handler's own line\n", "the handler's file was emptied by the next run"
    assert "an unfinished line" not in data["output_tail"], "what a run printed shows in its own record only"
    w.close()


def test_a_stop_signal_while_a_killed_handler_process_is_reaped_leaves_it_to_be_reaped_later(orch, monkeypatch) -> None:
    """``HostRun.kill_group`` waits up to 5 s to reap the host it killed; a stop signal raised in that wait
    (``WorkerStop``) skipped the note that reaps it later, and the process stayed a zombie for the worker's life."""
    from orchestrator import handler_host, runner
    from orchestrator.worker import WorkerStop

    w = make_worker(orch)
    host = w._handler_host()  # noqa: SLF001
    started = host.run("t.sleep", {"input": 30, "job_id": "J", "run_id": "run-x", "attempt": 1})

    def interrupted(self, seconds: float) -> int | None:
        raise WorkerStop(signal.SIGTERM)

    monkeypatch.setattr(handler_host.HostRun, "_reaped_within", interrupted)
    with pytest.raises(WorkerStop):
        started.kill_group(signal.SIGKILL)
    assert started.pid in runner.UNREAPED
    monkeypatch.undo()
    deadline = time.monotonic() + 5
    while started.pid in runner.UNREAPED and time.monotonic() < deadline:
        runner.reap_exited()
        time.sleep(0.01)
    assert started.pid not in runner.UNREAPED and not alive(started.pid)
    w.close()


def test_a_stop_signal_just_after_a_killed_handler_process_is_reaped_does_not_note_it_as_unreaped(
        orch, monkeypatch) -> None:
    """A stop landing between the reap and its record left the pid noted as unreaped: a later ``reap_exited`` would
    wait for that pid, which the kernel may have given to another child of the worker by then."""
    from orchestrator import runner
    from orchestrator.worker import WorkerStop

    w = make_worker(orch)
    started = w._handler_host().run("t.sleep", {"input": 30, "job_id": "J", "run_id": "run-x", "attempt": 1})  # noqa: SLF001
    real_waitpid, reaps = os.waitpid, []

    def reap_then_signal(pid: int, options: int) -> tuple[int, int]:
        out = real_waitpid(pid, options)
        if pid == started.pid and out[0]:
            reaps.append(pid)
            w.stop_request.in_wait = True  # as in the worker's wait for a run, where its handler raises WorkerStop
            w.stop_request.on_signal(signal.SIGTERM, None)
        return out

    monkeypatch.setattr(os, "waitpid", reap_then_signal)
    try:
        started.kill_group(signal.SIGKILL)
    except WorkerStop:
        pass  # a stop may end the call; what matters is what it leaves noted
    finally:
        monkeypatch.undo()
        w.stop_request.in_wait = False
    assert reaps == [started.pid] and not alive(started.pid)
    assert started.pid not in runner.UNREAPED
    assert w.stopping
    w.close()


def test_a_stop_signal_just_after_a_forked_handler_is_reaped_keeps_its_exit_status(orch, monkeypatch) -> None:
    """The per-run child (``--handler-process per-run``): a stop between the reap and its record lost the exit status,
    so the run looked alive and a later ``kill_group`` signalled a process group id the kernel may have reused."""
    from orchestrator import runner
    from orchestrator.worker import WorkerStop

    w = make_worker(orch)
    pid = runner.fork_handler()
    if pid == 0:  # pragma: no cover - the child
        os._exit(7)
    child = runner.ForkChild(pid)
    real_waitpid = os.waitpid

    def reap_then_signal(p: int, options: int) -> tuple[int, int]:
        out = real_waitpid(p, options)
        if p == pid and out[0]:
            w.stop_request.in_wait = True
            w.stop_request.on_signal(signal.SIGTERM, None)
        return out

    monkeypatch.setattr(os, "waitpid", reap_then_signal)
    try:
        deadline = time.monotonic() + 5
        while child.returncode is None and time.monotonic() < deadline:
            try:
                child.poll()
            except WorkerStop:
                break
            time.sleep(0.005)
    finally:
        monkeypatch.undo()
        w.stop_request.in_wait = False
    assert child.returncode == 7
    w.close()


def _forks_and_both_go_on(ctx):
    """``os.fork()`` without ``exec``: the copy returns (or ``sys.exit``s) first, the handler later."""
    if os.fork() == 0:
        if ctx.input == "exit":
            raise SystemExit(0)
        return {"status": "done", "summary": f"the forked copy of {ctx.job_id}"}
    time.sleep(0.3)
    return {"status": "done", "summary": f"the handler of {ctx.job_id}"}


def _answers(ctx):
    time.sleep(0.4)
    return {"status": "done", "summary": f"the handler of {ctx.job_id}"}


@pytest.mark.parametrize("mode", ["reused", "per-run"])
@pytest.mark.parametrize("copy", ["return", "exit"])
def test_a_copy_a_handler_forks_that_returns_or_exits_never_answers_for_its_run_nor_the_next(
        orch, mode: str, copy: str) -> None:
    """Its payload was taken as the run's (the copy was first), the handler's own then as the next run's, another
    job's result; a copy's ``sys.exit(0)`` ended a per-run child's run at once, its handler still running."""
    register("t.forks", _forks_and_both_go_on)
    register("t.answers", _answers)
    w = make_worker(orch, handler_process=mode)
    forked = run(orch, w, "t.forks", copy, max_attempts=1)
    after = [run(orch, w, "t.answers", None, max_attempts=1) for _ in range(2)]
    w.close()
    for r in [forked, *after]:
        assert r["status"].state == "succeeded", r["status"].last_error
        assert r["status"].result["summary"] == f"the handler of {r['status'].job_id}"


def _forks_a_process_then_dies(ctx):
    """Forks a process that lives on (as a ``multiprocessing`` pool's workers do: a fork keeps every descriptor,
    the reply pipe to the worker among them), writes its pid to the input's file, then dies without answering."""
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    with open(ctx.input, "w") as fh:
        fh.write(str(pid))
    os._exit(3)


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_handler_process_that_dies_beside_a_process_it_forked_ends_its_run_at_once(orch, tmp_path, mode: str) -> None:
    """The reused process's death was seen only as the end of its reply pipe, which the forked process still held:
    the run went on until that process ended (a pool's workers never do), the job running all along."""
    register("t.forks_then_dies", _forks_a_process_then_dies)
    w = make_worker(orch, handler_process=mode)
    started = time.monotonic()
    out = run(orch, w, "t.forks_then_dies", str(tmp_path / "forked"), max_attempts=1)
    assert time.monotonic() - started < 10
    assert out["events"][-1]["data"]["error_code"] == "NO_TERMINAL_SIGNAL_EXIT"
    assert "exited with status 3" in out["events"][-1]["data"]["error"]
    assert not alive(int((tmp_path / "forked").read_text()))  # ended with its run
    assert pid_of(orch, w)["runs"] == 1  # the next run gets a new process
    w.close()


def _leaves_its_signals_changed(ctx):
    """Returns at once, leaving what the input names behind in its process: a timer armed (``alarm``), one whose
    signal it handles by raising (``handled``), a signal blocked (``blocked``) or ignored (``ignored``)."""
    def too_late(signum, frame):
        raise TimeoutError("the alarm of an earlier run")

    if ctx.input == "handled":
        signal.signal(signal.SIGALRM, too_late)
    if ctx.input in ("alarm", "handled"):
        signal.setitimer(signal.ITIMER_REAL, 0.2)
    if ctx.input == "blocked":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
    if ctx.input == "ignored":
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return {"status": "done", "summary": ctx.input}


def _reports_its_signals(ctx):
    """Takes a while (past any timer an earlier run left), then reports its process's signal state."""
    time.sleep(0.5)
    watched = (signal.SIGALRM, signal.SIGTERM, signal.SIGUSR1)
    return {"status": "done", "summary": "signals", "output": {
        "handlers": [str(signal.getsignal(sig)) for sig in watched],
        "blocked": sorted(int(sig) for sig in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "timer": signal.getitimer(signal.ITIMER_REAL)[0]}}


@pytest.mark.parametrize("mode", ["reused", "per-run"])
@pytest.mark.parametrize("left", ["alarm", "handled", "blocked", "ignored"])
def test_a_timer_or_signal_state_one_run_leaves_never_reaches_the_next_run(orch, mode: str, left: str) -> None:
    """A timer a run left armed (``signal.alarm`` not cancelled) went off in the reused process during the next
    run, another job's: killed by SIGALRM (NO_TERMINAL_SIGNAL_EXIT), or interrupted by the first run's handler; a
    signal a run blocked or ignored stayed so for every later run and each process it started."""
    register("t.leaves_signals", _leaves_its_signals_changed)
    register("t.reports_signals", _reports_its_signals)
    w = make_worker(orch, handler_process=mode)
    before = run(orch, w, "t.reports_signals", None, max_attempts=1)["status"]
    assert run(orch, w, "t.leaves_signals", left, max_attempts=1)["status"].state == "succeeded"
    after = run(orch, w, "t.reports_signals", None, max_attempts=1)["status"]
    w.close()
    assert after.state == "succeeded", after.last_error
    assert after.result["output"] == before.result["output"]


LONG_INPUT = {"rows": [{"id": i, "name": "d\u00e9j\u00e0 \u2603 \"q\"", "x": i / 3, "tags": ["a", None, True, -0.0]}
                       for i in range(70)], "empty": {}, "z": 1e300}  # ~5.8 KB of JSON, 6,100 characters shown


def test_a_long_input_goes_to_the_handler_process_as_its_line_holds_it(orch, monkeypatch) -> None:
    """A long input (``signing.SUBMITTED_CONTEXT_MIN_BYTES``) is put in the handler process's request as the bytes
    its ``job_submitted`` line holds (``submitted.encoded_input``), not encoded again (~12 ms for 1 MiB); the handler
    gets the same value. A short one is encoded with the request."""
    from orchestrator import handler_host
    from orchestrator.signing import canonical

    given: list[bytes | None] = []
    real = handler_host.host_request
    monkeypatch.setattr(handler_host, "host_request",
                        lambda kind, context, encoded=None: (given.append(encoded), real(kind, context, encoded))[1])
    w = make_worker(orch)
    assert run(orch, w, "t.echo", LONG_INPUT)["status"].result["output"] == LONG_INPUT
    assert run(orch, w, "t.echo", {"short": 1})["status"].result["output"] == {"short": 1}
    assert given == [canonical(LONG_INPUT), None]
    w.close()


def test_a_request_with_the_input_already_encoded_is_the_request_encoded_whole() -> None:
    from orchestrator.handler_host import host_request
    from orchestrator.signing import canonical

    for context in ({"job_id": "J", "input": LONG_INPUT, "answers": ["\u00e9"], "artifacts_dir": "/a"},
                    {"input": [1, "x"]}, {"input": None, "job_id": "J"}):
        spliced = host_request("t.k\u00e9", context, canonical(context["input"]))
        assert canonical(context["input"]) in spliced
        assert json.loads(spliced) == json.loads(host_request("t.k\u00e9", context)) == {"kind": "t.k\u00e9",
                                                                                        "context": context}


def test_a_handler_process_let_go_of_while_its_thread_forks_another_does_not_hang(tmp_path) -> None:
    """A worker dropped without closing ends its handler process from a finalizer (``HandlerHost.close``), which the
    garbage collector may run while the same thread holds the lock around handler processes' pipe ends, which every
    fork takes (``pipe_ends``; in a forked child it runs, among the fork's handlers, with that lock still held): seen
    as a hung test suite, a handler process stuck at birth. The lock must let its own thread in again."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import gc, sys, weakref\n"
        "from pathlib import Path\n"
        "from orchestrator.handler_host import HandlerHost\n"
        "from orchestrator.pipe_ends import guarded\n"
        "class Dropped: pass\n"
        "owner = Dropped(); owner.cycle = owner  # collected only by the garbage collector, as a worker may be\n"
        "host = HandlerHost(Path(sys.argv[1]), lambda kind, ctx: None, max_runs=1, generation=lambda: 0)\n"
        "weakref.finalize(owner, host.close)\n"
        "with guarded():\n"
        "    del owner\n"
        "    gc.collect()\n"
        "print('done')\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "host")], capture_output=True, text=True,
                          timeout=30, env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-2000:]
