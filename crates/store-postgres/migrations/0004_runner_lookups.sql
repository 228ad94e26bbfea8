-- A delegation looks up the runner's newest unfinished hook job and the
-- running records GitHub's events keep for the runner. Partial indexes hold
-- only the rows those lookups want, so neither walks every job a runner ever
-- had (a finished job gives up its delegation key).
CREATE INDEX jobs_active_hook_by_runner ON jobs (runner_name, id)
    WHERE delegation_key IS NOT NULL;
CREATE INDEX jobs_tracking_by_runner ON jobs (runner_name, id)
    WHERE github_job_id IS NOT NULL AND status = 'running';
