"""Versioned schema migrations for the PostgreSQL backend.

Migrations are the numbered files ``store/migrations/NNNN_name.sql``, applied in order,
each in its own transaction together with its row in ``orch_schema_migrations``, so a crash
leaves the schema at a whole version. ``migrate`` holds a session advisory lock for the
whole run: two operators (or two deploys) migrating at once take turns, and the second finds
nothing left to do.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from orchestrator import faults
from orchestrator.errors import ConfigError, SchemaTooNewError, without_nothing_written
from orchestrator.security import sanitize_text
from orchestrator.store.pg_connection import (_cancelled, _conflicted, _connection_lost, _storage_error, connect,
                                              redacted)

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "orch_schema_migrations"
# (IF NOT EXISTS: releases before 2026-12-06 made it before the first migration, and left it empty when that failed)
_CREATE_MIGRATIONS_TABLE = (f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version integer PRIMARY KEY, "
                            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
# pg_advisory_lock key for migrations: any fixed 64-bit number, distinct from stream locks.
MIGRATION_LOCK = 0x6F726368_6D696772  # "orchmigr"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped in the package, oldest first."""
    out = []
    for entry in resources.files("orchestrator.store.migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            out.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    out.sort(key=lambda mig: mig.version)
    if [mig.version for mig in out] != list(range(1, len(out) + 1)):
        raise RuntimeError("migrations must be numbered 0001, 0002, ... without gaps")
    return out


def latest_version() -> int:
    return migrations()[-1].version


def version_problem(version: int) -> ConfigError | None:
    """What keeps this release from using a database at schema ``version``, or None: a schema behind
    (``CONFIG_ERROR``: run ``db migrate``), or ahead, migrated by a newer release (``SCHEMA_TOO_NEW``: this code
    does not know what the newer schema expects of a writer, so it must not write into it, nor read it)."""
    latest = latest_version()
    if version < latest:
        return ConfigError(f"the database schema is at version {version}, this release needs {latest}: "
                           "run `orchestrator db migrate` first")
    if version > latest:
        return SchemaTooNewError(f"the database schema is at version {version}, newer than this release's {latest} "
                                 "(a newer release migrated it): upgrade the orchestrator on this machine; nothing "
                                 "was read or written")
    return None


# What the server answers a statement that names a table, column or function the database does not have
# (undefined_table, undefined_column, undefined_function): its schema changed under a store that had checked it (a
# database restored from an older backup, a newer release's migration, a table dropped by hand).
MISSING_SQLSTATES = frozenset({"42P01", "42703", "42883"})


def missing_problem(conn: Any, exc: Exception) -> ConfigError:
    """What the driver error ``exc`` (one of ``MISSING_SQLSTATES``) means, from the schema version on ``conn`` now:
    that version's problem (behind: run ``db migrate``; ahead: ``SCHEMA_TOO_NEW``), or, at this release's version, a
    schema changed by hand, which ``db migrate`` does not mend. A driver error while reading the version is a
    ``StorageError`` (``current_version``)."""
    version = current_version(conn)
    problem = version_problem(version)
    if problem is not None:
        return problem
    missing = getattr(getattr(exc, "diag", None), "message_primary", None) or str(exc)
    return ConfigError(sanitize_text(f"the database schema is at version {version}, this release's, but {missing}: "
                                     "it was changed by hand; restore it (`orchestrator db migrate` re-creates "
                                     "nothing its version rows say is applied)"))


def current_version(conn: Any) -> int:
    """The schema version of the database (0 when never migrated). A driver error (a role with no
    privilege on the table, say) is a ``StorageError``, as from every call of the store."""
    import psycopg

    try:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (MIGRATIONS_TABLE,)).fetchone()
        if not row[0]:
            return 0
        return conn.execute(f"SELECT coalesce(max(version), 0) FROM {MIGRATIONS_TABLE}").fetchone()[0]
    except psycopg.Error as exc:
        raise _storage_error(exc) from None


# Every table and column this release reads or writes (``hand_changes``; a test checks it against the migrations'),
# the tables being those that hold a project's rows (``delete_project``).
SCHEMA_COLUMNS = {
    "orch_streams": ("project", "stream", "seq", "last_line", "fence", "edits"),  # (first: see ``delete_project``)
    "orch_events": ("project", "stream", "seq", "line"),
    "orch_aux": ("project", "area", "key", "data"),
    "orch_ready": ("project", "job_id", "priority", "runnable_at_us", "reserved_by", "reserved_until_us", "kind",
                   "at_once", "signer", "signers"),
    "orch_running": ("project", "job_id", "epoch"),
}


# Every trigger the migrations make: its table, its migration, and what stops without a word when it is dropped or
# disabled by hand (``ALTER TABLE ... DISABLE TRIGGER``): no statement fails, so only ``db status`` can tell
# (``hand_changes``; a test checks it against the migrations').
_EDITS_UNCOUNTED = ("hand edits of orch_events rows are no longer counted (status --state and metrics may keep a job's "
                    "row from before such an edit)")
SCHEMA_TRIGGERS = {
    "orch_streams_fence": ("orch_streams", "0002_claiming", "a superseded worker's append is no longer refused (its "
                                                            "late outcome would be written)"),
    "orch_events_updated": ("orch_events", "0006_event_edits", _EDITS_UNCOUNTED),
    "orch_events_deleted": ("orch_events", "0006_event_edits", _EDITS_UNCOUNTED),
}
# pg_trigger.tgenabled: 'O' fires in ordinary sessions (ENABLE), 'A' in every session (ENABLE ALWAYS), 'R' only in
# replication sessions (ENABLE REPLICA: not in the orchestrator's), 'D' never (DISABLE)
_TRIGGER_STATES = {"D": "is disabled", "R": "fires only in replication sessions (ENABLE REPLICA TRIGGER)"}
_TRIGGERS = ("SELECT t.tgname, c.relname, t.tgenabled FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
             "WHERE NOT t.tgisinternal AND t.tgrelid = ANY(ARRAY(SELECT to_regclass(name) FROM unnest(%s::text[]) "
             "AS name))")


def hand_changes(conn: Any) -> ConfigError | None:
    """At this release's schema version, a table or column of ``SCHEMA_COLUMNS`` missing (``missing_problem``: changed
    by hand), found by one statement that names them all and reads no row; else a trigger of ``SCHEMA_TRIGGERS``
    dropped or disabled by hand (``trigger_changes``); None when there is neither. A missing column is what every
    other command finds at its first statement that names one; a trigger none finds. ``db status`` asks here (until
    2026-12-06 it said "up to date", and looked at no trigger). Raises the driver's error for
    any other failure (a role without the right to read a table)."""
    import psycopg

    names = ", ".join(f"{table}.{column}" for table, columns in SCHEMA_COLUMNS.items() for column in columns)
    try:
        conn.execute(f"SELECT {names} FROM {', '.join(SCHEMA_COLUMNS)} LIMIT 0")
    except psycopg.Error as exc:
        if getattr(exc, "sqlstate", None) not in MISSING_SQLSTATES:
            raise
        return missing_problem(conn, exc)
    return trigger_changes(conn)


def trigger_changes(conn: Any) -> ConfigError | None:
    """Each trigger of ``SCHEMA_TRIGGERS`` missing from its table, disabled, or set to fire only in replication
    sessions, in one ``ConfigError`` that says what each no longer does and how to set it right; None when all are
    there and enabled. For a schema at this release's version (``version_problem`` first: an older one lacks the newer
    migrations' triggers, which ``db migrate`` makes)."""
    tables = sorted({table for table, _migration, _stops in SCHEMA_TRIGGERS.values()})
    found = {name: (table, state) for name, table, state in conn.execute(_TRIGGERS, (tables,)).fetchall()}
    wrong = []
    for name, (table, migration, stops) in SCHEMA_TRIGGERS.items():
        if name not in found or found[name][0] != table:
            wrong.append(f"trigger {name} on {table} is missing, so {stops}; re-create it as migration {migration} "
                         "does (`orchestrator db migrate` re-creates nothing its version rows say is applied)")
        elif found[name][1] in _TRIGGER_STATES:
            wrong.append(f"trigger {name} on {table} {_TRIGGER_STATES[found[name][1]]}, so {stops}; enable it: "
                         f"`ALTER TABLE {table} ENABLE TRIGGER {name}`")
    if not wrong:
        return None
    return ConfigError(f"the database schema is at version {latest_version()}, this release's, but it was changed by "
                       "hand: " + "; ".join(wrong))


# Where a session's ``session_replication_role`` came from (``pg_settings.source``), and how to undo it there
_ROLE_SOURCES = {"database": "ALTER DATABASE {db} RESET session_replication_role",
                 "user": "ALTER ROLE {role} RESET session_replication_role",
                 "database user": "ALTER ROLE {role} IN DATABASE {db} RESET session_replication_role",
                 "client": "remove `-c session_replication_role=replica` from the URL's options or PGOPTIONS",
                 "configuration file": "remove session_replication_role from the server's configuration file"}
_REPLICA_ROLE = ("SELECT current_setting('session_replication_role'), s.source, quote_ident(current_database()), "
                 "quote_ident(current_user), "
                 "array(SELECT t.tgname FROM pg_trigger t WHERE NOT t.tgisinternal AND t.tgenabled NOT IN ('A', 'R') "
                 "AND t.tgname = ANY(%s) AND t.tgrelid = ANY(ARRAY(SELECT to_regclass(n) FROM unnest(%s::text[]) "
                 "AS n))) FROM pg_settings s WHERE s.name = 'session_replication_role'")


def replica_problem(conn: Any) -> ConfigError | None:
    """A ``ConfigError`` when ``conn``'s session runs with ``session_replication_role = replica`` and a trigger of
    ``SCHEMA_TRIGGERS`` does not fire in it (only ``ENABLE ALWAYS`` and ``ENABLE REPLICA`` triggers do): it says what
    no longer holds and how to reset the setting where it was made; None otherwise. ``db status`` asks; the store asks
    before it writes in a session ``connect`` found so (``PgSessions._call``): the fence is a safety property."""
    tables = sorted({table for table, _migration, _stops in SCHEMA_TRIGGERS.values()})
    role, source, db, user, silent = conn.execute(_REPLICA_ROLE, (list(SCHEMA_TRIGGERS), tables)).fetchone()
    if role != "replica" or not silent:
        return None
    stopped: dict[str, list[str]] = {}  # what no longer holds -> the triggers that held it
    for name in sorted(silent):
        stopped.setdefault(SCHEMA_TRIGGERS[name][2], []).append(name)
    stops = "; ".join(f"{', '.join(names)}: {what}" for what, names in stopped.items())
    undo = _ROLE_SOURCES.get(source, "SET session_replication_role = origin where it is set ({source})")
    return ConfigError(sanitize_text(
        f"this session runs with session_replication_role = replica (set by {source}), in which PostgreSQL fires no "
        f"ordinary trigger, so the schema's do not fire ({stops}); reset it: `{undo.format(db=db, role=user, source=source)}` "
        "(sessions opened afterwards), or, if this role's sessions must run as replicas, `ALTER TABLE ... ENABLE ALWAYS "
        "TRIGGER ...` each of them (docs/postgres.md)"))


def migrate(url: str) -> dict[str, Any]:
    """Bring the schema to the latest version; idempotent and safe to run concurrently. A schema newer than this
    release's is refused (``SCHEMA_TOO_NEW``), nothing written. One already at this release's version is read only
    (so a role without DDL rights may run it there); the version table is made with the first migration."""
    import psycopg

    conn = connect(url, autocommit=True)
    try:
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        except psycopg.Error as exc:  # nothing applied yet: a lock wait cut off, or no right to take it
            raise _storage_error(exc, conn) from None
        try:
            before = current_version(conn)  # read first: a role without DDL rights may run it on an up-to-date schema
            problem = version_problem(before)
            if isinstance(problem, SchemaTooNewError):  # not "nothing to do": this release must not use it
                raise problem
            applied = []
            for mig in migrations():
                if mig.version <= before:
                    continue
                with conn.transaction():
                    if mig.version == 1:  # in its transaction: a first migration refused leaves no table behind
                        conn.execute(_CREATE_MIGRATIONS_TABLE)
                    conn.execute(mig.sql)
                    faults.point("pg.migrate.before_record")
                    conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES (%s, %s)",
                                 (mig.version, mig.name))
                log.info("applied migration %04d_%s", mig.version, mig.name, extra={"version": mig.version})
                applied.append(f"{mig.version:04d}_{mig.name}")
            return {"from_version": before, "to_version": current_version(conn), "applied": applied}
        except psycopg.Error as exc:
            if conn.broken or conn.closed or _connection_lost(exc):  # each migration commits whole or not at all
                raise _storage_error(exc, conn, write=True) from None
            # a lock it waited for past a lock_timeout (a table a worker reads), a deadlock (since 2026-12-07; before,
            # "migration failed", exit 3), ...: it may pass, exit 10 (``StatementCancelledError``,
            # ``TransactionConflictError``), as from every other command
            if _cancelled(exc) or _conflicted(exc):
                again = _storage_error(exc, conn)
                raise type(again)(f"{without_nothing_written(again.message)}; the migration it was "
                                  "applying rolled back whole (those before it stay applied): run `orchestrator db "
                                  "migrate` again") from None
            # the server's message may quote the URL's password or the SQL (its values included)
            raise ConfigError(redacted(f"migration failed: {exc}".strip(), url)) from None
        finally:
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
            except psycopg.Error:  # the session is gone, and its lock with it; its error, if any, is the one raised
                pass
    finally:
        conn.close()


PROJECT_TABLES = tuple(SCHEMA_COLUMNS)  # every table that holds a project's rows, for ``delete_project``


def delete_project(url: str, project: str) -> None:
    """Delete every row of ``project``, one table after another (not one transaction: for scratch projects of tests
    and benchmarks, which nothing else uses meanwhile; no command offers it, a history is never deleted). The streams'
    rows go first, so the events' deletion has no row to count it in (migration 0006)."""
    conn = connect(url, autocommit=True)
    try:
        for table in PROJECT_TABLES:
            conn.execute(f"DELETE FROM {table} WHERE project = %s", (project,))
    finally:
        conn.close()
