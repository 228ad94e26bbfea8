-- Finding the job whose runner ran in another job's container (see
-- Job::ran_in_container_id) on every container exit.
CREATE INDEX jobs_by_ran_in_container ON jobs (json_extract(data, '$.ranInContainerId'))
    WHERE json_extract(data, '$.ranInContainerId') IS NOT NULL;
