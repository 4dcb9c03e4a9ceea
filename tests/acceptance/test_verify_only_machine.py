"""A machine set up only to verify (the project's .pub files, no signing key) runs every read command, and
none of them creates a key or writes what the operators' machine cannot verify (docs/format.md, "Keys": a
verifier needs only the .pub files). Through the real commands, as subprocesses."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import jobstates as js
from helpers import REPO, run_module, shared_with_a_group
from orchestrator import Orchestrator
from orchestrator.key_files import load_keyring

PROJECT = "proj"


def machine_env(base: Path, keyring_dir: Path, trusted: Path | None = None) -> dict[str, str]:
    """A machine whose keys are a keyring folder (no ORCH_SIGNING_KEY*), and maybe a folder of trusted .pub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(BASE_PATH=str(base), PROJECT_ID=PROJECT, ORCH_KEYRING_DIR=str(keyring_dir), PYTHONPATH=str(REPO),
               PYTHON_DOTENV_DISABLED="1")
    if trusted is not None:
        env["ORCH_TRUSTED_KEYS_DIR"] = str(trusted)
    return env


@pytest.fixture
def machines(base: Path, tmp_path: Path) -> tuple[dict[str, str], dict[str, str], str]:
    """The operators' machine (a keyring folder with its key), and a verifier's (an empty keyring folder, the
    operators' .pub files as trusted keys); one job whose resume was cut off between its event and its
    audit entry (``ORCH_CRASH_AT=append.after_event``)."""
    ops = machine_env(base, tmp_path / "ops-keys")
    api = Orchestrator(base_path=base, project_id=PROJECT, keyring=load_keyring(ops, announce=False))
    job_id = js.waiting_human(api, run_id="run-1")
    crashed = run_module("control", "resume", job_id, "blue", env={**ops, "ORCH_CRASH_AT": "append.after_event"})
    assert crashed.returncode == -9, crashed.stderr
    pubs = tmp_path / "pubs"
    pubs.mkdir()
    for pub in (tmp_path / "ops-keys").glob("*.pub"):
        shutil.copy(pub, pubs)
    (tmp_path / "verifier-keys").mkdir()
    return ops, machine_env(base, tmp_path / "verifier-keys", pubs), job_id


def audit_log(base: Path) -> bytes:
    path = base / PROJECT / ".orchestrator" / "audit" / "audit_events.jsonl"
    return path.read_bytes() if path.exists() else b""


# the read commands that heal a job they read (a missing audit entry) when they can sign
HEALING_READS = [("audit-timeline", "--job-id", "{job}"), ("audit-timeline", "--run-id", "run-1"), ("metrics",),
                 ("metrics", "--rebuild")]
OTHER_READS = [("status", "{job}"), ("status", "--all"), ("verify",), ("verify", "--job-id", "{job}"),
               ("export", "-o", "{tmp}/bundle"), ("keys", "list")]


def run_read(command: tuple[str, ...], job_id: str, tmp_path: Path, env: dict[str, str]):
    return run_module(*(arg.format(job=job_id, tmp=tmp_path) for arg in command), env=env)


@pytest.mark.parametrize("command", HEALING_READS, ids=" ".join)
def test_a_read_command_on_a_verifier_creates_no_key_and_leaves_the_missing_entry_as_a_warning(
        machines, base: Path, tmp_path: Path, command: tuple[str, ...]) -> None:
    ops, verifier, job_id = machines
    before = audit_log(base)
    proc = run_read(command, job_id, tmp_path, verifier)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "generated signing key" not in proc.stderr
    assert list((tmp_path / "verifier-keys").iterdir()) == [], "a read command created a key"
    assert audit_log(base) == before, "a read command wrote an entry the operators cannot verify"
    # the operators' machine still verifies everything; the entry is missing, a warning, as before
    checked = json.loads(run_module("verify", "--json", env=ops).stdout)
    assert checked["ok"] and [w["code"] for w in checked["warnings"]] == ["AUDIT_ENTRY_MISSING"]


def test_every_other_read_command_on_a_verifier_creates_no_key_and_writes_nothing(
        machines, base: Path, tmp_path: Path) -> None:
    _ops, verifier, job_id = machines
    before = audit_log(base)
    for command in OTHER_READS:
        proc = run_read(command, job_id, tmp_path, verifier)
        assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
        assert "generated signing key" not in proc.stderr, command
        assert list((tmp_path / "verifier-keys").iterdir()) == [], f"{command} created a key"
        assert audit_log(base) == before, f"{command} wrote to the audit log"


def test_the_verifier_sees_the_missing_entry_as_a_warning_as_verify_does(machines) -> None:
    _ops, verifier, job_id = machines
    proc = run_module("audit-timeline", "--job-id", job_id, "--json", env=verifier)
    shown = json.loads(proc.stdout)
    assert proc.returncode == 0 and shown["ok"] is True
    resumed = [ln for ln in shown["lines"] if ln["what"] == "job_resumed"]
    assert [ln["status"] for ln in resumed] == ["AUDIT_ENTRY_MISSING"]
    assert [(w["code"], w["events"]) for w in shown["warnings"]] == [("AUDIT_ENTRY_MISSING", [4])]
    assert f"audit heal --job-id {job_id}" in shown["warnings"][0]["message"]
    text = run_module("audit-timeline", "--job-id", job_id, env=verifier)
    assert text.returncode == 0 and "warning: AUDIT_ENTRY_MISSING: event(s) #4" in text.stdout


def test_a_read_command_heals_with_the_key_the_machine_already_has(machines, base: Path) -> None:
    ops, _verifier, job_id = machines
    proc = run_module("audit-timeline", "--job-id", job_id, "--json", env=ops)
    assert proc.returncode == 0 and "generated signing key" not in proc.stderr
    entries = [json.loads(line) for line in audit_log(base).splitlines()]
    assert [(e["data"]["action"], e["data"].get("healed")) for e in entries] == [("resume", True)]
    verified = json.loads(run_module("verify", "--json", env=ops).stdout)
    assert verified["ok"] and verified.get("warnings", []) == []


def test_verify_export_head_on_a_verifier_is_a_signing_key_error_and_writes_nothing(
        machines, tmp_path: Path) -> None:
    _ops, verifier, _job_id = machines
    out = tmp_path / "anchors"
    out.mkdir()
    proc = run_module("verify", "--export-head", str(out / "head.anchor"), "--json", env=verifier)
    assert proc.returncode == 8, (proc.stdout, proc.stderr)
    error = json.loads(proc.stdout)
    assert error["error"] == "SIGNING_KEY_ERROR" and "keys rotate" in error["message"]
    assert list(out.iterdir()) == [] and list((tmp_path / "verifier-keys").iterdir()) == []


def test_a_command_that_writes_creates_the_first_key_and_says_so(base: Path, tmp_path: Path) -> None:
    env = machine_env(base, tmp_path / "fresh-keys")
    proc = run_module("submit", "--kind", "echo", "--input", "{}", env=env)
    assert proc.returncode == 0 and "generated signing key" in proc.stderr
    assert len(list((tmp_path / "fresh-keys").glob("*.key"))) == 1


def test_a_mistyped_trusted_keys_folder_is_a_signing_key_error_naming_it_not_every_event_unknown(
        machines, tmp_path: Path) -> None:
    """Before: a folder that does not exist was read as an empty one; on a verifier, whose only keys are there,
    `verify` then failed every event as UNKNOWN_KEY (exit 7), as if the whole project had been forged."""
    _ops, verifier, _job_id = machines
    mistyped = {**verifier, "ORCH_TRUSTED_KEYS_DIR": str(tmp_path / "pub")}  # the folder is "pubs"
    for command in (("verify",), ("keys", "list")):
        proc = run_module(*command, "--json", env=mistyped)
        assert proc.returncode == 8, (command, proc.stdout, proc.stderr)
        error = json.loads(proc.stdout)
        assert error["error"] == "SIGNING_KEY_ERROR", error
        assert f"ORCH_TRUSTED_KEYS_DIR names {tmp_path / 'pub'}, which does not exist" in error["message"]
    assert run_module("verify", env=verifier).returncode == 0  # spelled right, it verifies


def test_keys_list_names_the_folders_it_read_keys_from(machines, tmp_path: Path) -> None:
    _ops, verifier, _job_id = machines
    listed = json.loads(run_module("keys", "list", "--json", env=verifier).stdout)
    assert listed["folders"] == [
        {"path": str(tmp_path / "verifier-keys"), "from": "ORCH_KEYRING_DIR", "exists": True},
        {"path": str(tmp_path / "pubs"), "from": "ORCH_TRUSTED_KEYS_DIR", "exists": True}]
    assert listed["trusted"] and listed["signing_key"] is None
    text = run_module("keys", "list", env=verifier).stdout
    assert f"folders      {tmp_path / 'verifier-keys'} (ORCH_KEYRING_DIR)\n" in text
    assert f"\n             {tmp_path / 'pubs'} (ORCH_TRUSTED_KEYS_DIR)\n" in text


def test_a_verifier_whose_trusted_keys_lie_below_a_folder_others_may_write_refuses_every_read_naming_it(
        machines, tmp_path: Path) -> None:
    """Whoever may write the folder above could put a folder of .pub files of their own in the trusted one's place,
    and `verify` would pass their forgeries: each read command stops with exit 8 naming that folder and the fix."""
    _ops, verifier, job_id = machines
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o775)
    shared.chmod(0o775)
    shared_with_a_group(shared)
    os.replace(tmp_path / "pubs", shared / "pubs")
    env = {**verifier, "ORCH_TRUSTED_KEYS_DIR": str(shared / "pubs")}
    for command in (("verify",), ("status", "--all"), ("keys", "list")):
        proc = run_read(command, job_id, tmp_path, env)
        assert proc.returncode == 8, (command, proc.stdout, proc.stderr)
        assert "error[SIGNING_KEY_ERROR]" in proc.stderr and f"chmod go-w {shared}" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    shared.chmod(0o755)
    assert run_read(("verify",), job_id, tmp_path, env).returncode == 0


def test_a_machine_whose_active_key_lost_its_pub_writes_nothing_and_keys_list_says_why(tmp_path: Path) -> None:
    """Before: `submit` wrote (exit 0) a job signed by a key no other command trusted: every read refused it as
    UNKNOWN_KEY and no worker ever ran it, while `keys list` showed that key as the one that signs, nothing amiss."""
    env = machine_env(tmp_path / "base", tmp_path / "keys")
    kid = json.loads(run_module("keys", "rotate", "--json", env=env).stdout)["signing_key"]
    (tmp_path / "keys" / f"{kid}.pub").unlink()
    proc = run_module("submit", "--kind", "k", "--input", "{}", "--json", env=env)
    assert proc.returncode == 8 and json.loads(proc.stdout)["error"] == "SIGNING_KEY_ERROR", proc.stdout
    assert f"{kid} has no public key file" in json.loads(proc.stdout)["message"]
    assert not (tmp_path / "base" / PROJECT / ".orchestrator" / "queue" / "jobs").exists() or not list(
        (tmp_path / "base" / PROJECT / ".orchestrator" / "queue" / "jobs").iterdir())
    listed = json.loads(run_module("keys", "list", "--json", env=env).stdout)
    assert listed["signing_key"] == kid and listed["signing_key_trusted"] is False
    assert f"{kid} (NOT TRUSTED: no {kid}.pub verifies it: writes are refused" in run_module("keys", "list", env=env).stdout


def test_keys_list_tells_to_replace_a_revoked_key_from_the_environment_where_it_comes_from(tmp_path: Path) -> None:
    """`keys rotate` makes a new active key in the folder, which does not sign while ORCH_SIGNING_KEY is set."""
    from orchestrator.signing import new_seed

    env = {**machine_env(tmp_path / "base", tmp_path / "keys"), "ORCH_SIGNING_KEY": new_seed()}
    kid = json.loads(run_module("keys", "list", "--json", env=env).stdout)["signing_key"]
    (tmp_path / "keys").mkdir(mode=0o700)
    (tmp_path / "keys" / "revoked").write_text(f"{kid}\n")
    text = run_module("keys", "list", env=env).stdout
    assert f"{kid} (REVOKED: writes are refused until another key signs. It comes from ORCH_SIGNING_KEY" in text
