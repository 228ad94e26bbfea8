-- Finding the job whose runner ran in another job's container (see
-- Job::ran_in_container_id) on every container exit.
ALTER TABLE jobs ADD COLUMN ran_in_container_id text;
CREATE INDEX jobs_by_ran_in_container ON jobs (ran_in_container_id)
    WHERE ran_in_container_id IS NOT NULL;
