"""What every workload shares: results, statistics, scratch folders and durable SQLite settings."""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator.latency import percentile, summarize  # one definition of percentiles for every system

__all__ = ["NotApplicable", "Params", "percentile", "summarize", "progress", "scratch_dir", "settle", "sqlite_full"]


class NotApplicable(Exception):
    """A system cannot run a workload; the message (the reason) is shown in the table as n/a."""


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

    @classmethod
    def quick(cls, **over: Any) -> "Params":
        return cls(**{**dict(w1_jobs=40, w2_samples=15, w3_samples=10, w3_duplicate_trials=3, terminal_samples=15,
                             scale_sizes=(50, 200), scale_samples=5, coldstart_runs=2), **over})


def settle() -> None:
    """Before a timed workload: flush what earlier ones left (deleted scratch folders are discarded by
    the disk at the next journal commit), so no system is measured while another one's writes drain."""
    import time

    os.sync()
    time.sleep(0.5)


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


def env_without_orch() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
