"""DBOS with its SQLite system database: W1/W2 through a queue served by a DBOS worker process, W3 with
``DBOS.recv`` in the workflow and ``DBOSClient.send`` from outside.

Every SQLite connection (SQLAlchemy engines of the worker and of the client) gets
``synchronous=FULL`` through a global ``connect`` listener. The queue and ``recv`` poll every 1 ms
(DBOS's defaults are 1 s). Duplicates in W3: the same answer sent twice at once by two processes; the step
after ``recv`` counts its executions in a file.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.latency import peak_rss_kb
from orchestrator.command_stop import COMMAND_STOP
from bench.common import ALL_WORKLOADS, WARMUP, Params, progress, scratch_dir, summarize, timed_poll

REPO = Path(__file__).resolve().parents[1]
QUEUE = "bench"


def _full_sync() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        if type(dbapi_conn).__module__.startswith("sqlite3"):
            dbapi_conn.execute("PRAGMA synchronous=FULL")

    event.listen(Engine, "connect", on_connect)


def _url(root: Path) -> str:
    return f"sqlite:///{root / 'dbos.sqlite'}"


def worker_main() -> None:
    """A DBOS application process serving the queue until the stop file appears."""
    
    from dbos import DBOS

    cfg = json.loads(os.environ["BENCH_DBOS"])
    root = Path(cfg["root"])
    _full_sync()
    DBOS(config={"name": "bench", "system_database_url": _url(root), "run_admin_server": False,
                 "notification_listener_polling_interval_sec": 0.001})  # recv wakes within 1 ms (default 1 s)

    @DBOS.workflow(name="noop")
    def noop(i: int) -> int:
        return i

    @DBOS.step(name="record")
    def record(answer: str) -> str:
        with open(root / "runs.txt", "a") as fh:
            fh.write("x\n")
        return answer

    @DBOS.workflow(name="ask")
    def ask() -> str:
        answer = DBOS.recv("answer", timeout_seconds=120)
        return record(str(answer))

    DBOS.launch()
    DBOS.register_queue(QUEUE, polling_interval_sec=0.001, worker_concurrency=1)
    print(json.dumps({"ready": True}), flush=True)
    told = False
    while not (root / "stop").exists():
        if not told and (root / "rss").exists():  # asked right after W1: W4 is the peak during W1, not later
            print(json.dumps({"maxrss_kb": peak_rss_kb()}), flush=True)
            told = True
        time.sleep(0.01)
    DBOS.destroy()


def _start(root: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, BENCH_DBOS=json.dumps({"root": str(root)}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-c", "from bench.peer_dbos import worker_main; worker_main()"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    if not proc.stdout.readline():
        raise RuntimeError("the DBOS worker did not start")
    return proc


def _stop(root: Path, proc: subprocess.Popen[str]) -> None:
    (root / "stop").touch()
    proc.communicate(timeout=120)


def _peak_rss_kb(root: Path, proc: subprocess.Popen[str]) -> int:
    """The worker process's peak RSS so far, which it reports when asked (the ``rss`` file)."""
    assert proc.stdout is not None
    (root / "rss").touch()
    for line in proc.stdout:
        if line.startswith("{") and "maxrss_kb" in line:
            return int(json.loads(line)["maxrss_kb"])
    raise RuntimeError(f"the DBOS worker ended (exit {proc.wait()}) before it reported its peak RSS")


def _client(root: Path) -> Any:
    from dbos import DBOSClient

    _full_sync()
    return DBOSClient(system_database_url=_url(root))


def _status(client: Any, wf: str) -> str | None:
    st = client.retrieve_workflow(wf).get_status()
    return st.status if st else None


def _send_at(args: tuple[str, str, Any]) -> None:
    root, wf, barrier = args
    client = _client(Path(root))
    barrier.wait()
    client.send(wf, "yes", "answer")
    client.destroy()


def run(params: Params, wanted: frozenset[str] = ALL_WORKLOADS) -> dict[str, Any]:
    """The workloads ``wanted`` (W1 and W4 are one run: W4 is the worker's peak RSS at the end of W1), with one
    worker process serving them all."""
    out: dict[str, Any] = {"note": "SQLite system database, synchronous=FULL; queue polled every 1 ms", "durable": True}
    root = scratch_dir(params, "dbos")
    proc = None
    client = None
    try:
        client = _client(root)
        with COMMAND_STOP.deferred():  # a stop waits for it to have started, then stops it below
            proc = _start(root)  # creates the schema; the queue is not served until jobs exist
        if wanted & {"W1", "W4"}:
            out.update(_w1_w4(root, proc, client, params))
        if "W2" in wanted:
            out["W2"] = _w2(client, params)
        if "W3" in wanted:
            out["W3"] = _w3(root, client, params)
        return out
    finally:
        if proc is not None:
            _stop(root, proc)
        if client is not None:
            client.destroy()
        shutil.rmtree(root, ignore_errors=True)


def _w1_w4(root: Path, proc: subprocess.Popen[str], client: Any, params: Params) -> dict[str, Any]:
    t_enq = time.perf_counter()
    handles = [client.enqueue({"queue_name": QUEUE, "workflow_name": "noop"}, i) for i in range(params.w1_jobs)]
    progress(f"dbos W1: {params.w1_jobs} workflows enqueued in {time.perf_counter() - t_enq:.1f}s")
    t0 = time.perf_counter()
    # the worker serves the queue while the jobs are enqueued: those it finished before the clock started
    # are not counted (counting them, as before, credited DBOS with work done outside the timed span)
    before = len(client.list_workflows(status="SUCCESS", name="noop", load_input=False, load_output=False))
    last = handles[-1].get_workflow_id()
    timed_poll(lambda: _status(client, last) == "SUCCESS", timeout=900, pause=0.001)
    timed = params.w1_jobs - before
    w1 = {"jobs": timed, "jobs_per_s": timed / (time.perf_counter() - t0), "done_while_enqueuing": before,
          "note": "the worker serves the queue while it is filled: timed from the last enqueue, counting "
                  "only the jobs finished after it"}
    return {"W1": w1, "W4": {"rss_mb": _peak_rss_kb(root, proc) / 1024}}


def _w2(client: Any, params: Params) -> dict[str, Any]:
    lat = []
    progress(f"dbos W2: {params.w2_samples} workflows one at a time")
    for i in range(WARMUP + params.w2_samples):
        t1 = time.monotonic_ns()
        wf = client.enqueue({"queue_name": QUEUE, "workflow_name": "noop"}, i).get_workflow_id()
        timed_poll(lambda: _status(client, wf) == "SUCCESS")
        if i >= WARMUP:
            lat.append((time.monotonic_ns() - t1) / 1e6)
    return summarize(lat)


def _w3(root: Path, client: Any, params: Params) -> dict[str, Any]:
    lat = []
    progress(f"dbos W3: {params.w3_samples} resumes")
    for i in range(WARMUP + params.w3_samples):
        wf = client.enqueue({"queue_name": QUEUE, "workflow_name": "ask"}).get_workflow_id()
        timed_poll(lambda: _status(client, wf) == "PENDING")
        time.sleep(0.01)  # let the workflow reach recv
        t1 = time.monotonic_ns()
        client.send(wf, "yes", "answer")
        timed_poll(lambda: _status(client, wf) == "SUCCESS")
        if i >= WARMUP:
            lat.append((time.monotonic_ns() - t1) / 1e6)
    before = len((root / "runs.txt").read_text().splitlines())
    ctx = multiprocessing.get_context("fork")
    for _ in range(params.w3_duplicate_trials):
        wf = client.enqueue({"queue_name": QUEUE, "workflow_name": "ask"}).get_workflow_id()
        timed_poll(lambda: _status(client, wf) == "PENDING")
        time.sleep(0.01)
        barrier = ctx.Barrier(2)
        procs = [ctx.Process(target=_send_at, args=((str(root), wf, barrier),)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        timed_poll(lambda: _status(client, wf) == "SUCCESS")
    time.sleep(0.05)
    runs = len((root / "runs.txt").read_text().splitlines()) - before
    return {**summarize(lat), "duplicates": runs - params.w3_duplicate_trials,
            "duplicate_trials": params.w3_duplicate_trials}
