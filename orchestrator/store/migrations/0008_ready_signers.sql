-- 0008: a ready row names the key that signed its job's first line (the submission), so that a worker that found
-- it does not trust a key leaves that key's rows out of its claim pass's next pages, unread (pg_queue.next_page,
-- orchestrator/untrusted.py). Until then it read each such job to learn it could not check it: `worker --once` took
-- 2.3-2.9 s past 4,000 of them (docs/decisions.md; docs/postgres.md gives the 5.5 s of a later, busier host).
--
-- Written with the event that queues the job, by the writer, which checked the job's first line (a hint, as the
-- kind is: a claim still reads and checks the job it tries). NULL: a row from before this migration, or written by
-- a release that does not name the column, or for a job whose first line its writer could not check; such a row is
-- listed whatever keys are left out, as before. A column added without a default rewrites no row.
ALTER TABLE orch_ready ADD COLUMN signer text;
