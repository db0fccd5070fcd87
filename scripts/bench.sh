#!/usr/bin/env bash
# Builds the release preset with the benchmarks and runs them (docs/benchmarks.md):
#  1. cpns-bench (Google Benchmark): key schedule, codec, PSK-TLS handshakes, a simulated
#     establishment. Its table is printed; the JSON is kept in build/release/cpns-bench.json.
#  2. cpns-sim with 10,000 PNEs (1,000 PN GWs x 10 PNEs, trace off): wall time and peak RSS.
# Usage: scripts/bench.sh [cpns-bench flags, e.g. --benchmark_filter=Tls]
# CPNS_BUILD_JOBS sets the build's parallelism (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh --with-tests  # libbenchmark-dev comes with the test dependencies
cmake --preset release -DCPNS_BUILD_BENCH=ON >/dev/null
cmake --build build/release --target cpns-bench cpns-sim -j "${CPNS_BUILD_JOBS:-2}"

bench=build/release/bench/cpns-bench
sim=build/release/apps/cpns-sim/cpns-sim

echo
echo "== cpns-bench ($(nproc) CPU(s), $(date -u +%Y-%m-%dT%H:%MZ)) =="
# libbenchmark 1.7.1 takes --benchmark_min_time as plain seconds (the "0.2s" form is 1.8+).
"$bench" --benchmark_min_time=0.2 --benchmark_out=build/release/cpns-bench.json \
  --benchmark_out_format=json "$@"

echo
echo "== cpns-sim: 1000 PN GWs x 10 PNEs (both flows, trace off) =="
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sim_args=(--gws 1000 --pnes-per-gw 10 --trace none --json "$tmp/summary.json")
if [[ -x /usr/bin/time ]]; then
  /usr/bin/time -v "$sim" "${sim_args[@]}" >/dev/null 2>"$tmp/time.txt"
  wall=$(sed -n 's/^[[:space:]]*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$tmp/time.txt")
  rss_kb=$(sed -n 's/^[[:space:]]*Maximum resident set size (kbytes): //p' "$tmp/time.txt")
  source_note="/usr/bin/time -v"
else
  start=$(date +%s.%N)
  "$sim" "${sim_args[@]}" >/dev/null 2>"$tmp/time.txt"
  wall="$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f s", e - s }')"
  rss_kb=$(sed -n 's/.*"peak_rss_kb": \([0-9]*\).*/\1/p' "$tmp/summary.json")
  source_note="the simulator's JSON (getrusage)"
fi
json_num() { sed -n "s/.*\"$1\": \([0-9]*\).*/\1/p" "$tmp/summary.json"; }
printf '%-34s %s\n' "wall time (whole process, m:ss)" "$wall"
printf '%-34s %s ms\n' "simulator wall time (its own)" "$(json_num wall_time_ms)"
printf '%-34s %s kB (%s MiB), from %s\n' "peak RSS" "$rss_kb" "$((rss_kb / 1024))" "$source_note"
printf '%-34s %s\n' "PNs registered" "$(json_num pns_registered)"
printf '%-34s %s\n' "PNE memberships authenticated" "$(json_num pnes_authenticated)"
printf '%-34s %s\n' "messages" "$(json_num messages)"
