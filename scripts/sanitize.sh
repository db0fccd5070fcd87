#!/usr/bin/env bash
# The sanitizer and fuzzing part of CI (scripts/test.sh runs it after the plain ci run):
#  1. preset san (clang, -O1, ASan + UBSan + libFuzzer coverage): builds everything, runs the
#     whole ctest suite with CPNS_SANITIZER=1 (tests that are slow under ASan scale their
#     counts down, see README "Tests"), then runs each fuzz target for a bounded time on a
#     copy of its committed corpus (fuzz/corpus/<target>/);
#  2. preset tsan (clang ThreadSanitizer): builds the daemons and runs the tests labelled
#     "daemons" (real daemons: the store thread and the event loop).
# Every sanitizer report goes to a file under build/<preset>/sanitizer-reports/; any report
# fails the run, even one from a daemon that a test stopped (whose exit status no test sees).
#
# Usage: scripts/sanitize.sh [all | san | tsan | fuzz]   (default all)
# Environment: CPNS_FUZZ_SECONDS (per target, default 20), CPNS_TEST_PG_URL (as for ctest).
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}
fuzz_seconds=${CPNS_FUZZ_SECONDS:-20}
jobs=$(nproc)
status=0
declare -a summary=()

now() { date +%s; }
step() { printf '\n=== sanitize.sh: %s ===\n' "$*"; }
note() { summary+=("$*"); }

# Sanitizer reports of the run so far; prints them and returns 1 if there is any.
reports_clean() {
  local dir=$1 files
  mapfile -t files < <(find "$dir" -type f 2>/dev/null | sort)
  ((${#files[@]} == 0)) && return 0
  echo "sanitize.sh: ${#files[@]} sanitizer report(s) in $dir:" >&2
  local f
  for f in "${files[@]}"; do
    echo "--- $f" >&2
    head -n 60 "$f" >&2
  done
  return 1
}

export CMAKE_CXX_COMPILER_LAUNCHER=${CMAKE_CXX_COMPILER_LAUNCHER:-$(command -v ccache || true)}

run_san_tests() {
  local t0 reports=build/san/sanitizer-reports
  t0=$(now)
  step "san: build (clang, ASan + UBSan + fuzzer coverage, -O1)"
  cmake --preset san >/dev/null
  cmake --build --preset san -j "$jobs"
  step "san: the whole test suite under ASan + UBSan"
  rm -rf "$reports" && mkdir -p "$reports"
  local rc=0
  ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:log_path=$PWD/$reports/asan" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$PWD/$reports/ubsan" \
    CPNS_SANITIZER=1 ctest --preset san || rc=$?
  reports_clean "$reports" || rc=1
  if ((rc)); then
    note "san tests: FAILED ($(($(now) - t0)) s)"
    status=1
  else
    note "san tests: ok ($(($(now) - t0)) s)"
  fi
}

run_fuzz() {
  local t0 rc=0 name corpus work log line
  t0=$(now)
  step "fuzz: each target ${fuzz_seconds} s on a copy of its corpus"
  cmake --preset san >/dev/null
  cmake --build --preset san -j "$jobs" --target cpns-fuzz
  work=$(mktemp -d /tmp/cpns-fuzz.XXXXXX)
  for corpus in fuzz/corpus/*/; do
    name=$(basename "$corpus")
    mkdir -p "$work/$name"
    cp "$corpus"/* "$work/$name/"
    log="$work/$name.log"
    # -max_len: room for a role's whole establishment (see fuzz/roles.hpp).
    if ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" \
       UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
       "build/san/fuzz/cpns-fuzz-$name" -max_total_time="$fuzz_seconds" -rss_limit_mb=2048 \
         -timeout=30 -max_len=16384 -print_final_stats=1 -artifact_prefix="$work/$name-" \
         "$work/$name" >"$log" 2>&1; then
      line=$(grep -E '^(#[0-9]+[[:space:]]+DONE|Done [0-9]+ runs)' "$log" | tail -n 1 || true)
      echo "fuzz $name: ok  $line"
    else
      rc=1
      echo "fuzz $name: FAILED (artifacts in $work):" >&2
      tail -n 60 "$log" >&2
    fi
  done
  if ((rc)); then
    note "fuzz: FAILED ($(($(now) - t0)) s); inputs and logs kept in $work"
    status=1
  else
    rm -rf "$work"
    note "fuzz: ok, $(find fuzz/corpus -mindepth 1 -maxdepth 1 -type d | wc -l) targets ($(($(now) - t0)) s)"
  fi
}

run_tsan() {
  local t0 reports=build/tsan/sanitizer-reports rc=0
  t0=$(now)
  step "tsan: build the daemons (clang ThreadSanitizer, -O1)"
  cmake --preset tsan >/dev/null
  # Every program: the daemon tests include tests/config_cli_test.py (--version of each).
  cmake --build --preset tsan -j "$jobs" --target cpns-server cpns-gw cpns-pne cpnsctl \
    cpns-load cpns-frame cpns-sim cpns-explore cpns-vectors
  step "tsan: the daemon tests (ctest -L daemons)"
  rm -rf "$reports" && mkdir -p "$reports"
  TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:log_path=$PWD/$reports/tsan" \
    CPNS_SANITIZER=1 ctest --preset tsan || rc=$?
  reports_clean "$reports" || rc=1
  if ((rc)); then
    note "tsan daemon tests: FAILED ($(($(now) - t0)) s)"
    status=1
  else
    note "tsan daemon tests: ok ($(($(now) - t0)) s)"
  fi
}

start=$(now)
case "$what" in
  all) run_san_tests; run_fuzz; run_tsan ;;
  san) run_san_tests ;;
  fuzz) run_fuzz ;;
  tsan) run_tsan ;;
  *) echo "usage: scripts/sanitize.sh [all | san | tsan | fuzz]" >&2; exit 2 ;;
esac

step "summary ($(($(now) - start)) s)"
printf '  %s\n' "${summary[@]}"
exit "$status"
