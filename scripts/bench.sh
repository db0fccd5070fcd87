#!/usr/bin/env bash
# The benchmark harness (docs/benchmarks.md). Prints ONE table first: each row is a project
# figure next to its bound, both measured in this run, the ratio and the target:
#   a  the KDF with SK_PNE's parameters (EUKey keyed once)  vs a bare HMAC-SHA-256 of the same bytes
#   b  PNE authentications/s through the real Server role   vs the bare key-schedule calls
#   c  durable PN registrations/s through a real cpns-server on SQLite (cpns-load driving it)
#                                                           vs a bare SQLite insert loop
#   d  the same on PostgreSQL                               vs a bare libpq insert loop
# (c and d: the same durability and the same number of PNs per commit as the server's group
# commits had in this run.) Then the rest of cpns-bench (key schedule, codec, PSK-TLS
# handshakes, a simulated establishment) and cpns-sim with 10,000 PNEs.
#
# Usage: scripts/bench.sh [--tiny] [--build DIR] [cpns-bench flags, e.g. --benchmark_filter=Tls]
#   --tiny       seconds, not minutes: every part at a tiny size, against an existing build
#                (default build/ci), nothing installed or built. Prints the same table and
#                asserts no timing: it fails only when a part of the harness does not run.
#                ctest runs it as `bench.tiny`.
#   --build DIR  use the binaries of DIR (configured with -DCPNS_BUILD_BENCH=ON).
# PostgreSQL (row d): CPNS_BENCH_PG_URL, else CPNS_TEST_PG_URL, names a server on which a
# fresh database is created (and dropped); without either the full run starts a throw-away
# one (scripts/pg-test-server.sh) and --tiny leaves row d out. CPNS_BUILD_JOBS sets the
# build's parallelism (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

tiny=0
build=""
bench_flags=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tiny) tiny=1 ;;
    --build)
      [[ $# -ge 2 ]] || { echo "bench.sh: --build needs a directory" >&2; exit 2; }
      build=$2
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) bench_flags+=("$1") ;;
  esac
  shift
done

if [[ $tiny -eq 1 ]]; then
  build=${build:-build/ci}
else
  if [[ -z "$build" ]]; then
    scripts/deps.sh --with-tests # libbenchmark-dev comes with the test dependencies
    cmake --preset release -DCPNS_BUILD_BENCH=ON >/dev/null
    build=build/release
  fi
  cmake --build "$build" --target cpns-bench cpns-sim cpns-server cpns-load \
    -j "${CPNS_BUILD_JOBS:-2}"
fi

bench=$build/bench/cpns-bench
sim=$build/apps/cpns-sim/cpns-sim
for exe in "$bench" "$sim" "$build/apps/cpns-server/cpns-server" "$build/apps/cpns-load/cpns-load"; do
  if [[ ! -x "$exe" ]]; then
    echo "bench.sh: $exe is missing: build $build with -DCPNS_BUILD_BENCH=ON first" >&2
    exit 1
  fi
done

# Scratch space on the build's disk (not a tmpfs): the SQLite files of rows c and d's bound.
mkdir -p "$build"
work=$(mktemp -d "$(realpath "$build")/bench-run.XXXXXX")
pg_dir=""
cleanup() {
  if [[ -n "$pg_dir" ]]; then scripts/pg-test-server.sh stop "$pg_dir" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

pg_url=${CPNS_BENCH_PG_URL:-${CPNS_TEST_PG_URL:-}}
if [[ -z "$pg_url" && $tiny -eq 0 ]]; then
  pg_dir="$work/pg"
  pg_url=$(scripts/pg-test-server.sh start "$pg_dir")
fi

if [[ $tiny -eq 1 ]]; then
  min_time=0.01
  load_gws=10 load_pnes=2 load_pns=2
  sim_gws=10
else
  min_time=0.2
  load_gws=200 load_pnes=2 load_pns=10
  sim_gws=1000
fi

echo "== $(nproc) CPU(s), load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%dT%H:%MZ), $build =="
# libbenchmark 1.7.1 takes --benchmark_min_time as plain seconds (the "0.2s" form is 1.8+).
# The database bounds run later, with the group size the server reached.
filter='-BM_Bound_Bare(Sqlite|Pg)Insert'
[[ $tiny -eq 1 ]] && filter='BM_Kdf_SkPneParams_Keyed|BM_Bound_BareHmac|BM_ServerRole|BM_Bound_KeySchedule'
"$bench" --benchmark_min_time="$min_time" --benchmark_filter="$filter" \
  --benchmark_out="$work/cpns-bench.json" --benchmark_out_format=json "${bench_flags[@]}" \
  >"$work/cpns-bench.txt" 2>&1
[[ $tiny -eq 1 ]] || cp "$work/cpns-bench.json" "$build/cpns-bench.json"

# Rows c and d, and the table.
python3 - "$build" "$work" "$tiny" "$min_time" "$pg_url" "$load_gws" "$load_pnes" "$load_pns" <<'PY'
import json, os, resource, secrets, signal, socket, subprocess, sys, time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

build, work, tiny, min_time, pg_url = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], sys.argv[5]
gws, pnes, pns = (int(x) for x in sys.argv[6:9])
apps = build / "apps"
bench = build / "bench" / "cpns-bench"
READY_TIMEOUT_S = 60      # a server's start (migrations, the entities import)
LOAD_TIMEOUT_S = 600      # one load run, bounded
BENCH_TIMEOUT_S = 300     # one bare insert loop
TICK = os.sysconf("SC_CLK_TCK")
failures = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def status(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"status\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def bench_json(filter_, env):
    out = subprocess.run([str(bench), f"--benchmark_filter=^{filter_}(/|$)",
                          f"--benchmark_min_time={min_time}", "--benchmark_format=json"],
                         env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=BENCH_TIMEOUT_S)
    if out.returncode != 0:
        raise RuntimeError(f"cpns-bench {filter_} failed: {out.stderr.strip()[-500:]}")
    b = json.loads(out.stdout)["benchmarks"][0]
    if b.get("error_occurred"):
        raise RuntimeError(f"cpns-bench {filter_}: {b.get('error_message')}")
    return b


def e2e(label, store_url, bare_filter, bare_env):
    """PNs/s through a real cpns-server under cpns-load, then the bare loop with the mean
    number of PNs per commit the server's group commits had."""
    d = work / label
    d.mkdir()
    ent, mk, ready = d / "ent.toml", d / "mk", d / "s.ready"
    subprocess.run([str(apps / "cpns-load" / "cpns-load"), "provision", "--gws", str(gws),
                    "--pnes-per-gw", str(pnes), "--out", str(ent)], check=True,
                   capture_output=True, timeout=60)
    mk.write_text(secrets.token_hex(32) + "\n")
    mk.chmod(0o600)
    port = free_port()
    log = open(d / "server.log", "w")
    server = subprocess.Popen([str(apps / "cpns-server" / "cpns-server"), "--store", store_url,
                               "--master-key-file", str(mk), "--entities", str(ent),
                               "--listen", "127.0.0.1:0", "--ready-file", str(ready),
                               "--control-listen", f"127.0.0.1:{port}", "--log-level", "warn"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (ready.exists() and ready.read_text().strip()):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cpns-server did not start; see its log:\n{(d / 'server.log').read_text()[-2000:]}")
            time.sleep(0.05)
        cpu0 = cpu_seconds(server.pid)
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        run = subprocess.run([str(apps / "cpns-load" / "cpns-load"), "run", "--entities", str(ent),
                              "--servers", ready.read_text().strip(), "--pns-per-gw", str(pns)],
                             capture_output=True, text=True, timeout=LOAD_TIMEOUT_S)
        if run.returncode != 0 or not run.stdout.strip():
            raise RuntimeError(f"cpns-load failed ({run.returncode}): {run.stdout[-500:]} {run.stderr[-500:]}")
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        cpu = cpu_seconds(server.pid) - cpu0
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # cpns-load, waited for
        load_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
        st = status(port)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    commits, grouped = st.get("group_commits", 0), st.get("grouped_pns", 0)
    registered = summary["registered"]
    # Registrations committed alone (a group of one) count as groups of one.
    singles = max(registered - grouped, 0)
    group = (grouped + singles) / max(commits + singles, 1)
    bare = bench_json(bare_filter, {**bare_env, "CPNS_BENCH_GROUP": str(max(1, round(group))),
                                    "CPNS_BENCH_MEMBERS": str(pnes)})
    return {"project": summary["pns_per_second"], "bound": bare["pns/s"], "group": group,
            "registered": registered, "attempted": summary["attempted"],
            "latency_ms": summary["latency_ms"], "server_cpu_ms_per_pn": 1000 * cpu / max(registered, 1),
            "load_cpu_ms_per_pn": 1000 * load_cpu / max(registered, 1)}


rows = {}
try:
    rows["c"] = e2e("sqlite", f"sqlite:{work / 'sqlite' / 'server.db'}", "BM_Bound_BareSqliteInsert",
                    {"CPNS_BENCH_STORE_DIR": str(work / "sqlite")})
except Exception as e:  # noqa: BLE001 - reported in the table, and the run fails
    failures.append(f"row c: {e}")
if pg_url:
    admin = urlsplit(pg_url)
    name = "cpnsbench_" + secrets.token_hex(6)
    db_url = urlunsplit((admin.scheme, admin.netloc, "/" + name, admin.query, admin.fragment))
    try:
        subprocess.run(["psql", pg_url, "-v", "ON_ERROR_STOP=1", "-qc", f"CREATE DATABASE {name}"],
                       check=True, capture_output=True, timeout=30)
        rows["d"] = e2e("postgresql", db_url, "BM_Bound_BarePgInsert", {"CPNS_BENCH_PG_URL": db_url})
    except Exception as e:  # noqa: BLE001
        failures.append(f"row d: {e}")
    finally:
        subprocess.run(["psql", pg_url, "-qc", f"DROP DATABASE IF EXISTS {name}"],
                       capture_output=True, timeout=30)

marks = {b["name"]: b for b in json.loads((work / "cpns-bench.json").read_text())["benchmarks"]}


def mark(name):
    # UseManualTime / UseRealTime benchmarks carry a suffix in their name.
    b = marks.get(name) or marks.get(name + "/manual_time") or marks.get(name + "/real_time")
    if b is None or b.get("error_occurred"):
        failures.append(f"{name}: {'missing' if b is None else b.get('error_message')}")
        return None
    return b


table = []
a, a_bound = mark("BM_Kdf_SkPneParams_Keyed"), mark("BM_Bound_BareHmac_SkPneInput")
if a and a_bound:
    ratio = a["cpu_time"] / a_bound["cpu_time"]
    table.append(("a", "KDF, SK_PNE parameters, EUKey keyed once (CPU time per call)",
                  f"{a['cpu_time']:.0f} ns", f"{a_bound['cpu_time']:.0f} ns (bare HMAC-SHA-256, same bytes)",
                  f"{ratio:.2f}x", "<= 1.25x", ratio <= 1.25))
b, b_bound = mark("BM_ServerRole_PneAuth"), mark("BM_Bound_KeySchedule_PneMix")
if b and b_bound:
    ratio = b["pne_auth/s"] / b_bound["pne_auth/s"]
    table.append(("b", "PNE authentications/s, real Server role, no I/O (5 of 10 with LocalEUKey)",
                  f"{b['pne_auth/s']:,.0f}/s", f"{b_bound['pne_auth/s']:,.0f}/s (bare key schedule)",
                  f"{ratio:.2f}x", ">= 0.5x", ratio >= 0.5))
for key, what, bound_name in (("c", "durable PN registrations/s, cpns-server on SQLite", "bare SQLite insert loop"),
                              ("d", "durable PN registrations/s, cpns-server on PostgreSQL", "bare libpq insert loop")):
    r = rows.get(key)
    if r is None:
        table.append((key, what, "-", "-", "-", ">= 0.5x" + ("; >= 1,860/s" if key == "d" else ""),
                      None))
        continue
    ratio = r["project"] / r["bound"]
    met = ratio >= 0.5 and (key != "d" or r["project"] >= 5 * 372)
    table.append((key, f"{what} ({r['registered']} PNs, {pnes} PNEs each; mean {r['group']:.1f} PNs per commit)",
                  f"{r['project']:,.0f}/s", f"{r['bound']:,.0f}/s ({bound_name}, {max(1, round(r['group']))} PNs per commit)",
                  f"{ratio:.2f}x", ">= 0.5x" + ("; >= 1,860/s" if key == "d" else ""), met))
table.append(("e", "server CPU per PSK-TLS handshake at a cpns-gw PAN endpoint", "not measured", "-", "-", "<= 1.5x", None))
table.append(("f", "memory per idle PSK-TLS link", "not measured", "-", "-", "<= 16 KiB", None))

print()
print("== Ratio table: each figure and its bound measured in this run"
      + (" (--tiny: sizes too small for the figures to mean anything; nothing is asserted)" if tiny else "") + " ==")
print()
print("| # | measure | project | bound (same run) | ratio | target | met? |")
print("| --- | --- | ---: | --- | ---: | --- | --- |")
for key, what, proj, bound, ratio, target, met in table:
    print(f"| {key} | {what} | {proj} | {bound} | {ratio} | {target} | "
          f"{'-' if met is None else ('yes' if met else 'NO')} |")
for key in ("c", "d"):
    r = rows.get(key)
    if r:
        lat = r["latency_ms"]
        print(f"\nrow {key}: {r['registered']} of {r['attempted']} PNs registered; latency p50/p95/p99 "
              f"{lat['p50']}/{lat['p95']}/{lat['p99']} ms; CPU per PN: cpns-server {r['server_cpu_ms_per_pn']:.2f} ms, "
              f"cpns-load {r['load_cpu_ms_per_pn']:.2f} ms")
if "d" not in rows and not pg_url:
    print("\nrow d: no PostgreSQL (set CPNS_BENCH_PG_URL or CPNS_TEST_PG_URL)")
(work / "rows.json").write_text(json.dumps(rows))
if failures:
    print("\nbench.sh: parts of the harness failed:", *failures, sep="\n  ", file=sys.stderr)
    sys.exit(1)
PY

if [[ $tiny -eq 0 ]]; then
  echo
  echo "== cpns-bench: every benchmark =="
  cat "$work/cpns-bench.txt"
fi

echo
echo "== cpns-sim: $sim_gws PN GWs x 10 PNEs (both flows, trace off) =="
sim_args=(--gws "$sim_gws" --pnes-per-gw 10 --trace none --json "$work/summary.json")
if [[ -x /usr/bin/time ]]; then
  /usr/bin/time -v "$sim" "${sim_args[@]}" >/dev/null 2>"$work/time.txt"
  wall=$(sed -n 's/^[[:space:]]*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/time.txt")
  rss_kb=$(sed -n 's/^[[:space:]]*Maximum resident set size (kbytes): //p' "$work/time.txt")
  source_note="/usr/bin/time -v"
else
  start=$(date +%s.%N)
  "$sim" "${sim_args[@]}" >/dev/null 2>"$work/time.txt"
  wall="$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f s", e - s }')"
  rss_kb=$(sed -n 's/.*"peak_rss_kb": \([0-9]*\).*/\1/p' "$work/summary.json")
  source_note="the simulator's JSON (getrusage)"
fi
json_num() { sed -n "s/.*\"$1\": \([0-9]*\).*/\1/p" "$work/summary.json"; }
printf '%-34s %s\n' "wall time (whole process, m:ss)" "$wall"
printf '%-34s %s ms\n' "simulator wall time (its own)" "$(json_num wall_time_ms)"
printf '%-34s %s kB (%s MiB), from %s\n' "peak RSS" "$rss_kb" "$((rss_kb / 1024))" "$source_note"
printf '%-34s %s\n' "PNs registered" "$(json_num pns_registered)"
printf '%-34s %s\n' "PNE memberships authenticated" "$(json_num pnes_authenticated)"
printf '%-34s %s\n' "messages" "$(json_num messages)"
