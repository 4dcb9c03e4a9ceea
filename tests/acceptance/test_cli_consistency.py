"""The same kind of mistake gets the same error code and exit code from every command (``orchestrator.cli_values``):
a value an option's type refuses is a usage error (exit 2) typed, ``CONFIG_ERROR`` (exit 3) from the environment,
naming the variable, its value and what it accepts; a value the orchestrator checks itself (an id, a path, a
module) is exit 3 with its own code; an option given empty is such a value, never taken for one not given."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_module


def refused(env: dict[str, str], *args: str) -> tuple[int, dict]:
    proc = run_module(*args, "--json", env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


# -- 1. every --kind, one rule -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["", "k" * 201, "a\nb"])  # a newline: since 2026-12-07, as every control character
def test_every_kind_option_refuses_what_no_kind_can_be_as_the_same_usage_error(
        cli_env: dict[str, str], base: Path, kind: str) -> None:
    """``submit --kind ''`` was INVALID_INPUT (exit 3) where ``worker --kind ''`` and ``status --all --kind ''`` were
    usage errors (exit 2)."""
    seen = set()
    for args in (("submit", "--kind", kind, "--input", "{}"), ("worker", "--once", "--kind", kind),
                 ("status", "--all", "--kind", kind)):
        code, error = refused(cli_env, *args)
        assert (code, error["error"]) == (2, "USAGE_ERROR"), (args, error)
        seen.add(error["message"])
    assert len(seen) == 1 and "'--kind': a job kind is 1 to 200 characters of valid Unicode on one line" in seen.pop()
    assert not (base / "proj").exists()  # nothing written


# -- an option given empty is the value given --------------------------------------------------------------------------
@pytest.mark.parametrize("args, code, error", [
    (("worker", "--once", "--worker-id", ""), 3, "INVALID_ID"),  # was the default id
    (("worker", "--once", "--import", ""), 3, "CONFIG_ERROR"),  # was nothing imported
    (("verify", "--export-head", ""), 3, "INVALID_INPUT"),  # was no anchor written, exit 0
    (("export", "-o", ""), 3, "INVALID_INPUT"),  # was a ValueError traceback, exit 1
    (("export", "-o", "/"), 3, "INVALID_INPUT"),  # the same traceback: a folder, with no name to write beside
    (("bench-terminal-latency", "--samples", "1", "--raw-output", ""), 3, "INVALID_INPUT"),  # was no file written
    (("bench-terminal-latency", "--samples", "1", "--project-id", ""), 3, "INVALID_ID"),  # was a random project kept
])
def test_an_option_given_empty_is_refused_never_taken_for_one_not_given(
        cli_env: dict[str, str], base: Path, args: tuple[str, ...], code: int, error: str) -> None:
    got, out = refused(cli_env, *args)
    assert (got, out["error"]) == (code, error), (args, out)
    if args[-1] == "":
        assert "''" in out["message"] or "the path given is empty" in out["message"], out["message"]
    if args[0] != "worker":  # a worker makes its folders first, then imports (as for any module it cannot import)
        assert not any(base.iterdir()), list(base.iterdir())  # refused before anything is written


# -- 2. a bad time, action or duration: the same usage error -----------------------------------------------------------
@pytest.mark.parametrize("option, value", [("--since", "yesterday"), ("--since", ""), ("--action", "bogus")])
def test_a_bad_time_or_action_of_audit_timeline_is_a_usage_error_as_a_bad_duration_is(
        cli_env: dict[str, str], option: str, value: str) -> None:
    """``--since yesterday`` was INVALID_INPUT (exit 3), ``--since ''`` no filter, while ``--action bogus`` and every
    bad duration (``worker --lease-seconds``) are usage errors (exit 2)."""
    code, error = refused(cli_env, "audit-timeline", "--job-id", "01ARZ3NDEKTSV4RRFFQ69G5FAV", option, value)
    assert (code, error["error"]) == (2, "USAGE_ERROR"), error
    assert error["message"].startswith(f"Invalid value for '{option}': ")
    assert refused(cli_env, "worker", "--once", "--lease-seconds", "soon")[0] == 2


# -- 3. an unknown option ---------------------------------------------------------------------------------------------
def test_an_unknown_option_lists_the_commands_options_instead_of_an_unrelated_suggestion(
        cli_env: dict[str, str]) -> None:
    """``--token`` got "Did you mean one of: '--json', '--store'?"."""
    code, error = refused(cli_env, "control", "approve", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "--token", "x")
    assert (code, error["error"]) == (2, "USAGE_ERROR")
    assert error["message"].startswith("No such option '--token' for ")
    assert error["message"].endswith(" control approve. Its options: --text-file, --note, --json, --project-id, "
                                     "--base-path, --store, -h/--help (-h says what each does).")
    text = run_module("control", "cancel", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "--token", "x", env=cli_env)
    assert text.returncode == 2 and "Did you mean" not in text.stderr and "--note/--reason" in text.stderr


@pytest.mark.parametrize("typed, meant", [("--jsno", "--json"), ("--lease", "--lease-seconds"),
                                          ("--reasn", "--note/--reason")])
def test_an_unknown_option_near_one_of_the_commands_suggests_it(cli_env: dict[str, str], typed: str,
                                                                 meant: str) -> None:
    command = ("control", "cancel", "01ARZ3NDEKTSV4RRFFQ69G5FAV") if "reas" in typed else ("worker", "--once")
    code, error = refused(cli_env, *command, typed, "1")
    assert code == 2 and f"Did you mean {meant}? Its options: " in error["message"], error


# -- 4. every ORCH_ number -------------------------------------------------------------------------------------------
NUMBERS = [  # command, variable, what it accepts
    (("verify",), "ORCH_VERIFY_PROCESSES", "a whole number from 1 to 256"),
    (("metrics",), "ORCH_METRICS_PROCESSES", "a whole number from 1 to 256"),
    (("worker", "--once"), "ORCH_LEASE_SECONDS", "a number of seconds from 0.1 to 86400"),
    (("worker", "--idle-exit"), "ORCH_MAX_JOBS", "a whole number of 1 or more"),
    (("worker", "--once"), "ORCH_HANDLER_MAX_RUNS", "a whole number of 1 or more"),
    (("worker", "--once"), "ORCH_OUTPUT_MAX_BYTES", "0 (no bound) or a whole number of bytes of 1048576 (1 MiB) or more"),
    (("worker", "--once"), "ORCH_STOP_GRACE_SECONDS", "a number of seconds from 0 to 31622400"),
    (("worker", "--once"), "ORCH_RETRY_BASE_SECONDS", "a number of seconds from 0 to 31622400"),
    (("worker", "--once"), "ORCH_RETRY_MAX_SECONDS", "a number of seconds from 0 to 31622400"),
    (("worker", "--once"), "ORCH_STORE_WAIT_SECONDS", "a number of seconds from 0 to 31622400"),
    (("worker", "--once"), "ORCH_LLM_TIMEOUT", "a number of seconds more than 0, up to 31622400"),
    (("metrics",), "ORCH_STALL_GRACE_SECONDS", "a number of seconds from 0 to 31622400"),
    (("metrics",), "ORCH_ALERT_STALLED_MAX", "a whole number of 0 or more"),
    (("metrics",), "ORCH_ALERT_RESUME_SUCCESS_MIN", "a number from 0 to 1"),
    (("metrics",), "ORCH_ALERT_RESUME_MIN_SAMPLES", "a whole number of 0 or more"),
    (("metrics",), "ORCH_ALERT_CONVERGE_MAX_SECONDS", "a number of seconds from 0 to 31622400"),
    (("metrics",), "ORCH_ALERT_WAITING_HUMAN_MAX", "a whole number of 0 or more"),
    (("metrics",), "ORCH_ALERT_AWAITING_AUDIT_MAX", "a whole number of 0 or more"),
    (("status", "--all"), "ORCH_PG_DEADLINE_SECONDS", "a number of seconds from 0 to 31622400"),
]


@pytest.mark.parametrize("command, variable, accepts", NUMBERS, ids=[n[1] for n in NUMBERS])
def test_an_orch_number_that_cannot_be_parsed_is_a_config_error_naming_it_its_value_and_what_it_accepts(
        cli_env: dict[str, str], command: tuple[str, ...], variable: str, accepts: str) -> None:
    """It was click's "Invalid value for '--processes' (env var: 'ORCH_VERIFY_PROCESSES'): 'abc' is not a valid
    integer range." (and ORCH_LLM_TIMEOUT=abc was taken for unset)."""
    code, error = refused({**cli_env, variable: "abc"}, *command)
    assert (code, error["error"]) == (3, "CONFIG_ERROR"), error
    assert error["message"].startswith(f"{variable} must be {accepts}, not 'abc'"), error["message"]


def test_the_same_value_typed_as_an_option_is_a_usage_error_saying_what_it_accepts(cli_env: dict[str, str]) -> None:
    """Without the variable: click's ``(env var: 'ORCH_VERIFY_PROCESSES')`` blamed one that was not even set. The help
    still names it."""
    code, error = refused(cli_env, "verify", "--processes", "abc")
    assert (code, error["error"]) == (2, "USAGE_ERROR")
    assert error["message"] == "Invalid value for '--processes': 'abc' is not a whole number from 1 to 256", error
    text = run_module("worker", "--once", "--lease-seconds", "0", env=cli_env)
    assert text.returncode == 2, text.stderr
    assert "Error: Invalid value for '--lease-seconds': '0' is not a number" in text.stderr, text.stderr
    assert "env var" not in text.stderr and "ORCH_" not in text.stderr
    assert "env var: ORCH_VERIFY_PROCESSES" in " ".join(run_module("verify", "-h", env=cli_env).stdout.split())
