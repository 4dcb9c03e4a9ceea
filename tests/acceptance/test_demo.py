"""The README's first Quick start command: ``python -m orchestrator.demo`` runs a real flow."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.demo import NEXT_STEPS




def test_the_demo_runs_a_real_flow_and_says_what_to_do_next(cli_env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "orchestrator.demo", str(tmp_path / "demo-base")], env=cli_env,
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    states = dict(re.findall(r"^  (command|greet|ask|audit|flaky|broken)\s+\S+\s+(\w+)", out, re.M))
    assert states == {"command": "succeeded", "greet": "succeeded", "ask": "waiting_human",
                      "audit": "awaiting_audit", "flaky": "succeeded", "broken": "failed"}
    assert "retry" in out and "UPSTREAM_503" in out and "attempt=2" in out
    assert "verify: OK" in out and "CONTEXT_SIGNATURE_INVALID" in out
    for command in ("-m orchestrator control resume", "-m orchestrator control approve", "-m orchestrator status",
                    "-m orchestrator audit-timeline --job-id"):  # not a checkout: no scripts/ here
        assert command in out
    assert (tmp_path / "demo-base" / "demo" / ".orchestrator" / "artifacts").is_dir()


def run_demo(cli_env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.demo", *args], env=cli_env, cwd=str(cwd),
                          capture_output=True, text=True, timeout=120)


def test_demo_help_prints_usage_and_creates_nothing(cli_env: dict[str, str], tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_demo(cli_env, cwd, "--help")
    assert proc.returncode == 0 and "usage: python -m orchestrator.demo" in proc.stdout
    assert list(cwd.iterdir()) == []  # not a base path named "--help"
    proc = run_demo(cli_env, cwd, "--base-path", "x")
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr
    assert list(cwd.iterdir()) == []


def test_demo_run_again_replaces_its_own_project_but_never_a_project_it_did_not_make(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    assert run_demo(cli_env, tmp_path).returncode == 0
    again = run_demo(cli_env, tmp_path)
    assert again.returncode == 0 and "verify: OK - 6 streams" in again.stdout  # afresh: the first run's jobs are gone

    real = tmp_path / "srv" / "demo" / ".orchestrator" / "queue" / "jobs"
    real.mkdir(parents=True)
    (real / "01JOBOFAREALPROJECT0000000.events.jsonl").write_bytes(b"{}\n")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "srv").rglob("*"))
    refused = run_demo(cli_env, tmp_path, str(tmp_path / "srv"))
    assert refused.returncode == 3 and "was not made by this demo; nothing was changed" in refused.stderr
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "srv").rglob("*")) == before


def test_a_demo_run_killed_while_it_replaced_its_project_leaves_what_the_next_run_replaces(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    """Killed after making the project's folder but before its marker (an empty folder), or while removing the
    project it set aside (``.demo.replaced-*``): the next run goes ahead and removes what was set aside."""
    (tmp_path / "demo").mkdir()
    aside = tmp_path / ".demo.replaced-0badf00d"
    (aside / ".orchestrator").mkdir(parents=True)
    again = run_demo(cli_env, tmp_path, str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "demo" / ".made-by-orchestrator-demo").is_file() and not aside.exists()


def test_demo_refuses_a_link_or_a_file_in_its_projects_place_or_as_its_folder_without_a_traceback(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    made = tmp_path / "made"
    assert run_demo(cli_env, tmp_path, str(made)).returncode == 0
    places = {"dangling link": tmp_path / "a", "link to a demo it made": tmp_path / "b", "file": tmp_path / "c"}
    for where in places.values():
        where.mkdir()
    (places["dangling link"] / "demo").symlink_to(tmp_path / "nowhere")
    (places["link to a demo it made"] / "demo").symlink_to(made / "demo")  # its marker is there: still refused
    (places["file"] / "demo").write_text("not a folder")
    for name, where in places.items():
        refused = run_demo(cli_env, tmp_path, str(where))
        assert refused.returncode == 3 and "was not made by this demo" in refused.stderr, (name, refused.stderr)
        assert "Traceback" not in refused.stderr
    assert (made / "demo" / ".orchestrator").is_dir()  # the demo a link pointed at was left alone
    (tmp_path / "a-file").write_text("x")
    not_a_folder = run_demo(cli_env, tmp_path, str(tmp_path / "a-file"))
    assert not_a_folder.returncode == 3 and "a-file is not a folder" in not_a_folder.stderr
    assert "Traceback" not in not_a_folder.stderr


@pytest.mark.parametrize("given, said", [
    ("", "the demo's FOLDER must not be empty (leave it out for ./demo-base)"),  # was the current folder
    ("loop", "the demo's FOLDER loop cannot be used: a loop of symbolic links"),  # a traceback, exit 1, before
    ("n" * 300, f"the demo's FOLDER {'n' * 300} cannot be used: File name too long"),  # idem
], ids=["empty", "link-loop", "name-too-long"])
def test_demo_refuses_a_base_path_no_folder_can_be_at_as_every_command_does(
        cli_env: dict[str, str], tmp_path: Path, given: str, said: str) -> None:
    (tmp_path / "loop").symlink_to("loop")
    before = sorted(tmp_path.iterdir())
    refused = run_demo(cli_env, tmp_path, given)
    assert (refused.returncode, refused.stdout) == (3, ""), refused.stderr[-3000:]
    assert refused.stderr.startswith("error[CONFIG_ERROR]: ") and said in refused.stderr
    assert "BASE_PATH" not in refused.stderr and "--base-path" not in refused.stderr  # the demo has neither
    assert sorted(tmp_path.iterdir()) == before  # nothing made


@pytest.mark.parametrize("where", ["a checkout", "any other folder"])
def test_every_next_step_the_demo_prints_works_when_pasted_into_a_shell_where_it_ran(
        cli_env: dict[str, str], tmp_path: Path, where: str) -> None:
    """Pasted in the folder the demo ran in, as printed: paths quoted (a space in them), the interpreter that ran the
    demo (the Quick start does not activate its .venv, and a bare python3 may lack the dependencies); the runbook's
    scripts in a checkout, the installed package elsewhere (a ``scripts/status.py`` there does not exist)."""
    from helpers import REPO

    env = {k: v for k, v in cli_env.items() if k not in ("BASE_PATH", "PROJECT_ID")}
    cwd = REPO if where == "a checkout" else tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    proc = run_demo(env, cwd, str(tmp_path / "my demos"))
    assert proc.returncode == 0, proc.stderr
    steps = proc.stdout.split(NEXT_STEPS + "\n")[1].splitlines()
    assert len(steps) == 9 and all(line.startswith("  ") for line in steps)
    assert ("scripts/status.py --all" if where == "a checkout" else "-m orchestrator status --all") in steps[0]
    for line in steps:
        pasted = subprocess.run(["bash", "-c", line.strip()], env=env, cwd=str(cwd), capture_output=True,
                                text=True, timeout=60)
        # the revise line is the alternative to the approve line above it, which has taken the decision
        assert pasted.returncode == (5 if "# instead of approve" in line else 0), (line, pasted.stderr)


def test_the_demo_runs_on_files_even_where_the_environment_names_a_postgresql_store(cli_env: dict[str, str],
                                                                                   tmp_path: Path) -> None:
    """The demo is the file backend's: an ORCH_STORE_URL in the operator's shell must not send its jobs into (and its
    worker through) a PostgreSQL project named demo, which the marker cannot protect. Its next steps, pasted into that
    shell, read the demo's files. The URL here is unreachable: nothing is written to any database either way."""
    from helpers import REPO

    env = {**cli_env, "ORCH_STORE_URL": "postgresql://nobody@127.0.0.1:1/nowhere"}
    proc = run_demo(env, tmp_path, str(tmp_path / "demos"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "verify: OK - 6 streams" in proc.stdout
    assert (tmp_path / "demos" / "demo" / ".orchestrator" / "artifacts").is_dir()
    steps = proc.stdout.split(NEXT_STEPS + "\n")[1].splitlines()
    for line in (steps[0], steps[-2]):  # status --all, verify
        pasted = subprocess.run(["bash", "-c", line.strip()], env=env, cwd=str(REPO), capture_output=True,
                                text=True, timeout=60)
        assert pasted.returncode == 0, (line, pasted.stderr)


def test_the_demos_next_steps_act_on_its_files_where_a_dotenv_names_a_postgresql_store(cli_env: dict[str, str],
                                                                                      tmp_path: Path) -> None:
    """The scripts read a .env in the folder they are run from, and the demo does not: pasted there, its next steps
    must still act on the demo's file project, not on a PostgreSQL project named demo. The URL is unreachable:
    nothing is written to any database either way."""
    from helpers import REPO

    env = {k: v for k, v in cli_env.items() if k not in ("BASE_PATH", "PROJECT_ID")}
    checkout = tmp_path / "checkout"  # a checkout whose .env names PostgreSQL (the scripts come from REPO)
    checkout.mkdir()
    (checkout / "scripts").symlink_to(REPO / "scripts")
    (checkout / ".env").write_text("ORCH_STORE_URL=postgresql://nobody@127.0.0.1:1/nowhere\n")
    proc = run_demo(env, checkout, str(tmp_path / "demos"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = proc.stdout.split(NEXT_STEPS + "\n")[1].splitlines()
    assert "scripts/status.py --all" in steps[0]
    for line in steps:
        pasted = subprocess.run(["bash", "-c", line.strip()], env=env, cwd=str(checkout), capture_output=True,
                                text=True, timeout=60)
        assert pasted.returncode == (5 if "# instead of approve" in line else 0), (line, pasted.stderr)
        assert "ORCH_STORE_URL=file" in line or line.strip().startswith("tail ")
