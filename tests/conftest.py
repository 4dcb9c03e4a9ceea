"""Shared fixtures: every test gets its own keyring and base path, never the user's."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from backends import BACKENDS, orchestrator_on  # here, before any test clears ORCH_TEST_PG_URL (``backends.PG_URL``)
from orchestrator.signing import Keyring, new_seed

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private keyring folder, no inherited orchestrator settings, no variables withheld from handlers by a
    worker of an earlier test (``handler_env.withhold`` holds for the process), and no ``.env`` lines an earlier
    test's ``load_dotenv_file()`` recorded (``config._DOTENV_LINES``: a later empty setting was said to be that
    file's)."""
    monkeypatch.setattr("orchestrator.handler_env._withheld", set())
    monkeypatch.setattr("orchestrator.config._DOTENV_LINES", {})
    for name in list(os.environ):
        if name.startswith("ORCH_") or name in ("BASE_PATH", "PROJECT_ID", "LLM_API_KEY", "LLM_URL"):
            monkeypatch.delenv(name)
    keyring_dir = tmp_path / "keyring"
    monkeypatch.setenv("ORCH_KEYRING_DIR", str(keyring_dir))
    return keyring_dir


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.generate()


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "base"
    path.mkdir()
    return path


@pytest.fixture
def orch(base: Path, keyring: Keyring):
    from orchestrator import Orchestrator

    return Orchestrator(base_path=base, project_id="proj", keyring=keyring)


@pytest.fixture(params=BACKENDS)
def any_orch(request: pytest.FixtureRequest, base: Path, keyring: Keyring):
    """An orchestrator on files, then on PostgreSQL (its own project, whose rows are deleted afterwards): for a
    behaviour both stores must show."""
    with orchestrator_on(request.param, base, keyring) as orch:
        yield orch


@pytest.fixture
def cli_env(base: Path, isolated_env: Path) -> dict[str, str]:
    """Environment for running the real scripts as subprocesses against ``base``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(BASE_PATH=str(base), PROJECT_ID="proj", ORCH_SIGNING_KEY=new_seed(),
               ORCH_KEYRING_DIR=str(isolated_env), PYTHONPATH=str(REPO))
    return env

