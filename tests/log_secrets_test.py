"""Structured logs: every line of every daemon is one JSON object, and no key appears in any log.

A CPNS Server, a PN GW and three PNEs run as processes on 127.0.0.1 (tests/lab/cpnslab.py) at
log level debug with `log_format = "json"`: pne-1 and pne-2 with enough UI on an insecure PAN
(PSK-TLS with a LocalEUKey), pne-3 without UI (PSK-TLS with its pre-assigned key). Both flows
run: pne-a (a one-shot `cpns-pne setup`) asks for a PN of type All (5.2.1.1), the PN GW invites
the three (5.2.1.2); then an impostor PNE (an EUKey other than the provisioned one) asks for a
1-1 PN and fails.

Checks, over every log the processes wrote (the daemons' and each `cpns-pne setup`'s):
  - each line parses as a JSON object with exactly the fields time, level, daemon, event, pn,
    peer, reason, msg (strings); debug lines are present; the outcomes carry their PN ID and
    the failure its typed reason;
  - no secret appears, in lower- or upper-case hex or in base64 (standard and URL-safe), whole
    or its first 16 octets: the master key, every EUKey (also the impostor's), every pre-assigned
    key, the PN GW's server PSK (KDF 0x55), every device-state key (KDF 0x56), and every
    LocalEUKey, read from the PNEs' sealed state files (python3-cryptography).
The derivation is that of docs/key-schedule.md. Python 3 standard library plus
python3-cryptography (scripts/deps.sh --with-tests).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import PneSpec, cleanup, make_lab  # noqa: E402

BIN = os.path.join(os.environ.get("CPNS_BINARY_DIR", "build/dev"), "apps")
FIELDS = {"time", "level", "daemon", "event", "pn", "peer", "reason", "msg"}
LEVELS = {"trace", "debug", "info", "warn", "error", "critical"}


def kdf(key: bytes, fc: int, *params: bytes) -> bytes:
    s = bytes([fc]) + b"".join(p + len(p).to_bytes(2, "big") for p in params)
    return hmac.new(key, s, hashlib.sha256).digest()


def pb_fields(data: bytes):
    """(field number, wire type, value) of a protobuf message: varints and length-delimited."""
    i = 0
    while i < len(data):
        key, i = varint(data, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            value, i = varint(data, i)
        elif wt == 2:
            n, i = varint(data, i)
            value, i = data[i:i + n], i + n
        elif wt == 1:
            value, i = data[i:i + 8], i + 8
        elif wt == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wt}")
        yield num, wt, value


def varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def local_eukeys(state_file: Path, pne_id: str, eukey: bytes) -> list[bytes]:
    """Every LocalEUKey in a PNE's sealed state file (PneState memberships, field 4)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # python3-cryptography
    key = kdf(eukey, 0x56, b"cpns device state v1", pne_id.encode())
    blob = state_file.read_bytes()
    magic = b"CPNSST1\x00"
    assert blob[:8] == magic, "not a CPNS state file"
    plain = AESGCM(key).decrypt(blob[8:20], blob[20:], magic + pne_id.encode())
    out = []
    for num, wt, rec in pb_fields(plain):
        if num == 2 and wt == 2:
            fields = {n: v for n, _, v in pb_fields(rec)}
            if fields.get(4):
                out.append(bytes(fields[4]))
    return out


def encodings(secret: bytes) -> list[str]:
    """The texts that would betray `secret` (32 octets): whole, and its first 16 octets."""
    out = []
    for part in (secret, secret[:16]):
        out += [part.hex(), part.hex().upper()]
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        text = enc(secret).decode()
        out += [text[:40], enc(secret[:15]).decode()]  # 30 and 15 octets: no padding
    return out


class LogSecretsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pnes = [PneSpec("pne-1"), PneSpec("pne-2"), PneSpec("pne-3", enough_ui=False)]
        # Run only one-shot `setup` (a daemon of the same ID would hold a second PAN link).
        cls.asker = PneSpec("pne-a")
        cls.impostor = PneSpec("pne-4", wrong_eukey=True)
        cls.lab = make_lab(BIN, cls.pnes + [cls.asker, cls.impostor], log_format="json",
                           log_level="debug")
        try:
            lab = cls.lab
            lab.start_server()
            lab.start_gw()
            for p in cls.pnes:
                lab.start_pne(p)
            lab.wait_linked([p.id for p in cls.pnes])
            lab.wait_server_link()
            cls.setup = lab.pne_setup(cls.asker, "all")
            cls.invite = lab.gw_invite([p.id for p in cls.pnes])
            cls.failed = lab.pne_setup(cls.impostor, "1-1")
            cls.names = [p.name for p in lab.procs]
            lab.stop_all()  # every log complete, every state file written
            cls.logs = {f.name: f.read_bytes() for f in sorted(lab.workdir.glob("*.log"))}
        except BaseException:
            cleanup(cls.lab)
            raise

    @classmethod
    def tearDownClass(cls):
        cleanup(cls.lab)

    def lines(self):
        for name, data in self.logs.items():
            for n, raw in enumerate(data.split(b"\n"), 1):
                if raw.strip():
                    yield name, n, raw

    def records(self) -> list[tuple[str, dict]]:
        return [(name, json.loads(raw)) for name, _, raw in self.lines()]

    def test_both_flows_ran(self):
        rc, out, err = self.setup
        self.assertEqual(rc, 0, f"{out}\n{err}\n{self.lab.logs()}")
        rc, out = self.invite
        self.assertEqual(rc, 0, out)
        rc, out, _ = self.failed
        self.assertNotEqual(rc, 0, out)
        # The daemons' logs and each one-shot setup's.
        for name in ("server.log", "gw.log", "pne-1.log", "pne-2.log", "pne-3.log",
                     "pne-a.setup.log", "pne-4.setup.log"):
            self.assertIn(name, self.logs)

    def test_every_line_is_one_json_object_with_the_fields(self):
        count = 0
        for name, n, raw in self.lines():
            try:
                rec = json.loads(raw)
            except ValueError as e:
                self.fail(f"{name}:{n}: not JSON ({e}): {raw[:300]!r}")
            self.assertIsInstance(rec, dict, f"{name}:{n}")
            self.assertEqual(set(rec), FIELDS, f"{name}:{n}: {rec}")
            for k in FIELDS:
                self.assertIsInstance(rec[k], str, f"{name}:{n}: {k}")
            self.assertIn(rec["level"], LEVELS, f"{name}:{n}")
            self.assertRegex(rec["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            self.assertTrue(rec["msg"], f"{name}:{n}: empty message")
            count += 1
        self.assertGreater(count, 100)

    def test_fields_say_what_happened(self):
        recs = self.records()
        self.assertTrue(any(r["level"] == "debug" for _, r in recs), "no debug line")
        daemons = {r["daemon"] for _, r in recs}
        self.assertTrue({"server", "gw-1", "pne-1", "pne-2", "pne-3", "pne-a", "pne-4"} <= daemons,
                        daemons)
        # The PN GW's outcomes: each names its PN; the messages it handled name their peer.
        pn = self.invite[1]["pn_id"]
        outcomes = [r for name, r in recs if name == "gw.log" and r["event"] == "outcome"]
        self.assertTrue(any(r["pn"] == pn and r["reason"] == "REASON_NONE" for r in outcomes),
                        outcomes)
        self.assertTrue(any(r["event"] == "message" and r["peer"] == "pne-2"
                            for name, r in recs if name == "gw.log"))
        # The failed establishment: its typed reason at the server and at the impostor.
        failed = [r for name, r in recs if name in ("server.log", "pne-4.setup.log")
                  and r["event"] == "outcome" and r["reason"] not in ("", "REASON_NONE")]
        self.assertTrue(failed, "no failed outcome with a reason")

    def test_no_secret_in_any_log(self):
        lab = self.lab
        secrets: dict[str, bytes] = {}
        secrets["master key"] = bytes.fromhex((lab.workdir / "master.key").read_text().strip())
        gw_key = bytes.fromhex(lab.gw_key)
        secrets["EUKey of gw-1"] = gw_key
        secrets["server PSK of gw-1"] = kdf(gw_key, 0x55, lab.gw_id.encode())
        secrets["state key of gw-1"] = kdf(gw_key, 0x56, b"cpns device state v1",
                                           lab.gw_id.encode())
        for p in self.pnes + [self.asker, self.impostor]:
            for what, hexkey in (("EUKey", p.eukey), ("device EUKey", p.device_eukey),
                                 ("pre-assigned key", p.preassigned)):
                if hexkey:
                    secrets[f"{what} of {p.id}"] = bytes.fromhex(hexkey)
            key = bytes.fromhex(p.device_eukey)
            secrets[f"state key of {p.id}"] = kdf(key, 0x56, b"cpns device state v1",
                                                  p.id.encode())
        leuks = 0
        for p in self.pnes + [self.asker]:
            for i, k in enumerate(local_eukeys(lab.workdir / f"{p.id}.state", p.id,
                                               bytes.fromhex(p.eukey))):
                secrets[f"LocalEUKey {i} of {p.id}"] = k
                leuks += 1
        self.assertGreaterEqual(leuks, 3, "the PNEs' state files hold their LocalEUKeys")
        found = []
        for what, secret in secrets.items():
            for text in encodings(secret):
                needle = text.encode()
                for name, data in self.logs.items():
                    if needle in data:
                        found.append(f"{what} as {text} in {name}")
        self.assertEqual(found, [], "secrets in the logs")


if __name__ == "__main__":
    unittest.main(verbosity=2)
