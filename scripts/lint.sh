#!/usr/bin/env bash
# The format and lint gate, run by scripts/test.sh after the build:
#  1. clang-format (style: .clang-format) in dry-run mode over every C++ source under src,
#     apps, tests, bench and fuzz: any file that would change is an error.
#  2. clang-tidy (checks: .clang-tidy, every finding an error) over src/core/*.cpp, with the
#     compile commands of BUILD_DIR (CMake writes compile_commands.json there).
# Both always run; the exit status is non-zero if either found something.
# Usage: scripts/lint.sh BUILD_DIR      (e.g. build/ci; the build must be configured)
# CPNS_LINT_JOBS sets clang-tidy's parallelism (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -ne 1 ]]; then
  echo "usage: $0 BUILD_DIR" >&2
  exit 2
fi
build=$1
if [[ ! -f "$build/compile_commands.json" ]]; then
  echo "lint: no $build/compile_commands.json (configure the build first)" >&2
  exit 2
fi
for tool in clang-format clang-tidy; do
  if ! command -v "$tool" >/dev/null; then
    echo "lint: $tool not installed (scripts/deps.sh --with-tests installs it)" >&2
    exit 2
  fi
done

status=0

mapfile -d '' sources < <(find src apps tests bench fuzz -type f \
  \( -name '*.cpp' -o -name '*.hpp' -o -name '*.h' -o -name '*.cc' \) -print0 | sort -z)
echo "lint: clang-format --dry-run -Werror on ${#sources[@]} files"
if ! clang-format --dry-run -Werror "${sources[@]}"; then
  echo "lint: clang-format: the files above are not formatted (fix: clang-format -i FILE)"
  status=1
fi

# The generated schema header must exist for clang-tidy to parse the core.
if [[ ! -f "$build/proto/gen/cpns/messages.pb.h" ]]; then
  cmake --build "$build" --target cpns_proto >/dev/null
fi
core=(src/core/*.cpp)
echo "lint: clang-tidy on ${#core[@]} files of src/core ($(clang-tidy --version | grep -o 'version [0-9.]*'))"
tidy_out=$(mktemp)
trap 'rm -f "$tidy_out"' EXIT
# One clang-tidy per file, CPNS_LINT_JOBS at a time; each file's output is printed whole.
# --extra-arg: the compile commands are GCC's, so clang must not fail on GCC-only warnings.
if ! printf '%s\0' "${core[@]}" | xargs -0 -n 1 -P "${CPNS_LINT_JOBS:-2}" sh -c '
    out=$(clang-tidy -p "$1" --quiet --extra-arg=-Wno-unknown-warning-option "$2" 2>&1); rc=$?
    printf "%s\n" "$out" | grep -v -E "^[0-9]+ warnings? (and [0-9]+ errors? )?generated\.$|^Suppressed [0-9]+ warnings|^Use -header-filter=|^Use -system-headers" || true
    exit $rc' sh "$build" >"$tidy_out"; then
  status=1
fi
cat "$tidy_out"
# A finding in a header is reported once per file that includes it: count distinct ones.
# (grep finds nothing on a clean run: under pipefail that must not end the script.)
findings=$({ grep -E ': (warning|error): ' "$tidy_out" || true; } | sort -u | wc -l)
if ((findings)); then
  echo "lint: clang-tidy: $findings distinct finding(s) in src/core:"
  grep -E ': (warning|error): ' "$tidy_out" | sed "s#^$PWD/##" | sort -u | sed 's/^/  /'
  status=1
fi

if ((status)); then
  echo "lint: FAILED"
else
  echo "lint: OK"
fi
exit "$status"
