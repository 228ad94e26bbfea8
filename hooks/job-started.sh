#!/usr/bin/env bash
# ACTIONS_RUNNER_HOOK_JOB_STARTED: hands the job's context to the orchestrator.
#
# The runner runs this with `bash -e` before the job's first step. Unlike the
# design's sketch, it exits 0 after a successful delegation: the runner gives
# exit code 78 no meaning, and any non-zero exit fails the job. When the
# orchestrator cannot be reached it exits 1 with the reason, so the job fails
# visibly instead of running unaccounted.
#
# Needs: proxy-runner, else bash, curl and jq. Reads ORCHESTRATOR_URL and
# PROXY_RUNNER_TOKEN (the runner's orchestrator token; RUNNER_TOKEN is
# accepted for the design's setups).
set -euo pipefail

# The native client (`proxy-runner hook job-started`) does the same without
# starting jq and curl: PROXY_RUNNER_BIN, else proxy-runner on PATH. The curl
# path below is the fallback when neither is there.
if [ -n "${PROXY_RUNNER_BIN:-}" ] && [ -x "$PROXY_RUNNER_BIN" ]; then
  exec "$PROXY_RUNNER_BIN" hook job-started
elif command -v proxy-runner >/dev/null 2>&1; then
  exec proxy-runner hook job-started
fi

url="${ORCHESTRATOR_URL:?ORCHESTRATOR_URL is not set}"
token="${PROXY_RUNNER_TOKEN:-${RUNNER_TOKEN:-}}"
if [ -z "$token" ]; then
  echo "::error::proxy-runner: no orchestrator token (PROXY_RUNNER_TOKEN) in the runner's environment"
  exit 1
fi

# Only the job's own context goes out: GITHUB_* and RUNNER_* variables, minus
# anything that looks like a credential (the orchestrator filters again).
body=$(jq -n \
  --arg jobId "${GITHUB_JOB:-}" \
  --arg runId "${GITHUB_RUN_ID:-}" \
  --arg runAttempt "${GITHUB_RUN_ATTEMPT:-1}" \
  --arg repository "${GITHUB_REPOSITORY:-}" \
  --arg workflow "${GITHUB_WORKFLOW:-}" \
  --arg runnerName "${RUNNER_NAME:-}" \
  --arg labels "${RUNNER_LABELS:-}" \
  '{jobId: $jobId, runId: $runId, runAttempt: $runAttempt, repository: $repository,
    workflow: $workflow, runnerName: $runnerName, labels: $labels,
    environment: (env | with_entries(select(
        (.key | test("^(GITHUB|RUNNER)_"))
        and (.key | test("TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL|PRIVATE"; "i") | not))))}')

# The token goes to curl on stdin, not on its command line (visible to
# every process); the URL is shown without any user:password part.
shown_url=$(sed -E 's#//[^/@]*@#//#' <<<"$url")
response=$(curl --silent --show-error --max-time 30 \
  --retry 3 --retry-connrefused --retry-delay 2 \
  --config - \
  -X POST "${url%/}/api/jobs/delegate" \
  -H "Content-Type: application/json" \
  --data-binary "$body" \
  --write-out '\n%{http_code}' 2>&1 <<<"header = \"Authorization: Bearer ${token}\"") || {
  echo "::error::proxy-runner: cannot reach the orchestrator at ${shown_url}: ${response##*$'\n'}"
  # The container hook reports the failed call on its next call.
  [ -n "${PROXY_RUNNER_HOOK_REPORT:-}" ] && echo "job_started unreached" >>"$PROXY_RUNNER_HOOK_REPORT" 2>/dev/null || true
  exit 1
}
status="${response##*$'\n'}"
reply="${response%$'\n'*}"
case "$status" in
  200|201)
    id=$(jq -r '.id // empty' <<<"$reply" 2>/dev/null || true)
    echo "proxy-runner: job delegated (orchestrator job ${id:-?})"
    exit 0
    ;;
  *)
    message=$(jq -r '.error.message // empty' <<<"$reply" 2>/dev/null || true)
    echo "::error::proxy-runner: delegation refused (HTTP ${status}): ${message:-$reply}"
    exit 1
    ;;
esac
