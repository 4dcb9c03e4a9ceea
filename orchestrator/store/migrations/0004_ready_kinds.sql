-- 0004: a ready row carries its job's kind, so a worker that runs only some kinds (worker --kind)
-- is never handed another's job: it neither reserves nor lists rows of other kinds (pg_queue.candidates).
--
-- Rows written before this migration have no kind (NULL): every worker lists them, as before, and a
-- worker of other kinds that reserves one reads the job, leaves it and releases the row at once.
-- A ready row lives only while its job is queued, so they are gone once those jobs have run.
ALTER TABLE orch_ready ADD COLUMN kind text;
