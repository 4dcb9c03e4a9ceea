"""How long the PostgreSQL claim statement (``PgQueueIndex.candidates``) takes with a backlog.

    python bench/pg_candidates.py --queued 2000 100000 --repeat 30

For each size, writes that many ready rows into a fresh project (a fifth of them of the kind ``mine``, the
rest ``other``; every one due, queued at once as a submit's row is) straight into ``orch_ready``, then times
``candidates`` as a worker of any kind and as one of ``--kind mine``: the median of ``--repeat`` calls, each at a
later ``now`` so that the previous call's reservation has lapsed. Before migration 0005 the statement's look-ups
that are not in claim order (the next job to come due, the reservation that lapses first) read every queued row of
the project. The project's rows are deleted afterwards. ``--url`` (or ``ORCH_BENCH_PG_URL``) picks the database,
migrated here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cli_args import positive_int  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def measure(url: str, queued: int, repeat: int) -> dict[str, float]:
    from bench.postgres import drop_project
    from orchestrator.store.pg_queue import PgQueueIndex
    from orchestrator.store.postgres import PostgresStore, connect

    project = f"bench-cand-{uuid.uuid4().hex[:8]}"
    conn = connect(url, autocommit=True)
    store = PostgresStore(url, project)
    try:
        conn.execute("INSERT INTO orch_ready (project, job_id, priority, runnable_at_us, kind, at_once) "
                     "SELECT %s, 'J' || g, 0, g, CASE WHEN g %% 5 = 0 THEN 'mine' ELSE 'other' END, true "
                     "FROM generate_series(1, %s) g", (project, queued))
        conn.execute("ANALYZE orch_ready")
        index = PgQueueIndex(store)
        out = {}
        for label, kinds in (("any_kind_ms", ()), ("kind_mine_ms", ("mine",))):
            times = []
            for i in range(repeat):
                now = (queued + 10) / 1e6 + 3.0 * (i + 1)  # after every row's time, each reservation lapsed
                t0 = time.perf_counter()
                index.candidates(now, kinds=kinds)
                times.append(time.perf_counter() - t0)
            out[label] = round(statistics.median(times) * 1e3, 3)
        return out
    finally:
        store.close()
        conn.close()
        drop_project(url, project)


def main(argv: list[str] | None = None) -> None:
    from orchestrator.store.pg_schema import migrate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("ORCH_BENCH_PG_URL", DEFAULT_URL))
    p.add_argument("--queued", type=positive_int, nargs="+", default=[2000, 100_000])
    p.add_argument("--repeat", type=positive_int, default=30)
    args = p.parse_args(argv)
    migrate(args.url)
    for queued in args.queued:
        print(json.dumps({"queued": queued, **measure(args.url, queued, args.repeat)}), flush=True)


if __name__ == "__main__":
    main()
