-- Every write of a job bumps its revision; writes compare it, so a writer
-- holding an old copy never overwrites a newer one.
ALTER TABLE jobs ADD COLUMN revision bigint NOT NULL DEFAULT 0;
