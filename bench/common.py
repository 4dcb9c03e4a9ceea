"""What every workload shares: results, statistics, scratch folders and durable SQLite settings."""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator.latency import code_revision, percentile, summarize  # one definition of each for every system
from orchestrator.terminal_bench import Settings as _GateSettings

# untimed rounds before the timed samples of every latency workload, every system alike (the first rounds pay
# imports, a first fork, first writes): as many as the gate's benchmark, which gives ours W2 and terminal latency
WARMUP: int = _GateSettings.warmup
# the workloads a peer can be asked for (``--only``; the others are ours alone)
ALL_WORKLOADS: frozenset[str] = frozenset(("W1", "W2", "W3", "W4"))
# W3's counts of what a double delivery did beyond one run (``ours.duplicates_of``; a peer reports ``duplicates``)
DUPLICATE_COUNTS = ("duplicates", "extra_runs", "extra_claims", "reruns_pending", "extra_resume_events")

__all__ = ["ALL_WORKLOADS", "DUPLICATE_COUNTS", "WARMUP", "NotApplicable", "Params", "code_revision", "percentile",
           "summarize", "progress", "scratch_dir", "settle", "sqlite_full"]


class NotApplicable(Exception):
    """A system cannot run a workload; shown in the table as n/a, the message (the reason) under notes."""


@dataclass
class Params:
    """Sizes of one run. ``quick()`` is the smoke version the test suite runs."""

    w1_jobs: int = 2000
    w2_samples: int = 300
    w3_samples: int = 200
    w3_duplicate_trials: int = 20
    terminal_samples: int = 300
    scale_sizes: tuple[int, ...] = (1000, 10000, 100000)
    scale_samples: int = 100
    metrics_cold: bool = True  # --skip-cold-metrics: the rebuild replays every job (minutes at 100k)
    coldstart_runs: int = 7
    peers: tuple[str, ...] = ()
    base: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))
    quiet_create_us: float = 300.0  # settle: an empty file's creation at or under this is the disk's usual state
    settle_max_s: float = 180.0  # settle: the longest wait for it
    settle_log: list[dict[str, Any]] = field(default_factory=list)  # what every settle saw (the JSON keeps it)

    @classmethod
    def quick(cls, **over: Any) -> "Params":
        return cls(**{**dict(w1_jobs=40, w2_samples=15, w3_samples=10, w3_duplicate_trials=3, terminal_samples=15,
                             scale_sizes=(50, 200), scale_samples=5, coldstart_runs=2,
                             settle_max_s=0.0), **over})


def create_p50_us(folder: Path, n: int = 10, gap_s: float = 0.02) -> float:
    """The median time to create an empty file in ``folder``, ``n`` creations ``gap_s`` apart."""
    import time

    times = []
    for i in range(n):
        path = folder / f"probe-{i}"
        t0 = time.perf_counter()
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        times.append((time.perf_counter() - t0) * 1e6)
        os.unlink(path)
        time.sleep(gap_s)
    return sorted(times)[n // 2]


def settle(params: Params, before: str) -> None:
    """Before a timed workload: flush what earlier ones left, then wait (at most ``settle_max_s``) until
    creating a file costs what it usually does on this disk, so no system is measured while another's
    writes drain. On this VM an empty file's creation sometimes costs 0.3-1.4 ms instead of 10-150 us
    for minutes at a time (``docs/performance.md``); this format creates files per job, SQLite peers do
    not. What each settle saw goes to ``params.settle_log`` (and the JSON)."""
    import time

    os.sync()
    time.sleep(0.5)
    folder = scratch_dir(params, "settle")
    try:
        t0 = time.monotonic()
        first = last = create_p50_us(folder)
        while last > params.quiet_create_us and time.monotonic() - t0 < params.settle_max_s:
            time.sleep(1.0)
            last = create_p50_us(folder)
        waited = time.monotonic() - t0
    finally:
        for leftover in folder.iterdir():
            leftover.unlink()
        folder.rmdir()
    entry = {"before": before, "create_p50_us": round(first, 1), "create_p50_us_after": round(last, 1),
             "waited_s": round(waited, 1), "quiet": last <= params.quiet_create_us}
    params.settle_log.append(entry)
    if first > params.quiet_create_us:
        progress(f"settle before {before}: creating a file took {first:.0f} us; waited {waited:.0f} s, "
                 f"now {last:.0f} us" + ("" if entry["quiet"] else " (still slow: measured anyway)"))


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def scratch_dir(params: Params, name: str) -> Path:
    """A fresh folder on the disk being measured (``--base``), removed by the caller."""
    params.base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=params.base))


def sqlite_full(conn: Any) -> Any:
    """Full durability for a peer's SQLite connection: every commit is fsynced (``synchronous=FULL``)."""
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def ratio(ours: float | None, peer: float | None, higher_is_better: bool) -> float | None:
    """How many times better ours is (> 1: ours ahead)."""
    if ours is None or peer is None or ours <= 0 or peer <= 0:
        return None
    return ours / peer if higher_is_better else peer / ours


def timed_poll(check: Callable[[], bool], timeout: float = 30.0, pause: float = 0.0002) -> None:
    """Poll ``check`` (SQLite peers have no change notification) with a 0.2 ms pause."""
    import time

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the peer did not finish in time")
        time.sleep(pause)


def default_signals() -> None:
    """In a process forked to help a workload (a pool's): SIGTERM ends it as by default, SIGINT (a Ctrl-C meant for
    the benchmark) is left to the benchmark, which ends it. The handlers the benchmark installed
    (``command_stop.COMMAND_STOP``) would raise where it is, with a traceback, instead."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def env_without_orch() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
