"""A session whose ``session_replication_role`` is ``replica`` (set for the database or the role with ``ALTER ... SET``,
for the server, or in the URL's options) fires no ordinary trigger: not the fence (migration 0002), which refuses a
superseded worker's append whatever the code decided, nor the count of hand edits (0006). ``db status`` says so, and
the store refuses to write in such a session, unless the schema's triggers fire in it too (``ENABLE ALWAYS``).

Each test has a database of its own: ``ALTER DATABASE ... SET`` reaches every session opened in it afterwards."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner

from backends import scratch_database
from orchestrator import Orchestrator
from orchestrator.errors import ConfigError
from orchestrator.store.postgres import connect

pytestmark = pytest.mark.postgres

PROJECT = "p"


@pytest.fixture
def scratch() -> Iterator[str]:
    """The URL of a new, migrated database, dropped afterwards."""
    with scratch_database(superuser="session_replication_role is set by a superuser") as url:
        yield url


def on(url: str, statement: str) -> None:
    with connect(url, autocommit=True) as conn:
        conn.execute(statement)


def database_of(url: str) -> str:
    return url.rpartition("/")[2]


def cli() -> object:
    from orchestrator.cli import cli as command

    return command


def test_db_status_of_a_database_whose_sessions_run_as_replicas_exits_3_saying_the_triggers_do_not_fire(
        scratch: str) -> None:
    """Until 2026-12-07 it said "up to date", exit 0: the triggers are there and enabled, but not for such a session."""
    on(scratch, f"ALTER DATABASE {database_of(scratch)} SET session_replication_role = replica")
    result = CliRunner().invoke(cli(), ["db", "status", "--store", scratch, "--json"])
    assert result.exit_code == 3, result.output
    data = json.loads(result.stdout)
    assert data["error"] == "CONFIG_ERROR" and data["up_to_date"] is False, data
    message = data["message"]
    assert "session_replication_role" in message and "replica" in message and "orch_streams_fence" in message
    assert f"ALTER DATABASE {database_of(scratch)} RESET session_replication_role" in message, message
    on(scratch, f"ALTER DATABASE {database_of(scratch)} RESET session_replication_role")
    assert CliRunner().invoke(cli(), ["db", "status", "--store", scratch]).exit_code == 0


def test_a_store_whose_sessions_run_as_replicas_writes_nothing_and_still_reads(scratch: str, tmp_path: Path) -> None:
    """The fence is a safety property: without it a worker whose claim was superseded could still write its outcome.
    Until 2026-12-07 every write went through in such a session. Reads need no trigger, and go on."""
    orch = Orchestrator(base_path=tmp_path, project_id=PROJECT, store_url=scratch)
    job = orch.submit("t.echo", {})
    orch.store.close()
    on(scratch, f"ALTER DATABASE {database_of(scratch)} SET session_replication_role = replica")
    orch = Orchestrator(base_path=tmp_path, project_id=PROJECT, store_url=scratch)
    assert orch.status(job).state == "queued"
    with pytest.raises(ConfigError, match="session_replication_role") as refused:
        orch.cancel(job, "not in such a session")
    assert "nothing was written" in refused.value.message
    with pytest.raises(ConfigError, match="session_replication_role"):
        orch.submit("t.echo", {})
    assert orch.status(job).state == "queued" and [j.job_id for j in orch.jobs()] == [job]
    report = orch.verify()
    assert report.ok and not report.warnings, (report.problems, report.warnings)
    orch.store.close()


def test_a_command_in_a_session_run_as_a_replica_by_its_role_exits_3(scratch: str, tmp_path: Path) -> None:
    """The same set for the role in the URL's options (``-c session_replication_role=replica``), from the CLI."""
    url = f"{scratch}?options=-c%20session_replication_role%3Dreplica"
    env = {"BASE_PATH": str(tmp_path), "PROJECT_ID": PROJECT, "ORCH_STORE_URL": url}
    result = CliRunner().invoke(cli(), ["submit", "--kind", "t.echo", "--input", "{}", "--json"], env=env)
    assert result.exit_code == 3, result.output
    error = json.loads(result.stdout)
    assert error["error"] == "CONFIG_ERROR" and "session_replication_role" in error["message"], error
    listed = CliRunner().invoke(cli(), ["status", "--all", "--json"], env=env)
    assert listed.exit_code == 0 and json.loads(listed.stdout)["jobs"] == [], listed.output


def test_triggers_enabled_always_fire_in_a_replica_session_too_so_it_may_write(scratch: str, tmp_path: Path) -> None:
    """An operator whose sessions must run as replicas keeps the safety property with ``ENABLE ALWAYS``: then nothing
    is refused, and ``db status`` passes."""
    for table, trigger in (("orch_streams", "orch_streams_fence"), ("orch_events", "orch_events_updated"),
                           ("orch_events", "orch_events_deleted")):
        on(scratch, f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trigger}")
    on(scratch, f"ALTER DATABASE {database_of(scratch)} SET session_replication_role = replica")
    assert CliRunner().invoke(cli(), ["db", "status", "--store", scratch]).exit_code == 0
    orch = Orchestrator(base_path=tmp_path, project_id=PROJECT, store_url=scratch)
    job = orch.submit("t.echo", {})
    assert orch.cancel(job, "the fence fires here").applied
    orch.store.close()
