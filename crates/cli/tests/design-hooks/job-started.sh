#!/bin/bash
# Location: hooks/job-started.sh

# Extract job context from environment
JOB_ID="${GITHUB_JOB}"
RUN_ID="${GITHUB_RUN_ID}"
REPOSITORY="${GITHUB_REPOSITORY}"
WORKFLOW="${GITHUB_WORKFLOW}"
RUNNER_NAME="${RUNNER_NAME}"

# Package job context
JOB_CONTEXT=$(cat <<EOF
{
  "jobId": "${JOB_ID}",
  "runId": "${RUN_ID}",
  "repository": "${REPOSITORY}",
  "workflow": "${WORKFLOW}",
  "runnerName": "${RUNNER_NAME}",
  "labels": "${RUNNER_LABELS}",
  "environment": $(env | jq -R -s 'split("\n") | map(select(length > 0) | split("=") | {key: .[0], value: .[1]}) | from_entries')
}
EOF
)

# Delegate to orchestrator
curl -X POST ${ORCHESTRATOR_URL}/api/jobs/delegate \
  -H "Content-Type: application/json" \
  -H "Authorization: Bearer ${RUNNER_TOKEN}" \
  -d "${JOB_CONTEXT}"

# Block execution on proxy runner
echo "Job delegated to ephemeral container"
exit 78  # Special exit code to skip job execution
