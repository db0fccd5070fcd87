"""Multi-process tests of the PN GW's admission and of forged PSK-TLS failures, with real
daemons on 127.0.0.1 (tests/lab/cpnslab.py):

- setup requests in clear with made-up IDs, each inviting a silent made-up peer, fill only the
  share of the PN GW's establishments that clear requests may hold: a PNE over PSK-TLS still
  gets its PN;
- a ClientHello with a wrong key under a PNE's identity, sent while that PNE has its own working
  PSK-TLS link, does not cost that PNE its place in the next PN, nor its result.

Python 3 standard library only (unittest); the frames are made by cpns-frame.
"""

import base64
import dataclasses
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import PneSpec, cleanup, make_lab  # noqa: E402

BIN = os.path.join(os.environ.get("CPNS_BINARY_DIR", "build/dev"), "apps")
CPNS_FRAME = Path(BIN) / "cpns-frame" / "cpns-frame"
MADE_UP = 16          # = kMaxGwSessions: before the fix these took every slot
RESULT_WAIT_S = 30.0  # well under the PNE's 60 s kResultTimeout


def frame(envelope: dict) -> bytes:
    r = subprocess.run([str(CPNS_FRAME), "encode", json.dumps(envelope)], capture_output=True,
                       timeout=10)
    if r.returncode != 0:
        raise RuntimeError(f"cpns-frame encode failed: {r.stderr.decode(errors='replace')}")
    return r.stdout


def clear_link(addr: str, first: bytes) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(first)
    return s


def discovery(entity: str) -> bytes:
    return frame({"sender_id": entity,
                  "discovery_request": {"entity_id": entity, "mode": "MODE_PNE"}})


def setup_request(pne: str, invited: str) -> bytes:
    rand_pne = base64.b64encode(secrets.token_bytes(16)).decode()
    return frame({
        "sender_id": pne,
        "setup_request": {
            "setup_type": "SETUP_INVITE_LIST",
            "invited_pne_ids": [invited],
            "join": {"pne_id": pne, "rand_pne": rand_pne, "local_eukey_requested": True,
                     "capabilities": {"enough_ui": True}},
        },
    })


def wait_for(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


class AdmissionTest(unittest.TestCase):
    maxDiff = None

    def run_lab(self, pnes, body):
        lab = make_lab(BIN, pnes)
        try:
            lab.start_server()
            lab.start_gw()
            self.assertTrue(lab.wait_server_link().get("server_link"), "PN GW not linked")
            body(lab)
            lab.stop_all()
        except BaseException:
            print(lab.logs()[-8000:], flush=True)
            raise
        finally:
            cleanup(lab)

    def test_clear_setup_flood_leaves_room_for_psk_tls(self):
        """made-up clear setup requests cannot block a PNE over PSK-TLS"""
        sensor = PneSpec("pne-c", enough_ui=False, pan_secure=False, device_type="sensor")

        def body(lab):
            links = []
            try:
                # Silent made-up peers announce themselves, then made-up initiators invite them.
                for i in range(MADE_UP):
                    links.append(clear_link(lab.pan_addr, discovery(f"silent-{i}")))
                self.assertTrue(wait_for(
                    lambda: len(lab.gw_status().get("neighbours", [])) >= MADE_UP, 10.0),
                    lab.gw_status())
                for i in range(MADE_UP):
                    links.append(clear_link(lab.pan_addr,
                                            setup_request(f"made-up-{i}", f"silent-{i}")))
                self.assertTrue(wait_for(
                    lambda: lab.gw_status().get("failures", {}).get("limit exceeded", 0) > 0
                    or lab.gw_status().get("active_establishments", 0) >= MADE_UP, 10.0))
                held = lab.gw_status().get("active_establishments", 0)
                self.assertGreater(held, 0, "the made-up requests were not even taken")
                self.assertLess(held, MADE_UP, "clear requests took every slot")
                rc, out, err = lab.pne_setup(sensor, "1-1", timeout=60)
                self.assertEqual(rc, 0, f"PSK-TLS PNE refused: {out} {err[-1500:]}")
                self.assertTrue(out.get("success"), out)
            finally:
                for s in links:
                    s.close()

        self.run_lab([sensor], body)

    def test_forged_tls_failure_does_not_cost_a_linked_pne_its_result(self):
        """a wrong-key ClientHello naming a linked PNE changes nothing for it"""
        headset = PneSpec("pne-a", enough_ui=True, pan_secure=False)
        sensor = PneSpec("pne-c", enough_ui=False, pan_secure=False, device_type="sensor")

        def body(lab):
            lab.start_pne(headset)
            real = lab.start_pne(sensor)
            lab.wait_linked(["pne-a", "pne-c"])
            # Someone else uses pne-c's identity with a wrong key: the handshake fails.
            forger = dataclasses.replace(sensor, wrong_preassigned=True)
            rc, _, err = lab.pne_setup(forger, "1-1", timeout=60)
            self.assertNotEqual(rc, 0, "the forged handshake succeeded?")
            gw_log = next(p for p in lab.procs if p.name == "gw").log
            self.assertTrue(wait_for(lambda: "as pre:pne-c failed" in gw_log.read_text(), 10.0),
                            "the PN GW saw no failed handshake as pre:pne-c: " + err[-1500:])
            rc, out = lab.gw_invite(["pne-a", "pne-c"])
            self.assertEqual(rc, 0, out)
            joined = sorted(m["pne_id"] for m in out.get("inventory", {}).get("members", []))
            self.assertEqual(joined, ["pne-a", "pne-c"], out)
            # pne-c is told over its working PSK-TLS link (before: its result was withheld).
            needle = f"joined PN {out['pn_id']}"
            self.assertTrue(wait_for(lambda: needle in real.log.read_text(), RESULT_WAIT_S),
                            real.log.read_text()[-3000:])

        self.run_lab([headset, sensor], body)


if __name__ == "__main__":
    unittest.main()
