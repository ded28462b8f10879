#!/usr/bin/env bash
# The system tools the test suite drives, installed from Debian where missing:
# nginx, wrk and node for the benchmark smoke test; systemd's tools for the unit tests;
# chromium (headless) for the dashboard test; redis-server for the shared ledger;
# postgresql's server (initdb, pg_ctl) for the fleet's store.
set -euo pipefail
missing=()
for pair in nginx:nginx-light wrk:wrk node:nodejs chromium:chromium systemd-socket-activate:systemd systemd-analyze:systemd redis-server:redis-server; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi
