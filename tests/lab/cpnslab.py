"""cpnslab: provisions and runs a CPNS Server, PN GWs and PNEs as real processes on loopback.

Used by the main job (scripts/demo.py) and by the multi-process tests (tests/*_test.py).
Every process listens on 127.0.0.1 with an ephemeral port (reported through a ready file),
is stopped with SIGTERM at the end, and is killed if it does not stop within a second.

Event traces: with Lab.trace = "on" (or "auto": only where the binary offers the option) every
daemon and every `cpns-pne setup` gets `--trace-file <workdir>/<name>.trace.jsonl`, where it
appends one JSON object per line (schema: message TraceEvent in proto/cpns/messages.proto).
The option goes where each program takes its daemon options: `cpns-server --trace-file P`,
`cpns-gw --config C run --trace-file P`, `cpns-pne --config C --trace-file P run|setup`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

STOP_GRACE_S = 1.0  # a daemon must exit within this after SIGTERM
READY_TIMEOUT_S = 10.0


def new_key() -> str:
    return secrets.token_hex(32)


@dataclass
class PneSpec:
    id: str
    enough_ui: bool = True
    pan_secure: bool = False
    wrong_eukey: bool = False
    wrong_preassigned: bool = False
    accept_invitations: bool = True
    device_type: str = "headset"
    use_discovery: bool = False  # find the PN GW by multicast instead of its address
    pan_tls: str = "tls13"
    keylog: str = ""  # this PNE's own NSS key-log file ("" = none)
    previous_eukey: str = ""  # after `cpnsctl rotate`: the old EUKey, to open its state file
    # filled by provisioning
    eukey: str = ""
    device_eukey: str = ""
    preassigned: str = ""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path


@dataclass
class Lab:
    bindir: Path
    workdir: Path
    gw_id: str = "gw-1"
    pnes: list[PneSpec] = field(default_factory=list)
    gw_wrong_eukey: bool = False
    gw_previous_key: str = ""  # after `cpnsctl rotate`: the old EUKey, to open its state file
    discovery_group: str = ""
    log_level: str = "debug"
    procs: list[Proc] = field(default_factory=list)
    server_addr: str = ""
    pan_addr: str = ""
    control_addr: str = ""
    keylog: str = ""
    store_url: str = ""  # "" = SQLite file in the lab's folder; else e.g. a PostgreSQL URL
    gw_pan_tls: str = ""  # "tls13" or "tls12" for the PN GW's PAN side; "" keeps its default
    trace: str = "off"  # "on": every process writes an event trace; "auto": where supported
    server_control: dict[str, int] = field(default_factory=dict)  # server name -> status port
    ready_timeout: float = READY_TIMEOUT_S  # e.g. longer for a server importing many entities
    # Crash points (docs/operations.md, "Crash points"): process name ("server", "gw" or a
    # PNE ID) -> `--crash-at` spec for its next start; see crash_at() and restart_*().
    crash_points: dict[str, str] = field(default_factory=dict)
    # Listening addresses; "127.0.0.1:0" = any free port. restart_server()/restart_gw() pin
    # them to the addresses of the previous run so that the peers find the restarted process.
    server_listen: str = "127.0.0.1:0"
    gw_pan_listen: str = "127.0.0.1:0"
    # The PN GW's control endpoint: "" = a Unix socket in the lab's folder (the daemons'
    # kind of default); "HOST:PORT" = TCP, with a token file the lab writes (control_token).
    gw_control_listen: str = ""
    # `neighbour_ttl_ms` of the PN GW and every PNE (0: not set, the daemons' default of 5 min).
    neighbour_ttl_ms: int = 0
    # Every daemon's log format ("" keeps the default, human; "json": one object per line).
    log_format: str = ""
    # Prometheus endpoints: process name ("server", "gw" or a PNE ID) -> the value of its
    # `metrics` setting ("127.0.0.1:PORT", or a bare "PORT"); absent = no endpoint.
    metrics: dict[str, str] = field(default_factory=dict)

    # --- provisioning -------------------------------------------------------------
    def provision(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.gw_key = new_key()
        entities = [f'[[entity]]\nid = "{self.gw_id}"\nkind = "gw"\neukey = "{self.gw_key}"\n']
        for p in self.pnes:
            p.eukey = new_key()
            p.device_eukey = new_key() if p.wrong_eukey else p.eukey
            if not p.enough_ui:
                p.preassigned = new_key()
            entities.append(f'[[entity]]\nid = "{p.id}"\nkind = "pne"\neukey = "{p.eukey}"\n')
        (self.workdir / "entities.toml").write_text("\n".join(entities))
        os.chmod(self.workdir / "entities.toml", 0o600)
        master = self.workdir / "master.key"
        master.write_text(new_key() + "\n")
        os.chmod(master, 0o600)
        self.write_server_config()

    def write_server_config(self, name: str = "server", store_url: str = "",
                            control_port: int = 0) -> Path:
        """A server configuration; several servers may share one PostgreSQL store.
        control_port: also answer `status` on 127.0.0.1:control_port (see server_status)."""
        store = store_url or self.store_url or f"sqlite:{self.workdir / 'server.db'}"
        path = self.workdir / f"{name}.toml"
        text = (
            f'id = "{"cpns-server" if name == "server" else name}"\n'
            f'listen = "{self.server_listen if name == "server" else "127.0.0.1:0"}"\n'
            f'store = "{store}"\n'
            f'master_key_file = "{self.workdir / "master.key"}"\n'
            f'entities = "{self.workdir / "entities.toml"}"\n'
            f'ready_file = "{self.workdir / (name + ".ready")}"\n'
            f'log_level = "{self.log_level}"\n')
        text += self._observability_lines(name)
        if control_port:
            text += f'control_listen = "127.0.0.1:{control_port}"\n'
            self.server_control[name] = control_port
        path.write_text(text)
        return path

    def server_status(self, name: str = "server", timeout: float = 5.0) -> dict:
        """The server's answer to `status` on its control port ({} if it does not answer)."""
        import socket
        try:
            with socket.create_connection(("127.0.0.1", self.server_control[name]),
                                          timeout=timeout) as s:
                s.sendall(b"status\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            return json.loads(data) if data.strip() else {}
        except (OSError, ValueError):
            return {}

    def _gw_config(self) -> str:
        gw_key = new_key() if self.gw_wrong_eukey else self.gw_key
        lines = [
            f'id = "{self.gw_id}"', f'eukey = "{gw_key}"', f'server = "{self.server_addr}"',
            f'pan_listen = "{self.gw_pan_listen}"', f'control = "{self._gw_control()}"',
            f'discovery_group = "{self.discovery_group}"',
            f'ready_file = "{self.workdir / "gw.ready"}"', f'log_level = "{self.log_level}"',
            f'state_file = "{self.workdir / "gw.state"}"',
        ]
        lines += self._observability_lines("gw").splitlines()
        if not self._gw_control().startswith("unix:"):
            lines.append(f'control_token_file = "{self.control_token_file()}"')
        if self.gw_previous_key:
            lines.append(f'previous_eukey = "{self.gw_previous_key}"')
        if self.gw_pan_tls:
            lines.append(f'pan_tls = "{self.gw_pan_tls}"')
        if self.neighbour_ttl_ms:
            lines.append(f'neighbour_ttl_ms = {self.neighbour_ttl_ms}')
        lines += [
            '',
            '[capabilities]', 'device_type = "home-hub"', 'manufacturer = "cpnslab"', '',
            '[subscription]', 'subscriber_id = "sub-0001"', 'service_plan = "cpns-basic"', ''
        ]
        for p in self.pnes:
            lines += ['[[pne]]', f'id = "{p.id}"', f'pan_secure = {str(p.pan_secure).lower()}']
            if p.preassigned:
                lines.append(f'preassigned_key = "{p.preassigned}"')
            lines.append('')
        return "\n".join(lines)

    def _pne_config(self, p: PneSpec) -> Path:
        lines = [
            f'id = "{p.id}"', f'eukey = "{p.device_eukey}"',
            f'enough_ui = {str(p.enough_ui).lower()}', f'pan_secure = {str(p.pan_secure).lower()}',
            f'accept_invitations = {str(p.accept_invitations).lower()}',
            f'pan_tls = "{p.pan_tls}"', f'log_level = "{self.log_level}"',
            f'state_file = "{self.workdir / (p.id + ".state")}"'
        ]
        lines += self._observability_lines(p.id).splitlines()
        if p.previous_eukey:
            lines.append(f'previous_eukey = "{p.previous_eukey}"')
        if p.use_discovery:
            lines.append(f'discovery_group = "{self.discovery_group}"')
        else:
            lines.append(f'gw = "{self.pan_addr}"')
        if p.preassigned:
            key = new_key() if p.wrong_preassigned else p.preassigned
            lines.append(f'preassigned_key = "{key}"')
        if p.keylog or self.keylog:
            lines.append(f'keylog = "{p.keylog or self.keylog}"')
        if self.neighbour_ttl_ms:
            lines.append(f'neighbour_ttl_ms = {self.neighbour_ttl_ms}')
        lines.append(f'control = "{self.pne_control_addr(p)}"')
        lines += ['', '[capabilities]', f'device_type = "{p.device_type}"',
                  'manufacturer = "cpnslab"', '', '[[content]]', f'id = "content-of-{p.id}"',
                  'media_type = "audio/mpeg"', 'title = "demo track"', '']
        path = self.workdir / f"{p.id}.toml"
        path.write_text("\n".join(lines))
        os.chmod(path, 0o600)
        return path

    def _gw_control(self) -> str:
        return self.gw_control_listen or f"unix:{self.workdir / 'gw-control.sock'}"

    def pne_control_addr(self, p: PneSpec) -> str:
        """The control endpoint of PNE `p` while it runs: a Unix socket in the lab's folder."""
        return f"unix:{self.workdir / (p.id + '-control.sock')}"

    def control_token_file(self) -> Path:
        """The token of a TCP control endpoint (written once, mode 0600)."""
        path = self.workdir / "control.token"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(new_key() + "\n")
        return path

    def control_prefix(self) -> bytes:
        """What a raw control request to the PN GW starts with: its token on TCP, else b""."""
        if self.control_addr.startswith("unix:"):
            return b""
        return b"token " + self.control_token_file().read_text().strip().encode() + b" "

    def _token_args(self) -> list[str]:
        if self.control_addr.startswith("unix:"):
            return []
        return ["--token-file", str(self.control_token_file())]

    def _observability_lines(self, name: str) -> str:
        """The `log_format` and `metrics` settings of process `name` (TOML lines, or "")."""
        text = f'log_format = "{self.log_format}"\n' if self.log_format else ""
        if name in self.metrics:
            text += f'metrics = "{self.metrics[name]}"\n'
        return text

    # --- event traces ---------------------------------------------------------------
    def trace_path(self, name: str) -> Path:
        """The trace file of a process: "server", "gw" or a PNE ID."""
        return self.workdir / f"{name}.trace.jsonl"

    def _trace_args(self, name: str, help_cmd: list[str]) -> list[str]:
        if self.trace == "off":
            return []
        if not offers_trace_file(help_cmd):
            if self.trace == "auto":
                return []
            cmd = " ".join([Path(help_cmd[0]).name] + help_cmd[1:])
            raise RuntimeError(f"`{cmd}` has no --trace-file option: the daemons do not write "
                               "event traces yet")
        return ["--trace-file", str(self.trace_path(name))]

    def read_trace(self, name: str) -> list[dict]:
        """Every event in a process's trace file, in order ([] when there is none)."""
        return read_trace_file(self.trace_path(name))

    # --- crash points -----------------------------------------------------------------
    def crash_at(self, name: str, spec: str) -> None:
        """The next start of `name` gets `--crash-at spec` ("" = none)."""
        if spec:
            self.crash_points[name] = spec
        else:
            self.crash_points.pop(name, None)

    def _crash_args(self, name: str) -> list[str]:
        spec = self.crash_points.get(name, "")
        return ["--crash-at", spec] if spec else []

    def proc(self, name: str) -> Proc | None:
        """The newest process started under `name`."""
        for p in reversed(self.procs):
            if p.name == name:
                return p
        return None

    def restart_server(self) -> Proc:
        """Starts the server again on the address it had (same store)."""
        if self.server_addr:
            self.server_listen = self.server_addr
        self.write_server_config()
        return self.start_server()

    def restart_gw(self) -> Proc:
        """Starts the PN GW again on the addresses it had (same state file)."""
        if self.pan_addr:
            self.gw_pan_listen, self.gw_control_listen = self.pan_addr, self.control_addr
        return self.start_gw()

    def store_pns(self) -> list[dict]:
        """The server store's PN Inventory (`cpnsctl export`): one dict per registered PN."""
        store = self.store_url or f"sqlite:{self.workdir / 'server.db'}"
        r = subprocess.run([str(self.bindir / "cpnsctl" / "cpnsctl"), "--store", store,
                            "--master-key-file", str(self.workdir / "master.key"), "export"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"cpnsctl export failed ({r.returncode}): {r.stderr}")
        return json.loads(r.stdout)

    # --- processes ----------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> Proc:
        log = self.workdir / f"{name}.log"
        env = dict(os.environ)
        if self.keylog:
            env["SSLKEYLOGFILE"] = self.keylog
        with open(log, "ab") as f:  # the child keeps its own copy of the descriptor
            popen = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def _wait_ready(self, path: Path, proc: Proc) -> str:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if path.exists():
                return path.read_text().strip()
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n"
                                   + proc.log.read_text())
            time.sleep(0.02)
        raise RuntimeError(f"{proc.name} not ready after {self.ready_timeout}s:\n"
                           + proc.log.read_text())

    def start_server(self, name: str = "server") -> Proc:
        ready = self.workdir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        binary = self.bindir / "cpns-server" / "cpns-server"
        p = self._spawn(name, [str(binary), "--config", str(self.workdir / f"{name}.toml")]
                        + self._trace_args(name, [str(binary)]) + self._crash_args(name))
        addr = self._wait_ready(ready, p)
        if name == "server":
            self.server_addr = addr
        return p

    def start_gw(self) -> Proc:
        cfg = self.workdir / "gw.toml"
        cfg.write_text(self._gw_config())
        os.chmod(cfg, 0o600)
        ready = self.workdir / "gw.ready"
        ready.unlink(missing_ok=True)
        binary = self.bindir / "cpns-gw" / "cpns-gw"
        p = self._spawn("gw", [str(binary), "--config", str(cfg), "run"]
                        + self._trace_args("gw", [str(binary), "run"]) + self._crash_args("gw"))
        fields = dict(kv.split("=", 1) for kv in self._wait_ready(ready, p).split())
        self.pan_addr, self.control_addr = fields["pan"], fields["control"]
        return p

    def start_pne(self, p: PneSpec) -> Proc:
        cfg = self._pne_config(p)
        binary = self.bindir / "cpns-pne" / "cpns-pne"
        return self._spawn(p.id, [str(binary), "--config", str(cfg)]
                           + self._trace_args(p.id, [str(binary)]) + self._crash_args(p.id)
                           + ["run"])

    def wait_linked(self, ids: list[str], timeout: float = 10.0) -> dict:
        """Waits until the PN GW has a PAN link to every PNE in ids."""
        deadline = time.monotonic() + timeout
        status = {}
        while time.monotonic() < deadline:
            status = self.gw_status()
            if all(i in status.get("pan_links", {}) for i in ids):
                return status
            time.sleep(0.05)
        raise RuntimeError(f"PNEs not linked to the PN GW: {ids}; status {status}")

    def wait_server_link(self, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        status = {}
        while time.monotonic() < deadline:
            status = self.gw_status()
            if status.get("server_link"):
                return status
            time.sleep(0.05)
        return status

    def pne_setup(self, p: PneSpec, setup_type: str = "all", invite: list[str] | None = None,
                  timeout: float = 120.0) -> tuple[int, dict, str]:
        cfg = self._pne_config(p)
        binary = self.bindir / "cpns-pne" / "cpns-pne"
        args = [str(binary), "--config", str(cfg)] + self._trace_args(p.id, [str(binary)]) + \
            self._crash_args(p.id) + ["setup", "--type", setup_type, "--json"]
        if invite:
            args += ["--invite", ",".join(invite)]
        env = dict(os.environ)
        if self.keylog:
            env["SSLKEYLOGFILE"] = self.keylog
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
        (self.workdir / f"{p.id}.setup.log").write_text(r.stderr)
        out = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
        return r.returncode, out, r.stderr

    def gw_invite(self, ids: list[str] | None = None, timeout: float = 120.0) -> tuple[int, dict]:
        args = [str(self.bindir / "cpns-gw" / "cpns-gw"), "invite", "--control", self.control_addr,
                "--json"] + self._token_args() + (ids or [])
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        out = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
        return r.returncode, out

    def gw_status(self) -> dict:
        r = subprocess.run([str(self.bindir / "cpns-gw" / "cpns-gw"), "status", "--control",
                            self.control_addr] + self._token_args(), capture_output=True,
                           text=True, timeout=10)
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else {}

    def gw_neighbours(self) -> dict:
        """`cpns-gw neighbours`: the PN GW's live neighbours ({} if it does not answer)."""
        r = subprocess.run([str(self.bindir / "cpns-gw" / "cpns-gw"), "neighbours", "--control",
                            self.control_addr] + self._token_args(), capture_output=True,
                           text=True, timeout=10)
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else {}

    def pne_neighbours(self, p: PneSpec) -> dict:
        """`cpns-pne neighbours` of a running PNE ({} if no answer)."""
        r = subprocess.run([str(self.bindir / "cpns-pne" / "cpns-pne"), "--config",
                            str(self.workdir / f"{p.id}.toml"), "neighbours"],
                           capture_output=True, text=True, timeout=10)
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else {}

    def stop(self, proc: Proc) -> float:
        """SIGTERM; returns seconds until exit (kills after STOP_GRACE_S and raises)."""
        if proc.popen.poll() is not None:
            return 0.0
        t0 = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait()
            raise RuntimeError(f"{proc.name} did not stop within {STOP_GRACE_S}s of SIGTERM")
        return time.monotonic() - t0

    def stop_all(self) -> dict[str, float]:
        times = {}
        errors = []
        for proc in reversed(self.procs):
            try:
                times[proc.name] = self.stop(proc)
            except RuntimeError as e:
                errors.append(str(e))
        self.procs.clear()
        if errors:
            raise RuntimeError("; ".join(errors))
        return times

    def logs(self) -> str:
        return "\n".join(f"==> {p.name}\n{p.log.read_text()}" for p in self.procs if p.log.exists())


_offers_trace: dict[tuple[str, ...], bool] = {}


def offers_trace_file(help_cmd: list[str]) -> bool:
    """Whether `help_cmd --help` lists a --trace-file option (asked once per command)."""
    key = tuple(help_cmd)
    if key not in _offers_trace:
        try:
            r = subprocess.run(help_cmd + ["--help"], capture_output=True, text=True, timeout=10)
            _offers_trace[key] = "--trace-file" in r.stdout + r.stderr
        except (OSError, subprocess.TimeoutExpired):
            _offers_trace[key] = False
    return _offers_trace[key]


def read_trace_file(path: Path) -> list[dict]:
    """Parses a JSON-lines trace; a line that is not one JSON object raises ValueError."""
    if not path.exists():
        return []
    events = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        ev = json.loads(line)
        if not isinstance(ev, dict):
            raise ValueError(f"{path}:{n}: not a JSON object: {line[:200]}")
        events.append(ev)
    return events


def make_lab(bindir: str, pnes: list[PneSpec], **kw) -> Lab:
    work = Path(tempfile.mkdtemp(prefix="cpnslab-"))
    # CPNS_LAB_STORE=postgresql: every lab's server gets a fresh database on the PostgreSQL
    # named by CPNS_TEST_PG_URL (the README's test command starts one).
    if os.environ.get("CPNS_LAB_STORE") == "postgresql" and "store_url" not in kw:
        admin = os.environ.get("CPNS_TEST_PG_URL", "")
        if not admin:
            raise RuntimeError("CPNS_LAB_STORE=postgresql needs CPNS_TEST_PG_URL")
        kw["store_url"] = new_pg_database(admin)
    lab = Lab(bindir=Path(bindir), workdir=work, pnes=pnes, **kw)
    lab.provision()
    return lab


def cleanup(lab: Lab) -> None:
    try:
        lab.stop_all()
    finally:
        shutil.rmtree(lab.workdir, ignore_errors=True)


def control_connect(addr: str, timeout: float) -> socket.socket:
    """A socket connected to a control endpoint, "unix:PATH" or "HOST:PORT"."""
    if addr.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(addr[len("unix:"):])
        except OSError:
            s.close()
            raise
        return s
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for options that need a fixed port)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_pg_database(admin_url: str) -> str:
    """Creates a fresh, empty database on the PostgreSQL at admin_url; returns its URL."""
    from urllib.parse import urlsplit, urlunsplit
    name = "cpnslab_" + secrets.token_hex(6)
    subprocess.run(["psql", admin_url, "-v", "ON_ERROR_STOP=1", "-qc", f"CREATE DATABASE {name}"],
                   check=True, capture_output=True, timeout=30)
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
