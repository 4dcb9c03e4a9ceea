"""W1/W2/W3 on PostgreSQL: this orchestrator beside Procrastinate and DBOS, same database.

    python bench/postgres.py                          # full run: 1, 2 and 4 worker processes
    python bench/postgres.py --w1-jobs 20 --w2-samples 5 --w3-samples 5 --workers 1   # smoke run

* **W1** throughput: enqueue ``--w1-jobs`` no-op jobs (workers stopped), then start the
  workers; jobs/s = jobs / (last finish - first start), both read from the system's own
  records, so process start-up is not counted. The enqueue rate is reported too.
* **W2** latency: one job at a time to idle workers in other processes; milliseconds from just
  before the submit call until a separate reader (its own connection, polling every
  ``POLL`` s) sees the terminal state. P50/P95/P99 over ``--w2-samples``.
* **W3** human in the loop: a job waits for an answer; the same answer is then delivered twice,
  concurrently, from two clients; milliseconds from the first delivery until the reader sees
  the final state, and how many times the answer was acted upon more than once (must be 0).

Peers (``pip install 'jsonl-orchestrator[bench-pg]'``) run with their defaults except DBOS's
queue polling interval (1 s by default, set to ``DBOS_POLL`` so that W2 measures more than
the poll). A peer that is not installed is skipped, with the reason in the output. Progress
goes to stderr, the table (Markdown) to stdout, everything to ``--json``. The bench uses
its own database (``--url``, created if missing) and its own project/queue names.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/orch_bench"
POLL = 0.002  # the reader's polling interval (seconds) when it waits for a terminal state
DBOS_POLL = 0.05
W1_POLL = 0.25
READY_TIMEOUT = 60.0
SAMPLE_TIMEOUT = 30.0


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


def summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50": round(pct(ms, 50), 2), "p95": round(pct(ms, 95), 2), "p99": round(pct(ms, 99), 2),
            "mean": round(statistics.fmean(ms), 2) if ms else float("nan")}


def wait_for(predicate: Callable[[], Any], timeout: float = SAMPLE_TIMEOUT, what: str = "condition",
             interval: float = POLL) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def ensure_database(url: str) -> None:
    import psycopg
    from urllib.parse import urlsplit, urlunsplit

    try:
        psycopg.connect(url, connect_timeout=5).close()
        return
    except psycopg.OperationalError:
        pass
    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{parts.path.lstrip("/")}"')
    log(f"created database {parts.path.lstrip('/')}")


def drop_project(url: str, project: str) -> None:
    """Delete every row of a benchmark's project (each benchmark runs in a project of its own)."""
    from orchestrator.store.pg_schema import delete_project

    delete_project(url, project)


# == the systems ===================================================================================
class System:
    """One job system under test: how to start a worker, submit, resume and read states."""

    name = "?"

    def __init__(self, url: str, tag: str) -> None:
        self.url = url
        self.tag = tag

    def setup(self) -> None: ...
    def teardown(self) -> None: ...
    def worker_cmd(self, i: int) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "worker", self.name, "--url", self.url,
                "--tag", self.tag, "--index", str(i)]

    def worker_env(self, i: int) -> dict[str, str]:
        return dict(os.environ)

    def submit_noop(self, n: int) -> Any: ...
    def is_done(self, job: Any) -> bool: ...
    def processing_window(self, jobs: list[Any]) -> tuple[float, float]: ...
    def submit_ask(self, n: int) -> Any: ...
    def is_waiting(self, job: Any) -> bool: ...
    def resume(self, job: Any, client: int) -> None: ...
    def duplicates(self, job: Any) -> int: ...


class Ours(System):
    name = "jsonl-orchestrator"

    def setup(self) -> None:
        from orchestrator import Orchestrator
        from orchestrator.signing import new_seed
        from orchestrator.store.pg_schema import migrate
        from orchestrator.store.postgres import PostgresStore

        migrate(self.url)
        self.tmp = tempfile.TemporaryDirectory(prefix="orch-bench-")
        os.environ["ORCH_SIGNING_KEY"] = os.environ.get("ORCH_SIGNING_KEY") or new_seed()
        os.environ["ORCH_KEYRING_DIR"] = str(Path(self.tmp.name) / "keyring")
        self.project = f"bench{self.tag}"

        def orch(name: str) -> Any:
            base = Path(self.tmp.name) / name
            base.mkdir(exist_ok=True)
            return Orchestrator(base_path=base, project_id=self.project, store=PostgresStore(self.url, self.project))

        self.orch, self.reader = orch("submitter"), orch("reader")
        self.clients = [orch("client0"), orch("client1")]

    def teardown(self) -> None:
        for o in [self.orch, self.reader, *self.clients]:
            o.store.close()
        drop_project(self.url, self.project)
        self.tmp.cleanup()

    def worker_env(self, i: int) -> dict[str, str]:
        base = Path(self.tmp.name) / f"worker{i}"
        base.mkdir(exist_ok=True)
        return {**os.environ, "ORCH_STORE_URL": self.url, "PROJECT_ID": self.project, "BASE_PATH": str(base)}

    def submit_noop(self, n: int) -> str:
        return self.orch.submit("bench.noop", {"n": n})

    def _state(self, job: str) -> str | None:
        return self.reader.status(job).state

    def is_done(self, job: str) -> bool:
        return self._state(job) in ("succeeded", "failed")

    def processing_window(self, jobs: list[str]) -> tuple[float, float]:
        from orchestrator.clock import from_iso

        starts, ends = [], []
        for job in jobs:
            recs = [json.loads(s.raw) for s in self.reader.store.read(job)]
            starts += [from_iso(r["ts"]) for r in recs if r["type"] == "job_claimed"]
            ends += [from_iso(r["ts"]) for r in recs if r["type"] in ("job_succeeded", "job_failed")]
        return min(starts), max(ends)

    def submit_ask(self, n: int) -> str:
        return self.orch.submit("bench.ask", {"n": n})

    def is_waiting(self, job: str) -> bool:
        return self._state(job) == "waiting_human"

    def resume(self, job: str, client: int) -> None:
        from orchestrator.errors import OrchestratorError

        try:
            self.clients[client].resume(job, "yes")
        except OrchestratorError:
            pass  # refused (e.g. the other client's resume won the race): nothing was written

    def duplicates(self, job: str) -> int:
        claims = sum(1 for s in self.reader.store.read(job) if json.loads(s.raw)["type"] == "job_claimed")
        return max(0, claims - 2)  # one run before the answer, one after

    @staticmethod
    def run_worker(args: argparse.Namespace) -> None:
        from orchestrator.cli import main
        from orchestrator.handlers import handler

        @handler("bench.noop")
        def noop(ctx: Any) -> dict:
            return {"status": "done", "summary": "noop"}

        @handler("bench.ask")
        def ask(ctx: Any) -> dict:
            if ctx.answers:
                return {"status": "done", "summary": f"answered {ctx.answers[-1]}"}
            return {"status": "needs_human", "summary": "needs an answer", "question": "yes or no?"}

        print("READY", flush=True)
        main(["worker", "--worker-id", f"bench{args.index}-{os.getpid()}", "--lease-seconds", "30"])


class Procrastinate(System):
    name = "procrastinate"

    def app(self) -> Any:
        import procrastinate

        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=self.url))
        queue = f"bench{self.tag}"
        url = self.url

        @app.task(name="noop", queue=queue)
        def noop(n: int) -> None:
            return None

        @app.task(name="ask", queue=queue)
        def ask(key: str) -> None:
            import psycopg

            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("INSERT INTO bench_w3 (key, state) VALUES (%s, 'waiting') ON CONFLICT DO NOTHING", (key,))

        @app.task(name="answer", queue=queue)
        def answer(key: str, answer: str) -> None:
            import psycopg

            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("UPDATE bench_w3 SET state = 'done', runs = runs + 1 WHERE key = %s", (key,))

        app.bench_tasks = {"noop": noop, "ask": ask, "answer": answer}  # type: ignore[attr-defined]
        return app

    def setup(self) -> None:
        import psycopg

        self.conn = psycopg.connect(self.url, autocommit=True)
        self._app = self.app()
        self._app.open()
        self._clients = [self.app(), self.app()]
        for app in self._clients:
            app.open()
        if not self.conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0]:
            self._app.schema_manager.apply_schema()
        self.conn.execute("CREATE TABLE IF NOT EXISTS bench_w3 (key text PRIMARY KEY, state text, runs int DEFAULT 0)")
        self.lock = threading.Lock()

    def teardown(self) -> None:
        q = f"bench{self.tag}"
        self.conn.execute("DELETE FROM procrastinate_events WHERE job_id IN "
                          "(SELECT id FROM procrastinate_jobs WHERE queue_name = %s)", (q,))
        self.conn.execute("DELETE FROM procrastinate_jobs WHERE queue_name = %s", (q,))
        self.conn.execute("DELETE FROM bench_w3 WHERE key LIKE %s", (f"{self.tag}-%",))
        for app in [self._app, *self._clients]:
            app.close()
        self.conn.close()

    def submit_noop(self, n: int) -> int:
        with self.lock:
            return self._app.bench_tasks["noop"].defer(n=n)

    def is_done(self, job: int) -> bool:
        row = self.conn.execute("SELECT status FROM procrastinate_jobs WHERE id = %s", (job,)).fetchone()
        return bool(row) and row[0] in ("succeeded", "failed")

    def processing_window(self, jobs: list[int]) -> tuple[float, float]:
        row = self.conn.execute(
            "SELECT extract(epoch FROM min(at) FILTER (WHERE type = 'started')), "
            "extract(epoch FROM max(at) FILTER (WHERE type IN ('succeeded', 'failed'))) "
            "FROM procrastinate_events WHERE job_id = ANY(%s)", (jobs,)).fetchone()
        return float(row[0]), float(row[1])

    def submit_ask(self, n: int) -> str:
        key = f"{self.tag}-{n}"
        with self.lock:
            self._app.bench_tasks["ask"].defer(key=key)
        return key

    def _state(self, key: str) -> str | None:
        row = self.conn.execute("SELECT state FROM bench_w3 WHERE key = %s", (key,)).fetchone()
        return row[0] if row else None

    def is_waiting(self, key: str) -> bool:
        return self._state(key) == "waiting"

    def is_final(self, key: str) -> bool:
        return self._state(key) == "done"

    def resume(self, key: str, client: int) -> None:
        import procrastinate

        try:  # the queueing lock is Procrastinate's way to refuse a second copy of a waiting job
            task = self._clients[client].bench_tasks["answer"]
            task.configure(queueing_lock=f"answer-{key}").defer(key=key, answer="yes")
        except procrastinate.exceptions.AlreadyEnqueued:
            pass

    def duplicates(self, key: str) -> int:
        wait_for(lambda: not self.conn.execute(
            "SELECT 1 FROM procrastinate_jobs WHERE queue_name = %s AND status IN ('todo', 'doing') "
            "AND args->>'key' = %s", (f"bench{self.tag}", key)).fetchone(), what="the answer jobs to finish")
        return max(0, self.conn.execute("SELECT runs FROM bench_w3 WHERE key = %s", (key,)).fetchone()[0] - 1)

    def run_worker(self, args: argparse.Namespace) -> None:
        app = self.app()
        print("READY", flush=True)
        app.run_worker(queues=[f"bench{self.tag}"], concurrency=1, wait=True, name=f"w{args.index}")


class Dbos(System):
    name = "dbos"

    def setup(self) -> None:
        import psycopg

        # the system schema is created by a DBOS process (a client never migrates)
        subprocess.run(self.worker_cmd(-1), check=True, timeout=120, stdout=subprocess.DEVNULL)
        from dbos import DBOSClient

        self.conn = psycopg.connect(self.url, autocommit=True)
        self.clients = [DBOSClient(system_database_url=self.url) for _ in range(2)]
        self.queue = f"bench{self.tag}"

    def teardown(self) -> None:
        for c in self.clients:
            c.destroy()
        self.conn.execute("DELETE FROM dbos.workflow_status WHERE queue_name = %s", (self.queue,))
        self.conn.close()

    def submit_noop(self, n: int) -> str:
        return self.clients[0].enqueue({"workflow_name": "bench_noop", "queue_name": self.queue}, n).workflow_id

    def _status(self, wf: str) -> str | None:
        row = self.conn.execute("SELECT status FROM dbos.workflow_status WHERE workflow_uuid = %s", (wf,)).fetchone()
        return row[0] if row else None

    def is_done(self, wf: str) -> bool:
        return self._status(wf) in ("SUCCESS", "ERROR")

    def processing_window(self, jobs: list[str]) -> tuple[float, float]:
        row = self.conn.execute("SELECT min(started_at_epoch_ms), max(updated_at) FROM dbos.workflow_status "
                                "WHERE workflow_uuid = ANY(%s)", (jobs,)).fetchone()
        return row[0] / 1000, row[1] / 1000

    def submit_ask(self, n: int) -> str:
        return self.clients[0].enqueue({"workflow_name": "bench_ask", "queue_name": self.queue}, n).workflow_id

    def is_waiting(self, wf: str) -> bool:
        return bool(self.conn.execute("SELECT 1 FROM dbos.workflow_events WHERE workflow_uuid = %s AND key = 'waiting'",
                                      (wf,)).fetchone())

    def resume(self, wf: str, client: int) -> None:
        self.clients[client].send(wf, "yes", topic="answer", idempotency_key=f"{wf}-answer")

    def duplicates(self, wf: str) -> int:
        """Copies of the answer beyond the first (DBOS keeps consumed messages, flagged)."""
        return max(0, self.conn.execute("SELECT count(*) FROM dbos.notifications WHERE destination_uuid = %s",
                                        (wf,)).fetchone()[0] - 1)

    def run_worker(self, args: argparse.Namespace) -> None:
        from dbos import DBOS

        DBOS(config={"name": "orchbench", "system_database_url": self.url, "log_level": "WARNING"})

        @DBOS.workflow(name="bench_noop")
        def noop(n: int) -> int:
            return n

        @DBOS.workflow(name="bench_ask")
        def ask(n: int) -> str:
            DBOS.set_event("waiting", True)
            return str(DBOS.recv("answer", timeout_seconds=300))

        DBOS.launch()
        if args.index < 0:  # migrate only
            DBOS.destroy()
            return
        DBOS.register_queue(f"bench{self.tag}", worker_concurrency=1, polling_interval_sec=DBOS_POLL)
        print("READY", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()
        DBOS.destroy()


SYSTEMS: dict[str, type[System]] = {"ours": Ours, "procrastinate": Procrastinate, "dbos": Dbos}
PEER_MODULES = {"procrastinate": "procrastinate", "dbos": "dbos"}


# == workloads =====================================================================================
class Workers:
    """``n`` worker processes of one system; started ready (idle), stopped with SIGTERM."""

    def __init__(self, system: System, n: int) -> None:
        self.procs = [subprocess.Popen(system.worker_cmd(i), env=system.worker_env(i), cwd=str(REPO),
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                      for i in range(n)]
        for proc in self.procs:
            line = proc.stdout.readline() if proc.stdout else ""
            if "READY" not in line:
                raise RuntimeError(f"{system.name} worker did not start (exit {proc.poll()})")
            # keep reading what the worker prints, or it blocks once the pipe buffer is full
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # type: ignore[union-attr]
        time.sleep(1.0)  # let each worker finish starting (LISTEN, queue registration) after READY

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()


def w1(system: System, n_workers: int, jobs: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    ids = [system.submit_noop(i) for i in range(jobs)]
    enqueue_s = time.perf_counter() - t0
    pending = list(ids)

    def all_done() -> bool:  # jobs finish roughly in order: only the oldest unfinished one is read
        while pending and system.is_done(pending[0]):
            pending.pop(0)
        return not pending

    workers = Workers(system, n_workers)
    try:  # a gentle reader: W1 is timed from the systems' own records, not from this loop
        wait_for(all_done, timeout=max(120.0, jobs * 0.5), what="W1 jobs", interval=W1_POLL)
    finally:
        workers.stop()
    first, last = system.processing_window(ids)
    return {"jobs": jobs, "enqueue_per_s": round(jobs / enqueue_s, 1), "jobs_per_s": round(jobs / (last - first), 1)}


def w2(system: System, n_workers: int, samples: int) -> dict[str, Any]:
    workers = Workers(system, n_workers)
    ms = []
    try:
        warm = system.submit_noop(-1)  # not measured: the first job may meet a worker still starting
        wait_for(lambda: system.is_done(warm), timeout=60, what="W2 warm-up")
        for i in range(samples):
            t0 = time.perf_counter()
            job = system.submit_noop(i)
            wait_for(lambda: system.is_done(job), what="W2 terminal state")
            ms.append((time.perf_counter() - t0) * 1000)
    finally:
        workers.stop()
    return summary(ms)


def w3(system: System, n_workers: int, samples: int) -> dict[str, Any]:
    workers = Workers(system, n_workers)
    ms, dups = [], 0
    final = getattr(system, "is_final", system.is_done)
    try:
        warm = system.submit_noop(-1)
        wait_for(lambda: system.is_done(warm), timeout=60, what="W3 warm-up")
        for i in range(samples):
            job = system.submit_ask(i)
            wait_for(lambda: system.is_waiting(job), what="W3 waiting state")
            go = threading.Barrier(2)

            def deliver(client: int) -> None:
                go.wait()
                system.resume(job, client)

            other = threading.Thread(target=deliver, args=(1,))
            other.start()
            t0 = time.perf_counter()
            deliver(0)
            wait_for(lambda: final(job), what="W3 final state")
            ms.append((time.perf_counter() - t0) * 1000)
            other.join()
            dups += system.duplicates(job)
    finally:
        workers.stop()
    return {**summary(ms), "duplicate_executions": dups}


def run(args: argparse.Namespace) -> dict[str, Any]:
    ensure_database(args.url)
    results: dict[str, Any] = {"url_db": args.url.rsplit("/", 1)[-1], "w1_jobs": args.w1_jobs,
                               "w2_samples": args.w2_samples, "w3_samples": args.w3_samples,
                               "dbos_poll_s": DBOS_POLL, "reader_poll_s": POLL, "cpus": os.cpu_count(),
                               "loadavg_start": os.getloadavg(), "runs": [], "skipped": {}}
    for key in args.systems:
        if key in PEER_MODULES:
            try:
                __import__(PEER_MODULES[key])
            except ImportError:
                results["skipped"][key] = f"{key} is not installed (pip install 'jsonl-orchestrator[bench-pg]')"
                log(results["skipped"][key])
                continue
        for n in args.workers:
            row: dict[str, Any] = {"system": SYSTEMS[key].name, "workers": n}
            for name, fn, size in (("w1", w1, args.w1_jobs), ("w2", w2, args.w2_samples), ("w3", w3, args.w3_samples)):
                if name not in args.only:
                    continue
                system = SYSTEMS[key](args.url, uuid.uuid4().hex[:10])
                system.setup()
                log(f"{system.name}, {n} worker(s): {name}...")
                try:
                    row[name] = fn(system, n, size)
                except Exception as exc:  # noqa: BLE001 - report, keep measuring the others
                    row[name] = {"error": f"{type(exc).__name__}: {exc}"}
                    log(f"  failed: {row[name]['error']}")
                finally:
                    system.teardown()
                log(f"  {json.dumps(row[name])}")
            results["runs"].append(row)
    results["loadavg_end"] = os.getloadavg()
    return results


def table(results: dict[str, Any]) -> str:
    lines = ["| system | workers | W1 jobs/s | W1 enqueue/s | W2 p50 / p95 / p99 ms | W3 p50 / p95 / p99 ms | W3 duplicates |",
             "|---|---:|---:|---:|---|---|---:|"]

    def lat(d: dict[str, Any] | None) -> str:
        if not d:
            return "-"
        return d["error"][:40] if "error" in d else f"{d['p50']:.1f} / {d['p95']:.1f} / {d['p99']:.1f}"

    for r in results["runs"]:
        w1r = r.get("w1") or {}
        lines.append(f"| {r['system']} | {r['workers']} | {w1r.get('jobs_per_s', w1r.get('error', '-'))} | "
                     f"{w1r.get('enqueue_per_s', '-')} | {lat(r.get('w2'))} | {lat(r.get('w3'))} | "
                     f"{(r.get('w3') or {}).get('duplicate_executions', '-')} |")
    for key, why in results["skipped"].items():
        lines.append(f"\n{key}: skipped ({why})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        p = argparse.ArgumentParser(prog="postgres.py worker")
        p.add_argument("system", choices=[s.name for s in SYSTEMS.values()])
        p.add_argument("--url", required=True)
        p.add_argument("--tag", required=True)
        p.add_argument("--index", type=int, required=True)
        a = p.parse_args(argv[1:])
        cls = next(s for s in SYSTEMS.values() if s.name == a.system)
        cls(a.url, a.tag).run_worker(a)  # type: ignore[attr-defined]
        return 0
    from bench.cli_args import choices, positive_int, results_file, sizes

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=os.environ.get("ORCH_BENCH_PG_URL", DEFAULT_URL),
                   help="PostgreSQL database for every system (env ORCH_BENCH_PG_URL)")
    p.add_argument("--systems", default=list(SYSTEMS), type=choices(SYSTEMS, "system"),
                   help=f"comma list of {', '.join(SYSTEMS)} (default: all)")
    p.add_argument("--workers", default=[1, 2, 4], type=lambda s: list(sizes(s, "1,2,4")),
                   help="worker counts (default 1,2,4)")
    p.add_argument("--only", default=["w1", "w2", "w3"], type=choices(("w1", "w2", "w3"), "workload"))
    p.add_argument("--w1-jobs", type=positive_int, default=2000)
    p.add_argument("--w2-samples", type=positive_int, default=300)
    p.add_argument("--w3-samples", type=positive_int, default=200)
    p.add_argument("--json", type=Path, default=Path("bench-postgres.json"),
                   help="where to write the results (checked before the run, written whole at its end)")
    args = p.parse_args(argv)
    with results_file(p, args.json, "the results") as out:  # a run that fails or is stopped leaves it as it was
        results = run(args)
        out.write((json.dumps(results, indent=2) + "\n").encode())
    print(table(results))
    log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
