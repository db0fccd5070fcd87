#!/usr/bin/env bash
# The README's main-job command: builds, then establishes Personal Networks between a CPNS
# Server, a PN GW and PNEs (both flows) and prints the message flow and the PN Inventory.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
exec build/release/apps/cpns-sim/cpns-sim "$@"
