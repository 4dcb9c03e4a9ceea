"""How long ``worker --once`` takes on PostgreSQL to reach a runnable job behind jobs signed by a key it does not trust.

    python bench/pg_untrusted.py --untrusted 4000 10000 --repeat 5 --url postgresql://postgres@127.0.0.1:5432/orch_bench

For each count, a fresh project gets that many due ``command`` jobs signed by a throwaway key the worker does not
trust (another machine's, whose ``.pub`` this one lacks), then, ``--repeat`` times, one job signed by the worker's own
key, queued behind them (same priority, later), and a ``worker --once`` process that must run it (exit 0, outcome
``succeeded``); then another such job, run by what that process does once started: a new store and ``Worker`` in
this process, and its ``run_once()``. Reports each process's wall time (``once_s``: its start-up included, ~1 s of
imports on the machine measured) and each ``run_once`` (``pass_s``), and their medians. Until 2026-12-07
(twenty-eighth session) the worker read every one of those jobs to learn that it could not check it; it now reads a
page of them, learns the key, and its next page leaves every row of that key out (migration 0008,
``orch_ready.signer``). ``--queued-again``: the jobs ahead are the worker's own, submitted under its key, each claimed
and handed back (``job_released``) by the other machine, so their first line is under a key it trusts and their
later ones are not; until branch fix-pgkeys (2026-12-07) their rows named the first line's key only, and the worker
read each (migration 0009, ``orch_ready.signers``). The project's rows are deleted afterwards. ``--url`` (or
``ORCH_BENCH_PG_URL``) picks the database, migrated here.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cli_args import positive_int  # noqa: E402
from bench.postgres import DEFAULT_URL, drop_project  # noqa: E402
DONE = ["sh", "-c", 'printf \'{"status": "done", "summary": "ok"}\' > "$ORCH_TERMINAL_FILE"']  # the job behind them


def measure(url: str, untrusted: int, repeat: int, folder: Path, queued_again: bool = False) -> dict[str, Any]:
    """Submit the jobs, then time ``repeat`` runs of ``worker --once`` (seconds, each)."""
    from orchestrator import Orchestrator
    from orchestrator.signing import Keyring, new_seed
    from orchestrator.store.postgres import PostgresStore

    project = f"bench-untrusted-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "ORCH_STORE_URL": url, "PROJECT_ID": project, "BASE_PATH": str(folder),
           "ORCH_SIGNING_KEY": new_seed(), "ORCH_KEYRING_DIR": str(folder / "keyring"), "PYTHONPATH": str(REPO)}
    other = Orchestrator(base_path=folder, project_id=project, keyring=Keyring.generate(),
                         store=PostgresStore(url, project))
    mine = None
    try:
        os.environ.update({k: env[k] for k in ("ORCH_SIGNING_KEY", "ORCH_KEYRING_DIR")})
        mine = Orchestrator(base_path=folder, project_id=project, store=PostgresStore(url, project))
        if queued_again:
            _submit_and_hand_back(mine, other, untrusted)
        else:
            for i in range(untrusted):
                other.submit("command", {"argv": ["true", str(i)]})
        once, passes = [], []
        for _ in range(repeat):
            once.append(_run_one_behind(mine, env))
            passes.append(_pass_to_one_behind(mine, url, project, folder))
        return {"untrusted": untrusted, "queued_again": queued_again, "once_s": [round(s, 3) for s in once],
                "once_median_s": round(statistics.median(once), 3), "pass_s": [round(s, 3) for s in passes],
                "pass_median_s": round(statistics.median(passes), 3)}
    finally:
        for orch in (other, mine):
            if orch is not None:
                orch.close()
        drop_project(url, project)


def _submit_and_hand_back(mine: Any, other: Any, count: int) -> None:
    """``count`` jobs submitted under the worker's key, each claimed and released by the other machine (which trusts
    that key): queued again, their later lines under a key the worker does not trust."""
    mine.keyring.ensure_signer()
    other.keyring.trusted.update(mine.keyring.trusted)
    for i in range(count):
        job = mine.submit("command", {"argv": ["true", str(i)]})
        view = other.load(job)
        other.append(view, job, [("job_claimed", {"worker_id": "other", "epoch": 1, "attempt": 1,
                                                  "lease_expires_at": "2100-01-01T00:00:00Z"}),
                                 ("job_released", {"worker_id": "other"})], run_id="run-bench")


def _run_one_behind(mine: Any, env: dict[str, str]) -> float:
    """Queue one job the worker can run and time the ``worker --once`` process that runs it."""
    job = mine.submit("command", {"argv": DONE})
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "worker", "--once", "--json"], env=env,
                          cwd=str(REPO), capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines()
    ran = json.loads(lines[-1]) if lines else {}
    if proc.returncode != 0 or ran.get("job_id") != job or ran.get("outcome") != "succeeded":
        raise SystemExit(f"worker --once did not run the job behind them (exit {proc.returncode}): "
                         f"{proc.stdout[-500:]} {proc.stderr[-500:]}")
    return took


def _pass_to_one_behind(mine: Any, url: str, project: str, folder: Path) -> float:
    """Queue one job the worker can run and time a new worker's ``run_once`` that runs it (what ``worker --once`` does
    once started: its store opened, nothing remembered)."""
    from orchestrator import Orchestrator
    from orchestrator.store.postgres import PostgresStore
    from orchestrator.worker import Worker, WorkerSettings

    job = mine.submit("command", {"argv": DONE})
    t0 = time.perf_counter()
    with Orchestrator(base_path=folder, project_id=project, store=PostgresStore(url, project)) as orch:
        ran = Worker(orch, WorkerSettings(worker_id="bench")).run_once()
        took = time.perf_counter() - t0
    if ran is None or ran.job_id != job or ran.outcome != "succeeded":
        raise SystemExit(f"run_once did not run the job behind them: {ran}")
    return took


def main(argv: list[str] | None = None) -> None:
    from bench.postgres import ensure_database
    from orchestrator.store.pg_schema import migrate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("ORCH_BENCH_PG_URL", DEFAULT_URL))
    p.add_argument("--untrusted", type=positive_int, nargs="+", default=[4000, 10_000],
                   help="jobs signed by a key the worker does not trust, queued ahead (default 4000 10000)")
    p.add_argument("--repeat", type=positive_int, default=5, help="worker --once runs per count (default 5)")
    p.add_argument("--queued-again", action="store_true",
                   help="the jobs ahead submitted under the worker's key, handed back by the other machine")
    args = p.parse_args(argv)
    logging.getLogger("orchestrator").setLevel(logging.ERROR)  # the in-process worker's warning of the key, each run
    ensure_database(args.url)
    migrate(args.url)
    for untrusted in args.untrusted:
        with tempfile.TemporaryDirectory(prefix="orch-bench-untrusted-") as folder:
            print(json.dumps(measure(args.url, untrusted, args.repeat, Path(folder), args.queued_again)), flush=True)


if __name__ == "__main__":
    main()
