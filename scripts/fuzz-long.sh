#!/usr/bin/env bash
# The long fuzz runs of docs/benchmarks.md ("Fuzzing"): each named target (default: all) runs a
# fixed number of executions (CPNS_FUZZ_RUNS, default 10,000,000) from a copy of its committed
# corpus, at nice 19, with the "fuzz-long" preset (clang -O2, UBSan + libFuzzer, no ASan: ASan
# makes the role targets 5-13x slower; CI's bounded runs use ASan + UBSan). At the end, one
# Markdown row per target: executions, wall and CPU time, executions per CPU-second, coverage
# (cov: edges, ft: features) and the corpus size. A crash, a leak, a sanitizer report, a timeout
# or an out-of-memory stops the target and fails the script; the input is kept in its work
# directory.
#
# Usage: scripts/fuzz-long.sh [TARGET...]   (targets: decode body discovery pne gateway server
#                                             tls config)
#   CPNS_FUZZ_RUNS=N      executions per target (default 10000000)
#   CPNS_FUZZ_JOBS=N      targets run at once (default 1)
#   CPNS_FUZZ_OUT=DIR     work directory (default /tmp/cpns-fuzz-long)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

runs=${CPNS_FUZZ_RUNS:-10000000}
jobs=${CPNS_FUZZ_JOBS:-1}
out=${CPNS_FUZZ_OUT:-/tmp/cpns-fuzz-long}
all=(decode body discovery pne gateway server tls config)
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all[@]}")
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || { echo "fuzz-long: unknown target '$t' (one of: ${all[*]})" >&2; exit 2; }
done

command -v clang++ > /dev/null || { echo "fuzz-long: needs clang (scripts/deps.sh installs it)" >&2; exit 1; }
echo "== fuzz-long: build (preset fuzz-long)"
cmake --preset fuzz-long > /dev/null
cmake --build build/fuzz-long --target cpns-fuzz

mkdir -p "$out"
run_one() {
  local t=$1 dir="$out/$t"
  rm -rf "$dir" && mkdir -p "$dir/corpus" "$dir/artifacts"
  cp fuzz/corpus/"$t"/* "$dir/corpus/"
  echo "== fuzz-long: $t, $runs executions, log $dir/log"
  local start=$SECONDS
  set +e
  /usr/bin/time -f "cpu_seconds %U %S" nice -n 19 build/fuzz-long/fuzz/cpns-fuzz-"$t" \
    -runs="$runs" -max_len=16384 -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
    -artifact_prefix="$dir/artifacts/" "$dir/corpus" > "$dir/log" 2>&1
  local rc=$?
  set -e
  echo "$((SECONDS - start))" > "$dir/wall"
  echo "$rc" > "$dir/rc"
  [[ $rc -eq 0 ]] || echo "fuzz-long: $t FAILED (exit $rc), see $dir/log and $dir/artifacts/" >&2
}

pids=()
for t in "${targets[@]}"; do
  run_one "$t" &
  pids+=($!)
  while [[ $(jobs -rp | wc -l) -ge $jobs ]]; do sleep 5; done
done
wait "${pids[@]}" || true

status=0
echo
echo "| target | executions | wall s | CPU s | execs per CPU-s | cov / ft at the end | corpus | result |"
echo "| --- | ---: | ---: | ---: | ---: | --- | ---: | --- |"
for t in "${targets[@]}"; do
  dir="$out/$t"
  rc=$(cat "$dir/rc")
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
  cpu=$(awk '/^cpu_seconds/ {printf "%.0f", $2 + $3}' "$dir/log")
  last=$(grep -E '^#[0-9]+' "$dir/log" | tail -1)
  cov=$(sed -n 's/.*cov: \([0-9]*\) ft: \([0-9]*\).*/\1 \/ \2/p' <<< "$last")
  files=$(find "$dir/corpus" -type f | wc -l)
  result=clean
  [[ $rc -eq 0 ]] || { result="FAILED (exit $rc)"; status=1; }
  rate=$(awk -v e="${execs:-0}" -v c="${cpu:-0}" 'BEGIN {if (c > 0) printf "%.0f", e / c; else print "-"}')
  echo "| \`$t\` | ${execs:-?} | $(cat "$dir/wall") | ${cpu:-?} | $rate | ${cov:-?} | $files | $result |"
done
exit $status
