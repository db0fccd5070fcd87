#!/usr/bin/env bash
# The include rules between the layers (docs/architecture.md, "Layers"), checked on every
# #include line under src/:
#   core    includes core only (and the generated schema, cpns/...), and no I/O, clock, thread
#           or randomness of its own: no Asio, sockets, TLS, files, databases, logging library
#   tls     core, tls
#   net     core, tls, net
#   store   core, store
#   daemon  everything but sim
#   api     core, tls, net, store, daemon, api (the management API of cpns-server)
#   sim     core, sim
# Prints every violation with its file and line; exits 1 if there is any.
set -euo pipefail
src="${CPNS_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}/src"
[[ -d "$src/core" ]] || { echo "layering: no $src/core" >&2; exit 2; }

declare -A allowed=(
  [core]="core cpns"
  [tls]="core tls cpns"
  [net]="core tls net cpns"
  [store]="core store cpns"
  [daemon]="core tls net store daemon cpns"
  [api]="core tls net store daemon api cpns"
  [sim]="core sim cpns"
)
# System headers the I/O-free core must not use (extended regular expression on the name).
core_forbidden='^(asio|boost/|openssl/(ssl|bio)\.h|sqlite3\.h|libpq-fe\.h|spdlog/|toml\+\+/|sys/socket\.h|netinet/|arpa/|unistd\.h|fcntl\.h|thread|fstream|filesystem|chrono|random|iostream)'

violations=0
checked=0
for layer in "${!allowed[@]}"; do
  dir="$src/$layer"
  [[ -d "$dir" ]] || { echo "layering: missing layer directory $dir"; violations=$((violations + 1)); continue; }
  while IFS= read -r -d '' file; do
    lineno=0
    while IFS= read -r line; do
      lineno=$((lineno + 1))
      [[ "$line" =~ ^[[:space:]]*#[[:space:]]*include[[:space:]]*([\"\<])([^\"\>]+)[\"\>] ]] || continue
      checked=$((checked + 1))
      kind=${BASH_REMATCH[1]}
      name=${BASH_REMATCH[2]}
      rel=${file#"$src"/}
      if [[ "$kind" == '"' ]]; then
        if [[ "$name" != */* ]]; then
          echo "src/$rel:$lineno: include \"$name\" without its layer directory (write \"$layer/$name\")"
          violations=$((violations + 1))
          continue
        fi
        target=${name%%/*}
        if [[ " ${allowed[$layer]} " != *" $target "* ]]; then
          echo "src/$rel:$lineno: $layer may not include \"$name\" ($layer may include: ${allowed[$layer]})"
          violations=$((violations + 1))
        fi
      elif [[ "$layer" == core && "$name" =~ $core_forbidden ]]; then
        echo "src/$rel:$lineno: the I/O-free core may not include <$name>"
        violations=$((violations + 1))
      fi
    done <"$file"
  done < <(find "$dir" -type f \( -name '*.hpp' -o -name '*.cpp' -o -name '*.h' \) -print0)
done

if ((violations)); then
  echo "layering: $violations violation(s) of the include rules (docs/architecture.md)"
  exit 1
fi
echo "layering: $checked include lines under src/ follow the rules"
