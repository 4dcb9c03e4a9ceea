"""The development benchmarks of ``bench/`` measure the file backend whatever ``ORCH_STORE_URL`` says, in the
environment or in a ``.env`` (docs/performance.md), as ``python -m bench`` does: pointed at a database they would
write their jobs there, or fail, and report nothing about files."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

NOWHERE = "postgresql://nobody@127.0.0.1:1/nowhere"  # refuses every connection: any use of it fails the test


@pytest.fixture
def store_url_elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("ORCH_STORE_URL", NOWHERE)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"ORCH_STORE_URL={NOWHERE}\n")
    return tmp_path


def test_step_cost_times_the_file_backend(store_url_elsewhere: Path) -> None:
    from bench import step_cost

    spent = step_cost.run(2)

    assert set(spent) == set(step_cost.STEPS) and all(ms > 0 for ms in spent.values())


def test_syscalls_traces_the_file_backend(store_url_elsewhere: Path) -> None:
    from bench import syscalls

    log = store_url_elsewhere / "inodes.json"
    syscalls.run(1, log)

    assert {row["step"] for row in json.loads(log.read_text())} >= {"W2 submit", "W3 resume"}


def test_trace_traces_the_file_backend(store_url_elsewhere: Path) -> None:
    from bench import trace

    samples = trace.run(2, warmup=0, settle_max_s=0)

    assert len(samples) == 2


def test_bench_metrics_makes_and_measures_a_file_project(store_url_elsewhere: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import bench_metrics
    from orchestrator.signing import new_seed

    base = store_url_elsewhere / "project"
    monkeypatch.setenv("ORCH_SIGNING_KEY", new_seed())
    monkeypatch.setenv("ORCH_KEYRING_DIR", str(store_url_elsewhere / "keys"))

    assert bench_metrics._worker((str(base), 0, 7, False)) == 7
    metrics = json.loads(bench_metrics.metrics_process(str(base), "--json").stdout)

    assert metrics["jobs"] == 7 and metrics["integrity_errors"] == 0
    assert os.environ["ORCH_STORE_URL"] == NOWHERE  # what the caller had, left as it was
