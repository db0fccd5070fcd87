"""LocalEUKey re-key with real daemons (docs/protocol.md, "LocalEUKey re-key"), started on the PN
GW (`cpns-gw rekey`) and by the operator (`cpnsctl rekey`): on an insecure
PAN, pne-a (enough UI) holds a live PSK-TLS session made with its LocalEUKey. `cpns-gw rekey`
gives it a new one: the command prints success; pne-a's saved state holds a new key; a new
handshake with the old key fails and one with the new key works; the session made with the old
key is closed and the PNE daemon links again; the store and the PN GW show the PN at the next
revision with the same members; the audit log names the re-key. A PNE without a LocalEUKey
(pre-assigned key) cannot be re-keyed: the command exits non-zero with the typed reason.

Runs on SQLite (the store's part is the same compare-and-set as every change, tested on both
backends by store_test).
"""

import os
import subprocess
import sys
import time
import json
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpnslab import PneSpec, cleanup, make_lab  # noqa: E402
from revocation_process_test import leuk_handshake, local_eukey  # noqa: E402

BIN = os.path.join(os.environ.get("CPNS_BINARY_DIR", "build/dev"), "apps")
COMMAND_TIMEOUT_S = 90.0  # one re-key on a busy 2-core machine (every wait in it is bounded)
WAIT_S = 30.0             # the PNE daemon links again, a state file is written
POLL_S = 0.1


class RekeyProcessTest(unittest.TestCase):
    def setUp(self):
        self.pnes = [PneSpec("pne-a"), PneSpec("pne-c", enough_ui=False)]
        self.lab = make_lab(BIN, self.pnes)
        self.addCleanup(self._cleanup)
        self.lab.start_server()
        self.lab.start_gw()
        self.lab.wait_server_link()
        for p in self.pnes:
            self.lab.start_pne(p)
        self.lab.wait_linked([p.id for p in self.pnes], timeout=30)

    def _cleanup(self):
        if os.environ.get("CPNS_TEST_KEEP_LOGS"):
            print(self.lab.logs())
        cleanup(self.lab)

    def gw_command(self, *args):
        r = subprocess.run([os.path.join(BIN, "cpns-gw", "cpns-gw"), *args, "--control",
                            self.lab.control_addr, "--json"],
                           capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        out = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
        return r.returncode, out, r.stderr

    def gw_pn(self, pn):
        return next((i for i in self.lab.gw_status().get("inventory", []) if i["pn_id"] == pn),
                    None)

    def store_pn(self, pn):
        return next((i for i in self.lab.store_pns() if i.get("pn_id") == pn), None)

    def tls_sessions(self, pne):
        return [s for s in self.lab.gw_status().get("pan_links", {}).get(pne, [])
                if s.startswith("TLS")]

    def wait_until(self, what, cond, timeout=WAIT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(POLL_S)
        self.fail(f"{what}: not within {timeout} s")

    def key_of(self, pne, pn):
        spec = next(p for p in self.pnes if p.id == pne)
        return local_eukey(self.lab.workdir / f"{pne}.state", pne, spec.device_eukey, pn)

    def cpnsctl(self, *args):
        store = self.lab.store_url or f"sqlite:{self.lab.workdir / 'server.db'}"
        return subprocess.run([os.path.join(BIN, "cpnsctl", "cpnsctl"), "--store", store,
                               "--master-key-file", str(self.lab.workdir / "master.key"), *args],
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)

    def audit(self):
        store = self.lab.store_url or f"sqlite:{self.lab.workdir / 'server.db'}"
        r = subprocess.run([os.path.join(BIN, "cpnsctl", "cpnsctl"), "--store", store,
                            "--master-key-file", str(self.lab.workdir / "master.key"), "audit",
                            "--limit", "200"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def test_rekey_replaces_the_key_and_closes_the_old_session(self):
        rc, out = self.lab.gw_invite(["pne-a", "pne-c"])
        self.assertEqual(rc, 0, out)
        pn = out["pn_id"]
        self.wait_until("pne-a's PSK-TLS session is up", lambda: self.tls_sessions("pne-a"))
        old = self.key_of("pne-a", pn)
        self.assertTrue(leuk_handshake(self.lab.pan_addr, pn, "pne-a", old),
                        "the LocalEUKey handshake works before the re-key")

        rc, out, err = self.gw_command("rekey", "--pn", pn, "--pne", "pne-a")
        self.assertEqual(rc, 0, (out, err))
        self.assertEqual(out.get("operation"), "rekey", out)
        self.assertTrue(out.get("success"), out)

        # The PNE saved the new key before it confirmed, and the PN GW switched on the
        # confirmation: the old key is refused, the new one works.
        new = self.key_of("pne-a", pn)
        self.assertNotEqual(new, old)
        self.assertFalse(leuk_handshake(self.lab.pan_addr, pn, "pne-a", old),
                         "a new handshake with the old LocalEUKey must fail after the re-key")
        self.assertTrue(leuk_handshake(self.lab.pan_addr, pn, "pne-a", new),
                        "a handshake with the new LocalEUKey must work")
        # The session made with the old key was closed; the PNE daemon linked again.
        self.wait_until("pne-a is linked again",
                        lambda: "pne-a" in self.lab.gw_status().get("pan_links", {}))
        # Same members, one revision more, at the store and the PN GW.
        for where, inv in (("store", self.store_pn(pn)), ("PN GW", self.gw_pn(pn))):
            self.assertIsNotNone(inv, where)
            self.assertEqual({m["pne_id"] for m in inv["members"]}, {"pne-a", "pne-c"}, where)
            self.assertEqual(int(inv.get("revision", 0)), 1, where)

        # pne-c has no LocalEUKey (no UI: it uses its pre-assigned key): refused, with the
        # reason, and nothing changes.
        rc, out, err = self.gw_command("rekey", "--pn", pn, "--pne", "pne-c")
        self.assertEqual(rc, 1, (out, err))
        self.assertEqual(out.get("reason"), "NO_LOCAL_EUKEY", out)
        self.assertEqual(int(self.gw_pn(pn).get("revision", 0)), 1)
        # An unknown PN likewise.
        rc, out, err = self.gw_command("rekey", "--pn", "pn-none", "--pne", "pne-a")
        self.assertEqual(rc, 1, (out, err))
        self.assertEqual(out.get("reason"), "UNKNOWN_PN", out)

        self.assertIn("rekey", self.audit())

        # The operator's order: cpnsctl records it, the server sends it to the PN GW, and
        # cpnsctl prints the PN GW's report from the audit log.
        r = self.cpnsctl("rekey", "--pn", pn, "--pne", "pne-a")
        self.assertEqual(r.returncode, 0, (r.stdout, r.stderr))
        self.assertIn("done, new LocalEUKey in force at revision 2", r.stdout)
        newest = self.key_of("pne-a", pn)
        self.assertNotEqual(newest, new)
        self.assertFalse(leuk_handshake(self.lab.pan_addr, pn, "pne-a", new))
        self.assertTrue(leuk_handshake(self.lab.pan_addr, pn, "pne-a", newest))
        self.assertEqual(int(self.store_pn(pn).get("revision", 0)), 2)
        # A PNE without LocalEUKey: refused at once with the reason, exit status 1.
        r = self.cpnsctl("rekey", "--pn", pn, "--pne", "pne-c")
        self.assertEqual(r.returncode, 1, (r.stdout, r.stderr))
        self.assertIn("no local eukey", r.stderr)
        audit = self.audit()
        self.assertIn("rekey ordered at revision 1", audit)
        self.assertIn("rekey: pne-a: new LocalEUKey in force at revision 2", audit)


if __name__ == "__main__":
    unittest.main(verbosity=2)
