"""What a run can hand the worker at its edges: text that is not Unicode, oversized payloads, handler
modules that exit, processes a run leaves behind, secrets cut in half, and the tail of a timeout."""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from helpers import alive, events, make_worker, wait_until
from orchestrator.handlers import register
from orchestrator.worker import Worker, WorkerSettings

PY = sys.executable


def run_one(orch, kind: str, value: object = None, **kw) -> tuple[object, dict]:
    """Submit one job (one attempt), run it with a fresh worker; the result and the job's last event."""
    job = orch.submit(kind, value, max_attempts=1)
    result = make_worker(orch, **kw).run_once()
    assert result is not None and result.job_id == job
    return result, events(orch, job)[-1]


# -- text that is not Unicode --------------------------------------------------------------------------
LISTER = ("import os, json; open(b'bad-\\xff.txt', 'wb').close(); "
          "json.dump({'status': 'done', 'summary': 'listed', 'output': {'files': os.listdir('.')}}, "
          "open(os.environ['ORCH_TERMINAL_FILE'], 'w'))")


@pytest.mark.parametrize("argv", [
    [PY, "-c", LISTER],  # a file name that is not UTF-8, listed into the output
    [PY, "-c", "import os; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write("
               "'{\"status\":\"done\",\"summary\":\"s\",\"output\":{\"x\":\"\\\\ud800\"}}')"],
    [PY, "-c", "import os; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write("
               "'{\"status\":\"done\",\"summary\":\"s\",\"output\":{\"\\\\udcff\":1}}')"],
    [PY, "-c", "import os; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write("
               "'{\"status\":\"done\",\"summary\":\"s\",\"artifacts\":[\"a\\\\udcff\"]}')"],
], ids=["non-utf8-file-name", "escaped-lone-surrogate", "surrogate-in-a-key", "surrogate-in-an-artifact"])
def test_a_payload_holding_a_lone_surrogate_is_recorded_as_malformed_payload_and_the_worker_goes_on(
        orch, argv: list[str]) -> None:
    result, last = run_one(orch, "command", {"argv": argv})
    assert (result.outcome, result.error_code) == ("failed", "MALFORMED_PAYLOAD")
    assert last["type"] == "job_failed" and "not valid Unicode" in last["data"]["error"]
    job = orch.submit("t.echo", "next")
    assert make_worker(orch).run_once().job_id == job and orch.status(job).state == "succeeded"


@pytest.mark.parametrize("returned, why", [
    ({"status": "done", "summary": "s", "output": {"x": "\ud800"}}, "not valid Unicode"),
    ({"status": "done", "summary": "s", "output": {1, 2}}, "not JSON: Object of type set is not JSON serializable"),
    ({"status": "done", "summary": "s", "output": float("nan")}, "not JSON: it holds NaN or an infinity"),
], ids=["surrogate", "set", "nan"])
@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_python_handler_returning_what_is_no_json_is_malformed_payload_saying_why(
        orch, returned: object, why: str, mode: str) -> None:
    register("t.returns", lambda ctx: returned)
    result, last = run_one(orch, "t.returns", handler_process=mode)
    assert (result.outcome, result.error_code) == ("failed", "MALFORMED_PAYLOAD")
    assert why in last["data"]["error"]


# -- a key twice in one object: JSON keeps one value, the other would be lost without a word ------------------------
@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_python_handler_returning_keys_json_writes_alike_is_malformed_payload_not_one_value_kept(
        orch, mode: str) -> None:
    """``{1: 2, "1": 3}`` is written ``{"1": 2, "1": 3}``; read back it was ``{"1": 3}``, stored as the result."""
    register("t.returns", lambda ctx: {"status": "done", "summary": "s", "output": {1: 2, "1": 3}})
    result, last = run_one(orch, "t.returns", handler_process=mode)
    assert (result.outcome, result.error_code) == ("failed", "MALFORMED_PAYLOAD")
    assert last["type"] == "job_failed"
    assert "the key '1' twice (at $.output)" in last["data"]["error"], last["data"]["error"]
    assert "1 and '1'" in last["data"]["error"]


def test_a_terminal_file_with_a_key_twice_is_malformed_payload_naming_the_key_and_where(orch) -> None:
    written = '{"status": "done", "summary": "s", "output": {"rows": [{"id": 1, "id": 2}]}}'
    argv = [PY, "-c", f"import os; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write({written!r})"]
    result, last = run_one(orch, "command", {"argv": argv})
    assert (result.outcome, result.error_code) == ("failed", "MALFORMED_PAYLOAD")
    assert "the key 'id' twice (at $.output.rows[0])" in last["data"]["error"], last["data"]["error"]
    assert orch.status(result.job_id).result is None  # nothing of it stored as the job's result


@pytest.mark.parametrize("output, why", [
    ({"x": "\udcff"}, "output holds text that is not valid Unicode"),
    ([float("nan")], "output is not plain JSON: it holds NaN or an infinity"),
], ids=["lone-surrogate", "nan"])
def test_an_outcome_that_cannot_be_encoded_fails_the_run_instead_of_stopping_the_worker(orch, monkeypatch, output,
                                                                                       why: str) -> None:
    import orchestrator.outcome as outcome_mod
    from orchestrator.payload import Payload

    # a check that lets such a value through (as parse_payload once did a lone surrogate) must not stop the worker:
    # the append refuses it (INVALID_INPUT) before anything is written, and the run fails
    real = outcome_mod.parse_payload
    monkeypatch.setattr(outcome_mod, "parse_payload", lambda raw, folder: Payload(
        **{**real(raw, folder).__dict__, "output": output}))
    result, last = run_one(orch, "t.echo", "x")
    assert (result.outcome, result.error_code) == ("failed", "MALFORMED_PAYLOAD")
    assert last["type"] == "job_failed"
    assert last["data"]["error"].startswith(f"the outcome cannot be written: invalid job_succeeded data: {why}")


# -- a handler module that exits while it is imported ---------------------------------------------------
@pytest.fixture
def exiting_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Handler modules that end their import with something other than an ``Exception``."""
    for name, body in {"t_exits_on_import": "import sys; sys.exit(0)",
                       "t_interrupts_on_import": "raise KeyboardInterrupt",
                       "t_base_exception_on_import": "class Stop(BaseException): pass\nraise Stop('its own')",
                       "t_takes_sigterm_on_import": "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                                    "signal.signal(signal.SIGINT, signal.SIG_IGN)"}.items():
        (tmp_path / f"{name}.py").write_text(f"{body}\ndef fn(ctx): return {{'status': 'done', 'summary': 'x'}}\n")
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("module, raised", [("t_exits_on_import", "SystemExit: 0"),
                                            ("t_interrupts_on_import", "KeyboardInterrupt"),
                                            ("t_base_exception_on_import", "Stop: its own")])
def test_a_kind_whose_module_exits_on_import_stays_queued_and_the_worker_runs_the_next_job(
        orch, exiting_modules, module: str, raised: str) -> None:
    broken = orch.submit(f"{module}:fn", max_attempts=1)
    runnable = orch.submit("t.echo", "x")
    worker = make_worker(orch)
    with worker.handle_signals():  # as the worker command runs: SIGINT stops it through its own handler
        assert worker.run_once().job_id == runnable
        assert worker.run_once() is None
    assert orch.status(broken).state == "queued"
    reason = worker.handler_not_found().details["kinds"][f"{module}:fn"]["reason"]
    assert reason.startswith(f"importing module {module!r} raised {raised}")


def test_a_module_that_failed_to_import_is_not_imported_again_at_every_pass(orch, tmp_path, monkeypatch) -> None:
    """A pass met the job and imported its module again, each time: a pass a job when busy, and each import of a
    module that ignores SIGTERM while it imports (then exits) a moment in which the worker's SIGTERM was lost
    (``tests/acceptance/test_worker_run_edges.py`` sent it just then, and the worker ran on)."""
    import orchestrator.claiming as claiming
    from orchestrator.handlers import register

    imports = tmp_path / "imports"
    (tmp_path / "t_counts_its_imports.py").write_text(
        f"with open({str(imports)!r}, 'a') as fh:\n    fh.write('x')\nraise RuntimeError('not today')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = orch.submit("t_counts_its_imports:fn")
    worker = make_worker(orch)
    for _ in range(3):
        assert worker.run_once() is None
    assert imports.read_text() == "x"  # before: "xxx"
    assert "not today" in worker.handler_not_found().details["kinds"]["t_counts_its_imports:fn"]["reason"]
    monkeypatch.setattr(claiming, "LOOKUP_RETRY_SECONDS", 0.0)
    assert worker.run_once() is None
    assert imports.read_text() == "xx"  # tried again once the wait is over
    monkeypatch.setattr(claiming, "LOOKUP_RETRY_SECONDS", 60.0)
    register("t_counts_its_imports:fn", lambda ctx: {"status": "done", "summary": "registered"})
    assert worker.run_once().job_id == broken  # a handler registered since is used at once


def test_a_keyboard_interrupt_while_importing_for_a_worker_without_its_own_signal_handling_is_not_swallowed(
        orch, exiting_modules) -> None:
    # used from Python without handle_signals, SIGINT raises KeyboardInterrupt: it may be a real Ctrl-C
    import signal

    orch.submit("t_interrupts_on_import:fn")
    # Python's own SIGINT handler, as in a terminal: a shell's background job (pytest ... &) starts with it ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            make_worker(orch).run_once()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_module_imported_for_a_kind_cannot_take_the_workers_stop_signals(orch, exiting_modules) -> None:
    import signal

    orch.submit("t_takes_sigterm_on_import:fn")
    worker = make_worker(orch)
    with worker.handle_signals() as scope:
        assert make_worker(orch).run_once() is not None
        assert signal.getsignal(signal.SIGTERM) == scope.handler == signal.getsignal(signal.SIGINT)


# -- a terminal file with nothing in it -----------------------------------------------------------------------
@pytest.mark.parametrize("written, left", [("", "empty"), ("\\n \\t\\r\\n", "holding only whitespace")],
                         ids=["empty", "whitespace"])
def test_a_command_leaving_its_terminal_file_empty_ended_without_a_terminal_signal_saying_so(
        orch, written: str, left: str) -> None:
    """SPEC: a run that ends with no payload is NO_TERMINAL_SIGNAL_EXIT; a terminal file opened and never written
    (``cmd > "$ORCH_TERMINAL_FILE"`` of a command that printed nothing, a crash before the write) holds none."""
    argv = [PY, "-c", f"import os, sys; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write('{written}'); sys.exit(4)"]
    result, last = run_one(orch, "command", {"argv": argv})
    assert (result.outcome, result.error_code) == ("failed", "NO_TERMINAL_SIGNAL_EXIT")
    assert last["data"]["error"] == ("the process exited with status 4 without writing a terminal payload: "
                                     f"the terminal file is {left}")


def test_a_terminal_file_cut_inside_its_json_is_still_malformed_payload(orch) -> None:
    """Only a file with no JSON text at all is "no payload": a payload begun and not finished is a bad one."""
    argv = [PY, "-c", "import os; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write(' {\"status\": ')"]
    result, last = run_one(orch, "command", {"argv": argv})
    assert (result.outcome, result.error_code) == ("failed", "MALFORMED_PAYLOAD")
    assert last["data"]["error"].startswith("the terminal payload is not valid JSON")


# -- a payload over the limit is never read whole -----------------------------------------------------------
def test_a_terminal_file_of_400_mb_is_malformed_payload_without_being_read_into_the_worker(orch) -> None:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the peak so far
    argv = [PY, "-c", "import os; os.truncate(os.open(os.environ['ORCH_TERMINAL_FILE'], os.O_CREAT | os.O_WRONLY),"
                      " 400 * 1024 * 1024)"]
    result, last = run_one(orch, "command", {"argv": argv})
    assert (result.outcome, result.error_code) == ("failed", "MALFORMED_PAYLOAD")
    assert last["data"]["error"] == "the terminal payload is 419430400 bytes (at most 1048576)"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024


def test_a_terminal_file_that_is_a_fifo_is_malformed_payload_not_a_worker_blocked_forever(orch) -> None:
    import threading

    argv = [PY, "-c", "import os; os.mkfifo(os.environ['ORCH_TERMINAL_FILE'])"]
    outcome: list = []
    runner = threading.Thread(target=lambda: outcome.append(run_one(orch, "command", {"argv": argv})), daemon=True)
    runner.start()
    runner.join(20)
    assert outcome, "the worker blocked opening the FIFO"
    result, last = outcome[0]
    assert (result.outcome, result.error_code) == ("failed", "MALFORMED_PAYLOAD")
    assert "not a regular file" in last["data"]["error"]


@pytest.mark.parametrize("argv, why", [
    ([PY, "-c", "import os; os.mkdir(os.environ['ORCH_TERMINAL_FILE'])"], "not a regular file"),
    ([PY, "-c", "import os, socket; os.chdir(os.path.dirname(os.environ['ORCH_TERMINAL_FILE'])); "
                "socket.socket(socket.AF_UNIX).bind('terminal.json')"],  # relative: a socket's path is short
     "cannot be read: No such device or address"),
    ([PY, "-c", "import os; p = os.environ['ORCH_TERMINAL_FILE']; os.symlink(p, p)"],
     "is a symbolic link"),
], ids=["folder", "socket", "link-loop"])
def test_a_terminal_file_the_worker_cannot_open_or_read_is_malformed_payload_and_the_worker_goes_on(
        orch, argv: list[str], why: str) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    result, last = run_one(orch, "command", {"argv": argv})
    assert (result.outcome, result.error_code) == ("failed", "MALFORMED_PAYLOAD")
    assert why in last["data"]["error"]
    assert len(os.listdir("/proc/self/fd")) == fds  # no descriptor kept (``fdopen`` of a folder kept its fd)
    job = orch.submit("t.echo", "next")
    assert make_worker(orch).run_once().job_id == job and orch.status(job).state == "succeeded"


def test_a_terminal_file_that_is_a_link_is_never_followed_so_no_file_outside_the_run_becomes_its_payload(
        orch, tmp_path: Path) -> None:
    """The worker opened the terminal file through a link the run put at its path: any file the worker may read (a
    key, another job's file) was read as the payload, into the job's events. A link is refused as a FIFO is."""
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"status": "done", "summary": "SECRET-OUTSIDE-THE-RUN"}))
    link = f"import os; os.symlink({str(secret)!r}, os.environ['ORCH_TERMINAL_FILE'])"
    result, last = run_one(orch, "command", {"argv": [PY, "-c", link]})
    assert (result.outcome, result.error_code) == ("failed", "MALFORMED_PAYLOAD")
    assert "is a symbolic link" in last["data"]["error"]
    assert "SECRET-OUTSIDE-THE-RUN" not in json.dumps(events(orch, result.job_id))


OUTPUT_REPLACED = ("import os, sys; p = os.path.join(os.path.dirname(os.environ['ORCH_TERMINAL_FILE']), 'output.log'); "
                   "print('password=hunter2', flush=True); os.unlink(p); {make}; sys.exit(3)")


@pytest.mark.parametrize("make, why", [
    ("os.mkfifo(p)", "not a regular file"),
    ("os.mkdir(p)", "not a regular file"),
    ("os.symlink(os.environ['ORCH_CONTEXT_FILE'], p)", "cannot be read: Too many levels of symbolic links"),
], ids=["fifo", "folder", "link"])
def test_an_output_file_the_run_replaced_is_noted_in_its_failure_not_a_worker_blocked_or_stopped(
        orch, make: str, why: str) -> None:
    """A run's output file is the worker's: a FIFO in its place blocked the worker reading the failed run's tail for
    ever (no SIGTERM could stop it), a folder stopped it with a traceback, and a link was read through (any file
    the worker can read, into the event). The run fails as it would have, its tail saying what was found instead."""
    import threading

    argv = [PY, "-c", OUTPUT_REPLACED.format(make=make)]
    outcome: list = []
    runner = threading.Thread(target=lambda: outcome.append(run_one(orch, "command", {"argv": argv})), daemon=True)
    runner.start()
    runner.join(20)
    if not outcome:  # let the worker's read go, so the thread ends
        fifo = next(orch.settings.state_dir.glob("runs/run-*/output.log"))
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert outcome, "the worker blocked opening the FIFO"
    result, last = outcome[0]
    assert (result.outcome, result.error_code) == ("failed", "NO_TERMINAL_SIGNAL_EXIT")
    assert last["data"]["output_tail"].startswith("[the output file ") and why in last["data"]["output_tail"]
    job = orch.submit("t.echo", "next")
    assert make_worker(orch).run_once().job_id == job and orch.status(job).state == "succeeded"


def replace_host_output(ctx) -> dict:
    """Prints a line, then puts something else at its handler process's output path (``make``, run with ``p`` the
    path and ``target`` the input's), and returns done."""
    print("password=hunter2", flush=True)
    p, target = os.readlink("/proc/self/fd/1"), ctx.input["target"]
    os.unlink(p)
    exec(ctx.input["make"])
    return {"status": "done", "summary": "replaced"}


@pytest.mark.parametrize("make", ["os.symlink(target, p)", "os.mkfifo(p)", "os.mkdir(p)"],
                         ids=["link", "fifo", "folder"])
def test_a_handler_process_output_file_the_run_replaced_is_never_followed_and_the_next_run_gets_its_own(
        orch, tmp_path: Path, make: str) -> None:
    """The worker empties its handler process's ``runs/host-*/output.log`` after each run: through a link the run
    put there, it truncated the file the link led to (any file the worker may write). And the process went on
    writing into the file it was given, gone from the path, so every later run's record, other jobs', showed
    what was at the path instead of its output. Now nothing at the path is followed, and a handler process whose
    output file is no longer at its path is replaced."""
    register("t.replace_output", replace_host_output)
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    worker = make_worker(orch)
    job = orch.submit("t.replace_output", {"make": make, "target": str(target)}, max_attempts=1)
    assert worker.run_once().job_id == job and orch.status(job).state == "succeeded"
    assert target.read_text() == "keep me"
    nxt = orch.submit("t.print", {"text": "the next run", "payload": {"status": "failed", "summary": "s"}},
                      max_attempts=1)
    assert worker.run_once().job_id == nxt
    tail = events(orch, nxt)[-1]["data"]["output_tail"]
    assert "the next run" in tail and "[the output file" not in tail and "hunter2" not in tail
    worker.close()


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_python_handler_returning_more_than_a_mib_is_malformed_payload_and_its_process_is_kept(
        orch, mode: str) -> None:
    register("t.huge", lambda ctx: {"status": "done", "summary": "x", "output": "a" * (2 * 1024 * 1024)})
    worker = make_worker(orch, handler_process=mode)
    first = worker_pid(orch, worker)
    job = orch.submit("t.huge", max_attempts=1)
    result = worker.run_once()
    assert (result.job_id, result.error_code) == (job, "MALFORMED_PAYLOAD")
    assert "the terminal payload is 2097200 bytes (at most 1048576)" in events(orch, job)[-1]["data"]["error"]
    if mode == "reused":  # refused in the handler process, which stays
        assert worker_pid(orch, worker) == first
    worker.close()


def worker_pid(orch, worker: Worker) -> int:
    job = orch.submit("t.pid")
    worker.run_once()
    return orch.status(job).result["output"]["pid"]


def test_a_handler_process_announcing_a_frame_over_the_limit_is_replaced_and_the_frame_never_read(
        orch, monkeypatch) -> None:
    import orchestrator.handler_host as handler_host

    worker = make_worker(orch)
    # a handler process that sends more than the limit (its own check bypassed, as by a handler writing to the pipe)
    monkeypatch.setattr(handler_host, "handler_payload", lambda fn: b"x" * (handler_host.MAX_PAYLOAD_BYTES + 10))
    job = orch.submit("t.echo", "x", max_attempts=1)
    result = worker.run_once()
    assert (result.job_id, result.error_code) == (job, "MALFORMED_PAYLOAD")
    assert events(orch, job)[-1]["data"]["error"] == "the terminal payload is 1048586 bytes (at most 1048576)"
    host = worker._host
    assert host is not None and host.pid is None  # killed; the next run forks a new one
    monkeypatch.undo()
    assert worker_pid(orch, worker) == worker._host.pid
    worker.close()


# -- a cut never goes through a secret before it is sanitized -----------------------------------------------
DB_URL = "postgres://app:S3cretDbPassw0rd@db.internal/prod"


def padded(prefix_len: int, limit: int) -> str:
    """Padding so that a cut at ``limit`` characters of ``prefix + padding + DB_URL`` falls in the password."""
    return "x" * (limit - prefix_len - len("postgres://app:S3cre"))


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_handler_exception_cut_inside_a_secret_leaves_none_of_it_in_the_events(orch, mode: str) -> None:
    prefix = "handler raised ValueError: "
    text = padded(len(prefix), 2000) + DB_URL
    assert (prefix + text)[:2000].endswith("postgres://app:S3cre")

    def leaks(ctx):
        raise ValueError(text)

    register("t.leaks", leaks)
    result, last = run_one(orch, "t.leaks", handler_process=mode)
    stored = (orch.settings.state_dir / "queue" / "jobs" / f"{result.job_id}.events.jsonl").read_text()
    assert "S3cre" not in stored and "postgres://app:" in stored
    assert result.error_code == "HANDLER_ERROR" and last["data"]["summary"].endswith("...")


class SecretEcho:
    """An endpoint that answers with ``body`` and ``status``, each holding a password where the handler cuts."""

    def __init__(self, status: int, body: bytes) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        import threading

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

        self.status, self.body = status, body
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.mark.parametrize("status, body, cut, code", [
    # an HTTP error's body was read 500 bytes long, then sanitized
    (500, (padded(0, 500) + DB_URL + " and more").encode(), 500, "LLM_HTTP_ERROR"),
    # a reply that is not a chat completion was quoted by its first 200 bytes, then sanitized
    (200, (padded(0, 200) + DB_URL + " not json").encode(), 200, "LLM_BAD_RESPONSE"),
], ids=["http-error-body", "not-a-chat-completion"])
def test_an_llm_failure_quoting_the_reply_cuts_it_only_after_it_is_sanitized(
        status: int, body: bytes, cut: int, code: str) -> None:
    from orchestrator.handlers.llm import call_llm

    assert body[:cut].endswith(b"postgres://app:S3cre")
    endpoint = SecretEcho(status, body)
    try:
        failed = call_llm({"input": "x"}, {"LLM_URL": endpoint.url, "LLM_API_KEY": "k"})
    finally:
        endpoint.close()
    assert failed["error_code"] == code and "postgres://app:" in failed["summary"]
    assert "S3cre" not in failed["summary"]


def test_a_value_shown_in_a_message_is_cut_only_after_it_is_sanitized() -> None:
    from orchestrator.security import shown

    value = padded(1, 77) + DB_URL  # repr adds a quote before it
    assert repr(value)[:77].endswith("postgres://app:S3cre")
    assert "S3cre" not in shown(value) and shown(value).endswith("...") and len(shown(value)) <= 80


def test_a_short_value_shown_in_a_message_is_sanitized_too() -> None:
    from orchestrator.security import shown

    assert shown("token=abc123") == "'token=[REDACTED]'" and shown(42) == "42"


# -- secrets in an output's keys ----------------------------------------------------------------------------
def test_a_secret_in_an_output_key_is_stored_redacted_and_no_value_is_lost(orch) -> None:
    register("t.keys", lambda ctx: {"status": "done", "summary": "s",
                                    "output": {"note password=KEYSEC1": 1, "note password=KEYSEC2": 2,
                                               "rows": {"token=KEYSEC3": [3]}}})
    result, last = run_one(orch, "t.keys")
    assert result.outcome == "succeeded"
    assert last["data"]["output"] == {"note password=[REDACTED]": 1, "2-note password=[REDACTED]": 2,
                                      "rows": {"token=[REDACTED]": [3]}}
    stored = (orch.settings.state_dir / "queue" / "jobs" / f"{result.job_id}.events.jsonl").read_text()
    assert "KEYSEC" not in stored


# -- a timeout keeps the tail of what the run printed ----------------------------------------------------------
@pytest.mark.parametrize("kind, value", [
    ("command", {"argv": [PY, "-c", "import time; print('working password=hunter2', flush=True); time.sleep(30)"]}),
    ("t.print_then_sleep", None),
])
def test_a_run_killed_at_its_timeout_keeps_its_output_tail_sanitized(orch, kind: str, value: object) -> None:
    import time

    def print_then_sleep(ctx):
        print("working password=hunter2", flush=True)
        time.sleep(30)

    register("t.print_then_sleep", print_then_sleep)
    job = orch.submit(kind, value, timeout=1.0, max_attempts=1)
    result = make_worker(orch).run_once()
    assert (result.job_id, result.error_code) == (job, "NO_TERMINAL_SIGNAL_TIMEOUT")
    timeout = events(orch, job)[-1]
    assert timeout["type"] == "job_timeout"
    assert timeout["data"]["output_tail"] == "working password=[REDACTED]\n"


# -- a Python handler's process ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_sys_exit_with_a_status_in_a_python_handler_is_recorded_with_that_status(orch, mode: str) -> None:
    def exits(ctx):
        sys.exit(3)

    register("t.exit3", exits)
    result, last = run_one(orch, "t.exit3", handler_process=mode)
    assert result.error_code == "NO_TERMINAL_SIGNAL_EXIT"
    assert last["data"]["error"] == "the process exited with status 3 without writing a terminal payload"


def test_a_command_killed_by_a_signal_is_recorded_as_killed_by_that_signal_not_a_negative_status(orch) -> None:
    """What the out-of-memory killer does to a command: "exited with status -9" is no exit status."""
    result, last = run_one(orch, "command", {"argv": ["/bin/sh", "-c", "kill -KILL $$"]})
    assert result.error_code == "NO_TERMINAL_SIGNAL_EXIT"
    assert last["data"]["error"] == "the process was killed by signal 9 (SIGKILL) without writing a terminal payload"


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_python_handler_whose_process_a_signal_kills_is_recorded_with_that_signal(orch, mode: str) -> None:
    def segfaults(ctx):
        os.kill(os.getpid(), signal.SIGSEGV)

    register("t.segv", segfaults)
    result, last = run_one(orch, "t.segv", handler_process=mode)
    assert result.error_code == "NO_TERMINAL_SIGNAL_EXIT"
    assert last["data"]["error"] == "the process was killed by signal 11 (SIGSEGV) without writing a terminal payload"


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_python_handler_reads_its_stdin_from_dev_null_as_a_command_does(orch, mode: str) -> None:
    import os

    def reads_stdin(ctx):
        return {"status": "done", "summary": "read", "output": {"stdin": os.path.realpath("/proc/self/fd/0"),
                                                                 "read": os.read(0, 100).decode()}}

    register("t.stdin", reads_stdin)
    read_end, write_end = os.pipe()  # a worker whose stdin is a pipe someone still writes to
    saved = os.dup(0)
    os.dup2(read_end, 0)
    try:
        os.write(write_end, b"the worker's own input\n")
        result, last = run_one(orch, "t.stdin", handler_process=mode)
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)
    assert result.outcome == "succeeded" and last["data"]["output"] == {"stdin": "/dev/null", "read": ""}


# -- what a run leaves running ends with the run ---------------------------------------------------------------


def left_pid(path: Path) -> int:
    return int(path.read_text().split()[0])


@pytest.fixture
def leftover(tmp_path: Path):
    """Where a test's leftover process writes its pid; killed at the end if the code under test did not."""
    import os
    import signal

    pidfile = tmp_path / "left.pid"
    yield pidfile
    if pidfile.exists() and alive(left_pid(pidfile)):
        os.kill(left_pid(pidfile), signal.SIGKILL)


LEAVE_ONE = """
import json, os, subprocess, sys, time
pidfile = sys.argv[1]
leftover = ("import os, signal, sys, time\\n"
            + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n" if sys.argv[2] == "ignore" else "")
            + "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); os.rename(sys.argv[1] + '.tmp', sys.argv[1])\\n"
            + "time.sleep(313)")
subprocess.Popen([sys.executable, "-c", leftover, pidfile])
while not os.path.exists(pidfile):
    time.sleep(0.01)
json.dump({"status": "done", "summary": "ok"}, open(os.environ["ORCH_TERMINAL_FILE"], "w"))
"""


@pytest.mark.parametrize("sigterm", ["obey", "ignore"])
def test_a_command_that_exits_leaving_a_background_process_has_it_killed_before_its_outcome(
        orch, leftover: Path, sigterm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from orchestrator import runner

    # one that obeys SIGTERM is not kept for the grace: told with a 30 s grace, which two Python starts on a loaded
    # host cannot reach (against the 1 s grace they did, at load 13, on unchanged code)
    grace = 30.0 if sigterm == "obey" else runner.LEFTOVER_GRACE_SECONDS
    monkeypatch.setattr(runner, "LEFTOVER_GRACE_SECONDS", grace)
    pidfile = leftover
    started = time.monotonic()
    result, _last = run_one(orch, "command", {"argv": [PY, "-c", LEAVE_ONE, str(pidfile), sigterm]})
    took = time.monotonic() - started
    assert result.outcome == "succeeded"
    assert not alive(left_pid(pidfile))  # gone when the outcome is recorded
    assert took >= grace if sigterm == "ignore" else took < grace / 2  # SIGKILL only after the grace period


LEAVES = {
    "child": "import subprocess; p = subprocess.Popen(['sleep', '313'])\nPID = p.pid",
    "setsid-child": "import subprocess; p = subprocess.Popen(['sleep', '313'], start_new_session=True)\nPID = p.pid",
    "orphan-in-its-own-session": "import subprocess\nPID = int(subprocess.run(['sh', '-c', 'setsid sleep 313 "
                                 "> /dev/null 2>&1 & echo $!'], capture_output=True, text=True).stdout)",
}


@pytest.mark.parametrize("leaves", LEAVES)
@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_python_handler_leaving_a_process_running_has_it_killed_when_its_run_ends(
        orch, leftover: Path, mode: str, leaves: str) -> None:
    pidfile = leftover

    def leaves_one(ctx):
        scope: dict = {}
        exec(LEAVES[leaves], scope)
        pidfile.write_text(str(scope["PID"]))
        return {"status": "done", "summary": "left one", "output": {"pid": os.getpid()}}

    import os

    register("t.leaves", leaves_one)
    worker = make_worker(orch, handler_process=mode)
    result = worker.run_once() if orch.submit("t.leaves") else None
    assert result.outcome == "succeeded"
    assert not alive(left_pid(pidfile))
    if mode == "reused":  # the handler process itself is kept for the next run
        host = orch.status(result.job_id).result["output"]["pid"]
        assert alive(host) and worker_pid(orch, worker) == host
    worker.close()


def test_a_python_handler_process_gives_the_processes_its_run_starts_the_runs_ids(orch) -> None:
    import subprocess

    def env_of_child(ctx):
        out = subprocess.run(["sh", "-c", "echo $ORCH_JOB_ID $ORCH_RUN_ID"], capture_output=True, text=True).stdout
        return {"status": "done", "summary": "ids", "output": out.split()}

    register("t.child_env", env_of_child)
    for mode in ("reused", "per-run"):
        result, last = run_one(orch, "t.child_env", handler_process=mode)
        assert last["data"]["output"] == [result.job_id, result.run_id]


def test_stale_recovery_kills_only_the_processes_of_the_run_it_recovers(tmp_path: Path) -> None:
    import os
    import subprocess

    from orchestrator.leftovers import kill_run_processes

    procs = {run: subprocess.Popen(["sleep", "313"], env={**os.environ, "ORCH_RUN_ID": run})
             for run in ("run-aaaa", "run-aaaab", "run-other")}
    try:
        killed = kill_run_processes("run-aaaa")
        assert killed == [procs["run-aaaa"].pid]
        assert procs["run-aaaa"].wait(5) == -9
        assert procs["run-aaaab"].poll() is None and procs["run-other"].poll() is None  # a prefix is not the id
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


NAMED_AND_BLOCK = """
import sys, time
from orchestrator.leftovers import set_run_environment
from orchestrator.libc import load_libc
set_run_environment({"job_id": "j", "run_id": sys.argv[1]}, load_libc())  # as a Python handler's process does
print("named", flush=True)
time.sleep(313)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, prctl and pidfds")
def test_stale_recovery_finds_a_python_handlers_process_by_the_runs_name_and_only_a_live_one_of_that_run() -> None:
    """The run's ``ORCH_RUN_ID`` a handler process puts in its own environment is not in ``/proc/<pid>/environ``:
    before 2026-12-06 stale recovery, which looked only there, never found a paused worker's handler process."""
    import os
    import subprocess

    from helpers import REPO, wait_until
    from orchestrator.leftovers import kill_run_processes

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = {run: subprocess.Popen([sys.executable, "-c", NAMED_AND_BLOCK, run], env=env, stdout=subprocess.PIPE,
                                   text=True) for run in ("run-aaaa", "run-aaaab", "run-0123456789abcdef")}
    try:
        for proc in procs.values():
            assert proc.stdout is not None and proc.stdout.readline() == "named\n"
        assert kill_run_processes("run-aaaa") == []  # its environment as /proc shows it: the one it started with
        assert kill_run_processes("run-aaaa", named=True) == [procs["run-aaaa"].pid]
        assert procs["run-aaaa"].wait(5) == -9
        assert procs["run-aaaab"].poll() is None  # a prefix of a name is not that name
        assert kill_run_processes("run-f123456789abcdef", named=True) == []  # another id
        # the kernel keeps 15 characters of a name, and only they are compared: a run id's first 11 hex digits
        # (44 random bits) tell it from every other run on the machine
        zombie = procs["run-0123456789abcdef"]
        zombie.kill()  # not reaped: a zombie (a handler process killed, its worker paused) is not named again
        wait_until(lambda: not alive(zombie.pid), what="the process to die")
        assert kill_run_processes("run-0123456789abcdef", named=True) == []
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()


SETSID_AND_BLOCK = """
import os, subprocess, sys, time
p = subprocess.Popen(["sleep", "313"], start_new_session=True)  # out of the run's process group
open(sys.argv[1] + ".tmp", "w").write(str(p.pid)); os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(313)
"""


@pytest.mark.parametrize("kind", ["command", "python"])
def test_a_timeout_also_kills_what_the_run_started_in_a_session_of_its_own(orch, leftover: Path, kind: str) -> None:
    def setsid_and_block(ctx):
        sys.argv[1:] = [str(leftover)]
        exec(SETSID_AND_BLOCK, {})

    register("t.setsid_and_block", setsid_and_block)
    value = {"argv": [PY, "-c", SETSID_AND_BLOCK, str(leftover)]} if kind == "command" else None
    job = orch.submit("command" if kind == "command" else "t.setsid_and_block", value, timeout=1.0, max_attempts=1)
    result = make_worker(orch).run_once()
    assert (result.job_id, result.error_code) == (job, "NO_TERMINAL_SIGNAL_TIMEOUT")
    assert not alive(left_pid(leftover))
    # and its result names it, as a run that exited or was cancelled has (until 2026-12-07: nothing)
    [said] = [w["message"] for w in result.warnings if w["code"] == "RUN_PROCESSES_KILLED"]
    assert f"pid {left_pid(leftover)}" in said and "at its timeout" in said


@pytest.mark.parametrize("mode, kind", [("reused", "t.wait"), ("per-run", "t.wait"), ("reused", "command")])
def test_a_run_the_worker_can_no_longer_watch_is_killed_before_the_error_stops_the_worker(
        orch, monkeypatch, tmp_path: Path, mode: str, kind: str) -> None:
    """A heartbeat that fails with an error the worker stops on (a link planted in the lease record's place:
    PATH_ESCAPE; before 2026-12-02 also a full disk on files, now retried while the lease holds) left the run's
    process running, unwatched: a Python handler's process, which stale recovery cannot find by its
    ``ORCH_RUN_ID``, then ran beside the job's retry."""
    import orchestrator.heartbeat as heartbeat_mod
    from orchestrator.errors import PathEscapeError

    started = tmp_path / "started"
    if kind == "command":
        value: object = {"argv": ["sh", "-c", 'echo "{\\"pid\\": $$}" > "$0"; exec sleep 60', str(started)]}
    else:
        value = {"started": str(started), "release": str(tmp_path / "never"), "max_wait": 60}

    def linked(*_a, **_k) -> None:
        pid_written(started, 10)
        raise PathEscapeError("leases/x is a symbolic link")

    monkeypatch.setattr(heartbeat_mod, "write_lease", linked)
    orch.submit(kind, value)
    worker = make_worker(orch, handler_process=mode, lease_seconds=0.3)
    with pytest.raises(PathEscapeError):
        worker.run_once()
    pid = pid_written(started, 10)
    assert not alive(pid)  # before the fix: still running, its run over for the worker
    worker.close()


def test_a_stop_signal_just_after_a_command_is_reaped_never_signals_its_group_after_the_reap(orch, monkeypatch) -> None:
    """A SIGTERM handled between reaping a command and storing its exit status raised ``WorkerStop`` out of the
    wait, and the next wait sent the group its SIGTERM again, after the leader was reaped: the group's id is
    then free for the system to give to an unrelated process group."""
    import os
    import signal
    import subprocess

    worker = make_worker(orch)
    real_wait, real_killpg = subprocess.Popen.wait, os.killpg
    signalled: list[bool] = []
    group_signals: list[tuple[int, bool]] = []  # (signal, whether the group's leader was still there, a zombie)

    def wait_then_signal(proc, *args, **kwargs):
        code = real_wait(proc, *args, **kwargs)
        if not signalled and sys._getframe(1).f_code.co_name == "_exited":  # the reap of the run's wait
            signalled.append(True)
            worker.stop_request.on_signal(signal.SIGTERM, None)  # the signal arrives just after the reap returned
        return code

    def killpg(pgid: int, sig: int) -> None:
        if sig:  # 0 only asks whether the group has a member
            group_signals.append((sig, os.path.exists(f"/proc/{pgid}")))
        real_killpg(pgid, sig)

    code = "import os; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write('{\"status\": \"done\", \"summary\": \"ok\"}')"
    job = orch.submit("command", {"argv": [PY, "-c", code]})
    monkeypatch.setattr(subprocess.Popen, "wait", wait_then_signal)
    monkeypatch.setattr(os, "killpg", killpg)
    result = worker.run_once()
    monkeypatch.undo()
    assert signalled and worker.stopping
    assert (result.job_id, result.outcome) == (job, "succeeded")
    assert group_signals and all(present for _sig, present in group_signals), group_signals


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_handler_exception_whose_text_is_not_unicode_is_a_handler_error_with_its_message(orch, mode: str) -> None:
    """A message built from bytes that are not UTF-8 (a file name, ``os.fsdecode``) holds lone surrogates: it was
    recorded as ``MALFORMED_PAYLOAD`` ("summary: Input should be a valid string") and the message was lost."""
    def raises(ctx):
        raise OSError("cannot open caf\udce9.csv")

    register("t.raises_bytes", raises)
    result, last = run_one(orch, "t.raises_bytes", handler_process=mode)
    assert result.error_code == "HANDLER_ERROR", last
    assert "cannot open caf" in last["data"]["summary"] and ".csv" in last["data"]["summary"]


class TextlessError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_handler_exception_whose_text_cannot_be_read_is_a_handler_error_and_the_handler_process_stays(
        orch, mode: str) -> None:
    """An exception whose ``__str__`` raises: the handler process died formatting it (``NO_TERMINAL_SIGNAL_EXIT``,
    "exited with status 1"), the reused one with it."""
    def raises(ctx):
        raise TextlessError("x")

    register("t.textless", raises)
    worker = make_worker(orch, handler_process=mode)
    first = worker_pid(orch, worker)
    job = orch.submit("t.textless", max_attempts=1)
    result = worker.run_once()
    last = events(orch, job)[-1]
    assert (result.job_id, result.error_code) == (job, "HANDLER_ERROR"), last
    assert last["data"]["summary"] == "handler raised TextlessError (its text cannot be read: its __str__ raised)"
    if mode == "reused":
        assert worker_pid(orch, worker) == first
    worker.close()


def _stderr_closed(ctx):
    sys.stderr.close()
    raise RuntimeError("boom")


def _fd_2_closed(ctx):
    os.close(2)
    raise RuntimeError("boom")


@pytest.mark.parametrize("mode", ["reused", "per-run"])
@pytest.mark.parametrize("unusable", [_stderr_closed, _fd_2_closed], ids=["sys.stderr-closed", "fd-2-closed"])
def test_a_handler_that_raises_after_making_its_stderr_unusable_is_a_handler_error_with_its_message(
        orch, mode: str, unusable) -> None:
    """The traceback goes to stderr; one that cannot be printed there (closed, or a full disk) raised out of the
    ``except`` that makes the payload, and the run ended as NO_TERMINAL_SIGNAL_EXIT, the exception lost."""
    register("t.stderr_unusable", unusable)
    worker = make_worker(orch, handler_process=mode)
    job = orch.submit("t.stderr_unusable", max_attempts=1)
    result = worker.run_once()
    last = events(orch, job)[-1]
    assert (result.job_id, result.error_code) == (job, "HANDLER_ERROR"), last
    assert last["data"]["summary"] == "handler raised RuntimeError: boom"
    assert worker_pid(orch, worker)  # and the next run goes on, in a handler process with its stderr back
    worker.close()


def pid_written(started: Path, seconds: float) -> int:
    """The pid a run wrote in ``started``, once it is there whole (a shell's ``> file`` makes the file before its
    ``echo`` writes: read at once, it was empty, a JSONDecodeError under load)."""
    def written() -> int | None:
        try:
            return json.loads(started.read_text())["pid"]
        except (FileNotFoundError, ValueError):
            return None

    return wait_until(written, seconds, f"a pid in {started}")  # type: ignore[return-value]


# -- a cancel while the job runs ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["t.wait", "command"])
def test_a_cancelled_running_job_is_stopped_by_its_worker_and_stays_cancelled(orch, tmp_path: Path, kind) -> None:
    """SPEC: any non-final state -> cancel -> cancelled. The worker kills the run at its next heartbeat (not when
    the handler is done), records nothing after the cancel, and the job ends cancelled."""
    import threading

    started = tmp_path / "started"
    if kind == "command":
        value: object = {"argv": ["sh", "-c", 'echo "{\\"pid\\": $$}" > "$0"; exec sleep 60', str(started)]}
    else:
        value = {"started": str(started), "release": str(tmp_path / "never"), "max_wait": 60}
    job_id = orch.submit(kind, value)
    worker = Worker(orch, WorkerSettings(worker_id="w1", lease_seconds=0.6), rng=random.Random(7))
    results: list = []
    runner = threading.Thread(target=lambda: results.append(worker.run_once()))
    t0 = time.monotonic()
    runner.start()
    pid = pid_written(started, 20)
    assert orch.cancel(job_id, "not needed any more").applied
    runner.join(timeout=20)
    worker.close()
    assert not runner.is_alive() and time.monotonic() - t0 < 15, "the worker waited for the handler to finish"
    assert results[0].outcome == "lease_lost" and not alive(pid)
    assert orch.status(job_id).state == "cancelled"
    assert [json.loads(s.raw)["type"] for s in orch.store.read(job_id)][-1] == "job_cancelled"


def test_a_cancelled_runs_result_names_what_it_left_running_that_its_worker_killed(orch, tmp_path: Path) -> None:
    """``lease_lost`` says what the kill of the cancelled run ended besides the handler (``RUN_PROCESSES_KILLED``), as
    the result of a run that exited does, and as stale recovery does for a run whose worker died. Until 2026-12-07
    (twenty-ninth session) it said nothing of it."""
    import threading

    started = tmp_path / "started"
    job_id = orch.submit("command", {"argv": ["sh", "-c", 'sleep 313 & echo "{\\"pid\\": $!}" > "$0"; exec sleep 60',
                                              str(started)]})
    worker = Worker(orch, WorkerSettings(worker_id="w1", lease_seconds=0.6), rng=random.Random(7))
    results: list = []
    runner = threading.Thread(target=lambda: results.append(worker.run_once()))
    runner.start()
    deadline = time.monotonic() + 20
    while not (started.exists() and started.read_text().endswith("\n")) and time.monotonic() < deadline:
        time.sleep(0.01)
    left = json.loads(started.read_text())["pid"]
    assert orch.cancel(job_id, "not needed any more").applied
    runner.join(timeout=20)
    worker.close()
    assert results[0].outcome == "lease_lost" and not alive(left)
    [said] = [w["message"] for w in results[0].warnings if w["code"] == "RUN_PROCESSES_KILLED"]
    assert said.startswith(f"killed 1 process(es) left running by run {results[0].run_id} of job {job_id} ")
    assert f"(pid {left})" in said and "cancelled" in said


def test_a_cancel_written_as_the_handler_finishes_wins_over_its_result(orch, tmp_path: Path) -> None:
    """The handler returned ``done`` and the worker is about to record it when an operator's cancel is written
    (another process): the result is refused (LEASE_LOST), nothing is written after the cancel."""
    from orchestrator import Orchestrator, faults

    job_id = orch.submit("t.echo", {"x": 1})
    operator = Orchestrator(base_path=orch.settings.base_path, project_id=orch.project_id, keyring=orch.keyring)
    faults.arm("worker.before_outcome", lambda: operator.cancel(job_id, "stop"))
    try:
        with Worker(orch, WorkerSettings(worker_id="w1"), rng=random.Random(7)) as worker:
            result = worker.run_once()
    finally:
        faults.disarm_all()
    assert result.outcome == "lease_lost"
    types = [json.loads(s.raw)["type"] for s in orch.store.read(job_id)]
    assert types == ["job_submitted", "job_claimed", "job_cancelled"]
    assert orch.status(job_id).state == "cancelled"
