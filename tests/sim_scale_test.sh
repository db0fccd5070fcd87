#!/usr/bin/env bash
# The simulator runs 10,000 PNEs (1,000 PN GWs x 10 PNEs, both flows) in one process and
# prints wall time and peak memory (figures, not assertions).
set -euo pipefail
sim="$CPNS_BINARY_DIR/apps/cpns-sim/cpns-sim"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$sim" --gws 1000 --pnes-per-gw 10 --flow both --seed 7 --json "$out" >/dev/null
cat "$out"
grep -q '"pnes": 10000' "$out"
grep -q '"pns_registered": 2000' "$out"
grep -q '"pnes_authenticated": 20000' "$out"
grep -q '"sk_pne_agree": {"checked": 20000, "equal": 20000, "all_equal": true}' "$out"
grep -q '"protection_violations": 0' "$out"
echo "1 passed, 0 failed"
