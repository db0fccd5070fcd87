"""The package test: build, lintian, verify, install, run, purge (docs/operations.md, "Debian
packages").

1. cpack builds cpns-server, cpns-gw and cpns-pne .debs from this build tree's binaries; each
   holds what it should (conffiles, unit, copyright, changelog.gz) and
   depends on the libraries dpkg-shlibdeps found and on adduser.
2. lintian on each .deb: no error (E:) lines; the warnings are printed.
3. dpkg -i all three; the binaries are stripped; the postinst made each service's system
   user and state directory.
4. systemd-analyze verify on each installed unit: no error and no complaint at all (systemd
   is not PID 1 here: verify loads the unit files offline); systemd-analyze security
   --offline prints each unit's exposure, which must stay at or below MAX_EXPOSURE.
5. The main job on the installed programs and configuration: a master key and the device
   keys made and provisioned with the installed cpnsctl; /etc/cpns/*.toml edited as an
   operator would; the installed cpns-server, cpns-gw and cpns-pne started as their system
   users with what their unit gives them (credentials in $CREDENTIALS_DIRECTORY, state and
   runtime directories, working directory, no capabilities, no new privileges); a PN
   established with each flow (5.2.1.1, 5.2.1.2) and found in the server's store. A SIGHUP
   (the unit's ExecReload) applies an edited log_level; --check-config of the packaged file
   needs the credential.
6. An upgrade: the same binaries packed as a newer version and installed over the first;
   the operator's edited configuration, keys, users and store stay, and the upgraded server
   starts with them.
7. `systemctl enable` on the three units (offline), then dpkg --purge: nothing of the
   packages is left except what the packages document they keep (the state directories,
   the system users, the key files the operator made in /etc/cpns).
Whatever fails, the packages are purged and what the test made is removed at the end.

Needs root (it installs packages) and a machine where no cpns package is installed; it
refuses to run otherwise. Usage: CPNS_BINARY_DIR=build/dev python3 tests/package_test.py
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import Lab, Proc, free_port  # noqa: E402

PACKAGES = ["cpns-server", "cpns-gw", "cpns-pne"]
PACKAGE_FILES = {  # what each package must install (besides its doc directory)
    "cpns-server": ["/usr/bin/cpns-server", "/usr/bin/cpnsctl", "/etc/cpns/cpns-server.toml",
                    "/lib/systemd/system/cpns-server.service"],
    "cpns-gw": ["/usr/bin/cpns-gw", "/etc/cpns/cpns-gw.toml",
                "/lib/systemd/system/cpns-gw.service"],
    "cpns-pne": ["/usr/bin/cpns-pne", "/etc/cpns/cpns-pne.toml",
                 "/lib/systemd/system/cpns-pne.service"],
}
CPACK_TIMEOUT_S = 300
LINTIAN_TIMEOUT_S = 300
DPKG_TIMEOUT_S = 120
VERIFY_TIMEOUT_S = 60
COMMAND_TIMEOUT_S = 60  # cpnsctl, cpns-gw status
ESTABLISH_TIMEOUT_S = 120  # one establishment (cpns-pne setup, cpns-gw invite)
LINK_TIMEOUT_S = 15  # until the PN GW has its server link and its PNEs' PAN links
RELOAD_TIMEOUT_S = 10  # until a daemon logs that it applied its edited file after SIGHUP
# systemd-analyze security's exposure scale is 0 (locked down) to 10 (UNSAFE); the units reach
# 1.6 ("OK"). A change that weakens a unit beyond this fails the test.
MAX_EXPOSURE = 2.0
UPGRADE_SUFFIX = "+upgradetest1"  # the upgrade step's version: this one plus it (sorts after)
# Where a package could leave something: compared before installation and after purge.
SNAPSHOT_ROOTS = ["/etc", "/usr", "/lib", "/opt", "/srv", "/var/lib", "/var/spool"]
SNAPSHOT_SKIP = ["/var/lib/apt", "/var/lib/dpkg/triggers", "/var/lib/dpkg/updates",
                 "/var/lib/dpkg/lock", "/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/status",
                 "/var/lib/dpkg/status-old", "/var/lib/dpkg/available",
                 "/var/lib/dpkg/available-old", "/var/lib/dpkg/diversions",
                 "/var/lib/dpkg/statoverride", "/var/lib/systemd/timers",
                 "/var/lib/postgresql", "/etc/ld.so.cache"]
# What purge keeps on purpose (README.Debian, docs/operations.md): the state directories with
# all in them, and the key files the operator made in /etc/cpns (the directory stays for them).
KEPT_STATE = [f"/var/lib/{p}" for p in PACKAGES]
OPERATOR_KEYS = ["/etc/cpns/master.key", "/etc/cpns/cpns-gw.key", "/etc/cpns/cpns-pne.key"]

step_no = 0


def step(text: str) -> None:
    global step_no
    step_no += 1
    print(f"\n[{step_no}] {text}", flush=True)


def run(args: list[str], timeout: float = COMMAND_TIMEOUT_S, check: bool = True,
        **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"`{' '.join(args)}` exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r


def installed(pkg: str) -> bool:
    r = run(["dpkg-query", "-W", "-f=${Status}", pkg], check=False)
    return r.returncode == 0 and "installed" in r.stdout.split()[-1:]


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def snapshot() -> set[str]:
    paths: set[str] = set()
    for root in SNAPSHOT_ROOTS:
        if os.path.islink(root):  # usrmerge: /lib -> usr/lib
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames
                           if not any(os.path.join(dirpath, d) == s for s in SNAPSHOT_SKIP)]
            paths.add(dirpath)
            for f in filenames:
                p = os.path.join(dirpath, f)
                if p not in SNAPSHOT_SKIP:
                    paths.add(p)
    return paths


def set_key(path: str, key: str, value: str) -> None:
    """Sets a top-level key of a TOML file as an operator edits one: the key's line (or its
    commented-out example) before the first table is replaced, else the key goes there."""
    lines = Path(path).read_text().splitlines()
    first_table = next((i for i, l in enumerate(lines) if l.startswith("[")), len(lines))
    pattern = re.compile(rf"^#?\s*{re.escape(key)}\s*=")
    new = f"{key} = {value}"
    for i in range(first_table):
        if pattern.match(lines[i]):
            lines[i] = new
            break
    else:
        lines.insert(first_table, new)
    Path(path).write_text("\n".join(lines) + "\n")


def q(text: str) -> str:
    return json.dumps(text)  # a TOML basic string


class PackageTest:
    def __init__(self, build: Path) -> None:
        self.build = build
        self.tmp = Path(tempfile.mkdtemp(prefix="cpns-package-test-"))
        os.chmod(self.tmp, 0o755)  # the services' users read pne-2's configuration here
        self.lab = Lab(bindir=Path("/usr/bin"), workdir=self.tmp / "logs")
        self.lab.workdir.mkdir()
        self.debs: dict[str, Path] = {}
        self.we_installed = False
        self.users_made: list[str] = []
        self.made_paths: list[str] = []  # /run paths to remove at the end
        self.pns: list[str] = []  # the PNs the main job established

    # --- 0: preconditions ------------------------------------------------------------
    def preconditions(self) -> None:
        step("Preconditions: root, no cpns package or leftover of one on this machine")
        if os.geteuid() != 0:
            raise AssertionError("the package test installs packages: run it as root")
        for tool in ["cpack", "lintian", "dpkg-shlibdeps", "systemd-analyze", "setpriv",
                     "readelf"]:
            if shutil.which(tool) is None:
                raise AssertionError(f"{tool} is missing: run scripts/deps.sh --with-tests")
        present = [p for p in PACKAGES if installed(p)]
        if present:
            raise AssertionError(f"{', '.join(present)} installed already: the test does not "
                                 "touch a real installation")
        leftovers = [u for u in PACKAGES if user_exists(u)] + \
            [p for p in KEPT_STATE + ["/etc/cpns"] if os.path.lexists(p)]
        if leftovers:
            raise AssertionError("left from an earlier installation, not touched by the test: "
                                 + ", ".join(leftovers))
        print("  root; no cpns package, user, /etc/cpns or /var/lib/cpns-* present")

    # --- 1: build ----------------------------------------------------------------------
    def build_debs(self) -> None:
        step(f"cpack -G DEB in {self.build}")
        out = self.tmp / "debs"
        t0 = time.monotonic()
        run(["cpack", "-G", "DEB", "-B", str(out)], timeout=CPACK_TIMEOUT_S, cwd=self.build)
        for pkg in PACKAGES:
            found = sorted(out.glob(f"{pkg}_*.deb"))
            if len(found) != 1:
                raise AssertionError(f"cpack made {len(found)} {pkg} packages: "
                                     f"{[p.name for p in out.glob('*.deb')]}")
            self.debs[pkg] = found[0]
            print(f"  {found[0].name} ({found[0].stat().st_size // 1024} KiB)")
        print(f"  built in {time.monotonic() - t0:.1f} s")
        for pkg, deb in self.debs.items():
            fields = run(["dpkg-deb", "-f", str(deb)]).stdout
            contents = run(["dpkg-deb", "-c", str(deb)]).stdout
            conffiles = run(["dpkg-deb", "-I", str(deb), "conffiles"]).stdout.split()
            depends = re.search(r"^Depends: (.*)$", fields, re.M)
            depends = depends.group(1) if depends else ""
            for need in ["adduser", "libssl3", "libc6"]:
                if need not in depends:
                    raise AssertionError(f"{pkg}: Depends lacks {need}: '{depends}'")
            for path in PACKAGE_FILES[pkg] + [f"/usr/share/doc/{pkg}/copyright",
                                             f"/usr/share/doc/{pkg}/changelog.gz",
                                             f"/usr/share/doc/{pkg}/README.Debian"]:
                if f".{path}\n" not in contents:
                    raise AssertionError(f"{pkg} lacks {path}:\n{contents}")
            if conffiles != [f"/etc/cpns/{pkg}.toml"]:
                raise AssertionError(f"{pkg}: conffiles {conffiles}")
            print(f"  {pkg}: Depends: {depends}")
            print(f"  {pkg}: conffiles {conffiles}; Section "
                  f"{re.search(r'^Section: (.*)$', fields, re.M).group(1)}")

    # --- 2: lintian ------------------------------------------------------------------
    def lintian(self) -> None:
        step("lintian on each package: no errors")
        errors = []
        for pkg, deb in self.debs.items():
            # lintian refuses nothing as root but says so on stderr; only the tags count.
            r = run(["lintian", "--tag-display-limit", "0", str(deb)], timeout=LINTIAN_TIMEOUT_S,
                    check=False)
            tags = [l for l in r.stdout.splitlines() if re.match(r"^[EWIPX]: ", l)]
            errs = [l for l in tags if l.startswith("E: ")]
            warns = [l for l in tags if l.startswith("W: ")]
            print(f"  {pkg}: {len(errs)} errors, {len(warns)} warnings")
            for l in errs + warns:
                print(f"    {l}")
            if r.returncode not in (0, 1) or (r.returncode == 1 and not errs):
                raise AssertionError(f"lintian failed on {deb.name} ({r.returncode}):\n"
                                     f"{r.stdout}{r.stderr}")
            errors += errs
        if errors:
            raise AssertionError("lintian errors:\n" + "\n".join(errors))

    # --- 3: install ---------------------------------------------------------------------
    def install(self) -> None:
        step("dpkg -i cpns-server cpns-gw cpns-pne")
        self.we_installed = True
        r = run(["dpkg", "-i"] + [str(d) for d in self.debs.values()], timeout=DPKG_TIMEOUT_S,
                env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        print("  " + "\n  ".join(l for l in r.stdout.splitlines() if l.strip()))
        for pkg in PACKAGES:
            if not installed(pkg):
                raise AssertionError(f"{pkg} is not installed after dpkg -i")
            for path in PACKAGE_FILES[pkg]:
                if not os.path.exists(path):
                    raise AssertionError(f"{path} missing after installing {pkg}")
            self.users_made.append(pkg)
            for path in PACKAGE_FILES[pkg]:
                if path.startswith("/usr/bin/"):
                    sections = run(["readelf", "-S", "-W", path]).stdout
                    if ".symtab" in sections or ".debug_info" in sections:
                        raise AssertionError(f"{path} is not stripped")
            u = pwd.getpwnam(pkg)
            st = os.stat(f"/var/lib/{pkg}")
            if not (u.pw_uid < 1000 and u.pw_dir == f"/var/lib/{pkg}"
                    and u.pw_shell.endswith("nologin")):
                raise AssertionError(f"user {pkg} is not a system user without login: {u}")
            if st.st_uid != u.pw_uid or stat.S_IMODE(st.st_mode) != 0o750:
                raise AssertionError(f"/var/lib/{pkg}: owner {st.st_uid}, mode "
                                     f"{stat.S_IMODE(st.st_mode):o}")
            print(f"  {pkg}: installed, binaries stripped; system user {pkg} "
                  f"(uid {u.pw_uid}, {u.pw_shell}); "
                  f"/var/lib/{pkg} 0750")

    # --- 4: systemd-analyze ---------------------------------------------------------------
    def verify_units(self) -> None:
        step("systemd-analyze verify and security --offline on the installed units")
        for pkg in PACKAGES:
            unit = f"/lib/systemd/system/{pkg}.service"
            r = run(["systemd-analyze", "verify", "--man=no", unit], timeout=VERIFY_TIMEOUT_S,
                    check=False)
            complaints = (r.stdout + r.stderr).strip()
            if r.returncode != 0 or complaints:
                raise AssertionError(f"systemd-analyze verify {unit} ({r.returncode}):\n"
                                     + complaints)
            r = run(["systemd-analyze", "security", "--offline=true", "--no-pager", unit],
                    timeout=VERIFY_TIMEOUT_S, check=False)
            m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\S+)", r.stdout)
            if not m:
                raise AssertionError(f"systemd-analyze security {unit}: no exposure level:\n"
                                     f"{r.stdout}{r.stderr}")
            exposure = float(m.group(1))
            print(f"  {unit}: verify clean; exposure {exposure} {m.group(2)}")
            if exposure > MAX_EXPOSURE:
                raise AssertionError(f"{unit}: exposure {exposure} > {MAX_EXPOSURE}:\n{r.stdout}")

    # --- 5: the main job on the installed programs -----------------------------------
    def ctl(self, *args: str) -> str:
        return run(["/usr/bin/cpnsctl", "--store", "sqlite:/var/lib/cpns-server/cpns-server.db",
                    "--master-key-file", "/etc/cpns/master.key"] + list(args)).stdout

    def credentials(self, unit: str, name: str, key_file: str, user: str) -> str:
        """What LoadCredential=name:key_file gives the unit: a private directory holding a
        copy of the key, readable by the service's user only."""
        d = Path(f"/run/credentials/{unit}")
        d.mkdir(parents=True)
        self.made_paths.append(str(d))
        shutil.copyfile(key_file, d / name)
        u = pwd.getpwnam(user)
        os.chown(d / name, u.pw_uid, u.pw_gid)
        os.chmod(d / name, 0o400)
        os.chown(d, u.pw_uid, u.pw_gid)
        os.chmod(d, 0o500)
        return str(d)

    def runtime_dir(self, pkg: str) -> str:
        d = f"/run/{pkg}"
        os.mkdir(d, 0o750)
        self.made_paths.append(d)
        u = pwd.getpwnam(pkg)
        os.chown(d, u.pw_uid, u.pw_gid)
        return d

    def as_service(self, pkg: str, creds: str, args: list[str]) -> list[str]:
        """`args` run as the unit runs them: its user and group, no capability (bounding and
        inheritable sets empty), no new privileges, its umask, environment and working
        directory. setpriv, sh and env exec in place (signals reach the daemon itself)."""
        return ["setpriv", f"--reuid={pkg}", f"--regid={pkg}", "--init-groups",
                "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--",
                "sh", "-c", 'umask 077 && exec "$@"', "sh",  # UMask=0077
                "env", "-i", "-C", f"/var/lib/{pkg}", "PATH=/usr/bin:/bin",
                f"CREDENTIALS_DIRECTORY={creds}", f"STATE_DIRECTORY=/var/lib/{pkg}",
                f"RUNTIME_DIRECTORY=/run/{pkg}"] + args

    def wait_file(self, path: str, proc: Proc) -> str:
        return self.lab._wait_ready(Path(path), proc)

    def main_job(self) -> None:
        step("Keys and provisioning with the installed cpnsctl (README.Debian's commands)")
        print("  " + run(["/usr/bin/cpnsctl", "new-master-key", "/etc/cpns/master.key"]).stdout
              .strip())
        self.ctl("provision", "gw-1", "--kind", "gw", "--key-out", "/etc/cpns/cpns-gw.key")
        self.ctl("provision", "pne-1", "--key-out", "/etc/cpns/cpns-pne.key")
        pne2_key = str(self.tmp / "pne-2.key")
        self.ctl("provision", "pne-2", "--key-out", pne2_key)
        run(["chown", "-R", "cpns-server:cpns-server", "/var/lib/cpns-server"])
        for k in OPERATOR_KEYS:
            mode = stat.S_IMODE(os.stat(k).st_mode)
            if mode != 0o600:
                raise AssertionError(f"{k}: mode {mode:o}, want 600")
        print("  " + self.ctl("list").strip().replace("\n", "\n  "))

        step("Edit /etc/cpns/*.toml as an operator would (addresses, IDs, state files)")
        sport, pan = free_port(), free_port()
        srv = "/etc/cpns/cpns-server.toml"
        set_key(srv, "listen", q(f"127.0.0.1:{sport}"))
        set_key(srv, "ready_file", q("/run/cpns-server/ready"))
        gw = "/etc/cpns/cpns-gw.toml"
        for k, v in [("id", "gw-1"), ("server", f"127.0.0.1:{sport}"),
                     ("pan_listen", f"127.0.0.1:{pan}"),
                     ("discovery_group", ""), ("state_file", "/var/lib/cpns-gw/state"),
                     ("ready_file", "/run/cpns-gw/ready")]:
            set_key(gw, k, q(v))
        with open(gw, "a") as f:
            f.write('\n[[pne]]\nid = "pne-1"\n\n[[pne]]\nid = "pne-2"\n')
        pne = "/etc/cpns/cpns-pne.toml"
        for k, v in [("id", "pne-1"), ("gw", f"127.0.0.1:{pan}"), ("discovery_group", ""),
                     ("state_file", "/var/lib/cpns-pne/state")]:
            set_key(pne, k, q(v))
        pne2 = str(self.tmp / "pne-2.toml")  # a second device, as a second configuration
        shutil.copyfile(pne, pne2)
        os.chmod(pne2, 0o644)
        set_key(pne2, "id", q("pne-2"))
        set_key(pne2, "state_file", q("/var/lib/cpns-pne/pne-2.state"))
        # Its own control socket: pne-1 takes the default one, $RUNTIME_DIRECTORY/control.sock.
        set_key(pne2, "control", q("unix:/run/cpns-pne/pne-2-control.sock"))
        print(f"  server on 127.0.0.1:{sport}; PN GW gw-1 PAN 127.0.0.1:{pan}, control on its "
              f"default socket; PNEs pne-1 (/etc/cpns/cpns-pne.toml), pne-2; discovery off")

        step("Start the installed daemons as their units would (users, credentials, dirs)")
        for pkg in PACKAGES:
            self.runtime_dir(pkg)
        creds = {
            "cpns-server": self.credentials("cpns-server.service", "master-key",
                                            "/etc/cpns/master.key", "cpns-server"),
            "cpns-gw": self.credentials("cpns-gw.service", "device-key", "/etc/cpns/cpns-gw.key",
                                        "cpns-gw"),
            "cpns-pne": self.credentials("cpns-pne.service", "device-key",
                                         "/etc/cpns/cpns-pne.key", "cpns-pne"),
            "pne-2": self.credentials("cpns-pne-2", "device-key", pne2_key, "cpns-pne"),
        }
        p = self.lab._spawn("server", self.as_service(
            "cpns-server", creds["cpns-server"], ["/usr/bin/cpns-server", "--config", srv]))
        ready = self.wait_file("/run/cpns-server/ready", p)
        print(f"  cpns-server (user cpns-server) ready on {ready}")
        if not os.path.exists("/var/lib/cpns-server/cpns-server.db"):
            raise AssertionError("the server's store is not in its state directory")
        p = self.lab._spawn("gw", self.as_service(
            "cpns-gw", creds["cpns-gw"], ["/usr/bin/cpns-gw", "--config", gw, "run"]))
        ready = self.wait_file('/run/cpns-gw/ready', p)
        print(f"  cpns-gw (user cpns-gw) ready: {ready}")
        control = dict(kv.split("=", 1) for kv in ready.split())["control"]
        if control != "unix:/run/cpns-gw/control.sock":
            raise AssertionError(f"the PN GW's control endpoint is {control}, not the socket in "
                                 "its runtime directory")
        self.lab.control_addr = control
        mode = stat.S_IMODE(os.stat("/run/cpns-gw/control.sock").st_mode)
        if mode != 0o660:
            raise AssertionError(f"the PN GW's control socket has mode {mode:o} under the "
                                 "unit's umask, not 660")
        self.lab.bindir = self.tmp / "bin"  # Lab's helpers call <bindir>/<name>/<name>
        for name in ["cpns-gw", "cpns-pne"]:
            (self.lab.bindir / name).mkdir(parents=True)
            os.symlink(f"/usr/bin/{name}", self.lab.bindir / name / name)
        if not self.lab.wait_server_link(LINK_TIMEOUT_S).get("server_link"):
            raise AssertionError("the PN GW has no link to the server:\n" + self.lab.logs())
        self.lab._spawn("pne-2", self.as_service(
            "cpns-pne", creds["pne-2"], ["/usr/bin/cpns-pne", "--config", pne2, "run"]))
        self.lab.wait_linked(["pne-2"], LINK_TIMEOUT_S)
        print("  PN GW linked to the server; pne-2 (user cpns-pne) linked to the PN GW")

        step("5.2.1.1 PNE initiated: installed cpns-pne setup --type all on pne-1")
        r = run(self.as_service("cpns-pne", creds["cpns-pne"],
                                ["/usr/bin/cpns-pne", "--config", pne, "setup", "--type", "all",
                                 "--json"]), timeout=ESTABLISH_TIMEOUT_S, check=False)
        out = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
        members = sorted(m["pne_id"] for m in out.get("inventory", {}).get("members", []))
        print(f"  exit {r.returncode}: success={out.get('success')} PN {out.get('pn_id')} "
              f"members {members}")
        if r.returncode != 0 or not out.get("success") or members != ["pne-1", "pne-2"]:
            raise AssertionError(f"PNE initiated establishment failed:\n{r.stdout}{r.stderr}\n"
                                 + self.lab.logs())
        first_pn = out["pn_id"]

        step("5.2.1.2 PN GW initiated: installed cpns-gw invite, pne-1 now running")
        self.lab._spawn("pne-1", self.as_service(
            "cpns-pne", creds["cpns-pne"], ["/usr/bin/cpns-pne", "--config", pne, "run"]))
        self.lab.wait_linked(["pne-1", "pne-2"], LINK_TIMEOUT_S)
        r = run(["/usr/bin/cpns-gw", "--config", gw, "invite", "--json"],
                timeout=ESTABLISH_TIMEOUT_S, check=False)
        out = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
        members = sorted(m["pne_id"] for m in out.get("inventory", {}).get("members", []))
        print(f"  exit {r.returncode}: success={out.get('success')} PN {out.get('pn_id')} "
              f"members {members}")
        if r.returncode != 0 or not out.get("success") or members != ["pne-1", "pne-2"]:
            raise AssertionError(f"PN GW initiated establishment failed:\n{r.stdout}{r.stderr}\n"
                                 + self.lab.logs())
        second_pn = out["pn_id"]

        step("Reload as the unit's ExecReload does (SIGHUP), and --check-config of the file")
        set_key(gw, "log_level", q("debug"))
        gw_proc = self.lab.proc("gw")
        mark = len(gw_proc.log.read_text())
        os.kill(gw_proc.popen.pid, signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        while "'log_level' applied" not in gw_proc.log.read_text()[mark:]:
            if time.monotonic() > deadline or gw_proc.popen.poll() is not None:
                raise AssertionError("cpns-gw did not apply its edited log_level on SIGHUP:\n"
                                     + gw_proc.log.read_text()[mark:])
            time.sleep(0.05)
        if not self.lab.gw_status().get("server_link"):
            raise AssertionError("cpns-gw lost its server link in the reload")
        print("  cpns-gw: 'log_level' applied on SIGHUP (the key read again from its "
              "credential); still linked")
        r = run(["/usr/bin/cpns-gw", "--check-config", gw], check=False)
        if r.returncode != 2 or "'device-key' credential" not in r.stderr:
            raise AssertionError(f"--check-config without the credential: exit {r.returncode}, "
                                 f"{r.stderr}")
        print(f"  without the credential: exit 2, {r.stderr.strip()}")
        r = run(self.as_service("cpns-gw", creds["cpns-gw"],
                                ["/usr/bin/cpns-gw", "--check-config", gw]), check=False)
        if r.returncode != 0:
            raise AssertionError(f"--check-config as the unit: exit {r.returncode}, {r.stderr}")
        print(f"  as the unit runs it: {r.stdout.strip()}")

        step("Stop the daemons (SIGTERM); the server's store and the devices' state files")
        times = self.lab.stop_all()
        print("  stopped: " + ", ".join(f"{n} {t * 1000:.0f} ms" for n, t in times.items()))
        pns = self.ctl("pns")
        print("  cpnsctl pns:\n    " + pns.strip().replace("\n", "\n    "))
        self.pns = [first_pn, second_pn]
        for pn in (first_pn, second_pn):
            if pn not in pns:
                raise AssertionError(f"PN {pn} is not in the server's store:\n{pns}")
        print("  cpnsctl check: " + self.ctl("check").strip())
        for path, owner in [("/var/lib/cpns-gw/state", "cpns-gw"),
                            ("/var/lib/cpns-pne/state", "cpns-pne"),
                            ("/var/lib/cpns-pne/pne-2.state", "cpns-pne")]:
            st = os.stat(path)
            if pwd.getpwuid(st.st_uid).pw_name != owner:
                raise AssertionError(f"{path} belongs to uid {st.st_uid}, not {owner}")
        print("  state files in /var/lib/cpns-gw and /var/lib/cpns-pne, owned by the services")
        for d in self.made_paths:  # what systemd removes when a unit stops
            shutil.rmtree(d)
        self.made_paths.clear()

    # --- 6: upgrade ------------------------------------------------------------------------
    def upgrade(self) -> None:
        version = run(["dpkg-query", "-W", "-f=${Version}", "cpns-server"]).stdout
        newer = version + UPGRADE_SUFFIX
        step(f"Upgrade: dpkg -i of the same binaries packed as version {newer}")
        out = self.tmp / "debs-upgrade"
        run(["cpack", "-G", "DEB", "-B", str(out), "-D", f"CPACK_DEBIAN_PACKAGE_VERSION={newer}"],
            timeout=CPACK_TIMEOUT_S, cwd=self.build)
        debs = [next(out.glob(f"{pkg}_*.deb")) for pkg in PACKAGES]
        edited = {f"/etc/cpns/{p}.toml": Path(f"/etc/cpns/{p}.toml").read_text() for p in PACKAGES}
        uids = {p: pwd.getpwnam(p).pw_uid for p in PACKAGES}
        r = run(["dpkg", "-i"] + [str(d) for d in debs], timeout=DPKG_TIMEOUT_S,
                env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        print("  " + "\n  ".join(l for l in r.stdout.splitlines() if l.strip()))
        for pkg in PACKAGES:
            now = run(["dpkg-query", "-W", "-f=${Version}", pkg]).stdout
            if now != newer:
                raise AssertionError(f"{pkg} is at {now} after the upgrade, not {newer}")
            if pwd.getpwnam(pkg).pw_uid != uids[pkg]:
                raise AssertionError(f"the upgrade changed the UID of {pkg}")
        for path, text in edited.items():
            if Path(path).read_text() != text:
                raise AssertionError(f"the upgrade replaced the operator's edits of {path}")
        for k in OPERATOR_KEYS:
            if not os.path.exists(k):
                raise AssertionError(f"the upgrade deleted {k}")
        pns = self.ctl("pns")
        if not all(pn in pns for pn in self.pns):
            raise AssertionError(f"the store lost PNs in the upgrade:\n{pns}")
        self.runtime_dir("cpns-server")
        creds = self.credentials("cpns-server.service", "master-key", "/etc/cpns/master.key",
                                 "cpns-server")
        p = self.lab._spawn("server-upgraded", self.as_service(
            "cpns-server", creds, ["/usr/bin/cpns-server", "--config",
                                   "/etc/cpns/cpns-server.toml"]))
        addr = self.wait_file("/run/cpns-server/ready", p)
        self.lab.stop_all()
        for d in self.made_paths:
            shutil.rmtree(d)
        self.made_paths.clear()
        print(f"  {', '.join(PACKAGES)} at {newer}; the edited /etc/cpns/*.toml, the keys, the "
              f"users and the store ({len(self.pns)} PNs) kept; the upgraded cpns-server "
              f"started on {addr} with the kept configuration and stopped")

    # --- 7: purge ----------------------------------------------------------------------
    def purge(self, before: set[str]) -> None:
        step("systemctl enable the units (offline), then dpkg --purge the three packages")
        wants = "/etc/systemd/system/multi-user.target.wants"
        wants_existed = os.path.isdir(wants)
        r = run(["systemctl", "enable"] + [f"{p}.service" for p in PACKAGES], check=False)
        print("  " + (r.stdout + r.stderr).strip().replace("\n", "\n  "))
        links = [f"/etc/systemd/system/multi-user.target.wants/{p}.service" for p in PACKAGES]
        if r.returncode != 0 or not all(os.path.islink(l) for l in links):
            raise AssertionError(f"systemctl enable did not make {links}")
        r = run(["dpkg", "--purge"] + PACKAGES, timeout=DPKG_TIMEOUT_S)
        print("  " + (r.stdout + r.stderr).strip().replace("\n", "\n  "))
        self.we_installed = False
        if not wants_existed and os.path.isdir(wants) and not os.listdir(wants):
            os.rmdir(wants)  # made by `systemctl enable` above (the operator), not by a package
        after = snapshot()
        still = [p for p in PACKAGES if installed(p)]
        if still:
            raise AssertionError(f"still installed after purge: {still}")
        kept = set(OPERATOR_KEYS) | {"/etc/cpns"}
        for d in KEPT_STATE:
            kept |= {p for p in after if p == d or p.startswith(d + "/")}
        added = sorted(after - before - kept)
        removed = sorted(before - after)
        if added or removed:
            raise AssertionError(f"purge left {added}; and these are gone that were there "
                                 f"before: {removed}")
        left_in_etc = sorted(str(p) for p in Path("/etc/cpns").iterdir())
        if left_in_etc != sorted(OPERATOR_KEYS):
            raise AssertionError(f"/etc/cpns holds {left_in_etc} after purge")
        for u in PACKAGES:
            if not user_exists(u):
                raise AssertionError(f"purge deleted the user {u} (documented: kept)")
        print(f"  nothing left of the packages; kept as documented: /etc/cpns with "
              f"{[Path(k).name for k in OPERATOR_KEYS]}, {KEPT_STATE}, users {PACKAGES}")

    # --- cleanup ------------------------------------------------------------------------
    def cleanup(self) -> None:
        step("Cleanup: stop what runs, purge, remove what the test made")
        try:
            self.lab.stop_all()
        except RuntimeError as e:
            print(f"  {e}")
        if self.we_installed:
            r = run(["dpkg", "--purge"] + PACKAGES, timeout=DPKG_TIMEOUT_S, check=False)
            print(f"  dpkg --purge: exit {r.returncode}")
        # The links of the test's `systemctl enable`, should the purge have left them.
        links = [f"/etc/systemd/system/multi-user.target.wants/{p}.service" for p in PACKAGES]
        for path in self.made_paths + KEPT_STATE + ["/etc/cpns"] + links:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
        for u in self.users_made:
            if user_exists(u):
                run(["deluser", "--system", "--quiet", u], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
        print("  done")


def main() -> int:
    build = Path(os.environ.get("CPNS_BINARY_DIR") or (sys.argv[1] if len(sys.argv) > 1 else ""))
    if not (build / "CPackConfig.cmake").exists():
        print(f"package_test: {build} is not a configured build tree (CPNS_BINARY_DIR)",
              file=sys.stderr)
        return 2
    t0 = time.monotonic()
    test = PackageTest(build.resolve())
    ok = False
    try:
        test.preconditions()
    except AssertionError as e:
        print(f"\npackage test: FAILED: {e}")
        shutil.rmtree(test.tmp, ignore_errors=True)
        return 1
    try:
        test.build_debs()
        test.lintian()
        before = snapshot()
        test.install()
        test.verify_units()
        test.main_job()
        test.upgrade()
        test.purge(before)
        ok = True
    except (AssertionError, RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        print(f"\npackage test: FAILED: {e}")
    finally:
        test.cleanup()
    print(f"\npackage test: {'OK' if ok else 'FAILED'} in {time.monotonic() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
