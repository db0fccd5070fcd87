#!/usr/bin/env bash
# The benchmark harness (docs/benchmarks.md). Prints ONE table first: each row is a project
# figure next to its bound, both measured in this run, the ratio and the target:
#   a  the KDF with SK_PNE's parameters (EUKey keyed once)  vs a bare HMAC-SHA-256 of the same bytes
#   b  PNE authentications/s through the real Server role   vs the bare key-schedule calls
#   c  durable PN registrations/s through a real cpns-server on SQLite (cpns-load driving it)
#                                                           vs a bare SQLite insert loop
#   d  the same on PostgreSQL                               vs a bare libpq insert loop
#   e  server CPU per PSK-TLS handshake at a real cpns-gw PAN endpoint (cpns-load links as
#      PNEs, many at once)                                  vs a bare server-side OpenSSL handshake
#   f  memory per idle PSK-TLS link: 10,000 PN GW links held by a cpns-server, 1,000 PNE
#      links held by a cpns-gw (VmRSS growth per link)      vs OpenSSL 3.0's published ~68 KB
# (c and d: the same durability and the same number of PNs per commit as the server's group
# commits had in this run.) Then the rest of cpns-bench (key schedule, codec, PSK-TLS
# handshakes, a simulated establishment) and cpns-sim with 10,000 PNEs.
#
# Usage: scripts/bench.sh [--tiny] [--build DIR] [--rows LETTERS] [cpns-bench flags, e.g. --benchmark_filter=Tls]
#   --tiny       seconds, not minutes: every part at a tiny size, against an existing build
#                (default build/ci), nothing installed or built. Prints the same table and
#                asserts no timing: it fails only when a part of the harness does not run.
#                ctest runs it as `bench.tiny`.
#   --build DIR  use the binaries of DIR (configured with -DCPNS_BUILD_BENCH=ON).
#   --rows ef    only these rows of the table (letters a-f; default all), and nothing after it.
# PostgreSQL (row d): CPNS_BENCH_PG_URL, else CPNS_TEST_PG_URL, names a server on which a
# fresh database is created (and dropped); without either the full run starts a throw-away
# one (scripts/pg-test-server.sh) and --tiny leaves row d out. CPNS_BUILD_JOBS sets the
# build's parallelism (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

tiny=0
build=""
rows=abcdef
bench_flags=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tiny) tiny=1 ;;
    --build)
      [[ $# -ge 2 ]] || { echo "bench.sh: --build needs a directory" >&2; exit 2; }
      build=$2
      shift
      ;;
    --rows)
      [[ $# -ge 2 && $2 =~ ^[a-f]+$ ]] || { echo "bench.sh: --rows needs letters a-f" >&2; exit 2; }
      rows=$2
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
  cmake --build "$build" --target cpns-bench cpns-sim cpns-server cpns-gw cpns-load \
    -j "${CPNS_BUILD_JOBS:-2}"
fi

bench=$build/bench/cpns-bench
sim=$build/apps/cpns-sim/cpns-sim
for exe in "$bench" "$sim" "$build/apps/cpns-server/cpns-server" "$build/apps/cpns-gw/cpns-gw" \
  "$build/apps/cpns-load/cpns-load"; do
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
if [[ -z "$pg_url" && $tiny -eq 0 && $rows == *d* ]]; then
  pg_dir="$work/pg"
  pg_url=$(scripts/pg-test-server.sh start "$pg_dir")
fi

if [[ $tiny -eq 1 ]]; then
  min_time=0.01
  load_gws=10 load_pnes=2 load_pns=2
  sim_gws=10
  # rows e and f: links held by the server, by the PN GW; rounds of the PN GW's links for e
  links_server=20 links_gw=20 e_rounds=1
else
  min_time=0.2
  load_gws=200 load_pnes=2 load_pns=10
  sim_gws=1000
  links_server=10000 links_gw=1000 e_rounds=3
fi

echo "== $(nproc) CPU(s), load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%dT%H:%MZ), $build =="
# libbenchmark 1.7.1 takes --benchmark_min_time as plain seconds (the "0.2s" form is 1.8+).
# The database bounds run later, with the group size the server reached.
# Rows e and f run their bounds later too, next to their own measurement.
filter='-BM_Bound_Bare(Sqlite|Pg)Insert|BM_Bound_BareTls'
[[ $tiny -eq 1 || $rows != abcdef ]] && filter='BM_Kdf_SkPneParams_Keyed|BM_Bound_BareHmac|BM_ServerRole|BM_Bound_KeySchedule'
if [[ $rows == *a* || $rows == *b* ]]; then
  "$bench" --benchmark_min_time="$min_time" --benchmark_filter="$filter" \
    --benchmark_out="$work/cpns-bench.json" --benchmark_out_format=json "${bench_flags[@]}" \
    >"$work/cpns-bench.txt" 2>&1
  [[ $tiny -eq 1 || $rows != abcdef ]] || cp "$work/cpns-bench.json" "$build/cpns-bench.json"
else
  echo '{"benchmarks": []}' >"$work/cpns-bench.json"
fi

# Rows c and d, and the table.
python3 - "$build" "$work" "$tiny" "$min_time" "$pg_url" "$load_gws" "$load_pnes" "$load_pns" \
  "$rows" "$links_server" "$links_gw" "$e_rounds" <<'PY'
import glob, json, os, resource, secrets, signal, socket, subprocess, sys, time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

build, work, tiny, min_time, pg_url = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], sys.argv[5]
gws, pnes, pns = (int(x) for x in sys.argv[6:9])
rows_wanted = sys.argv[9]
links_server, links_gw, e_rounds = (int(x) for x in sys.argv[10:13])
apps = build / "apps"
bench = build / "bench" / "cpns-bench"
READY_TIMEOUT_S = 60      # a server's start (migrations, the entities import)
LOAD_TIMEOUT_S = 600      # one load run, bounded
LINKS_TIME_LIMIT_S = 300  # cpns-load links: opening all its links (its own --time-limit-s)
LINKS_SETTLE_S = 1.0      # after the links are up, before memory is read (the last handshakes' frees)
# Row f's reference: OpenSSL 3.0's published memory per DTLS-PSK connection (OpenSSL issue 31492).
OPENSSL_DTLS_PSK_BYTES = 68 * 1000
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


def cpu_ns(pid):
    """CPU time of every thread of `pid` in ns (schedstat: ns resolution; /proc/PID/stat's
    utime+stime count in clock ticks of 10 ms, too coarse for a second of handshakes)."""
    total, found = 0, False
    for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            total += int(Path(f).read_text().split()[0])
            found = True
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total if found else int(cpu_seconds(pid) * 1e9)


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def start_daemon(name, args, d, ready, timeout=READY_TIMEOUT_S):
    log = open(d / f"{name}.log", "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not (ready.exists() and ready.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_daemon(proc, log)
            raise RuntimeError(f"{name} did not start; see its log:\n{(d / f'{name}.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, log


def stop_daemon(proc, log):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def hold_links(daemon, as_, entities, to, count):
    """Opens `count` idle links with cpns-load links; once they are up, reads the daemon's CPU
    (spent since just before) and RSS, then ends the links. The links' summary and both."""
    cpu0, rss0 = cpu_ns(daemon.pid), rss_kib(daemon.pid)
    links = subprocess.Popen([str(apps / "cpns-load" / "cpns-load"), "links", "--as", as_,
                              "--entities", str(entities), "--to", to, "--count", str(count),
                              "--time-limit-s", str(LINKS_TIME_LIMIT_S)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = links.stdout.readline()  # cpns-load's own --time-limit-s bounds this
        cpu1 = cpu_ns(daemon.pid)
        up = json.loads(line) if line.strip() else None
        if up is None or up["up"] != count:
            links.kill()
            raise RuntimeError(f"cpns-load links ({as_}): {line.strip() or 'no summary'}; "
                               f"{links.stderr.read()[-1000:]}")
        time.sleep(LINKS_SETTLE_S)
        rss1 = rss_kib(daemon.pid)
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon ended while holding {as_} links")
    finally:
        if links.poll() is None:
            links.send_signal(signal.SIGTERM)
        try:
            links.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            links.kill()
            links.communicate()
    return up, (cpu1 - cpu0) / 1e9, (rss1 - rss0) * 1024


def links_at_server(count):
    """Row f at the server: `count` provisioned PN GWs hold one idle link each."""
    d = work / "links-server"
    d.mkdir()
    ent, mk, ready, cfg = d / "ent.toml", d / "mk", d / "s.ready", d / "server.toml"
    # PN GWs only (what the links authenticate as), written here: no PNEs to import. One
    # inline table per line keeps 10,000 of them under the 1 MiB an entities file may have.
    ent.write_text("entity = [\n" + "".join(f'{{id="f{i:05d}",kind="gw",eukey="{secrets.token_hex(32)}"}},\n'
                                            for i in range(1, count + 1)) + "]\n")
    mk.write_text(secrets.token_hex(32) + "\n")
    mk.chmod(0o600)
    # Every link comes from 127.0.0.1: the per-source bound is the whole of max_connections.
    cfg.write_text(f"max_connections = {max(count, 10000)}\nmax_connections_per_source = {max(count, 10000)}\n")
    server, log = start_daemon("server", [str(apps / "cpns-server" / "cpns-server"), "--config", str(cfg),
                                          "--store", f"sqlite:{d / 'server.db'}", "--master-key-file", str(mk),
                                          "--entities", str(ent), "--listen", "127.0.0.1:0",
                                          "--ready-file", str(ready), "--log-level", "warn"],
                               d, ready, timeout=LOAD_TIMEOUT_S)
    try:
        up, _, grown = hold_links(server, "gw", ent, ready.read_text().strip(), count)
    finally:
        stop_daemon(server, log)
    return {"links": up["up"], "bytes_per_link": grown / up["up"]}


def links_at_gw(count, rounds):
    """Rows e and f at a cpns-gw PAN endpoint: `count` PNEs (pre-assigned keys) link at once,
    `rounds` times; each round's handshakes are timed by the PN GW's CPU, and the first
    round's idle links give its memory per link."""
    d = work / "links-gw"
    d.mkdir()
    pan, ready, cfg = d / "pan.toml", d / "gw.ready", d / "gw.toml"
    subprocess.run([str(apps / "cpns-load" / "cpns-load"), "provision-pan", "--pnes", str(count),
                    "--out", str(pan)], check=True, capture_output=True, timeout=60)
    # No CPNS Server behind it: the PAN endpoint authenticates PNEs on its own (pre-assigned
    # keys); the server link keeps retrying in the background at its back-off.
    cfg.write_text(f'id = "fgw-pan"\neukey = "{secrets.token_hex(32)}"\nserver = "127.0.0.1:{free_port()}"\n'
                   f'pan_listen = "127.0.0.1:0"\ncontrol = "unix:{d / "ctl" / "gw.sock"}"\n'
                   f'discovery_group = ""\nlog_level = "warn"\nready_file = "{ready}"\n'
                   f'pan_max_connections = {max(count, 512)}\npan_max_connections_per_source = {max(count, 512)}\n\n'
                   + pan.read_text())
    gw, log = start_daemon("gw", [str(apps / "cpns-gw" / "cpns-gw"), "run", "--config", str(cfg)], d, ready)
    try:
        to = ready.read_text().split()[0].removeprefix("pan=")
        cpu, handshakes, grown = 0.0, 0, None
        for r in range(rounds):
            up, spent, g = hold_links(gw, "pne", pan, to, count)
            cpu += spent
            handshakes += up["up"]
            if grown is None:
                grown = g
        time.sleep(LINKS_SETTLE_S)
    finally:
        stop_daemon(gw, log)
    return {"links": count, "bytes_per_link": grown / count, "handshakes": handshakes,
            "cpu_us_per_handshake": 1e6 * cpu / handshakes}


rows = {}
if "e" in rows_wanted or "f" in rows_wanted:
    # The descriptors the held links need (the daemons inherit the limit; cpns-load raises its own).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(links_server, links_gw) + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard) if hard != resource.RLIM_INFINITY else need, hard))
    try:
        rows["e_f_gw"] = links_at_gw(links_gw, e_rounds if "e" in rows_wanted else 1)
        bare = bench_json("BM_Bound_BareTlsServerHandshake", {})
        rows["e_f_gw"]["bound_us"] = bare["real_time"] * {"ns": 1e-3, "us": 1, "ms": 1e3, "s": 1e6}[bare["time_unit"]]
        idle = bench_json("BM_Bound_BareTlsIdleConnection", {})
        rows["e_f_gw"]["bare_idle_bytes"] = idle["bytes/conn"]
    except Exception as e:  # noqa: BLE001
        failures.append(f"rows e/f at the PN GW: {e}")
    if "f" in rows_wanted:
        try:
            rows["f_server"] = links_at_server(links_server)
        except Exception as e:  # noqa: BLE001
            failures.append(f"row f at the server: {e}")
if "c" in rows_wanted:
    try:
        rows["c"] = e2e("sqlite", f"sqlite:{work / 'sqlite' / 'server.db'}", "BM_Bound_BareSqliteInsert",
                        {"CPNS_BENCH_STORE_DIR": str(work / "sqlite")})
    except Exception as e:  # noqa: BLE001 - reported in the table, and the run fails
        failures.append(f"row c: {e}")
if pg_url and "d" in rows_wanted:
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
a, a_bound = (mark("BM_Kdf_SkPneParams_Keyed"), mark("BM_Bound_BareHmac_SkPneInput")) if "a" in rows_wanted else (None, None)
if a and a_bound:
    ratio = a["cpu_time"] / a_bound["cpu_time"]
    table.append(("a", "KDF, SK_PNE parameters, EUKey keyed once (CPU time per call)",
                  f"{a['cpu_time']:.0f} ns", f"{a_bound['cpu_time']:.0f} ns (bare HMAC-SHA-256, same bytes)",
                  f"{ratio:.2f}x", "<= 1.25x", ratio <= 1.25))
b, b_bound = (mark("BM_ServerRole_PneAuth"), mark("BM_Bound_KeySchedule_PneMix")) if "b" in rows_wanted else (None, None)
if b and b_bound:
    ratio = b["pne_auth/s"] / b_bound["pne_auth/s"]
    table.append(("b", "PNE authentications/s, real Server role, no I/O (5 of 10 with LocalEUKey)",
                  f"{b['pne_auth/s']:,.0f}/s", f"{b_bound['pne_auth/s']:,.0f}/s (bare key schedule)",
                  f"{ratio:.2f}x", ">= 0.5x", ratio >= 0.5))
for key, what, bound_name in (("c", "durable PN registrations/s, cpns-server on SQLite", "bare SQLite insert loop"),
                              ("d", "durable PN registrations/s, cpns-server on PostgreSQL", "bare libpq insert loop")):
    r = rows.get(key)
    if key not in rows_wanted:
        continue
    if r is None:
        table.append((key, what, "-", "-", "-", ">= 0.5x" + ("; >= 1,860/s" if key == "d" else ""),
                      None))
        continue
    ratio = r["project"] / r["bound"]
    met = ratio >= 0.5 and (key != "d" or r["project"] >= 5 * 372)
    table.append((key, f"{what} ({r['registered']} PNs, {pnes} PNEs each; mean {r['group']:.1f} PNs per commit)",
                  f"{r['project']:,.0f}/s", f"{r['bound']:,.0f}/s ({bound_name}, {max(1, round(r['group']))} PNs per commit)",
                  f"{ratio:.2f}x", ">= 0.5x" + ("; >= 1,860/s" if key == "d" else ""), met))
gwr = rows.get("e_f_gw")
if "e" in rows_wanted:
    what = "server CPU per PSK-TLS handshake at a cpns-gw PAN endpoint"
    if gwr and "bound_us" in gwr:
        ratio = gwr["cpu_us_per_handshake"] / gwr["bound_us"]
        table.append(("e", f"{what} ({gwr['handshakes']:,} handshakes, {links_gw:,} PNEs at once, 64 in flight)",
                      f"{gwr['cpu_us_per_handshake']:.0f} us", f"{gwr['bound_us']:.0f} us (bare server-side OpenSSL handshake, same suite)",
                      f"{ratio:.2f}x", "<= 1.5x", ratio <= 1.5))
    else:
        table.append(("e", what, "-", "-", "-", "<= 1.5x", None))
if "f" in rows_wanted:
    for r, what in ((rows.get("f_server"), f"memory per idle PSK-TLS link, {links_server:,} PN GW links held by a cpns-server"),
                    (gwr, f"memory per idle PSK-TLS link, {links_gw:,} PNE links held by a cpns-gw")):
        if r is None or "bytes_per_link" not in r:
            table.append(("f", what, "-", "-", "-", "<= 16 KiB", None))
            continue
        b = r["bytes_per_link"]
        table.append(("f", what + " (VmRSS growth per link)", f"{b / 1024:.1f} KiB",
                      "68 KB (OpenSSL 3.0, DTLS-PSK, published)", f"{b / OPENSSL_DTLS_PSK_BYTES:.2f}x",
                      "<= 16 KiB", b <= 16 * 1024))

print()
print("== Ratio table: each figure and its bound measured in this run"
      + (" (--tiny: sizes too small for the figures to mean anything; nothing is asserted)" if tiny else "") + " ==")
print()
print("| # | measure | project | bound (same run) | ratio | target | met? |")
print("| --- | --- | ---: | --- | ---: | --- | --- |")
for key, what, proj, bound, ratio, target, met in table:
    print(f"| {key} | {what} | {proj} | {bound} | {ratio} | {target} | "
          f"{'-' if met is None else ('yes' if met else 'NO')} |")
if gwr and "bare_idle_bytes" in gwr:
    print(f"\nrows e/f: a bare OpenSSL server-side connection, idle after its handshake, holds "
          f"{gwr['bare_idle_bytes'] / 1024:.1f} KiB (malloc in use, BM_Bound_BareTlsIdleConnection); "
          f"load average {os.getloadavg()[0]:.1f} after the links")
for key in ("c", "d"):
    r = rows.get(key)
    if r:
        lat = r["latency_ms"]
        print(f"\nrow {key}: {r['registered']} of {r['attempted']} PNs registered; latency p50/p95/p99 "
              f"{lat['p50']}/{lat['p95']}/{lat['p99']} ms; CPU per PN: cpns-server {r['server_cpu_ms_per_pn']:.2f} ms, "
              f"cpns-load {r['load_cpu_ms_per_pn']:.2f} ms")
if "d" in rows_wanted and "d" not in rows and not pg_url:
    print("\nrow d: no PostgreSQL (set CPNS_BENCH_PG_URL or CPNS_TEST_PG_URL)")
(work / "rows.json").write_text(json.dumps(rows))
if failures:
    print("\nbench.sh: parts of the harness failed:", *failures, sep="\n  ", file=sys.stderr)
    sys.exit(1)
PY

[[ $rows == abcdef ]] || exit 0  # --rows: the table only

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
