#!/usr/bin/env bash
# The simulator's scaling curve: cpns-sim with both flows at several sizes (by default 1,000,
# 10,000, 100,000 and 1,000,000 PNEs, 10 per PN GW), one after the other, each measured by
# /usr/bin/time. Prints a Markdown table of the cost per PNE in CPU time and memory, and
# writes, into the output directory, each run's JSON summary, the table, the data and a plot
# of the cost per PNE against N (gnuplot; scripts/deps.sh --with-tests installs it). The
# table and the plot come from the same runs.
#
# Usage: scripts/sim-scale.sh [--build DIR] [--out DIR] [--sizes "N1 N2 ..."]
#                             [--pnes-per-gw K] [--wave W] [--timeout SECONDS]
# Exit status: 0 when every run finished and held every invariant; 1 otherwise; 2 on usage.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build/release"
out="$root/build/sim-scale"
sizes="1000 10000 100000 1000000"
per_gw=10
wave=""
# One run of a million PNEs takes a few minutes of CPU; a run that takes longer than this
# is stopped and reported as failed (the machine is shared: allow for it).
timeout_s=3600

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --sizes) sizes=$2; shift 2 ;;
    --pnes-per-gw) per_gw=$2; shift 2 ;;
    --wave) wave=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "sim-scale: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

sim="$build/apps/cpns-sim/cpns-sim"
if [[ ! -x "$sim" ]]; then
  echo "sim-scale: no simulator at $sim (build it: cmake --preset release &&" \
    "cmake --build build/release --target cpns-sim)" >&2
  exit 2
fi
if [[ ! -x /usr/bin/time ]]; then
  echo "sim-scale: /usr/bin/time is missing (Debian package: time)" >&2
  exit 2
fi
mkdir -p "$out"
dat="$out/sim-scale.dat"
cost="$out/sim-scale-cost.dat"
table="$out/sim-scale.md"

json_field() {  # json_field FILE KEY: the number after "KEY":
  sed -n "s/^ *\"$1\": \([0-9]*\).*/\1/p" "$2"
}

echo "# N gws cpu_s wall_s peak_rss_kb sim_wall_ms messages" >"$dat"
status=0
for n in $sizes; do
  if ((n % per_gw)); then
    echo "sim-scale: $n PNEs is not a multiple of $per_gw PNEs per PN GW" >&2
    exit 2
  fi
  gws=$((n / per_gw))
  json="$out/sim-$n.json"
  args=(--gws "$gws" --pnes-per-gw "$per_gw" --flow both --trace none --json "$json")
  [[ -n "$wave" ]] && args+=(--wave "$wave")
  echo "sim-scale: $n PNEs: cpns-sim ${args[*]}" >&2
  rc=0
  timeout "$timeout_s" /usr/bin/time -f "%U %S %e %M" -o "$out/time-$n.txt" \
    "$sim" "${args[@]}" >"$out/sim-$n.log" 2>&1 || rc=$?
  if ((rc != 0)); then
    echo "sim-scale: $n PNEs: cpns-sim failed (exit $rc; 124: over ${timeout_s} s);" \
      "see $out/sim-$n.log" >&2
    status=1
    continue
  fi
  read -r user sys wall rss <"$out/time-$n.txt"
  auth=$(json_field pnes_authenticated "$json")
  if [[ "$auth" != $((2 * n)) ]]; then
    echo "sim-scale: $n PNEs: $auth memberships authenticated, expected $((2 * n))" >&2
    status=1
  fi
  cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
  echo "$n $gws $cpu $wall $rss $(json_field wall_time_ms "$json") $(json_field messages "$json")" \
    >>"$dat"
done

# cost per PNE: CPU microseconds, peak RSS bytes, and the memory each further PNE adds
# (the slope of peak RSS between this size and the one before).
awk '
  BEGIN {
    print "| PNEs | PN GWs | CPU time | wall time | CPU per PNE | peak RSS | peak RSS per PNE | added RSS per added PNE |"
    print "|---:|---:|---:|---:|---:|---:|---:|---:|"
  }
  /^#/ { next }
  {
    slope = (NR > 2 && $1 > pn) ? sprintf("%.0f B", ($5 - prss) * 1024 / ($1 - pn)) : "-"
    printf "| %\047d | %\047d | %.1f s | %.1f s | %.1f µs | %.1f MiB | %.0f B | %s |\n",
      $1, $2, $3, $4, $3 * 1e6 / $1, $5 / 1024, $5 * 1024 / $1, slope
    pn = $1; prss = $5
  }' "$dat" | tee "$table"
awk '/^#/ { print "# N cpu_us_per_pne peak_rss_bytes_per_pne added_bytes_per_added_pne"; next }
  { printf "%d %.2f %.0f %s\n", $1, $3 * 1e6 / $1, $5 * 1024 / $1,
      (n0 && $1 > n0) ? sprintf("%.0f", ($5 - r0) * 1024 / ($1 - n0)) : "?"
    n0 = $1; r0 = $5 }' "$dat" >"$cost"

if command -v gnuplot >/dev/null; then
  gnuplot <<EOF
set terminal pngcairo size 900,520 font ",11"
set output "$out/sim-scale.png"
set title "cpns-sim, both flows, $per_gw PNEs per PN GW: cost per PNE against N"
set logscale x
set xlabel "PNEs simulated (N)"
set format x "10^{%L}"
set ylabel "CPU time per PNE (µs)"
set y2label "memory per PNE (bytes)"
set logscale y2
set ytics nomirror
set y2tics
set yrange [0:*]
set key top center
set grid
set datafile missing "?"
plot "$cost" using 1:2 with linespoints lw 2 pt 7 title "CPU time per PNE (left)", \
     "$cost" using 1:3 axes x1y2 with linespoints lw 2 pt 5 title "peak RSS / N (right)", \
     "$cost" using 1:4 axes x1y2 with linespoints lw 2 pt 9 title "added RSS per added PNE (right)", \
     2048 axes x1y2 with lines dt 2 lc rgb "red" title "bound: 2 KiB per PNE (right)"
EOF
  echo "sim-scale: plot: $out/sim-scale.png" >&2
else
  echo "sim-scale: gnuplot not found: no plot (scripts/deps.sh --with-tests installs it)" >&2
fi
echo "sim-scale: table: $table; data: $dat; JSON summaries: $out/sim-*.json" >&2
exit "$status"
