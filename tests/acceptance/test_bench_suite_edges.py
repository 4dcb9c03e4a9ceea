"""``python -m bench`` where it met what an audit found: an environment set up for PostgreSQL, a stop signal in the
middle of a run, and ``--only`` with peers. Small sizes; numbers are never asserted."""
from __future__ import annotations

from pathlib import Path

import pytest

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/nowhere"


def test_the_suite_measures_files_where_the_environment_or_a_dotenv_names_a_postgresql_store(
        tmp_path: Path, cli_env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its worker processes ran on files (no ORCH_* reaches them) while the submitting side took ORCH_STORE_URL: W1,
    W3 and the scale's jobs went into that database's project ``bench``, signed with a scratch key deleted after
    (``verify`` failed for good there), and each workload failed. The URL is unreachable: anything sent there fails;
    a ``.env`` in the current folder names it too (the scale's ``status``, ``verify`` and ``metrics`` read one)."""
    from bench import ours, scale
    from bench.common import Params

    for name, value in cli_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ORCH_STORE_URL", UNREACHABLE)
    here = tmp_path / "here"
    here.mkdir()
    (here / ".env").write_text(f"ORCH_STORE_URL={UNREACHABLE}\n")
    monkeypatch.chdir(here)
    params = Params.quick(w1_jobs=3, w3_samples=1, w3_duplicate_trials=1, scale_sizes=(4, 8), scale_samples=2,
                          coldstart_runs=1, metrics_cold=False, base=tmp_path / "b")
    assert ours.w1_w4(params)["W1"]["jobs"] == 3
    assert ours.w3(params)["W3"]["n"] == 1
    measured = scale.run(params)
    assert set(measured["sizes"]) == {"4", "8"} and measured["verify"]["jobs"] == 8 + 2 * 2
    assert measured["coldstart"]["status_ms"] > 0 and measured["growth"]["to"] == 8
    assert not list((tmp_path / "b").iterdir())
