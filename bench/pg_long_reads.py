"""How long the longest reads of the PostgreSQL store take: the audit log (and the job ids), read
whole and in chunks.

    python bench/pg_long_reads.py --lines 200000 1000000 --jobs 1000000
    python bench/pg_long_reads.py --lines 200 400 --line-bytes 1048576

For each size, writes that many audit-sized lines (490 bytes, the size of a real entry; ``--line-bytes``
for others: lines over 4 KiB are random base64, which PostgreSQL can neither compress nor read without
detoasting, as a job's large input would be) straight into ``orch_events`` of a fresh project (reads do
not verify, so they need not be signed), then reports:

* ``one_statement_s``: one ``SELECT ... ORDER BY seq`` of the whole log, as the store read it before
  2026-12-01: one call, so one deadline (``ORCH_PG_DEADLINE_SECONDS``) for all of it;
* ``chunked_s``, ``chunks``, ``chunk_ms_p50`` / ``chunk_ms_max``: ``PostgresStore.read`` as it reads
  now, at most ``READ_CHUNK_ROWS`` lines (and, since 2026-12-01, about ``READ_CHUNK_BYTES`` bytes) per
  round trip, each round trip a call with its own deadline.

``--jobs``: the same for ``job_ids`` over that many streams (rows of ``orch_streams`` only).
The project's rows are deleted afterwards. ``--url`` (or ``ORCH_BENCH_PG_URL``) picks the database,
which must be migrated (``orchestrator db migrate``).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cli_args import positive_int  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
LINE_BYTES = 490


def _compare(url: str, table: str, fill: Any, whole_sql: str, size: int,
             read: Any) -> tuple[float, float, list[float]]:
    """Fill ``table`` for a fresh project (``fill``: SQL that takes the project and ``size``, or a function of
    the connection, the project and ``size``), time ``whole_sql`` as one statement and ``read(store)`` in
    chunks, clean up: (one statement s, chunked s, each chunk's s)."""
    from orchestrator.store import postgres

    project = f"bench{uuid.uuid4().hex[:12]}"
    admin = postgres.connect(url, autocommit=True)
    store = postgres.PostgresStore(url, project, deadline_seconds=None)
    try:
        if callable(fill):
            fill(admin, project, size)
        else:
            admin.execute(fill, (project, size))
        admin.execute(f"ANALYZE {table}")
        start = time.perf_counter()
        assert len(admin.execute(whole_sql, (project,)).fetchall()) == size
        one_statement = time.perf_counter() - start
        times = _timed_calls(store)
        start = time.perf_counter()
        assert len(read(store)) == size
        return one_statement, time.perf_counter() - start, times
    finally:
        admin.execute(f"DELETE FROM {table} WHERE project = %s", (project,))
        admin.close()
        store.close()


def measure(url: str, lines: int, line_bytes: int = LINE_BYTES) -> dict[str, Any]:
    """``lines`` audit lines of ``line_bytes`` each, read whole, as one statement and in chunks."""
    from orchestrator.store.base import AUDIT_STREAM

    def copied(conn: Any, project: str, size: int) -> None:  # lines too long for one statement's rpad
        with conn.cursor().copy("COPY orch_events (project, stream, seq, line) FROM STDIN") as copy:
            for n in range(1, size + 1):
                copy.write_row((project, AUDIT_STREAM, n, base64.b64encode(os.urandom(line_bytes * 3 // 4))))

    fill: Any = copied if line_bytes > 4096 else (
        "INSERT INTO orch_events (project, stream, seq, line) SELECT %s, '" + AUDIT_STREAM + "', n, "
        f"convert_to(rpad(n::text || ':', {line_bytes}, 'x'), 'UTF8') FROM generate_series(1, %s) AS n")
    whole = f"SELECT line FROM orch_events WHERE project = %s AND stream = '{AUDIT_STREAM}' ORDER BY seq"
    summary = _summary("lines", lines, *_compare(url, "orch_events", fill, whole, lines,
                                                 lambda store: store.read(AUDIT_STREAM)))
    return {"line_bytes": line_bytes, **summary}


def _timed_calls(store: Any) -> list[float]:
    """Time each ``_run`` of ``store`` (each chunk of a long read is one): the list fills as it runs."""
    times: list[float] = []
    run = store._run  # noqa: SLF001

    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return run(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - began)

    store._run = timed  # noqa: SLF001
    return times


def _summary(what: str, size: int, whole: float, chunked: float, times: list[float]) -> dict[str, Any]:
    from orchestrator.store import postgres

    return {what: size, "one_statement_s": round(whole, 2), "chunked_s": round(chunked, 2),
            "chunk_rows": postgres.READ_CHUNK_ROWS, "chunk_bytes": getattr(postgres, "READ_CHUNK_BYTES", None),
            "chunks": len(times),
            "chunk_ms_p50": round(statistics.median(times) * 1e3, 1), "chunk_ms_max": round(max(times) * 1e3, 1)}


def measure_job_ids(url: str, jobs: int) -> dict[str, Any]:
    """``job_ids`` over ``jobs`` streams of a fresh project, as one statement and in chunks."""
    from orchestrator.store.base import AUDIT_STREAM

    fill = ("INSERT INTO orch_streams (project, stream, seq, last_line) SELECT %s, "
            "'01J' || lpad(n::text, 23, '0'), 1, '' FROM generate_series(1, %s) AS n")
    whole = f"SELECT stream FROM orch_streams WHERE project = %s AND seq > 0 AND stream <> '{AUDIT_STREAM}'"
    return _summary("jobs", jobs, *_compare(url, "orch_streams", fill, whole, jobs,
                                            lambda store: list(store.job_ids())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("ORCH_BENCH_PG_URL", DEFAULT_URL))
    parser.add_argument("--lines", type=positive_int, nargs="*", default=[200_000])
    parser.add_argument("--line-bytes", type=positive_int, default=LINE_BYTES, help="bytes per audit line (490)")
    parser.add_argument("--jobs", type=positive_int, nargs="*", default=[])
    args = parser.parse_args(argv)
    for lines in args.lines:
        print(json.dumps(measure(args.url, lines, args.line_bytes)), flush=True)
    for jobs in args.jobs:
        print(json.dumps(measure_job_ids(args.url, jobs)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
