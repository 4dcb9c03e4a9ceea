"""What a handler inherits from a worker on PostgreSQL: not the store's credentials.

libpq reads a password (``PGPASSWORD``), or where one or a client key is kept (``PGPASSFILE``, ``PGSERVICE``,
``PGSERVICEFILE``, ``PGSSLKEY``), from the environment when the URL does not give them: in a worker's environment
they are the store's, so its handlers do not get them, unless the worker is told to pass them
(``--pass-store-credentials``). The rest of libpq's variables (host, user, database) are no secret and still pass,
and a worker on files withholds none of them (a handler may rely on them for a database of its own).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

from orchestrator.handlers import register
from orchestrator.store.postgres import CREDENTIAL_ENV

from backends import Cluster, cluster_of, require_pg

pytestmark = pytest.mark.postgres

PY = sys.executable
# Values the store's own connections work with (libpq reads them too): the test URL gives host, user and database,
# the server trusts the user, and the service names a file of the test's (``libpq_env``).
LIBPQ_ENV = {"PGPASSWORD": "hunter2-of-the-store", "PGPASSFILE": "/nonexistent/pgpass", "PGSERVICE": "orch",
             "PGSERVICEFILE": "", "PGSSLKEY": "/nonexistent/client.key", "PGHOST": "db.internal", "PGUSER": "reporting"}
KEPT = ["PGHOST", "PGUSER"]
# the names only: a payload's values are redacted like any output (a PGPASSWORD=... included)
SEEN = ("import os, json; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write(json.dumps({'status': 'done', "
        "'summary': 'env', 'output': sorted(k for k in os.environ if k.startswith('PG'))}))")


def libpq_variables(ctx) -> dict:
    """A Python handler: the libpq variables of its process, and of a process it starts."""
    import subprocess

    child = subprocess.run([PY, "-c", "import os, json; print(json.dumps(sorted(k for k in os.environ "
                                      "if k.startswith('PG'))))"], capture_output=True, text=True).stdout
    return {"status": "done", "summary": "env", "output": {
        "own": sorted(k for k in os.environ if k.startswith("PG")), "child": json.loads(child)}}


@pytest.fixture
def libpq_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """``LIBPQ_ENV`` set in this process's environment (its service in a file of the test's)."""
    require_pg()  # first: it connects once per session, and caches a failure
    service = tmp_path / "pg_service.conf"
    service.write_text("[orch]\napplication_name=orch-test\n")
    env = {**LIBPQ_ENV, "PGSERVICEFILE": str(service)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, libpq_env: dict[str, str]) -> Iterator[Cluster]:
    with cluster_of(tmp_path, monkeypatch) as made:
        yield made


def test_the_credential_variables_are_every_libpq_variable_that_holds_or_locates_a_secret() -> None:
    assert CREDENTIAL_ENV == {"PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGSSLKEY"}


def test_a_command_run_by_a_worker_on_postgresql_gets_no_libpq_credentials_but_the_rest(cluster: Cluster) -> None:
    orch = cluster.machine("a")
    job = orch.submit("command", {"argv": [PY, "-c", SEEN]})
    worker = cluster.worker(orch, "w1")
    assert worker.run_once().outcome == "succeeded"
    assert orch.status(job).result["output"] == KEPT
    assert os.environ["PGPASSWORD"] == "hunter2-of-the-store"  # the worker's own environment keeps them


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_python_handler_of_a_worker_on_postgresql_and_what_it_starts_get_no_libpq_credentials(
        cluster: Cluster, mode: str) -> None:
    register("t.libpq_variables", libpq_variables)
    orch = cluster.machine("a")
    job = orch.submit("t.libpq_variables", max_attempts=1)
    worker = cluster.worker(orch, "w1", handler_process=mode)
    try:
        assert worker.run_once().outcome == "succeeded"
    finally:
        worker.close()
    out = orch.status(job).result["output"]
    assert out["own"] == KEPT and out["child"] == KEPT


def test_a_worker_told_to_pass_store_credentials_gives_them_to_its_handlers(cluster: Cluster) -> None:
    orch = cluster.machine("a")
    job = orch.submit("command", {"argv": [PY, "-c", SEEN]})
    assert cluster.worker(orch, "w1", pass_store_credentials=True).run_once().outcome == "succeeded"
    assert orch.status(job).result["output"] == sorted(LIBPQ_ENV)


def test_a_worker_on_files_passes_libpq_variables_to_its_handlers(orch, libpq_env: dict[str, str]) -> None:
    """The file backend reads no credentials from the environment: a handler's own database may use them."""
    from orchestrator.worker import Worker, WorkerSettings

    job = orch.submit("command", {"argv": [PY, "-c", SEEN]})
    assert Worker(orch, WorkerSettings(retry_base_seconds=0.0)).run_once().outcome == "succeeded"
    assert orch.status(job).result["output"] == sorted(LIBPQ_ENV)


@pytest.mark.parametrize("flag, seen", [([], KEPT), (["--pass-store-credentials"], sorted(LIBPQ_ENV))])
def test_worker_once_on_postgresql_keeps_libpq_credentials_from_a_command_unless_told_to_pass_them(
        cluster: Cluster, cli_env: dict[str, str], flag: list[str], seen: list[str]) -> None:
    """The real command, with the variables in its environment as an operator would set them."""
    import subprocess

    from helpers import REPO

    orch = cluster.machine("a")
    job = orch.submit("command", {"argv": [PY, "-c", SEEN]})
    env = {**cluster.process_env(cli_env, "b"), **{name: os.environ[name] for name in LIBPQ_ENV}}
    proc = subprocess.run([PY, str(REPO / "scripts" / "worker.py"), "--once", "--json", *flag], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert orch.status(job).result["output"] == seen
