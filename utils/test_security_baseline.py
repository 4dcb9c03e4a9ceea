"""The security baseline, end to end through the CLI: the release gate's key test in the shared ops
runbook (``python3 -m pytest -q utils/test_security_baseline.py``).

A real project in a scratch folder, commands run as an operator runs them: control is local with no
token option, secrets printed by a job or written by an operator reach no file the product writes, ids cannot
name paths, and an edited context is refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.security import REDACTED, sanitize_text

CANARIES = ("CanaryPrinted77", "CanaryBearer9", "CanaryReason5")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_") and k not in ("BASE_PATH", "PROJECT_ID")}
    out.update(BASE_PATH=str(tmp_path / "base"), PROJECT_ID="baseline", ORCH_KEYRING_DIR=str(tmp_path / "keys"))
    return out


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def store_files(env: dict[str, str]) -> list[Path]:
    return [p for p in Path(env["BASE_PATH"]).rglob("*") if p.is_file()]


def test_the_runbooks_redaction_line_hides_every_value() -> None:
    out = sanitize_text("password=abc cookie=sid=123 token=xyz")
    assert out.startswith(f"password={REDACTED} cookie={REDACTED}")  # a cookie header's value runs to the line's end
    assert not any(value in out for value in ("abc", "sid=123", "xyz"))


def test_control_is_local_and_takes_no_token(env: dict[str, str]) -> None:
    for args in (["control", "-h"], ["control", "resume", "-h"], ["control", "approve", "-h"]):
        proc = cli(env, *args)
        assert proc.returncode == 0 and "--token" not in proc.stdout
    assert cli(env, "control", "cancel", "J1", "--token", "x").returncode == 2  # no such option


def test_secrets_printed_by_a_job_or_given_by_an_operator_reach_no_file_of_the_store(env: dict[str, str]) -> None:
    """A job's input is stored as given and signed (SPEC: pass secrets through the environment); what
    a run prints and what an operator writes are the product's to sanitize."""
    halves = [(c[:6], c[6:]) for c in CANARIES[:2]]  # the input holds the halves; only the run joins them
    script = (f"print('connecting with password=' + {halves[0][0]!r} + {halves[0][1]!r}); "
              f"print('Authorization: Bearer ' + {halves[1][0]!r} + {halves[1][1]!r}); raise SystemExit(3)")
    proc = cli(env, "submit", "--kind", "command", "--input", json.dumps({"argv": [sys.executable, "-c", script]}),
               "--max-attempts", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    failing = json.loads(proc.stdout)["job_id"]
    assert cli(env, "worker", "--once").returncode == 0
    waiting = json.loads(cli(env, "submit", "--kind", "command", "--input", '{"argv": ["true"]}', "--json").stdout)
    assert cli(env, "control", "cancel", waiting["job_id"], "--reason", f"rotated token={CANARIES[2]}").returncode == 0
    status = cli(env, "status", failing, "--json")
    assert json.loads(status.stdout)["state"] == "failed"
    written = {path: path.read_bytes().decode("utf-8", "replace") for path in store_files(env)}
    assert not [path for path, text in written.items() if any(c in text for c in CANARIES)]
    assert any("password=[REDACTED]" in text for text in written.values())  # the run's output was kept, sanitized


def test_an_id_that_names_a_path_is_refused_and_creates_nothing(env: dict[str, str]) -> None:
    proc = cli(env, "status", "../../etc/passwd", "--json")
    assert proc.returncode == 3 and json.loads(proc.stdout)["error"] == "INVALID_ID"
    assert store_files(env) == []


def test_an_edited_context_is_refused_as_context_signature_invalid(env: dict[str, str]) -> None:
    proc = cli(env, "submit", "--kind", "command", "--input", '{"argv": ["echo", "hi"]}', "--json")
    job = json.loads(proc.stdout)["job_id"]
    [events] = [p for p in store_files(env) if p.name == f"{job}.events.jsonl"]
    events.write_text(events.read_text().replace('"hi"', '"rm -rf"'))
    status = cli(env, "status", job, "--json")
    assert status.returncode == 7 and "CONTEXT_SIGNATURE_INVALID" in status.stdout
    assert cli(env, "worker", "--once").returncode == 75  # never run: nothing else to do
