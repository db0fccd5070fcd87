#!/usr/bin/env bash
# End to end at 100,000 PNs (docs/benchmarks.md, "End to end at 100,000 PNs"): cpns-load
# registers PNs through real cpns-server processes, first through one server on SQLite, then
# through two server instances on one PostgreSQL, and this prints for each run PNs per second,
# latency p50/p95/p99, each server's RSS (before, peak, after, and how it grows per PN
# registered) and the CPU per PN of the servers and of cpns-load separately. It writes into the
# output directory, from the same runs: every PN's latency (one file per store), the servers'
# RSS samples against the PNs registered, a gnuplot PNG of the latency distribution per store
# and one of the servers' RSS against the PNs registered, the table (e2e.md) and the figures
# as JSON (e2e.json).
#
# Usage: scripts/bench-e2e.sh [--tiny] [--build DIR] [--out DIR] [--gws N] [--pnes-per-gw K]
#                             [--pns-per-gw P] [--max-in-flight M] [--no-pg] [--pg-servers S]
#                             [--timeout SECONDS] [--perf]
#   --tiny          seconds: 20 PN GWs x 2 PNEs x 2 PNs, SQLite only, into a scratch directory
#                   unless --out is given; asserts no timing, fails only when a part does not
#                   run (a server that does not start, a PN not registered, no plot data).
#                   ctest runs it as `bench.e2e_tiny`.
#   --build DIR     the binaries of DIR (default build/ci): cpns-server, cpns-load, cpnsctl
#   --out DIR       where the results go (default build/bench-e2e)
#   --gws N         PN GWs, each on its own TLS link (default 10,000; at most 10,000, the
#                   server's kMaxGwConnections)
#   --pnes-per-gw K PNEs of each PN GW, every one a member of each of its PNs (default 2)
#   --pns-per-gw P  PNs each PN GW establishes, one after the other (default 10)
#   --max-in-flight M  establishments in progress at once over all PN GWs (cpns-load
#                   --max-in-flight; default 1,000; 0: every PN GW at once): every link stays
#                   open, the others wait their turn in cpns-load, untimed
#   --no-pg         the SQLite run only
#   --pg-servers S  server instances on the one PostgreSQL (default 2)
#   --timeout S     bound of one load run (default 1800 s); a server start (the entities
#                   import) is bounded by the same
#   --perf          record each server with `perf record -g` during the load (perf-NAME.data
#                   in the output directory, and perf-NAME.txt: its top symbols)
# PostgreSQL: CPNS_BENCH_PG_URL names a server on which a fresh database is created (and
# dropped); without it a throw-away one is started with scripts/pg-test-server.sh and stopped
# at the end. The servers and PostgreSQL listen on 127.0.0.1 only. The descriptor limit is
# raised to its hard limit (a server and cpns-load each hold one descriptor per link).
# Exit status: 0 when every run registered every PN; 1 otherwise; 2 on usage.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tiny=0 build=build/ci out="" gws="" pnes="" pns="" inflight="" pg=1 pg_servers=2 timeout_s=1800 perf=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
need() { [[ $# -ge 2 ]] || { echo "bench-e2e: $1 needs a value" >&2; exit 2; }; }
while (($#)); do
  case "$1" in
    --tiny) tiny=1 ;;
    --build) need "$@"; build=$2; shift ;;
    --out) need "$@"; out=$2; shift ;;
    --gws) need "$@"; gws=$2; shift ;;
    --pnes-per-gw) need "$@"; pnes=$2; shift ;;
    --pns-per-gw) need "$@"; pns=$2; shift ;;
    --max-in-flight) need "$@"; inflight=$2; shift ;;
    --no-pg) pg=0 ;;
    --pg-servers) need "$@"; pg_servers=$2; shift ;;
    --perf) perf=1 ;;
    --timeout) need "$@"; timeout_s=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench-e2e: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if ((tiny)); then
  gws=${gws:-20} pnes=${pnes:-2} pns=${pns:-2} inflight=${inflight:-10} pg=0
else
  gws=${gws:-10000} pnes=${pnes:-2} pns=${pns:-10} inflight=${inflight:-1000}
fi
[[ "$inflight" =~ ^[0-9]+$ ]] || { echo "bench-e2e: --max-in-flight: '$inflight'" >&2; exit 2; }
for v in "$gws" "$pnes" "$pns" "$timeout_s" "$pg_servers"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "bench-e2e: '$v' is not a positive integer" >&2; exit 2; }
done
((gws <= 10000)) || { echo "bench-e2e: at most 10,000 PN GWs (kMaxGwConnections)" >&2; exit 2; }

for exe in "$build/apps/cpns-server/cpns-server" "$build/apps/cpns-load/cpns-load" \
  "$build/apps/cpnsctl/cpnsctl"; do
  if [[ ! -x "$exe" ]]; then
    echo "bench-e2e: $exe is missing: cmake --preset ci && cmake --build build/ci --target" \
      "cpns-server cpns-load cpnsctl" >&2
    exit 2
  fi
done

# One descriptor per link in the server and in cpns-load, plus the store, logs and the like.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ "$(ulimit -n)" != unlimited ]] && (($(ulimit -n) < gws + 256)); then
  echo "bench-e2e: the descriptor limit is $(ulimit -n) (hard $(ulimit -Hn)); $gws PN GW links" \
    "need $((gws + 256))" >&2
  exit 2
fi

# Scratch space on the build's disk (not a tmpfs): the SQLite file is what is measured.
work=$(mktemp -d "$(realpath "$build")/bench-e2e.XXXXXX")
pg_dir=""
cleanup() {
  # The Python part stops the servers it started; this is for an interrupted run.
  for pidfile in "$work"/*.pid; do
    [[ -e "$pidfile" ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  if [[ -n "$pg_dir" ]]; then
    scripts/pg-test-server.sh stop "$pg_dir/pg" >/dev/null 2>&1 || true
    rmdir "$pg_dir" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if ((tiny)) && [[ -z "$out" ]]; then out="$work/out"; fi
out=${out:-build/bench-e2e}
mkdir -p "$out"

pg_url=""
if ((pg)); then
  pg_url=${CPNS_BENCH_PG_URL:-}
  if [[ -z "$pg_url" ]]; then
    # Not under $work (private): the server runs as the postgres user when this is root.
    pg_dir=$(mktemp -d "$(realpath "$build")/bench-e2e-pg.XXXXXX")
    chmod 755 "$pg_dir"
    pg_url=$(scripts/pg-test-server.sh start "$pg_dir/pg")
  fi
fi

echo "== bench-e2e: $gws PN GWs x $pnes PNEs x $pns PNs = $((gws * pns)) PNs per run," \
  "at most $inflight in flight (0: no bound);" \
  "$(nproc) CPU(s), load average $(cut -d' ' -f1-3 /proc/loadavg)," \
  "$(date -u +%Y-%m-%dT%H:%MZ), $build, descriptors $(ulimit -n) ==" >&2

status=0
python3 - "$build" "$work" "$out" "$tiny" "$pg_url" "$gws" "$pnes" "$pns" "$timeout_s" "$perf" "$inflight" "$pg_servers" <<'PY' || status=$?
import json, os, resource, secrets, signal, socket, subprocess, sys, threading, time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

build, work, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
tiny, pg_url = sys.argv[4] == "1", sys.argv[5]
gws, pnes, pns, timeout_s, perf, inflight, pg_servers = (int(x) for x in sys.argv[6:13])
server_exe = build / "apps" / "cpns-server" / "cpns-server"
load_exe = build / "apps" / "cpns-load" / "cpns-load"
ctl_exe = build / "apps" / "cpnsctl" / "cpnsctl"
# An entities file is bounded (kMaxConfigFileBytes, 1 MiB): the fleet is written in parts of
# at most this many bytes, each PN GW with its PNEs in one part.
PART_BYTES = 900 * 1024
SAMPLE_S = 0.25  # RSS and PNs-registered sampling period of each server
CONNECT_TIMEOUT_MS = 300_000  # a PN GW's link: 10,000 handshakes on two shared cores
SETTLE_S = 2.0   # after the load: the links closed, the last audit batch written
TICK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
failures = []


def log(*a):
    print("bench-e2e:", *a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_kb(pid):
    # statm's resident pages: cheaper than parsing status at every sample
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB


def hwm_kb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


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


class Server:
    def __init__(self, name, store_url, mk):
        self.name, self.dir = name, work / name
        self.dir.mkdir()
        self.port = free_port()
        ready = self.dir / "ready"
        cfg = self.dir / "server.toml"
        # 10,000 links from 127.0.0.1: the per-source bound is raised to the server's total.
        cfg.write_text("max_connections_per_source = 10000\n")
        self.log = open(self.dir / "server.log", "w")
        self.proc = subprocess.Popen(
            [str(server_exe), "-c", str(cfg), "--id", name, "--store", store_url,
             "--master-key-file", str(mk), "--listen", "127.0.0.1:0",
             "--ready-file", str(ready), "--control-listen", f"127.0.0.1:{self.port}",
             "--log-level", "warn"], stdout=self.log, stderr=subprocess.STDOUT)
        (work / f"{name}.pid").write_text(str(self.proc.pid))
        deadline = time.monotonic() + timeout_s
        while not (ready.exists() and ready.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start; its log:\n"
                                   f"{(self.dir / 'server.log').read_text()[-2000:]}")
            time.sleep(0.05)
        self.addr = ready.read_text().strip()
        self.samples = []  # (seconds since the load started, RSS KiB, PNs registered)

    def sample(self, t):
        try:
            reg = status(self.port)["registered"]
        except (OSError, ValueError, KeyError):
            reg = None
        self.samples.append((t, rss_kb(self.proc.pid), reg))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        (work / f"{self.name}.pid").unlink(missing_ok=True)


def pct(sorted_ms, p):
    # the same rule as cpns-load's summary
    return sorted_ms[min(len(sorted_ms) - 1, int(p * len(sorted_ms)))] if sorted_ms else 0


def rss_at(samples, registered):
    """RSS of the first sample at which at least `registered` PNs were registered."""
    for t, rss, reg in samples:
        if reg is not None and reg >= registered:
            return rss, reg
    return None, None


def run(label, store_urls, parts, mk):
    # The fleet into the store first (cpnsctl import, part by part), not timed.
    began = time.monotonic()
    for part in parts:
        subprocess.run([str(ctl_exe), "--store", store_urls[0], "--master-key-file", str(mk),
                        "import", str(part)], check=True, capture_output=True, timeout=timeout_s)
    log(f"{label}: {len(parts)} entities file(s) imported in {time.monotonic() - began:.0f} s")
    servers = []
    try:
        for i, url in enumerate(store_urls):
            servers.append(Server(f"{label}-{i + 1}", url, mk))
        time.sleep(0.5)
        before = {s.name: rss_kb(s.proc.pid) for s in servers}
        cpu0 = {s.name: cpu_seconds(s.proc.pid) for s in servers}
        lat_file = out / f"latency-{label}.txt"
        perfs = [subprocess.Popen(["perf", "record", "-q", "-g", "-p", str(s.proc.pid), "-o",
                                   str(out / f"perf-{s.name}.data")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for s in servers] if perf else []
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        log(f"{label}: cpns-load run through {', '.join(s.addr for s in servers)}")
        t0 = time.monotonic()
        load = subprocess.Popen(
            [str(load_exe), "run", "--entities", ",".join(str(p) for p in parts), "--servers",
             ",".join(s.addr for s in servers), "--pns-per-gw", str(pns),
             "--latency-out", str(lat_file), "--max-in-flight", str(inflight),
             # every PN GW handshakes at once: the last ones wait for the first thousands
             "--connect-timeout-ms", str(CONNECT_TIMEOUT_MS)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        load_hwm = 0  # KiB, cpns-load's peak RSS
        collected = {}
        reader = threading.Thread(target=lambda: collected.update(
            zip(("out", "err"), load.communicate())))
        reader.start()
        while reader.is_alive():
            t = time.monotonic() - t0
            for s in servers:
                s.sample(t)
            try:
                load_hwm = max(load_hwm, hwm_kb(load.pid))
            except OSError:
                pass  # it has just ended
            if t > timeout_s:
                load.kill()
                reader.join()
                raise RuntimeError(f"{label}: cpns-load did not finish within {timeout_s} s")
            reader.join(SAMPLE_S)
        wall = time.monotonic() - t0
        for p, s in zip(perfs, servers):
            p.send_signal(signal.SIGINT)
            p.wait(timeout=120)
            with open(out / f"perf-{s.name}.txt", "w") as f:
                subprocess.run(["perf", "report", "-i", str(out / f"perf-{s.name}.data"),
                                "--no-children", "--sort", "dso,symbol", "--stdio", "-g", "none",
                                "--percent-limit", "0.5"], stdout=f, stderr=subprocess.DEVNULL,
                               timeout=600)
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
        if load.returncode not in (0, 1) or not collected.get("out", "").strip():
            raise RuntimeError(f"{label}: cpns-load failed ({load.returncode}): "
                               f"{collected.get('out', '')[-500:]} {collected.get('err', '')[-1000:]}")
        summary = json.loads(collected["out"].strip().splitlines()[-1])
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline:
            for s in servers:
                s.sample(time.monotonic() - t0)
            time.sleep(SAMPLE_S)
        per = []
        for s in servers:
            st = status(s.port)
            cpu = cpu_seconds(s.proc.pid) - cpu0[s.name]
            after = rss_kb(s.proc.pid)
            reg = st["registered"]
            # RSS growth between 10 % and 100 % of this server's PNs: every link is up by then,
            # so this is what the PNs themselves add (the links' memory is in before..peak).
            r10, n10 = rss_at(s.samples, max(1, reg // 10))
            r100, n100 = rss_at(s.samples, reg)
            slope = ((r100 - r10) * 1024 / (n100 - n10)
                     if r10 is not None and r100 is not None and n100 > n10 else None)
            per.append({"name": s.name, "registered": reg, "cpu_s": cpu,
                        "rss_before_kb": before[s.name], "rss_peak_kb": hwm_kb(s.proc.pid),
                        "rss_after_kb": after, "rss_10pct_kb": r10, "rss_100pct_kb": r100,
                        "bytes_per_pn_10_to_100pct": slope,
                        "group_commits": st.get("group_commits", 0),
                        "grouped_pns": st.get("grouped_pns", 0)})
            with open(out / f"rss-{s.name}.dat", "w") as f:
                f.write("# seconds rss_kib pns_registered\n")
                for t, rss, r in s.samples:
                    f.write(f"{t:.2f} {rss} {'?' if r is None else r}\n")
    finally:
        for s in servers:
            s.stop()
    lat = sorted(int(x) for x in lat_file.read_text().split())
    registered = summary["registered"]
    if registered != summary["attempted"]:
        failures.append(f"{label}: {registered} of {summary['attempted']} PNs registered "
                        f"(failures: {summary.get('failures')})")
    if len(lat) != registered:
        failures.append(f"{label}: {len(lat)} latencies written for {registered} PNs")
    server_cpu = sum(p["cpu_s"] for p in per)
    return {"store": label, "servers": per, "attempted": summary["attempted"],
            "registered": registered, "wall_s": wall, "load_seconds": summary["seconds"],
            "pns_per_second": summary["pns_per_second"],
            "latency_ms": {"p50": pct(lat, 0.5), "p95": pct(lat, 0.95), "p99": pct(lat, 0.99),
                           "max": lat[-1] if lat else 0},
            "server_cpu_ms_per_pn": 1000 * server_cpu / max(registered, 1),
            "load_cpu_ms_per_pn": 1000 * load_cpu / max(registered, 1),
            "load_peak_rss_kb": load_hwm, "failures": summary.get("failures", {})}


ent, mk = work / "entities.toml", work / "master.key"
subprocess.run([str(load_exe), "provision", "--gws", str(gws), "--pnes-per-gw", str(pnes),
                "--out", str(ent)], check=True, capture_output=True, timeout=600)
mk.write_text(secrets.token_hex(32) + "\n")
mk.chmod(0o600)
# Split at each PN GW's [[entity]] (provision writes a PN GW, then its PNEs).
parts, chunk = [], ""
for block in ent.read_text().split("[[entity]]")[1:]:
    if 'kind = "gw"' in block and len(chunk) > PART_BYTES - 4096 * (pnes + 1):
        parts.append(chunk)
        chunk = ""
    chunk += "[[entity]]" + block
parts.append(chunk)
part_files = []
for i, text in enumerate(parts):
    f = work / f"entities-{i + 1}.toml"
    f.write_text(text)
    part_files.append(f)

results = []
try:
    results.append(run("sqlite", [f"sqlite:{work / 'server.db'}"], part_files, mk))
except Exception as e:  # noqa: BLE001 - reported, and the run fails
    failures.append(f"sqlite: {e}")
if pg_url:
    admin = urlsplit(pg_url)
    name = "cpnse2e_" + secrets.token_hex(6)
    db_url = urlunsplit((admin.scheme, admin.netloc, "/" + name, admin.query, admin.fragment))
    try:
        subprocess.run(["psql", pg_url, "-v", "ON_ERROR_STOP=1", "-qc", f"CREATE DATABASE {name}"],
                       check=True, capture_output=True, timeout=60)
        results.append(run("postgresql", [db_url] * pg_servers, part_files, mk))
    except Exception as e:  # noqa: BLE001
        failures.append(f"postgresql: {e}")
    finally:
        subprocess.run(["psql", pg_url, "-qc", f"DROP DATABASE IF EXISTS {name}"],
                       capture_output=True, timeout=60)


def mib(kb):
    return "-" if kb is None else f"{kb / 1024:,.1f} MiB"


lines = [
    f"{gws:,} PN GWs (one TLS 1.3 PSK link each) x {pnes} PNEs x {pns} PNs = {gws * pns:,} PNs "
    f"per run, at most {inflight:,} establishments in flight (0: no bound); {os.cpu_count()} CPU(s), load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])} "
    f"at the end" + (" (--tiny: sizes too small for the figures to mean anything)" if tiny else ""),
    "",
    "| store | servers | PNs registered | wall time | PNs/s | latency p50 / p95 / p99 (max) | "
    "server CPU per PN | cpns-load CPU per PN |",
    "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
]
for r in results:
    l = r["latency_ms"]
    lines.append(f"| {r['store']} | {len(r['servers'])} | {r['registered']:,} of {r['attempted']:,} | "
                 f"{r['load_seconds']:.1f} s | {r['pns_per_second']:,.0f} | "
                 f"{l['p50']} / {l['p95']} / {l['p99']} ms ({l['max']} ms) | "
                 f"{r['server_cpu_ms_per_pn']:.3f} ms | {r['load_cpu_ms_per_pn']:.3f} ms |")
lines += ["", "| server | PNs it registered | RSS before | RSS peak | RSS after | RSS at 10 % / 100 % "
              "of its PNs | added per PN (10 % to 100 %) | (after - before) per PN | mean PNs per commit |",
          "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
for r in results:
    for s in r["servers"]:
        slope = s["bytes_per_pn_10_to_100pct"]
        whole = (s["rss_after_kb"] - s["rss_before_kb"]) * 1024 / max(s["registered"], 1)
        group = s["grouped_pns"] / s["group_commits"] if s["group_commits"] else 0
        lines.append(f"| {s['name']} | {s['registered']:,} | {mib(s['rss_before_kb'])} | "
                     f"{mib(s['rss_peak_kb'])} | {mib(s['rss_after_kb'])} | "
                     f"{mib(s['rss_10pct_kb'])} / {mib(s['rss_100pct_kb'])} | "
                     f"{'-' if slope is None else f'{slope:,.0f} B'} | {whole:,.0f} B | {group:.1f} |")
table = "\n".join(lines)
print(table)
(out / "e2e.md").write_text(table + "\n")
(out / "e2e.json").write_text(json.dumps({"gws": gws, "pnes_per_gw": pnes, "pns_per_gw": pns, "max_in_flight": inflight,
                                          "runs": results}, indent=1) + "\n")
if failures:
    print("bench-e2e: failed:", *failures, sep="\n  ", file=sys.stderr)
    sys.exit(1)
PY

# The plots, from the files the runs wrote.
if ! command -v gnuplot >/dev/null; then
  echo "bench-e2e: gnuplot not found: no plots (scripts/deps.sh --with-tests installs it)" >&2
  exit 1
fi
for lat in "$out"/latency-*.txt; do
  [[ -s "$lat" ]] || { echo "bench-e2e: no latency samples in $lat" >&2; exit 1; }
  store=$(basename "$lat" .txt)
  store=${store#latency-}
  n=$(wc -l <"$lat")
  sort -n "$lat" | awk -v n="$n" '{ print $1, NR / n }' >"$out/cdf-$store.dat"
  p50=$(awk -v n="$n" 'NR == int(0.5 * n) + 1 { print $1 }' "$out/cdf-$store.dat")
  p99=$(awk -v n="$n" 'NR == (int(0.99 * n) < n ? int(0.99 * n) + 1 : n) { print $1 }' "$out/cdf-$store.dat")
  gnuplot <<EOF
set terminal pngcairo size 900,520 font ",11"
set output "$out/latency-$store.png"
set title "cpns-load through cpns-server on $store: latency of $n PN establishments"
set xlabel "latency, invitation to the PN GW's outcome (ms)"
set ylabel "PNs registered (count per bin)"
set y2label "fraction of PNs at or under (CDF)"
set ytics nomirror
set y2tics
set y2range [0:1]
set yrange [0:*]
set grid
set key top left
set style fill solid 0.5 border -1
binwidth = ($p99 > 0 ? $p99 : 1) / 40.0
bin(x) = binwidth * floor(x / binwidth) + binwidth / 2
set arrow from $p50, graph 0 to $p50, graph 1 nohead dt 2 lc rgb "dark-green"
set arrow from $p99, graph 0 to $p99, graph 1 nohead dt 2 lc rgb "red"
plot "$lat" using (bin(\$1)):(1.0) smooth frequency with boxes lc rgb "steelblue" title "histogram (left)", \
     "$out/cdf-$store.dat" using 1:2 axes x1y2 with lines lw 2 lc rgb "black" title "CDF (right)", \
     NaN with lines dt 2 lc rgb "dark-green" title "p50 = $p50 ms", \
     NaN with lines dt 2 lc rgb "red" title "p99 = $p99 ms"
EOF
  echo "bench-e2e: plot: $out/latency-$store.png" >&2
done
rss_files=("$out"/rss-*.dat)
if [[ -e "${rss_files[0]}" ]]; then
  plot=""
  for f in "${rss_files[@]}"; do
    name=$(basename "$f" .dat)
    plot+="${plot:+, }\"$f\" using 3:(\$2/1024) with lines lw 2 title \"${name#rss-}\""
  done
  gnuplot <<EOF
set terminal pngcairo size 900,520 font ",11"
set output "$out/rss.png"
set title "cpns-server RSS against the PNs it has registered ($gws PN GW links in all)"
set xlabel "PNs registered by this server"
set ylabel "RSS (MiB)"
set yrange [0:*]
set grid
set key bottom right
set datafile missing "?"
plot $plot
EOF
  echo "bench-e2e: plot: $out/rss.png" >&2
fi
echo "bench-e2e: results in $out (e2e.md, e2e.json, latency-*.txt, rss-*.dat, *.png)" >&2
exit "$status"
