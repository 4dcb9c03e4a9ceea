"""Embedded queue peers: Huey (SqliteHuey, FileHuey), persist-queue (SQLiteAckQueue), litequeue.

Each runs W1 (throughput, one worker process) and W2 (submit -> done visible to this process,
one job at a time to an idle worker in another process), at full durability: every SQLite
connection gets ``synchronous=FULL``. FileHuey cannot fsync at all (it writes files in place, no
fsync), so its numbers are shown but marked as not durable. None of them can pause a task for an
outside answer and resume it, so W3 is n/a for all.

The peer workers are minimal loops (dequeue, run the no-op, record the result) polling every
0.5 ms when idle: faster than the peers' own consumers (Huey polls at 100 ms by default), so the
comparison favours them. This process reads completion through its own connection, polling
every 0.2 ms (SQLite has no change notification).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.latency import peak_rss_kb
from orchestrator.command_stop import COMMAND_STOP
from bench.common import (ALL_WORKLOADS, WARMUP, NotApplicable, Params, progress, scratch_dir, settle, sqlite_full,
                          summarize, timed_poll)

REPO = Path(__file__).resolve().parents[1]
IDLE_PAUSE = 0.0005
W3_REASON = "no pause/resume: a task cannot wait for an outside answer and continue"


class QueuePeer:
    """One system: ``enqueue`` and ``is_done`` in the caller's process, ``work_one`` in the worker's."""

    name = "?"
    durable = True
    note = ""

    def __init__(self, root: Path) -> None:
        self.root = root

    def enqueue(self, i: int) -> Any: ...

    def work_one(self) -> bool:
        """Dequeue and run one job; False if there was none."""
        raise NotImplementedError

    def is_done(self, ref: Any) -> bool: ...


def _no_op(i: int) -> int:
    return i


class HueySqlite(QueuePeer):
    name = "huey-sqlite"
    note = "SqliteHuey(fsync=True): synchronous=FULL, WAL"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        from huey import SqliteHuey

        self.huey = SqliteHuey("bench", filename=str(root / "huey.db"), fsync=True, results=True)
        self.task = self.huey.task(name="noop")(_no_op)

    def enqueue(self, i: int) -> Any:
        return self.task(i).id

    def work_one(self) -> bool:
        task = self.huey.dequeue()
        if task is None:
            return False
        self.huey.execute(task)
        return True

    def is_done(self, ref: Any) -> bool:
        return self.huey.get(ref, peek=True) is not None


class HueyFile(HueySqlite):
    name = "huey-file"
    durable = False
    note = "FileHuey: writes files in place with no fsync at all (cannot be made durable)"

    def __init__(self, root: Path) -> None:
        QueuePeer.__init__(self, root)
        from huey import FileHuey

        self.huey = FileHuey("bench", path=str(root / "huey-files"), results=True)
        self.task = self.huey.task(name="noop")(_no_op)


class PersistQueue(QueuePeer):
    name = "persist-queue"
    note = "SQLiteAckQueue, synchronous=FULL; done = acked row"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        from persistqueue import SQLiteAckQueue

        self.q = SQLiteAckQueue(str(root / "pq"), multithreading=True, auto_resume=False)
        for conn in {id(c): c for c in (self.q._conn, self.q._getter, self.q._putter) if c}.values():
            sqlite_full(conn)

    def enqueue(self, i: int) -> Any:
        return self.q.put({"i": i})

    def work_one(self) -> bool:
        from persistqueue import Empty

        try:
            item = self.q.get(block=False, raw=True)
        except Empty:
            return False
        _no_op(item["data"]["i"])
        self.q.ack(id=item["pqid"])
        return True

    def is_done(self, ref: Any) -> bool:
        row = self.q._getter.execute(f"SELECT status FROM {self.q._table_name} WHERE {self.q._key_column} = ?",
                                     (ref,)).fetchone()
        return bool(row) and row[0] == 5  # AckStatus.acked


class LiteQueuePeer(QueuePeer):
    name = "litequeue"
    note = "LiteQueue, synchronous=FULL (its default is NORMAL), WAL; done = status DONE"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        from litequeue import LiteQueue

        self.q = LiteQueue(str(root / "lq.db"))
        sqlite_full(self.q.conn)

    def enqueue(self, i: int) -> Any:
        return self.q.put(json.dumps({"i": i})).message_id

    def work_one(self) -> bool:
        msg = self.q.pop()
        if msg is None:
            return False
        _no_op(json.loads(msg.data)["i"])
        self.q.done(msg.message_id)
        return True

    def is_done(self, ref: Any) -> bool:
        from litequeue import MessageStatus

        msg = self.q.get(ref)
        return msg is not None and msg.status == MessageStatus.DONE


PEERS: dict[str, type[QueuePeer]] = {c.name: c for c in (HueySqlite, HueyFile, PersistQueue, LiteQueuePeer)}


def worker_main() -> None:
    """Entry of a peer's worker process: run ``max_jobs`` (or until stdin closes), report on stdout."""
    cfg = json.loads(os.environ["BENCH_PEER_WORKER"])
    peer = PEERS[cfg["peer"]](Path(cfg["root"]))
    print(json.dumps({"ready": True}), flush=True)
    done, t0 = 0, time.perf_counter()
    stop_file = Path(cfg["root"]) / "stop"
    while cfg["max_jobs"] is None or done < cfg["max_jobs"]:
        if peer.work_one():
            done += 1
        elif stop_file.exists():
            break
        else:
            time.sleep(IDLE_PAUSE)
    print(json.dumps({"done": done, "elapsed_s": time.perf_counter() - t0, "maxrss_kb": peak_rss_kb()}), flush=True)


def _start(name: str, root: Path, max_jobs: int | None) -> subprocess.Popen[str]:
    env = dict(os.environ, BENCH_PEER_WORKER=json.dumps({"peer": name, "root": str(root), "max_jobs": max_jobs}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-c", "from bench.peers_queues import worker_main; worker_main()"],
                            env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if not proc.stdout.readline():
        raise RuntimeError(f"{name}: the worker process did not start")
    return proc


def _finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    out, _ = proc.communicate(timeout=900)
    return json.loads(out.strip().splitlines()[-1])


def run_peer(name: str, params: Params, wanted: frozenset[str] = ALL_WORKLOADS) -> dict[str, Any]:
    """The workloads ``wanted`` of W1 + W4 (one run: W4 is the worker's peak RSS during W1) and W2 for one queue
    peer; W3 is n/a."""
    out: dict[str, Any] = {"note": PEERS[name].note, "durable": PEERS[name].durable}
    if "W3" in wanted:
        out["W3"] = {"na": W3_REASON}
    if wanted & {"W1", "W4"}:
        out.update(_w1_w4(name, params))
    if "W2" in wanted:
        out["W2"] = _w2(name, params)
    return out


def _w1_w4(name: str, params: Params) -> dict[str, Any]:
    root = scratch_dir(params, name)
    proc = None
    try:
        peer = PEERS[name](root)
        for i in range(params.w1_jobs):
            peer.enqueue(i)
        settle(params, f"{name} W1's run")
        progress(f"{name} W1: {params.w1_jobs} jobs enqueued; one worker process runs them")
        with COMMAND_STOP.deferred():  # a stop waits for it to have started, then ends it below
            proc = _start(name, root, params.w1_jobs)
        summary = _finish(proc)
        proc = None
        return {"W1": {"jobs": summary["done"], "jobs_per_s": summary["done"] / summary["elapsed_s"]},
                "W4": {"rss_mb": summary["maxrss_kb"] / 1024}}
    finally:
        if proc is not None:  # stopped or failed while it ran: ended, not left running on a removed folder
            proc.kill()
            proc.communicate()
        shutil.rmtree(root, ignore_errors=True)


def _w2(name: str, params: Params) -> dict[str, Any]:
    settle(params, f"{name} W2")
    root = scratch_dir(params, name)
    proc = None
    try:
        peer = PEERS[name](root)
        with COMMAND_STOP.deferred():
            proc = _start(name, root, None)
        progress(f"{name} W2: {params.w2_samples} jobs one at a time")
        lat = []
        for i in range(WARMUP + params.w2_samples):
            t0 = time.monotonic_ns()
            ref = peer.enqueue(i)
            timed_poll(lambda: peer.is_done(ref))
            if i >= WARMUP:
                lat.append((time.monotonic_ns() - t0) / 1e6)
        return summarize(lat)
    finally:
        (root / "stop").touch()
        if proc is not None:
            _finish(proc)
        shutil.rmtree(root, ignore_errors=True)


def available() -> list[str]:
    names = []
    for name, module in (("huey-sqlite", "huey"), ("huey-file", "huey"), ("persist-queue", "persistqueue"),
                         ("litequeue", "litequeue")):
        try:
            __import__(module)
            names.append(name)
        except ImportError:
            continue
    return names


def not_installed(name: str) -> NotApplicable:
    return NotApplicable(f"{name} is not installed (pip install -e '.[bench]')")
