"""The life of a PN with real daemons (docs/protocol.md, "PN lifecycle"): a PN of two PNEs is
established and the PN GW adds a third (`cpns-gw add`); one PNE leaves (`cpns-pne leave`), the PN GW removes another (`cpns-gw remove`) and
then dissolves the PN (`cpns-gw dissolve`). After each step the CPNS Server's store, the PN GW's
status and the PNEs agree on the members and the revision; the audit log names each operation;
a departed PNE holds nothing of the PN (a second leave fails with "unknown pn").

Runs on SQLite; CMake registers it once more with the store on PostgreSQL
(CPNS_LAB_STORE=postgresql).
"""

import os
import subprocess
import sys
import time
import json
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import PneSpec, cleanup, make_lab  # noqa: E402

BIN = os.path.join(os.environ.get("CPNS_BINARY_DIR", "build/dev"), "apps")
SKIP_PG = (os.environ.get("CPNS_LAB_STORE") == "postgresql" and
           not os.environ.get("CPNS_TEST_PG_URL") and os.environ.get("CPNS_TEST_NO_PG") == "1")
COMMAND_TIMEOUT_S = 90.0  # one change on a busy 2-core machine (the PN GW waits 20 s at most)
NOTICE_TIMEOUT_S = 20.0   # a running PNE applies the notice the PN GW passes on


def members(inv: dict) -> set:
    return {m["pne_id"] for m in inv.get("members", [])}


def revision(inv: dict) -> int:
    return int(inv.get("revision", 0))  # proto3 JSON prints a uint64 as a string, 0 not at all


@unittest.skipIf(SKIP_PG, "CPNS_TEST_NO_PG=1 and no PostgreSQL")
class LifecycleProcessTest(unittest.TestCase):
    def setUp(self):
        self.pnes = [PneSpec("pne-a"), PneSpec("pne-b"), PneSpec("pne-c", enough_ui=False)]
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

    def pne_proc(self, pne_id):
        return next(p for p in self.lab.procs if p.name == pne_id)

    def leave(self, pne: PneSpec, pn: str):
        cfg = self.lab.workdir / f"{pne.id}.toml"
        r = subprocess.run([os.path.join(BIN, "cpns-pne", "cpns-pne"), "--config", str(cfg),
                            "leave", "--pn", pn, "--json"],
                           capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        (self.lab.workdir / f"{pne.id}.leave.log").write_text(r.stderr)
        out = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
        return r.returncode, out

    def gw_command(self, *args):
        r = subprocess.run([os.path.join(BIN, "cpns-gw", "cpns-gw"), *args, "--control",
                            self.lab.control_addr, "--json"],
                           capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        out = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
        return r.returncode, out

    def gw_pn(self, pn):
        for inv in self.lab.gw_status().get("inventory", []):
            if inv["pn_id"] == pn:
                return inv
        return None

    def store_pn(self, pn):
        for inv in self.lab.store_pns():
            if inv.get("pn_id") == pn:
                return inv
        return None

    def audit(self):
        store = self.lab.store_url or f"sqlite:{self.lab.workdir / 'server.db'}"
        r = subprocess.run([os.path.join(BIN, "cpnsctl", "cpnsctl"), "--store", store,
                            "--master-key-file", str(self.lab.workdir / "master.key"), "audit",
                            "--limit", "200"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def wait_log(self, name, text, timeout=NOTICE_TIMEOUT_S):
        log = self.lab.workdir / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and text in log.read_text(errors="replace"):
                return True
            time.sleep(0.1)
        return False

    def expect_agreement(self, pn, expected, rev):
        gw = self.gw_pn(pn)
        store = self.store_pn(pn)
        if not expected:
            self.assertIsNone(gw, "the PN GW still holds the dissolved PN")
            self.assertIsNone(store, "the store still holds the dissolved PN")
            return
        self.assertIsNotNone(gw)
        self.assertIsNotNone(store)
        self.assertEqual(members(gw), expected)
        self.assertEqual(members(store), expected)
        self.assertEqual(revision(gw), rev)
        self.assertEqual(revision(store), rev)

    def test_leave_remove_dissolve(self):
        rc, out = self.lab.gw_invite(["pne-a", "pne-b"])
        self.assertEqual(rc, 0, out)
        pn = out["pn_id"]
        self.expect_agreement(pn, {"pne-a", "pne-b"}, 0)

        # The PN GW adds pne-c (pre-assigned key, no UI) to the PN: authenticated as in an
        # establishment, recorded at revision 1; the earlier members are told, proven.
        rc, out = self.gw_command("add", "--pn", pn, "pne-c")
        self.assertEqual(rc, 0, out)
        self.assertEqual(out.get("operation"), "add")
        everyone = {p.id for p in self.pnes}
        self.expect_agreement(pn, everyone, 1)
        self.assertTrue(self.wait_log("pne-a", f"PN {pn} changed: revision 1"))
        self.assertTrue(self.wait_log("pne-b", f"PN {pn} changed: revision 1"))
        # Adding a member again is refused with its reason and changes nothing.
        rc, out = self.gw_command("add", "--pn", pn, "pne-a")
        self.assertEqual(rc, 1, out)
        self.assertEqual(out.get("reason"), "ALREADY_A_MEMBER", out)
        self.expect_agreement(pn, everyone, 1)

        # pne-a leaves: its running daemon is stopped first (one process per PNE and state
        # file); the one-shot 'leave' loads the saved membership, asks, and saves.
        self.lab.stop(self.pne_proc("pne-a"))
        rc, out = self.leave(self.pnes[0], pn)
        self.assertEqual(rc, 0, out)
        self.assertEqual(out.get("operation"), "leave")
        self.assertTrue(out.get("success"), out)
        self.expect_agreement(pn, {"pne-b", "pne-c"}, 2)
        # The remaining members were told by the server (through the PN GW), proven.
        self.assertTrue(self.wait_log("pne-b", f"PN {pn} changed: revision 2"))
        self.assertTrue(self.wait_log("pne-c", f"PN {pn} changed: revision 2"))
        # pne-a keeps nothing of the PN: asking again fails with the typed reason.
        rc, out = self.leave(self.pnes[0], pn)
        self.assertEqual(rc, 1, out)
        self.assertEqual(out.get("reason"), "UNKNOWN_PN", out)

        # The PN GW removes pne-b; pne-b's running daemon believes the server's notice.
        rc, out = self.gw_command("remove", "--pn", pn, "--pne", "pne-b")
        self.assertEqual(rc, 0, out)
        self.assertEqual(out.get("operation"), "remove")
        self.expect_agreement(pn, {"pne-c"}, 3)
        self.assertTrue(self.wait_log("pne-b", f"no longer a member of {pn} (NOTICE_REMOVED)"))
        self.assertTrue(self.wait_log("pne-c", f"PN {pn} changed: revision 3"))

        # Removing someone who is not there fails with its reason and changes nothing.
        rc, out = self.gw_command("remove", "--pn", pn, "--pne", "pne-b")
        self.assertEqual(rc, 1, out)
        self.assertEqual(out.get("reason"), "NOT_A_MEMBER", out)
        self.expect_agreement(pn, {"pne-c"}, 3)

        # The PN GW dissolves the PN: gone at the server, the PN GW and pne-c.
        rc, out = self.gw_command("dissolve", "--pn", pn)
        self.assertEqual(rc, 0, out)
        self.expect_agreement(pn, set(), 0)
        self.assertTrue(self.wait_log("pne-c", f"no longer a member of {pn} (NOTICE_DISSOLVED)"))
        rc, out = self.gw_command("dissolve", "--pn", pn)
        self.assertEqual(rc, 1, out)
        self.assertEqual(out.get("reason"), "UNKNOWN_PN", out)

        audit = self.audit()
        for op in ("leave", "remove", "dissolve"):
            self.assertIn(op, audit)


if __name__ == "__main__":
    unittest.main(verbosity=2)
