"""A command's cold start (issue 5: ``scripts/status.py <job_id>`` within 150 ms): a ``status`` read imports what it
uses and no more. Each module below is needed by other commands, or by ``status`` only in a case these runs are
not, and is imported where it is first needed (a function-level import), never at a command's start."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

NOT_IMPORTED_BY_STATUS = {
    "orchestrator.redaction_objects": "a structure is sanitized only when its JSON text had something redacted",
    **dict.fromkeys(("orchestrator.redaction_rules", "orchestrator.secret_patterns", "orchestrator.pair_values",
                     "orchestrator.values_below"),
                    "a redaction's patterns: the output holds none of the literals one starts from (secret_literals)"),
    "orchestrator.json_text": "JSON text given on the command line: submit's",
    "orchestrator.leases": "a lease: a running job's",
    "orchestrator.start_folder": "only python3 -m puts the start folder on the path",
    "select": "a wait for a file's or a pipe's bytes: submit --input-file's",
    "socket": "the host name (in the actor) is read without it",
    "secrets": "no id or key is made",
}


def imported_by(args: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """``scripts/status.py ARGS`` run in a fresh interpreter, and every module it imported (``-X importtime``)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "scripts" / "status.py"), *args], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=60)
    lines = [line.split("|") for line in proc.stderr.splitlines() if line.startswith("import time:")]
    return proc, {name.strip() for *_, name in lines[1:]}  # the first is the header


@pytest.mark.parametrize("known", [True, False], ids=["a job", "an unknown job"])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_status_of_a_job_imports_none_of_what_only_other_commands_need(
        base: Path, cli_env: dict[str, str], known: bool, as_json: bool) -> None:
    from orchestrator import Orchestrator
    from orchestrator.key_files import load_keyring

    job_id = "no-such-job"
    if known:
        orch = Orchestrator(base_path=base, project_id="proj", keyring=load_keyring(cli_env, announce=False))
        job_id = orch.submit("command", {"argv": ["true"]})
    proc, modules = imported_by([job_id, *(["--json"] if as_json else [])], cli_env, base)
    assert proc.returncode == (0 if known else 4), proc.stderr[-2000:]
    assert ("queued" if known else "JOB_NOT_FOUND") in proc.stdout + proc.stderr
    assert "orchestrator.api" in modules and "orchestrator.redaction" in modules  # read, and its output sanitized
    assert "orchestrator.secret_literals" in modules  # what the output was looked at for
    assert {name: why for name, why in NOT_IMPORTED_BY_STATUS.items() if name in modules} == {}
