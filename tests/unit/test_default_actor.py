"""The actor a command records when none is given (``config.default_actor``: ``$LOGNAME@host``) follows the rule of
``Orchestrator(actor=...)``: sanitized, and a name that breaks it (not UTF-8, too long, empty) replaced by the user
database's name, with a warning that never shows it."""
from __future__ import annotations

import json
import logging
import os
import pwd
from pathlib import Path

import pytest

from helpers import run_script
from orchestrator.config import default_actor

HOST = os.uname().nodename
OWN_NAME = pwd.getpwuid(os.getuid()).pw_name


def test_a_user_name_that_looks_like_a_secret_is_stored_sanitized(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGNAME", "password=hunter2hh")
    actor = default_actor()
    assert "hunter2hh" not in actor and actor.startswith("password=[REDACTED]"), actor


@pytest.mark.parametrize("name, why", [("\udcff", "is not valid UTF-8"),  # b"\xff" as os.environ gives it
                                       ("a" * 120_000, "makes an actor longer than 200 characters"),
                                       ("   ", "is empty")], ids=["not-utf8", "120KB", "blank"])
def test_an_unusable_user_name_is_replaced_by_the_user_databases_with_a_warning_that_never_shows_it(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str, why: str) -> None:
    monkeypatch.setenv("LOGNAME", name)
    with caplog.at_level(logging.WARNING, logger="orchestrator.config"):
        actor = default_actor()
    assert actor == f"{OWN_NAME}@{HOST}"
    assert f"(LOGNAME or USER) {why}, so the audit trail records this user as {actor}" in caplog.text
    assert name.strip() == "" or name[:20] not in caplog.text


def test_a_command_run_with_a_logname_that_is_not_utf8_cancels_and_records_the_user_databases_name(
        cli_env: dict[str, str]) -> None:
    """The hunt's case: ``LOGNAME=$'\\xff' orchestrator control cancel J`` exited 1 with a traceback (the signing of
    the line could not encode the name)."""
    job = json.loads(run_script("submit", "--kind", "k", "--json", env=cli_env, check=True).stdout)["job_id"]
    env = {**{k.encode(): v.encode() for k, v in cli_env.items()}, b"LOGNAME": b"\xff"}
    proc = run_script("control", "cancel", job, "--json", env=env)  # type: ignore[arg-type]
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "(LOGNAME or USER) is not valid UTF-8" in proc.stderr
    shown = json.loads(run_script("status", job, "--json", env=cli_env, check=True).stdout)
    assert shown["state"] == "cancelled"
    events = (Path(cli_env["BASE_PATH"]) / "proj" / ".orchestrator" / "queue" / "jobs" / f"{job}.events.jsonl")
    assert json.loads(events.read_text().splitlines()[-1])["actor"] == f"{OWN_NAME}@{HOST}"
