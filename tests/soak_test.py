"""Soak: establishments and attacks mixed for a while; every daemon's memory and descriptors
stay flat after warm-up.

A CPNS Server, a PN GW and two PNE daemons run as processes (tests/lab/cpnslab.py). For
CPNS_SOAK_SECONDS (default 120; the documented 1-hour mode is 3600) the test runs, each in a
bounded loop:

  - honest establishments from 127.0.0.1, alternating the two flows: `cpns-gw invite` (PN GW
    initiated, both PNEs) and `cpns-pne setup --type all` (PNE initiated by a third PNE);
  - attacks from 127.0.0.2 (other source address, so that per-source defences never touch
    the honest parties), about ATTACKS_PER_S per second in turn: random bytes to the server
    and to the PN GW's PAN port; a slow partial frame (a length prefix and nothing more, held
    for SLOW_HOLD_S, at most MAX_SLOW at once); a malformed frame (a valid length, a body
    that is no envelope) to the PAN port; a PSK-TLS handshake with a wrong key and an unknown
    identity (`openssl s_client -psk`, relayed so that it comes from 127.0.0.2) to the server
    and to the PAN port; junk datagrams to the Entity Discovery group.

Every SAMPLE_S seconds it reads VmRSS (/proc/PID/status) and the number of open descriptors
(/proc/PID/fd) of each daemon. Verdict, per daemon, after a warm-up of the first quarter:

  - RSS: the median of the last quarter's samples against the median of the second
    quarter's. Medians, not single samples: one sample taken while a handshake is in flight
    does not decide; a leak moves the whole quarter.
  - descriptors: the minimum of the last quarter against the minimum of the second. A sample
    counts in-flight connections (attacks hold some for seconds); the minimum is the
    descriptors held at the quietest moment, which a leak raises and traffic does not.

Each must grow by less than GROWTH_LIMIT (5%). Also at least MIN_SUCCESS of the honest
establishments must succeed or be refused because the PNEs are full: with no removal message
yet, every PNE is a member of at most kMaxPnsPerPne (64) PNs, which pne-1 and pne-2 reach
after about 64 establishments (in the first minute or so); from then on the PN GW initiated
flow ends with "limit exceeded" and the PNE initiated one makes PNs of pne-3 alone until it
is full too. So the state the daemons keep stops growing early, and the later part of a long
run soaks the refusal paths and the attacks. The figures are printed as a table either way.

Python 3 standard library only (unittest).
"""

from __future__ import annotations

import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import Lab, PneSpec, cleanup, make_lab  # noqa: E402

BIN = os.path.join(os.environ.get("CPNS_BINARY_DIR", "build/dev"), "apps")
# 2 minutes in the plain build; under the sanitizers (scripts/sanitize.sh), where the RSS bound
# is not checked, 45 s of the same mix looks for memory and thread errors and keeps CI short.
DURATION_S = float(os.environ.get(
    "CPNS_SOAK_SECONDS", "45" if os.environ.get("CPNS_SANITIZER") == "1" else "120"))
SAMPLE_S = 2.0 if DURATION_S <= 600 else 10.0
GROWTH_LIMIT = 0.05
UNDER_ASAN = os.environ.get("CPNS_SANITIZER") == "1"  # scripts/sanitize.sh
MIN_SUCCESS = 0.90
ATTACKS_PER_S = 4.0
SLOW_HOLD_S = 3.0
MAX_SLOW = 2
ATTACK_SOURCE = "127.0.0.2"
FLOW_TIMEOUT_S = 60.0
HONEST_PERIOD_S = 1.0  # at most one honest establishment per second
IO_TIMEOUT_S = 5.0
DAEMONS = ["server", "gw", "pne-1", "pne-2"]


TCP_ESTABLISHED = "01"  # the state column of /proc/net/tcp


def attacker_held_sockets(pid: int) -> set[str]:
    """Socket inodes of the process's TCP connections that the attacker (ATTACK_SOURCE) still
    holds open. Their number at a sample depends only on the attack schedule (a slow frame is
    held until its deadline), so they are not counted as the daemon's own descriptors; a
    connection the attacker has closed and the daemon has not (CLOSE_WAIT, a leak) still is."""
    attacker = "".join(f"{int(octet):02X}" for octet in reversed(ATTACK_SOURCE.split(".")))
    held = set()
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            next(f)
            for line in f:
                cols = line.split()
                remote, state, inode = cols[2], cols[3], cols[9]
                if remote.split(":")[0] == attacker and state == TCP_ESTABLISHED:
                    held.add(inode)
    except OSError:
        pass
    return held


def proc_figures(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, open descriptors) of a running process; the descriptors leave out the
    connections the attacker is holding open at that moment (attacker_held_sockets)."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    held = attacker_held_sockets(pid)
    own = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:[") and target[8:-1] in held:
            continue
        own += 1
    return rss, own


def at_the_bound(out: dict) -> bool:
    """A refusal because the PNEs are members of kMaxPnsPerPne PNs already (no removal
    message yet): the right answer once the soak has made that many, not a failure."""
    text = json.dumps(out)
    return not out.get("success") and ("limit exceeded" in text or "LIMIT_EXCEEDED" in text)


def addr(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


class Relay:
    """Accepts on 127.0.0.1 and connects to `target` from ATTACK_SOURCE, copying bytes both
    ways: lets a tool that cannot choose its source address attack from 127.0.0.2."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            try:
                u = socket.socket()
                u.settimeout(IO_TIMEOUT_S)
                u.bind((ATTACK_SOURCE, 0))
                u.connect(self.target)
            except OSError:
                c.close()
                continue
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        a.settimeout(IO_TIMEOUT_S)
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        a.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


class Attacker:
    """Runs the attack mix in turn until stopped; counts what it did."""

    def __init__(self, server: tuple[str, int], pan: tuple[str, int], group: tuple[str, int]):
        self.server, self.pan, self.group = server, pan, group
        self.relays = {"server": Relay(server), "pan": Relay(pan)}
        self.stop = threading.Event()
        self.slow = threading.Semaphore(MAX_SLOW)
        self.counts: dict[str, int] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self, to: tuple[str, int]) -> socket.socket:
        s = socket.socket()
        s.settimeout(IO_TIMEOUT_S)
        s.bind((ATTACK_SOURCE, 0))
        s.connect(to)
        return s

    def junk(self, to: tuple[str, int]) -> None:
        with self._connect(to) as s:
            s.sendall(os.urandom(random.randint(1, 2048)))
            try:
                s.recv(1024)
            except OSError:
                pass

    def slow_frame(self, to: tuple[str, int]) -> None:
        if not self.slow.acquire(blocking=False):
            return
        def hold() -> None:
            try:
                with self._connect(to) as s:
                    s.sendall(b"\x00\x00")  # half a length prefix, then nothing
                    self.stop.wait(SLOW_HOLD_S)
            except OSError:
                pass
            finally:
                self.slow.release()
        threading.Thread(target=hold, daemon=True).start()

    def malformed_frame(self, to: tuple[str, int]) -> None:
        body = os.urandom(64)
        with self._connect(to) as s:
            s.sendall(len(body).to_bytes(4, "big") + body)
            try:
                s.recv(1024)
            except OSError:
                pass

    def wrong_psk(self, relay: str) -> None:
        identity = f"intruder-{random.randrange(1 << 32):08x}"
        subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{self.relays[relay].port}",
             "-tls1_3", "-psk_identity", identity, "-psk", os.urandom(32).hex(), "-quiet",
             "-no_ign_eof"], input=b"", capture_output=True, timeout=IO_TIMEOUT_S * 2)

    def discovery_junk(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            s.sendto(os.urandom(random.randint(1, 512)), self.group)

    def _run(self) -> None:
        attacks = [
            ("junk to server", lambda: self.junk(self.server)),
            ("junk to PAN", lambda: self.junk(self.pan)),
            ("slow frame to PAN", lambda: self.slow_frame(self.pan)),
            ("slow frame to server", lambda: self.slow_frame(self.server)),
            ("malformed frame to PAN", lambda: self.malformed_frame(self.pan)),
            ("wrong PSK to server", lambda: self.wrong_psk("server")),
            ("wrong PSK to PAN", lambda: self.wrong_psk("pan")),
            ("discovery junk", self.discovery_junk),
        ]
        i = 0
        while not self.stop.wait(1.0 / ATTACKS_PER_S):
            name, attack = attacks[i % len(attacks)]
            i += 1
            try:
                attack()
                self.counts[name] = self.counts.get(name, 0) + 1
            except (OSError, subprocess.SubprocessError):
                self.counts[name + " (failed to run)"] = \
                    self.counts.get(name + " (failed to run)", 0) + 1

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=IO_TIMEOUT_S * 3)
        for r in self.relays.values():
            r.close()


class SoakTest(unittest.TestCase):
    def test_soak(self):
        port = random.randint(20000, 60000)
        group = f"239.255.67.79:{port}"
        pnes = [PneSpec(p, enough_ui=True, pan_secure=False, device_type="headset")
                for p in ["pne-1", "pne-2", "pne-3"]]
        lab = make_lab(BIN, pnes, log_level="warn", discovery_group=group)
        attacker = None
        try:
            lab.start_server()
            lab.start_gw()
            self.assertTrue(lab.wait_server_link().get("server_link"), "PN GW not linked")
            for p in pnes[:2]:
                lab.start_pne(p)
            lab.wait_linked(["pne-1", "pne-2"])
            pids = {name: lab.proc(name).popen.pid for name in DAEMONS}
            attacker = Attacker(addr(lab.server_addr), addr(lab.pan_addr), addr(group))
            attacker.start()

            samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
            ok = at_bound = failed = 0
            failures: list[str] = []
            t0 = time.monotonic()
            next_sample = t0
            flow = 0
            while time.monotonic() - t0 < DURATION_S:
                now = time.monotonic()
                if now >= next_sample:
                    samples.append((now - t0, {n: proc_figures(pid) for n, pid in pids.items()}))
                    next_sample += SAMPLE_S
                pace = time.monotonic() + HONEST_PERIOD_S
                if flow % 2 == 0:
                    _, out = lab.gw_invite(["pne-1", "pne-2"], timeout=FLOW_TIMEOUT_S)
                else:
                    _, out, _ = lab.pne_setup(pnes[2], "all", timeout=FLOW_TIMEOUT_S)
                flow += 1
                if out.get("success"):
                    ok += 1
                elif at_the_bound(out):
                    at_bound += 1
                else:
                    failed += 1
                    if len(failures) < 5:
                        failures.append(str(out)[:300])
                for name, p in ((n, lab.proc(n)) for n in DAEMONS):
                    self.assertIsNone(p.popen.poll(), f"{name} exited during the soak")
                time.sleep(max(0.0, min(pace, t0 + DURATION_S) - time.monotonic()))
            samples.append((time.monotonic() - t0, {n: proc_figures(pid) for n, pid in pids.items()}))
            self.attacks = dict(attacker.counts)
            attacker.close()
            attacker = None

            verdicts = self.report(samples, ok, at_bound, failed, failures, lab)
            self.assertGreaterEqual(ok, 1, "no establishment succeeded")
            total = ok + at_bound + failed
            self.assertGreaterEqual((ok + at_bound) / total, MIN_SUCCESS,
                                    f"{failed} of {total} establishments failed: {failures}")
            for name, what, before, after, growth in verdicts:
                if what == "RSS" and UNDER_ASAN:
                    # AddressSanitizer keeps freed memory in its quarantine (256 MiB by
                    # default) instead of reusing it, so RSS grows by design there; the
                    # RSS bound is checked by the plain build's run of this test.
                    print(f"{name} RSS growth {growth:.1%} not checked under ASan", flush=True)
                    continue
                self.assertLess(growth, GROWTH_LIMIT,
                                f"{name} {what} grew {growth:.1%} after warm-up "
                                f"({before} -> {after})")
        except BaseException:
            print(lab.logs()[-6000:], flush=True)
            raise
        finally:
            if attacker:
                attacker.close()
            cleanup(lab)

    def report(self, samples, ok, at_bound, failed, failures, lab):
        n = len(samples)
        q = max(1, n // 4)
        second, last = samples[q:2 * q] or samples[:1], samples[-q:]
        print(f"\nsoak: {DURATION_S:.0f} s, {n} samples every {SAMPLE_S:.0f} s; "
              f"establishments {ok} ok, {at_bound} refused at the PNEs' bound, {failed} failed",
              flush=True)
        print("attacks: " + ", ".join(f"{k} {v}" for k, v in sorted(self.attacks.items())),
              flush=True)
        print(f"{'daemon':8} {'RSS KiB start':>14} {'RSS Q2 med':>11} {'RSS Q4 med':>11} "
              f"{'growth':>7} {'fd start':>9} {'fd Q2 min':>10} {'fd Q4 min':>10} {'growth':>7}",
              flush=True)
        verdicts = []
        for name in DAEMONS:
            rss2 = statistics.median(s[1][name][0] for s in second)
            rss4 = statistics.median(s[1][name][0] for s in last)
            fd2 = min(s[1][name][1] for s in second)
            fd4 = min(s[1][name][1] for s in last)
            g_rss = (rss4 - rss2) / rss2
            g_fd = (fd4 - fd2) / fd2
            print(f"{name:8} {samples[0][1][name][0]:>14} {rss2:>11.0f} {rss4:>11.0f} "
                  f"{g_rss:>7.1%} {samples[0][1][name][1]:>9} {fd2:>10} {fd4:>10} {g_fd:>7.1%}",
                  flush=True)
            verdicts += [(name, "RSS", rss2, rss4, g_rss), (name, "descriptors", fd2, fd4, g_fd)]
        seen = {name: sum(ATTACK_SOURCE in line for line in
                          (lab.workdir / f"{name}.log").read_text(errors="replace").splitlines())
                for name in ("server", "gw")}
        print("log lines naming the attack source: " +
              ", ".join(f"{k} {v}" for k, v in seen.items()), flush=True)
        if failures:
            print("first failures: " + "; ".join(failures), flush=True)
        return verdicts

    attacks: dict[str, int] = {}


if __name__ == "__main__":
    unittest.main(verbosity=2)
