-- 0002: claiming across machines (docs/postgres.md, "Claiming across machines").
--
-- orch_ready / orch_running are the PostgreSQL QueueIndex: derived caches of the events,
-- written in the SAME transaction as the event that changes a job's state (so they are never
-- behind the log), rebuildable from the events. A claim reserves a ready row with
-- SELECT ... FOR UPDATE SKIP LOCKED, but the claim itself stays an append with an expected
-- sequence: the index never decides who wins.
CREATE TABLE orch_ready (
    project           text   NOT NULL,
    job_id            text   NOT NULL,
    priority          integer NOT NULL,
    runnable_at_us    bigint NOT NULL,   -- µs since the epoch: retry time, else when it was queued
    reserved_by       text,              -- the worker that reserved it last (a hint, not a lock)
    reserved_until_us bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (project, job_id, priority, runnable_at_us)
);
CREATE INDEX orch_ready_claim_order ON orch_ready (project, priority DESC, runnable_at_us, job_id);

CREATE TABLE orch_running (
    project text NOT NULL,
    job_id  text NOT NULL,
    PRIMARY KEY (project, job_id)
);

-- Fencing: every append by a worker writes its epoch into its stream's row; the database
-- refuses to move it backwards, so a worker whose claim was superseded (a zombie) cannot
-- append, whatever the Python code decided. Appends without an epoch (submit, operator
-- actions) leave it unchanged.
ALTER TABLE orch_streams ADD COLUMN fence bigint NOT NULL DEFAULT 0 CHECK (fence >= 0);

CREATE FUNCTION orch_refuse_stale_epoch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.fence < OLD.fence THEN
        RAISE EXCEPTION 'stream %: epoch % was superseded by epoch %; the append is refused',
            OLD.stream, NEW.fence, OLD.fence
            USING ERRCODE = 'OF001';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER orch_streams_fence BEFORE UPDATE OF fence ON orch_streams
    FOR EACH ROW EXECUTE FUNCTION orch_refuse_stale_epoch();
