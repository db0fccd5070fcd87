#!/usr/bin/env bash
# Honest PN establishments while the CPNS Server and the PN GW are under attack, all on
# 127.0.0.1 (docs/benchmarks.md, "Under attack"):
#  - 5,000 slow-loris connections (half on the PN GW's PAN port, half on the server's port),
#    from 100 source addresses 127.0.0.2..127.0.0.101: each sends one octet (a TLS record
#    type) and nothing more; whatever the daemons close is reopened, for the whole run;
#  - a PSK-failure replay flood: a recorded ClientHello with a wrong key for the real PN GW
#    identity (at the server) and for a real PNE's pre-assigned identity (at the PAN port),
#    replayed over and over from 127.0.1.1..127.0.1.50;
#  - meanwhile 200 honest establishments (`cpns-pne setup --type 1-1`, 4 at a time, 8 PNEs
#    from 127.0.0.1), each timed from process start to its outcome.
# Prints how many honest establishments succeeded and their p50/p99 latency, plus what the
# attack did. Bounded in time (the run stops after RUN_LIMIT_S; the whole script < 2 min).
# Usage: scripts/bench-attack.sh [BUILD_DIR]   (default build/release; built if missing)
#        BENCH_ATTACK=0 scripts/bench-attack.sh ...   the same honest run without the attack
set -euo pipefail
cd "$(dirname "$0")/.."

build=${1:-build/release}
if [[ ! -x $build/apps/cpns-server/cpns-server || ! -x $build/apps/cpns-gw/cpns-gw ||
      ! -x $build/apps/cpns-pne/cpns-pne ]]; then
  preset=$(basename "$build")
  cmake --preset "$preset" >/dev/null
  cmake --build "$build" --target cpns-server cpns-gw cpns-pne -j "${CPNS_BUILD_JOBS:-2}"
fi
# 5,000 attack sockets in this process, ~2,500 in each daemon.
ulimit -n 20000

exec python3 - "$build" <<'PY'
import os
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path("tests/lab").resolve()))
from cpnslab import PneSpec, cleanup, make_lab, new_key  # noqa: E402

SLOW_LORIS = 5000          # connections kept open (half PAN, half server)
SOURCES = 100              # 127.0.0.2 .. 127.0.0.101
REPLAY_SOURCES = 50        # 127.0.1.1 .. 127.0.1.50
HONEST = 200               # establishments
WORKERS = 4                # at a time
PNES = 8                   # honest PNEs (each in HONEST / PNES PNs, under kMaxPnsPerPne)
RUN_LIMIT_S = 90           # the honest run stops here, done or not
# Slow-loris reopened per 0.2 s at most (the attacker's rate; BENCH_REOPEN overrides).
REOPEN_PER_TICK = int(os.environ.get("BENCH_REOPEN", "100"))

build = Path(sys.argv[1])
ATTACK = os.environ.get("BENCH_ATTACK", "1") != "0"
stop = threading.Event()
stats = {"loris_open": 0, "loris_opened": 0, "loris_closed": 0, "loris_failed": 0,
         "replays": 0, "replay_answers": 0}
lock = threading.Lock()


def host_port(addr):
    h, p = addr.rsplit(":", 1)
    return h, int(p)


def connect_from(source, addr, timeout=2.0):
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(host_port(addr))
    return s


def capture_client_hello(identity, key_hex):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(10)
    cli = subprocess.Popen(["openssl", "s_client", "-connect",
                            f"127.0.0.1:{srv.getsockname()[1]}", "-tls1_3", "-psk_identity",
                            identity, "-psk", key_hex, "-quiet"], stdin=subprocess.PIPE,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn, _ = srv.accept()
        conn.settimeout(10)
        data = b""
        while len(data) < 5 or len(data) < 5 + struct.unpack(">H", data[3:5])[0]:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        conn.close()
        return data
    finally:
        cli.kill()
        cli.wait()
        cli.stdin.close()
        srv.close()


def slow_loris(targets):
    """Keeps SLOW_LORIS one-octet connections open across `targets`, reopening closed ones."""
    sel = selectors.DefaultSelector()
    wanted = []  # (source, addr) of each slot
    for i in range(SLOW_LORIS):
        wanted.append((f"127.0.0.{2 + i % SOURCES}", targets[i % len(targets)]))
    missing = list(range(SLOW_LORIS))
    while not stop.is_set():
        for slot in missing[:REOPEN_PER_TICK]:
            src, addr = wanted[slot]
            try:
                s = connect_from(src, addr, 1.0)
                s.send(b"\x16")
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, slot)
                with lock:
                    stats["loris_opened"] += 1
                    stats["loris_open"] += 1
            except OSError:
                with lock:
                    stats["loris_failed"] += 1
        del missing[:REOPEN_PER_TICK]
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                s.close()
                missing.append(key.data)
                with lock:
                    stats["loris_closed"] += 1
                    stats["loris_open"] -= 1
    for key in list(sel.get_map().values()):
        key.fileobj.close()


def replay_flood(jobs):
    """Replays wrong-key ClientHellos from REPLAY_SOURCES addresses until stopped."""
    i = 0
    while not stop.is_set():
        addr, hello = jobs[i % len(jobs)]
        src = f"127.0.1.{1 + (i // len(jobs)) % REPLAY_SOURCES}"
        i += 1
        try:
            s = connect_from(src, addr, 2.0)
            s.sendall(hello)
            got = s.recv(4096)
            s.close()
            with lock:
                stats["replays"] += 1
                stats["replay_answers"] += bool(got)
        except OSError:
            with lock:
                stats["replays"] += 1


def honest_setup(lab, pne):
    t0 = time.monotonic()
    rc, out, _ = lab.pne_setup(pne, "1-1", timeout=60)
    return rc == 0 and out.get("success", rc == 0), time.monotonic() - t0


pnes = [PneSpec(f"h-{i}", enough_ui=True, pan_secure=(i % 2 == 0)) for i in range(1, PNES + 1)]
# The replay flood's PAN victim: a PNE with a pre-assigned key (PSK-TLS), never set up here.
victim = PneSpec("victim", enough_ui=False, pan_secure=False)
lab = make_lab(str(build / "apps"), pnes + [victim], log_level="warn")
t_start = time.monotonic()
try:
    lab.start_server()
    lab.start_gw()
    if not lab.wait_server_link().get("server_link"):
        raise SystemExit("the PN GW did not reach the server")
    replay_jobs = [(lab.server_addr, capture_client_hello(lab.gw_id, new_key())),
                   (lab.pan_addr, capture_client_hello("pre:victim", new_key()))]
    attackers = [threading.Thread(target=slow_loris, args=([lab.pan_addr, lab.server_addr],)),
                 threading.Thread(target=replay_flood, args=(replay_jobs,))]
    if not ATTACK:
        attackers = []
    for t in attackers:
        t.start()
    if attackers:
        time.sleep(3)  # let the flood fill the listeners
        with lock:
            at_start = dict(stats)
        print(f"attack running: {at_start['loris_open']} slow-loris connections open, "
              f"{at_start['replays']} wrong-key replays so far", flush=True)

    results = []
    deadline = time.monotonic() + RUN_LIMIT_S
    order = [pnes[i % PNES] for i in range(HONEST)]

    def worker(w):
        mine = [p for i, p in enumerate(order) if i % WORKERS == w]
        for p in mine:
            if time.monotonic() > deadline:
                break
            results.append(honest_setup(lab, p))

    t_honest = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as ex:
        list(ex.map(worker, range(WORKERS)))
    honest_wall = time.monotonic() - t_honest
    stop.set()
    for t in attackers:
        t.join()

    ok = sorted(d for s, d in results if s)
    lat = sorted(d for _, d in results)
    def pct(v, q):
        return v[min(len(v) - 1, int(round(q * (len(v) - 1))))] if v else float("nan")
    print()
    print(f"== honest establishments {'under attack' if ATTACK else 'without attack'} "
          f"({os.cpu_count()} CPU(s), "
          f"{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}) ==")
    print(f"{'succeeded':34} {len(ok)} of {len(results)} run ({HONEST} planned, "
          f"{WORKERS} at a time, {honest_wall:.1f} s)")
    print(f"{'latency p50 (all runs)':34} {pct(lat, 0.50) * 1000:.0f} ms")
    print(f"{'latency p99 (all runs)':34} {pct(lat, 0.99) * 1000:.0f} ms")
    print(f"{'latency max':34} {lat[-1] * 1000 if lat else float('nan'):.0f} ms")
    print(f"{'slow-loris open at the end':34} {stats['loris_open']} "
          f"(opened {stats['loris_opened']}, closed by the daemons {stats['loris_closed']}, "
          f"connect failures {stats['loris_failed']})")
    print(f"{'wrong-key replays':34} {stats['replays']} ({stats['replay_answers']} answered "
          f"with an alert)")
    logs = {n: (lab.workdir / f"{n}.log").read_text() for n in ("server", "gw")}
    for n, text in logs.items():
        print(f"{n + ' log lines':34} {len(text.splitlines())}")
    print(f"{'whole run':34} {time.monotonic() - t_start:.1f} s")
finally:
    stop.set()
    cleanup(lab)
PY
