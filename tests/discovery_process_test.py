"""Multi-process test of CPNS Entity Discovery at a running cpns-gw (tests/lab/cpnslab.py): an
answer sent by datagram is never bigger than the request it answers, so a small request (the
24-octet kind of the reflection finding) gets no answer, and a padded one gets at most its own
size back. Python 3 standard library only (unittest); frames are made by cpns-frame.
"""

import json
import os
import socket
import struct
import subprocess
import sys
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import cleanup, make_lab  # noqa: E402

BIN = os.path.join(os.environ.get("CPNS_BINARY_DIR", "build/dev"), "apps")
CPNS_FRAME = Path(BIN) / "cpns-frame" / "cpns-frame"
WAIT_S = 3.0  # for an answer that must not come / must come


def frame(envelope: dict) -> bytes:
    r = subprocess.run([str(CPNS_FRAME), "encode", json.dumps(envelope)], capture_output=True,
                       timeout=10)
    if r.returncode != 0:
        raise RuntimeError(f"cpns-frame encode failed: {r.stderr.decode(errors='replace')}")
    return r.stdout


def ask(group: str, request: bytes) -> list[bytes]:
    """Sends `request` to the group from 127.0.0.1; every datagram that comes back."""
    host, port = group.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, struct.pack("b", 1))
        s.sendto(request, (host, int(port)))
        s.settimeout(0.2)
        got = []
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                got.append(s.recv(65536))
            except socket.timeout:
                pass
        return got
    finally:
        s.close()


class DiscoveryProcessTest(unittest.TestCase):
    def test_datagram_answer_is_never_bigger_than_the_request(self):
        """no amplification: tiny request unanswered, padded request answered within its size"""
        port = 45000 + (os.getpid() % 2000)  # a group of its own: parallel runs do not answer
        lab = make_lab(BIN, [], discovery_group=f"239.255.67.79:{port}")
        try:
            lab.start_server()
            lab.start_gw()
            tiny = frame({"sender_id": "x", "discovery_request": {"entity_id": "x",
                                                                  "mode": "MODE_PNE"}})
            self.assertLess(len(tiny), 30)
            self.assertEqual(ask(lab.discovery_group, tiny), [],
                             f"a {len(tiny)}-octet request was answered")
            padded = frame({"sender_id": "x", "discovery_request": {
                "entity_id": "x", "mode": "MODE_PNE",
                "padding": "A" * 1360}})  # base64 of 1020 zero-ish octets
            answers = ask(lab.discovery_group, padded)
            self.assertEqual(len(answers), 1, "the padded request was not answered once")
            self.assertLessEqual(len(answers[0]), len(padded))
            lab.stop_all()
        except BaseException:
            print(lab.logs()[-6000:], flush=True)
            raise
        finally:
            cleanup(lab)


if __name__ == "__main__":
    unittest.main()
