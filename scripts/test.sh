#!/usr/bin/env bash
# The README's test command: installs what is missing, builds with warnings as errors, runs
# the format and lint gate (scripts/lint.sh) and the whole test suite (unit, simulator, script
# and multi-process tests) under ctest, then the sanitizer and fuzzing part (scripts/
# sanitize.sh: the suite under ASan + UBSan, the daemon tests under TSan, every fuzz target
# for a bounded time; CPNS_SANITIZE=0 skips it). Fails if the gate, a test, a sanitizer or a
# fuzz target fails; every part runs even when an earlier one failed, so that one run reports
# all of them.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh --with-tests
# deps.sh installed them: a test that finds its tool missing fails instead of skipping.
export CPNS_REQUIRE_TSHARK=1 CPNS_REQUIRE_PROMETHEUS=1
cmake --preset ci
cmake --build --preset ci -j "$(nproc)"

lint_status=0
scripts/lint.sh build/ci || lint_status=$?

# The store's PostgreSQL tests run against a throw-away server (in /tmp: the postgres user
# must be able to reach it), stopped and removed on exit.
pg_dir=$(mktemp -d /tmp/cpns-pg.XXXXXX)
trap 'scripts/pg-test-server.sh stop "$pg_dir"' EXIT
CPNS_TEST_PG_URL=$(scripts/pg-test-server.sh start "$pg_dir")
export CPNS_TEST_PG_URL
test_status=0
ctest --preset ci || test_status=$?
sanitize_status=0
if [[ "${CPNS_SANITIZE:-1}" != 0 ]]; then
  scripts/sanitize.sh all || sanitize_status=$?
fi
if ((lint_status)); then
  echo "test.sh: the format and lint gate failed (scripts/lint.sh build/ci, output above)" >&2
fi
if ((test_status)); then
  echo "test.sh: the test suite failed (ctest --preset ci, output above)" >&2
fi
if ((sanitize_status)); then
  echo "test.sh: the sanitizer / fuzzing part failed (scripts/sanitize.sh, summary above)" >&2
fi
if ((lint_status || test_status || sanitize_status)); then
  exit 1
fi
