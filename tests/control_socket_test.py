"""The control endpoints of cpns-gw and cpns-pne are usable by their owner (and group) only.

- By default they are Unix domain sockets, mode 0660: the owner's commands work, and another
  local user (created here) can neither run `cpns-gw status` against the socket nor connect to
  it directly - even though the directory holding the socket is open to everybody (0755), so
  that what stops them is the socket's own mode.
- A TCP control endpoint without control_token_file does not start (a clear message, exit 2),
  nor with a token file others may read; with one, a request without the token or with a wrong
  one gets {"error":"UNAUTHORIZED",...} and changes nothing, and the right token works.

The part with another user needs root (useradd, runuser), as CI runs it; elsewhere it is
skipped with that reason.
"""

import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import PneSpec, cleanup, control_connect, make_lab, new_key  # noqa: E402

BIN = Path(os.environ.get("CPNS_BINARY_DIR", "build/dev")) / "apps"
GW = BIN / "cpns-gw" / "cpns-gw"
PNE = BIN / "cpns-pne" / "cpns-pne"
COMMAND_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 20.0
# The interpreter run as the other user: the system's (a per-user install under /root is not
# readable by that user).
OTHER_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def run(args, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S, **kw)


def ask(addr: str, raw: bytes) -> dict:
    """One raw request line to a control endpoint; its one-line JSON answer."""
    with control_connect(addr, COMMAND_TIMEOUT_S) as s:
        s.sendall(raw)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


class ControlSocketTest(unittest.TestCase):
    def lab(self, pnes=None, **kw):
        lab = make_lab(str(BIN), pnes or [], **kw)
        self.addCleanup(cleanup, lab)
        return lab

    def other_user(self) -> str:
        if os.geteuid() != 0:
            self.skipTest("needs root to create a second local user (useradd, runuser); "
                          "CI runs this test as root")
        name = "cpns-ctltest-" + secrets.token_hex(4)
        r = run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.addCleanup(lambda: run(["userdel", name]))
        return name

    def test_unix_sockets_are_the_owners_only(self):
        lab = self.lab([PneSpec("pne-a")])
        # The directory is open to everybody: only the socket's mode can stop another user.
        os.chmod(lab.workdir, 0o755)
        lab.start_server()
        lab.start_gw()
        lab.start_pne(lab.pnes[0])
        lab.wait_linked(["pne-a"])
        gw_sock = Path(lab.control_addr[len("unix:"):])
        pne_sock = Path(lab.pne_control_addr(lab.pnes[0])[len("unix:"):])
        self.assertTrue(lab.control_addr.startswith("unix:"), lab.control_addr)
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while not pne_sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for sock in (gw_sock, pne_sock):
            st = os.lstat(sock)
            self.assertTrue(stat.S_ISSOCK(st.st_mode), sock)
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o660, f"{sock}: {oct(st.st_mode)}")
            self.assertEqual(st.st_uid, os.geteuid())
        self.assertEqual(stat.S_IMODE(os.stat(lab.workdir).st_mode), 0o755)

        # The owner's commands work.
        r = run([GW, "status", "--control", lab.control_addr])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["gw_id"], "gw-1")
        r = run([PNE, "--config", lab.workdir / "pne-a.toml", "neighbours"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["entity_id"], "pne-a")
        # Each request is logged with the peer's uid.
        self.assertIn(f"control request from uid {os.geteuid()}: status",
                      (lab.workdir / "gw.log").read_text())

        user = self.other_user()
        # Another user reaches the directory but not the sockets: the command fails with a
        # permission error naming the socket ...
        for sock in (gw_sock, pne_sock):
            r = run(["runuser", "-u", user, "--", GW, "status", "--control", f"unix:{sock}"])
            self.assertNotEqual(r.returncode, 0, r.stdout)
            self.assertIn("cannot connect to the control socket", r.stderr)
            self.assertIn("Permission denied", r.stderr)
            # ... and so does a direct connect().
            probe = ("import socket, sys\n"
                     "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                     "try:\n"
                     "    s.connect(sys.argv[1])\n"
                     "except PermissionError:\n"
                     "    print('EACCES'); sys.exit(0)\n"
                     "print('connected'); sys.exit(1)\n")
            r = run(["runuser", "-u", user, "--", OTHER_PYTHON, "-c", probe, str(sock)])
            self.assertEqual(r.stdout.strip(), "EACCES", r.stderr)
        # The other user changed nothing; the owner still gets answers.
        status = lab.gw_status()
        self.assertEqual(status.get("active_establishments", 0), 0)

        # At stop the sockets are removed; a command then says there is none.
        lab.stop_all()
        self.assertFalse(gw_sock.exists())
        self.assertFalse(pne_sock.exists())
        r = run([PNE, "--config", lab.workdir / "pne-a.toml", "neighbours"])
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("cannot connect to the control socket of cpns-pne", r.stderr)
        self.assertIn("No such file or directory", r.stderr)

    def test_socket_path_checks(self):
        lab = self.lab()
        lab.start_server()
        rundir = lab.workdir / "run"
        sock = rundir / "control.sock"
        lab.gw_control_listen = f"unix:{sock}"
        gw = lab.start_gw()
        # The missing directory is created 0750, the socket 0660.
        self.assertEqual(stat.S_IMODE(os.stat(rundir).st_mode), 0o750)
        self.assertEqual(stat.S_IMODE(os.lstat(sock).st_mode), 0o660)
        # A second daemon on the same path does not take the socket over.
        cfg = lab.workdir / "second.toml"
        cfg.write_text(f'id = "{lab.gw_id}"\neukey = "{lab.gw_key}"\n'
                       f'server = "{lab.server_addr}"\npan_listen = "127.0.0.1:0"\n'
                       f'control = "unix:{sock}"\ndiscovery_group = ""\n')
        os.chmod(cfg, 0o600)
        r = run([GW, "--config", cfg, "run"])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("another process is listening on it", r.stderr)
        self.assertTrue(lab.gw_status(), "the first PN GW still answers on its socket")
        lab.stop(gw)
        self.assertFalse(sock.exists())
        # A stale socket (its daemon died, nothing answers) is replaced.
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(sock))
        stale.close()
        self.assertTrue(stat.S_ISSOCK(os.lstat(sock).st_mode))
        gw = lab.start_gw()
        self.assertTrue(lab.gw_status(), "started on the stale socket's path")
        lab.stop(gw)
        # A path that is not a socket is refused and left alone.
        sock.write_text("not a socket\n")
        with self.assertRaises(RuntimeError) as ctx:
            lab.start_gw()
        self.assertIn("exists and is not a socket", str(ctx.exception))
        self.assertEqual(sock.read_text(), "not a socket\n", "the file is left alone")

    def test_tcp_needs_a_token(self):
        lab = self.lab()
        lab.start_server()
        cfg = lab.workdir / "gw-tcp.toml"
        base = [f'id = "{lab.gw_id}"', f'eukey = "{lab.gw_key}"',
                f'server = "{lab.server_addr}"', 'pan_listen = "127.0.0.1:0"',
                'control = "127.0.0.1:0"', 'discovery_group = ""']
        cfg.write_text("\n".join(base) + "\n")
        os.chmod(cfg, 0o600)
        r = run([GW, "--config", cfg, "run"])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("TCP control endpoint", r.stderr)
        self.assertIn("needs control_token_file", r.stderr)

        # A token file others may read is refused too.
        loose = lab.workdir / "loose.token"
        loose.write_text(new_key() + "\n")
        os.chmod(loose, 0o640)
        cfg.write_text("\n".join(base + [f'control_token_file = "{loose}"']) + "\n")
        r = run([GW, "--config", cfg, "run"])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("accessible by group or others", r.stderr)

        # With a proper token file the PN GW starts; only the token opens the endpoint.
        lab.gw_control_listen = "127.0.0.1:0"
        lab.start_gw()
        lab.wait_server_link()
        self.assertFalse(lab.control_addr.startswith("unix:"), lab.control_addr)
        token = lab.control_token_file().read_text().strip()
        for raw in (b"invite pne-x\n", b"token " + new_key().encode() + b" invite pne-x\n",
                    b"token " + token[:-2].encode() + b" invite pne-x\n",
                    b"token\n"):
            answer = ask(lab.control_addr, raw)
            self.assertEqual(answer.get("error"), "UNAUTHORIZED", answer)
        log = (lab.workdir / "gw.log").read_text()
        self.assertNotIn("control: invite", log, "a refused request reached the PN GW")
        self.assertIn("refused", log)
        self.assertNotIn(token, log, "the token is never logged")
        # The right token works: raw, and through the command with --token-file.
        answer = ask(lab.control_addr, b"token " + token.encode() + b" status\n")
        self.assertEqual(answer.get("gw_id"), "gw-1", answer)
        self.assertEqual(answer.get("active_establishments", 0), 0, "nothing was started")
        r = run([GW, "status", "--control", lab.control_addr,
                 "--token-file", lab.control_token_file()])
        self.assertEqual(r.returncode, 0, r.stderr)
        # Without --token-file the command refuses before connecting.
        r = run([GW, "status", "--control", lab.control_addr])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--token-file", r.stderr)
        # With a wrong token the command reports the typed refusal.
        wrong = lab.workdir / "wrong.token"
        wrong.write_text(new_key() + "\n")
        os.chmod(wrong, 0o600)
        r = run([GW, "status", "--control", lab.control_addr, "--token-file", wrong])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("UNAUTHORIZED", r.stderr)


if __name__ == "__main__":
    unittest.main()
