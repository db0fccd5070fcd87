#!/usr/bin/env bash
# Builds the release Debian packages: the `release` preset (optimised, warnings are errors, no
# tests), then CPack's DEB generator packs its binaries into cpns-server (with cpnsctl),
# cpns-gw and cpns-pne .debs (docs/operations.md, "Debian packages").
# Usage: scripts/package.sh [OUT_DIR]    (default build/release/debs)
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-build/release/debs}
for tool in cpack dpkg-shlibdeps; do
  if ! command -v "$tool" >/dev/null; then
    echo "package.sh: $tool is missing (scripts/deps.sh --with-tests installs it)" >&2
    exit 1
  fi
done
cmake --preset release
cmake --build --preset release -j "$(nproc)" --target cpns-server cpnsctl cpns-gw cpns-pne
mkdir -p "$out"
out=$(cd "$out" && pwd)
(cd build/release && cpack -G DEB -B "$out")
rm -rf "$out/_CPack_Packages"
echo "package.sh: packages in $out:"
ls -1 "$out"/*.deb
