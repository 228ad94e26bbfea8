#!/usr/bin/env bash
# ACTIONS_RUNNER_HOOK_JOB_COMPLETED: tells the orchestrator the job ended.
#
# Runs with `bash -e` after the job's last step, whatever the job's result.
# A failed report must not turn a passing job red, so every failure here is a
# warning and the hook exits 0; the orchestrator's reconciler settles jobs
# whose report never came.
set -uo pipefail

# The native client (`proxy-runner hook job-completed`) does the same without
# starting jq and curl: PROXY_RUNNER_BIN, else proxy-runner on PATH. The curl
# path below is the fallback when neither is there.
if [ -n "${PROXY_RUNNER_BIN:-}" ] && [ -x "$PROXY_RUNNER_BIN" ]; then
  exec "$PROXY_RUNNER_BIN" hook job-completed
elif command -v proxy-runner >/dev/null 2>&1; then
  exec proxy-runner hook job-completed
fi

url="${ORCHESTRATOR_URL:-}"
token="${PROXY_RUNNER_TOKEN:-${RUNNER_TOKEN:-}}"
if [ -z "$url" ] || [ -z "$token" ] || [ -z "${GITHUB_JOB:-}" ]; then
  echo "::warning::proxy-runner: ORCHESTRATOR_URL, PROXY_RUNNER_TOKEN or GITHUB_JOB missing; completion not reported"
  exit 0
fi

# GITHUB_JOB is a job key ([A-Za-z0-9_-]); the orchestrator resolves it to
# this runner's active job.
job="$GITHUB_JOB"
if [[ ! "$job" =~ ^[A-Za-z0-9_.-]+$ ]]; then
  echo "::warning::proxy-runner: unexpected GITHUB_JOB; completion not reported"
  exit 0
fi
# A proxy runner supervisor's token acts for its slot runners: the runner
# whose job ended is named.
query=""
if [[ "${RUNNER_NAME:-}" =~ ^[A-Za-z0-9_.-]+$ ]]; then
  query="?runner=${RUNNER_NAME}"
fi
status=$(curl --silent --show-error --max-time 30 \
  --retry 3 --retry-connrefused --retry-delay 2 \
  --config - \
  -o /dev/null --write-out '%{http_code}' \
  -X POST "${url%/}/api/jobs/${job}/complete${query}" \
  2>&1 <<<"header = \"Authorization: Bearer ${token}\"") || status="unreachable (${status//$'\n'/ })"
case "$status" in
  200) echo "proxy-runner: completion reported" ;;
  unreachable*)
    echo "::warning::proxy-runner: completion not reported (${status})"
    # The container hook reports the failed call on its next call.
    [ -n "${PROXY_RUNNER_HOOK_REPORT:-}" ] && echo "job_completed unreached" >>"$PROXY_RUNNER_HOOK_REPORT" 2>/dev/null || true
    ;;
  *) echo "::warning::proxy-runner: completion not reported (${status})" ;;
esac
exit 0
