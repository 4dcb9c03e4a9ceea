"""Backends for tests: the PostgreSQL test database, and raw access to stored histories.

``require_pg()`` returns the URL of a migrated test database (``ORCH_TEST_PG_URL``, default
``postgresql://postgres@127.0.0.1:5432/test``). When the server is unreachable the test
FAILS if ``CI=true`` (CI must run these tests for real) and SKIPS otherwise, with the reason.
Each PostgreSQL test uses its own project id and deletes its rows afterwards.

``RawHistory`` lets a test act as an intruder with write access to the storage: read and
rewrite a job's stored lines (a file on disk, or rows in ``orch_events``).
"""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from orchestrator.store.postgres import PostgresStore

# Read at import: the autouse fixture of conftest.py clears ORCH_* variables for each test.
PG_URL = os.environ.get("ORCH_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
_ready: dict[str, Any] = {}


def require_pg() -> str:
    """The migrated test database's URL; fail in CI, skip elsewhere, when it is unreachable."""
    if "url" not in _ready:
        try:
            from orchestrator.store.pg_schema import migrate

            migrate(PG_URL)
            _ready["url"] = PG_URL
        except Exception as exc:  # noqa: BLE001 - any failure means "no usable database"
            _ready["error"] = f"PostgreSQL unreachable at ORCH_TEST_PG_URL={PG_URL}: {exc}"
            _ready["url"] = None
    if _ready["url"] is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{_ready['error']} (CI=true: the PostgreSQL tests must run)")
        pytest.skip(f"{_ready['error']} (set ORCH_TEST_PG_URL to run the PostgreSQL tests)")
    return _ready["url"]


@contextlib.contextmanager
def scratch_database(*, superuser: str | None = None) -> Iterator[str]:
    """The URL of a new, migrated database, dropped after the block: for a test that locks a table, sets a role's or
    the database's settings or makes roles, so that no other test waits for it or meets them. ``superuser``: why the
    test needs the test server's user to be one (skipped, saying so, where it is not)."""
    from orchestrator.store.pg_schema import migrate
    from orchestrator.store.postgres import connect

    url = require_pg()
    name = f"orch_to_{uuid.uuid4().hex[:12]}"
    admin = connect(url, autocommit=True)
    try:
        if superuser and admin.execute("SELECT current_setting('is_superuser')").fetchone()[0] != "on":
            pytest.skip(superuser)
        admin.execute(f"CREATE DATABASE {name}")
        try:
            scratch_url = f"{url.rpartition('/')[0]}/{name}"
            migrate(scratch_url)
            yield scratch_url
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        admin.close()


def timing_out(url: str, **settings: str) -> str:
    """``url`` whose sessions run with the server settings given (``lock_timeout="100ms"``), as ``ALTER ROLE ... SET``
    would give them."""
    from urllib.parse import quote

    options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    return f"{url}{'&' if '?' in url else '?'}options={quote(options)}"


def unique_project(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:16]}"


def drop_project(url: str, project: str) -> None:
    from orchestrator.store.pg_schema import delete_project

    delete_project(url, project)


class TestPostgresStore(PostgresStore):
    """A store on a fresh project whose rows are deleted on ``close``."""

    __test__ = False

    def __init__(self, project: str | None = None) -> None:
        super().__init__(require_pg(), project or unique_project())

    def close(self) -> None:
        super().close()
        drop_project(self.url, self.project)


class Cluster:
    """One PostgreSQL project seen from several machines (each with its own store and base path). ``worker_defaults``:
    settings of every worker it makes, unless a call gives its own."""

    def __init__(self, tmp_path: Path, **worker_defaults: Any) -> None:
        from orchestrator.signing import new_seed

        self.tmp = tmp_path
        self.seed = new_seed()
        os.environ["ORCH_SIGNING_KEY"] = self.seed
        self.home = TestPostgresStore()
        self.project = self.home.project
        self.url = self.home.url
        self.stores: list[PostgresStore] = []
        self.worker_defaults = {"retry_base_seconds": 0.0, **worker_defaults}

    def machine(self, name: str, **orch_options: Any) -> Any:
        from orchestrator import Orchestrator

        store = PostgresStore(self.url, self.project)
        self.stores.append(store)
        base = self.tmp / name
        base.mkdir(exist_ok=True)
        return Orchestrator(base_path=base, project_id=self.project, store=store, **orch_options)

    def worker(self, orch: Any, name: str, **settings: Any) -> Any:
        import random

        from orchestrator.worker import Worker, WorkerSettings

        return Worker(orch, WorkerSettings(worker_id=name, **{**self.worker_defaults, **settings}), rng=random.Random(7))

    def process_env(self, cli_env: dict[str, str], name: str) -> dict[str, str]:
        """The environment of a command run on another machine ``name`` (its own base path) against this project,
        with the test handlers (``worker_handlers``) importable."""
        from helpers import REPO

        base = self.tmp / name
        base.mkdir(exist_ok=True)
        return {**cli_env, "ORCH_SIGNING_KEY": self.seed, "ORCH_STORE_URL": self.url, "PROJECT_ID": self.project,
                "BASE_PATH": str(base), "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}",
                "ORCH_HANDLERS": "worker_handlers"}

    def close(self) -> None:
        for store in self.stores:
            store.close()
        self.home.close()


@contextlib.contextmanager
def killed_at_the_end(proc: Any) -> Iterator[Any]:
    """A process started for the block, SIGKILLed (and reaped) when it ends, however it ends."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@contextlib.contextmanager
def cluster_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **worker_defaults: Any) -> Iterator[Cluster]:
    """A ``Cluster`` for one test; the signing key it sets is taken back after it."""
    require_pg()
    monkeypatch.setenv("ORCH_SIGNING_KEY", "")  # replaced by the cluster's; restored by monkeypatch
    cluster = Cluster(tmp_path, **worker_defaults)
    try:
        yield cluster
    finally:
        cluster.close()


# the two backends, for ``pytest.fixture(params=BACKENDS)``: the PostgreSQL one marked, so ``-m "not postgres"`` skips it
BACKENDS = ["file", pytest.param("postgres", marks=pytest.mark.postgres)]


@contextlib.contextmanager
def orchestrator_on(backend: str, base: Path, keyring: Any) -> Iterator[Any]:
    """An ``Orchestrator`` of one project on ``backend`` (``BACKENDS``); a PostgreSQL project's rows are deleted after."""
    from orchestrator import Orchestrator

    if backend == "file":
        yield Orchestrator(base_path=base, project_id="proj", keyring=keyring)
        return
    store = TestPostgresStore()
    try:
        yield Orchestrator(base_path=base, project_id=store.project, keyring=keyring, store=store)
    finally:
        store.close()


# -- raw access, as an intruder with write access to the storage would have -------------------
class RawHistory:
    """Read and rewrite a stream's stored bytes, newline-terminated lines as in a file."""

    def __init__(self, orch: Any) -> None:
        self.orch = orch

    def read_bytes(self, stream: str) -> bytes:
        raise NotImplementedError

    def write_bytes(self, stream: str, data: bytes) -> None:
        raise NotImplementedError

    def drop_head_record(self, stream: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class FileHistory(RawHistory):
    def path(self, stream: str) -> Path:
        return self.orch.store.path(stream)

    def read_bytes(self, stream: str) -> bytes:
        return self.path(stream).read_bytes()

    def write_bytes(self, stream: str, data: bytes) -> None:
        self.path(stream).write_bytes(data)

    def drop_head_record(self, stream: str) -> None:
        (self.orch.settings.state_dir / "heads" / stream).unlink()


class PgHistory(RawHistory):
    """Rows of ``orch_events``: an edit of a line is an ``UPDATE`` of its row's bytes."""

    _connection: Any = None

    def _conn(self) -> Any:
        from orchestrator.store.postgres import connect

        if self._connection is None:
            self._connection = connect(self.orch.store.url, autocommit=True)
            self._connection.execute("SET synchronous_commit = off")  # an intruder needs no durability
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()

    def read_bytes(self, stream: str) -> bytes:
        return b"".join(s.raw + b"\n" for s in self.orch.store.read(stream))

    def write_bytes(self, stream: str, data: bytes) -> None:
        assert data.endswith(b"\n") or not data, "PostgreSQL rows hold complete lines only"
        new = data.split(b"\n")[:-1]
        old = [s.raw for s in self.orch.store.read(stream)]
        project = self.orch.store.project
        conn = self._conn()
        if len(new) == len(old):
            for seq, (a, b) in enumerate(zip(old, new), 1):
                if a != b:
                    conn.execute("UPDATE orch_events SET line = %s WHERE project = %s AND stream = %s AND seq = %s",
                                 (b, project, stream, seq))
        else:
            conn.execute("DELETE FROM orch_events WHERE project = %s AND stream = %s", (project, stream))
            for seq, line in enumerate(new, 1):
                conn.execute("INSERT INTO orch_events (project, stream, seq, line) VALUES (%s, %s, %s, %s)",
                             (project, stream, seq, line))
        # the head row follows, as it would in a restored backup or a careful intruder's edit
        conn.execute("INSERT INTO orch_streams (project, stream, seq, last_line) VALUES (%s, %s, %s, %s) "
                     "ON CONFLICT (project, stream) DO UPDATE SET seq = EXCLUDED.seq, last_line = EXCLUDED.last_line",
                     (project, stream, len(new), new[-1] if new else b""))

    def drop_head_record(self, stream: str) -> None:
        self._conn().execute("DELETE FROM orch_aux WHERE project = %s AND area = 'heads' AND key = %s",
                             (self.orch.store.project, stream))


@contextlib.contextmanager
def with_raw_access(backend: str, base: Path, keyring: Any) -> Iterator[tuple[Any, RawHistory]]:
    """An ``Orchestrator`` on ``backend`` ("file" or "postgres") and raw write access to its storage."""
    with orchestrator_on(backend, base, keyring) as orch:
        raw: RawHistory = FileHistory(orch) if backend == "file" else PgHistory(orch)
        try:
            yield orch, raw
        finally:
            raw.close()
