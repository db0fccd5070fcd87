#!/usr/bin/env bash
# The README's test command: installs what is missing, builds with warnings as errors and
# runs the whole test suite (unit, simulator, script and multi-process tests) under ctest.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh --with-tests
cmake --preset ci
cmake --build --preset ci -j "$(nproc)"
ctest --preset ci
