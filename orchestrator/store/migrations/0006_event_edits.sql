-- 0006: a count of the hand edits of each stream's rows of orch_events, kept in its orch_streams row, so that the
-- jobs cache (metrics, status --state), which re-reads only the jobs whose fingerprint changed, sees a job whose
-- events were deleted, rewritten or renumbered by hand while its head in orch_streams was not (docs/postgres.md).
--
-- The orchestrator never updates nor deletes a row of orch_events, so an append pays nothing for these triggers.
-- They fire once per statement, for every stream its rows were in (a row moved to another stream counts for both):
-- the retention block of docs/postgres.md deletes a project's events in one statement, so one UPDATE of its
-- streams' rows, which it deletes next. Not counted: a row INSERTed by hand, an edit made with the triggers
-- disabled (a superuser's session_replication_role = replica), a stream without a row in orch_streams; the full
-- reads find those (verify, status --all, metrics --rebuild).
ALTER TABLE orch_streams ADD COLUMN edits bigint NOT NULL DEFAULT 0;

CREATE FUNCTION orch_count_event_edits() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN  -- (each branch's statement is planned when first run: ``came`` is an UPDATE's only)
        UPDATE orch_streams AS s SET edits = s.edits + 1
          FROM (SELECT project, stream FROM gone UNION SELECT project, stream FROM came) AS e
         WHERE s.project = e.project AND s.stream = e.stream;
    ELSE
        UPDATE orch_streams AS s SET edits = s.edits + 1
          FROM (SELECT DISTINCT project, stream FROM gone) AS e
         WHERE s.project = e.project AND s.stream = e.stream;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER orch_events_updated AFTER UPDATE ON orch_events REFERENCING OLD TABLE AS gone NEW TABLE AS came
    FOR EACH STATEMENT EXECUTE FUNCTION orch_count_event_edits();
CREATE TRIGGER orch_events_deleted AFTER DELETE ON orch_events REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION orch_count_event_edits();
