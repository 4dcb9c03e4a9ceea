"""What one claim pass costs a worker while other workers' jobs run: stale recovery, then an empty claim.

    python bench/claim_pass.py --backend files --running 8
    python bench/claim_pass.py --backend postgres --running 8 --url postgresql://postgres@127.0.0.1:5432/orch_bench

Claims ``--running`` jobs, each by a worker of its own that never runs it (a lease of an hour: none expires),
then lets one more worker make claim passes (``Worker.run_once()``: stale recovery, then a claim that finds
nothing queued) for ``--seconds`` of the real clock, and reports per pass:

* ``pass_us_p50`` / ``pass_us_mean``: the whole pass; ``recover_us_p50`` / ``recover_us_mean``: its stale
  recovery alone (``Worker.recover_stale``), timed in the same passes;
* ``statements`` / ``round_trips`` per pass on PostgreSQL (counted in the client, as ``bench/pg_commits.py``
  counts them); ``passes``: how many were made.

The worker's lease is the default 30 s, so since 2026-12-02 its stale recovery lists the running index at most
once a second and reads none of the running jobs again before their hour is up (``recovery.StaleWatch``); before,
every pass listed the index and read every running job. The project (a temporary folder, or a project of its own
in ``--url``'s database, created if missing) is removed afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/orch_bench"


def main(argv: list[str] | None = None) -> int:
    from bench.cli_args import count, results_file, seconds

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=("files", "postgres"), default="files")
    p.add_argument("--url", default=os.environ.get("ORCH_BENCH_PG_URL", DEFAULT_URL))
    p.add_argument("--running", type=count, default=8, help="jobs left running by other workers (default 8)")
    p.add_argument("--seconds", type=seconds, default=6.0)
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file (checked first)")
    args = p.parse_args(argv)
    with results_file(p, args.json, "the figures") as json_file:
        return _measure(args, json_file)


def _measure(args: argparse.Namespace, json_file: Any) -> int:
    counts = None
    if args.backend == "postgres":
        from bench.pg_commits import COUNTS, instrument
        from bench.postgres import ensure_database

        ensure_database(args.url)
        instrument()
        counts = COUNTS
    from orchestrator import Orchestrator
    from orchestrator.handlers import handler
    from orchestrator.signing import new_seed

    @handler("bench.noop")
    def noop(ctx: Any) -> dict:
        return {"status": "done", "summary": "noop"}

    tmp = tempfile.TemporaryDirectory(prefix="orch-claim-pass-")
    os.environ["ORCH_SIGNING_KEY"] = os.environ.get("ORCH_SIGNING_KEY") or new_seed()
    os.environ["ORCH_KEYRING_DIR"] = str(Path(tmp.name) / "keyring")
    project = f"claimpass{uuid.uuid4().hex[:10]}"
    store = None
    if args.backend == "postgres":
        from orchestrator.store.pg_schema import migrate
        from orchestrator.store.postgres import PostgresStore

        migrate(args.url)
        store = PostgresStore(args.url, project)
    orch = Orchestrator(base_path=tmp.name, project_id=project, store=store)
    for i in range(args.running):
        orch.submit("bench.noop", {"n": i})
        claim = orch.worker(worker_id=f"busy{i}", lease_seconds=3600).claim()
        assert claim is not None
    worker = orch.worker(worker_id="passes")
    for _ in range(20):  # warm up: connections, prepared statements, the first (full) recovery
        assert worker.run_once() is None
    pass_us, recover_us = [], []
    real_recover = worker.recover_stale

    def timed_recover(now: float | None = None) -> list[str]:
        t0 = time.perf_counter()
        try:
            return real_recover(now)
        finally:
            recover_us.append((time.perf_counter() - t0) * 1e6)

    worker.recover_stale = timed_recover  # type: ignore[method-assign]
    c0 = dict(counts.__dict__) if counts else {}
    end = time.perf_counter() + args.seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        assert worker.run_once() is None
        pass_us.append((time.perf_counter() - t0) * 1e6)
    n = len(pass_us)
    out: dict[str, Any] = {"backend": args.backend, "running": args.running, "passes": n,
                           "loadavg": [round(x, 2) for x in os.getloadavg()],
                           "pass_us_p50": round(statistics.median(pass_us), 1),
                           "pass_us_mean": round(statistics.fmean(pass_us), 1),
                           "recover_us_p50": round(statistics.median(recover_us), 1),
                           "recover_us_mean": round(statistics.fmean(recover_us), 1)}
    if counts:
        out["statements"] = round((counts.statements - c0["statements"]) / n, 3)
        out["round_trips"] = round((counts.round_trips - c0["round_trips"]) / n, 3)
    worker.close()
    if args.backend == "postgres":
        from bench.postgres import drop_project

        orch.store.close()
        drop_project(args.url, project)
    tmp.cleanup()
    print(json.dumps(out))
    if json_file is not None:
        json_file.write(json.dumps(out, indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
