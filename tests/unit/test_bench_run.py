"""What ``python -m bench`` keeps and how it exits when a workload fails or a peer is missing, with the workloads
replaced by stand-ins (the real ones run in tests/acceptance/test_bench_suite.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from bench import __main__ as suite
from bench import ours, peers_queues, scale

REPO = Path(__file__).resolve().parents[2]
STATS = {"p50": 1.0, "p95": 1.5, "p99": 2.5, "max": 3.0, "n": 15}


def failing(exc: BaseException) -> Callable[..., Any]:
    def run(*_: Any) -> Any:
        raise exc
    return run


@pytest.fixture(autouse=True)
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite, "settle", lambda *a: None)
    monkeypatch.setattr(ours, "w2_terminal", lambda params: {"W2": dict(STATS), "terminal": dict(STATS)})


def test_a_failed_workload_is_kept_in_the_json_beside_those_measured_and_the_run_exits_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: every cell of ours said ``error``, W2's too; the JSON kept the last failure only (``mine.update``
    replaced the first ``error``), the scale's failure was thrown away (``scale: null``), and the run exited 0."""
    monkeypatch.setattr(ours, "w1_w4", failing(RuntimeError("the worker ran 0 of 40 jobs")))
    monkeypatch.setattr(ours, "w3", failing(AttributeError("'PostgresStore' object has no attribute 'jobs_dir'")))
    monkeypatch.setattr(scale, "run", failing(AssertionError("generated 3 of 5")))
    out = tmp_path / "r.json"
    code = suite.main(["--quick", "--peers", "none", "--only", "W1,W2,W3,scale", "--json", str(out)])
    assert code == 1
    data = json.loads(out.read_text())
    mine = data["systems"]["ours"]
    assert mine["W1"] == mine["W4"] == {"error": "RuntimeError: the worker ran 0 of 40 jobs"}
    assert mine["W3"] == {"error": "AttributeError: 'PostgresStore' object has no attribute 'jobs_dir'"}
    assert mine["W2"] == STATS and mine["terminal"] == STATS
    assert data["scale"] == {"error": "AssertionError: generated 3 of 5"}
    table = capsys.readouterr().out
    assert "| W2 submit->visible P99 | ms | 2.50 |" in table and "| W1 throughput | jobs/s | error |" in table
    assert "- W2 P99 <= 3 ms: met" in table


def test_a_workload_that_failed_in_one_of_the_runs_is_an_error_in_their_medians(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def second_fails(params: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("W3: a delivery failed")
        return {"W3": {**STATS, "duplicates": 0}}

    monkeypatch.setattr(ours, "w3", second_fails)
    out = tmp_path / "r.json"
    assert suite.main(["--quick", "--peers", "none", "--only", "W2,W3", "--repeat", "2", "--json", str(out)]) == 1
    mine = json.loads(out.read_text())["systems"]["ours"]
    assert mine["W3"]["error"] == "RuntimeError: W3: a delivery failed" and mine["W2"] == STATS


def test_a_peer_not_installed_is_shown_n_a_and_is_no_failure_of_the_run(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(peers_queues, "available", lambda: [])
    assert suite.main(["--quick", "--peers", "litequeue", "--only", "W2"]) == 0
    table = capsys.readouterr().out
    assert "| W2 submit->visible P99 | ms | 2.50 | n/a |" in table
    assert "- litequeue: n/a: not installed (pip install -e '.[bench]')" in table


def test_the_help_gives_the_command_of_the_docs_numbers_and_what_a_missing_peer_shows(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Its example ran two scale sizes, where every suite of docs/release/ ran three (1k, 10k, 100k)."""
    with pytest.raises(SystemExit):
        suite.main(["--help"])
    text = capsys.readouterr().out
    (line,) = [line for line in text.splitlines() if "the numbers of docs/performance.md" in line]
    command = line.split("#")[0].strip()
    assert command == "python -m bench --repeat 3 --json bench.json"
    assert command in (REPO / "docs" / "performance.md").read_text(encoding="utf-8")
    assert "shown as n/a with the reason" in text
