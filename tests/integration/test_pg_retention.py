"""docs/postgres.md's retention SQL, run as an operator would paste it: what is left must still verify."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from backends import TestPostgresStore, require_pg
from helpers import REPO
from orchestrator import Orchestrator
from orchestrator.integrity import verify_project
from orchestrator.store.postgres import connect

pytestmark = pytest.mark.postgres

DONE = 'printf \'{"status": "done", "summary": "ok"}\' > "$ORCH_TERMINAL_FILE"'


def retention_sql() -> str:
    """The ```sql block of the **Retention.** paragraph of docs/postgres.md."""
    text = (REPO / "docs" / "postgres.md").read_text(encoding="utf-8")
    block = re.search(r"\*\*Retention\.\*\*.*?```sql\n(.*?)```", text, re.S)
    assert block, "docs/postgres.md has no retention SQL"
    return block.group(1)


def run_pasted(url: str, project: str, job_ids: list[str]) -> None:
    """The block with its placeholders filled in (``'proj'``, and ``:job_ids`` if it has one), statement by statement."""
    sql = retention_sql().replace("'proj'", f"'{project}'")
    sql = sql.replace(":job_ids", "ARRAY[" + ", ".join(f"'{j}'" for j in job_ids) + "]")
    conn = connect(url, autocommit=True)
    try:
        for statement in sql.split(";"):
            statement = "\n".join(line.split("--")[0] for line in statement.splitlines()).strip()
            if statement:
                conn.execute(statement)
    finally:
        conn.close()


def test_the_retention_sql_of_the_docs_leaves_every_project_verifying(tmp_path: Path) -> None:
    """The project to drop has a job an operator approved, so its audit log names that job's event. The SQL the docs
    showed until 2026-12-02 deleted finished jobs one by one and left the audit log naming their events: `verify`
    reported `AUDIT_EVENT_MISSING` (exit 7) for each, for good."""
    url = require_pg()
    kept_store, dropped_store = TestPostgresStore(), TestPostgresStore()
    try:
        kept = Orchestrator(base_path=tmp_path, project_id=kept_store.project, store=kept_store)
        dropped = Orchestrator(base_path=tmp_path, project_id=dropped_store.project, store=dropped_store)
        for orch in (kept, dropped):
            job = orch.submit(kind="command", input={"argv": ["sh", "-c", DONE]}, audit=True)
            orch.worker(lease_seconds=10).run_once()
            assert orch.status(job).state == "awaiting_audit"
            orch.approve(job)
        before, fingerprints = verify_project(kept).to_dict(), kept_store.fingerprints()
        assert before["ok"] and verify_project(dropped).ok

        run_pasted(url, dropped_store.project, list(dropped_store.job_ids()))

        assert verify_project(kept).to_dict() == before  # the other project of the database: untouched
        assert kept_store.fingerprints() == fingerprints  # its jobs cache too (no edit counted: migration 0006)
        again = TestPostgresStore(dropped_store.project)  # a new command on the dropped project
        try:
            report = verify_project(Orchestrator(base_path=tmp_path, project_id=again.project, store=again))
        finally:
            again.close()
        assert report.ok, report.to_dict()["problems"]
    finally:
        kept_store.close()
        dropped_store.close()
