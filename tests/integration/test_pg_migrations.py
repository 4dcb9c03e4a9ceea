"""Schema migrations on a database of its own: an older schema with rows in it moves up intact.

Each test creates a scratch database next to the test database (same server and user) and drops it.
"""
from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any, Iterator

import pytest

from backends import require_pg
from orchestrator.store.pg_schema import MIGRATIONS_TABLE, current_version, latest_version, migrate, migrations
from orchestrator.store.postgres import connect

pytestmark = pytest.mark.postgres


@contextlib.contextmanager
def made(admin_url: str, create: str, drop: str) -> Iterator[None]:
    """Run ``create`` on the server of ``admin_url``, then ``drop`` whatever happens."""
    admin = connect(admin_url, autocommit=True)
    admin.execute(create)
    try:
        yield
    finally:
        admin.execute(drop)
        admin.close()


@pytest.fixture
def scratch_db():
    """The URL of a new, empty database, dropped afterwards."""
    url = require_pg()
    name = f"orch_mig_{uuid.uuid4().hex[:12]}"
    with made(url, f"CREATE DATABASE {name}", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"):
        yield f"{url.rpartition('/')[0]}/{name}"


# every column, index and constraint of the schema, to compare two schemas by
SCHEMA = ("SELECT 'column', table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
          "UNION ALL SELECT 'index', tablename, indexdef FROM pg_indexes WHERE schemaname = 'public' "
          "UNION ALL SELECT 'constraint', table_name, constraint_name FROM information_schema.table_constraints "
          "WHERE table_schema = 'public' ORDER BY 1, 2, 3")


def apply_up_to(url: str, version: int) -> None:
    """The schema as a release that shipped only migrations 1..version left it."""
    conn = connect(url, autocommit=True)
    try:
        conn.execute(f"CREATE TABLE {MIGRATIONS_TABLE} (version integer PRIMARY KEY, name text NOT NULL, "
                     "applied_at timestamptz NOT NULL DEFAULT now())")
        for mig in migrations()[:version]:
            with conn.transaction():
                conn.execute(mig.sql)
                conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES (%s, %s)", (mig.version, mig.name))
    finally:
        conn.close()


def test_a_fresh_database_migrates_to_the_latest_version_and_a_second_run_does_nothing(scratch_db: str) -> None:
    first = migrate(scratch_db)
    assert first["from_version"] == 0 and first["to_version"] == latest_version()
    assert first["applied"] == [f"{m.version:04d}_{m.name}" for m in migrations()]
    assert migrate(scratch_db)["applied"] == []


def test_running_rows_written_before_0003_stand_for_any_epoch_after_it(scratch_db: str) -> None:
    from orchestrator.store.pg_queue import PgQueueIndex
    from orchestrator.store.postgres import PostgresStore

    apply_up_to(scratch_db, 2)
    conn = connect(scratch_db, autocommit=True)
    conn.execute("INSERT INTO orch_running (project, job_id) VALUES ('p', 'J1')")  # a release before 0003
    conn.close()
    assert migrate(scratch_db)["applied"][0] == "0003_running_epochs"
    store = PostgresStore(scratch_db, "p")
    try:
        index = PgQueueIndex(store)
        assert index.running_entries() == [("J1", None)]  # epoch unknown: counts for any (Worker.recover_stale)
        index.put_running("J1", 4)
        assert index.running_entries() == [("J1", None), ("J1", 4)]
        index.drop_running("J1", None)  # stale recovery drops the old row it listed...
        assert index.running_entries() == [("J1", 4)]  # ...and only that one
        check = connect(scratch_db, autocommit=True)
        assert current_version(check) == latest_version()
        check.close()
    finally:
        store.close()


def test_ready_rows_written_before_0004_have_no_kind_and_are_offered_to_a_worker_of_any_kinds(scratch_db: str) -> None:
    """After 0004 a worker of some kinds (``worker --kind``) is offered only rows of its kinds; a row from before,
    whose kind nobody wrote, is offered to it too (it reads the job and leaves it if it is not one of its kinds)."""
    from orchestrator.store.pg_queue import PgQueueIndex
    from orchestrator.store.postgres import PostgresStore
    from orchestrator.queue import ReadyEntry

    apply_up_to(scratch_db, 3)
    conn = connect(scratch_db, autocommit=True)
    conn.execute("INSERT INTO orch_ready (project, job_id, priority, runnable_at_us) VALUES ('p', 'OLD', 0, 1)")
    conn.close()
    assert migrate(scratch_db)["applied"][0] == "0004_ready_kinds"
    store = PostgresStore(scratch_db, "p")
    try:
        index = PgQueueIndex(store)
        index.put_ready(ReadyEntry(0, 2, "MINE", "mine"))
        index.put_ready(ReadyEntry(0, 3, "THEIRS", "theirs"))
        assert [(e.job_id, e.kind) for e in index.ready()] == [("OLD", None), ("MINE", "mine"), ("THEIRS", "theirs")]
        offered = index.candidates(10.0, kinds=("mine",))
        assert [e.job_id for e in offered] == ["OLD", "MINE"]  # OLD reserved, MINE listed; THEIRS neither
        # a worker of any kind: MINE reserved, THEIRS listed, OLD only as a hint of when its reservation lapses
        assert [e.job_id for e in index.candidates(10.0)] == ["MINE", "THEIRS", "OLD"]
    finally:
        store.close()


def test_ready_rows_written_before_0007_or_by_older_code_after_it_are_due_at_their_time(scratch_db: str) -> None:
    """Migration 0007 marks the rows of jobs runnable at once (``at_once``): only a retry's row waits for its time, so a
    server clock stepped back holds up no job queued at once. A row from before it, or written after it by a release
    that does not know the column (a worker still running through the upgrade), keeps the meaning it had: due at its
    time, false. A row that says at once is due whatever its time."""
    from orchestrator.queue import ReadyEntry
    from orchestrator.store.pg_queue import PgQueueIndex
    from orchestrator.store.postgres import PostgresStore

    apply_up_to(scratch_db, 6)
    old_code = "INSERT INTO orch_ready (project, job_id, priority, runnable_at_us, kind) VALUES ('p', %s, 0, %s, 'k')"
    conn = connect(scratch_db, autocommit=True)
    conn.execute(old_code, ("BEFORE", 2_000_000))
    conn.close()
    assert migrate(scratch_db)["applied"][0] == "0007_ready_at_once"
    conn = connect(scratch_db, autocommit=True)
    conn.execute(old_code, ("AFTER", 3_000_000))
    conn.close()
    store = PostgresStore(scratch_db, "p")
    try:
        index = PgQueueIndex(store)
        index.put_ready(ReadyEntry(0, 4_000_000, "AT_ONCE", "k", at_once=True))
        assert [(e.job_id, e.at_once) for e in index.ready()] == [("BEFORE", False), ("AFTER", False),
                                                                  ("AT_ONCE", True)]
        # at 1 s: only the row that says so is due; the next one due is BEFORE's, at its time
        offered = index.candidates(1.0)
        assert [(e.job_id, e.at_once, e.due(1.0)) for e in offered] == [("AT_ONCE", True, True),
                                                                        ("BEFORE", False, False)]
        # at 2 s BEFORE is due and reserved, AFTER comes due next, AT_ONCE's reservation lapses at 3 s
        assert [(e.job_id, e.due(2.0)) for e in index.candidates(2.0)] == [("BEFORE", True), ("AFTER", False),
                                                                          ("AT_ONCE", False)]
        assert [e.job_id for e in index.candidates(3.0)] == ["AFTER", "AT_ONCE", "BEFORE"]
    finally:
        store.close()


def rollback_sql(version: int) -> str:
    """The SQL docs/postgres.md gives to take migration ``version`` back, for a rollback of the code."""
    import re

    from helpers import REPO

    doc = (REPO / "docs" / "postgres.md").read_text(encoding="utf-8")
    [back] = re.findall(rf"```sql\n(-- take migration {version:04d} back.*?)```", doc, re.S)
    return back


def put_ready_row(url: str, entry: Any) -> None:
    """One ready row of project ``p``, as this release's index writes it."""
    from orchestrator.store.pg_queue import PgQueueIndex
    from orchestrator.store.postgres import PostgresStore

    store = PostgresStore(url, "p")
    try:
        PgQueueIndex(store).put_ready(entry)
    finally:
        store.close()


def test_the_sql_that_takes_0007_back_in_postgres_md_leaves_the_schema_of_version_6_and_every_row(
        scratch_db: str) -> None:
    """Code older than 2026-12-07 refuses a database migrated to 0007 (``SCHEMA_TOO_NEW``): a rollback of the code
    takes the schema back first, with the SQL docs/postgres.md gives (``Due at once, or at its time``). It leaves
    the schema version 6 made, each row due at its time (as older code reads it), and ``db migrate`` applies 0007
    again. Migrations 0009 and 0008 are taken back first, with their own SQL (``Rows left out by the key that signed
    them``)."""
    from orchestrator.queue import ReadyEntry

    apply_up_to(scratch_db, 6)
    conn = connect(scratch_db, autocommit=True)
    try:
        version_6 = conn.execute(SCHEMA).fetchall()
        migrate(scratch_db)
        put_ready_row(scratch_db, ReadyEntry(0, 4_000_000, "J1", "k", at_once=True))
        conn.execute(rollback_sql(9))
        conn.execute(rollback_sql(8))
        conn.execute(rollback_sql(7))
        assert current_version(conn) == 6 and conn.execute(SCHEMA).fetchall() == version_6
        assert conn.execute("SELECT job_id, runnable_at_us FROM orch_ready").fetchall() == [("J1", 4_000_000)]
        assert migrate(scratch_db)["applied"][0] == "0007_ready_at_once"
    finally:
        conn.close()


MINE_KEY, THEIR_KEY = "k-00000000000000a1", "k-00000000000000b2"


def test_ready_rows_written_before_0008_name_no_signer_and_no_key_left_out_leaves_them_out_of_a_next_page(
        scratch_db: str) -> None:
    """Migration 0008 gives a ready row the key that signed its job's first line (``signer``), so that a claim pass's
    next pages leave out the rows of the keys its worker found it does not trust, unread. A row from before it (or
    written by a release that does not name the column) has none: listed whatever keys are left out, as before."""
    from orchestrator.queue import ReadyEntry
    from orchestrator.store.pg_queue import CANDIDATES, PgQueueIndex
    from orchestrator.store.postgres import PostgresStore

    apply_up_to(scratch_db, 7)
    conn = connect(scratch_db, autocommit=True)
    conn.execute("INSERT INTO orch_ready (project, job_id, priority, runnable_at_us, kind, at_once) "
                 "SELECT 'p', 'FIRST' || g, 1, g, 'k', true FROM generate_series(1, %s) g", (CANDIDATES + 1,))
    conn.execute("INSERT INTO orch_ready (project, job_id, priority, runnable_at_us, kind, at_once) "
                 "VALUES ('p', 'OLD', 0, 1, 'k', true)")
    conn.close()
    assert migrate(scratch_db)["applied"][0] == "0008_ready_signers"
    store = PostgresStore(scratch_db, "p")
    try:
        index = PgQueueIndex(store)
        index.put_ready(ReadyEntry(0, 2, "THEIRS", "k", at_once=True, signer=THEIR_KEY))
        index.put_ready(ReadyEntry(0, 3, "MINE", "k", at_once=True, signer=MINE_KEY))
        assert [(e.job_id, e.signer) for e in index.ready()][-3:] == [("OLD", None), ("THEIRS", THEIR_KEY),
                                                                      ("MINE", MINE_KEY)]
        assert len(index.candidates(10.0)) == CANDIDATES + 1  # a full page: the rows of priority 1
        assert [(e.job_id, e.signer) for e in index.next_page(10.0, left_keys=[THEIR_KEY])] == [("OLD", None),
                                                                                              ("MINE", MINE_KEY)]
    finally:
        store.close()


def test_the_sql_that_takes_0008_back_in_postgres_md_leaves_the_schema_of_version_7_and_every_row(
        scratch_db: str) -> None:
    """Code older than the twenty-eighth session of 2026-12-07 refuses a database migrated to 0008 (``SCHEMA_TOO_NEW``):
    a rollback of the code takes the schema back first, with the SQL docs/postgres.md gives ("Rows left out by the
    key that signed them"; 0009's first). Nothing but the column goes, and ``db migrate`` applies 0008 again."""
    from orchestrator.queue import ReadyEntry

    apply_up_to(scratch_db, 7)
    conn = connect(scratch_db, autocommit=True)
    try:
        version_7 = conn.execute(SCHEMA).fetchall()
        migrate(scratch_db)
        put_ready_row(scratch_db, ReadyEntry(0, 4_000_000, "J1", "k", at_once=True, signer=MINE_KEY))
        conn.execute(rollback_sql(9))
        conn.execute(rollback_sql(8))
        assert current_version(conn) == 7 and conn.execute(SCHEMA).fetchall() == version_7
        assert conn.execute("SELECT job_id, kind, at_once FROM orch_ready").fetchall() == [("J1", "k", True)]
        assert migrate(scratch_db)["applied"] == ["0008_ready_signers", "0009_ready_signer_sets"]
    finally:
        conn.close()


def test_ready_rows_written_before_0009_are_left_out_by_the_key_of_their_first_line_alone(scratch_db: str) -> None:
    """Migration 0009 gives a ready row every key of its job's lines (``signers``), so that a next page leaves out the
    rows of a job submitted under a key its worker trusts and queued again under one it does not. A row from before
    it has its first line's key alone (``signer``, 0008): left out by that key, as before, and by no other."""
    from orchestrator.queue import ReadyEntry
    from orchestrator.store.pg_queue import CANDIDATES, PgQueueIndex
    from orchestrator.store.postgres import PostgresStore

    apply_up_to(scratch_db, 8)
    conn = connect(scratch_db, autocommit=True)
    conn.execute("INSERT INTO orch_ready (project, job_id, priority, runnable_at_us, kind, at_once) "
                 "SELECT 'p', 'FIRST' || g, 1, g, 'k', true FROM generate_series(1, %s) g", (CANDIDATES + 1,))
    conn.execute("INSERT INTO orch_ready (project, job_id, priority, runnable_at_us, kind, at_once, signer) VALUES "
                 "('p', 'OLD_THEIRS', 0, 1, 'k', true, %s), ('p', 'OLD_MINE', 0, 2, 'k', true, %s)",
                 (THEIR_KEY, MINE_KEY))
    conn.close()
    assert migrate(scratch_db)["applied"] == ["0009_ready_signer_sets"]
    store = PostgresStore(scratch_db, "p")
    try:
        index = PgQueueIndex(store)
        index.put_ready(ReadyEntry(0, 3, "MINE_THEN_THEIRS", "k", at_once=True, signer=MINE_KEY,
                                   signers=(MINE_KEY, THEIR_KEY)))
        index.put_ready(ReadyEntry(0, 4, "MINE", "k", at_once=True, signer=MINE_KEY, signers=(MINE_KEY,)))
        assert [(e.job_id, e.signers) for e in index.ready()][-4:] == [
            ("OLD_THEIRS", ()), ("OLD_MINE", ()), ("MINE_THEN_THEIRS", (MINE_KEY, THEIR_KEY)), ("MINE", (MINE_KEY,))]
        assert len(index.candidates(10.0)) == CANDIDATES + 1  # a full page: the rows of priority 1
        assert [e.job_id for e in index.next_page(10.0, left_keys=[THEIR_KEY])] == ["OLD_MINE", "MINE"]
    finally:
        store.close()


def test_the_sql_that_takes_0009_back_in_postgres_md_leaves_the_schema_of_version_8_and_every_row(
        scratch_db: str) -> None:
    """Code older than the twenty-ninth session of 2026-12-07 refuses a database migrated to 0009 (``SCHEMA_TOO_NEW``):
    a rollback of the code takes the schema back first, with the SQL docs/postgres.md gives ("Rows left out by the
    key that signed them"). Nothing but the column goes, and ``db migrate`` applies 0009 again."""
    from orchestrator.queue import ReadyEntry

    apply_up_to(scratch_db, 8)
    conn = connect(scratch_db, autocommit=True)
    try:
        version_8 = conn.execute(SCHEMA).fetchall()
        migrate(scratch_db)
        put_ready_row(scratch_db, ReadyEntry(0, 4_000_000, "J1", "k", at_once=True, signer=MINE_KEY,
                                             signers=(MINE_KEY, THEIR_KEY)))
        conn.execute(rollback_sql(9))
        assert current_version(conn) == 8 and conn.execute(SCHEMA).fetchall() == version_8
        assert conn.execute("SELECT job_id, kind, at_once, signer FROM orch_ready").fetchall() == [
            ("J1", "k", True, MINE_KEY)]
        assert migrate(scratch_db)["applied"] == ["0009_ready_signer_sets"]
    finally:
        conn.close()


def test_a_migration_that_dies_before_its_version_row_leaves_no_trace_and_the_next_run_applies_it(
        scratch_db: str) -> None:
    """Each migration and its version row are one transaction: a failure between them (the named
    point ``pg.migrate.before_record``) rolls the schema change back too, so the next run starts
    from the same version and applies it again, instead of finding half a schema."""
    from orchestrator import faults

    apply_up_to(scratch_db, latest_version() - 1)
    conn = connect(scratch_db, autocommit=True)
    before = conn.execute(SCHEMA).fetchall()

    def die() -> None:
        raise RuntimeError("the migrating process dies here")

    faults.arm("pg.migrate.before_record", die)
    try:
        with pytest.raises(RuntimeError):
            migrate(scratch_db)
    finally:
        faults.disarm_all()
    try:
        assert current_version(conn) == latest_version() - 1
        assert conn.execute(SCHEMA).fetchall() == before  # the schema change was rolled back with it
        last = migrations()[-1]
        again = migrate(scratch_db)  # the same statements run again on the rolled-back schema
        assert again["applied"] == [f"{last.version:04d}_{last.name}"] and current_version(conn) == latest_version()
    finally:
        conn.close()


@pytest.fixture
def unprivileged_url(scratch_db: str):
    """The URL of a migrated database, as a role that may log in but read none of its tables."""
    migrate(scratch_db)
    role = f"orch_noaccess_{uuid.uuid4().hex[:8]}"
    scheme, _, rest = scratch_db.partition("://")
    with made(scratch_db, f"CREATE ROLE {role} LOGIN", f"DROP ROLE IF EXISTS {role}"):
        yield f"{scheme}://{role}@{rest.partition('@')[2]}"


def test_a_role_that_may_not_read_the_schema_gets_a_storage_error_not_a_driver_traceback(unprivileged_url) -> None:
    """The first call of a store checks the schema's version; a driver error there is reported like
    every other call's, as ``StorageError``."""
    from orchestrator.errors import StorageError
    from orchestrator.store.postgres import PostgresStore

    store = PostgresStore(unprivileged_url, "p")
    with pytest.raises(StorageError, match="permission denied"):
        store.has_jobs()
    store.close()


def test_db_status_as_a_role_that_may_not_read_the_schema_is_a_storage_error(unprivileged_url) -> None:
    import json

    from click.testing import CliRunner

    from orchestrator.cli import cli

    result = CliRunner().invoke(cli, ["db", "status", "--store", unprivileged_url, "--json"])
    assert result.exit_code == 10, result.output
    assert json.loads(result.stdout)["error"] == "STORAGE_ERROR"


@pytest.fixture
def ddl_less_role(scratch_db: str):
    """A role that may log in to ``scratch_db`` (not migrated), and neither create nor read tables: its URL and name."""
    role = f"orch_noddl_{uuid.uuid4().hex[:8]}"
    scheme, _, rest = scratch_db.partition("://")
    with made(scratch_db, f"CREATE ROLE {role} LOGIN", f"DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}"):
        _on(scratch_db, f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
        yield f"{scheme}://{role}@{rest.partition('@')[2]}", role


def test_db_migrate_by_a_role_without_ddl_rights_on_an_up_to_date_schema_has_nothing_to_do(
        scratch_db: str, ddl_less_role: tuple[str, str]) -> None:
    """As docs/postgres.md shows it (``db migrate  # idempotent``): the version is read first. It made the version table
    first (``CREATE TABLE IF NOT EXISTS``), and such a role got CONFIG_ERROR, "permission denied for schema public"."""
    from click.testing import CliRunner

    from orchestrator.cli import cli

    ddl_less_url, role = ddl_less_role
    migrate(scratch_db)
    _on(scratch_db, f"GRANT SELECT ON {MIGRATIONS_TABLE} TO {role}")
    assert migrate(ddl_less_url) == {"from_version": latest_version(), "to_version": latest_version(), "applied": []}
    result = CliRunner().invoke(cli, ["db", "migrate", "--store", ddl_less_url])
    assert result.exit_code == 0 and result.output == f"schema already at version {latest_version()}; nothing to do\n"


def test_a_first_migration_the_server_refuses_leaves_no_version_table_behind(
        scratch_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The version table is made in the first migration's transaction: it was made before it, on its own, and a
    refused first migration left it there, empty."""
    from orchestrator.errors import ConfigError
    from orchestrator.store import pg_schema

    monkeypatch.setattr(pg_schema, "migrations", lambda: [pg_schema.Migration(1, "refused", "SELECT 'no'::int")])
    with pytest.raises(ConfigError, match="invalid input syntax"):
        migrate(scratch_db)
    conn = connect(scratch_db, autocommit=True)
    try:
        assert conn.execute("SELECT to_regclass(%s)", (MIGRATIONS_TABLE,)).fetchone()[0] is None
        assert current_version(conn) == 0
    finally:
        conn.close()


def test_the_claim_statements_lookups_out_of_claim_order_use_their_indexes(scratch_db: str) -> None:
    """The earliest job not yet due (part 2) and the reservation that lapses first (part 3) read every queued row
    of the project before migration 0005 (~18 ms a claim with 100,000 queued jobs, ``bench/pg_candidates.py``).
    Since 0007 a row due at once is due whatever its time (``at_once``), and part 2 looks only at the rows that wait
    for theirs (retries), in an index of those rows alone; the claim order's index still serves parts 0 and 1. So
    too in the generic plan a prepared statement may be given (psycopg prepares a statement run five times), and
    with keys left out of the pick (``left_keys``, since the twenty-ninth session: a filter on the rows it reads)."""
    import re

    from orchestrator.store.pg_queue import _CANDIDATES_ANY, _CANDIDATES_KINDS, _NEXT_PAGES

    migrate(scratch_db)
    conn = connect(scratch_db, autocommit=True)
    try:
        conn.execute("INSERT INTO orch_ready (project, job_id, priority, runnable_at_us, kind, reserved_until_us, "
                     "at_once) SELECT 'p', 'J' || g, g % 7, CASE WHEN g % 50 = 0 THEN g + 100000 ELSE g END, 'k', "
                     "CASE WHEN g % 100 = 1 THEN 60000 ELSE 0 END, g % 50 <> 0 FROM generate_series(1, 50000) g")
        conn.execute("ANALYZE orch_ready")
        params = {"p": "p", "now": 50_000, "by": "me", "until": 52_000, "n": 9, "skip": [], "kinds": ["k"],
                  "area": "heads", "cap": 32768, "lines": 256, "left_keys": ["k-00000000000000a1"]}
        order = list(params)
        types = ("text", "bigint", "text", "bigint", "int", "text[]", "text[]", "text", "int", "int", "text[]")
        conn.execute("SET plan_cache_mode = force_generic_plan")
        for i, sql in enumerate((_CANDIDATES_ANY, _CANDIDATES_KINDS)):
            custom = "\n".join(row[0] for row in conn.execute("EXPLAIN " + sql, params).fetchall())  # not run
            numbered = re.sub(r"%\((\w+)\)s", lambda m: f"${order.index(m.group(1)) + 1}", sql)
            conn.execute(f"PREPARE claim{i} ({', '.join(types)}) AS {numbered}")
            generic = "\n".join(row[0] for row in conn.execute(
                f"EXPLAIN EXECUTE claim{i} ('p', 50000, 'me', 52000, 9, '{{}}', '{{k}}', 'heads', 32768, 256, "
                "'{k-00000000000000a1}')"
            ).fetchall())
            for plan in (custom, generic):
                assert "orch_ready_delayed" in plan and "orch_ready_reserved" in plan, plan
                assert "orch_ready_claim_order" in plan, plan
                # the reserved job's read (since 2026-12-02): primary-key look-ups of that one job
                assert "orch_aux_pkey" in plan and "orch_events_pkey" in plan, plan
                assert "Seq Scan" not in plan, plan
        # a pass's next page (since 2026-12-07): the claim order's index, its scan bounded by the last row listed, in
        # the plan a statement gets (custom plans; a forced generic one reads the rest of that priority's rows)
        conn.execute("SET plan_cache_mode = auto")
        page = {**params, "left_kinds": ["x"], "left_jobs": ["J7", "J8"],
                "after_pr": 3, "after_at": 25004, "after_job": "J25004"}
        for (step, _), sql in _NEXT_PAGES.items():
            plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + sql, page).fetchall())
            bound = "(priority = " if step == "same" else "(priority < "
            assert "Index Scan using orch_ready_claim_order" in plan and bound in plan, plan
            assert "Seq Scan" not in plan and "Sort Key: orch_ready" not in plan, plan
    finally:
        conn.close()


def test_every_table_that_holds_a_projects_rows_is_one_delete_project_empties(scratch_db: str) -> None:
    """A migration that adds a table with a ``project`` column must add it to ``PROJECT_TABLES``, or the scratch
    projects of tests and benchmarks would leave its rows behind."""
    from orchestrator.store.pg_schema import PROJECT_TABLES

    migrate(scratch_db)
    conn = connect(scratch_db, autocommit=True)
    try:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND column_name = 'project'").fetchall()}
    finally:
        conn.close()
    assert tables == set(PROJECT_TABLES)


def _terminate_others(url: str, keep: int | None = None) -> int:
    """End every other session on the database of ``url`` (``pg_terminate_backend``, as an administrator or a
    restart would), but ``keep``'s; how many were ended."""
    conn = connect(url, autocommit=True)
    try:
        return len(conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND pid IS DISTINCT FROM %s", (keep,)).fetchall())
    finally:
        conn.close()


def test_db_migrate_whose_session_is_ended_while_it_waits_for_the_lock_is_a_storage_error_not_a_traceback(
        scratch_db: str) -> None:
    import json
    import threading
    import time

    from click.testing import CliRunner

    from orchestrator.cli import cli
    from orchestrator.store.pg_schema import MIGRATION_LOCK

    holder = connect(scratch_db, autocommit=True)  # another machine migrating
    holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    holder_pid = holder.info.backend_pid

    def end_the_waiter() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            waiting = connect(scratch_db, autocommit=True)
            try:
                found = waiting.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                                        ).fetchone()[0]
            finally:
                waiting.close()
            if found:
                _terminate_others(scratch_db, keep=holder_pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=end_the_waiter)
    killer.start()
    try:
        result = CliRunner().invoke(cli, ["db", "migrate", "--store", scratch_db, "--json"])
    finally:
        killer.join()
        holder.close()
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 10, result.output
    error = json.loads(result.stdout)
    assert error["error"] == "STORAGE_ERROR" and "nothing was written" in error["message"]
    assert current_version_of(scratch_db) == 0
    assert migrate(scratch_db)["to_version"] == latest_version()  # run again: all of it


def current_version_of(url: str) -> int:
    conn = connect(url, autocommit=True)
    try:
        return current_version(conn)
    finally:
        conn.close()


def test_a_migration_the_server_cancels_for_a_lock_timeout_is_a_storage_error_and_the_next_run_completes_it(
        scratch_db: str) -> None:
    """A migration waiting for a table a worker holds, past a ``lock_timeout`` (the role's, or the URL's options), is
    a wait to try again (exit 10), not a migration the server refused (``CONFIG_ERROR``, exit 3, until 2026-12-06): it
    rolled back whole, and the next run applies it."""
    import json
    from urllib.parse import quote

    from click.testing import CliRunner

    from orchestrator.cli import cli

    from orchestrator.store.pg_schema import PROJECT_TABLES

    apply_up_to(scratch_db, latest_version() - 1)
    holder = connect(scratch_db)
    # a reader's lock on every table, held by its open transaction: the latest migration alters one of them
    holder.execute(f"SELECT 1 FROM {', '.join(PROJECT_TABLES)} LIMIT 0")
    try:
        url = f"{scratch_db}?options={quote('-c lock_timeout=100ms')}"
        result = CliRunner().invoke(cli, ["db", "migrate", "--store", url, "--json"])
    finally:
        holder.rollback()
        holder.close()
    assert result.exit_code == 10, result.output
    error = json.loads(result.stdout)
    assert error["error"] == "STORAGE_ERROR" and "canceling statement due to lock timeout" in error["message"]
    assert "rolled back whole" in error["message"] and "db migrate" in error["message"]
    assert current_version_of(scratch_db) == latest_version() - 1
    assert migrate(scratch_db)["applied"] == [f"{latest_version():04d}_{migrations()[-1].name}"]


def test_a_migration_the_server_rolls_back_for_a_deadlock_exits_10_as_a_cancelled_one_and_the_next_run_completes_it(
        scratch_db: str) -> None:
    """A deadlock is a conflict that may pass (``TransactionConflictError``, exit 10, as every other command's since
    2026-12-07), as a ``lock_timeout`` is: until 2026-12-07 ``db migrate`` said "migration failed", ``CONFIG_ERROR``,
    exit 3, of a migration that rolled back whole and applied on the next run. The deadlock: another session holds a
    lock on the version table that the migration's version row waits for, and waits for the migration's lock."""
    import json
    import threading

    from click.testing import CliRunner

    from orchestrator import faults
    from orchestrator.cli import cli
    from orchestrator.store.pg_schema import MIGRATION_LOCK

    apply_up_to(scratch_db, latest_version() - 1)
    other = connect(scratch_db)
    other.execute("SET deadlock_timeout = '60s'")  # the migration's own check (1 s) finds the cycle: it is rolled back
    other.execute(f"LOCK TABLE {MIGRATIONS_TABLE} IN SHARE MODE")  # its version row waits for this transaction
    waiting = threading.Thread(target=lambda: other.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,)))

    def other_waits_for_the_migration() -> None:
        waiting.start()
        watch = connect(scratch_db, autocommit=True)
        try:
            while not watch.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                                    ).fetchone()[0]:
                time.sleep(0.02)
        finally:
            watch.close()

    faults.arm("pg.migrate.before_record", other_waits_for_the_migration)
    try:
        result = CliRunner().invoke(cli, ["db", "migrate", "--store", scratch_db, "--json"])
    finally:
        faults.disarm_all()
        waiting.join(30)  # granted once the migration's session let its lock go
        other.rollback()
        other.close()
    assert result.exit_code == 10, result.output
    error = json.loads(result.stdout)
    assert error["error"] == "STORAGE_ERROR" and "deadlock detected" in error["message"], error
    assert "rolled back whole" in error["message"] and "db migrate" in error["message"], error
    assert current_version_of(scratch_db) == latest_version() - 1
    assert migrate(scratch_db)["applied"] == [f"{latest_version():04d}_{migrations()[-1].name}"]


def test_a_migration_whose_session_is_ended_midway_is_a_storage_error_and_the_next_run_completes_it(
        scratch_db: str) -> None:
    """A connection lost inside a migration is not a failed migration (``CONFIG_ERROR``): the migration rolled back
    whole, and running ``db migrate`` again applies it; the unlock on the lost session must not replace that error
    with the driver's."""
    from orchestrator import faults
    from orchestrator.errors import StorageUnavailableError

    apply_up_to(scratch_db, latest_version() - 1)
    faults.arm("pg.migrate.before_record", lambda: _terminate_others(scratch_db))
    try:
        with pytest.raises(StorageUnavailableError, match="may or may not have been committed"):
            migrate(scratch_db)
    finally:
        faults.disarm_all()
    assert current_version_of(scratch_db) == latest_version() - 1
    assert len(migrate(scratch_db)["applied"]) == 1 and current_version_of(scratch_db) == latest_version()


def test_db_status_whose_connection_is_lost_after_the_version_is_a_storage_error_not_a_traceback(
        scratch_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import psycopg
    from click.testing import CliRunner

    from orchestrator.cli import cli
    from orchestrator.store.pg_clock import ServerClock

    def lost(self, conn) -> None:
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(ServerClock, "take", lost)  # the clock's sample, the round trip after the version's
    result = CliRunner().invoke(cli, ["db", "status", "--store", scratch_db, "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 10, result.output
    assert json.loads(result.stdout)["error"] == "STORAGE_ERROR"


def test_db_status_honours_orch_pg_deadline_seconds_a_blocked_statement_is_cut_there_exit_10(scratch_db: str) -> None:
    """A server that does not answer (here: a ``LOCK TABLE`` held during maintenance) ends ``db status`` at
    ``ORCH_PG_DEADLINE_SECONDS``, with the error every other command gives then (exit 10); it waited for as long as the
    lock was held. Its watchdog thread is gone once it returns."""
    import json
    import threading
    import time

    from click.testing import CliRunner

    from orchestrator.cli import cli

    migrate(scratch_db)
    holder = connect(scratch_db)
    holder.execute(f"LOCK TABLE {MIGRATIONS_TABLE} IN ACCESS EXCLUSIVE MODE")  # its transaction stays open
    release = threading.Timer(8.0, holder.rollback)  # the bound of the old code's wait
    release.start()
    try:
        start = time.monotonic()
        result = CliRunner().invoke(cli, ["db", "status", "--store", scratch_db, "--json"],
                                    env={"ORCH_PG_DEADLINE_SECONDS": "0.5"})
        took = time.monotonic() - start
    finally:
        release.cancel()
        holder.rollback()
        holder.close()
    assert result.exit_code == 10, result.output
    error = json.loads(result.stdout)
    assert error["error"] == "STORAGE_ERROR" and "within 0.5s (ORCH_PG_DEADLINE_SECONDS)" in error["message"]
    assert 0.5 <= took < 0.5 + 1.5
    assert not [t for t in threading.enumerate() if t.name == "orch-pg-deadline"]


@pytest.mark.parametrize("value", ["soon", "-1"])
def test_db_status_refuses_an_orch_pg_deadline_seconds_that_is_no_duration_as_every_command_does(
        scratch_db: str, value: str) -> None:
    import json

    from click.testing import CliRunner

    from orchestrator.cli import cli

    migrate(scratch_db)
    result = CliRunner().invoke(cli, ["db", "status", "--store", scratch_db, "--json"],
                                env={"ORCH_PG_DEADLINE_SECONDS": value})
    assert result.exit_code == 3, result.output
    error = json.loads(result.stdout)
    assert error["error"] == "CONFIG_ERROR" and "ORCH_PG_DEADLINE_SECONDS" in error["message"]


def test_db_status_of_a_schema_behind_exits_3_and_its_json_names_the_error(scratch_db: str) -> None:
    """Exit 3 (CONFIG_ERROR) as every command meeting an old schema; the JSON says so too, beside the figures, so a
    script reading only stdout sees the verdict (it said ``up_to_date: false`` and no ``error``)."""
    import json

    from click.testing import CliRunner

    from orchestrator.cli import cli

    apply_up_to(scratch_db, latest_version() - 1)
    result = CliRunner().invoke(cli, ["db", "status", "--store", scratch_db, "--json"])
    data = json.loads(result.output)
    assert result.exit_code == 3 and data["up_to_date"] is False and data["version"] == latest_version() - 1
    assert data["error"] == "CONFIG_ERROR" and "db migrate" in data["message"]
    migrate(scratch_db)
    result = CliRunner().invoke(cli, ["db", "status", "--store", scratch_db, "--json"])
    assert result.exit_code == 0 and "error" not in json.loads(result.output)


@pytest.mark.parametrize("change", ["ALTER TABLE orch_ready DROP COLUMN kind", "DROP TABLE orch_aux"])
def test_db_status_of_a_schema_changed_by_hand_exits_3_saying_so(scratch_db: str, change: str) -> None:
    """As every other command finds it at its first statement naming what is missing (``missing_problem``); it said
    "up to date", exit 0, its version being this release's."""
    import json

    from click.testing import CliRunner

    from orchestrator.cli import cli

    migrate(scratch_db)
    _on(scratch_db, change)
    result = CliRunner().invoke(cli, ["db", "status", "--store", scratch_db, "--json"])
    data = json.loads(result.output)
    assert result.exit_code == 3 and data["up_to_date"] is False and data["version"] == latest_version()
    assert data["error"] == "CONFIG_ERROR" and "changed by hand" in data["message"]
    assert ("orch_ready.kind" if "kind" in change else '"orch_aux"') in data["message"]


def test_the_columns_db_status_looks_for_are_every_column_of_the_migrated_schema(scratch_db: str) -> None:
    """``SCHEMA_COLUMNS`` (what ``db status`` checks is there) names every table and column the migrations make."""
    from orchestrator.store.pg_schema import SCHEMA_COLUMNS

    migrate(scratch_db)
    conn = connect(scratch_db, autocommit=True)
    try:
        made_here = {tuple(r) for r in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name <> %s", (MIGRATIONS_TABLE,)).fetchall()}
    finally:
        conn.close()
    assert made_here == {(table, column) for table, columns in SCHEMA_COLUMNS.items() for column in columns}


@pytest.mark.parametrize("change, said", [
    ("ALTER TABLE orch_events DISABLE TRIGGER orch_events_updated", "trigger orch_events_updated on orch_events is "
     "disabled"),
    ("ALTER TABLE orch_events ENABLE REPLICA TRIGGER orch_events_deleted", "trigger orch_events_deleted on orch_events "
     "fires only in replication sessions"),
    ("DROP TRIGGER orch_events_deleted ON orch_events", "trigger orch_events_deleted on orch_events is missing"),
    ("ALTER TABLE orch_streams DISABLE TRIGGER orch_streams_fence", "trigger orch_streams_fence on orch_streams is "
     "disabled")])
def test_db_status_of_a_trigger_disabled_or_dropped_by_hand_exits_3_saying_what_it_no_longer_does(
        scratch_db: str, change: str, said: str) -> None:
    """Migration 0006's triggers count the hand edits of orch_events (the jobs cache's fingerprint), 0002's refuses a
    superseded worker's append: one disabled or dropped turns that off without a word, and ``db status`` said "up to
    date". It is a schema changed by hand, as a column dropped is (exit 3), and enabled again it passes."""
    import json

    from click.testing import CliRunner

    from orchestrator.cli import cli

    migrate(scratch_db)
    _on(scratch_db, change)
    result = CliRunner().invoke(cli, ["db", "status", "--store", scratch_db, "--json"])
    data = json.loads(result.output)
    assert result.exit_code == 3 and data["up_to_date"] is False and data["version"] == latest_version()
    assert data["error"] == "CONFIG_ERROR" and "changed by hand" in data["message"] and said in data["message"]
    assert ("hand edits of orch_events" if "orch_events" in said else "superseded worker") in data["message"]
    text = CliRunner().invoke(cli, ["db", "status", "--store", scratch_db])
    assert text.exit_code == 3 and said in text.output
    if change.startswith("DROP"):
        _on(scratch_db, "CREATE TRIGGER orch_events_deleted AFTER DELETE ON orch_events REFERENCING OLD TABLE AS gone "
            "FOR EACH STATEMENT EXECUTE FUNCTION orch_count_event_edits()")
    else:
        table, trigger = change.split()[2], change.split()[-1]
        _on(scratch_db, f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")
    assert CliRunner().invoke(cli, ["db", "status", "--store", scratch_db]).exit_code == 0


def test_the_triggers_db_status_looks_for_are_every_trigger_the_migrations_make(scratch_db: str) -> None:
    """``SCHEMA_TRIGGERS`` (what ``db status`` checks is there and enabled) names every trigger of the migrated
    schema, on its table."""
    from orchestrator.store.pg_schema import SCHEMA_TRIGGERS

    migrate(scratch_db)
    conn = connect(scratch_db, autocommit=True)
    try:
        made_here = dict(conn.execute(
            "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace").fetchall())
    finally:
        conn.close()
    assert made_here == {name: table for name, (table, _migration, _stops) in SCHEMA_TRIGGERS.items()}


def test_streams_from_before_0006_count_no_edit_and_an_edit_of_their_events_by_hand_is_counted(scratch_db: str) -> None:
    """Rows made before the migration count 0 (the jobs cache's fingerprints stay as they were, nothing is read again);
    an UPDATE or DELETE of events counts one edit per statement in each stream it touched, an INSERT none (the
    orchestrator's own appends)."""
    apply_up_to(scratch_db, 5)
    _on(scratch_db, "INSERT INTO orch_streams (project, stream, seq) VALUES ('p', 'a', 2), ('p', 'b', 1), "
        "('q', 'a', 1)", "INSERT INTO orch_events VALUES ('p', 'a', 1, 'x'), ('p', 'a', 2, 'y'), ('p', 'b', 1, 'z'), "
        "('q', 'a', 1, 'w')")
    migrate(scratch_db)

    def edits() -> list[tuple]:
        conn = connect(scratch_db, autocommit=True)
        try:
            return conn.execute("SELECT project, stream, edits FROM orch_streams ORDER BY 1, 2").fetchall()
        finally:
            conn.close()

    assert edits() == [("p", "a", 0), ("p", "b", 0), ("q", "a", 0)]
    _on(scratch_db, "INSERT INTO orch_events VALUES ('p', 'b', 2, 'v')",
        "UPDATE orch_events SET seq = seq + 10 WHERE project = 'p' AND stream = 'a'")
    assert edits() == [("p", "a", 1), ("p", "b", 0), ("q", "a", 0)]
    _on(scratch_db, "UPDATE orch_events SET stream = 'b', seq = 3 WHERE project = 'p' AND seq = 12",
        "DELETE FROM orch_events WHERE project = 'p'")
    assert edits() == [("p", "a", 3), ("p", "b", 2), ("q", "a", 0)]


def _claim_a_newer_release_migrated(url: str) -> int:
    """The schema as a newer release leaves it: a version row this release does not know."""
    migrate(url)
    conn = connect(url, autocommit=True)
    try:
        conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES (%s, 'of_a_newer_release')",
                     (latest_version() + 1,))
    finally:
        conn.close()
    return latest_version() + 1


def test_db_status_of_a_schema_newer_than_this_release_exits_3_saying_so(scratch_db: str) -> None:
    import json

    from click.testing import CliRunner

    from orchestrator.cli import cli

    newer = _claim_a_newer_release_migrated(scratch_db)
    result = CliRunner().invoke(cli, ["db", "status", "--store", scratch_db, "--json"])
    data = json.loads(result.output)
    assert result.exit_code == 3 and data["version"] == newer and data["latest"] == latest_version()
    assert data["up_to_date"] is False and data["error"] == "SCHEMA_TOO_NEW"
    assert "newer than this release" in data["message"] and "upgrade the orchestrator" in data["message"]
    text = CliRunner().invoke(cli, ["db", "status", "--store", scratch_db])
    assert text.exit_code == 3 and "SCHEMA_TOO_NEW" in text.output


def test_db_migrate_of_a_schema_newer_than_this_release_is_refused_not_nothing_to_do(scratch_db: str) -> None:
    import json

    from click.testing import CliRunner

    from orchestrator.cli import cli

    newer = _claim_a_newer_release_migrated(scratch_db)
    result = CliRunner().invoke(cli, ["db", "migrate", "--store", scratch_db, "--json"])
    assert result.exit_code == 3 and json.loads(result.output)["error"] == "SCHEMA_TOO_NEW", result.output
    assert current_version_of(scratch_db) == newer


@pytest.mark.parametrize("command", [["submit", "--kind", "command", "--input", '{"argv": ["true"]}'],
                                     ["status", "--all"], ["verify"], ["worker", "--once"]])
def test_a_command_against_a_schema_newer_than_this_release_is_refused_before_it_reads_or_writes(
        scratch_db: str, command: list[str], tmp_path) -> None:
    """Old code must not write into a schema a newer release made (it does not know what that one expects of a
    writer: a column to fill, a row to keep with its event), nor read it as if it knew it."""
    import json

    from click.testing import CliRunner

    from orchestrator.cli import cli
    from orchestrator.errors import SchemaTooNewError
    from orchestrator.store.postgres import PostgresStore

    _claim_a_newer_release_migrated(scratch_db)
    result = CliRunner().invoke(cli, [*command, "--store", scratch_db, "--json"],
                                env={"BASE_PATH": str(tmp_path), "ORCH_KEYRING_DIR": str(tmp_path / "keys")})
    assert result.exit_code == 3, result.output
    assert json.loads(result.output.splitlines()[-1])["error"] == "SCHEMA_TOO_NEW"
    conn = connect(scratch_db, autocommit=True)
    try:
        assert conn.execute("SELECT count(*) FROM orch_events").fetchone()[0] == 0
    finally:
        conn.close()
    store = PostgresStore(scratch_db, "p")
    try:
        with pytest.raises(SchemaTooNewError):
            store.has_jobs()
    finally:
        store.close()


def test_a_migration_the_server_refuses_is_reported_without_the_secrets_its_message_quotes(
        scratch_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's message quotes the SQL, values included, and may quote the URL: both pass through ``redacted``
    (the URL's password, whatever its characters; ``sanitize_text`` for the rest)."""
    import json

    from click.testing import CliRunner

    from orchestrator.cli import cli
    from orchestrator.store import pg_schema

    url = scratch_db.replace("://", "://postgres:S3c#retPW@", 1) if "@" not in scratch_db else \
        scratch_db.replace("@", ":S3c#retPW@", 1)  # trust authentication: the password is not even sent
    shipped = migrations()
    bad = pg_schema.Migration(len(shipped) + 1, "refused", "SELECT 'password=hunter2 of S3c#retPW'::int")
    monkeypatch.setattr(pg_schema, "migrations", lambda: [*shipped, bad])
    result = CliRunner().invoke(cli, ["db", "migrate", "--store", url, "--json"])
    assert result.exit_code == 3, result.output
    error = json.loads(result.output)
    assert error["error"] == "CONFIG_ERROR" and error["message"].startswith("migration failed: ")
    assert "invalid input syntax for type integer" in error["message"] and "[REDACTED]" in error["message"]
    assert "S3c#retPW" not in result.output and "retPW" not in result.output and "hunter2" not in result.output
    from orchestrator.errors import ConfigError

    with pytest.raises(ConfigError, match="^migration failed: ") as refused:  # the Python API's error too
        migrate(url)
    assert "retPW" not in refused.value.message and "hunter2" not in refused.value.message


def _on(url: str, *statements: str) -> None:
    conn = connect(url, autocommit=True)
    try:
        for sql in statements:
            conn.execute(sql)
    finally:
        conn.close()


def test_a_schema_taken_back_behind_while_a_store_runs_says_to_migrate_and_the_store_works_once_migrated(
        scratch_db: str) -> None:
    """A store checks the version at its first call; a database restored to an older schema afterwards (here: to
    version 3, without 0004's ``kind``) is found at the first statement that misses something: the same
    ``CONFIG_ERROR`` as at a first call, never the driver's ``column "kind" does not exist`` as a STORAGE_ERROR. Once
    ``db migrate`` ran, the same store goes on, with no restart."""
    from orchestrator.errors import ConfigError
    from orchestrator.queue import ReadyEntry
    from orchestrator.store.pg_queue import PgQueueIndex
    from orchestrator.store.postgres import PostgresStore

    migrate(scratch_db)
    store = PostgresStore(scratch_db, "p")
    try:
        index = PgQueueIndex(store)
        index.put_ready(ReadyEntry(0, 1, "J1", "k"))  # the store checked the schema: up to date
        _on(scratch_db, "ALTER TABLE orch_ready DROP COLUMN signers",  # (0009)
            "ALTER TABLE orch_ready DROP COLUMN signer",  # (0008)
            "ALTER TABLE orch_ready DROP COLUMN at_once",  # (0007, and its index)
            "DROP INDEX orch_ready_reserved", "ALTER TABLE orch_ready DROP COLUMN kind",
            "DROP FUNCTION orch_count_event_edits CASCADE", "ALTER TABLE orch_streams DROP COLUMN edits",  # (0006)
            f"DELETE FROM {MIGRATIONS_TABLE} WHERE version >= 4")
        with pytest.raises(ConfigError) as refused:
            index.put_ready(ReadyEntry(0, 2, "J2", "k"))
        assert refused.value.code == "CONFIG_ERROR" and "db migrate" in refused.value.message
        assert "version 3" in refused.value.message
        with pytest.raises(ConfigError, match="db migrate"):  # every call, until it is migrated
            store.has_jobs()
        migrate(scratch_db)
        index.put_ready(ReadyEntry(0, 2, "J2", "k"))
        assert [e.job_id for e in index.ready()] == ["J1", "J2"]
    finally:
        store.close()


def test_a_newer_release_that_migrated_while_a_store_runs_is_refused_from_its_first_missing_table_on(
        scratch_db: str) -> None:
    """A newer release's migration that renamed a table this one uses: ``SCHEMA_TOO_NEW`` (upgrade this machine), and
    from then on every call of the store is refused, also one that would have found its tables."""
    from orchestrator.errors import SchemaTooNewError

    from orchestrator.store.postgres import PostgresStore

    migrate(scratch_db)
    store = PostgresStore(scratch_db, "p")
    try:
        store.put_aux("a", "k", b"1")
        _claim_a_newer_release_migrated(scratch_db)
        _on(scratch_db, "ALTER TABLE orch_aux RENAME TO orch_records")
        with pytest.raises(SchemaTooNewError):
            store.get_aux("a", "k")
        with pytest.raises(SchemaTooNewError):
            store.has_jobs()  # its table is still there, but this release no longer knows what the schema means
    finally:
        store.close()


def test_a_table_dropped_by_hand_while_a_store_runs_is_a_config_error_that_says_so(scratch_db: str) -> None:
    """The version says the schema is this release's, yet a table is gone: ``db migrate`` would re-create nothing
    (its version rows say it is applied), so the message says the schema was changed by hand, and what is missing."""
    from orchestrator.errors import ConfigError
    from orchestrator.store.postgres import PostgresStore

    migrate(scratch_db)
    store = PostgresStore(scratch_db, "p")
    try:
        store.put_aux("a", "k", b"1")
        _on(scratch_db, "DROP TABLE orch_aux")
        with pytest.raises(ConfigError) as refused:
            store.get_aux("a", "k")
        assert refused.value.code == "CONFIG_ERROR"
        assert "orch_aux" in refused.value.message and "by hand" in refused.value.message
    finally:
        store.close()
