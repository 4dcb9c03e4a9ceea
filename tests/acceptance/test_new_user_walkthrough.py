"""What a new user meets first, as real processes: a submit given its input on stdin, a worker started from the
folder that holds the handler modules, and the words status, verify, the benchmark and the worker say."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, run_script

INPUT = '{"a": 1}'


def submit_with_stdin(env: dict[str, str], stdin: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "submit.py"), "--kind", "k", *args], env=env,
                          stdin=stdin, capture_output=True, text=True, timeout=60, cwd=str(REPO))


def filled_pipe(data: str) -> int:
    """The read end of a real pipe already holding ``data``, its writer gone (``echo DATA | submit``)."""
    read_end, write_end = os.pipe()
    os.write(write_end, data.encode())
    os.close(write_end)
    return read_end


def job_count(env: dict[str, str]) -> int:
    return json.loads(run_script("status", "--all", "--json", env=env, check=True).stdout)["count"]


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_json_piped_to_submit_without_an_input_option_is_a_usage_error_and_nothing_is_submitted(
        cli_env: dict[str, str], as_json: bool) -> None:
    """``echo '{"a":1}' | submit --kind k`` submitted a job with no input, exit 0, the piped JSON ignored."""
    read_end = filled_pipe(INPUT)
    try:
        proc = submit_with_stdin(cli_env, read_end, *(["--json"] if as_json else []))
    finally:
        os.close(read_end)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    message = json.loads(proc.stdout)["message"] if as_json else proc.stderr
    assert "stdin holds data" in message and "--input-file -" in message and "nothing was submitted" in message
    if as_json:
        assert json.loads(proc.stdout)["error"] == "USAGE_ERROR"
    assert job_count(cli_env) == 0


def test_a_file_redirected_to_submit_without_an_input_option_is_refused_too(cli_env: dict[str, str],
                                                                            tmp_path: Path) -> None:
    source = tmp_path / "input.json"
    source.write_text(INPUT)
    with source.open("rb") as fh:
        proc = submit_with_stdin(cli_env, fh.fileno())
    assert proc.returncode == 2 and "--input-file -" in proc.stderr, (proc.stdout, proc.stderr)
    assert job_count(cli_env) == 0


def test_piped_json_is_the_input_with_input_file_dash(cli_env: dict[str, str]) -> None:
    read_end = filled_pipe(INPUT)
    try:
        proc = submit_with_stdin(cli_env, read_end, "--input-file", "-", "--json")
    finally:
        os.close(read_end)
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)["job_id"]
    assert json.loads(run_script("status", job, "--json", env=cli_env, check=True).stdout)["job_id"] == job
    events = next(Path(cli_env["BASE_PATH"]).rglob(f"{job}.events.jsonl"))
    assert json.loads(events.read_text().splitlines()[0])["data"]["input"] == {"a": 1}


def test_a_silent_or_empty_stdin_neither_blocks_submit_nor_stops_it(cli_env: dict[str, str]) -> None:
    """Under cron, ssh or a parent process, stdin may be a pipe nobody writes to and nobody closes: submit never
    waits on it (it is not read), nor on an empty one; /dev/null is taken as before."""
    silent_read, silent_write = os.pipe()  # the writer stays open: a read would block for ever
    empty = filled_pipe("")
    try:
        results = [submit_with_stdin(cli_env, fd, "--input", "{}") for fd in (silent_read, empty)]
        results += [submit_with_stdin(cli_env, fd) for fd in (silent_read, empty, subprocess.DEVNULL)]
    finally:
        for fd in (silent_read, silent_write, empty):
            os.close(fd)
    assert [p.returncode for p in results] == [0] * 5, [p.stderr for p in results]
    assert job_count(cli_env) == 5


def test_a_submit_given_its_input_leaves_stdin_alone_as_in_a_while_read_loop(cli_env: dict[str, str],
                                                                              tmp_path: Path) -> None:
    """``while read id; do submit --input ...; done < list``: each submit's stdin holds the rest of the list, which
    is not its input; given --input (or --input-file FILE), submit never looks at stdin."""
    other = tmp_path / "other.json"
    other.write_text("{}")
    results = []
    for args in (["--input", "{}"], ["--input-file", str(other)]):
        read_end = filled_pipe("id-2\nid-3\n")
        try:
            results.append(submit_with_stdin(cli_env, read_end, *args))
        finally:
            os.close(read_end)
    assert [p.returncode for p in results] == [0, 0], [p.stderr for p in results]
    assert job_count(cli_env) == 2


def test_submit_help_says_where_the_input_comes_from_when_no_option_gives_it(cli_env: dict[str, str]) -> None:
    text = " ".join(run_script("submit", "-h", env=cli_env, check=True).stdout.split())
    assert "Without --input or --input-file the job has no input (null)" in text
    assert "stdin is read only with --input-file -" in text


# -- a worker started from the folder that holds its handler modules --------------------------------------------
CONSOLE_SCRIPT = """#!{python}
import re
import sys
from orchestrator.cli import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""

HANDLERS = """from orchestrator import handler


@handler("mine.hello")
def hello(ctx):
    return {"status": "done", "summary": "hello from the project folder"}


def run(ctx):
    return {"status": "done", "summary": "run from the project folder"}
"""


@pytest.fixture
def project_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    (folder / "myproject").mkdir(parents=True)
    (folder / "myproject" / "__init__.py").write_text("")
    (folder / "myproject" / "handlers.py").write_text(HANDLERS)
    (folder / "mfmod.py").write_text(HANDLERS)
    return folder


def console_script(tmp_path: Path) -> Path:
    """The ``orchestrator`` script pip writes into a virtual environment's bin/ folder (run as a file, its folder,
    not the current one, comes first on sys.path: unlike ``python -m`` and ``python -c``)."""
    script = tmp_path / "bin" / "orchestrator"
    script.parent.mkdir(exist_ok=True)
    script.write_text(CONSOLE_SCRIPT.format(python=sys.executable))
    return script


def entry_points(tmp_path: Path) -> dict[str, list[str]]:
    return {"console script": [sys.executable, str(console_script(tmp_path))],
            "python -m": [sys.executable, "-m", "orchestrator"],
            "scripts/": [sys.executable, str(REPO / "scripts" / "worker.py")]}


def run_in(folder: Path, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=str(folder), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("entry", ["console script", "python -m", "scripts/"])
def test_every_way_to_start_a_worker_imports_handler_modules_from_the_folder_it_is_started_in(
        cli_env: dict[str, str], project_folder: Path, tmp_path: Path, entry: str) -> None:
    argv = entry_points(tmp_path)[entry]
    if entry == "scripts/":
        worker = argv
    else:
        worker = argv + ["worker"]
    for kind, extra in (("mine.hello", ["--import", "myproject.handlers"]), ("mfmod:run", [])):
        run_script("submit", "--kind", kind, env=cli_env, check=True)
        proc = run_in(project_folder, worker + ["--once", "--json", *extra], cli_env)
        assert proc.returncode == 0, (entry, kind, proc.stdout, proc.stderr)
        assert json.loads(proc.stdout)["outcome"] == "succeeded", proc.stdout


def test_a_module_in_the_current_folder_never_shadows_an_installed_one_for_the_console_script(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    """The folder goes last on the path: a file there named like a module the worker or a handler imports
    (``json.py``, ``orchestrator/``) is not what gets imported; only a module found nowhere else comes from it."""
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "json.py").write_text("raise SystemExit('the json.py of the current folder was imported')\n")
    run_script("submit", "--kind", "command", "--input", '{"argv": ["true"]}', env=cli_env, check=True)  # no payload
    proc = run_in(folder, [sys.executable, str(console_script(tmp_path)), "worker", "--once", "--json"], cli_env)
    assert proc.returncode == 0 and json.loads(proc.stdout)["outcome"] == "retry", (proc.stdout, proc.stderr)
    assert "current folder was imported" not in proc.stderr


def test_a_handler_module_found_nowhere_says_where_the_worker_looked_and_how_to_add_a_folder(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    proc = run_in(folder, [sys.executable, str(console_script(tmp_path)), "worker", "--once", "--import",
                           "myproject.handlers"], cli_env)
    assert proc.returncode == 3, proc.stderr
    assert (f"no module 'myproject.handlers' can be imported here: it is neither in the current folder, {folder}, "
            "nor on the Python path (start the worker in the folder that holds it, or add that folder to PYTHONPATH)"
            in " ".join(proc.stderr.split()))


# -- status of a job whose history failed verification ------------------------------------------------------------
def test_status_of_a_cut_history_does_not_promise_that_a_worker_recovers_the_job(orch, base: Path) -> None:
    """A waiting_human job whose events file lost its last lines replays as running with its lease long expired:
    status said a worker pass recovers it, next to INTEGRITY saying it will not be run."""
    from orchestrator.cli import _status_text

    job = orch.submit("worker_handlers:ask", {})
    with orch.worker(worker_id="w1") as worker:
        assert worker.run_once().state == "waiting_human"
    events = orch.store.path(job)
    lines = events.read_bytes().splitlines(keepends=True)
    claimed = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == "job_claimed")
    events.write_bytes(b"".join(lines[:claimed + 1]))
    st = orch.status(job)
    assert st.state == "running" and st.integrity_error
    text = _status_text(st, orch.clock() + 10 * 365 * 86400)
    assert "its worker stopped renewing it" not in text and "worker --once" not in text
    lease = next(line for line in text.splitlines() if line.startswith("lease_expires_at"))
    assert "expired" in lease and "no worker runs or recovers the job while its history fails verification" in lease
    assert "INTEGRITY" in text


# -- the benchmark in a project whose only other job is finished ---------------------------------------------------
@pytest.mark.parametrize("finish", ["cancel", "run"])
def test_the_benchmark_takes_a_project_whose_other_jobs_are_finished_and_refuses_one_a_worker_would_run(
        orch, finish: str) -> None:
    from orchestrator import terminal_bench as tb
    from orchestrator.errors import InvalidInputError

    done = orch.submit("worker_handlers:echo", {"x": 1})
    if finish == "cancel":
        orch.cancel(done, "not needed")
    else:
        with orch.worker(worker_id="w1") as worker:
            assert worker.run_once().state == "succeeded"
    tb.refuse_foreign_jobs(orch)  # a finished job is never run again: nothing the benchmark's worker would touch
    waiting = orch.submit("worker_handlers:ask", {})
    with pytest.raises(InvalidInputError) as refused:
        tb.refuse_foreign_jobs(orch)
    assert refused.value.details == {"job_id": waiting}


def test_a_finished_foreign_job_whose_history_fails_verification_is_still_refused(orch) -> None:
    from orchestrator import terminal_bench as tb
    from orchestrator.errors import InvalidInputError

    job = orch.submit("command", {"argv": ["true"]})
    orch.cancel(job, "not needed")
    events = orch.store.path(job)
    events.write_bytes(events.read_bytes().replace(b"not needed", b"not wanted"))
    with pytest.raises(InvalidInputError):
        tb.refuse_foreign_jobs(orch)


# -- verify --export-head with --job-id --------------------------------------------------------------------------
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_export_head_with_a_job_id_is_a_usage_error_exit_2_and_writes_nothing(cli_env: dict[str, str],
                                                                             tmp_path: Path, as_json: bool) -> None:
    job = json.loads(run_script("submit", "--kind", "k", "--json", env=cli_env, check=True).stdout)["job_id"]
    target = tmp_path / "anchor.json"
    proc = run_script("verify", "--export-head", str(target), "--job-id", job, *(["--json"] if as_json else []),
                      env=cli_env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    if as_json:
        error = json.loads(proc.stdout)
        assert error["error"] == "USAGE_ERROR" and "--export-head" in error["message"]
    else:
        assert "--export-head" in proc.stderr and "Traceback" not in proc.stderr
    assert not target.exists()


# -- the worker's last word counts runs ---------------------------------------------------------------------------
def test_a_looping_worker_says_it_stopped_after_n_runs_counting_each_retry(cli_env: dict[str, str]) -> None:
    """One job run three times (failed twice, then retried): three runs of one job, said as runs."""
    run_script("submit", "--kind", "command", "--max-attempts", "3", "--input",
               '{"argv": ["sh", "-c", "exit 1"]}', env=cli_env, check=True)
    proc = run_script("worker", "--idle-exit", "--retry-base-seconds", "0", "--retry-max-seconds", "0", "--json",
                      env=cli_env)
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.splitlines()[-1])
    assert last["event"] == "worker_stopped" and last["jobs_run"] == 3 and last["runs"] == 3
    assert last["message"].startswith(f"worker {last['worker_id']} stopped after 3 run(s) of 1 job(s)")
    text = run_script("worker", "-h", env=cli_env, check=True).stdout
    assert "Exit after this many runs" in " ".join(text.split())
