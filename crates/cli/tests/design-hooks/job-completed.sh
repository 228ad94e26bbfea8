#!/bin/bash
# Location: hooks/job-completed.sh

# Notify orchestrator of completion
curl -X POST ${ORCHESTRATOR_URL}/api/jobs/${GITHUB_JOB}/complete \
  -H "Authorization: Bearer ${RUNNER_TOKEN}"
