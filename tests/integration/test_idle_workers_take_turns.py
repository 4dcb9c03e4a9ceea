"""The idle workers of one file queue take turns watching for new jobs (``wakeup.WatchTurn``, docs/worker.md).

inotify wakes every watcher of a folder: each new job woke every idle worker, and all but one walked the index and
read the job for nothing. One watches at a time; it hands the turn over once it claims a job, stops, dies, or leaves
a job it cannot run.
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator.queue import ReadyEntry
from orchestrator.store.file_queue import FileQueueIndex
from orchestrator.wakeup import TURN_LOCK, watch_turn
from orchestrator.worker import Worker, WorkerSettings

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify and EPOLLEXCLUSIVE are Linux's")


def entry(job_id: str) -> ReadyEntry:
    return ReadyEntry(0, 1_000_000, job_id)


def in_thread(fn, *args):
    """Run ``fn(*args)`` in a thread of its own (each thread of an index has its own turn); its result or error."""
    out: dict = {}

    def body() -> None:
        try:
            out["result"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    return t, out


def turn_is_held(root: Path) -> bool:
    fd = os.open(root / TURN_LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


class IdleThread:
    """A thread that waits on the index as an idle worker does, and counts its wake-ups."""

    def __init__(self, index: FileQueueIndex, step: float = 0.05) -> None:
        """``step``: its waits' length (a worker's is 0.25 s): at the end of each it tries to take the turn."""
        self.index, self.woke, self.stop, self.step = index, 0, threading.Event(), step
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        assert self.ready.wait(5)

    def _run(self) -> None:
        self.index.wait(0)
        self.ready.set()
        while not self.stop.is_set():
            if self.index.wait(self.step):
                self.woke += 1
        self.index.close()

    def end(self) -> None:
        self.stop.set()
        self.thread.join(5)


def woken_for_a_with_another_waiting(tmp_path: Path, step: float = 0.05,
                                     also: tuple[str, ...] = ()) -> tuple[FileQueueIndex, IdleThread]:
    """A built index (its folders' marks in them, as a project's) whose watch this thread has, woken for the entry of
    job A (and of the jobs ``also``), and an idle thread waiting its turn in waits of ``step`` seconds."""
    index = FileQueueIndex(tmp_path / "index")
    index.start_building()
    index.mark_built()  # ready/.built is no job: a worker handing its turn over does not wake another for it
    assert index.wait(0) is False  # this thread watches
    standby = IdleThread(index, step)
    time.sleep(0.2)  # in its wait: a thread that comes to it when the turn is free takes it (and looks)
    for job_id in ("A", *also):
        index.put_ready(entry(job_id))
    assert index.wait(1.0) is True
    return index, standby


def test_the_worker_that_ran_the_last_job_watches_again_when_idle_and_no_other_is_woken(tmp_path) -> None:
    """One job at a time goes to the worker that ran the last one: its processes have not slept long (a worker idle
    for 10 ms instead of 2 runs the next job ~2x slower on the benchmark VM; docs/performance.md)."""
    index, standby = woken_for_a_with_another_waiting(tmp_path, step=2.0)
    try:
        index.drop_ready(entry("A"))  # claimed
        index.hand_over_watch()  # the run starts: nobody else is ready, nobody is woken
        time.sleep(0.2)
        assert index.wait(0) is False and turn_is_held(index.root)  # idle again: its turn again
        index.put_ready(entry("B"))
        assert index.wait(1.0) is True
        assert standby.woke == 0
    finally:
        standby.end()
        index.close()


def test_a_job_made_while_the_worker_watching_runs_one_wakes_one_waiting_at_once(tmp_path) -> None:
    index, standby = woken_for_a_with_another_waiting(tmp_path, step=2.0)
    try:
        index.drop_ready(entry("A"))
        index.hand_over_watch()  # it runs A
        FileQueueIndex(index.root).put_ready(entry("B"))  # a submit meanwhile, from another process: nobody watches
        time.sleep(0.3)
        assert standby.woke == 1, "woken by the submit's ring, not at the end of its 2 s wait"
    finally:
        standby.end()
        index.close()


def test_a_worker_that_claims_one_job_of_several_ready_wakes_one_waiting_for_the_others(tmp_path) -> None:
    index, standby = woken_for_a_with_another_waiting(tmp_path, step=2.0, also=("B",))
    try:
        index.drop_ready(entry("A"))
        index.hand_over_watch()  # B is still ready
        time.sleep(0.3)
        assert standby.woke == 1
    finally:
        standby.end()
        index.close()


def test_a_submit_where_no_worker_ever_took_turns_makes_no_file_and_keeps_no_descriptor(tmp_path) -> None:
    import gc

    root = tmp_path / "index"
    before = len(os.listdir("/proc/self/fd"))
    FileQueueIndex(root).put_ready(entry("A"))
    assert sorted(p.name for p in root.iterdir()) == [".entry", "ready", "running"]
    watcher = FileQueueIndex(root)
    watcher.wait(0)  # a worker takes turns: the files are made
    watcher.close()
    for i in range(20):  # indexes of Orchestrators made and let go of, each ringing after its entry
        FileQueueIndex(root).put_ready(entry(f"J{i}"))
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before + 1


def test_a_new_entry_wakes_the_idle_worker_whose_turn_it_is_and_not_the_others(tmp_path) -> None:
    root = tmp_path / "index"
    index = FileQueueIndex(root)
    idle = [IdleThread(index) for _ in range(3)]
    try:
        time.sleep(0.2)
        index.put_ready(entry("A"))
        time.sleep(0.3)
        assert sorted(t.woke for t in idle) == [0, 0, 1]  # without turns: [1, 1, 1]
    finally:
        for t in idle:
            t.end()


def test_the_watcher_hands_its_turn_over_once_it_claims_a_job_and_the_next_looks_only_if_an_entry_is_left(
        tmp_path) -> None:
    index, standby = woken_for_a_with_another_waiting(tmp_path)
    try:
        index.drop_ready(entry("A"))  # claimed: its entry is gone
        index.hand_over_watch()
        time.sleep(0.3)
        assert standby.woke == 0, "its turn came, and the entry it was not woken for is gone: nothing to look at"
        index.put_ready(entry("B"))
        time.sleep(0.3)
        assert standby.woke == 1, "it watches now"
        index.put_ready(entry("C"))  # announced while this thread had the turn...
        assert index.wait(0) is False  # ...but this thread's turn is over: only the watcher was woken
    finally:
        standby.end()
        index.close()


def test_the_next_worker_looks_at_once_when_an_entry_announced_before_its_turn_is_still_there(tmp_path) -> None:
    root = tmp_path / "index"
    index = FileQueueIndex(root)
    assert index.wait(0) is False  # this thread watches
    waiting, out = in_thread(lambda: (index.wait(0), index.wait(2.0))[1])
    time.sleep(0.2)
    index.put_ready(entry("A"))
    assert index.wait(1.0) is True
    started = time.monotonic()
    index.hand_over_watch()  # A is not claimed: the one whose turn comes must look
    waiting.join(5)
    assert out == {"result": True}
    assert time.monotonic() - started < 1.0
    index.close()


def test_a_turn_that_comes_after_the_jobs_announced_meanwhile_were_claimed_says_so_once(tmp_path) -> None:
    """The next watcher walks for none of them, but they may run now, unseen by its stale recovery: its worker
    looks at the running index (``Worker._idle``)."""
    root = tmp_path / "index"
    index = FileQueueIndex(root)
    assert index.wait(0) is False  # this thread watches
    watching, handed_over = threading.Event(), threading.Event()

    def next_watcher():
        waited = index.wait(0), index.claimed_while_waiting()  # not its turn: its watch queues what comes
        watching.set()
        assert handed_over.wait(5)
        taken = index.wait(0.1), index.claimed_while_waiting()  # its turn: A was announced, and is gone
        after = index.wait(0.1), index.claimed_while_waiting()
        index.close()
        return waited, taken, after

    waiting, out = in_thread(next_watcher)
    assert watching.wait(5)
    index.put_ready(entry("A"))
    assert index.wait(1.0) is True
    index.drop_ready(entry("A"))  # claimed
    index.hand_over_watch()
    handed_over.set()
    waiting.join(5)
    assert out == {"result": ((False, False), (False, True), (False, False))}
    index.close()


def test_a_worker_that_left_a_job_for_others_gives_the_turn_up_and_watches_on_its_own(tmp_path) -> None:
    index, standby = woken_for_a_with_another_waiting(tmp_path)
    try:
        assert index.wait(0.1, take_turns=False) is False  # it left A (another kind): its turn goes on
        time.sleep(0.3)
        assert standby.woke == 1, "the next one looked at A, still there"
        index.put_ready(entry("B"))
        assert index.wait(1.0, take_turns=False) is True, "watching on its own, it is woken as before"
    finally:
        standby.end()
        index.close()


def test_a_watcher_killed_without_handing_over_is_replaced_within_a_wait_step(tmp_path) -> None:
    root = tmp_path / "index"
    root.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"), str(root / TURN_LOCK)],
        stdout=subprocess.PIPE, text=True)
    index = FileQueueIndex(root)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert index.wait(0) is False and turn_is_held(root)
        index.put_ready(entry("A"))
        assert index.wait(0.1) is False, "not its turn: the killed worker's was"
        holder.send_signal(signal.SIGKILL)
        holder.wait(5)
        assert index.wait(0.25) is True, "the lock was free at the wait's end: its turn, and A is still there"
    finally:
        holder.kill()
        holder.wait(5)
        holder.stdout.close()
        index.close()


def test_a_process_the_watcher_forked_does_not_keep_its_turn_once_the_watcher_is_killed(tmp_path) -> None:
    """A fork keeps every descriptor, and an ``flock`` belongs to the open file: a handler process (or what it
    forked) outliving a worker killed while it watched would keep the turn from every other idle worker."""
    root = tmp_path / "index"
    watcher = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "from orchestrator.store.file_queue import FileQueueIndex\n"
        "index = FileQueueIndex(sys.argv[1]); index.wait(0)\n"
        "child = os.fork()\n"
        # the child prints once its fork handlers ran (before ``fork`` returns in it): under load it may not have run
        # yet when the parent's line arrives, and its copy of the lock would still hold the turn for those microseconds
        # (one ``write`` each: a pipe keeps a short one whole, where ``print`` may write a line in two)
        "if child == 0: os.write(1, b'forked\\n'); time.sleep(60); os._exit(0)\n"
        "os.write(1, b'%d\\n' % child); time.sleep(60)\n"), str(root)], stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    child = 0
    try:
        lines = {watcher.stdout.readline().strip(), watcher.stdout.readline().strip()}
        child = int((lines - {"forked"}).pop())
        assert turn_is_held(root)
        watcher.send_signal(signal.SIGKILL)
        watcher.wait(5)
        os.kill(child, 0)  # alive, with its copies of the watcher's descriptors
        assert not turn_is_held(root)
    finally:
        watcher.kill()
        watcher.wait(5)
        watcher.stdout.close()
        if child:
            os.kill(child, signal.SIGKILL)


def test_turns_are_not_taken_where_a_file_is_planted_in_the_fifos_place(tmp_path) -> None:
    root = tmp_path / "index"
    root.mkdir()
    (root / ".turns").write_text("not a fifo")
    assert watch_turn(root) is None
    index = FileQueueIndex(root)
    idle = [IdleThread(index) for _ in range(2)]
    try:
        index.put_ready(entry("A"))
        time.sleep(0.3)
        assert [t.woke for t in idle] == [1, 1], "every idle worker watches, as before"
    finally:
        for t in idle:
            t.end()


def run_in_thread(worker: Worker) -> threading.Thread:
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    return t


def wait_until(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_a_new_job_makes_one_idle_worker_look_not_every_one(orch) -> None:
    workers = [Worker(orch, WorkerSettings(worker_id=f"w{i}")) for i in range(3)]
    passes = {w.worker_id: 0 for w in workers}
    for w in workers:
        def counted(now=None, _w=w, _claim=w.claim):
            found = _claim(now)
            if found is None:
                passes[_w.worker_id] += 1
            return found
        w.claim = counted
    threads = [run_in_thread(w) for w in workers]
    try:
        assert wait_until(lambda: all(passes.values()))  # each made its first pass, and is idle
        time.sleep(0.3)
        before = sum(passes.values())
        for i in range(6):
            job = orch.submit("t.echo", {"n": i})
            assert wait_until(lambda: orch.status(job).state == "succeeded")
            time.sleep(0.05)
        empty = sum(passes.values()) - before
        # the worker that ran each job looks once more before it waits; with every idle worker woken: 18 or more
        assert empty <= 6 + 2, passes
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(10)


def test_an_idle_worker_watching_when_a_job_of_another_kind_comes_hands_the_turn_to_one_that_runs_it(orch) -> None:
    other = Worker(orch, WorkerSettings(worker_id="other", kinds=("t.payload",)))
    echo = Worker(orch, WorkerSettings(worker_id="echo", kinds=("t.echo",)))
    root = orch.queue.root
    threads = [run_in_thread(other)]
    try:
        assert wait_until(lambda: (root / TURN_LOCK).exists() and turn_is_held(root))  # its turn
        threads.append(run_in_thread(echo))
        time.sleep(0.5)  # waiting for its turn
        submitted = time.monotonic()
        job = orch.submit("t.echo", {"n": 1})
        # without the hand-over: the echo worker sleeps until its idle wait ends (30 s)
        assert wait_until(lambda: orch.status(job).state == "succeeded", 5.0)
        assert time.monotonic() - submitted < 3.0
    finally:
        for w in (other, echo):
            w.stop()
        for t in threads:
            t.join(10)


def test_an_idle_worker_whose_turn_comes_after_the_watcher_claimed_a_job_and_died_recovers_it_at_its_expiry(
        orch) -> None:
    """The watcher claims a job, lets go of its turn and is killed: the worker whose turn comes had found no job
    running, so its idle wait was IDLE_MAX_WAIT (30 s), and its turn told it nothing (the job's entry is gone). Until
    2026-12-06 (twenty-third session) it recovered the job that late; it now looks at the running index."""
    assert orch.queue.wait(0) is False  # this thread is the watcher
    idle = Worker(orch, WorkerSettings(worker_id="idle", retry_base_seconds=0))
    looked = threading.Event()

    def counted(now=None, _claim=idle.claim):
        found = _claim(now)
        if found is None:
            looked.set()
        return found

    idle.claim = counted
    thread = run_in_thread(idle)
    try:
        assert looked.wait(10)  # its first pass found nothing to run and no job running: it waits its turn
        job = orch.submit("t.echo", {"n": 1})
        claimed = time.monotonic()
        assert Worker(orch, WorkerSettings(worker_id="dead", lease_seconds=1)).claim() is not None
        orch.queue.hand_over_watch()  # the run starts, and the watcher dies: nothing renews the lease
        assert wait_until(lambda: orch.status(job).state == "succeeded", 8.0), "recovered when its idle wait ends: 30 s"
        assert time.monotonic() - claimed < 1 + 3.0
    finally:
        idle.stop()
        thread.join(10)
        orch.queue.close()


@pytest.mark.parametrize("queued, kinds, left", [
    ((), (), False),  # nothing queued
    (("t.echo",), ("t.payload",), True),  # a kind this worker does not run (read once, then passed over unread)
    (("nobody.handles.this",), (), True),  # a kind it has no handler for
])
def test_a_claim_pass_says_whether_it_left_a_runnable_job_for_another_worker(orch, queued, kinds, left) -> None:
    """What makes an idle worker give its turn up (``Claimer.left_for_others``); a key it does not trust too
    (tests/integration/test_untrusted_keys.py)."""
    for kind in queued:
        orch.submit(kind, 1)
    worker = Worker(orch, WorkerSettings(worker_id="w", kinds=kinds))
    for _ in range(2):  # its first meeting with the job, and the next, which may pass over it unread
        assert worker.claim() is None
        assert worker.claimer.left_for_others is left


def test_a_delayed_retry_this_worker_will_run_is_not_left_for_another(orch) -> None:
    """It waits for the retry's due time itself (``next_due``), keeping its turn."""
    orch.submit("t.flaky", {"succeed_on": 2})
    worker = Worker(orch, WorkerSettings(worker_id="w", retry_base_seconds=600))
    assert worker.run_once().outcome == "retry"
    assert worker.claim() is None and worker.next_due is not None
    assert worker.claimer.left_for_others is False


def test_a_bell_let_go_of_while_its_thread_opens_a_store_lock_does_not_hang(tmp_path) -> None:
    """The garbage collector may finalize an index's bell while the thread holds the guard of the store's lock
    descriptors (not reentrant): its finalizer must not wait for that guard."""
    root = tmp_path / "index"
    watcher = FileQueueIndex(root)
    watcher.wait(0)  # the turn's files made
    watcher.close()
    script = (
        "import gc, sys\n"
        "from orchestrator.queue import ReadyEntry\n"
        "from orchestrator.store.file_queue import FileQueueIndex\n"
        "from orchestrator.store import locks\n"
        "index = FileQueueIndex(sys.argv[1]); index.put_ready(ReadyEntry(0, 1, 'A'))\n"
        "assert index._bell._fds is not None\n"
        "with locks._lock_fds_guard:\n"
        "    del index\n"
        "    gc.collect()\n"
        "print('done')\n")
    proc = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-2000:]


def test_a_watcher_paused_with_its_turn_held_leaves_a_new_job_unclaimed_for_at_most_two_looks(tmp_path) -> None:
    """A watcher stopped (SIGSTOP) keeps its turn's lock: the others look at ready/ themselves once per
    ``UNWATCHED_LOOK_EVERY`` and wake for an entry still there at their next look (before 2026-12-06 they waited
    ``IDLE_MAX_WAIT``, 30 s), once per entry."""
    root = tmp_path / "index"
    root.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, signal, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); os.kill(os.getpid(), signal.SIGSTOP)"),
        str(root / TURN_LOCK)], stdout=subprocess.PIPE, text=True)
    index = FileQueueIndex(root)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert index.wait(0) is False and turn_is_held(root)
        FileQueueIndex(root).put_ready(ReadyEntry(0, int(time.time() * 1e6), "A"))
        started = time.monotonic()
        while not index.wait(0.25):  # a worker's wait step
            assert time.monotonic() - started < 2.0, "still deaf to the new job"
        assert time.monotonic() - started >= 0.25
        assert not any(index.wait(0.25) for _ in range(6)), "woken again for the same entry"
    finally:
        holder.kill()
        holder.wait(5)
        holder.stdout.close()
        index.close()
