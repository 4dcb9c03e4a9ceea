"""``python -m bench`` where it met what an audit found: an environment set up for PostgreSQL, a stop signal in the
middle of a run, and ``--only`` with peers. Small sizes; numbers are never asserted."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO

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


def bench_processes(base: Path) -> list[int]:
    """Live processes started for a run over ``base``: a worker process of ours (``ORCH_BENCH_WORKER`` names the base
    path in its environment) or a scale script (``--base-path`` under it on its command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
            argv = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        if str(base).encode() in argv or any(v.startswith(b"ORCH_BENCH_WORKER=") and str(base).encode() in v
                                             for v in env.split(b"\0")):
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("sig, exit_code, workload", [
    (signal.SIGTERM, 143, "W1"),
    (signal.SIGTERM, 143, "scale"),
    (signal.SIGINT, 130, "W1"),
], ids=["sigterm-w1", "sigterm-scale", "sigint-w1"])
def test_a_suite_stopped_mid_run_removes_its_scratch_project_and_leaves_the_json_file_as_it_was(
        tmp_path: Path, cli_env, sig: signal.Signals, exit_code: int, workload: str) -> None:
    """SIGTERM ended the process where it was (exit 143 from the signal itself): the scratch project stayed (a full
    run's scale project holds 100k jobs) and so did a ``.r.json.<hex>.tmp`` beside ``--json``. Now it is stopped as
    ``bench_terminal_latency`` is (``command_stop.COMMAND_STOP``): the way out runs, exit 128 + the signal."""
    if sig == signal.SIGINT and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        pytest.skip("SIGINT is ignored by this process (a background job): its child would ignore it too")
    base, out = tmp_path / "b", tmp_path / "r.json"
    base.mkdir()
    out.write_text('{"earlier": true}\n')
    before = sorted(p.name for p in tmp_path.iterdir())
    size = ["--w1-jobs", "100000"] if workload == "W1" else ["--scale", "100000,200000"]
    proc = subprocess.Popen([sys.executable, "-m", "bench", "--peers", "none", "--only", workload, "--settle-max-s",
                             "0", "--base", str(base), "--json", str(out), *size], cwd=REPO, env=cli_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pattern = "*/bench/.orchestrator/queue/jobs/*.events.jsonl"

    try:
        deadline = time.monotonic() + 90
        while len(list(base.glob(pattern))) < 20:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        proc.send_signal(sig)
        stdout, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = bench_processes(base)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == exit_code, err[-3000:]
    assert err.splitlines()[-1].startswith(f"interrupted by {sig.name}: "), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert not left, f"processes left running: {left}"
    assert list(base.iterdir()) == [], list(base.rglob("*"))[:5]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file beside r.json
    assert json.loads(out.read_text()) == {"earlier": True}


PEERS = {"litequeue": "litequeue", "dbos": "dbos", "langgraph": "langgraph.checkpoint.sqlite"}


def test_only_runs_the_workloads_asked_for_of_every_peer_too(tmp_path: Path, cli_env) -> None:
    """``--peers dbos --only W1`` ran DBOS's W1, W2 and W3, and a queue's W2; DBOS's W4 was the peak over that whole
    run (said in the JSON, not in the table): it is now its worker's peak RSS right after W1, as W4 is defined."""
    missing = sorted(name for name, module in PEERS.items() if importlib.util.find_spec(module.split(".")[0]) is None)
    if missing:
        pytest.skip(f"peers not installed: {', '.join(missing)} (pip install -e '.[bench]')")
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "W1", "--peers", ",".join(PEERS),
                           "--base", str(tmp_path / "b"), "--json", str(out)], cwd=REPO, env=cli_env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    systems = json.loads(out.read_text())["systems"]
    for name in ("litequeue", "dbos"):
        peer = systems[name]
        assert set(peer) & {"W1", "W2", "W3", "W4"} == {"W1", "W4"}, (name, peer)
        assert peer["W1"]["jobs_per_s"] > 0 and peer["W4"]["rss_mb"] > 0, (name, peer)
    assert "note" not in systems["dbos"]["W4"]
    assert "W3" not in systems["langgraph"] and "na" in systems["langgraph"]["W1"]
    assert "langgraph W3" not in proc.stderr and "dbos W2" not in proc.stderr and "litequeue W2" not in proc.stderr
