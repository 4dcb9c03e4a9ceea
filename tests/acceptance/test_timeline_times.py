"""The times `audit-timeline` takes and shows, through the real command: every time shown is UTC, so a time
given without a zone is UTC too, whatever the machine's zone; and a clock stepped back never moves an event
above the ones it follows (docs/guarantees.md section 2: clocks affect only liveness)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import jobstates as js
from helpers import run_module
from orchestrator import Orchestrator
from orchestrator.clock import from_iso
from orchestrator.key_files import load_keyring

AT = from_iso("2026-12-01T16:14:00Z")  # every event of the job below is stamped 16:14 UTC
# zones as POSIX TZ strings (no tz database needed): New York in winter, Tokyo
ZONES = {"new-york": "EST+5", "tokyo": "JST-9", "utc": "UTC0"}


@pytest.fixture
def job(base: Path, cli_env: dict[str, str]) -> str:
    api = Orchestrator(base_path=base, project_id="proj", keyring=load_keyring(cli_env, announce=False),
                       clock=lambda: AT)
    job_id = js.waiting_human(api, run_id="run-1")
    api.resume(job_id, "blue", now=AT + 30)
    return job_id


def shown(job_id: str, env: dict[str, str], *args: str) -> list[tuple[str, int]]:
    proc = run_module("audit-timeline", "--job-id", job_id, "--json", *args, env=env)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return [(ln["source"], ln["seq"]) for ln in json.loads(proc.stdout)["lines"]]


ALL = [("event", 1), ("event", 2), ("event", 3), ("event", 4), ("audit", 1)]


@pytest.mark.parametrize("zone", ZONES)
def test_a_since_time_without_a_zone_is_utc_whatever_the_machines_zone(job: str, cli_env, zone: str) -> None:
    env = {**cli_env, "TZ": ZONES[zone]}
    assert shown(job, env, "--since", "2026-12-01T16:00:00") == ALL  # 16:14Z is after 16:00 UTC
    assert shown(job, env, "--since", "2026-12-01T16:30:00") == []  # and before 16:30 UTC
    assert shown(job, env, "--since", "2026-12-01T16:00:00Z") == ALL
    assert shown(job, env, "--since", "2026-12-01T17:30:00+01:00") == []  # a zone given is that zone
    assert shown(job, env, "--since", "2026-12-01T17:00:00+01:00") == ALL


@pytest.mark.parametrize("zone", ["new-york", "tokyo"])
@pytest.mark.parametrize("since, expected", [("0001-01-01T00:00:00", ALL), ("0001-01-01T00:00:00+09:00", ALL),
                                             ("0001-01-01", ALL), ("9999-12-31T23:59:59", []),
                                             ("9999-12-31T23:59:59-14:00", [])])
def test_the_first_and_last_years_are_times_like_any_other(job: str, cli_env, zone: str, since: str,
                                                           expected: list) -> None:
    assert shown(job, {**cli_env, "TZ": ZONES[zone]}, "--since", since) == expected


@pytest.mark.parametrize("since", ["yesterday", "2026-13-01T00:00:00", "10000-01-01T00:00:00", ""])
def test_a_since_that_is_no_time_is_a_usage_error_naming_the_form(job: str, cli_env, since: str) -> None:
    """As any option value its type refuses (until 2026-12-03: ``INVALID_INPUT``, exit 3, and "" was no filter)."""
    proc = run_module("audit-timeline", "--job-id", job, "--since", since, "--json", env=cli_env)
    error = json.loads(proc.stdout)
    assert proc.returncode == 2 and error["error"] == "USAGE_ERROR", proc.stdout
    assert "not an ISO-8601 time" in error["message"] and "in UTC" in error["message"]


@pytest.mark.parametrize("since", ["yesterday", ""])
def test_a_since_that_is_no_time_is_invalid_input_from_python(orch, since: str) -> None:
    from orchestrator.errors import InvalidInputError

    job_id = orch.submit("command", {"argv": ["true"]})
    with pytest.raises(InvalidInputError, match="is not an ISO-8601 time"):
        orch.timeline(job_id, since=since)


def test_the_help_says_a_time_without_a_zone_is_utc(cli_env) -> None:
    proc = run_module("audit-timeline", "-h", env=cli_env)
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0 and "every time shown is UTC, and so is a TIME without a zone" in text


def test_a_clock_stepped_back_leaves_the_events_in_sequence_order_in_text_and_json(base: Path, cli_env) -> None:
    api = Orchestrator(base_path=base, project_id="proj", keyring=load_keyring(cli_env, announce=False),
                       clock=lambda: AT)
    job_id = js.waiting_human(api, run_id="run-1")
    api.resume(job_id, "blue", now=AT - 3600)  # the operator's clock is an hour behind
    api.cancel(job_id, "stop", now=AT + 60)
    expected = [("event", 1), ("event", 2), ("event", 3), ("event", 4), ("audit", 1), ("event", 5), ("audit", 2)]
    assert shown(job_id, cli_env) == expected
    text = run_module("audit-timeline", "--job-id", job_id, env=cli_env).stdout.splitlines()
    rows = [line.split()[1:5] for line in text if line[:4].isdigit()]
    assert [(src, int(seq)) for src, seq, _what, _actor in rows] == expected
    assert [what for _src, _seq, what, _actor in rows][3:5] == ["job_resumed", "resume"]
    resumed = next(line for line in text if " job_resumed " in line)
    assert "answer: blue" in resumed  # what the operator answered, not the question again
    # --since cuts at the first line at or after the time: the resume, stamped earlier, happened later
    assert shown(job_id, cli_env, "--since", "2026-12-01T16:14:00") == expected
