"""`--json` prints one JSON object on stdout, usage errors and firing alerts included (docs/decisions.md, CLI)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import jobstates as js
from helpers import run_module, run_script
from orchestrator import Orchestrator
from orchestrator.key_files import load_keyring

USAGE_ERRORS = [
    ("status",),  # no JOB_ID and no --all
    ("status", "--all", "01SOMEJOB"),  # both
    ("audit-timeline",),  # neither --job-id nor --run-id
    ("submit", "--kind", "x", "--timeout", "inf"),  # out of range
    ("submit", "--kind", "x", "--input", "{}", "--input-file", "-"),  # both
    ("verify", "--against", "missing"),  # no such file
    ("status", "--token", "x"),  # unknown option
]


def run_command(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``scripts/<name>.py``, the runbook's way."""
    return run_script(name.replace("-", "_"), *args, env=env)


def test_a_usage_error_under_json_is_one_usage_error_object_on_stdout_with_exit_2(cli_env: dict[str, str]) -> None:
    for name, *args in USAGE_ERRORS:
        for proc in (run_command(name, *args, "--json", env=cli_env), run_module(name, *args, "--json", env=cli_env)):
            assert proc.returncode == 2, (name, args, proc.stdout, proc.stderr)
            error = json.loads(proc.stdout)
            assert error["error"] == "USAGE_ERROR" and error["message"], (name, args)
            assert proc.stderr == "", (name, args, proc.stderr)


def test_without_json_a_usage_error_is_clicks_text_on_stderr(cli_env: dict[str, str]) -> None:
    for name, *args in USAGE_ERRORS:
        proc = run_command(name, *args, env=cli_env)
        assert proc.returncode == 2 and proc.stdout == "", (name, args, proc.stdout)
        assert proc.stderr.startswith(f"Usage: scripts/{name.replace('-', '_')}.py ") and "\nError: " in proc.stderr


def test_help_still_prints_with_json_and_exits_0(cli_env: dict[str, str]) -> None:
    for proc in (run_script("status", "-h", "--json", env=cli_env),
                 run_module("status", "--help", "--json", env=cli_env), run_module("-h", env=cli_env)):
        assert proc.returncode == 0 and proc.stdout.startswith("Usage: "), proc.stderr


def test_status_without_a_job_id_and_status_with_both_are_the_same_usage_error(cli_env: dict[str, str]) -> None:
    neither, both = (run_script("status", *args, "--json", env=cli_env) for args in ((), ("--all", "01SOMEJOB")))
    assert neither.returncode == both.returncode == 2
    assert json.loads(neither.stdout)["error"] == json.loads(both.stdout)["error"] == "USAGE_ERROR"


def test_status_with_a_job_id_and_state_filter_names_both_options_it_cannot_mix(cli_env: dict[str, str]) -> None:
    """--state lists jobs as --all does: the error says so, rather than naming an --all that was not given."""
    proc = run_script("status", "01SOMEJOB", "--state", "queued", "--json", env=cli_env)
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["message"] == ("give a JOB_ID, or --all (with or without --state, --kind) to "
                                                  "list jobs, not both")


@pytest.fixture
def api(base: Path, cli_env: dict[str, str]) -> Orchestrator:
    return Orchestrator(base_path=base, project_id="proj", keyring=load_keyring(cli_env, announce=False))


def test_metrics_fail_on_prints_the_figures_and_the_firing_alerts_as_one_object_exit_12(
        api: Orchestrator, cli_env: dict[str, str]) -> None:
    js.waiting_human(api)
    args = ("--waiting-human-max", "0", "--fail-on", "warning")
    proc = run_script("metrics", *args, "--json", env=cli_env)
    assert proc.returncode == 12 and len(proc.stdout.splitlines()) == 1, proc.stdout
    data = json.loads(proc.stdout)
    assert data["counts"]["waiting_human"] == 1 and data["error"] == "ALERTS_FIRING"
    assert data["details"]["firing"] == ["WAITING_HUMAN_BACKLOG"] and "WAITING_HUMAN_BACKLOG" in data["message"]
    text = run_script("metrics", *args, env=cli_env)
    assert text.returncode == 12 and "WAITING_HUMAN_BACKLOG" in text.stdout
    assert text.stderr.startswith("error[ALERTS_FIRING]: 1 alert(s) at warning or worse: WAITING_HUMAN_BACKLOG")
    calm = run_script("metrics", "--fail-on", "critical", "--json", env=cli_env)
    assert calm.returncode == 0 and "error" not in json.loads(calm.stdout)


def test_worker_json_in_a_loop_is_json_lines_one_object_per_job(cli_env: dict[str, str]) -> None:
    submitted = {json.loads(run_script("submit", "--kind", "command", "--input", json.dumps({"argv": ["true"]}),
                                       "--max-attempts", "1", "--json", env=cli_env, check=True).stdout)["job_id"]
                 for _ in range(2)}
    proc = run_script("worker", "--idle-exit", "--json", env=cli_env, check=True)
    *runs, stopped = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {line["job_id"] for line in runs} == submitted and len(runs) == 2 and all("outcome" in x for x in runs)
    assert stopped["event"] == "worker_stopped" and stopped["jobs_run"] == 2
    assert stopped["no_handler"] == {"jobs": 0, "kinds": {}}


def test_json_output_is_one_valid_object_when_a_value_in_it_holds_a_secret_with_an_unbalanced_quote(
        api: Orchestrator, cli_env: dict[str, str]) -> None:
    """Redaction ends with the value it is in: a question stored as `... token='[REDACTED]` (its quote never
    closed) or a kind that begins a private key redacts that value only; every job is still listed."""
    asked = js.waiting_human(api, question="Which account? the one whose token='[REDACTED]")
    api.submit("-----BEGIN PRIVATE KEY----- MIIEvQIBADAN", {})
    one = run_script("status", asked, "--json", env=cli_env)
    assert one.returncode == 0 and json.loads(one.stdout)["question"] == "Which account? the one whose token='[REDACTED]"
    listing = run_script("status", "--all", "--json", env=cli_env)
    assert listing.returncode == 0
    jobs = json.loads(listing.stdout)["jobs"]
    assert [j["kind"] for j in jobs] == ["echo", "[REDACTED]"] and "MIIEvQIBADAN" not in listing.stdout
    error = run_script("status", "--all", "--state", "-----BEGIN PRIVATE KEY----- MIIEvQIBADAN", "--json", env=cli_env)
    assert error.returncode == 2 and json.loads(error.stdout)["error"] == "USAGE_ERROR"
    assert "MIIEvQIBADAN" not in error.stdout


def test_worker_json_lines_stay_json_when_a_handler_module_prints_as_it_is_imported(
        tmp_path: Path, cli_env: dict[str, str]) -> None:
    """A handler module (or a library it imports) may print a banner at import: --import at the worker's start, a
    module:function kind when a job names it. That is a diagnostic, on stderr; stdout holds the JSON Lines alone."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "banner_at_start.py").write_text(
        "from orchestrator import handler\nprint('banner_at_start loaded')\n\n"
        "@handler('greet')\ndef greet(ctx):\n    return {'status': 'done', 'summary': 'hi'}\n")
    (modules / "banner_at_claim.py").write_text(  # also below Python: a program it starts, a write to descriptor 1
        "import os, subprocess, sys\nprint('banner_at_claim loaded')\n"
        "subprocess.run([sys.executable, '-c', 'print(\"started at import\")'], check=True)\n"
        "os.write(1, b'written to descriptor 1\\n')\n\n"
        "def run(ctx):\n    return {'status': 'done', 'summary': 'hi'}\n")
    env = {**cli_env, "PYTHONPATH": f"{cli_env['PYTHONPATH']}:{modules}"}
    for kind in ("greet", "banner_at_claim:run"):
        run_script("submit", "--kind", kind, "--input", "{}", env=env, check=True)
    proc = run_script("worker", "--import", "banner_at_start", "--idle-exit", "--json", env=env, check=True)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line.get("outcome") for line in lines] == ["succeeded", "succeeded", None]
    assert "banner_at_start loaded" in proc.stderr and "banner_at_claim loaded" in proc.stderr
    assert "started at import" in proc.stderr and "written to descriptor 1" in proc.stderr


def _status_interrupted(cli_env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``status J ARGS`` as a real process, sent SIGINT (Ctrl-C) while the command runs (its read of the job made
    to wait, so that the signal lands inside the command, not in the interpreter's start)."""
    import signal
    import sys

    from helpers import PRINTS_ITS_STACK, REPO, finish, stop, wait_until, waits_for_a_stop

    started = tmp_path / "started"
    script = (PRINTS_ITS_STACK + "import sys, time\n"
              "from orchestrator import api, cli\n"
              + waits_for_a_stop(started, "self, job_id") +
              "api.Orchestrator.status = waits\n"
              "cli.run_script('status', sys.argv[1:])\n")
    proc = subprocess.Popen([sys.executable, "-c", script, "01SOMEJOB", *args], env=cli_env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    try:
        wait_until(lambda: started.exists() or proc.poll() is not None, what="the command's read of the job")
        proc.send_signal(signal.SIGINT)
        code, out, err = finish(proc)
    finally:
        stop(proc)
    return subprocess.CompletedProcess(proc.args, code, out, err)


def test_ctrl_c_under_json_is_one_interrupted_object_on_stdout_with_exit_130(cli_env: dict[str, str],
                                                                            tmp_path: Path) -> None:
    """Before: click's "Aborted!" on stderr, nothing on stdout, exit 1."""
    proc = _status_interrupted(cli_env, tmp_path, "--json")
    assert proc.returncode == 130, (proc.stdout, proc.stderr)
    error = json.loads(proc.stdout)
    assert error["error"] == "INTERRUPTED" and error["signal"] == "SIGINT", error
    assert error["message"].startswith("interrupted by SIGINT (Ctrl-C) before the command finished")
    assert "Aborted!" not in proc.stderr and "Traceback" not in proc.stderr


def test_ctrl_c_without_json_is_one_line_saying_so_with_exit_130(cli_env: dict[str, str], tmp_path: Path) -> None:
    proc = _status_interrupted(cli_env, tmp_path)
    assert proc.returncode == 130 and proc.stdout == "", (proc.stdout, proc.stderr)
    assert proc.stderr.strip() == ("error[INTERRUPTED]: interrupted by SIGINT (Ctrl-C) before the command finished: "
                                   "check what it did (status, verify) before running it again")


EMPTY_JOB_IDS = [("status", ""), ("verify", "--job-id", ""), ("audit", "heal", "--job-id", ""),
                 ("audit-timeline", "--job-id", ""), ("control", "cancel", ""), ("resume-from-chat", "", "job_id: J; yes")]


@pytest.mark.parametrize("command", EMPTY_JOB_IDS, ids=lambda c: " ".join(c[:2]))
def test_an_empty_job_id_is_invalid_id_exit_3_as_any_bad_id_never_every_job(
        cli_env: dict[str, str], command: tuple[str, ...]) -> None:
    """Before: `status ''` was a usage error (exit 2); `verify --job-id ''` verified, and `audit heal --job-id ''`
    healed, the whole project; `resume-from-chat ''` named the message's job as the mismatch."""
    api = Orchestrator(base_path=cli_env["BASE_PATH"], project_id="proj", keyring=load_keyring(cli_env))
    api.submit("command", {"argv": ["true"]})
    for given in ("", "../x"):  # the empty id gives what any other bad id gives
        proc = run_module(*(given if arg == "" else arg for arg in command), "--json", env=cli_env)
        assert proc.returncode == 3, (command, given, proc.stdout, proc.stderr)
        assert json.loads(proc.stdout)["error"] == "INVALID_ID", (command, given, proc.stdout)


def test_status_with_an_empty_job_id_and_all_is_the_usage_error_of_both(cli_env: dict[str, str]) -> None:
    """Before: the empty id was taken as none given, and every job was listed."""
    proc = run_script("status", "", "--all", "--json", env=cli_env)
    assert proc.returncode == 2 and json.loads(proc.stdout)["error"] == "USAGE_ERROR", proc.stdout


@pytest.mark.parametrize("fmt", [["--format", "json"], ["--format=json"]])
def test_metrics_format_json_prints_its_errors_as_json_as_json_does(cli_env: dict[str, str], fmt: list[str]) -> None:
    """``--format json`` is documented as the same as ``--json``: an error is then one JSON object on stdout too."""
    setting = run_module("metrics", *fmt, env={**cli_env, "ORCH_STALL_GRACE_SECONDS": "soon"})  # before the figures
    assert setting.returncode == 3 and json.loads(setting.stdout)["error"] == "CONFIG_ERROR"
    usage = run_module("metrics", *fmt, "--stalled-max", "many", env=cli_env)  # found by click, before the command
    assert usage.returncode == 2 and json.loads(usage.stdout)["error"] == "USAGE_ERROR"
    missing = run_module("metrics", *fmt, "--base-path", "/dev/null/x", env=cli_env)  # the store's error
    assert missing.returncode in (3, 10) and "error" in json.loads(missing.stdout)


@pytest.mark.parametrize("args, fix", [
    (("--json", "status", "--all"), "orchestrator status --all --json"),
    (("control", "--json", "cancel", "01SOMEJOB"), "orchestrator control cancel 01SOMEJOB --json"),
    (("keys", "--json", "list"), "orchestrator keys list --json"),
    (("control", "--json"), "orchestrator control <command> ... --json"),
])
def test_json_given_to_a_group_is_a_usage_error_that_shows_where_json_goes(
        cli_env: dict[str, str], args: tuple[str, ...], fix: str) -> None:
    """Until 2026-12-03: "No such option '--json'" (for `orchestrator`: "Did you mean '--version'?"), though every
    command has it."""
    proc = run_module(*args, env=cli_env)  # named as `python3 -m orchestrator`
    assert proc.returncode == 2 and proc.stderr == "", proc.stderr
    error = json.loads(proc.stdout)
    assert error["error"] == "USAGE_ERROR" and error["message"].endswith(f"give it after the command, python3 -m {fix}")
    assert "--version" not in error["message"]


def test_a_script_of_a_group_given_json_first_shows_the_same_line_with_json_last(cli_env: dict[str, str]) -> None:
    proc = run_script("control", "--json", "resume", "01SOMEJOB", "yes go", env=cli_env)
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["message"].endswith(
        "give it after the command, scripts/control.py resume 01SOMEJOB 'yes go' --json")
