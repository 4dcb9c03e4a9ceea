-- 0005: the claim statement's two look-ups that are not in claim order get an index each
-- (pg_queue._CANDIDATES, parts 2 and 3): the earliest job not yet due, and the reservation that
-- lapses first. Without them each claim read every queued row of the project: ~18 ms per claim
-- with 100,000 queued jobs, against ~0.7 ms with 2,000 (docs/postgres.md).
CREATE INDEX orch_ready_runnable ON orch_ready (project, runnable_at_us);
-- only rows reserved once (a row never reserved, or released, holds 0), so an unreserved backlog costs nothing here
CREATE INDEX orch_ready_reserved ON orch_ready (project, reserved_until_us) WHERE reserved_until_us > 0;
