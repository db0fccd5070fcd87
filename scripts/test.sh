#!/usr/bin/env bash
# The README's test command: installs what is missing, builds with warnings as errors and
# runs the whole test suite (unit, simulator, script and multi-process tests) under ctest.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh --with-tests
cmake --preset ci
cmake --build --preset ci -j "$(nproc)"

# The store's PostgreSQL tests run against a throw-away server (in /tmp: the postgres user
# must be able to reach it), stopped and removed on exit.
pg_dir=$(mktemp -d /tmp/cpns-pg.XXXXXX)
trap 'scripts/pg-test-server.sh stop "$pg_dir"' EXIT
CPNS_TEST_PG_URL=$(scripts/pg-test-server.sh start "$pg_dir")
export CPNS_TEST_PG_URL
ctest --preset ci
