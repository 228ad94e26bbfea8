#!/bin/sh
# Runs exactly one job as an ephemeral GitHub Actions runner and exits with
# the listener's exit code (run.sh would hide it: it maps most codes to 0).
#
# Two ways in, chosen by the environment the orchestrator sets:
#   ACTIONS_RUNNER_INPUT_JITCONFIG  a just-in-time config (preferred), or
#   GITHUB_URL, RUNNER_TOKEN, RUNNER_NAME, RUNNER_LABELS
#                                   registration-token mode.
# Secrets are removed from the environment before the listener starts, so job
# steps do not inherit them.
set -eu

RUNNER_DIST="${RUNNER_DIST:-/opt/actions-runner}"
RUNNER_ROOT="${RUNNER_ROOT:-${HOME:-/home/runner}/actions-runner}"

# The root filesystem is read-only, but the runner writes its settings,
# credentials, logs and work folder next to its binaries. So the runner lives
# in a writable copy in the home tmpfs; the large externals (node runtimes)
# are linked rather than copied.
prepare_runner_root() {
    mkdir -p "$RUNNER_ROOT"
    for entry in "$RUNNER_DIST"/* "$RUNNER_DIST"/.[!.]*; do
        [ -e "$entry" ] || continue
        name=$(basename "$entry")
        if [ "$name" = externals ]; then
            ln -sfn "$entry" "$RUNNER_ROOT/$name"
        else
            cp -a "$entry" "$RUNNER_ROOT/$name"
        fi
    done
}

prepare_runner_root
cd "$RUNNER_ROOT"

if [ -n "${ACTIONS_RUNNER_INPUT_JITCONFIG:-}" ]; then
    jitconfig="$ACTIONS_RUNNER_INPUT_JITCONFIG"
    unset ACTIONS_RUNNER_INPUT_JITCONFIG RUNNER_TOKEN
    exec ./bin/Runner.Listener run --jitconfig "$jitconfig"
fi

missing=""
for var in GITHUB_URL RUNNER_TOKEN RUNNER_NAME; do
    eval "value=\${$var:-}"
    [ -n "$value" ] || missing="$missing $var"
done
if [ -n "$missing" ]; then
    echo "entrypoint: set ACTIONS_RUNNER_INPUT_JITCONFIG, or GITHUB_URL, RUNNER_TOKEN and RUNNER_NAME (missing:$missing)" >&2
    exit 64
fi

set -- --unattended --ephemeral --disableupdate \
    --url "$GITHUB_URL" --name "$RUNNER_NAME" --work _work
if [ -n "${RUNNER_LABELS:-}" ]; then
    set -- "$@" --labels "$RUNNER_LABELS"
fi
token="$RUNNER_TOKEN"
unset RUNNER_TOKEN
./config.sh "$@" --token "$token"
unset token
# The listener directly, not run.sh, so its exit code reaches the engine.
exec ./bin/Runner.Listener run
