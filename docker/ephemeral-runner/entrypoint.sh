#!/bin/sh
# Runs exactly one job as an ephemeral GitHub Actions runner and exits with
# the listener's exit code (run.sh would hide it: it maps most codes to 0).
#
# Two ways in:
#   ACTIONS_RUNNER_INPUT_JITCONFIG  a just-in-time config (preferred), or
#   GITHUB_URL, RUNNER_TOKEN, RUNNER_NAME, RUNNER_LABELS
#                                   registration-token mode.
# The orchestrator hands the secret over on standard input, one NAME=value
# line, then ends the input: it is in no part of the container's
# configuration, so `docker inspect` does not show it and no process of the
# container inherits it. Only the listener (or config.sh) gets it, in its
# own environment; the listener reads ACTIONS_RUNNER_INPUT_* and removes
# them from the environment it hands to the job. Values set in the
# container's environment are still accepted (stdin wins).
set -eu

# Reads NAME=value lines until the end of input into shell variables (not
# exported). A terminal is never read: that is someone starting the image
# by hand with -it.
if [ ! -t 0 ]; then
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in
            "") ;;
            ACTIONS_RUNNER_INPUT_JITCONFIG=?*) stdin_jitconfig="${line#*=}" ;;
            RUNNER_TOKEN=?*) stdin_token="${line#*=}" ;;
            *=*)
                echo "entrypoint: unexpected ${line%%=*} on stdin" >&2
                exit 64
                ;;
            *)
                echo "entrypoint: stdin carries NAME=value lines" >&2
                exit 64
                ;;
        esac
    done
fi
jitconfig="${stdin_jitconfig:-${ACTIONS_RUNNER_INPUT_JITCONFIG:-}}"
token="${stdin_token:-${RUNNER_TOKEN:-}}"
unset stdin_jitconfig stdin_token line ACTIONS_RUNNER_INPUT_JITCONFIG RUNNER_TOKEN

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

if [ -n "$jitconfig" ]; then
    # In the listener's environment only, never on a command line (any
    # process can read another's /proc/PID/cmdline).
    ACTIONS_RUNNER_INPUT_JITCONFIG="$jitconfig"
    export ACTIONS_RUNNER_INPUT_JITCONFIG
    unset jitconfig token
    exec ./bin/Runner.Listener run </dev/null
fi

missing=""
[ -n "$token" ] || missing="$missing RUNNER_TOKEN"
for var in GITHUB_URL RUNNER_NAME; do
    eval "value=\${$var:-}"
    [ -n "$value" ] || missing="$missing $var"
done
if [ -n "$missing" ]; then
    echo "entrypoint: hand over ACTIONS_RUNNER_INPUT_JITCONFIG, or RUNNER_TOKEN with GITHUB_URL and RUNNER_NAME (missing:$missing)" >&2
    exit 64
fi

set -- --unattended --ephemeral --disableupdate \
    --url "$GITHUB_URL" --name "$RUNNER_NAME" --work _work
if [ -n "${RUNNER_LABELS:-}" ]; then
    set -- "$@" --labels "$RUNNER_LABELS"
fi
# config.sh reads --token from ACTIONS_RUNNER_INPUT_TOKEN: in its own
# environment, off every command line.
ACTIONS_RUNNER_INPUT_TOKEN="$token" ./config.sh "$@" </dev/null
unset token
# The listener directly, not run.sh, so its exit code reaches the engine.
exec ./bin/Runner.Listener run </dev/null
