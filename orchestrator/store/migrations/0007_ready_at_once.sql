-- 0007: a ready row says whether its job is runnable at once (submitted, resumed, revised, released) or waits for its
-- time (a retry's backoff), as the file index's entry names say since 2026-12-06 (orchestrator/queue.py,
-- ReadyEntry.at_once). The claim statement (pg_queue._CANDIDATES) took only rows whose time had come, on the server's
-- clock: after that clock stepped back X seconds, every job queued in the last X seconds waited X seconds. Now a row's
-- time only orders it (priority, then FIFO), and only a row that is not at once waits for it (docs/postgres.md).
--
-- Rows written before this migration, and rows written after it by a release that does not name the column (a worker
-- still running through the upgrade), are false: due at their time, the meaning they had. A column added with a
-- constant default rewrites no row; the index is built in this migration's transaction, so the claims wait for it
-- (one row per queued job: ~50 ms for 50,000 rows on the benchmark server).
ALTER TABLE orch_ready ADD COLUMN at_once boolean NOT NULL DEFAULT false;
-- The next row to come due (the claim statement's part 2) is one that waits for its time: only those rows are in this
-- index. It replaces 0005's orch_ready_runnable, which held every row, so a job queued at once writes one index entry
-- fewer.
CREATE INDEX orch_ready_delayed ON orch_ready (project, runnable_at_us) WHERE NOT at_once;
DROP INDEX IF EXISTS orch_ready_runnable;  -- (IF EXISTS: one dropped by hand stops nothing here)
