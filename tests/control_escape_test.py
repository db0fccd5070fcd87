"""The PN GW's control endpoint takes requests from local users (its owner and group on the Unix
socket, token holders on TCP): what they send must not
forge log lines (newlines, carriage returns, ANSI escapes) nor break the JSON answers (quotes).

Each request below carries such bytes; every answer must be one line of valid JSON, and the PN
GW's log must hold no raw control byte, no line that the request made up, and the request's
text only in escaped form (\\xNN), on one line.
"""

import json
import os
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import cleanup, control_connect, make_lab  # noqa: E402

BIN = os.path.join(os.environ.get("CPNS_BINARY_DIR", "build/dev"), "apps")
SKIP_PG = (os.environ.get("CPNS_LAB_STORE") == "postgresql" and
           not os.environ.get("CPNS_TEST_PG_URL") and os.environ.get("CPNS_TEST_NO_PG") == "1")
ANSWER_TIMEOUT_S = 30.0

FORGED = "2026-01-01T00:00:00.000 error [gw-1] FORGED"
ESC_RED = "\x1b[31m"


def control_request(addr: str, raw: bytes) -> bytes:
    with control_connect(addr, ANSWER_TIMEOUT_S) as s:
        s.settimeout(ANSWER_TIMEOUT_S)
        s.sendall(raw)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


@unittest.skipIf(SKIP_PG, "CPNS_TEST_NO_PG=1: PostgreSQL runs skipped on purpose")
class ControlEscapeTest(unittest.TestCase):
    def test_hostile_requests_give_escaped_logs_and_valid_json(self):
        lab = make_lab(BIN, [])
        try:
            lab.start_server()
            lab.start_gw()
            lab.wait_server_link()
            requests = [
                # An unknown command with quotes, ESC and a carriage return.
                f'bogus"}}{ESC_RED}\'x\r{FORGED}\n'.encode(),
                # An invitation naming a "PNE" made of escapes, quotes and a forged line.
                f'invite pne-1 "{ESC_RED}\'\x07{FORGED}\n'.encode(),
                # A second line after a valid request: never read, never logged.
                f"status\n{FORGED}\n".encode(),
                # Bytes that are not UTF-8.
                b"\xff\xfe\x1b[2J\n",
            ]
            answers = []
            for raw in requests:
                answer = control_request(lab.control_addr, raw)
                self.assertTrue(answer.endswith(b"\n"), answer)
                self.assertEqual(answer.count(b"\n"), 1, f"one line per answer: {answer!r}")
                try:
                    answers.append(json.loads(answer))
                except ValueError as e:
                    self.fail(f"answer to {raw!r} is not JSON ({e}): {answer!r}")
            self.assertIn("unknown command", answers[0]["error"])
            # An invalid ID ends the invitation with a typed failure, before anything starts.
            self.assertFalse(answers[1].get("success"), answers[1])
            self.assertEqual(answers[1].get("reason"), "MALFORMED_MESSAGE", answers[1])
            self.assertEqual(answers[2]["gw_id"], "gw-1")
            self.assertIn("unknown command", answers[3]["error"])
            # Nothing reached the PN GW's role from the refused invitation.
            self.assertEqual(lab.gw_status().get("active_establishments", 0), 0)

            log = (lab.workdir / "gw.log").read_bytes()
            for bad in (b"\x1b", b"\r", b"\x07", b"\xff"):
                self.assertNotIn(bad, log, f"raw byte {bad!r} in the PN GW's log")
            lines = log.decode().splitlines()
            self.assertFalse([ln for ln in lines if ln.startswith(FORGED[:23])],
                             "a request made up a log line")
            # The request and the role's refusal: one line each, the hostile ID escaped.
            escaped = "\\x22\\x1b[31m\\x27\\x07" + FORGED.split()[0]
            invite = [ln for ln in lines if "control: invite" in ln]
            self.assertEqual(len(invite), 1, invite)
            self.assertIn("control: invite pne-1 " + escaped, invite[0])
            refused = [ln for ln in lines if "cannot invite: invalid PNE ID" in ln]
            self.assertEqual(len(refused), 1, refused)
            self.assertIn(escaped, refused[0])
            unknown = [ln for ln in lines if "unknown command" in ln]
            self.assertEqual(len(unknown), 2, unknown)
            self.assertIn("bogus\\x22}" + "\\x1b[31m\\x27x", unknown[0])
        except BaseException:
            print(lab.logs()[-6000:], flush=True)
            raise
        finally:
            cleanup(lab)


if __name__ == "__main__":
    unittest.main()
