#!/usr/bin/env bash
exec "${PROXY_RUNNER_BIN:-proxy-runner}" hook container
