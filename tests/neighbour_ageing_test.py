"""Multi-process test of neighbour ageing in CPNS Entity Discovery (issue 10, item 7), with real
daemons on loopback (tests/lab/cpnslab.py): a CPNS Server, a PN GW and two PNEs that find the
PN GW by UDP multicast, all with a short `neighbour_ttl_ms`. A PNE killed with SIGKILL (its PAN
link closes, nothing else is said) disappears from the PN GW's neighbours once the TTL has passed
since its link went down - not before -, while the PNE still linked stays however long it is
quiet; an invitation of "every discovered PNE" then invites only the live one: the dead one is
not invited at all (no member, no "peer unreachable"). Python 3 standard library only.
"""

import os
import signal
import sys
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import PneSpec, cleanup, make_lab  # noqa: E402

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
            lab.stop_all()
        except BaseException:
            print(lab.logs()[-8000:], flush=True)
            raise
        finally:
            cleanup(lab)


if __name__ == "__main__":
    unittest.main()
