#!/usr/bin/env bash
# Installs the Debian 12 packages the build and the tests need, if any is missing.
# Usage: scripts/deps.sh [--with-runtime | --with-tests]
set -euo pipefail

packages=(
  cmake ninja-build g++ pkg-config
  libssl-dev openssl
  libprotobuf-dev protobuf-compiler
  libsqlite3-dev
  libpq-dev
  libasio-dev libcli11-dev libspdlog-dev libtomlplusplus-dev
  libcpp-httplib-dev  # src/api/: the management API's HTTP(S) server and cpnsctl's client
  nlohmann-json3-dev  # src/api/, src/daemon/event_hub.cpp: the management API's JSON
)
if [[ "${1:-}" == "--with-runtime" || "${1:-}" == "--with-tests" ]]; then
  packages+=(python3 procps)
fi
if [[ "${1:-}" == "--with-tests" ]]; then
  packages+=(googletest libgtest-dev libgmock-dev libbenchmark-dev xxd gnutls-bin procps python3
             postgresql postgresql-client
             python3-cryptography  # revocation_process_test, log_secrets_test open PNEs' state files
             prometheus  # tests/metrics_test.py: a real Prometheus scrapes the daemons; promtool
             clang-format clang-tidy  # scripts/lint.sh (Debian 12: version 14)
             clang libclang-rt-14-dev llvm  # scripts/sanitize.sh: sanitizers, libFuzzer, symbolizer
             tshark  # tests/dissector_test.py: dumpcap captures, tshark runs tools/wireshark/cpns.lua
             gnuplot-nox time  # scripts/sim-scale.sh: the plot; each run's CPU time and peak RSS
             python3-jsonschema python3-yaml  # tests/api_test.py: answers checked against docs/api.yaml
             chromium  # tests/console_test.py: drives the web console headless (DevTools protocol)
             passwd util-linux  # tests/control_socket_test.py: useradd/userdel, runuser (a 2nd local user)
             lintian  # tests/package_test.py: lintian on the .debs
             dpkg-dev  # tests/package_test.py: cpack's dependencies from dpkg-shlibdeps
             systemd  # tests/package_test.py: systemd-analyze verify and security on the units
             adduser  # tests/package_test.py: the packages' postinst makes the system users
             )
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "deps: not root; run as root or install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # wireshark-common (with tshark) asks whether non-root users may capture: no.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "deps: done"
fi
