"""Every command block of docs/runbook.md runs against a real store, so the runbook cannot drift.

Each ```bash block is preceded by ``<!-- runbook-test: job=STATE [project=NAME] [requires=SCRIPT] -->``:
the test prepares ``<job_id>`` in that state in a fresh project (blocks naming the same
``project`` share one), substitutes the placeholders, runs every command as a subprocess from
a scratch checkout (symlinks to the code, so ``cp .env.example .env`` cannot touch the repo),
and checks its exit code: 0, or the ``# exit N`` at the end of the line. A block that
``requires`` a script this branch does not have yet (scripts/worker.py) is skipped, saying so.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import jobstates as js
from helpers import REPO
from orchestrator import Orchestrator
from orchestrator.key_files import load_keyring
from orchestrator.signing import new_seed

RUNBOOK = REPO / "docs" / "runbook.md"
BLOCK = re.compile(r"(?:<!--\s*runbook-test:(?P<meta>[^>]*)-->\s*\n)?```(?P<lang>bash|console|sh)\n(?P<body>.*?)```",
                   re.S)
ANSWER = "yes, ship it"
DONE_SCRIPT = ("import json, os; open(os.environ['ORCH_TERMINAL_FILE'], 'w')"
               ".write(json.dumps({'status': 'done', 'summary': 'recovered and re-run'}))")


@dataclass
class Block:
    index: int
    line: int
    meta: dict[str, str]
    commands: list[tuple[str, int]] = field(default_factory=list)  # (command, expected exit)


def parse(text: str) -> list[Block]:
    blocks = []
    for i, m in enumerate(BLOCK.finditer(text)):
        meta = dict(kv.split("=", 1) for kv in (m.group("meta") or "").split())
        block = Block(i, text.count("\n", 0, m.start("body")) + 1, meta)
        lines = m.group("body").splitlines()
        n = 0
        while n < len(lines):
            line = lines[n]
            n += 1
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            heredoc = re.search(r"<<'?(\w+)'?", line)
            while line.endswith("\\"):
                line = line[:-1] + lines[n]
                n += 1
            if heredoc:
                end = lines.index(heredoc.group(1), n)
                line = "\n".join([line, *lines[n:end + 1]])
                n = end + 1
            expected = re.search(r"#\s*exit\s+(\d+)\s*$", line.splitlines()[0])
            block.commands.append((line, int(expected.group(1)) if expected else 0))
        blocks.append(block)
    return blocks


BLOCKS = parse(RUNBOOK.read_text(encoding="utf-8"))


def test_every_block_is_marked_and_every_command_is_a_real_one() -> None:
    assert len(BLOCKS) >= 15
    for block in BLOCKS:
        assert "job" in block.meta, f"runbook line {block.line}: a block without a runbook-test marker"
        for command, _ in block.commands:
            for script in re.findall(r"scripts/(\w+)\.py", command):
                needed = block.meta.get("requires", "").split(",")
                assert (REPO / "scripts" / f"{script}.py").exists() or script in needed, \
                    f"runbook line {block.line}: scripts/{script}.py does not exist"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch checkout: the code by symlink, files a command may write copied."""
    root = tmp_path_factory.mktemp("checkout")
    for name in ("scripts", "orchestrator", "tests", "pyproject.toml", "docs", "utils", "test_imports.py"):
        (root / name).symlink_to(REPO / name)
    (root / ".env.example").write_bytes((REPO / ".env.example").read_bytes())
    return root


@pytest.fixture(scope="module")
def git_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A small repository to roll back in (never the real one)."""
    repo = tmp_path_factory.mktemp("deployed")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    commits = []
    for n in (1, 2):
        (repo / "VERSION").write_text(f"{n}\n")
        subprocess.run([*git, "add", "VERSION"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", f"release {n}"], check=True)
        commits.append(subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                                      check=True).stdout.strip())
    return repo, commits[0]


def prepare(orch: Orchestrator, state: str) -> tuple[str, str]:
    """A job in ``state`` and its run id, written as a worker and an operator would."""
    if state == "none":
        return "", ""
    if state == "waiting_human":
        return js.waiting_human(orch, run_id="run-rb1"), "run-rb1"
    if state == "awaiting_audit":
        return js.awaiting_audit(orch, run_id="run-rb1"), "run-rb1"
    if state == "stale_running":
        # a `command` job, so the stock worker of the runbook can run it again once recovered
        return js.running(orch, run_id="run-rb1", lease="2020-01-01T00:00:00.000000Z", kind="command",
                          input={"argv": [sys.executable, "-c", DONE_SCRIPT]}), "run-rb1"
    if state == "stale_waiting_human":
        return js.stale_to_waiting_human(orch, run_id="run-rb1"), "run-rb1"
    if state == "queued_unknown_kind":  # no worker of the runbook has a handler for it
        return orch.submit("nosuchhandler", {}), ""
    job_id = js.waiting_human(orch, run_id="run-rb1")
    if state == "resumed":
        orch.resume(job_id, ANSWER)
    elif state == "unaudited":  # the event of a resume whose audit entry a crash lost
        view = orch.load(job_id)
        orch.append(view, job_id, [("job_resumed", {"answer": ANSWER, "question": view.state.question})])
    else:
        raise AssertionError(f"unknown runbook-test job state {state!r}")
    return job_id, "run-rb1"


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {"base": tmp_path_factory.mktemp("runbook-base"), "seed": new_seed(), "shared": {}}


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"line{b.line}")
def test_runbook_block_runs_as_written(block: Block, checkout: Path, git_repo, projects: dict,
                                       tmp_path: Path) -> None:
    required = [r for r in block.meta.get("requires", "").split(",") if r]
    missing = [r for r in required if not (REPO / "scripts" / f"{r}.py").exists()]
    if missing:
        pytest.skip(f"runbook line {block.line} needs scripts/{missing[0]}.py, which lands with another branch "
                    "(worker/performance); this block runs as soon as it exists")
    base: Path = projects["base"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(BASE_PATH=str(base), ORCH_SIGNING_KEY=projects["seed"], PYTHONPATH=str(checkout),
               ORCH_KEYRING_DIR=str(tmp_path / "keyring"))
    shared = block.meta.get("project")
    if shared and shared in projects["shared"]:
        project, job_id, run_id = projects["shared"][shared]
    else:
        project = f"rb-{block.line}"
        orch = Orchestrator(base_path=base, project_id=project, keyring=load_keyring(env, announce=False))
        job_id, run_id = prepare(orch, block.meta["job"])
        if shared:
            projects["shared"][shared] = (project, job_id, run_id)
    env["PROJECT_ID"] = project
    repo, last_good = git_repo
    values = {"<job_id>": job_id, "<run_id>": run_id, "<answer>": ANSWER, "<pid>": project,
              "<backup_dir>": str(base / f"backup-{shared or block.line}"), "<checkout>": str(repo),
              "<last_good_commit>": last_good, "<compromised_kid>": load_keyring(env, announce=False).signer_id or ""}
    worker = None
    if any("<worker_pid>" in c for c, _ in block.commands):  # a live worker for the block to stop
        worker = subprocess.Popen([sys.executable, "scripts/worker.py"], cwd=checkout, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # let it start and go idle; the block must stop a worker that is really running
        assert worker.poll() is None, f"the worker died before the runbook stopped it: {worker.communicate()}"
        values["<worker_pid>"] = str(worker.pid)
    try:
        for command, expected in block.commands:
            for placeholder, value in values.items():
                command = command.replace(placeholder, value)
            assert not re.search(r"<[a-z_]+>", command.splitlines()[0]), f"unsubstituted placeholder in {command!r}"
            if command.startswith("python3 "):
                command = f"{sys.executable} {command[len('python3 '):]}"
            proc = subprocess.run(["bash", "-c", command], cwd=checkout, env=env, capture_output=True, text=True,
                                  timeout=120)
            assert proc.returncode == expected, (
                f"docs/runbook.md line {block.line}: `{command}` exited {proc.returncode}, the runbook says {expected}\n"
                f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}")
    except BaseException:
        if worker is not None:
            worker.kill()
        raise
    if worker is not None:
        out, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, f"the worker did not stop gracefully on SIGTERM: {worker.returncode}\n{out}\n{err}"


def test_the_routine_key_rotation_block_revokes_nothing_and_revocation_is_a_block_of_its_own() -> None:
    """Section G pasted for a routine rotation must not revoke the old key: every event it signed would then fail
    ``verify`` (``KEY_REVOKED``). Revoking is the compromised key's block alone."""
    text = RUNBOOK.read_text(encoding="utf-8")
    routine = text[text.index("**Routine rotation**"):text.index("**Revocation, only for a compromised key**")]
    compromised = text[text.index("**Revocation, only for a compromised key**"):text.index("## No-terminal fallback")]
    commands = [command for block in parse(routine) for command, _ in block.commands]
    assert any("keys rotate" in c for c in commands) and not any("revoke" in c for c in commands), commands
    assert any("keys revoke <compromised_kid>" in c for block in parse(compromised) for c, _ in block.commands)
