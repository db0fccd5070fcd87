#!/usr/bin/env bash
# The README's main-job command: installs what is missing, builds, then runs a CPNS Server, a
# PN GW and four PNEs as processes on 127.0.0.1 with fresh keys, establishes Personal
# Networks with both flows, prints the message flow and the PN Inventory, and stops them.
# Extra arguments go to scripts/demo.py (--keep keeps the logs).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh --with-runtime
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
exec python3 scripts/demo.py build/release "$@"
