"""Commits and statements per job on PostgreSQL: what one W1 job costs the database.

    python bench/pg_commits.py --jobs 200

Submits ``--jobs`` no-op jobs, then runs them with one in-process worker, and reports per job:

* ``xact_commit``: the delta of ``pg_stat_database.xact_commit`` of the bench's own database
  (``--url``, created if missing, used by nothing else), i.e. every committed transaction,
  read-only ones included (each autocommit ``SELECT`` is one);
* ``write_commits``: transactions that wrote something (client-side count: an autocommit
  ``INSERT``/``UPDATE``/``DELETE``/``pg_notify``, or a transaction block holding one), split
  into durable ones (``synchronous_commit = on``: the commit waits for the WAL flush) and
  hint-only ones that opted out (``synchronous_commit = off``);
* ``statements``: statements sent; ``round_trips``: waits for the server: a statement sent outside a pipeline,
  a fetch inside one of a result not received yet, and each time psycopg syncs a pipeline (its end; ``Pipeline.sync()``; and, inside a
  pipeline, a ``transaction()``'s start, end and commit, each a wait of its own: until 2026-12-02 these were not
  counted, and the audit log's appends, counted as 2, were 5, ``libpq`` trace);
* ``jobs_per_s``: W1 throughput of this single in-process worker (no process start-up).

``--others N`` first claims N more jobs, each by a worker of its own that never runs it (a lease of an hour),
so that stale recovery has running jobs to look at; ``--once`` runs the jobs one ``Worker.run_once()`` at a
time (stale recovery, then the claim, at every call) instead of with the loop (``Worker.run``). ``--resume`` adds a
phase: ``--jobs`` jobs that asked a question (run beforehand, not counted) are resumed, each an audited action (the
job's read, its pending lock, the event, its audit entry, the unlock), counted per resume.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/orch_commits"


class Counts:
    def __init__(self) -> None:
        self.statements = 0
        self.round_trips = 0
        self.durable_commits = 0
        self.async_commits = 0


COUNTS = Counts()


def _writes(query: Any) -> bool:
    text = query if isinstance(query, str) else str(getattr(query, "_obj", query))
    head = text.lstrip().upper()
    return head.startswith(("INSERT", "UPDATE", "DELETE")) or "PG_NOTIFY" in head or (
        head.startswith("WITH") and any(w in head for w in (" UPDATE ", " INSERT ", " DELETE ")))


def instrument() -> None:
    """Count statements, round trips and write commits on every psycopg connection."""
    import psycopg

    def state(conn: Any) -> dict[str, Any]:
        st = conn.__dict__.get("_count")
        if st is None:
            st = conn.__dict__["_count"] = {"tx": 0, "wrote": False, "async": False, "pipe": 0}
        return st

    def note(conn: Any, query: Any, n: int = 1) -> None:
        st = state(conn)
        COUNTS.statements += n
        if not st["pipe"]:
            COUNTS.round_trips += 1
        text = query if isinstance(query, str) else str(query)
        verb = text.strip().upper()
        if verb == "BEGIN":  # a transaction sent as statements (the store's locked appends): as ``transaction()``
            st["tx"] += 1
            st["wrote"], st["async"] = False, False
            return
        if verb in ("COMMIT", "ROLLBACK") and st["tx"]:
            st["tx"] -= 1
            if verb == "COMMIT" and st["wrote"]:
                if st["async"]:
                    COUNTS.async_commits += 1
                else:
                    COUNTS.durable_commits += 1
            st["async"] = False
            return
        if "synchronous_commit = off" in text or "'synchronous_commit', 'off'" in text:
            st["async"] = True
        if _writes(query):
            if st["tx"]:
                st["wrote"] = True
            elif conn.autocommit:
                if st["async"] or "'synchronous_commit', 'off'" in text:
                    COUNTS.async_commits += 1
                else:
                    COUNTS.durable_commits += 1
        if not st["tx"]:
            st["async"] = False

    real_cur_execute = psycopg.Cursor.execute
    real_executemany = psycopg.Cursor.executemany
    real_transaction = psycopg.Connection.transaction
    real_pipeline = psycopg.Connection.pipeline

    def cur_execute(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        note(self.connection, query)
        return real_cur_execute(self, query, params, **kw)

    def executemany(self: Any, query: Any, params_seq: Any, **kw: Any) -> Any:
        note(self.connection, query)
        return real_executemany(self, query, params_seq, **kw)

    @contextlib.contextmanager
    def transaction(self: Any, *a: Any, **kw: Any) -> Any:
        st = state(self)
        st["tx"] += 1
        if st["tx"] == 1:
            st["wrote"], st["async"] = False, False
        ok = False
        try:
            with real_transaction(self, *a, **kw) as tx:
                yield tx
            ok = True
        finally:
            st["tx"] -= 1
            if st["tx"] == 0:
                if not st["pipe"]:
                    COUNTS.round_trips += 2  # BEGIN, COMMIT
                if ok and st["wrote"]:
                    if st["async"]:
                        COUNTS.async_commits += 1
                    else:
                        COUNTS.durable_commits += 1
                st["async"] = False

    @contextlib.contextmanager
    def pipeline(self: Any) -> Any:
        st = state(self)
        st["pipe"] += 1
        try:
            with real_pipeline(self) as p:
                yield p
        finally:
            st["pipe"] -= 1

    # every sync of a pipeline waits for the server: its end, ``Pipeline.sync()``, and those psycopg makes itself (a
    # ``transaction()`` inside a pipeline nests pipelines, which sync as they start and end, and syncs at COMMIT)
    from psycopg._pipeline_base import BasePipeline

    def counted(real: Any) -> Any:
        def gen(self: Any) -> Any:
            COUNTS.round_trips += 1
            return (yield from real(self))
        return gen

    BasePipeline._sync_gen = counted(BasePipeline._sync_gen)  # type: ignore[method-assign]
    BasePipeline._exit_gen = counted(BasePipeline._exit_gen)  # type: ignore[method-assign]

    psycopg.Cursor.execute = cur_execute  # type: ignore[method-assign]
    psycopg.Cursor.executemany = executemany  # type: ignore[method-assign]
    for name in ("fetchone", "fetchall", "fetchmany"):  # in a pipeline, a fetch waits for the server
        real_fetch = getattr(psycopg.Cursor, name)

        def fetch(self: Any, *a: Any, _real: Any = real_fetch, **kw: Any) -> Any:
            if state(self.connection)["pipe"] and self.pgresult is None:  # not here yet: flush and wait
                COUNTS.round_trips += 1
            return _real(self, *a, **kw)

        setattr(psycopg.Cursor, name, fetch)
    psycopg.Connection.transaction = transaction  # type: ignore[method-assign]
    psycopg.Connection.pipeline = pipeline  # type: ignore[method-assign]


def xact_commit(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()") if conn.info.server_version >= 150000 else None
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                            ).fetchone()[0]


def settle(url: str, orch: Any) -> int:
    """xact_commit once every backend's statistics reached the server: a backend flushes them
    when it exits, so the store's idle connections and the worker's LISTEN one are closed."""
    store = orch.store
    with store._lock:
        idle = list(store._idle)
        store._idle.clear()  # in place: the store's finalizer closes this very list
    for conn in idle:
        conn.close()
    orch.queue.close()
    time.sleep(1.0)
    return xact_commit(url)


def main(argv: list[str] | None = None) -> int:
    from bench.cli_args import count, positive_int, results_file

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default=os.environ.get("ORCH_COMMITS_PG_URL", DEFAULT_URL))
    p.add_argument("--jobs", type=positive_int, default=200)
    p.add_argument("--json", type=Path, default=None, help="also write the counts to this file (checked first)")
    p.add_argument("--others", type=count, default=0, help="jobs left running by other workers")
    p.add_argument("--once", action="store_true", help="run the jobs with run_once() calls, not the loop")
    p.add_argument("--resume", action="store_true", help="also count the resume of jobs waiting for an answer")
    args = p.parse_args(argv)
    with results_file(p, args.json, "the counts") as json_file:
        return _count(args, json_file)


def _count(args: argparse.Namespace, json_file: Any) -> int:
    from bench.postgres import drop_project, ensure_database

    ensure_database(args.url)
    instrument()
    from orchestrator import Orchestrator
    from orchestrator.handlers import handler
    from orchestrator.signing import new_seed
    from orchestrator.store.pg_schema import migrate
    from orchestrator.store.postgres import PostgresStore

    @handler("bench.noop")
    def noop(ctx: Any) -> dict:
        return {"status": "done", "summary": "noop"}

    @handler("bench.ask")
    def ask(ctx: Any) -> dict:
        return {"status": "needs_human", "summary": "a question", "question": "which one?"}

    migrate(args.url)
    tmp = tempfile.TemporaryDirectory(prefix="orch-commits-")
    os.environ["ORCH_SIGNING_KEY"] = os.environ.get("ORCH_SIGNING_KEY") or new_seed()
    os.environ["ORCH_KEYRING_DIR"] = str(Path(tmp.name) / "keyring")
    project = f"commits{uuid.uuid4().hex[:10]}"
    orch = Orchestrator(base_path=tmp.name, project_id=project, store=PostgresStore(args.url, project))
    worker = orch.worker(worker_id="commits", lease_seconds=30)
    worker.queue.ensure_built(orch)
    for i in range(args.others):
        orch.submit("bench.noop", {"other": i})
        assert orch.worker(worker_id=f"other{i}", lease_seconds=3600).claim() is not None
    orch.submit("bench.noop", {"n": -1})  # warm up connections and prepared statements
    worker.run(max_jobs=1, idle_exit=True)
    out: dict[str, Any] = {"jobs": args.jobs, "others": args.others, "once": args.once, "loadavg": os.getloadavg()}
    asking: list[str] = []
    if args.resume:
        asking = [orch.submit("bench.ask", {"n": i}) for i in range(args.jobs + 1)]
        assert worker.run(max_jobs=len(asking), idle_exit=True) == len(asking)
        orch.resume(asking.pop(), "warm up")  # the pending lock's connection, prepared statements
    for phase in ("submit", "run") + (("resume",) if args.resume else ()):
        before = settle(args.url, orch)
        c0 = dict(COUNTS.__dict__)
        t0 = time.perf_counter()
        if phase == "submit":
            for i in range(args.jobs):
                orch.submit("bench.noop", {"n": i})
        elif phase == "resume":
            for job_id in asking:
                orch.resume(job_id, "that one")
        elif args.once:
            done = sum(worker.run_once() is not None for _ in range(args.jobs))
            assert done == args.jobs, done
        else:
            done = worker.run(max_jobs=args.jobs, idle_exit=True)
            assert done == args.jobs, done
        elapsed = time.perf_counter() - t0
        after = settle(args.url, orch)
        per = {k: round((v - c0[k]) / args.jobs, 2) for k, v in COUNTS.__dict__.items()}
        # the two settle() calls themselves commit a few read-only transactions
        per["xact_commit"] = round((after - before) / args.jobs, 2)
        per["per_s"] = round(args.jobs / elapsed, 1)
        out[phase] = per
    out["total"] = {k: round(out["submit"][k] + out["run"][k], 2) for k in out["run"] if k != "per_s"}
    orch.store.close()
    drop_project(args.url, project)
    tmp.cleanup()
    print(json.dumps(out, indent=1))
    if json_file is not None:
        json_file.write(json.dumps(out, indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
