"""The benchmark's arguments are checked before anything is measured, and its results file is written whole.

A full suite runs ten minutes or more: a count that cannot be, a folder that cannot hold the scratch projects or a
results file that cannot be written is a usage error (exit 2) at once, and a run that fails or is stopped leaves an
earlier results file as it was.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import __main__ as suite
from bench import trace


@pytest.mark.parametrize("args, message", [
    (["--repeat", "0"], "argument --repeat: must be at least 1, not 0"),
    (["--w1-jobs", "-1"], "argument --w1-jobs: must be at least 1, not -1"),
    (["--w2-samples", "0"], "argument --w2-samples: must be at least 1, not 0"),
    (["--w3-samples", "2.5"], "argument --w3-samples: '2.5' is not a whole number"),
    (["--scale", "1000,0"], "argument --scale: must be at least 1, not 0"),
    (["--scale", ","], "argument --scale: give at least one (1000,10000,100000)"),
    (["--settle-max-s", "-1"], "argument --settle-max-s: must be a number of at least 0, not -1"),
    (["--settle-max-s", "inf"], "argument --settle-max-s: must be a number of at least 0, not inf"),
    (["--only", "W1,W9"], "argument --only: unknown workload(s) W9; choose from W1, W2"),
    (["--peers", "nosuch"], "argument --peers: unknown peer(s) nosuch; choose from huey-sqlite"),
    (["--peers", ","], "argument --peers: give at least one peer: huey-sqlite"),
    (["--only", ""], "argument --only: give at least one workload: W1, W2"),  # it ran the whole suite at full size
    (["--only", ","], "argument --only: give at least one workload: W1, W2"),
], ids=["repeat-0", "negative-jobs", "no-samples", "fraction", "a-size-0", "no-size", "negative-wait", "endless-wait",
        "unknown-workload", "unknown-peer", "no-peer", "only-empty", "only-no-workload"])
def test_a_value_the_suite_cannot_run_with_is_a_usage_error_before_anything_runs(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite, "run", lambda *a: pytest.fail("the suite ran"))
    with pytest.raises(SystemExit) as stopped:
        suite.main(args)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_a_results_file_that_cannot_be_written_is_refused_before_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite, "run", lambda *a: pytest.fail("the suite ran"))
    (tmp_path / "a-file").write_text("x")
    for path, why in ((tmp_path / "missing" / "out.json", f"there is no folder {tmp_path / 'missing'}"),
                      (tmp_path, "it is a folder"), (tmp_path / "a-file" / "out.json", "is a file, not a folder")):
        with pytest.raises(SystemExit) as stopped:
            suite.main(["--json", str(path)])
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert f"cannot write the results to {path}" in err and why in err
    with pytest.raises(SystemExit):
        suite.main(["--base", str(tmp_path / "a-file" / "b")])
    assert "--base" in capsys.readouterr().err and not (tmp_path / "missing").exists()


def test_the_results_file_is_written_whole_at_the_end_and_left_as_it_was_by_a_run_that_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bench.json"
    out.write_text('{"earlier": true}\n')

    def interrupted(args, json_file):  # noqa: ANN001, ANN202 - Ctrl-C in the middle of the run
        json_file.write(b'{"half')
        raise KeyboardInterrupt

    monkeypatch.setattr(suite, "_main", interrupted)
    with pytest.raises(KeyboardInterrupt):
        suite.main(["--json", str(out)])
    assert json.loads(out.read_text()) == {"earlier": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # no temporary file left

    def finished(args, json_file):  # noqa: ANN001, ANN202
        json_file.write(b'{"runs": 1}\n')
        return 0

    monkeypatch.setattr(suite, "_main", finished)
    assert suite.main(["--json", str(out)]) == 0
    assert json.loads(out.read_text()) == {"runs": 1}


@pytest.mark.parametrize("args, message", [
    (["--samples", "0"], "argument --samples: must be at least 1, not 0"),
    (["--pause-ms", "-2"], "argument --pause-ms: must be a number of at least 0, not -2"),
    (["--slowest", "1"], "--slowest must be a share of the samples"),
])
def test_the_trace_refuses_what_it_cannot_run_with_before_it_runs(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace, "run", lambda *a, **k: pytest.fail("the trace ran"))
    with pytest.raises(SystemExit) as stopped:
        trace.main(args)
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        trace.main(["--samples", "5", "--json", str(Path(__file__).parent)])
    assert "it is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("module, args, message", [
    ("bench.postgres", ["--systems", "ours,nope"], "argument --systems: unknown system(s) nope; choose from ours"),
    ("bench.postgres", ["--workers", "1,0"], "argument --workers: must be at least 1, not 0"),
    ("bench.postgres", ["--workers", ","], "argument --workers: give at least one (1,2,4)"),
    ("bench.postgres", ["--only", "w4"], "argument --only: unknown workload(s) w4"),
    ("bench.postgres", ["--json", "."], "cannot write the results to . (it is a folder)"),
    ("bench.syscalls", ["--jobs", "0"], "argument --jobs: must be at least 1, not 0"),
    ("bench.claim_pass", ["--running", "-1"], "argument --running: must be at least 0, not -1"),
    ("bench.pg_commits", ["--others", "x"], "argument --others: 'x' is not a whole number"),
    ("bench.skeleton", ["--samples", "0"], "argument --samples: must be at least 1, not 0"),
    ("bench.bench_metrics", ["--base-path", "/proc/no-bench-here", "--procs", "0"], "argument --procs: must be at least 1, not 0"),
    ("bench.store_latency", ["--samples", "-2"], "argument --samples: must be at least 1, not -2"),
    ("bench.pg_candidates", ["--queued", "100", "0"], "argument --queued: must be at least 1, not 0"),
    ("bench.pg_untrusted", ["--untrusted", "0"], "argument --untrusted: must be at least 1, not 0"),
    ("bench.pg_long_reads", ["--line-bytes", "x"], "argument --line-bytes: 'x' is not a whole number"),
    ("bench.large_jobs", ["--input-kb", "0"], "argument --input-kb: must be at least 1, not 0"),
    ("bench.large_jobs", ["--output-kb", "-1"], "argument --output-kb: must be at least 0, not -1"),
    ("bench.large_jobs", ["--input-kb", "1001"], "argument --input-kb: must be at most 1000"),
    ("bench.large_jobs", ["--json", "."], "cannot write the figures to . (it is a folder)"),
    ("bench.large_jobs", ["--output-shape", "xml"], "argument --output-shape: invalid choice: 'xml'"),
    ("bench.workers", ["--workers", "1,0"], "argument --workers: must be at least 1, not 0"),
    ("bench.workers", ["--workers", ","], "argument --workers: give at least one (1,2,4)"),
    ("bench.workers", ["--jobs", "0"], "argument --jobs: must be at least 1, not 0"),
    ("bench.workers", ["--one-at-a-time", "-1"], "argument --one-at-a-time: must be at least 0, not -1"),
    ("bench.workers", ["--json", "."], "cannot write the figures to . (it is a folder)"),
    ("bench.workers", ["--base-path", "/proc/no-bench-here"], "--base-path /proc/no-bench-here: cannot make the scratch "
     "folders there"),
])
def test_the_other_benchmarks_refuse_what_they_cannot_run_with_before_they_run(
        module: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(module).main(args)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_the_event_cost_script_refuses_a_count_of_events_that_cannot_be() -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_event_costs.py"
    done = subprocess.run([sys.executable, str(script), "--events", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "argument --events: must be at least 1, not 0" in done.stderr


@pytest.mark.parametrize("shape", ["text", "records"])
def test_the_large_jobs_handler_returns_about_the_size_asked_in_the_shape_asked(shape: str) -> None:
    """``bench.large_jobs``'s figures are per KB of output: the echo handler must return what was asked, as one text
    or as small objects."""
    from types import SimpleNamespace

    from bench.large_jobs import job_input
    from orchestrator.latency import RECORD, echo_handler
    from orchestrator.signing import canonical

    given = job_input(2, 50, shape)
    assert 1800 <= len(canonical(given["items"])) <= 2000  # ids shorter than RECORD's: within 10%
    output = echo_handler(SimpleNamespace(input=given))["output"]
    if shape == "text":
        assert output["pad"] == "x" * 50_000 and "items" not in output
    else:
        assert output["pad"] == "" and 45_000 <= len(canonical(output["items"])) <= 50_000
        assert {tuple(sorted(item)) for item in output["items"]} == {tuple(sorted(RECORD))}
        assert [item["id"] for item in output["items"]] == list(range(len(output["items"])))


def test_the_workers_benchmark_reports_a_job_run_twice_lost_or_claimed_again() -> None:
    """``bench.workers`` checks what concurrency could break before it reports a figure."""
    from bench.workers import problems

    fine = [("a", "succeeded", 1), ("b", "succeeded", 1)]
    assert problems(2, 2, ["a", "b"], fine) == []
    assert problems(2, 3, ["a", "b", "a"], fine)[0] == "1 job(s) run more than once: a"
    assert problems(2, 1, ["a"], fine) == ["1 runs reported, of 1 distinct jobs, for 2 jobs"]
    assert problems(2, 2, ["a", "b"], [("a", "succeeded", 1), ("b", "queued", 2)]) == [
        "job states {'succeeded': 1, 'queued': 1}, not 2 succeeded", "1 job(s) claimed more than once: b"]



@pytest.mark.parametrize("script, args, said", [
    ("bench_event_costs.py", ["--events", "abc", "--json"], "argument --events: 'abc' is not a whole number"),
    ("reliability_report.py", ["--only", "bogus", "--json"], "argument --only: invalid choice: 'bogus'"),
    ("reliability_report.py", ["--json", "--bogus"], "unrecognized arguments: --bogus"),
], ids=["event-costs-value", "reliability-choice", "reliability-unknown-option"])
def test_an_argparse_tools_usage_error_with_json_is_a_usage_error_object_on_stdout(
        script: str, args: list[str], said: str) -> None:
    """As every command's with ``--json`` (README, "Commands"): one JSON object on stdout, nothing on stderr, exit 2."""
    import json
    import subprocess
    import sys

    path = Path(__file__).resolve().parents[2] / "scripts" / script
    done = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (2, ""), done.stderr
    error = json.loads(done.stdout)
    assert error["error"] == "USAGE_ERROR" and said in error["message"], error


def test_an_argparse_tools_usage_error_without_json_is_argparses_text_on_stderr() -> None:
    import subprocess
    import sys

    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_event_costs.py"
    done = subprocess.run([sys.executable, str(path), "--events", "abc"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("usage: ") and "argument --events: 'abc' is not a whole number" in done.stderr
