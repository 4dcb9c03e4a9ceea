"""Secrets typed into a note never reach a file under .orchestrator/ nor any command's output."""
from __future__ import annotations

from pathlib import Path

import jobstates as js
from helpers import run_script
from orchestrator import Orchestrator
from orchestrator.key_files import load_keyring
from orchestrator.reliability.handlers import SECRET_TEXT, SECRETS, TAG

# one canary of each kind README's Security section lists: the reliability campaign's (test_secret_kinds.py holds
# the two lists to each other), each value carrying a unique tag
CANARIES = SECRETS
TEXT = "see:\n" + SECRET_TEXT


def leaks(text: str) -> set[str]:
    found = set(TAG.findall(text))
    return {name for name, value in CANARIES.items() if TAG.search(value).group() in found}


def test_each_canary_is_redacted_everywhere(base: Path, cli_env: dict[str, str]) -> None:
    api = Orchestrator(base_path=base, project_id="proj", keyring=load_keyring(cli_env, announce=False))
    outputs: list[str] = []

    def run(*args: str) -> None:
        proc = run_script(*args, env=cli_env)
        outputs.extend([proc.stdout, proc.stderr])

    review = js.awaiting_audit(api, run_id="run-1")
    run("control", "revise", review, TEXT, "--note", TEXT)
    js.awaiting_audit(api, run_id="run-2", job_id=review)
    run("control", "approve", review, TEXT)
    asking = js.waiting_human(api, run_id="run-3")
    run("control", "resume", asking, TEXT, "--note", TEXT)
    run("control", "resume", asking, "a different " + TEXT)  # refused: the error names the earlier answer
    chat = js.waiting_human(api, run_id="run-4")
    run("resume_from_chat", chat, f"job_id: {chat}; {TEXT}")
    run("resume_from_chat", chat, f"job_id: someone-else; {TEXT}")  # refused
    running = js.running(api, run_id="run-5")
    run("control", "cancel", running, "--reason", TEXT)
    run("audit_timeline", "--job-id", review)
    run("audit_timeline", "--job-id", asking, "--json")
    run("audit_timeline", "--run-id", "run-4", "--json")
    run("status", asking, "--json")
    run("metrics", "--json")
    run("verify")

    assert leaks(TEXT) == set(CANARIES)  # the check itself finds every canary
    assert "[REDACTED]" in (api.settings.state_dir / "audit" / "audit_events.jsonl").read_text()
    leaked_files = {str(p): leaks(p.read_bytes().decode("utf-8", "replace"))
                    for p in api.settings.state_dir.rglob("*") if p.is_file()}
    assert {p: names for p, names in leaked_files.items() if names} == {}
    assert leaks("\n".join(outputs)) == set()
    assert api.load(asking).state.answers[0].count("[REDACTED]") >= len(CANARIES) - 1


def test_human_output_redacts_each_value_before_cutting_it_and_one_value_never_hides_the_next_lines(
        base: Path, cli_env: dict[str, str]) -> None:
    """A kind is stored as given. `status --all` shows its first 16 characters and the timeline the first 120 of
    a line's detail: cut first, a token shows its first characters, too few for any pattern to know it. A private
    key's BEGIN line is redacted to the end of the text it is in: the value, not every line printed after it."""
    api = Orchestrator(base_path=base, project_id="proj", keyring=load_keyring(cli_env, announce=False))
    token = CANARIES["github"]
    in_listing = api.submit(token, {})
    in_timeline = api.submit("x" * 110 + " " + token, {})
    key_begins = api.submit("-----BEGIN PRIVATE KEY----- MIIEvQIBADAN", {})
    after = api.submit("echo", {})

    listing = run_script("status", "--all", env=cli_env)
    assert listing.returncode == 0 and "ghp_CANARY" not in listing.stdout
    assert [line.split()[0] for line in listing.stdout.splitlines()[1:]] == [in_listing, in_timeline, key_begins,
                                                                              after]
    timeline = run_script("audit_timeline", "--job-id", in_timeline, env=cli_env)
    assert timeline.returncode == 0 and "ghp_CANARY" not in timeline.stdout
    shown = run_script("status", key_begins, env=cli_env)
    assert shown.returncode == 0 and "MIIEvQIBADAN" not in shown.stdout
    assert "kind             [REDACTED]" in shown.stdout and "attempt          0" in shown.stdout
    ends = run_script("audit_timeline", "--job-id", key_begins, env=cli_env)
    assert ends.returncode == 0 and ends.stdout.rstrip().endswith("OK: every line verified")
