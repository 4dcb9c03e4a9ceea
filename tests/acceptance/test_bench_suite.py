"""The benchmark suite and the gate's latency benchmark keep working (small N, ours only, no peers).

Numbers are never asserted here (the machine is shared and noisy); what is checked is that every
workload is measured and reported, in the table and in the JSON, so the benchmarks cannot rot.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, wait_until
from orchestrator import terminal_bench as tb

WORKLOAD_ROWS = ("W1 throughput", "W2 submit->visible P99", "W3 resume->visible P99", "W3 duplicate executions",
                 "W4 worker peak RSS", "W4 with its handler process")


def test_the_quick_suite_prints_the_table_and_writes_json_with_every_workload(tmp_path: Path, cli_env) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--peers", "none", "--base", str(tmp_path / "b"),
                           "--json", str(out)], cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in WORKLOAD_ROWS:
        assert f"| {row} |" in proc.stdout
    for line in ("terminal latency (handler return -> durable + visible)", "finished jobs: claim P50", "metrics on",
                 "verify:", "status cold start:", "physical floors", "floor of the W2 / W3 paths", "targets:",
                 "with group commit (not built", "ours W1: "):
        assert line in proc.stdout
    assert "[bench]" in proc.stderr  # progress goes to stderr, not into the table
    data = json.loads(out.read_text())
    ours = data["systems"]["ours"]
    assert ours["W1"]["jobs"] == 40 and ours["W1"]["jobs_per_s"] > 0
    assert ours["W2"]["n"] == 15 and ours["W3"]["n"] == 10 and ours["W3"]["duplicates"] == 0
    assert ours["W4"]["rss_mb"] > 0 and ours["terminal"]["n"] == 15
    assert all(data["floor"][k]["p50_us"] > 0 for k in ("fdatasync_pair_one_after_other", "fdatasync_pair_at_once"))
    assert ours["W4"]["with_handler_mb"] > ours["W4"]["rss_mb"]  # the handler process's own pages count too
    assert all(ours["W3"][k] == 0 for k in ("extra_runs", "extra_claims", "reruns_pending", "extra_resume_events"))
    verified = data["scale"]["verify"]  # as verify counted them: 3 events for every job, probes included
    assert verified["jobs"] == 200 + 2 * 5 and verified["events"] == 3 * verified["jobs"]
    assert set(data["scale"]["sizes"]) == {"50", "200"}
    assert data["skeleton"]["W2"]["n"] == 15 and data["skeleton"]["W3"]["n"] == 10  # the paths' floor, same sizes
    assert data["scale"]["coldstart"]["status_ms"] > 0 and data["scale"]["verify"]["events_per_s"] > 0
    assert {t["target"] for t in data["targets"]} >= {"terminal latency P99 <= 2 ms", "worker RSS <= 40 MB"}
    assert not list((tmp_path / "b").iterdir())  # scratch projects are removed
    (run,) = data["settle"]  # one list per run
    assert {e["before"] for e in run} >= {"ours W1", "ours W2", "ours W3", "skeleton", "floor", "scale"}
    assert "settle_log" not in data["params"]
    assert "disk before each timed workload: creating a file took" in proc.stdout


def test_the_large_jobs_benchmark_runs_its_jobs_through_a_worker_process_and_writes_its_figures(
        tmp_path: Path, cli_env) -> None:
    out = tmp_path / "large.json"
    proc = subprocess.run([sys.executable, "-m", "bench.large_jobs", "--jobs", "3", "--input-kb", "40", "--output-kb",
                           "10", "--output-shape", "records", "--repeat", "2", "--base-path", str(tmp_path / "b"),
                           "--json", str(out)], cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 jobs of a 40 KB input and a 10 KB output of small objects, median of 2 runs:" in proc.stdout
    assert "run 2/2:" in proc.stderr  # progress on stderr
    data = json.loads(out.read_text())
    assert (data["jobs"], data["input_kb"], data["output_kb"], data["output_shape"], len(data["runs"])) == (
        3, 40, 10, "records", 2)
    assert all(data["median"][k] > 0 for k in ("ms_per_job", "submit_ms_per_job", "worker_rss_mb"))
    assert data["machine"]["cpus"] >= 1  # the figures say where they were measured
    assert not list((tmp_path / "b").iterdir())  # each run's project is removed


PEER_MODULES = {"huey-sqlite": "huey", "huey-file": "huey", "persist-queue": "persistqueue", "litequeue": "litequeue",
                "dbos": "dbos", "langgraph": "langgraph.checkpoint.sqlite"}


def test_the_quick_suite_measures_every_peer_in_the_same_run(tmp_path: Path, cli_env) -> None:
    """The peers' code rots like ours if nothing runs it: each peer measures what it can (W1, W2 and W4 for a job
    queue, W3 for a system that can pause a job for an answer) or says why not. CI installs them (the ``dev``
    extra holds the ``bench`` one) and must run this; elsewhere it is skipped when they are not installed."""
    import importlib.util

    missing = sorted({m for m in PEER_MODULES.values() if importlib.util.find_spec(m.split(".")[0]) is None})
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the bench's peers are not installed ({', '.join(missing)}); CI=true: they must run")
        pytest.skip(f"the bench's peers are not installed ({', '.join(missing)}): pip install -e '.[bench]'")
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "W1,W2,W3", "--peers", "all", "--base",
                           str(tmp_path / "b"), "--json", str(out)], cwd=REPO, env=cli_env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    systems = json.loads(out.read_text())["systems"]
    assert set(systems) == {"ours", *PEER_MODULES}
    for name in PEER_MODULES:
        peer = systems[name]
        assert "error" not in peer, (name, peer)
        measured = {w for w in ("W1", "W2", "W3", "W4") if w in peer and "na" not in peer[w]}
        if name == "langgraph":  # a graph runs in the caller: no queue, no worker process (its notes say so)
            assert measured == {"W3"} and all(peer[w]["na"] for w in ("W1", "W2", "W4")), peer
        else:
            assert {"W1", "W2", "W4"} <= measured and peer["W1"]["jobs_per_s"] > 0, (name, peer)
        if name == "dbos":
            assert peer["W3"]["n"] > 0
    ratios = proc.stdout[proc.stdout.index("targets:"):]
    assert "W1 ahead of every durable peer" in ratios and "vs best" in ratios


def test_w3_refuses_to_report_duplicates_when_a_delivery_of_the_answer_failed(tmp_path: Path, cli_env,
                                                                               monkeypatch) -> None:
    """A trial whose second delivery was refused did not deliver the answer twice: its 0 duplicates would prove
    nothing (and a refusal breaks the idempotent resume), so the workload fails saying so instead of reporting 0."""
    from bench import ours
    from bench.common import Params

    for name, value in cli_env.items():
        monkeypatch.setenv(name, value)

    def second_refused(args: tuple) -> None:  # each delivery runs in a forked process: this replaces it there
        base, env, job_id, barrier = args
        barrier.wait()
        try:
            os.close(os.open(tmp_path / f"first-{job_id}", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            raise SystemExit(1) from None
        ours.project_orchestrator(Path(base), env).resume(job_id, "yes")

    monkeypatch.setattr(ours, "_resume_at", second_refused)
    with pytest.raises(RuntimeError, match=r"a delivery of the same answer to job \S+ failed \(exit codes "):
        ours.w3(Params.quick(w3_samples=1, w3_duplicate_trials=1, base=tmp_path / "b"))
    assert not list((tmp_path / "b").iterdir())  # the scratch project is removed all the same


def test_settle_waits_until_creating_a_file_is_cheap_again_and_records_what_it_saw(tmp_path: Path) -> None:
    from bench.common import Params, settle
    from bench.report import settle_lines

    quiet = Params(base=tmp_path, quiet_create_us=1e9, settle_max_s=30)
    settle(quiet, "a quiet disk")
    assert quiet.settle_log[0]["quiet"] and quiet.settle_log[0]["waited_s"] < 1

    slow = Params(base=tmp_path, quiet_create_us=0.0, settle_max_s=1.0)  # no creation is ever that cheap
    settle(slow, "a slow disk")
    entry = slow.settle_log[0]
    assert entry["before"] == "a slow disk" and not entry["quiet"] and entry["waited_s"] >= 1.0
    assert "still slow when measured anyway: a slow disk" in settle_lines([slow.settle_log])[0]
    assert "1 of 2 settles waited" in settle_lines([quiet.settle_log, slow.settle_log])[0]
    assert list(tmp_path.iterdir()) == []  # the probe's files and folder are gone


def test_bench_terminal_latency_writes_raw_samples_and_a_report_with_verdicts(tmp_path: Path, cli_env) -> None:
    raw, md = tmp_path / "raw.jsonl", tmp_path / "report.md"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_terminal_latency.py"), "--samples", "20",
                           "--seed", "7", "--raw-output", str(raw), "--report", str(md), "--json"],
                          env=cli_env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in raw.read_text().splitlines()]
    assert len(rows) == 20
    for row in rows:
        assert row["state"] == "succeeded" and row["measured"]
        assert row["latency_ms"] == max(row["returned_to_durable_ms"], row["returned_to_visible_ms"]) > 0
    text = md.read_text()
    for needle in ("| P50 |", "| P95 |", "| P99 |", "| MAX |", "release gate v1.2.3: P95", "our target: P99",
                   "Release gate: **PASS**", "durable", "separate reader", "cpus:", "seed: 7",
                   "percentiles: nearest rank"):
        assert needle in text
    # the code measured: the installed version and, in a checkout, its commit (``+changes`` beside edits)
    commit = r"([0-9a-f]{7,40}(\+changes)?|unknown \(not a git checkout\))"
    assert re.search(r"- code: jsonl-orchestrator \S+, commit " + commit, text), text
    result = json.loads(proc.stdout)
    assert result["verdicts"]["gate"] is True and result["latency_ms"]["n"] == 20
    assert not any(p.name.startswith("bench-latency-") for p in tmp_path.rglob("*"))  # scratch project deleted


def test_bench_terminal_latency_into_a_kept_project_leaves_it_verifiable_with_the_operators_keys(
        tmp_path: Path, cli_env) -> None:
    """--project-id names a project the benchmark keeps (also one an earlier run kept): its jobs are signed with the
    operator's key, so `verify` and `status --all` of that project still pass afterwards."""
    env = {**cli_env, "BASE_PATH": str(tmp_path / "base"), "PROJECT_ID": "ops"}
    script = lambda name, *args: subprocess.run(  # noqa: E731
        [sys.executable, str(REPO / "scripts" / f"{name}.py"), *args], env=env, capture_output=True, text=True,
        timeout=120, cwd=tmp_path)
    for _ in range(2):  # the second run goes into the project the first one kept
        bench = script("bench_terminal_latency", "--samples", "3", "--base-path", str(tmp_path / "base"),
                       "--project-id", "ops", "--json")
        assert bench.returncode == 0, bench.stderr[-3000:]
    verify = script("verify", "--json")
    assert verify.returncode == 0, verify.stdout[-3000:]
    assert json.loads(verify.stdout)["streams"] == 2 * (tb.Settings(1, 0, tmp_path, "x").warmup + 3)  # all its jobs
    assert script("status", "--all").returncode == 0


def test_bench_terminal_latency_refuses_a_project_holding_jobs_it_did_not_submit_and_writes_nothing(
        tmp_path: Path, cli_env) -> None:
    """Its worker would run them (a queued command job of a real project, run by the benchmark): refused (exit 3,
    INVALID_INPUT) before anything is written, the project's own job left queued as it was."""
    base = tmp_path / "base"
    env = {**cli_env, "BASE_PATH": str(base), "PROJECT_ID": "ops"}
    script = lambda name, *args: subprocess.run(  # noqa: E731
        [sys.executable, str(REPO / "scripts" / f"{name}.py"), *args], env=env, capture_output=True, text=True,
        timeout=120, cwd=tmp_path)
    marker = tmp_path / "ran"
    sub = script("submit", "--kind", "command", "--input", json.dumps({"argv": ["touch", str(marker)]}), "--json")
    job = json.loads(sub.stdout)["job_id"]
    before = sorted((p.relative_to(base), p.read_bytes()) for p in base.rglob("*") if p.is_file())
    bench = script("bench_terminal_latency", "--samples", "2", "--base-path", str(base), "--project-id", "ops",
                   "--raw-output", str(tmp_path / "raw.jsonl"), "--json")
    assert bench.returncode == 3, bench.stderr[-3000:]
    error = json.loads(bench.stdout)
    assert error["error"] == "INVALID_INPUT" and error["details"] == {"job_id": job}
    assert error["message"].startswith(f"project ops already holds jobs the benchmark did not submit (job {job}, "
                                       "kind 'command')")
    assert not marker.exists() and not (tmp_path / "raw.jsonl").exists()
    assert sorted((p.relative_to(base), p.read_bytes()) for p in base.rglob("*") if p.is_file()) == before
    assert json.loads(script("status", job, "--json").stdout)["state"] == "queued"


def test_the_foreign_job_check_reads_only_each_jobs_first_line_and_still_refuses_a_foreign_job(
        orch, monkeypatch) -> None:
    """A job's kind is its first event's: the check reads that line of each job (``store.first_line``), never a
    whole history (``read``, ``read_with_aux``: ``status`` verified every job in full, ~0.2 ms each), however long
    it is; a job of another kind is still refused as before."""
    from orchestrator import latency as lat
    from orchestrator.errors import InvalidInputError

    own = [orch.submit(lat.ECHO_KIND, {"pad": 0}) for _ in range(3)]
    with orch.store.path(own[0]).open("ab") as fh:  # a long history after its first line (not even verifiable)
        fh.write(b"".join(b'{"more": "%s"}\n' % (b"x" * 4_000) for _ in range(500)))
    calls: list[tuple[str, str]] = []
    for name in ("read", "read_with_aux", "first_line"):
        method = getattr(orch.store, name)
        monkeypatch.setattr(orch.store, name, lambda stream, *a, _m=method, _n=name: (
            calls.append((_n, stream)), _m(stream, *a))[1])
    tb.refuse_foreign_jobs(orch)
    assert sorted(calls) == sorted(("first_line", job) for job in own)
    calls.clear()
    foreign = orch.submit("command", {"argv": ["true"]})
    with pytest.raises(InvalidInputError) as refused:
        tb.refuse_foreign_jobs(orch)
    assert refused.value.exit_code == 3 and refused.value.details == {"job_id": foreign}
    assert refused.value.message.startswith(
        f"project proj already holds jobs the benchmark did not submit (job {foreign}, kind 'command'), which its "
        "worker would run; nothing was written.")
    assert ("first_line", foreign) in calls and all(stream == foreign for name, stream in calls if name != "first_line")


@pytest.mark.parametrize("first", [
    None,  # a job listed with no line (a stream emptied meanwhile, a head row without its lines)
    b"not json", b"\xff\xfe{", b"[1]", b"[" * 100_000,  # nested too deeply for the parser
    b'{"type": "job_claimed", "data": {"kind": "orchestrator.latency:echo_handler"}}',  # not a submission
    b'{"type": "job_submitted", "data": "orchestrator.latency:echo_handler"}',
    b'{"type": "job_submitted", "data": {"kind": ["orchestrator.latency:echo_handler"]}}',
    b'{"type": "job_submitted", "data": {}}',
], ids=["no-line", "not-json", "not-utf8", "not-an-object", "too-deep", "claimed", "data-not-object",
        "kind-not-text", "no-kind"])
def test_a_job_whose_first_line_names_no_kind_is_refused_as_foreign_not_a_crash(first: bytes | None) -> None:
    from types import SimpleNamespace

    from orchestrator.errors import InvalidInputError

    def project(line: bytes | None) -> SimpleNamespace:
        store = SimpleNamespace(job_ids=lambda: iter(["J1"]), first_line=lambda stream: line)
        return SimpleNamespace(project_id="p", store=store, load=lambda job_id: SimpleNamespace(ok=False, state=None))

    tb.refuse_foreign_jobs(project(b'{"type": "job_submitted", "data": {"kind": "orchestrator.latency:echo_handler"}}'))
    with pytest.raises(InvalidInputError) as refused:
        tb.refuse_foreign_jobs(project(first))
    assert refused.value.details == {"job_id": "J1"} and "(job J1, kind " in refused.value.message


def test_the_benchmarks_worker_never_runs_a_job_of_another_kind_submitted_while_it_runs(
        tmp_path: Path, cli_env, monkeypatch) -> None:
    """Past the check at its start, its worker process claims only the benchmark's own kind: a job submitted to the
    project meanwhile stays queued for the project's own workers."""
    from orchestrator import latency as lat
    from orchestrator.api import Orchestrator

    for name, value in cli_env.items():
        monkeypatch.setenv(name, value)
    orch = Orchestrator(base_path=tmp_path, project_id="p")
    foreign = orch.submit(lat.NOOP_KIND, {})  # runnable by the benchmark's worker, and first in line
    worker = lat.WorkerProcess(str(tmp_path), "p", dict(cli_env), kinds=(lat.ECHO_KIND,)).start()
    try:
        own = orch.submit(lat.ECHO_KIND, {"pad": 0})
        reader = lat.Reader(orch)
        try:
            assert reader.wait_for(own, lat.TERMINAL_STATES)[0].state == "succeeded"
        finally:
            reader.close()
    finally:
        worker.stop()
    assert orch.status(foreign).state == "queued" and foreign not in worker.durable


def test_a_benchmark_worker_stopped_at_the_end_of_a_workload_prints_no_stop_notice(
        tmp_path: Path, cli_env, capfd: pytest.CaptureFixture[str]) -> None:
    """The benchmark stops its worker with SIGTERM after every workload: the worker's "signal 15: stopping" line
    was printed six times in a full suite's progress. It is left out there; a notice of any other signal is not."""
    import logging

    from orchestrator import latency as lat

    worker = lat.WorkerProcess(str(tmp_path), "p", dict(cli_env)).start()
    worker.stop()
    assert worker.proc is not None and worker.proc.returncode == 0
    assert "stopping" not in capfd.readouterr().err
    notice = lambda signum: logging.makeLogRecord({"msg": "signal %d: stopping", "signal": signum})  # noqa: E731
    assert not lat._not_the_stop_notice(notice(signal.SIGTERM)) and lat._not_the_stop_notice(notice(signal.SIGINT))


def test_bench_terminal_latency_into_a_kept_project_never_deletes_the_operators_keyring_folder(
        tmp_path: Path, cli_env) -> None:
    """A kept project is signed with the operator's keyring, so nothing of the run's scratch keys exists to delete:
    a keyring folder at BASE_PATH/.<project>-keys (the scratch keys' place) is the operator's and stays."""
    base = tmp_path / "base"
    env = {k: v for k, v in cli_env.items() if k != "ORCH_SIGNING_KEY"}
    env.update(BASE_PATH=str(base), PROJECT_ID="ops", ORCH_KEYRING_DIR=str(base / ".ops-keys"))
    script = lambda name, *args: subprocess.run(  # noqa: E731
        [sys.executable, str(REPO / "scripts" / f"{name}.py"), *args], env=env, capture_output=True, text=True,
        timeout=120, cwd=tmp_path)
    bench = script("bench_terminal_latency", "--samples", "2", "--base-path", str(base), "--project-id", "ops", "--json")
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert list((base / ".ops-keys").glob("*.pub")), "the operator's keyring folder was deleted"
    verify = script("verify", "--json")
    assert verify.returncode == 0, verify.stdout[-3000:]


def test_bench_terminal_latency_makes_a_missing_base_path_as_submit_does_and_a_scratch_run_removes_it_again(
        tmp_path: Path, cli_env) -> None:
    """A missing --base-path is made with its parents, as by any command that writes, and said on stderr (the
    disk measured is the one that path is on); a scratch run then removes the folders it made, a kept run keeps them."""
    base = tmp_path / "a" / "b" / "c"
    bench = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, str(REPO / "scripts" / "bench_terminal_latency.py"), "--samples", "1", "--base-path",
         str(base), "--json", *args], env=cli_env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    scratch = bench()
    assert scratch.returncode == 0, scratch.stderr[-3000:]
    assert f"made --base-path {base} (it did not exist); this scratch run removes it again" in scratch.stderr
    assert not (tmp_path / "a").exists()  # every folder it made
    kept = bench("--keep")
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert [p.name for p in base.iterdir()] == [json.loads(kept.stdout)["settings"]["project"]]


@pytest.mark.parametrize("how", ["--keep", "--project-id"])
def test_a_kept_project_without_a_base_path_is_kept_where_the_other_commands_look(tmp_path: Path, cli_env,
                                                                                   how: str) -> None:
    """Without --base-path (nor BASE_PATH) a kept run went to a temporary folder, deleted with its project: now it
    is written where every other command looks without one, the current folder, and verifies there."""
    env = {k: v for k, v in cli_env.items() if k != "BASE_PATH"}
    args = ["--keep"] if how == "--keep" else ["--project-id", "ops"]
    run = lambda script, *more: subprocess.run(  # noqa: E731
        [sys.executable, str(REPO / "scripts" / f"{script}.py"), *more, "--json"], env=env, capture_output=True,
        text=True, timeout=120, cwd=tmp_path)
    bench = run("bench_terminal_latency", "--samples", "2", *args)
    assert bench.returncode == 0, bench.stderr[-3000:]
    project = json.loads(bench.stdout)["settings"]["project"]
    assert (tmp_path / project).is_dir()
    verified = run("verify", "--project-id", project)
    assert verified.returncode == 0, verified.stdout + verified.stderr[-3000:]
    jobs = json.loads(run("status", "--all", "--project-id", project).stdout)["jobs"]
    assert len(jobs) >= 2 and {job["state"] for job in jobs} == {"succeeded"}  # the samples, and the warm-up runs


@pytest.mark.parametrize("where, code, exit_code", [
    ("file/x", "CONFIG_ERROR", 3),  # a file where a folder belongs (a typo: STORAGE_ERROR said to restore a backup)
    ("loop/x", "CONFIG_ERROR", 3),  # a loop of symbolic links (a traceback from every command before)
    ("x" * 300 + "/y", "CONFIG_ERROR", 3),  # a name too long for the file system (idem)
    ("", "CONFIG_ERROR", 3),  # given empty: the benchmark took it for the current folder, and measured there
], ids=["under-a-file", "link-loop", "name-too-long", "empty"])
def test_a_base_path_that_cannot_be_used_is_the_same_error_for_the_benchmark_as_for_submit(
        tmp_path: Path, cli_env, where: str, code: str, exit_code: int) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "loop").symlink_to("loop")
    before = sorted(tmp_path.iterdir())
    for script, args in (("bench_terminal_latency", ("--samples", "1")), ("submit", ("--kind", "k", "--input", "1")),
                         ("status", ("--all",))):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / f"{script}.py"), *args, "--base-path",
                               str(tmp_path / where) if where else "", "--json"], env=cli_env, capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == exit_code and "Traceback" not in proc.stderr, (script, proc.stderr[-3000:])
        assert json.loads(proc.stdout)["error"] == code, script
    assert sorted(tmp_path.iterdir()) == before  # nothing made


def test_bench_terminal_latency_measures_files_even_where_the_environment_names_a_postgresql_store(
        tmp_path: Path, cli_env) -> None:
    """The benchmark is the file backend's, its worker process runs on files (no ORCH_* reaches it): the submitting
    side must not take ORCH_STORE_URL either (it failed with a traceback, and left its worker running). The URL is
    unreachable: no database is touched either way."""
    env = {**cli_env, "ORCH_STORE_URL": "postgresql://nobody@127.0.0.1:1/nowhere"}
    bench = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_terminal_latency.py"), "--samples", "2",
                            "--base-path", str(tmp_path / "b"), "--json"], env=env, capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert json.loads(bench.stdout)["latency_ms"]["n"] == 2


def test_a_benchmark_that_fails_before_its_first_sample_leaves_no_worker_process_running(
        tmp_path: Path, monkeypatch) -> None:
    from orchestrator import latency as lat

    started: list[lat.WorkerProcess] = []
    start = lat.WorkerProcess.start
    monkeypatch.setattr(lat.WorkerProcess, "start", lambda self: (started.append(self), start(self))[1])

    def refused(orch: object) -> None:
        raise RuntimeError("no reader")

    monkeypatch.setattr(lat, "Reader", refused)
    try:
        try:
            tb.run(tb.Settings(samples=1, seed=0, base_path=tmp_path, project_id="p"))
        except RuntimeError as exc:
            assert str(exc) == "no reader"
        assert all(w.proc is not None and w.proc.poll() is not None for w in started), "the worker was left running"
    finally:
        for w in started:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()


def bench_processes(base: Path) -> list[int]:
    """The live processes of a benchmark over ``base``: its worker process and that one's handler process, found
    by the ``ORCH_BENCH_WORKER`` setting in their environment, which names the base path."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            env = (entry / "environ").read_bytes() if entry.name.isdigit() else b""
        except OSError:  # gone meanwhile, or not ours
            continue
        if any(v.startswith(b"ORCH_BENCH_WORKER=") and str(base).encode() in v for v in env.split(b"\0")):
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("sig, exit_code, case", [
    (signal.SIGTERM, 143, "scratch, --base-path made"),
    (signal.SIGINT, 130, "scratch, --base-path there before"),
    (signal.SIGTERM, 143, "kept project"),
    (signal.SIGTERM, 143, "scratch, at its start"),  # while its worker process starts, most likely
], ids=["sigterm-scratch", "sigint-scratch", "sigterm-kept", "sigterm-at-start"])
def test_a_benchmark_stopped_mid_run_stops_its_worker_removes_what_it_made_and_exits_128_plus_the_signal(
        tmp_path: Path, cli_env, sig: signal.Signals, exit_code: int, case: str) -> None:
    """A real run sent the signal once its samples have started (a job file past the warm-up), or as soon as it
    has made something (its worker process then starting, a step a stop waits for): exit 143 or 130
    with one line saying so; its worker process is gone; a scratch run leaves the disk as it found it (a
    --base-path it made removed, one that was there kept with what it held), a kept project still verifies;
    no output file, not even a temporary one. Before, SIGTERM ended the process where it was (exit -15): the
    scratch project, its keys folder and the --base-path it made stayed, and its worker process too, idle for
    good (unless it died of the broken pipe reporting a run); SIGINT exited 1 ("Aborted!")."""
    if sig == signal.SIGINT and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        pytest.skip("SIGINT is ignored by this process (a background job): its child would ignore it too")
    base = tmp_path / "made" / "base" if case.endswith("made") else tmp_path / "base"
    if base.exists():
        (base / "notes.txt").write_text("the operator's")
    args = ["--project-id", "ops", "--json"] if case == "kept project" else []  # --json: one error object on stdout
    listed = lambda: sorted(p.name for p in tmp_path.iterdir() if p.name != "keyring")  # noqa: E731 (the operator's)
    before = listed()
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "bench_terminal_latency.py"), "--samples",
                             "1000000", "--base-path", str(base), "--raw-output", str(tmp_path / "raw.jsonl"), *args],
                            env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    warmup = tb.Settings(1, 0, base, "x").warmup

    def begun() -> bool:  # the scratch project's first folder, or job files past the warm-up
        if case.endswith("start"):
            return bool(list(base.glob("bench-latency-*")))
        return len(list(base.glob("*/.orchestrator/queue/jobs/*.events.jsonl"))) > warmup + 2

    try:
        deadline = time.monotonic() + 60
        while not begun():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.005)
        assert bench_processes(base) or case.endswith("start"), "no worker process found to watch"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = bench_processes(base)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == exit_code, err[-3000:]
    assert err.splitlines()[-1].startswith(f"interrupted by {sig.name}: the benchmark's worker process was stopped, ")
    assert "Traceback" not in err
    if "--json" in args:
        error = json.loads(out)
        assert error["error"] == "INTERRUPTED" and error["signal"] == sig.name, error
        assert error["message"] == err.splitlines()[-1]
    else:
        assert out == ""
    assert not left, f"worker processes left running: {left}"
    assert listed() == before, "an output file, or a temporary one, was left"
    if case.endswith("made"):
        assert not (tmp_path / "made").exists(), list((tmp_path / "made").rglob("*"))
    elif case.startswith("scratch"):
        assert sorted(p.name for p in base.iterdir()) == ["notes.txt"]
    else:
        assert sorted(p.name for p in base.iterdir()) == ["notes.txt", "ops"]
        verify = subprocess.run([sys.executable, str(REPO / "scripts" / "verify.py"), "--json"],
                                env={**cli_env, "BASE_PATH": str(base), "PROJECT_ID": "ops"}, capture_output=True,
                                text=True, timeout=120, cwd=tmp_path)
        assert verify.returncode == 0, verify.stdout[-3000:]


def test_a_benchmark_killed_with_sigkill_does_not_leave_its_worker_process_running(tmp_path: Path, cli_env) -> None:
    """SIGKILL cannot be handled: a scratch run's folders stay (documented), but its worker process, told by the
    kernel that its parent died (``PR_SET_PDEATHSIG``, SIGTERM), stops too. Before, an idle one stayed for good
    (one reporting a run died of the broken pipe). A process that starts an idle benchmark worker is killed here."""
    code = ("import os, sys, time; from orchestrator import latency as lat; "
            f"lat.WorkerProcess({str(tmp_path)!r}, 'p', dict(os.environ)).start(); print('started', flush=True); "
            "time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**cli_env, "PYTHONPATH": str(REPO)}, cwd=tmp_path,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "started\n"
        assert bench_processes(tmp_path), "no worker process found to watch"
        proc.kill()
        proc.wait()
        wait_until(lambda: not bench_processes(tmp_path), what="the worker process to stop after its benchmark died")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        for pid in bench_processes(tmp_path):
            os.kill(pid, signal.SIGKILL)


def test_the_gate_fails_when_p95_or_p99_is_over_its_limit() -> None:
    ok = {"p50": 1.0, "p95": 80.0, "p99": 150.0, "max": 200.0}
    assert tb.verdicts(ok)["gate"] is True
    assert tb.verdicts({**ok, "p95": 80.1})["gate"] is False
    assert tb.verdicts({**ok, "p99": 150.1})["gate"] is False
    assert tb.verdicts({**ok, "p99": 2.0})["target_p99"] is True
    assert tb.verdicts(ok)["target_p99"] is False


def test_the_step_by_step_trace_of_w2_stamps_every_step_in_path_order(tmp_path: Path, cli_env) -> None:
    out = tmp_path / "trace.json"
    proc = subprocess.run([sys.executable, "-m", "bench.trace", "--samples", "8", "--settle-max-s", "0", "--slowest", "0.25",
                           "--json", str(out)], cwd=REPO,
                          env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = json.loads(out.read_text())["steps"]
    from bench.trace import SOMETIMES, STEPS

    labels = [label for label, _, _ in STEPS]
    assert list(steps) == [label for label in labels if label in steps]  # path order; a second try is rare
    assert all(steps[label]["n"] == 8 for label in labels if label not in SOMETIMES)
    # steps that cause one another, so each comes after the one before in every sample
    chain = ["claim fdatasynced", "handler returned", "outcome decided (payload parsed)", "outcome written",
             "outcome fdatasynced", "outcome recorded (head record)"]
    medians = [steps[label]["p50"] for label in chain]
    assert medians == sorted(medians) and medians[0] > 0
    assert steps["visible to the separate reader"]["p50"] > steps["outcome written"]["p50"]
    assert "| visible to the separate reader |" in proc.stdout
    slowest = json.loads(out.read_text())["slowest"]  # --slowest 0.25: the slowest 2 of 8, step by step
    assert slowest["visible to the separate reader"]["slowest_n"] == 2
    assert "P50 of the slowest 2" in proc.stdout


def test_the_w3_trace_starts_the_clock_at_the_resume_and_stamps_the_run_after_it(tmp_path: Path, cli_env) -> None:
    out = tmp_path / "trace.json"
    proc = subprocess.run([sys.executable, "-m", "bench.trace", "--samples", "5", "--workload", "w3",
                           "--settle-max-s", "0", "--json", str(out)],
                          cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = json.loads(out.read_text())["steps"]
    from bench.trace import SOMETIMES

    assert all(s["n"] == 5 for label, s in steps.items() if label not in SOMETIMES)
    assert steps["the resume's event recorded (head record)"]["p50"] > 0
    assert steps["resume: its line written"]["p50"] < steps["resume: its line durable (its lock released next)"]["p50"]
    chain = ["claim fdatasynced", "handler returned", "outcome written",
             "visible to the separate reader"]  # each causes the next in every sample
    assert [steps[label]["p50"] for label in chain] == sorted(steps[label]["p50"] for label in chain)


def test_the_step_cost_of_a_w3_round_is_reported_for_every_step(cli_env) -> None:
    """``bench.step_cost --wall`` (the instruction counts need valgrind and a minute: not run here)."""
    proc = subprocess.run([sys.executable, "-m", "bench.step_cost", "--jobs", "2", "--wall"], cwd=REPO,
                          env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from bench.step_cost import STEPS

    report = json.loads(proc.stdout)
    assert report["unit"] == "ms per job" and list(report["steps"]) == list(STEPS)
    assert all(ms > 0 for ms in report["steps"].values())
    assert report["steps"]["resume up to its ready entry"] < report["steps"]["resume"]


def test_the_claim_pass_benchmark_runs_and_reports_each_figure(tmp_path: Path, cli_env) -> None:
    out = tmp_path / "pass.json"
    env = {k: v for k, v in cli_env.items() if k not in ("ORCH_SIGNING_KEY", "BASE_PATH", "PROJECT_ID")}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "claim_pass.py"), "--backend", "files", "--running",
                           "2", "--seconds", "0.2", "--json", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["running"] == 2 and result["passes"] > 0
    assert all(result[k] > 0 for k in ("pass_us_p50", "pass_us_mean", "recover_us_p50", "recover_us_mean"))


def test_the_workers_benchmark_drains_one_queue_with_several_worker_processes_and_writes_its_figures(
        tmp_path: Path, cli_env) -> None:
    out = tmp_path / "workers.json"
    proc = subprocess.run([sys.executable, "-m", "bench.workers", "--workers", "1,2", "--jobs", "12", "--repeat", "1",
                           "--one-at-a-time", "3", "--base-path", str(tmp_path / "b"), "--json", str(out)], cwd=REPO,
                          env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "12 no-op jobs drained by several worker processes at once" in proc.stdout
    assert "every job ran exactly once" in proc.stdout and "| 2 |" in proc.stdout
    assert "run 1/1, 2 worker(s):" in proc.stderr  # progress on stderr
    data = json.loads(out.read_text())
    assert set(data["median_jobs_per_s"]) == {"1", "2"} and data["ratio_to_one"]["1"] == 1.0
    (one,), (two,) = data["runs"]["1"], data["runs"]["2"]
    assert one["share"] == [12] and sum(two["share"]) == 12 and len(two["share"]) == 2
    assert set(two["races"]) == {"taken", "lost"} and two["jobs_per_s"] > 0
    # --one-at-a-time: the latency of one job at a time with that many idle workers, and what they spent on it
    assert "3 jobs submitted one at a time" in proc.stdout and "run 1/1, 2 idle worker(s): P50" in proc.stderr
    idle = data["one_at_a_time"]
    assert idle["samples"] == 3 and set(idle["medians"]) == {"1", "2"}
    (alone,) = idle["runs"]["1"]
    assert alone["submit_to_visible_ms"]["n"] == 3 and 0 < alone["submit_to_visible_ms"]["p50"] < 1000
    assert alone["cpu_ms_a_job"] >= 0 and alone["switches_a_job"] > 0  # each job wakes its worker at least
    assert not list((tmp_path / "b").iterdir())  # each run's project is removed
