"""Append and status latency: the file backend against PostgreSQL, same jobs, same machine.

    python bench/store_latency.py --samples 500 --pg postgresql://postgres@127.0.0.1:5432/test

For each backend: ``submit`` (one signed append + its head record), ``append`` (one more event
on an existing job, read-decide-write as a worker does), and ``status`` (read, verify and
replay one job) are timed ``--samples`` times; prints p50/p95/p99 in milliseconds as a
Markdown table (and JSON with ``--json``). Then the file project (``--samples`` jobs of two
events) is moved into PostgreSQL and back with export/import, timed. The PostgreSQL
projects are deleted afterwards.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cli_args import positive_int  # noqa: E402
from orchestrator import Orchestrator  # noqa: E402
from orchestrator.signing import Keyring  # noqa: E402


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def timed(fn: Callable[[], Any], samples: int) -> dict[str, float]:
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return {"p50": statistics.median(out), "p95": pct(out, 95), "p99": pct(out, 99), "mean": statistics.fmean(out)}


def run(orch: Orchestrator, samples: int) -> dict[str, dict[str, float]]:
    ids: list[str] = []
    res = {"submit": timed(lambda: ids.append(orch.submit("echo", {"n": len(ids)})), samples)}
    it = iter(ids)

    def append_one() -> None:
        job_id = next(it)
        orch.append(orch.load(job_id), job_id, [("job_cancelled", {"reason": "bench"})])

    res["append"] = timed(append_one, samples)
    it2 = iter(ids)
    res["status"] = timed(lambda: orch.status(next(it2)), samples)
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=positive_int, default=300)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    keyring = Keyring.generate()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["file"] = run(Orchestrator(base_path=tmp, project_id="bench", store_url="file", keyring=keyring), args.samples)
        from orchestrator.store.pg_schema import migrate
        from orchestrator.store.postgres import PostgresStore, connect
        from orchestrator.transfer import export_project, import_project

        migrate(args.pg)
        project = f"bench{uuid.uuid4().hex[:12]}"
        store = PostgresStore(args.pg, project)
        moved = PostgresStore(args.pg, "bench")
        try:
            results["postgres"] = run(Orchestrator(base_path=tmp, project_id=project, keyring=keyring, store=store),
                                      args.samples)
            src = Orchestrator(base_path=tmp, project_id="bench", store_url="file", keyring=keyring)
            dst = Orchestrator(base_path=tmp, project_id="bench", keyring=keyring, store=moved)
            bundle = Path(tmp) / "bench.bundle"
            t0 = time.perf_counter()
            with open(bundle, "wb") as fh:
                export_project(src, fh)
            t1 = time.perf_counter()
            with open(bundle, "rb") as fh:
                n = import_project(dst, fh)
            t2 = time.perf_counter()
            back = Orchestrator(base_path=Path(tmp) / "back", project_id="bench", store_url="file",
                                  keyring=keyring)
            with open(bundle, "wb") as fh:
                export_project(dst, fh)
            t3 = time.perf_counter()
            with open(bundle, "rb") as fh:
                import_project(back, fh)
            t4 = time.perf_counter()
            results["transfer"] = {"streams": n["streams"], "events": n["events"], "export_file_s": t1 - t0,
                                   "import_pg_s": t2 - t1, "export_pg_s": t3 - t2, "import_file_s": t4 - t3}
        finally:
            store.close()
            moved.close()
            conn = connect(args.pg, autocommit=True)
            for table in ("orch_events", "orch_streams", "orch_aux"):
                conn.execute(f"DELETE FROM {table} WHERE project = ANY(%s)", ([project, "bench"],))
            conn.close()
    if args.json:
        print(json.dumps({"samples": args.samples, "results": results}))
        return
    print(f"samples per operation: {args.samples}\n")
    print("| operation | backend | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---:|---:|---:|")
    for op in ("submit", "append", "status"):
        for backend in ("file", "postgres"):
            r = results[backend][op]
            print(f"| {op} | {backend} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} |")
    t = results["transfer"]
    print(f"\nmoving {t['streams']} streams / {t['events']} events (export + import, verified on both ends):")
    print(f"file -> bundle {t['export_file_s']:.2f}s, bundle -> postgres {t['import_pg_s']:.2f}s, "
          f"postgres -> bundle {t['export_pg_s']:.2f}s, bundle -> file {t['import_file_s']:.2f}s")


if __name__ == "__main__":
    main()
