"""SIGHUP reloads a daemon's configuration file.

The PN GW runs at log level info with the default control limits. Its file is changed (log
level debug, control_max_connections_per_source = 2, and pan_listen, which needs a restart),
then SIGHUP: the log says per key what was applied and what needs a restart, debug lines
appear, and a third connection from the same user is refused. Then a broken file and SIGHUP:
the precise error is logged, the PN GW keeps running with the settings it had (still debug,
still 2 per source). The server re-reads its entities file on SIGHUP: a PN GW added to it can
link.
"""

import os
import re
import signal
import sys
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import PneSpec, cleanup, control_connect, make_lab, new_key  # noqa: E402

BIN = os.path.join(os.environ.get("CPNS_BINARY_DIR", "build/dev"), "apps")
LOG_WAIT_S = 10.0
CLOSE_WAIT_S = 3.0


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def closed_count(socks, timeout: float) -> int:
    """How many of `socks` the peer closes within `timeout` (they never send anything)."""
    closed = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(closed) < len(socks):
        for i, s in enumerate(socks):
            if i in closed:
                continue
            s.settimeout(0.05)
            try:
                if s.recv(1) == b"":
                    closed.add(i)
            except TimeoutError:
                pass
            except OSError:
                closed.add(i)
    return len(closed)


class ReloadTest(unittest.TestCase):
    def test_gw_reload_applies_what_it_can_and_survives_a_broken_file(self):
        lab = make_lab(BIN, [PneSpec("pne-a")], log_level="info")
        self.addCleanup(cleanup, lab)
        lab.start_server()
        gw = lab.start_gw()
        lab.wait_server_link()
        cfg = lab.workdir / "gw.toml"
        log = lab.workdir / "gw.log"
        text = cfg.read_text()
        self.assertNotIn(" debug ", log.read_text())

        changed = ('control_max_connections_per_source = 2\n'
                   + text.replace('log_level = "info"', 'log_level = "debug"')
                   .replace('pan_listen = "127.0.0.1:0"', 'pan_listen = "127.0.0.1:1"'))
        self.assertNotEqual(changed, text)
        cfg.write_text(changed)
        os.kill(gw.popen.pid, signal.SIGHUP)
        self.assertTrue(wait_for(lambda: "'pan_listen' changed but needs a restart"
                                 in log.read_text(), LOG_WAIT_S), log.read_text()[-3000:])
        after = log.read_text()
        self.assertIn("'log_level' applied", after)
        self.assertIn("'control_max_connections_per_source' applied", after)
        # New behaviour: debug lines (a PNE links: the PN GW logs its messages at debug) ...
        lab.start_pne(lab.pnes[0])
        lab.wait_linked(["pne-a"])
        self.assertTrue(wait_for(lambda: " debug " in log.read_text(), LOG_WAIT_S))
        # ... and at most 2 control connections from this user: the third is closed at once.
        held = [control_connect(lab.control_addr, 5.0) for _ in range(3)]
        try:
            self.assertEqual(closed_count(held, CLOSE_WAIT_S), 1)
        finally:
            for s in held:
                s.close()
        self.assertIn("(control_max_connections_per_source)", log.read_text())
        # The restart-only change was not applied: PNEs still reach the PAN port it has.
        self.assertTrue(lab.gw_status().get("pan_links"), "still serving on its PAN port")

        # A broken file: the error with its position; nothing changes, the PN GW runs on.
        broken = (changed.replace("per_source = 2\n", "per_source = 50\n", 1)
                  .replace('log_level = "debug"', 'log_level = "verbose"'))
        cfg.write_text(broken)
        line = broken.splitlines().index('log_level = "verbose"') + 1
        mark = len(log.read_text())
        os.kill(gw.popen.pid, signal.SIGHUP)
        self.assertTrue(wait_for(lambda: "failed, nothing changed" in log.read_text()[mark:],
                                 LOG_WAIT_S), log.read_text()[mark:])
        self.assertRegex(log.read_text()[mark:],
                         re.escape(f"{cfg}:{line}:13: key 'log_level': expected trace, debug"))
        self.assertIsNone(gw.popen.poll(), "the PN GW is still running")
        held = [control_connect(lab.control_addr, 5.0) for _ in range(3)]
        try:
            self.assertEqual(closed_count(held, CLOSE_WAIT_S), 1, "still 2 per source")
        finally:
            for s in held:
                s.close()
        self.assertTrue(lab.gw_status(), "still answering")

    def test_server_reload_reads_its_entities_file_again(self):
        lab = make_lab(BIN, [])
        self.addCleanup(cleanup, lab)
        server = lab.start_server()
        log = lab.workdir / "server.log"
        entities = re.search(r'entities = "([^"]+)"',
                             (lab.workdir / "server.toml").read_text()).group(1)
        # A PN GW the server does not know yet: its link is refused.
        lab.gw_id, lab.gw_key = "gw-late", new_key()
        lab.start_gw()
        gw_log = lab.workdir / "gw.log"
        self.assertTrue(wait_for(lambda: "refused this PN GW" in gw_log.read_text(), LOG_WAIT_S))
        with open(entities, "a") as f:
            f.write(f'\n[[entity]]\nid = "gw-late"\nkind = "gw"\neukey = "{lab.gw_key}"\n')
        mark = len(log.read_text())
        os.kill(server.popen.pid, signal.SIGHUP)
        self.assertTrue(wait_for(lambda: "reload: entities file" in log.read_text()[mark:],
                                 LOG_WAIT_S), log.read_text()[-3000:])
        self.assertIn("1 added, 1 already in the store", log.read_text()[mark:])
        self.assertIn(f"reload of {lab.workdir / 'server.toml'}: no change",
                      log.read_text()[mark:])
        # The PN GW, retrying, now links (the server refreshes its PN GW records).
        self.assertTrue(lab.wait_server_link(timeout=60.0))


if __name__ == "__main__":
    unittest.main()
