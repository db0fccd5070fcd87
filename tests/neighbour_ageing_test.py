"""Multi-process test of neighbour ageing in CPNS Entity Discovery (issue 10, item 7), with real
daemons on loopback (tests/lab/cpnslab.py): a CPNS Server, a PN GW and two PNEs that find the
PN GW by UDP multicast, all with a short `neighbour_ttl_ms`. A PNE killed with SIGKILL (its PAN
link closes, nothing else is said) disappears from the PN GW's neighbours once the TTL has passed
since its link went down - not before -, while the PNE still linked stays however long it is
quiet; an invitation of "every discovered PNE" then invites only the live one: the dead one is
not invited at all (no member, no "peer unreachable"). The surviving PNE's own view
(`cpns-pne neighbours`) lists its PN GW, linked. Python 3 standard library only.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import PneSpec, cleanup, control_connect, make_lab  # noqa: E402

BIN = os.path.join(os.environ.get("CPNS_BINARY_DIR", "build/dev"), "apps")
TTL_MS = 3000
SLACK_S = 10.0  # on top of the TTL, for a busy machine (the PN GW's timer fires at the TTL)
POLL_S = 0.1


def ids(listing: dict) -> set[str]:
    return {n["id"] for n in listing.get("neighbours", [])}


class NeighbourAgeingTest(unittest.TestCase):
    def test_killed_pne_ages_out_and_is_not_invited(self):
        port = 43000 + (os.getpid() % 2000)  # a group of its own: parallel runs do not mix
        lab = make_lab(BIN, [PneSpec("pne-a", use_discovery=True),
                             PneSpec("pne-b", use_discovery=True)],
                       discovery_group=f"239.255.67.81:{port}", neighbour_ttl_ms=TTL_MS)
        try:
            lab.start_server()
            lab.start_gw()
            lab.start_pne(lab.pnes[0])
            victim = lab.start_pne(lab.pnes[1])
            lab.wait_linked(["pne-a", "pne-b"], timeout=30)
            self.assertTrue(lab.wait_server_link(timeout=30).get("server_link"))

            listing = lab.gw_neighbours()
            self.assertEqual(listing.get("ttl_ms"), TTL_MS, listing)
            self.assertEqual(ids(listing), {"pne-a", "pne-b"}, listing)
            for n in listing["neighbours"]:
                self.assertEqual(n["mode"], "MODE_PNE", n)
                self.assertTrue(n["linked"], n)
                self.assertNotIn("expires_in_ms", n)  # a link holds it

            killed_at = time.monotonic()
            os.killpg(victim.popen.pid, signal.SIGKILL)
            victim.popen.wait(timeout=10)

            # Gone after the TTL (counted from the link's end, which is after the kill).
            gone_after = None
            seen_ageing = None
            deadline = killed_at + TTL_MS / 1000 + SLACK_S
            while time.monotonic() < deadline:
                listing = lab.gw_neighbours()
                now = time.monotonic()
                b = [n for n in listing.get("neighbours", []) if n["id"] == "pne-b"]
                if listing and not b:
                    gone_after = now - killed_at
                    break
                if b and not b[0]["linked"]:
                    seen_ageing = b[0]
                time.sleep(POLL_S)
            self.assertIsNotNone(gone_after, f"pne-b still a neighbour {SLACK_S}s after the "
                                 f"TTL: {listing}")
            self.assertGreaterEqual(gone_after, TTL_MS / 1000,
                                    "pne-b was dropped before its TTL had passed")
            if seen_ageing is not None:  # listed while ageing: with its expiry
                self.assertLessEqual(seen_ageing["expires_in_ms"], TTL_MS, seen_ageing)
            print(f"pne-b gone from the PN GW's neighbours {gone_after:.2f} s after SIGKILL "
                  f"(TTL {TTL_MS / 1000} s); listed while ageing: {seen_ageing}", flush=True)
            self.assertEqual(ids(listing), {"pne-a"}, "the linked PNE must not age")
            self.assertNotIn("pne-b", lab.gw_status().get("neighbours", []))

            # "Every discovered PNE": only pne-a is invited; pne-b is not even a member.
            rc, out = lab.gw_invite([], timeout=120)
            self.assertEqual(rc, 0, out)
            self.assertEqual([p["pne_id"] for p in out.get("pnes", [])], ["pne-a"], out)
            self.assertTrue(out["pnes"][0].get("joined"), out)

            gw_log = (lab.workdir / "gw.log").read_text()
            self.assertIn("neighbour pne-b aged out", gw_log)
            self.assertNotIn("pne-b excluded", gw_log)
            self.assertNotIn("PnSetupInvite to pne-b", gw_log)
            self.assertNotIn("cannot send PnSetupInvite to pne-b", gw_log)
            # The PNE's view: its PN GW, found by multicast and held by the PAN link.
            view = lab.pne_neighbours(lab.pnes[0])
            self.assertEqual(view.get("entity_id"), "pne-a", view)
            self.assertEqual(view.get("ttl_ms"), TTL_MS, view)
            gws = [n for n in view.get("neighbours", []) if n["id"] == lab.gw_id]
            self.assertEqual(len(gws), 1, view)
            self.assertEqual(gws[0]["mode"], "MODE_PN_GW")
            self.assertTrue(gws[0]["linked"], gws[0])
            self.assertEqual(gws[0]["endpoint"], lab.pan_addr)
            # Anything else gets one line of JSON naming what it does answer.
            with control_connect(lab.pne_control_addr(lab.pnes[0]), 10) as c:
                c.sendall(b"status\x01\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = c.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            self.assertIn("use: neighbours", json.loads(data)["error"])
            lab.stop_all()
        except BaseException:
            print(lab.logs()[-8000:], flush=True)
            raise
        finally:
            cleanup(lab)

    def test_ttl_outside_its_bounds_is_refused_at_start(self):
        """neighbour_ttl_ms below 1 s, above 24 h or not an integer: exit status 2, named"""
        with tempfile.TemporaryDirectory(prefix="cpns-ttl-") as d:
            for program, extra, value, why in [
                ("cpns-gw", "", "999", "must be 1000..86400000"),
                ("cpns-gw", "", "86400001", "must be 1000..86400000"),
                ("cpns-pne", 'gw = "127.0.0.1:1"\n', '"3s"', "must be an integer"),
                ("cpns-pne", 'gw = "127.0.0.1:1"\n', "0", "must be 1000..86400000"),
            ]:
                cfg = Path(d) / f"{program}.toml"
                cfg.write_text(f'id = "x-1"\neukey = "{secrets.token_hex(32)}"\n{extra}'
                               f"neighbour_ttl_ms = {value}\n")
                os.chmod(cfg, 0o600)
                r = subprocess.run([str(Path(BIN) / program / program), "--config", str(cfg),
                                    "run"], capture_output=True, text=True, timeout=10)
                self.assertEqual(r.returncode, 2, f"{program} {value}: {r.stderr}")
                self.assertIn(f"'neighbour_ttl_ms' {why}", r.stderr)


if __name__ == "__main__":
    unittest.main()
