#!/usr/bin/env bash
# Regenerates the committed seed corpora fuzz/corpus/<target>/: make_seeds writes seeds from
# honest establishments, TLS handshakes and sample configuration files (fuzz/make_seeds.cpp),
# then libFuzzer's -merge=1 keeps the inputs that add coverage, on top of what is committed.
# Usage: fuzz/make_corpus.sh [extra corpus dir per target: DIR/<target>/ ...]
# Needs the san build (cmake --preset san && cmake --build build/san --target cpns-fuzz
# cpns-fuzz-make-seeds).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=build/san/fuzz
seeds=$(mktemp -d /tmp/cpns-seeds.XXXXXX)
trap 'rm -rf "$seeds"' EXIT
"$bin/cpns-fuzz-make-seeds" "$seeds"
for dir in "$seeds"/*/; do
  name=$(basename "$dir")
  mkdir -p "fuzz/corpus/$name"
  new=$(mktemp -d /tmp/cpns-merge.XXXXXX)
  extra=()
  for e in "$@"; do [[ -d "$e/$name" ]] && extra+=("$e/$name"); done
  "$bin/cpns-fuzz-$name" -merge=1 -max_len=16384 -rss_limit_mb=2048 "$new" \
    "fuzz/corpus/$name" "$dir" "${extra[@]}" 2>&1 | grep -E '^MERGE-OUTER: [0-9]+ new files' || true
  rm -rf "fuzz/corpus/$name"
  mv "$new" "fuzz/corpus/$name"
  chmod 755 "fuzz/corpus/$name"
  echo "corpus $name: $(ls "fuzz/corpus/$name" | wc -l) files, $(du -sk "fuzz/corpus/$name" | cut -f1) KiB"
done
