"""cpns-load links against real daemons, and the configurable connection bounds it needs for
rows e and f of docs/benchmarks.md:

- a cpns-gw with pan_max_connections = 600 holds 600 idle PSK-TLS PNE links from one address
  (more than the former fixed 512 in all), and refuses the 601st while they are held;
- a cpns-server with max_connections = 30 and as many per source holds 30 idle PN GW links
  and refuses the 31st;
- links with a key the daemon does not have fail with the reason a user sees.

Every daemon binds 127.0.0.1; every run is bounded in count and time.
"""

import json
import os
import secrets
import signal
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

BIN = Path(os.environ.get("CPNS_BINARY_DIR", "build/dev")) / "apps"
LOAD = BIN / "cpns-load" / "cpns-load"
READY_TIMEOUT_S = 30.0
LINKS_TIME_LIMIT_S = 120  # cpns-load's own bound on opening its links
WAIT_S = LINKS_TIME_LIMIT_S + 30


def wait_ready(proc, ready: Path, log: Path) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (ready.exists() and ready.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"daemon did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return ready.read_text().strip()


class Links:
    """A running `cpns-load links`: its first JSON line once the links are up."""

    def __init__(self, as_: str, entities: Path, to: str, count: int):
        self.proc = subprocess.Popen(
            [str(LOAD), "links", "--as", as_, "--entities", str(entities), "--to", to,
             "--count", str(count), "--concurrency", "32",
             "--time-limit-s", str(LINKS_TIME_LIMIT_S)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.up = json.loads(self.proc.stdout.readline())

    def end(self):
        """SIGTERM; (exit status, the last JSON line)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=WAIT_S)
        return self.proc.returncode, json.loads(out.strip().splitlines()[-1])


class LinksTest(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="cpns-links-"))
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", str(self.dir)], check=False))
        self.procs = []
        self.addCleanup(self.stop_all)

    def stop_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def start(self, args, name):
        log = self.dir / f"{name}.log"
        proc = subprocess.Popen([str(a) for a in args], stdout=log.open("w"),
                                stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc, log

    def test_pan_endpoint_holds_more_than_512_links_up_to_pan_max_connections(self):
        pan = self.dir / "pan.toml"
        r = subprocess.run([str(LOAD), "provision-pan", "--pnes", "601", "--out", str(pan)],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        ready = self.dir / "gw.ready"
        cfg = self.dir / "gw.toml"
        cfg.write_text(f'id = "gw-links"\neukey = "{secrets.token_hex(32)}"\n'
                       'server = "127.0.0.1:9"\npan_listen = "127.0.0.1:0"\n'
                       f'control = "unix:{self.dir / "ctl" / "gw.sock"}"\n'
                       f'discovery_group = ""\nready_file = "{ready}"\nlog_level = "warn"\n'
                       'pan_max_connections = 600\npan_max_connections_per_source = 600\n\n'
                       + pan.read_text())
        cfg.chmod(0o600)
        pan.chmod(0o600)
        gw, log = self.start([BIN / "cpns-gw" / "cpns-gw", "run", "--config", cfg], "gw")
        to = wait_ready(gw, ready, log).split()[0].removeprefix("pan=")

        held = Links("pne", pan, to, 600)
        self.assertEqual((held.up["up"], held.up["failures"]), (600, {}), held.up)
        # Full, and every link authenticated (none to evict): the next one is refused.
        extra = Links("pne", pan, to, 1)
        self.assertEqual(extra.up["up"], 0, extra.up)
        self.assertEqual(sum(extra.up["failures"].values()), 1, extra.up)
        self.assertEqual(extra.end()[0], 1)
        status, end = held.end()
        self.assertEqual((status, end["lost"]), (0, 0), end)
        # All from 127.0.0.1: the per-source bound (as high as the total) is the one reached.
        self.assertIn("refused 1 PAN connection(s): 600 open from 127.0.0.1 "
                      "(pan_max_connections_per_source)", log.read_text())

    def test_server_holds_pn_gw_links_up_to_max_connections(self):
        ent = self.dir / "ent.toml"
        ent.write_text("".join(f'[[entity]]\nid = "lgw-{i:03d}"\nkind = "gw"\n'
                               f'eukey = "{secrets.token_hex(32)}"\n\n' for i in range(1, 32)))
        ent.chmod(0o600)
        mk = self.dir / "mk"
        mk.write_text(secrets.token_hex(32) + "\n")
        mk.chmod(0o600)
        cfg = self.dir / "server.toml"
        cfg.write_text("max_connections = 30\nmax_connections_per_source = 30\n")
        ready = self.dir / "s.ready"
        server, log = self.start([BIN / "cpns-server" / "cpns-server", "--config", cfg,
                                  "--store", f"sqlite:{self.dir / 's.db'}",
                                  "--master-key-file", mk, "--entities", ent,
                                  "--listen", "127.0.0.1:0", "--ready-file", ready,
                                  "--log-level", "warn"], "server")
        to = wait_ready(server, ready, log)
        held = Links("gw", ent, to, 30)
        self.assertEqual((held.up["up"], held.up["failures"]), (30, {}), held.up)
        extra = Links("gw", ent, to, 1)
        self.assertEqual(extra.up["up"], 0, extra.up)
        self.assertEqual(extra.end()[0], 1)
        self.assertEqual(held.end(), (0, {"phase": "closed", "links": 30, "up": 30, "lost": 0}))
        self.assertIn("refused 1 connection(s): 30 open from 127.0.0.1 "
                      "(max_connections_per_source)", log.read_text())

    def test_a_wrong_key_fails_with_the_reason_the_user_sees(self):
        ent = self.dir / "ent.toml"
        ent.write_text(f'[[entity]]\nid = "lgw-1"\nkind = "gw"\neukey = "{secrets.token_hex(32)}"\n')
        ent.chmod(0o600)
        mk = self.dir / "mk"
        mk.write_text(secrets.token_hex(32) + "\n")
        mk.chmod(0o600)
        ready = self.dir / "s.ready"
        server, log = self.start([BIN / "cpns-server" / "cpns-server",
                                  "--store", f"sqlite:{self.dir / 's.db'}",
                                  "--master-key-file", mk, "--entities", ent,
                                  "--listen", "127.0.0.1:0", "--ready-file", ready,
                                  "--log-level", "warn"], "server")
        to = wait_ready(server, ready, log)
        other = self.dir / "other.toml"
        other.write_text(f'[[entity]]\nid = "lgw-1"\nkind = "gw"\neukey = "{secrets.token_hex(32)}"\n')
        other.chmod(0o600)
        links = Links("gw", other, to, 1)
        self.assertEqual(links.up["failures"], {"gateway authentication failed": 1}, links.up)
        self.assertEqual(links.end()[0], 1)


if __name__ == "__main__":
    unittest.main()
