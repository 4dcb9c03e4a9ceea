"""submit / status / verify as an operator runs them: real scripts, real files, real exit codes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, run_module, run_script


def submit(env: dict[str, str], *args: str) -> str:
    proc = run_script("submit", "--kind", "command", "--input", '{"argv": ["echo", "hi"]}', "--json", *args,
                      env=env, check=True)
    return json.loads(proc.stdout)["job_id"]


def test_submit_then_status_shows_a_queued_job(cli_env: dict[str, str]) -> None:
    job_id = submit(cli_env)
    proc = run_script("status", job_id, "--json", env=cli_env, check=True)
    st = json.loads(proc.stdout)
    assert st["job_id"] == job_id and st["state"] == "queued" and st["attempt"] == 0 and "run_id" in st
    text = run_script("status", job_id, env=cli_env, check=True).stdout
    assert "queued" in text and job_id in text


def test_the_events_file_is_where_the_spec_says_and_each_line_is_json(cli_env: dict[str, str], base: Path) -> None:
    job_id = submit(cli_env)
    path = base / "proj" / ".orchestrator" / "queue" / "jobs" / f"{job_id}.events.jsonl"
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 2
    rec = json.loads(lines[0])
    assert {"v", "seq", "job_id", "run_id", "type", "ts", "actor", "data", "prev", "kid", "sig"} <= rec.keys()
    assert rec["type"] == "job_submitted"


def test_same_idempotency_key_returns_the_same_job_id_and_writes_nothing(cli_env: dict[str, str], base: Path) -> None:
    first = submit(cli_env, "--key", "nightly")
    second = submit(cli_env, "--key", "nightly")
    assert first == second
    assert len(list((base / "proj" / ".orchestrator" / "queue" / "jobs").iterdir())) == 1


def test_same_key_with_different_input_is_refused(cli_env: dict[str, str]) -> None:
    submit(cli_env, "--key", "k1")
    proc = run_script("submit", "--kind", "command", "--input", '{"argv": ["rm"]}', "--key", "k1", "--json", env=cli_env)
    assert proc.returncode == 3 and json.loads(proc.stdout)["error"] == "INVALID_INPUT"


def test_an_idempotency_key_that_is_not_an_id_is_refused_with_exit_3_and_never_stored(cli_env: dict[str, str],
                                                                                       base: Path) -> None:
    for key in ("deploy password=hunter2", "a\nb"):
        proc = run_script("submit", "--kind", "ok", "--input", "{}", "--key", key, env=cli_env)
        assert proc.returncode == 3 and "error[INVALID_ID]: invalid idempotency key" in proc.stderr
        assert "hunter2" not in proc.stderr
    assert not (base / "proj" / ".orchestrator" / "queue" / "jobs").exists()


def test_input_file_and_stdin_are_accepted(cli_env: dict[str, str], tmp_path: Path) -> None:
    f = tmp_path / "in.json"
    f.write_text('{"x": [1, 2]}')
    run_script("submit", "--kind", "k", "--input-file", str(f), env=cli_env, check=True)
    proc = run_script("submit", "--kind", "k", "--input-file", "-", "--json", env=cli_env, input='{"y": 1}', check=True)
    assert json.loads(proc.stdout)["created"] is True


def test_input_is_utf8_json_alike_on_the_command_line_and_from_a_file(cli_env: dict[str, str], base: Path,
                                                                      tmp_path: Path) -> None:
    """The argument's own bytes (``$'\\xef\\xbb\\xbf{...}'``, ``$'\\xe9'``) are read as a file's are: a UTF-8 byte
    order mark dropped, anything but UTF-8 refused (exit 3), as is a key twice; nothing written when refused."""
    proc = run_script("submit", "--kind", "k", "--input", '\ufeff{"a": 1}', "--json", env=cli_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # before: "Unexpected UTF-8 BOM", exit 3
    f = tmp_path / "in.json"
    f.write_bytes('{"a": 1}'.encode("utf-16"))
    refused = [run_script("submit", "--kind", "k", "--input-file", str(f), env=cli_env),  # before: taken
               run_script("submit", "--kind", "k", "--input", '{"a": "\udce9"}', env=cli_env),  # the byte 0xe9
               run_script("submit", "--kind", "k", "--input", '{"a": 1, "a": 2}', env=cli_env)]  # before: {"a": 2}
    assert [p.returncode for p in refused] == [3, 3, 3]
    assert f"error[INVALID_INPUT]: --input-file {f} is not valid JSON: it is UTF-16 text" in refused[0].stderr
    assert "--input is not valid JSON: it is not UTF-8 (byte 0xe9 at offset 7" in refused[1].stderr
    assert "--input has the key 'a' twice (at $)" in refused[2].stderr
    assert len(list((base / "proj" / ".orchestrator" / "queue" / "jobs").iterdir())) == 1  # the first one's


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
@pytest.mark.parametrize("args, limit", [(("submit", "--kind", "k", "--input-file", "/dev/zero"), "1048576"),
                                         (("verify", "--against", "/dev/zero"), "268435456")],
                         ids=["submit-input-file", "verify-against"])
def test_a_file_that_never_ends_is_refused_as_over_its_limit_without_being_read_whole(
        cli_env: dict[str, str], base: Path, args: tuple[str, ...], limit: str) -> None:
    """``/dev/zero`` (or a pipe that never closes) given by mistake: the command reads one byte past its limit and
    exits 3, in a process whose memory is capped at 1 GiB (reading the device whole would exhaust it: exit 1)."""
    import resource

    cap = 1 << 30
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / f"{args[0]}.py"), *args[1:], "--json"],
                          env=cli_env, cwd=str(REPO), capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
    assert proc.returncode == 3, proc.stderr[-2000:]
    error = json.loads(proc.stdout)
    assert error["error"] == "INVALID_INPUT" and f"/dev/zero holds more than {limit} bytes" in error["message"]
    assert not (base / "proj" / ".orchestrator" / "queue" / "jobs").exists()  # nothing written


def test_status_all_filters_by_state(cli_env: dict[str, str]) -> None:
    a, b = submit(cli_env), submit(cli_env)
    data = json.loads(run_script("status", "--all", "--state", "queued", "--json", env=cli_env, check=True).stdout)
    assert {j["job_id"] for j in data["jobs"]} == {a, b}
    none = json.loads(run_script("status", "--all", "--state", "succeeded", "--json", env=cli_env, check=True).stdout)
    assert none["count"] == 0


def test_status_all_filters_by_kind_and_state_together(cli_env: dict[str, str]) -> None:
    command = submit(cli_env)
    other = json.loads(run_script("submit", "--kind", "nobody.handles.this", "--input", "{}", "--json", env=cli_env,
                                  check=True).stdout)["job_id"]
    listed = lambda *args: {j["job_id"] for j in json.loads(run_script(  # noqa: E731
        "status", *args, "--json", env=cli_env, check=True).stdout)["jobs"]}
    assert listed("--all", "--kind", "command") == {command}
    assert listed("--kind", "nobody.handles.this") == {other}  # a filter lists, as --state does
    assert listed("--all", "--kind", "command", "--kind", "nobody.handles.this") == {command, other}
    assert listed("--all", "--kind", "command", "--state", "succeeded") == set()
    for no_kind in ("", "k" * 201):  # what no job can have, as `worker --kind` says: not an empty list
        refused = run_script("status", "--all", "--kind", no_kind, "--json", env=cli_env)
        assert refused.returncode == 2 and "a job kind is 1 to 200 characters" in json.loads(refused.stdout)["message"]


def test_expected_errors_have_codes_exit_codes_and_no_traceback(cli_env: dict[str, str]) -> None:
    cases = [
        (("status", "no-such-job"), 4, "JOB_NOT_FOUND"),
        (("status", "../../etc/passwd"), 3, "INVALID_ID"),
        (("submit", "--kind", "k", "--input", "{not json"), 3, "INVALID_INPUT"),
        (("submit", "--kind", "k", "--input", "1", "--project-id", "../x"), 3, "INVALID_ID"),
    ]
    for (name, *args), code, error in cases:
        proc = run_script(name, *args, env=cli_env)
        assert proc.returncode == code, (args, proc.stdout, proc.stderr)
        assert f"error[{error}]" in proc.stderr and "Traceback" not in proc.stderr
        as_json = run_script(name, *args, "--json", env=cli_env)
        assert json.loads(as_json.stdout)["error"] == error


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_an_input_holding_nan_or_an_infinity_is_refused_saying_so(cli_env: dict[str, str], number: str) -> None:
    """It said "not plain JSON: Out of range float values are not JSON compliant", Python's words for it."""
    proc = run_script("submit", "--kind", "k", "--input", f'{{"a": [{number}]}}', env=cli_env)
    assert proc.returncode == 3 and proc.stderr.startswith(
        "error[INVALID_INPUT]: the job input is not plain JSON: it holds NaN or an infinity (NaN, Infinity, -Infinity, "
        "or a number past a float's range such as 1e999), which JSON does not allow"), proc.stderr


def test_an_empty_project_base_path_or_store_on_the_command_line_is_refused_not_replaced_by_the_default(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    """``--project-id "$PROJ"`` with ``PROJ`` unset must not act on another project: an empty value typed (or given
    to ``Orchestrator``) is an error; so is the same variable set empty (``test_which_store``), which click reads as
    unset."""
    env = {**cli_env, "PROJECT_ID": "other", "BASE_PATH": str(tmp_path / "b")}
    for args, code, error in [(("--project-id", ""), 3, "INVALID_ID"), (("--base-path", ""), 3, "CONFIG_ERROR"),
                              (("--store", ""), 3, "CONFIG_ERROR")]:
        proc = run_script("submit", "--kind", "k", *args, "--json", env=env)
        assert proc.returncode == code and json.loads(proc.stdout)["error"] == error, (args, proc.stdout, proc.stderr)
    assert not (tmp_path / "b").exists()  # nothing written anywhere
    empty = run_script("submit", "--kind", "k", env={**env, "PROJECT_ID": ""})
    assert empty.returncode == 3 and empty.stderr.startswith("error[CONFIG_ERROR]: PROJECT_ID is set but empty")


@pytest.mark.parametrize("store, said", [("", "--store / store_url must not be empty"),
                                         ("bogus", "ORCH_STORE_URL / --store must be 'file' or a postgresql:// URL, "
                                                   "not 'bogus'")])
@pytest.mark.parametrize("command", [["db", "status"], ["db", "migrate"], ["status", "--all"]])
def test_a_store_that_is_neither_file_nor_a_postgresql_url_is_refused_alike_by_every_command(
        cli_env: dict[str, str], command: list[str], store: str, said: str) -> None:
    """``db`` said "the file backend has no schema" of them, as if 'file' had been given."""
    from click.testing import CliRunner

    from orchestrator.cli import cli

    for how, env in (("option", cli_env), ("environment", {**cli_env, "ORCH_STORE_URL": store})):
        if how == "environment" and not store:  # click reads it as unset; refused all the same
            said = "ORCH_STORE_URL is set but empty (in the environment)"
        args = [*command, *(["--store", store] if how == "option" else []), "--json"]
        result = CliRunner().invoke(cli, args, env=env)
        error = json.loads(result.stdout)
        assert (result.exit_code, error["error"]) == (3, "CONFIG_ERROR") and error["message"].startswith(said), how


def test_a_store_url_of_another_database_is_refused_naming_it_without_its_password(cli_env: dict[str, str]) -> None:
    """It said "must be 'file' or a postgresql:// URL" without the value: which of the settings was wrong?"""
    for args, env in ((("--store", "mysql://orch:S3cretPW@db/jobs"), cli_env),
                      ((), {**cli_env, "ORCH_STORE_URL": "mysql://orch:S3cretPW@db/jobs"})):
        for command in (("status", "--all"), ("db", "status")):
            proc = run_module(*command, *args, "--json", env=env)
            error = json.loads(proc.stdout)
            assert (proc.returncode, error["error"]) == (3, "CONFIG_ERROR"), proc.stdout
            assert error["message"] == ("ORCH_STORE_URL / --store must be 'file' or a postgresql:// URL, not "
                                        "'mysql://orch:[REDACTED]@db/jobs'"), error
            assert "S3cretPW" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("command", ["migrate", "status"])
def test_db_help_names_no_default_store_since_the_file_backend_has_no_schema(
        cli_env: dict[str, str], command: str) -> None:
    """``db status -h`` said ``[default: file]``, a default every ``db`` command refuses (exit 3)."""
    text = " ".join(run_module("db", command, "-h", env=cli_env).stdout.split())
    assert "default: file" not in text and "--store TEXT A postgresql:// URL" in text, text
    assert "[env var: ORCH_STORE_URL]" in text


def test_usage_errors_exit_2(cli_env: dict[str, str]) -> None:
    assert run_script("submit", "--input", "{}", env=cli_env).returncode == 2  # --kind missing
    assert run_script("status", "--token", "x", env=cli_env).returncode == 2


@pytest.mark.parametrize("args", [("submit", "--kind", "k", "--input-file", "password=hunter2-for-the-db"),
                                  ("worker", "--once", "--lease-seconds", "token=hunter2-for-the-db")])
def test_a_usage_error_that_echoes_what_was_typed_is_sanitized_as_every_other_output(
        cli_env: dict[str, str], args: tuple[str, ...]) -> None:
    """click's own usage errors (a missing file, a value its type refuses) quote the command line back; like every
    error the command prints, they pass through ``sanitize_text``, with or without ``--json``."""
    for json_flag in ((), ("--json",)):
        proc = run_script(*args, *json_flag, env=cli_env)
        assert proc.returncode == 2, proc.stderr
        assert "hunter2" not in proc.stdout + proc.stderr and "[REDACTED]" in proc.stdout + proc.stderr, proc.stderr


def test_a_bad_value_from_the_environment_is_a_config_error_and_the_same_value_as_an_option_a_usage_error(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    """An ``ORCH_*`` variable (or a ``.env`` line) with a value its option refuses is a setting to fix where the
    process is deployed: ``CONFIG_ERROR``, exit 3, naming the variable. Typed on the command line it is exit 2."""
    cases = [("worker", "--once", "ORCH_LEASE_SECONDS", "abc"), ("worker", "--once", "ORCH_HANDLER_PROCESS", "bogus"),
             ("worker", "--idle-exit", "ORCH_MAX_JOBS", "0"), ("metrics", "--rebuild", "ORCH_STALL_GRACE_SECONDS", "x"),
             ("status", "--all", "BASE_PATH", str(REPO / "README.md")),  # a file where the folder belongs
             ("worker", "--once", "ORCH_WORKER_KINDS", "t.echo," + "k" * 201),  # read by the command, not by click
             ("worker", "--once", "ORCH_WAKEUP", "bogus"), ("status", "--all", "ORCH_STRICT_READS", "2"),
             ("status", "--all", "ORCH_PG_DEADLINE_SECONDS", "-1")]
    for name, first, variable, value in cases:
        proc = run_script(name, first, "--json", env={**cli_env, variable: value})
        assert proc.returncode == 3, (variable, proc.stdout, proc.stderr)
        error = json.loads(proc.stdout)
        assert error["error"] == "CONFIG_ERROR" and variable in error["message"], error
        text = run_script(name, first, env={**cli_env, variable: value})
        assert text.returncode == 3 and "error[CONFIG_ERROR]" in text.stderr and variable in text.stderr
    (tmp_path / ".env").write_text("ORCH_LEASE_SECONDS=abc\n")
    from_dotenv = subprocess.run([sys.executable, str(REPO / "scripts" / "worker.py"), "--once", "--json"],
                                 env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert from_dotenv.returncode == 3 and json.loads(from_dotenv.stdout)["error"] == "CONFIG_ERROR"
    typed = run_script("worker", "--once", "--lease-seconds", "abc", "--json", env=cli_env)
    assert typed.returncode == 2 and json.loads(typed.stdout)["error"] == "USAGE_ERROR"


def test_help_is_available_and_shows_environment_variables(cli_env: dict[str, str]) -> None:
    for name in ("submit", "status", "verify"):
        proc = run_script(name, "-h", env=cli_env, check=True)
        assert "BASE_PATH" in proc.stdout and "PROJECT_ID" in proc.stdout and "--json" in proc.stdout


def test_an_option_left_out_means_what_the_library_uses_when_it_is_left_out() -> None:
    import inspect

    from orchestrator.api import Orchestrator
    from orchestrator.cli import cli
    from orchestrator.event_models import JobOptions
    from orchestrator.worker import WorkerSettings

    def cli_defaults(name: str) -> dict[str, object]:
        command = cli.get_command(None, name)  # type: ignore[arg-type]
        assert command is not None
        return {p.name: p.default for p in command.params}

    submit, api = cli_defaults("submit"), inspect.signature(Orchestrator.submit_job).parameters
    for name in ("max_attempts", "priority"):
        assert submit[name] == api[name].default == JobOptions.model_fields[name].default, name
    worker = cli_defaults("worker")
    for name in ("lease_seconds", "stop_grace_seconds", "retry_base_seconds", "retry_max_seconds", "handler_process",
                 "handler_max_runs"):
        assert worker[name] == getattr(WorkerSettings(), name), name


def test_verify_passes_then_names_file_and_line_of_an_edit_and_exits_7(cli_env: dict[str, str], base: Path) -> None:
    job_id = submit(cli_env)
    ok = run_script("verify", env=cli_env)
    assert ok.returncode == 0 and "OK" in ok.stdout
    path = base / "proj" / ".orchestrator" / "queue" / "jobs" / f"{job_id}.events.jsonl"
    path.write_bytes(path.read_bytes().replace(b'"echo"', b'"evil"'))
    bad = run_script("verify", env=cli_env)
    assert bad.returncode == 7
    assert f"{path}:1: SIGNATURE_INVALID" in bad.stdout
    status = run_script("status", job_id, "--json", env=cli_env)
    assert status.returncode == 7
    assert json.loads(status.stdout)["integrity_error"]["code"] == "CONTEXT_SIGNATURE_INVALID"


def test_verify_anchor_detects_a_rollback_of_the_whole_store(cli_env: dict[str, str], base: Path, tmp_path: Path) -> None:
    import shutil

    submit(cli_env)
    store = base / "proj" / ".orchestrator"
    backup = tmp_path / "backup"
    shutil.copytree(store, backup)
    submit(cli_env)
    anchor = tmp_path / "anchor.json"
    assert run_script("verify", "--export-head", str(anchor), env=cli_env).returncode == 0
    shutil.rmtree(store)
    shutil.copytree(backup, store)  # an attacker restores yesterday's store, head records included
    assert run_script("verify", env=cli_env).returncode == 0
    proc = run_script("verify", "--against", str(anchor), "--json", env=cli_env)
    assert proc.returncode == 7
    assert [p["code"] for p in json.loads(proc.stdout)["problems"]] == ["ROLLED_BACK"]


def test_settings_come_from_options_then_environment_then_dotenv(cli_env: dict[str, str], tmp_path: Path) -> None:
    import subprocess
    import sys

    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / ".env").write_text(f"BASE_PATH={tmp_path / 'from-dotenv'}\nPROJECT_ID=dotenv-proj\n")
    env = {k: v for k, v in cli_env.items() if k not in ("BASE_PATH", "PROJECT_ID")}

    def run(*args: str) -> str:
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "submit.py"), "--kind", "k", "--json", *args],
                              env=env, cwd=workdir, capture_output=True, text=True, check=True)
        return json.loads(proc.stdout)["job_id"]

    run()
    assert list((tmp_path / "from-dotenv" / "dotenv-proj" / ".orchestrator" / "queue" / "jobs").iterdir())
    env["PROJECT_ID"] = "env-proj"
    run()
    assert (tmp_path / "from-dotenv" / "env-proj").is_dir()
    run("--project-id", "opt-proj", "--base-path", str(tmp_path / "opt"))
    assert (tmp_path / "opt" / "opt-proj").is_dir()


def test_console_script_module_runs_the_same_cli(cli_env: dict[str, str]) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", "status", "--all"],
                          env=cli_env, capture_output=True, text=True)
    assert proc.returncode == 0 and "JOB_ID" in proc.stdout


def test_demo_runs_on_the_file_backend(cli_env: dict[str, str], tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "orchestrator.demo", str(tmp_path / "demo")], env=cli_env,
                          capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    assert "verify: OK" in proc.stdout and "CONTEXT_SIGNATURE_INVALID" in proc.stdout


def test_a_bad_file_in_the_keyring_folder_exits_8_naming_it_and_writes_nothing(cli_env: dict[str, str],
                                                                              base: Path, isolated_env: Path) -> None:
    env = {k: v for k, v in cli_env.items() if k != "ORCH_SIGNING_KEY"}  # sign with the keyring folder's key
    submit(env)
    jobs = base / "proj" / ".orchestrator" / "queue" / "jobs"
    before = {p.name: p.read_bytes() for p in jobs.iterdir()}
    kid = (isolated_env / "active").read_text().strip()
    cases = [("stray.pub", b"junk\n", ["submit", "verify", "status"]),
             ("revoked", b"\xff\xfe\n", ["submit", "verify", "status"]),
             (f"{kid}.key", b"junk\n", ["submit"])]
    for name, data, commands in cases:
        bad = isolated_env / name
        saved = bad.read_bytes() if bad.exists() else None
        bad.write_bytes(data)
        for command in commands:
            args = {"submit": ["--kind", "k", "--input", "{}"], "verify": [], "status": ["--all"]}[command]
            proc = run_script(command, *args, env=env)
            assert proc.returncode == 8, (name, command, proc.stdout, proc.stderr)
            assert "error[SIGNING_KEY_ERROR]" in proc.stderr and str(bad) in proc.stderr
            assert "Traceback" not in proc.stderr
        as_json = run_script(commands[-1], *args, "--json", env=env)
        assert json.loads(as_json.stdout)["error"] == "SIGNING_KEY_ERROR" and as_json.returncode == 8
        if saved is None:
            bad.unlink()
        else:
            bad.write_bytes(saved)
    assert {p.name: p.read_bytes() for p in jobs.iterdir()} == before
    assert run_script("verify", env=env).returncode == 0


def test_a_trusted_keys_folder_inside_the_store_is_refused_with_exit_3(cli_env: dict[str, str], base: Path) -> None:
    """A key put next to the events could be replaced along with them: re-signed histories would pass verify."""
    from orchestrator.key_files import write_keypair

    submit(cli_env)
    planted = base / "proj" / ".orchestrator" / "trusted"
    write_keypair(planted)
    proc = run_script("verify", "--json", env={**cli_env, "ORCH_TRUSTED_KEYS_DIR": str(planted)})
    assert proc.returncode == 3 and json.loads(proc.stdout)["error"] == "CONFIG_ERROR"
    assert str(planted) in json.loads(proc.stdout)["message"]


def test_an_anchor_file_that_is_not_an_anchor_is_invalid_input_exit_3(cli_env: dict[str, str], tmp_path: Path) -> None:
    submit(cli_env)
    anchor = tmp_path / "anchor.json"
    for content in (b"[1,2]", b'"x"', b"null", b"{}", b'{"kid": 1, "sig": "x"}', b"\xff\xfe", b"nope",
                    b'{"kid": "k", "sig": "s", "heads": NaN}'):
        anchor.write_bytes(content)
        proc = run_script("verify", "--against", str(anchor), env=cli_env)
        assert proc.returncode == 3, (content, proc.stdout, proc.stderr)
        assert "error[INVALID_INPUT]" in proc.stderr and "Traceback" not in proc.stderr


def test_export_head_into_a_missing_folder_is_invalid_input_and_writes_nothing(cli_env: dict[str, str],
                                                                              tmp_path: Path) -> None:
    submit(cli_env)
    target = tmp_path / "no-such-folder" / "anchor.json"
    proc = run_script("verify", "--export-head", str(target), "--json", env=cli_env)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    error = json.loads(proc.stdout)
    assert error["error"] == "INVALID_INPUT" and str(target) in error["message"]
    assert not target.parent.exists()


def test_export_head_with_one_job_id_is_refused_since_the_anchor_covers_every_job(cli_env: dict[str, str],
                                                                                 tmp_path: Path) -> None:
    job = submit(cli_env)
    target = tmp_path / "anchor.json"
    proc = run_script("verify", "--job-id", job, "--export-head", str(target), "--json", env=cli_env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)  # options that exclude each other: exit 3 until 2026-12-06
    assert json.loads(proc.stdout)["error"] == "USAGE_ERROR" and not target.exists()


def test_a_dotenv_that_is_not_utf8_is_a_config_error_exit_3(cli_env: dict[str, str], tmp_path: Path) -> None:
    import subprocess
    import sys

    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / ".env").write_bytes(b"PROJECT_ID=caf\xe9\n")  # Latin-1, as an old editor saves it
    for args in ((), ("--json",)):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "status.py"), "--all", *args], env=cli_env,
                              cwd=workdir, capture_output=True, text=True)
        assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
        assert "CONFIG_ERROR" in proc.stdout + proc.stderr and str(workdir / ".env") in proc.stdout + proc.stderr


def test_a_store_folder_that_is_a_file_is_a_storage_error_naming_it_exit_10(cli_env: dict[str, str],
                                                                           base: Path) -> None:
    job_id = submit(cli_env)
    jobs = base / "proj" / ".orchestrator" / "queue" / "jobs"
    jobs.rename(jobs.with_name("jobs.moved"))
    jobs.write_bytes(b"")
    for args in (("submit", "--kind", "k"), ("status", job_id), ("status", "--all"), ("verify",),
                 ("worker", "--once")):
        proc = run_script(*args, env=cli_env)
        assert proc.returncode == 10, (args, proc.stdout, proc.stderr)
        assert f"error[STORAGE_ERROR]: {jobs} is a file where a folder belongs" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert len(list(jobs.with_name("jobs.moved").iterdir())) == 1


def keys(env: dict[str, str], *args: str):
    return subprocess.run([sys.executable, "-m", "orchestrator", "keys", *args], env=env, capture_output=True,
                          text=True, timeout=60, cwd=str(REPO))


def test_keys_list_shows_the_active_key_of_the_keyring_folder_before_anything_signed(
        cli_env: dict[str, str], isolated_env: Path) -> None:
    env = {k: v for k, v in cli_env.items() if k != "ORCH_SIGNING_KEY"}  # the default setup: the folder's key
    assert json.loads(keys(env, "list", "--json").stdout)["signing_key"] is None  # none yet
    submit(env)
    listed = json.loads(keys(env, "list", "--json").stdout)
    assert listed["signing_key"] == (isolated_env / "active").read_text().strip()
    assert listed["signing_key_revoked"] is False


def test_revoking_the_active_key_warns_and_every_write_is_refused_until_a_new_key_is_active(
        cli_env: dict[str, str], base: Path, isolated_env: Path) -> None:
    env = {k: v for k, v in cli_env.items() if k != "ORCH_SIGNING_KEY"}
    submit(env)
    kid = (isolated_env / "active").read_text().strip()
    revoked = keys(env, "revoke", kid, "--json")
    assert revoked.returncode == 0 and "active signing key" in revoked.stderr
    assert "keys rotate" in json.loads(revoked.stdout)["warning"]
    jobs = base / "proj" / ".orchestrator" / "queue" / "jobs"
    before = sorted(jobs.iterdir())
    proc = run_script("submit", "--kind", "ok", "--input", "{}", env=env)
    assert proc.returncode == 8 and f"error[SIGNING_KEY_ERROR]: the signing key {kid} is revoked" in proc.stderr
    assert "keys rotate" in proc.stderr and sorted(jobs.iterdir()) == before  # nothing written
    listed = json.loads(keys(env, "list", "--json").stdout)
    assert listed["signing_key"] == kid and listed["signing_key_revoked"] is True
    assert "REVOKED" in keys(env, "list").stdout
    assert keys(env, "rotate").returncode == 0
    job_id = submit(env)
    assert run_script("status", job_id, env=env).returncode == 0


def test_revoking_a_key_this_keyring_signed_with_before_a_rotation_warns_that_older_workers_still_sign_with_it(
        cli_env: dict[str, str], isolated_env: Path, tmp_path: Path) -> None:
    """A worker started before `keys rotate` holds the old key until it reads the keyring again (within a minute),
    and what it signs meanwhile fails as KEY_REVOKED: `keys revoke` says so, and to restart such workers."""
    env = {k: v for k, v in cli_env.items() if k != "ORCH_SIGNING_KEY"}
    submit(env)
    old = (isolated_env / "active").read_text().strip()
    new = json.loads(keys(env, "rotate", "--json").stdout)["signing_key"]
    revoked = keys(env, "revoke", old, "--json")
    warning = json.loads(revoked.stdout)["warning"]
    assert revoked.returncode == 0 and warning == revoked.stderr.strip().removeprefix("warning: ")
    assert f"{old} is a key of this keyring folder: a worker started while it was the active key (before {new} was)" \
        in warning and "Restart such workers" in warning and "keys rotate" not in warning
    other = tmp_path / "trusted"  # another machine's key: no worker here signs with it
    other.mkdir(mode=0o700)
    stranger = keys({**env, "ORCH_KEYRING_DIR": str(other)}, "rotate", "--json")
    stranger_id = json.loads(stranger.stdout)["signing_key"]
    (other / f"{stranger_id}.key").unlink()
    revoked = keys({**env, "ORCH_TRUSTED_KEYS_DIR": str(other)}, "revoke", stranger_id, "--json")
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["warning"] is None and revoked.stderr == ""


def test_keys_revoke_refuses_a_malformed_or_unknown_id_and_writes_nothing(cli_env: dict[str, str],
                                                                          isolated_env: Path) -> None:
    env = {k: v for k, v in cli_env.items() if k != "ORCH_SIGNING_KEY"}
    submit(env)
    kid = (isolated_env / "active").read_text().strip()
    for bad, error in [("", "INVALID_ID"), (f"evil\n{kid}", "INVALID_ID"), ("k-0123456789abcdef", "INVALID_INPUT")]:
        proc = keys(env, "revoke", bad, "--json")
        assert proc.returncode == 3 and json.loads(proc.stdout)["error"] == error, (bad, proc.stdout, proc.stderr)
    assert not (isolated_env / "revoked").exists()
    assert run_script("submit", "--kind", "ok", "--input", "{}", env=env).returncode == 0


def test_keys_rotate_and_revoke_say_that_a_key_set_in_the_environment_still_signs(
        cli_env: dict[str, str], isolated_env: Path) -> None:
    signer = json.loads(keys(cli_env, "list", "--json").stdout)["signing_key"]  # ORCH_SIGNING_KEY's
    rotated = keys(cli_env, "rotate", "--json")
    kid = json.loads(rotated.stdout)["signing_key"]
    assert rotated.returncode == 0 and (isolated_env / "active").read_text().strip() == kid
    warning = json.loads(rotated.stdout)["warning"]  # before: "new signing key", as if it signed from now on
    assert "ORCH_SIGNING_KEY is set" in warning and kid in warning and "ORCH_SIGNING_KEY is set" in rotated.stderr
    assert json.loads(keys(cli_env, "list", "--json").stdout)["signing_key"] == signer  # it does not sign
    revoked = keys(cli_env, "revoke", signer, "--json")
    warning = json.loads(revoked.stdout)["warning"]  # before: "until a new key is active (keys rotate)", which is not
    assert revoked.returncode == 0 and "ORCH_SIGNING_KEY" in warning and "unset it" in warning
    folder_env = {k: v for k, v in cli_env.items() if k != "ORCH_SIGNING_KEY"}
    assert json.loads(keys(folder_env, "rotate", "--json").stdout)["warning"] is None


def test_a_kind_whose_bytes_are_not_utf8_is_refused_as_a_usage_error_and_nothing_is_written(
        cli_env: dict[str, str], base: Path) -> None:
    # a shell in another locale passes the kind's bytes as they are: "k\xff" reaches Python as "k\udcff"
    proc = run_script("submit", "--kind", "k\udcff", "--input", "{}", "--json", env=cli_env)
    assert proc.returncode == 2, proc.stderr  # as every --kind (INVALID_INPUT, exit 3, until 2026-12-03)
    assert json.loads(proc.stdout)["error"] == "USAGE_ERROR" and "Traceback" not in proc.stderr
    assert not (base / "proj").exists()
    listing = run_script("status", "--all", "--kind", "k\udcff", "--json", env=cli_env)
    assert listing.returncode == 2 and json.loads(listing.stdout)["error"] == "USAGE_ERROR"


KEY_VARIABLES = {"keys": ("ORCH_KEYRING_DIR", "ORCH_TRUSTED_KEYS_DIR", "ORCH_SIGNING_KEY", "ORCH_SIGNING_KEY_FILE"),
                 "list": ("ORCH_KEYRING_DIR", "ORCH_TRUSTED_KEYS_DIR", "ORCH_SIGNING_KEY", "ORCH_SIGNING_KEY_FILE"),
                 "rotate": ("ORCH_KEYRING_DIR", "ORCH_TRUSTED_KEYS_DIR", "ORCH_SIGNING_KEY", "ORCH_SIGNING_KEY_FILE"),
                 "revoke": ("ORCH_KEYRING_DIR", "ORCH_TRUSTED_KEYS_DIR")}


@pytest.mark.parametrize("command", KEY_VARIABLES)
def test_keys_help_names_the_variables_the_keys_come_from(cli_env: dict[str, str], command: str) -> None:
    proc = keys(cli_env, *([] if command == "keys" else [command]), "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # as wrapped for the terminal
    missing = [name for name in KEY_VARIABLES[command] if name not in text]
    assert not missing, (missing, proc.stdout)


def test_keys_list_of_a_fresh_machine_says_its_keyring_folder_is_not_there_yet(
        cli_env: dict[str, str], isolated_env: Path) -> None:
    env = {k: v for k, v in cli_env.items() if k != "ORCH_SIGNING_KEY"}
    listed = json.loads(keys(env, "list", "--json").stdout)
    assert listed["folders"] == [{"path": str(isolated_env), "from": "ORCH_KEYRING_DIR", "exists": False}]
    assert "not there yet: the first write creates it" in keys(env, "list").stdout


def test_keys_rotate_below_a_folder_others_may_write_exits_8_naming_it_and_writes_no_key(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    """A new private key goes nowhere another user could rename the keyring folder away from (and put theirs)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    env = {**cli_env, "ORCH_KEYRING_DIR": str(shared / "keys")}
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "keys", "rotate"], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 8 and "error[SIGNING_KEY_ERROR]" in proc.stderr, (proc.stdout, proc.stderr)
    assert f"the folder {shared} above the keyring folder {shared / 'keys'}" in proc.stderr
    assert f"chmod go-w {shared}" in proc.stderr and "Traceback" not in proc.stderr
    assert not (shared / "keys").exists()
