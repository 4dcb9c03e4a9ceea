-- 0003: a running row per (job, epoch), as the file index keeps its running entries (docs/postgres.md).
--
-- Rows written by appends change in the event's own transaction, but stale recovery drops the
-- row of a job it read as no longer running in a transaction of its own. Keyed by job alone, that
-- drop could remove the row of a claim committed on another machine after the read (the job then
-- runs with no row, and is never recovered if that worker dies). With the epoch in the key it
-- removes only the row of the epoch it listed. Rows from before this migration get epoch 0:
-- "any epoch", as a file entry without "@<epoch>".
ALTER TABLE orch_running ADD COLUMN epoch integer NOT NULL DEFAULT 0 CHECK (epoch >= 0);
ALTER TABLE orch_running DROP CONSTRAINT orch_running_pkey;
ALTER TABLE orch_running ADD PRIMARY KEY (project, job_id, epoch);
