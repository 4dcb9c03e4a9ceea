"""``orchestrator db``: the PostgreSQL schema (``db migrate``, ``db status``)."""
from __future__ import annotations

import os

import click

from orchestrator.cli import cli
from orchestrator.cli_common import CONTEXT, Output, reported_errors
from orchestrator.cli_values import store_option
from orchestrator.config import store_named
from orchestrator.errors import ConfigError


@cli.group(context_settings=CONTEXT)
def db() -> None:
    """PostgreSQL backend: create and upgrade the schema (see docs/postgres.md)."""


# ``--store`` without the other commands' default: the file backend has no schema, so ``db`` needs a URL
DB_STORE_HELP = ("A postgresql:// URL: the database whose schema this is (required; 'file', the other commands' "
                 "default, has no schema).")


def _url(store_url: str | None) -> str:
    """The database ``--store`` (or ``ORCH_STORE_URL``) names; a value every command refuses (empty, neither
    'file' nor a postgresql:// URL) is refused as they refuse it, not taken for the file backend."""
    url = store_named(store_url, os.environ)
    if url is None:
        raise ConfigError("give --store postgresql://... (or set ORCH_STORE_URL); the file backend has no schema")
    return url


def _span(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.3f} s"


def _run(as_json: bool, action) -> None:
    out = Output(as_json)
    with reported_errors(out):
        action(out)


@db.command("migrate", context_settings=CONTEXT)
@store_option(DB_STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def db_migrate(store_url: str | None, as_json: bool) -> None:
    """Create or upgrade the schema to this release's version.

    Idempotent (running it again applies nothing) and safe to run from several machines at
    once (an advisory lock makes them take turns). Each migration commits with its version row.
    """
    from orchestrator.store.pg_schema import migrate

    def action(out: Output) -> None:
        result = migrate(_url(store_url))
        out.emit(result, lambda: (f"schema migrated from version {result['from_version']} to {result['to_version']}: "
                                  + ", ".join(result["applied"])) if result["applied"]
                 else f"schema already at version {result['to_version']}; nothing to do")

    _run(as_json, action)


@db.command("status", context_settings=CONTEXT)
@store_option(DB_STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def db_status(store_url: str | None, as_json: bool) -> None:
    """Show the schema version of the database and the version this release needs (exit 3 if behind: CONFIG_ERROR,
    or newer, migrated by a newer release: SCHEMA_TOO_NEW, or a table or column of it missing, or a trigger of it
    dropped or disabled: CONFIG_ERROR, changed by hand, or not firing in a session run with session_replication_role
    = replica, where commands write nothing: CONFIG_ERROR), and how far this machine's clock is from the server's, by
    which every machine decides time on PostgreSQL."""
    import psycopg

    from orchestrator.config import pg_deadline_seconds
    from orchestrator.store.pg_clock import ServerClock
    from orchestrator.store.pg_connection import _storage_error, connect
    from orchestrator.store.pg_deadline import Deadline
    from orchestrator.store.pg_schema import (current_version, hand_changes, latest_version, replica_problem,
                                              version_problem)

    def action(out: Output) -> None:
        url = _url(store_url)
        # each round trip within ORCH_PG_DEADLINE_SECONDS, as every other command's calls (opening the connection:
        # connect_timeout); until 2026-12-06 a server that did not answer held it for as long as it lasted
        deadline = Deadline(pg_deadline_seconds(os.environ))
        server_clock = ServerClock(lambda: None)
        try:
            conn = connect(url, autocommit=True, deadline=deadline)
            try:
                with deadline.bounded(conn):
                    version = current_version(conn)
                with deadline.bounded(conn):  # changed by hand: as every other command finds it, triggers too, and
                    # a session in which they do not fire (the database's or the role's, as a command's would be)
                    problem = version_problem(version) or hand_changes(conn) or replica_problem(conn)
                with deadline.bounded(conn):
                    server_clock.take(conn)
            except psycopg.Error as exc:  # a table the role may not read, or a connection lost after the version
                raise _storage_error(exc, conn) from None
            finally:
                conn.close()
        finally:
            deadline.close()  # its watchdog thread, if a call started one
        sample = server_clock.sample
        assert sample is not None and server_clock.offset is not None  # ``take`` keeps its first sample
        data = {"version": version, "latest": latest_version(), "up_to_date": problem is None,
                "clock_offset_s": round(server_clock.offset, 6), "clock_round_trip_s": round(sample.round_trip, 6)}
        if problem is not None:  # the figures and the verdict in one object, as metrics --fail-on gives them
            data.update(problem.to_dict())
        ahead = "ahead of" if server_clock.offset >= 0 else "behind"
        out.emit(data, lambda: f"schema version {version}, this release needs {latest_version()}"
                 + ("" if problem is None else f"\n{problem.code}: {problem.message}")
                 + f"\nserver clock {_span(abs(server_clock.offset))} {ahead} this machine's "
                   f"(+/- {sample.round_trip * 500:.1f} ms); workers decide time by the server's (docs/postgres.md)")
        if problem is not None:
            click.get_current_context().exit(problem.exit_code)

    _run(as_json, action)
