"""The Wireshark dissector (tools/wireshark/cpns.lua) on a real capture.

A CPNS Server, a PN GW and four PNEs (as in the main job, scripts/demo.py: PSK-TLS with a
LocalEUKey, PSK-TLS with a pre-assigned key, two clear PAN links, one PNE that finds its PN GW by
Entity Discovery) run on 127.0.0.1 with SSLKEYLOGFILE set while dumpcap captures their ports on
the loopback interface (once with TLS 1.3 on the PAN, once with TLS 1.2). They establish a PN
with each flow (5.2.1.1 `cpns-pne setup --type all`, 5.2.1.2 `cpns-gw invite`); then a PNE
leaves that second PN and the PN GW dissolves it. Two malformed frames are sent to the PAN port.
tshark then dissects the capture with the dissector and the key log, and the test checks what an
operator would rely on:

  * every message type of both flows, of Entity Discovery and of the PN lifecycle is found and
    decoded, including inside PSK-TLS on the PAN (both kinds of PSK) and on the server link;
  * the messages dissected are exactly those the PN GW's event trace says it sent and received,
    with the same PN IDs, the same sender and the same protection (clear or TLS);
  * PN IDs, PNE IDs and the setup type in the dissected fields equal what the daemons reported;
  * each malformed frame is an expert-info error, and no Lua error appears anywhere, also for
    400 frames of the run cut or altered at random;
  * the packet list names each message with its PN and failure reason;
  * Wireshark's own Protobuf dissector, given messages.proto, shows the same message types
    (preference cpns.protobuf_view);
  * the dissector's message table is the one the .proto gives (and the check notices a field
    added to the .proto).

Skips only when tshark is not installed and CPNS_REQUIRE_TSHARK is unset. Needs the right to
capture on the loopback interface (root, or dumpcap's capabilities).
"""

import collections
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import PneSpec, cleanup, free_port, make_lab  # noqa: E402

BIN = os.path.join(os.environ.get("CPNS_BINARY_DIR", "build/dev"), "apps")
SOURCE_DIR = Path(os.environ.get("CPNS_SOURCE_DIR") or Path(__file__).resolve().parent.parent)
LUA = SOURCE_DIR / "tools" / "wireshark" / "cpns.lua"
GEN_SCHEMA = SOURCE_DIR / "tools" / "wireshark" / "gen_schema.py"
TSHARK = shutil.which("tshark")
DUMPCAP = shutil.which("dumpcap")
REQUIRE_TSHARK = bool(os.environ.get("CPNS_REQUIRE_TSHARK"))
SANITIZER = os.environ.get("CPNS_SANITIZER") == "1"

CAPTURE_START_TIMEOUT_S = 10.0  # dumpcap reports that it captures
CAPTURE_MAX_S = 180             # dumpcap stops by itself after this (-a duration)
CAPTURE_STOP_TIMEOUT_S = 10.0
CAPTURE_SETTLE_S = 0.3          # after dumpcap reports, before the first packet is sent
FLUSH_WAIT_S = 0.5              # after the last packet, before dumpcap is stopped
TSHARK_TIMEOUT_S = 120.0
COMMAND_TIMEOUT_S = 90.0        # one establishment or change on a busy 2-core machine
LINK_TIMEOUT_S = 30.0 if not SANITIZER else 60.0
MUTATIONS = 400                 # mutated frames dissected (well under a second of tshark)
GW_ID = "gw-1"
SERVER_ID = "cpns-server"

FLOW_5211 = {"PnSetupRequest", "PnSetupNotify", "PnSetupNotifyResponse",
             "PnRegistrationRequest", "AuthenticationRequest", "PneAuthenticationRequest",
             "PneAuthenticationResponse", "AuthenticationResponse", "PnRegistrationResponse",
             "PnSetupResponse", "PnEstablishmentNotify"}
FLOW_5212 = {"PnSetupInvite", "PnSetupNotifyResponse", "PnRegistrationRequest",
             "AuthenticationRequest", "PneAuthenticationRequest", "PneAuthenticationResponse",
             "AuthenticationResponse", "PnRegistrationResponse", "PnEstablishmentNotify"}
DISCOVERY = {"EntityDiscoveryRequest", "EntityDiscoveryResponse"}
LIFECYCLE = {"PnLeaveRequest", "PnLeaveResponse", "PnChangeRequest", "PnChangeResponse",
             "PnChangeNotify"}
# The PN GW's trace has no send/recv events for these: the discovery exchange that opens every
# PAN link (and the datagrams), and its ErrorReport answer to an undecodable frame.
UNTRACED = DISCOVERY | {"ErrorReport"}
SERVER_LINK = {"PnRegistrationRequest", "AuthenticationRequest", "AuthenticationResponse",
               "PnRegistrationResponse", "PnChangeRequest", "PnChangeResponse"}

# A frame whose Envelope announces a 10-octet sender_id and ends after 2, and a frame whose
# length is over the 64 KiB maximum (docs/protocol.md, "Decoding and typed errors").
TRUNCATED_FIELD_FRAME = bytes([0, 0, 0, 6, 0x08, 0x01, 0x12, 0x0a, 0x61, 0x62])
TOO_LARGE_FRAME = bytes([0, 0x10, 0, 0]) + b"\x08\x01"


class Frame:
    """One dissected CPNS frame (one <proto name="cpns"> of tshark's PDML)."""

    def __init__(self, packet: int, proto: ET.Element, tls: bool, tcp_ports: tuple, udp: bool):
        self.packet, self.proto, self.tls, self.tcp_ports, self.udp = (packet, proto, tls,
                                                                     tcp_ports, udp)
        self.msgtype = self.first("cpns.msgtype")
        self.sender = self.first("cpns.Envelope.sender_id")
        self.body = None
        for f in proto.iter("field"):
            if f.get("name", "").startswith("cpns.Envelope.") and \
                    f.get("name")[len("cpns.Envelope."):] not in ("version", "sender_id"):
                self.body = f
                break

    def first(self, name: str, under: ET.Element | None = None):
        for f in (under if under is not None else self.proto).iter("field"):
            if f.get("name") == name:
                return f.get("show")
        return None

    def all(self, name: str) -> list[str]:
        return [f.get("show") for f in self.proto.iter("field") if f.get("name") == name]

    def child(self, elem: ET.Element, name: str):
        for f in elem.findall("field"):
            if f.get("name") == name:
                return f
        return None

    def pn_id(self) -> str:
        """As the event trace names it: the body's pn_id, or its result's (trace.cpp)."""
        if self.body is None or not self.msgtype:
            return ""
        f = self.child(self.body, f"cpns.{self.msgtype}.pn_id")
        if f is not None:
            return f.get("show")
        result = self.child(self.body, f"cpns.{self.msgtype}.result")
        if result is not None:
            f = self.child(result, "cpns.PnResult.pn_id")
            if f is not None:
                return f.get("show")
        return ""

    def enum_name(self, name: str):
        """An enum field shown by name: "SETUP_ALL (2)" -> "SETUP_ALL"."""
        for f in self.proto.iter("field"):
            if f.get("name") == name:
                return f.get("showname", "").split(": ", 1)[-1].rsplit(" (", 1)[0]
        return None

    def experts(self) -> list[str]:
        return [f.get("showname", "") for f in self.proto.iter("field")
                if f.get("name") == "_ws.expert"]


def dissect(capture: Path, keylog: Path, ports: dict,
            extra: list[str] | None = None) -> tuple[list[Frame], str, str]:
    args = [TSHARK, "-r", str(capture), "-X", f"lua_script:{LUA}",
            "-o", f"tls.keylog_file:{keylog}",
            "-o", f"cpns.pan_port:{ports['pan']}", "-o", f"cpns.server_port:{ports['server']}",
            "-o", f"cpns.discovery_port:{ports['discovery']}", "-T", "pdml"] + (extra or [])
    r = subprocess.run(args, capture_output=True, text=True, errors="replace",
                       timeout=TSHARK_TIMEOUT_S)
    if r.returncode != 0:
        raise RuntimeError(f"tshark failed ({r.returncode}): {r.stderr}")
    frames = []
    root = ET.fromstring(r.stdout)
    for pkt in root.iter("packet"):
        protos = pkt.findall("proto")
        names = [p.get("name") for p in protos]
        number = int(next(f.get("show") for f in pkt.iter("field") if f.get("name") == "num"))
        tcp_ports = ()
        for p in protos:
            if p.get("name") == "tcp":
                tcp_ports = tuple(int(f.get("show")) for f in p.iter("field")
                                  if f.get("name") in ("tcp.srcport", "tcp.dstport"))
        for p in protos:
            if p.get("name") == "cpns":
                frames.append(Frame(number, p, "tls" in names, tcp_ports, "udp" in names))
    return frames, r.stdout, r.stderr


@unittest.skipIf(not TSHARK and not REQUIRE_TSHARK,
                 "tshark is not installed (scripts/deps.sh --with-tests installs it; "
                 "CPNS_REQUIRE_TSHARK=1 makes this a failure)")
class DissectorCaptureTest(unittest.TestCase):
    PAN_TLS = "tls13"  # the PSK-TLS of the PAN links (the server link is always TLS 1.3)

    @classmethod
    def setUpClass(cls):
        if not TSHARK or not DUMPCAP:
            raise RuntimeError("CPNS_REQUIRE_TSHARK is set and tshark or dumpcap is missing")
        cls.work = Path(tempfile.mkdtemp(prefix="cpns-dissector-"))
        cls.ports = {"server": free_port(), "pan": free_port(),
                     "discovery": 45000 + (os.getpid() % 2000)}
        cls.pnes = [
            PneSpec("pne-1", enough_ui=True, pan_secure=False, device_type="phone"),
            PneSpec("pne-2", enough_ui=False, pan_secure=False, device_type="headset"),
            PneSpec("pne-3", enough_ui=True, pan_secure=True, device_type="tv"),
            PneSpec("pne-4", enough_ui=False, pan_secure=True, device_type="sensor",
                    use_discovery=True),
        ]
        for p in cls.pnes:
            p.pan_tls = cls.PAN_TLS
        lab = make_lab(BIN, cls.pnes, discovery_group=f"239.255.67.81:{cls.ports['discovery']}",
                       trace="on", server_listen=f"127.0.0.1:{cls.ports['server']}",
                       gw_pan_listen=f"127.0.0.1:{cls.ports['pan']}", gw_pan_tls=cls.PAN_TLS)
        cls.lab = lab
        cls.keylog = lab.workdir / "keys.log"
        lab.keylog = str(cls.keylog)
        cls.capture = cls.work / "cpns.pcapng"
        dumpcap = cls.start_capture()
        try:
            cls.run_scenario()
        except BaseException:
            print(lab.logs()[-8000:], flush=True)
            cls.stop_capture(dumpcap)
            cleanup(lab)
            shutil.rmtree(cls.work, ignore_errors=True)
            raise
        try:
            lab.stop_all()
        finally:
            cls.gw_trace = lab.read_trace("gw")
            cls.gw_log = (lab.workdir / "gw.log").read_text(errors="replace")
            cls.server_log = (lab.workdir / "server.log").read_text(errors="replace")
            time.sleep(FLUSH_WAIT_S)
            cls.stop_capture(dumpcap)
        t0 = time.monotonic()
        cls.frames, cls.pdml, cls.tshark_stderr = dissect(cls.capture, cls.keylog, cls.ports)
        cls.tshark_s = time.monotonic() - t0
        print(f"captured {cls.capture.stat().st_size} octets; tshark dissected "
              f"{len(cls.frames)} CPNS frames in {cls.tshark_s:.1f} s", flush=True)

    @classmethod
    def tearDownClass(cls):
        if os.environ.get("CPNS_TEST_KEEP_LOGS"):
            print(f"capture and key log kept in {cls.work}, {cls.lab.workdir}")
            return
        cleanup(cls.lab)
        shutil.rmtree(cls.work, ignore_errors=True)

    @classmethod
    def start_capture(cls) -> subprocess.Popen:
        flt = (f"tcp port {cls.ports['server']} or tcp port {cls.ports['pan']} or "
               f"udp port {cls.ports['discovery']}")
        err = cls.work / "dumpcap.err"
        with open(err, "wb") as f:
            p = subprocess.Popen([DUMPCAP, "-i", "lo", "-f", flt, "-w", str(cls.capture), "-q",
                                  "-a", f"duration:{CAPTURE_MAX_S}"], stdout=subprocess.DEVNULL,
                                 stderr=f, start_new_session=True)
        deadline = time.monotonic() + CAPTURE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = err.read_text(errors="replace")
            if "File:" in text:
                time.sleep(CAPTURE_SETTLE_S)
                return p
            if p.poll() is not None:
                raise RuntimeError(f"dumpcap exited with {p.returncode}: {text}")
            time.sleep(0.05)
        p.kill()
        raise RuntimeError(f"dumpcap did not start capturing within {CAPTURE_START_TIMEOUT_S} s: "
                           + err.read_text(errors="replace"))

    @classmethod
    def stop_capture(cls, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=CAPTURE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    @classmethod
    def run_scenario(cls):
        lab, pnes = cls.lab, cls.pnes
        lab.start_server()
        lab.start_gw()
        lab.wait_server_link()
        for p in pnes[1:]:
            lab.start_pne(p)
        lab.wait_linked([p.id for p in pnes[1:]], timeout=LINK_TIMEOUT_S)
        # 5.2.1.1: pne-1 asks for a PN with every device the PN GW knows.
        rc, cls.setup_out, err = lab.pne_setup(pnes[0], "all", timeout=COMMAND_TIMEOUT_S)
        assert rc == 0, f"cpns-pne setup failed ({rc}): {cls.setup_out} {err}"
        # 5.2.1.2: the PN GW invites every linked PNE.
        lab.start_pne(pnes[0])
        lab.wait_linked([p.id for p in pnes], timeout=LINK_TIMEOUT_S)
        rc, cls.invite_out = lab.gw_invite(timeout=COMMAND_TIMEOUT_S)
        assert rc == 0, f"cpns-gw invite failed ({rc}): {cls.invite_out}"
        pn = cls.invite_out["pn_id"]
        # The PN lifecycle: pne-1 leaves the second PN (its daemon stopped first, one process
        # per state file), then the PN GW dissolves it.
        lab.stop(next(p for p in lab.procs if p.name == "pne-1"))
        cfg = lab.workdir / "pne-1.toml"
        env = dict(os.environ, SSLKEYLOGFILE=str(cls.keylog))
        r = subprocess.run([os.path.join(BIN, "cpns-pne", "cpns-pne"), "--config", str(cfg),
                            "leave", "--pn", pn], capture_output=True, text=True, env=env,
                           timeout=COMMAND_TIMEOUT_S)
        assert r.returncode == 0, f"cpns-pne leave failed: {r.stdout} {r.stderr}"
        r = subprocess.run([os.path.join(BIN, "cpns-gw", "cpns-gw"), "dissolve", "--pn", pn,
                            "--control", lab.control_addr], capture_output=True, text=True,
                           timeout=COMMAND_TIMEOUT_S)
        assert r.returncode == 0, f"cpns-gw dissolve failed: {r.stdout} {r.stderr}"
        # Two malformed frames, each on a connection of its own (the PN GW closes it).
        for bad in (TRUNCATED_FIELD_FRAME, TOO_LARGE_FRAME):
            with socket.create_connection(("127.0.0.1", cls.ports["pan"]), timeout=5) as s:
                s.sendall(bad)
                s.settimeout(5)
                try:
                    s.recv(1)  # until the PN GW closes the link
                except OSError:
                    pass

    # --- the checks --------------------------------------------------------------------------
    def good_frames(self) -> list[Frame]:
        return [f for f in self.frames if f.msgtype]

    def test_every_message_type_is_decoded(self):
        """both flows, Entity Discovery and the lifecycle, each decoded with its body"""
        found = {f.msgtype for f in self.good_frames()}
        for name in sorted(FLOW_5211 | FLOW_5212 | DISCOVERY | LIFECYCLE | {"ErrorReport"}):
            self.assertIn(name, found, f"no {name} dissected; found {sorted(found)}")
        for f in self.good_frames():
            self.assertIsNotNone(f.body, f"packet {f.packet}: {f.msgtype} without its body")
            self.assertEqual(f.first("cpns.Envelope.version"), "1")
            self.assertTrue(f.sender, f"packet {f.packet}: no sender_id")

    def test_packet_list_names_each_message(self):
        """Protocol column CPNS, Info column: the message, its PN and failure reason"""
        r = subprocess.run([TSHARK, "-r", str(self.capture), "-X", f"lua_script:{LUA}",
                            "-o", f"tls.keylog_file:{self.keylog}",
                            "-o", f"cpns.pan_port:{self.ports['pan']}",
                            "-o", f"cpns.server_port:{self.ports['server']}",
                            "-o", f"cpns.discovery_port:{self.ports['discovery']}", "-Y", "cpns",
                            "-T", "fields", "-e", "frame.number", "-e", "_ws.col.Protocol",
                            "-e", "_ws.col.Info"], capture_output=True, text=True,
                           errors="replace", timeout=TSHARK_TIMEOUT_S)
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = {int(n): (proto, info) for n, proto, info in
                (line.split("\t", 2) for line in r.stdout.splitlines())}
        by_packet = collections.defaultdict(list)
        for f in self.frames:
            by_packet[f.packet].append(f)
        self.assertEqual(set(rows), set(by_packet))
        for n, frames in by_packet.items():
            proto, info = rows[n]
            self.assertEqual(proto, "CPNS", f"packet {n}")
            parts = info.split(", ")
            self.assertEqual(len(parts), len(frames), f"packet {n}: {info}")
            for part, f in zip(parts, frames):
                if not f.msgtype:
                    self.assertIn("Malformed", part)
                    continue
                self.assertTrue(part.startswith(f.msgtype), f"packet {n}: {info}")
                if f.pn_id():
                    self.assertIn(f"pn={f.pn_id()}", part)
                reason = f.enum_name("cpns.ErrorReport.reason")
                if reason:
                    self.assertIn(f"reason={reason}", part)

    def test_tls_is_decrypted_on_the_pan_and_the_server_link(self):
        """PSK-TLS (pre-assigned key and LocalEUKey) on the PAN and the server link, decrypted"""
        server = [f for f in self.good_frames() if self.ports["server"] in f.tcp_ports]
        self.assertTrue(server)
        self.assertTrue(all(f.tls for f in server), "a server-link frame outside TLS")
        self.assertEqual({f.msgtype for f in server}, SERVER_LINK)
        pan_tls = [f for f in self.good_frames() if self.ports["pan"] in f.tcp_ports and f.tls]
        # pne-2 speaks TLS with its pre-assigned key from the first octet: its answer to the
        # notify; pne-1 opens a LocalEUKey session for its authentication response.
        senders = {(f.msgtype, f.sender) for f in pan_tls}
        self.assertIn(("PnSetupNotifyResponse", "pne-2"), senders)
        self.assertIn(("PneAuthenticationResponse", "pne-1"), senders)
        self.assertIn(("PneAuthenticationResponse", "pne-2"), senders)
        # the clear links of pne-3 and pne-4 are decoded too
        clear = {f.sender for f in self.good_frames()
                 if self.ports["pan"] in f.tcp_ports and not f.tls}
        self.assertTrue({"pne-3", "pne-4"} <= clear, clear)
        secrets = self.keylog.read_text()
        self.assertIn("CLIENT_TRAFFIC_SECRET_0", secrets)  # the server link: TLS 1.3
        if self.PAN_TLS == "tls12":
            self.assertIn("CLIENT_RANDOM", secrets)

    def test_frames_match_the_pn_gw_trace(self):
        """the dissected messages are those the PN GW traced: type, PN, sender, protection"""
        traced = collections.Counter()
        for ev in self.gw_trace:
            if ev.get("event") not in ("send", "recv") or not ev.get("message"):
                continue
            if ev["message"] in UNTRACED:
                continue
            sender = GW_ID if ev["event"] == "send" else ev.get("peer", "")
            traced[(ev["message"], ev.get("pn_id", ""), sender,
                    ev.get("detail") == "tls")] += 1
        dissected = collections.Counter((f.msgtype, f.pn_id(), f.sender, f.tls)
                                        for f in self.good_frames()
                                        if not f.udp and f.msgtype not in UNTRACED)
        self.assertTrue(traced)
        self.assertEqual(dissected, traced,
                         f"only dissected: {dissected - traced}; only traced: {traced - dissected}")

    def test_field_values_equal_what_the_daemons_reported(self):
        """PN IDs, PNE IDs and setup type of each flow"""
        frames = self.good_frames()
        pn1, pn2 = self.setup_out["pn_id"], self.invite_out["pn_id"]
        self.assertNotEqual(pn1, pn2)
        # 5.2.1.1: the setup request of pne-1, type All; the registration of pn1 carries it
        setup = [f for f in frames if f.msgtype == "PnSetupRequest"]
        self.assertEqual(len(setup), 1)
        self.assertEqual(setup[0].sender, "pne-1")
        self.assertEqual(setup[0].enum_name("cpns.PnSetupRequest.setup_type"), "SETUP_ALL")
        self.assertEqual(setup[0].first("cpns.PneJoin.pne_id"), "pne-1")
        regs = {f.pn_id(): f for f in frames if f.msgtype == "PnRegistrationRequest"}
        self.assertEqual(set(regs), {pn1, pn2})
        self.assertEqual(regs[pn1].enum_name("cpns.PnRegistrationRequest.setup_type"),
                         "SETUP_ALL")
        self.assertEqual(regs[pn1].enum_name("cpns.PnRegistrationRequest.flow"),
                         "FLOW_PNE_INITIATED")
        self.assertEqual(regs[pn2].enum_name("cpns.PnRegistrationRequest.flow"),
                         "FLOW_GW_INITIATED")
        # the members each flow reported equal the PNE IDs in the server's answer
        for pn, out in ((pn1, self.setup_out), (pn2, self.invite_out)):
            members = {m["pne_id"] for m in out["inventory"]["members"]}
            resp = [f for f in frames if f.msgtype == "PnRegistrationResponse" and f.pn_id() == pn]
            self.assertEqual(len(resp), 1)
            self.assertEqual(resp[0].first("cpns.PnRegistrationResponse.registered"), "1")
            self.assertEqual(set(resp[0].all("cpns.PnMember.pne_id")), members)
            self.assertEqual(set(resp[0].all("cpns.PneRegistrationResult.pne_id")), members)
            self.assertEqual(set(resp[0].all("cpns.pne_id")), members)  # the filter field
            auths = {f.sender for f in frames
                     if f.msgtype == "PneAuthenticationResponse" and f.pn_id() == pn}
            self.assertEqual(auths, members)
        # the lifecycle: pne-1 left pn2, then the PN GW dissolved it
        ops = [(f.enum_name("cpns.PnChangeRequest.op"), f.first("cpns.PnChangeRequest.pne_id"))
               for f in frames if f.msgtype == "PnChangeRequest" and f.pn_id() == pn2]
        self.assertEqual(ops, [("CHANGE_LEAVE", "pne-1"), ("CHANGE_DISSOLVE", None)])
        leave = [f for f in frames if f.msgtype == "PnLeaveRequest"]
        self.assertEqual([(f.sender, f.pn_id()) for f in leave], [("pne-1", pn2)])
        # Entity Discovery: pne-4 asked, the PN GW answered with its PAN endpoint
        req = [f for f in frames if f.msgtype == "EntityDiscoveryRequest"]
        resp = [f for f in frames if f.msgtype == "EntityDiscoveryResponse"]
        self.assertIn("pne-4", {f.first("cpns.EntityDiscoveryRequest.entity_id") for f in req})
        self.assertIn(f"127.0.0.1:{self.ports['pan']}",
                      {f.first("cpns.EntityDiscoveryResponse.endpoint") for f in resp})
        self.assertEqual({f.enum_name("cpns.EntityDiscoveryResponse.mode") for f in resp},
                         {"MODE_PN_GW"})

    def test_field_values_equal_the_daemons_log_lines(self):
        """what the PN GW and the server logged, rebuilt from the dissected fields"""
        frames = self.good_frames()
        setup = next(f for f in frames if f.msgtype == "PnSetupRequest")
        notify = next(f for f in frames if f.msgtype == "PnSetupNotify")
        self.assertIn(f"PN Setup Request from {setup.sender} "
                      f"({setup.enum_name('cpns.PnSetupRequest.setup_type')}): allocated "
                      f"{notify.pn_id()}, notifying", self.gw_log)
        for reg in (f for f in frames if f.msgtype == "PnRegistrationRequest"):
            n = len(reg.all("cpns.PneJoin.pne_id"))
            self.assertIn(f"PN Registration Request {reg.pn_id()} from "
                          f"{reg.first('cpns.GwInfo.gw_id')}: {n} of {n} PNE(s)",
                          self.server_log)
        for resp in (f for f in frames if f.msgtype == "PnRegistrationResponse"):
            line = next((ln for ln in self.gw_log.splitlines()
                         if f"PN {resp.pn_id()} established: {{" in ln), None)
            self.assertIsNotNone(line, f"no 'PN {resp.pn_id()} established' in gw.log")
            logged = json.loads(line.split(" established: ", 1)[1])
            self.assertEqual({m["pne_id"] for m in logged["inventory"]["members"]},
                             set(resp.all("cpns.PnMember.pne_id")))
            self.assertEqual(logged["inventory"]["gw_id"], resp.first("cpns.PnInventory.gw_id"))

    def test_malformed_frames_are_expert_errors_not_lua_errors(self):
        """each malformed frame: an expert-info error; the dissector raises no Lua error"""
        bad = [f for f in self.frames if not f.msgtype]
        texts = [" | ".join(f.experts()) for f in bad]
        self.assertEqual(len(bad), 2, texts)
        self.assertIn("Expert Info (Error/Malformed): field 2 announces 10 octets; 2 left in "
                      "Envelope", texts[0])
        self.assertIn("Expert Info (Error/Malformed): length 1048576 is over the maximum of "
                      "65536 octets", texts[1])
        # the PN GW answers each with an ErrorReport whose typed reason is shown by name
        errors = [(f.sender, f.enum_name("cpns.ErrorReport.reason")) for f in self.good_frames()
                  if f.msgtype == "ErrorReport"]
        self.assertEqual(errors, [(GW_ID, "MALFORMED_MESSAGE"), (GW_ID, "FRAME_TOO_LARGE")])
        self.assertNotIn("Lua Error", self.pdml)
        self.assertNotIn("cpns.internal_error", self.pdml)
        self.assertNotIn("Lua", self.tshark_stderr)
        # and no well-formed frame carries an error
        for f in self.good_frames():
            for e in f.experts():
                self.assertNotIn("(Error/", e, f"packet {f.packet}: {f.msgtype}: {e}")

    def test_wiresharks_protobuf_view_with_the_proto(self):
        """cpns.protobuf_view: Wireshark's Protobuf dissector shows each body from messages.proto"""
        wkt = Path("/usr/include/google/protobuf/struct.proto")  # libprotobuf-dev (build dep)
        self.assertTrue(wkt.exists(), f"{wkt} missing: scripts/deps.sh installs libprotobuf-dev")
        frames, pdml, stderr = dissect(self.capture, self.keylog, self.ports, [
            "-o", "cpns.protobuf_view:TRUE",
            "-o", f'uat:protobuf_search_paths:"{wkt.parent.parent.parent}","FALSE"',
            "-o", f'uat:protobuf_search_paths:"{SOURCE_DIR / "proto"}","TRUE"'])
        good = [f for f in frames if f.msgtype]
        self.assertEqual(len(good), len(self.good_frames()))
        for f in good:
            names = {e.get("show") for e in f.proto.iter("field")
                     if e.get("name") == "protobuf.message.name"}
            self.assertIn(f"cpns.v1.{f.msgtype}", names, f"packet {f.packet}: {names}")
        self.assertNotIn("Lua Error", pdml)
        self.assertNotIn("cpns.internal_error", pdml)
        self.assertNotIn("Lua", stderr)

    def test_mutated_frames_never_raise_a_lua_error(self):
        """frames of this run, cut and flipped at random, give expert info and no Lua error"""
        r = subprocess.run([TSHARK, "-r", str(self.capture), "-X", f"lua_script:{LUA}",
                            "-o", f"cpns.pan_port:{self.ports['pan']}", "-Y",
                            "cpns && !tls && tcp.len > 0", "-T", "fields", "-e", "tcp.payload"],
                           capture_output=True, text=True, timeout=TSHARK_TIMEOUT_S)
        self.assertEqual(r.returncode, 0, r.stderr)
        originals = [b for b in (bytes.fromhex(line.replace(":", ""))
                                 for line in r.stdout.split()) if len(b) >= 8]
        self.assertGreater(len(originals), 10)
        rng = random.Random(20261207)
        mutated = []
        for _ in range(MUTATIONS):
            frame = bytearray(rng.choice(originals))
            how = rng.randrange(3)
            if how == 0:  # cut the body short, length prefix kept
                del frame[rng.randrange(5, len(frame)):]
            elif how == 1:  # flip octets of the body
                for _ in range(rng.randrange(1, 6)):
                    frame[rng.randrange(4, len(frame))] = rng.randrange(256)
            else:  # cut the body and fix the length: a frame whose fields run out early
                del frame[rng.randrange(6, len(frame)):]
                frame[0:4] = (len(frame) - 4).to_bytes(4, "big")
            mutated.append(bytes(frame))
        pcap = self.work / "mutated.pcap"
        write_udp_pcap(pcap, mutated, self.ports["discovery"])
        frames, pdml, stderr = dissect(pcap, self.keylog, self.ports)
        self.assertEqual(len(frames), len(mutated))
        self.assertNotIn("Lua Error", pdml)
        self.assertNotIn("cpns.internal_error", pdml)
        self.assertNotIn("Lua", stderr)
        unexplained = [f.packet for f in frames if not f.msgtype and not f.experts()]
        self.assertEqual(unexplained, [], "undecoded frames without an expert-info item")
        flagged = sum(1 for f in frames if any("(Error/" in e for e in f.experts()))
        print(f"{len(mutated)} mutated frames: {flagged} flagged as errors, "
              f"{len(mutated) - flagged} still well-formed", flush=True)
        self.assertGreater(flagged, len(mutated) // 3)


class DissectorTls12Test(DissectorCaptureTest):
    """The same run with TLS 1.2 PSK on the PAN (pan_tls = "tls12"): key-log CLIENT_RANDOM lines."""
    PAN_TLS = "tls12"
    # What does not depend on the PAN's TLS version runs once, in the TLS 1.3 case.
    test_wiresharks_protobuf_view_with_the_proto = None
    test_mutated_frames_never_raise_a_lua_error = None
    test_packet_list_names_each_message = None


def write_udp_pcap(path: Path, payloads: list[bytes], port: int) -> None:
    """A pcap (link type Ethernet) with one UDP datagram 127.0.0.1:40000 -> port per payload."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for n, payload in enumerate(payloads):
        udp = struct.pack(">HHHH", 40000, port, 8 + len(payload), 0) + payload
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), n & 0xFFFF, 0, 64, 17, 0,
                         bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
        pkt = b"\0" * 12 + b"\x08\x00" + ip + udp
        out.append(struct.pack("<IIII", n, 0, len(pkt), len(pkt)) + pkt)
    path.write_bytes(b"".join(out))


class SchemaTableTest(unittest.TestCase):
    def test_table_is_generated_from_the_proto(self):
        """cpns.lua's message table is what gen_schema.py makes of messages.proto"""
        r = subprocess.run([sys.executable, str(GEN_SCHEMA), "--check"], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_a_field_added_to_the_proto_is_noticed(self):
        """the check fails, naming the field, when the .proto gains one"""
        proto = (SOURCE_DIR / "proto" / "cpns" / "messages.proto").read_text()
        anchor = "  bytes proof = 5;\n}\n"
        self.assertIn(anchor, proto)
        with tempfile.TemporaryDirectory() as d:
            changed = Path(d) / "messages.proto"
            changed.write_text(proto.replace(anchor, anchor[:-2] + "  string nickname = 6;\n}\n",
                                             1))
            r = subprocess.run([sys.executable, str(GEN_SCHEMA), "--check", "--proto",
                                str(changed)], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn('+    [6] = { name = "nickname", kind = "string", type = "string" },',
                      r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
