#!/usr/bin/env python3
"""Interoperability of the real daemons' PSK-TLS with independent TLS stacks (openssl, gnutls-cli).

Run by ctest as `python3 tests/interop_test.py` with CPNS_BINARY_DIR (the build directory) and
CPNS_SOURCE_DIR set. Python 3 standard library only (unittest: one test per check; the two labs
are shared by the checks). Everything runs on 127.0.0.1 with ephemeral ports; every wait is
bounded and every child process is stopped in a finally block or at the end of the class.

Checks:
 1. openssl s_client, TLS 1.3 external PSK "pre:<pne>" -> PN GW PAN endpoint: a framed
    PnSetupRequest goes in, a PneAuthenticationRequest (relayed from the CPNS Server) comes out.
 2. The same with TLS 1.2 (PSK-AES128-GCM-SHA256) against a PN GW configured pan_tls = "tls12".
 3. The same with gnutls-cli: TLS 1.3 ECDHE-PSK, and TLS 1.2 plain PSK (GnuTLS 3.7.9 crashes
    after a TLS 1.2 ECDHE-PSK handshake - a fault of that GnuTLS version, not of the PN GW -
    so that combination is not used).
 4. cpns-pne (client) against openssl s_server -nocert -psk (TLS 1.3, and TLS 1.2 with
    --pan-tls tls12): handshake with the expected version and cipher, the PNE's first
    application data (a framed EntityDiscoveryRequest) arrives, and the PNE then gives up on its
    named timeout (kGatewayHelloTimeout, 5 s) with a non-zero exit status and a clear reason.
 5. A wrong pre-assigned key (s_client, TLS 1.3 and TLS 1.2) is refused by the PN GW, whose log
    says why ("bad PSK").
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
import unittest
from pathlib import Path

SOURCE_DIR = Path(os.environ.get("CPNS_SOURCE_DIR") or Path(__file__).resolve().parent.parent)
BINARY_DIR = Path(os.environ.get("CPNS_BINARY_DIR") or SOURCE_DIR / "build" / "dev")
sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
import cpnslab  # noqa: E402  (tests/lab/cpnslab.py)

APPS = BINARY_DIR / "apps"
CPNS_FRAME = APPS / "cpns-frame" / "cpns-frame"
CPNS_PNE = APPS / "cpns-pne" / "cpns-pne"

PNE_ID = "pne-a"
IDENTITY = f"pre:{PNE_ID}"

# Bounded waits (seconds).
TOOL_TIMEOUT_S = 10.0        # one run of cpns-frame, or of a TLS client that should fail
REPLY_TIMEOUT_S = 8.0        # a whole reply frame through the PN GW (and the server) to the client
CLIENT_EXIT_S = 3.0          # a TLS client to exit after its stdin is closed
STOP_GRACE_S = 2.0           # SIGTERM, then SIGKILL
LISTEN_TIMEOUT_S = 5.0       # openssl s_server to start listening
LOG_WAIT_S = 3.0             # a daemon to write an expected log line
PNE_HELLO_TIMEOUT_S = 5.0    # kGatewayHelloTimeout, src/daemon/pne_daemon.hpp
PNE_EXIT_BUDGET_S = PNE_HELLO_TIMEOUT_S + 3.0   # the PNE's named timeout plus its shutdown

TLS13_SUITE = "TLS_AES_128_GCM_SHA256"
TLS12_SUITE = "PSK-AES128-GCM-SHA256"
GNUTLS_TLS13 = "NORMAL:-VERS-ALL:+VERS-TLS1.3:-KX-ALL:+ECDHE-PSK"
GNUTLS_TLS12 = "NORMAL:-VERS-ALL:+VERS-TLS1.2:-KX-ALL:+PSK"

_children: list[subprocess.Popen] = []


class CheckFailed(Exception):
    pass


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


# --- child processes ---------------------------------------------------------------------------

def spawn(args: list[str], **kw) -> subprocess.Popen:
    p = subprocess.Popen([str(a) for a in args], **kw)
    _children.append(p)
    return p


def stop_child(p: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after STOP_GRACE_S; always reaps the child."""
    for stream in (p.stdin, p.stdout, p.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=STOP_GRACE_S)


def stop_all_children() -> None:
    while _children:
        p = _children.pop()
        try:
            stop_child(p)
        except Exception as e:  # keep stopping the others
            print(f"interop: could not stop pid {p.pid}: {e}", file=sys.stderr)


def status_text(rc: int | None) -> str:
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


# --- frames ------------------------------------------------------------------------------------

def encode(envelope: dict) -> bytes:
    r = subprocess.run([str(CPNS_FRAME), "encode", json.dumps(envelope)], capture_output=True,
                       timeout=TOOL_TIMEOUT_S)
    if r.returncode != 0 or len(r.stdout) < 5:
        raise CheckFailed(f"cpns-frame encode failed ({status_text(r.returncode)}): "
                          f"{r.stderr.decode(errors='replace')}")
    return r.stdout


def decode(data: bytes) -> list[dict]:
    r = subprocess.run([str(CPNS_FRAME), "decode"], input=data, capture_output=True,
                       timeout=TOOL_TIMEOUT_S)
    if r.returncode != 0:
        raise CheckFailed(f"cpns-frame decode failed ({status_text(r.returncode)}) on "
                          f"{data[:80].hex()}: {r.stderr.decode(errors='replace')}")
    return [json.loads(line) for line in r.stdout.decode().splitlines() if line.strip()]


def frame_complete(buf: bytes) -> bool:
    return len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big")


def setup_request_frame() -> bytes:
    """A PnSetupRequest as a PNE without UI sends it inside its pre-assigned PSK-TLS session."""
    rand_pne = base64.b64encode(secrets.token_bytes(16)).decode()  # proto3 JSON: bytes are base64
    return encode({
        "sender_id": PNE_ID,
        "setup_request": {
            "setup_type": "SETUP_ONE_TO_ONE",
            "join": {"pne_id": PNE_ID, "rand_pne": rand_pne, "local_eukey_requested": False},
        },
    })


def expect_auth_request(reply: bytes) -> str:
    """The reply must be one well-formed PneAuthenticationRequest; returns a short summary."""
    expect(frame_complete(reply),
           f"no whole reply frame within {REPLY_TIMEOUT_S}s (got {len(reply)} byte(s): "
           f"{reply[:64].hex()})")
    length = int.from_bytes(reply[:4], "big")
    msgs = decode(reply[:4 + length])
    expect(len(msgs) == 1, f"expected one decoded message, got {msgs}")
    env = msgs[0]
    expect(env.get("version") == 1, f"reply has version {env.get('version')}: {env}")
    req = env.get("pne_auth_request")
    expect(isinstance(req, dict), f"reply is not a pne_auth_request: {env}")
    pn_id = req.get("pn_id", "")
    expect(pn_id.startswith("pn-"), f"pne_auth_request PN ID '{pn_id}' does not start with 'pn-'")
    rand_server = base64.b64decode(req.get("rand_server", ""))
    expect(len(rand_server) == 16, f"rand_server has {len(rand_server)} octets, want 16: {req}")
    expect(not req.get("wrapped_local_eukey"),
           f"a LocalEUKey copy was sent though none was requested: {req}")
    return f"pne_auth_request for {pn_id}, rand_server {rand_server.hex()}"


# --- TLS client peers --------------------------------------------------------------------------

def read_one_frame(p: subprocess.Popen, timeout: float) -> bytes:
    """Reads the client's stdout until a whole frame arrived, EOF, or the deadline."""
    fd = p.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while not frame_complete(buf):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], min(left, 0.2))
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    return buf


def client_exchange(args: list[str], frame: bytes, err_path: Path,
                    stop_by_closing_stdin: bool) -> tuple[bytes, int | None]:
    """Runs a TLS client whose stdin/stdout carry the application data: writes the frame, reads
    one reply frame, then stops the client. Returns (reply, exit status)."""
    with open(err_path, "wb") as err:
        p = spawn(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    try:
        try:
            p.stdin.write(frame)
            p.stdin.flush()
        except BrokenPipeError:
            pass  # the client already gave up; its stderr says why
        reply = read_one_frame(p, REPLY_TIMEOUT_S)
        if stop_by_closing_stdin:
            try:
                p.stdin.close()  # gnutls-cli: EOF on stdin ends the session cleanly
                p.wait(timeout=CLIENT_EXIT_S)
            except (OSError, subprocess.TimeoutExpired):
                pass
    finally:
        stop_child(p)
        if p in _children:
            _children.remove(p)
    return reply, p.returncode


def s_client_args(addr: str, mode: str, key: str) -> list[str]:
    version = ["-tls1_3"] if mode == "tls13" else ["-tls1_2", "-cipher", TLS12_SUITE]
    # -quiet implies -ign_eof (no command letters, no session dump): stdout is the raw data.
    return ["openssl", "s_client", *version, "-psk", key, "-psk_identity", IDENTITY,
            "-connect", addr, "-quiet"]


def gnutls_args(addr: str, priority: str, key: str, logfile: Path) -> list[str]:
    host, port = addr.rsplit(":", 1)
    # --logfile keeps gnutls-cli's informational messages out of stdout, which then carries
    # exactly the application data received.
    return ["gnutls-cli", "--pskusername", IDENTITY, "--pskkey", key, "--priority", priority,
            "-p", port, "--logfile", str(logfile), host]


# --- logs --------------------------------------------------------------------------------------

def proc_log(lab: cpnslab.Lab, name: str) -> Path:
    return lab.workdir / f"{name}.log"


def log_size(lab: cpnslab.Lab, name: str) -> int:
    path = proc_log(lab, name)
    return path.stat().st_size if path.exists() else 0


def log_since(lab: cpnslab.Lab, name: str, offset: int) -> str:
    path = proc_log(lab, name)
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def wait_log(lab: cpnslab.Lab, name: str, offset: int, needles: list[str]) -> str:
    """Waits (bounded) until every needle is in the log written since offset; returns that text."""
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        text = log_since(lab, name, offset)
        if all(n in text for n in needles) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def daemons_state(lab: cpnslab.Lab) -> str:
    """Whether each daemon of the lab still runs; the end of the log of one that does not."""
    lines = []
    for proc in lab.procs:
        rc = proc.popen.poll()
        lines.append(f"{proc.name} (pid {proc.popen.pid}): {status_text(rc)}")
        if rc is not None and proc.log.exists():
            tail = proc.log.read_text(errors="replace").splitlines()[-25:]
            lines += ["    " + t for t in tail]
    return "\n".join(lines)


def wait_gw_idle(lab: cpnslab.Lab) -> None:
    """Waits (bounded) until the PN GW has no establishment in progress."""
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        if lab.gw_status().get("active_establishments", 1) == 0:
            return
        time.sleep(0.05)


# --- the checks --------------------------------------------------------------------------------

class Context:
    def __init__(self) -> None:
        self.labs: dict[str, cpnslab.Lab] = {}
        self.evidence: list[tuple[str, str]] = []  # (title, text) shown when a check fails
        self.notes: list[str] = []                 # sub-step results shown always

    def lab(self, mode: str) -> cpnslab.Lab:
        lab = self.labs.get(mode)
        if lab is None:
            raise CheckFailed(f"the {mode} lab did not start")
        return lab

    def add(self, title: str, text: str) -> None:
        self.evidence.append((title, text))


def start_lab(mode: str) -> cpnslab.Lab:
    """A CPNS Server and a PN GW (PAN side in `mode`) with one PNE that has no UI, sits on an
    insecure PAN and therefore has a pre-assigned key; the PNE itself is not started."""
    pne = cpnslab.PneSpec(PNE_ID, enough_ui=False, pan_secure=False)
    lab = cpnslab.make_lab(str(APPS), [pne], gw_id=f"gw-{mode}", gw_pan_tls=mode,
                           log_level="debug")
    lab.start_server()
    lab.start_gw()
    status = lab.wait_server_link(timeout=REPLY_TIMEOUT_S)
    if not status.get("server_link"):
        raise RuntimeError(f"PN GW of the {mode} lab has no server link: {status}\n{lab.logs()}")
    return lab


def exchange_through_gw(ctx: Context, mode: str, tag: str, make_args, stop_by_closing_stdin: bool,
                        gw_needles: list[str]) -> str:
    """Sends a PnSetupRequest through a foreign TLS client to the PN GW of the `mode` lab and
    checks the reply and the PN GW's account of the session."""
    lab = ctx.lab(mode)
    wait_gw_idle(lab)
    gw_off, server_off = log_size(lab, "gw"), log_size(lab, "server")
    err_path = lab.workdir / f"{tag}.stderr"
    args = make_args(lab.pan_addr, lab.pnes[0].preassigned)
    reply, rc = client_exchange(args, setup_request_frame(), err_path, stop_by_closing_stdin)
    ctx.add(f"{tag}: command", " ".join(a if a != lab.pnes[0].preassigned else "<key>" for a in args))
    ctx.add(f"{tag}: client stderr ({status_text(rc)})", err_path.read_text(errors="replace"))
    ctx.add(f"{tag}: reply ({len(reply)} bytes)", reply[:256].hex())
    needles = [f"as {IDENTITY} (", "PnSetupRequest (tls)", "PneAuthenticationRequest (tls)"]
    gw_text = wait_log(lab, "gw", gw_off, needles + gw_needles)
    ctx.add(f"{tag}: PN GW log", gw_text)
    ctx.add(f"{tag}: CPNS Server log", log_since(lab, "server", server_off))
    ctx.add(f"{mode} lab daemons", daemons_state(lab))
    summary = expect_auth_request(reply)
    for n in needles + gw_needles:
        expect(n in gw_text, f"the PN GW log lacks '{n}'")
    server_text = log_since(lab, "server", server_off)
    expect("AuthenticationRequest" in server_text,
           "the CPNS Server log shows no Authentication Request for this PN")
    ctx.notes.append(f"{tag}: {summary}")
    return summary


def check_s_client_tls13(ctx: Context) -> None:
    exchange_through_gw(ctx, "tls13", "s_client-tls13",
                        lambda addr, key: s_client_args(addr, "tls13", key), False,
                        [f"(TLSv1.3 {TLS13_SUITE}"])


def check_s_client_tls12(ctx: Context) -> None:
    exchange_through_gw(ctx, "tls12", "s_client-tls12",
                        lambda addr, key: s_client_args(addr, "tls12", key), False,
                        [f"(TLSv1.2 {TLS12_SUITE})"])


def check_gnutls(ctx: Context) -> None:
    # gnutls-cli 3.7.9 reads stdin with read(2) and sends exactly the bytes it read, so a binary
    # frame (it contains NUL octets) passes through unchanged; received application data is
    # written to stdout unchanged and --logfile moves its own messages elsewhere. EOF on stdin
    # makes it end the session with close_notify, which is how it is stopped here.
    failures = []
    for mode, priority, gw_needle, desc in (
            ("tls13", GNUTLS_TLS13, f"(TLSv1.3 {TLS13_SUITE}", "(TLS1.3-"),
            ("tls12", GNUTLS_TLS12, f"(TLSv1.2 {TLS12_SUITE})", "(TLS1.2-")):
        tag = f"gnutls-cli-{mode}"
        try:
            logfile = ctx.lab(mode).workdir / f"{tag}.info"
            exchange_through_gw(ctx, mode, tag,
                                lambda addr, key: gnutls_args(addr, priority, key, logfile),
                                True, [gw_needle])
            info = logfile.read_text(errors="replace") if logfile.exists() else ""
            ctx.add(f"{tag}: gnutls-cli messages", info)
            expect("Handshake was completed" in info and desc in info and
                   f"Connected as '{IDENTITY}'" in info,
                   f"gnutls-cli does not report a completed {desc} PSK handshake as {IDENTITY}")
        except CheckFailed as e:
            failures.append(f"{tag}: {e}")
    if failures:
        raise CheckFailed("; ".join(failures))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """True when something listens on 127.0.0.1:port (reads /proc/net/tcp, so that no probe
    connection uses up s_server's single accept)."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            return any(line.split()[1] == want and line.split()[3] == "0A"
                       for line in f.readlines()[1:])
    except OSError:
        return True  # no procfs: fall back to the fixed delay below


def check_pne_against_s_server(ctx: Context) -> None:
    lab = ctx.lab("tls13")
    pne = lab.pnes[0]
    cfg = lab._pne_config(pne)  # the PNE's provisioned configuration (its keys, pan_tls = tls13)
    runs = []
    try:
        for mode in ("tls13", "tls12"):
            port = free_port()
            version = ["-tls1_3"] if mode == "tls13" else ["-tls1_2", "-cipher", TLS12_SUITE]
            out, err = lab.workdir / f"s_server-{mode}.out", lab.workdir / f"s_server-{mode}.err"
            # -brief: the negotiated parameters go to stderr, stdout carries only the data
            # received; -ign_eof with an open stdin pipe keeps s_server from closing early.
            args = ["openssl", "s_server", "-nocert", *version, "-psk", pne.preassigned,
                    "-psk_identity", IDENTITY, "-accept", f"127.0.0.1:{port}", "-naccept", "1",
                    "-ign_eof", "-brief"]
            with open(out, "wb") as o, open(err, "wb") as e:
                server = spawn(args, stdin=subprocess.PIPE, stdout=o, stderr=e)
            runs.append({"mode": mode, "port": port, "server": server, "out": out, "err": err})
        for r in runs:
            deadline = time.monotonic() + LISTEN_TIMEOUT_S
            while not listening(r["port"]) and time.monotonic() < deadline:
                if r["server"].poll() is not None:
                    break
                time.sleep(0.05)
            if not Path("/proc/net/tcp").exists():
                time.sleep(0.5)
        for r in runs:  # both PNEs run at once: each waits its 5 s named timeout
            pne_args = [CPNS_PNE, "--config", cfg, "--gw", f"127.0.0.1:{r['port']}",
                        "--pan-tls", r["mode"], "--log-level", "debug", "setup", "--type", "1-1"]
            r["pne_log"] = lab.workdir / f"pne-{r['mode']}.out"
            with open(r["pne_log"], "wb") as log:
                r["t0"] = time.monotonic()
                r["pne"] = spawn(pne_args, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT)
        for r in runs:
            try:
                r["pne"].wait(timeout=max(0.1, r["t0"] + PNE_EXIT_BUDGET_S - time.monotonic()))
                r["elapsed"] = time.monotonic() - r["t0"]
            except subprocess.TimeoutExpired:
                r["elapsed"] = None
                stop_child(r["pne"])
        for r in runs:
            try:
                r["server"].wait(timeout=STOP_GRACE_S)  # -naccept 1: ends with the connection
            except subprocess.TimeoutExpired:
                pass
            stop_child(r["server"])
    finally:
        for r in runs:
            for key in ("pne", "server"):
                if key in r:
                    stop_child(r[key])

    failures = []
    for r in runs:
        mode, tag = r["mode"], f"cpns-pne-{r['mode']}"
        pne_out = r["pne_log"].read_text(errors="replace") if "pne_log" in r else ""
        s_err = r["err"].read_text(errors="replace")
        s_out = r["out"].read_bytes()
        ctx.add(f"{tag}: openssl s_server stderr ({status_text(r['server'].returncode)})", s_err)
        ctx.add(f"{tag}: openssl s_server stdout ({len(s_out)} bytes)", s_out[:256].hex())
        rc = r["pne"].returncode if "pne" in r else None
        ctx.add(f"{tag}: cpns-pne output ({status_text(rc)}, "
                f"{r.get('elapsed') and round(r['elapsed'], 2)} s)", pne_out)
        try:
            want_version = "TLSv1.3" if mode == "tls13" else "TLSv1.2"
            want_suite = TLS13_SUITE if mode == "tls13" else TLS12_SUITE
            expect(f"Protocol version: {want_version}" in s_err,
                   f"s_server did not report a {want_version} handshake")
            expect(f"Ciphersuite: {want_suite}" in s_err,
                   f"s_server did not report cipher suite {want_suite}")
            expect(f"PSK-TLS with the PN GW at 127.0.0.1:{r['port']} as {IDENTITY} "
                   f"({want_version} {want_suite}" in pne_out,
                   f"cpns-pne does not report the {want_version} {want_suite} session")
            expect(frame_complete(s_out), f"no whole frame reached s_server ({s_out[:64].hex()})")
            first = decode(s_out[:4 + int.from_bytes(s_out[:4], "big")])[0]
            disc = first.get("discovery_request")
            expect(isinstance(disc, dict) and disc.get("entity_id") == PNE_ID and
                   first.get("sender_id") == PNE_ID,
                   f"the first application data is not {PNE_ID}'s EntityDiscoveryRequest: {first}")
            expect(r.get("elapsed") is not None,
                   f"cpns-pne still running after {PNE_EXIT_BUDGET_S}s (its timeout is "
                   f"{PNE_HELLO_TIMEOUT_S}s); stopped")
            expect(r["elapsed"] >= PNE_HELLO_TIMEOUT_S - 0.5,
                   f"cpns-pne ended after {r['elapsed']:.2f}s, before its {PNE_HELLO_TIMEOUT_S}s "
                   "timeout")
            expect("timeout" in pne_out.lower() and "did not answer" in pne_out,
                   "cpns-pne's output gives no clear timeout reason")
            expect(rc is not None and rc > 0,
                   f"cpns-pne must exit with a failure status, but it was {status_text(rc)}"
                   + (" - it crashed instead of exiting" if rc is not None and rc < 0 else ""))
            ctx.notes.append(f"{tag}: {want_version} {want_suite}, EntityDiscoveryRequest received "
                             f"by s_server, PNE {status_text(rc)} after {r['elapsed']:.2f}s")
        except CheckFailed as e:
            failures.append(f"{tag}: {e}")
    if failures:
        raise CheckFailed("; ".join(failures))


def check_wrong_key(ctx: Context) -> None:
    failures = []
    for mode in ("tls13", "tls12"):
        tag = f"wrong-key-{mode}"
        try:
            lab = ctx.lab(mode)
            wait_gw_idle(lab)
            gw_off = log_size(lab, "gw")
            failed_before = lab.gw_status().get("failures", {}).get("tls handshake failed", 0)
            wrong = cpnslab.new_key()
            expect(wrong != lab.pnes[0].preassigned, "the random wrong key equals the right one")
            err_path = lab.workdir / f"{tag}.stderr"
            reply, rc = client_exchange(s_client_args(lab.pan_addr, mode, wrong),
                                        setup_request_frame(), err_path, False)
            s_err = err_path.read_text(errors="replace")
            ctx.add(f"{tag}: s_client stderr ({status_text(rc)})", s_err)
            gw_text = wait_log(lab, "gw", gw_off, [f"as {IDENTITY} failed: bad PSK"])
            ctx.add(f"{tag}: PN GW log", gw_text)
            ctx.add(f"{mode} lab daemons", daemons_state(lab))
            expect(not reply, f"the PN GW answered a client with a wrong key: {reply[:64].hex()}")
            expect(rc not in (None, 0) and "alert" in s_err,
                   f"s_client did not see the handshake fail ({status_text(rc)})")
            expect(f"as {IDENTITY} failed: bad PSK" in gw_text,
                   "the PN GW log does not say the handshake failed because of a bad PSK")
            status = lab.gw_status()
            expect(PNE_ID not in status.get("pan_links", {}),
                   f"{PNE_ID} has a PAN link after a refused handshake: {status}")
            failed_after = status.get("failures", {}).get("tls handshake failed", 0)
            expect(failed_after == failed_before + 1,
                   f"the PN GW's 'tls handshake failed' counter went {failed_before} -> "
                   f"{failed_after}, want +1")
            line = next(l for l in gw_text.splitlines() if "bad PSK" in l)
            ctx.notes.append(f"{tag}: refused; PN GW: {line.split('] ', 1)[-1]}")
        except CheckFailed as e:
            failures.append(f"{tag}: {e}")
    if failures:
        raise CheckFailed("; ".join(failures))


class InteropTest(unittest.TestCase):
    """The checks share two labs (PN GW PAN side in TLS 1.3 and in TLS 1.2), started once."""

    ctx: Context
    start_errors: list[str]

    @classmethod
    def setUpClass(cls) -> None:
        cls.t_start = time.monotonic()
        missing = [str(tool) for tool in (CPNS_FRAME, CPNS_PNE, APPS / "cpns-gw" / "cpns-gw",
                                          APPS / "cpns-server" / "cpns-server")
                   if not tool.exists()]
        if missing:
            raise RuntimeError(f"interop: not built (CPNS_BINARY_DIR={BINARY_DIR}): "
                               + ", ".join(missing))
        cls.ctx = Context()
        cls.start_errors = []
        for mode in ("tls13", "tls12"):
            try:
                cls.ctx.labs[mode] = start_lab(mode)
            except Exception as e:
                cls.start_errors.append(f"{mode} lab: {e}")

    @classmethod
    def tearDownClass(cls) -> None:
        stop_all_children()
        for lab in cls.ctx.labs.values():
            try:
                cpnslab.cleanup(lab)
            except Exception as e:
                print(f"interop: cleanup: {e}")
        print(f"interop: {time.monotonic() - cls.t_start:.1f}s in all", flush=True)

    def run_check(self, fn) -> None:
        """Runs one check; prints its notes, and on failure its evidence, then fails."""
        ctx = self.ctx
        ctx.evidence, ctx.notes = [], []
        try:
            fn(ctx)
            why = ""
        except CheckFailed as e:
            why = str(e)
        except Exception:
            why = traceback.format_exc()
        out = [f"       {note}" for note in ctx.notes]
        if why:
            out += [f"       {err}" for err in self.start_errors]
            for title, text in ctx.evidence:
                out.append(f"  --- {title} ---")
                out += ["    " + line for line in text.rstrip().splitlines()]
        if out:
            print("\n" + "\n".join(out), flush=True)
        if why:
            self.fail(why)

    def test_1_s_client_tls13(self):
        """1. openssl s_client TLS 1.3 PSK -> PN GW: PnSetupRequest in, Authentication Request out"""
        self.run_check(check_s_client_tls13)

    def test_2_s_client_tls12(self):
        """2. openssl s_client TLS 1.2 PSK-AES128-GCM-SHA256 -> PN GW (pan_tls = tls12): same"""
        self.run_check(check_s_client_tls12)

    def test_3_gnutls(self):
        """3. gnutls-cli TLS 1.3 ECDHE-PSK and TLS 1.2 PSK -> PN GW: same"""
        self.run_check(check_gnutls)

    def test_4_pne_against_s_server(self):
        """4. cpns-pne -> openssl s_server (TLS 1.3, TLS 1.2): handshake, first frame, named timeout"""
        self.run_check(check_pne_against_s_server)

    def test_5_wrong_key(self):
        """5. wrong pre-assigned key (s_client TLS 1.3, TLS 1.2) refused by the PN GW"""
        self.run_check(check_wrong_key)


if __name__ == "__main__":
    unittest.main(verbosity=2)
