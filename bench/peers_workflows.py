"""Workflow peers: LangGraph (SqliteSaver + ``interrupt`` / ``Command(resume=...)``) and DBOS (SQLite system DB).

LangGraph is not a job queue (a graph runs in the caller; there is no worker process), so it
only runs W3: a graph interrupts for an answer; the resume call runs the rest of the graph; the
final state is then read through a *separate* SQLite connection. Duplicates: two processes
resume the same thread with the same answer at the same moment; every run of the node after
the interrupt is counted.

DBOS runs W1/W2 through a queue served by a DBOS worker process and W3 with ``DBOS.recv`` /
``DBOSClient.send``. Both at ``synchronous=FULL`` on every SQLite connection.
"""
from __future__ import annotations

import multiprocessing
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any, TypedDict

from bench.common import ALL_WORKLOADS, WARMUP, NotApplicable, Params, progress, scratch_dir, summarize

W12_LANGGRAPH = "not a job queue: a graph runs inside the caller, there is no worker process to submit to"


class _State(TypedDict, total=False):
    answer: str


def _graph(db: Path, counter: Path) -> tuple[Any, sqlite3.Connection]:
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt

    def ask(state: _State) -> _State:
        answer = interrupt("go?")
        with open(counter, "a") as fh:  # one line per execution after the interrupt
            fh.write("x\n")
        return {"answer": str(answer)}

    conn = sqlite3.connect(str(db), check_same_thread=False, isolation_level=None)
    saver = SqliteSaver(conn)
    saver.setup()
    conn.execute("PRAGMA synchronous=FULL")
    g = StateGraph(_State)
    g.add_node("ask", ask)
    g.add_edge(START, "ask")
    g.add_edge("ask", END)
    return g.compile(checkpointer=saver), conn


def _lg_resume(args: tuple[str, str, str, Any]) -> None:
    from langgraph.types import Command

    db, counter, thread, barrier = args
    app, conn = _graph(Path(db), Path(counter))
    barrier.wait()
    try:
        app.invoke(Command(resume="yes"), {"configurable": {"thread_id": thread}})
    except Exception:  # a lost race may raise (e.g. database is locked): counted by executions, not by errors
        pass
    conn.close()


def langgraph(params: Params, wanted: frozenset[str] = ALL_WORKLOADS) -> dict[str, Any]:
    """W3, when ``wanted``; W1, W2 and W4 are n/a."""
    out: dict[str, Any] = {"note": "SqliteSaver, synchronous=FULL, WAL; the resume runs the graph in the caller",
                           "durable": True, **{w: {"na": W12_LANGGRAPH} for w in ("W1", "W2", "W4") if w in wanted}}
    if "W3" in wanted:
        out["W3"] = _langgraph_w3(params)
    return out


def _langgraph_w3(params: Params) -> dict[str, Any]:
    from langgraph.types import Command

    root = scratch_dir(params, "langgraph")
    try:
        db, counter = root / "lg.db", root / "runs.txt"
        app, conn = _graph(db, counter)
        reader, rconn = _graph(db, root / "reader-never-runs.txt")
        lat = []
        progress(f"langgraph W3: {params.w3_samples} resumes")
        for i in range(WARMUP + params.w3_samples):
            cfg = {"configurable": {"thread_id": f"t{i}"}}
            app.invoke({"answer": ""}, cfg)
            t0 = time.monotonic_ns()
            app.invoke(Command(resume="yes"), cfg)
            while reader.get_state(cfg).values.get("answer") != "yes":  # a separate connection sees it
                time.sleep(0.0002)
            if i >= WARMUP:
                lat.append((time.monotonic_ns() - t0) / 1e6)
        ctx = multiprocessing.get_context("fork")
        dup_counter = root / "dup-runs.txt"
        progress(f"langgraph W3: {params.w3_duplicate_trials} double deliveries of the same answer")
        app2, conn2 = _graph(db, dup_counter)
        for i in range(params.w3_duplicate_trials):
            thread = f"dup{i}"
            app2.invoke({"answer": ""}, {"configurable": {"thread_id": thread}})
            barrier = ctx.Barrier(2)
            procs = [ctx.Process(target=_lg_resume, args=((str(db), str(dup_counter), thread, barrier),))
                     for _ in range(2)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(60)
        runs = len(dup_counter.read_text().splitlines()) if dup_counter.exists() else 0
        for c in (conn, rconn, conn2):
            c.close()
        return {**summarize(lat), "duplicates": runs - params.w3_duplicate_trials,
                "duplicate_trials": params.w3_duplicate_trials}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def available() -> list[str]:
    out = []
    try:
        import langgraph.checkpoint.sqlite  # noqa: F401

        out.append("langgraph")
    except ImportError:
        pass
    try:
        import dbos  # noqa: F401

        out.append("dbos")
    except ImportError:
        pass
    return out


def run_peer(name: str, params: Params, wanted: frozenset[str] = ALL_WORKLOADS) -> dict[str, Any]:
    """The workloads ``wanted`` (``--only``) that ``name`` can run, and n/a for the others asked for."""
    if name == "langgraph":
        return langgraph(params, wanted)
    if name == "dbos":
        from bench import peer_dbos

        return peer_dbos.run(params, wanted)
    raise NotApplicable(f"unknown peer {name}")


__all__ = ["available", "run_peer"]
