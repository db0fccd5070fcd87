"""Configuration ergonomics of the programs (no daemon is started):

- `--version` of every program prints the project version and the OpenSSL version;
- `--print-default-config` prints exactly the file in config/, and that default (with the
  required values filled in) passes `--check-config`;
- `--check-config` stops at the first error with FILE:LINE:COL, the key, what was expected and
  what was found (exit status 2), unknown keys included ("did you mean"), and checks the files
  the configuration names (key files, token files, entities file).
"""

import os
import re
import subprocess
import tempfile
import unittest
from pathlib import Path

SOURCE = Path(os.environ.get("CPNS_SOURCE_DIR", Path(__file__).resolve().parent.parent))
BIN = Path(os.environ.get("CPNS_BINARY_DIR", "build/dev")) / "apps"
COMMAND_TIMEOUT_S = 20.0
DAEMONS = {"cpns-server": [], "cpns-gw": ["run"], "cpns-pne": ["run"]}
PROGRAMS = ["cpns-server", "cpns-gw", "cpns-pne", "cpnsctl", "cpns-sim", "cpns-frame",
            "cpns-load", "cpns-explore", "cpns-vectors"]


def run(args, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S, **kw)


def binary(name: str) -> Path:
    return BIN / name / name


def project_version() -> str:
    text = (SOURCE / "CMakeLists.txt").read_text()
    return re.search(r"project\(cpns VERSION ([0-9.]+)", text).group(1)


class ConfigCliTest(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="cpns-config-cli-"))
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", str(self.dir)], check=False))
        # The default control socket lives in the runtime directory systemd would give.
        self.env = dict(os.environ, RUNTIME_DIRECTORY=str(self.dir / "run"))
        self.key = self.write("dev.key", os.urandom(32).hex() + "\n")

    def write(self, name: str, text: str, mode: int = 0o600) -> Path:
        path = self.dir / name
        path.write_text(text)
        os.chmod(path, mode)
        return path

    def check(self, program: str, path: Path):
        return run([binary(program)] + DAEMONS[program] + ["--check-config", path], env=self.env)

    def test_version_of_every_program(self):
        for program in PROGRAMS:
            with self.subTest(program=program):
                r = run([binary(program), "--version"])
                self.assertEqual(r.returncode, 0, r.stderr)
                lines = r.stdout.splitlines()
                self.assertTrue(lines[0].startswith(f"{program} {project_version()}"), lines)
                self.assertRegex(lines[1], r"^OpenSSL 3\.")

    def filled(self, program: str, text: str) -> str:
        """The default with the required values set (the first commented id and eukey_file)."""
        if program == "cpns-server":
            return text
        text = re.sub(r"^# id = .*$", 'id = "dev-1"', text, count=1, flags=re.M)
        return re.sub(r"^# eukey_file = .*$", f'eukey_file = "{self.key}"', text, count=1,
                      flags=re.M)

    def test_default_configs_are_the_repository_files_and_pass_the_check(self):
        for program in DAEMONS:
            with self.subTest(program=program):
                r = run([binary(program), "--print-default-config"])
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stdout, (SOURCE / "config" / f"{program}.toml").read_text())
                cfg = self.write(f"{program}.toml", self.filled(program, r.stdout))
                r = self.check(program, cfg)
                self.assertEqual((r.returncode, r.stdout), (0, f"{cfg}: OK\n"), r.stderr)
                # Without the required values a device's default is refused, naming the key.
                if program != "cpns-server":
                    raw = self.write(f"{program}-raw.toml", run(
                        [binary(program), "--print-default-config"]).stdout)
                    r = self.check(program, raw)
                    self.assertEqual(r.returncode, 2)
                    self.assertIn("key 'id'", r.stderr)

    def assert_first_error(self, program: str, text: str, expected: str):
        cfg = self.write("bad.toml", text)
        r = self.check(program, cfg)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn(expected.replace("FILE", str(cfg)), r.stderr)
        self.assertEqual(r.stdout, "")

    def test_connection_bounds_are_configurable_up_to_their_limit(self):
        # The total bounds (max_connections, pan_max_connections): the former constants are
        # the defaults, a per-source bound may go up to the total, and each has a hard limit.
        head = f'id = "gw-1"\neukey_file = "{self.key}"\n'
        for program, text in (("cpns-gw", head + "pan_max_connections = 1000\n"
                                          "pan_max_connections_per_source = 1000\n"),
                              ("cpns-server", "max_connections = 20000\n"
                                              "max_connections_per_source = 20000\n"),
                              ("cpns-server", "max_connections = 500\n")):
            with self.subTest(program=program, text=text):
                cfg = self.write("ok.toml", text)
                r = self.check(program, cfg)
                self.assertEqual((r.returncode, r.stdout), (0, f"{cfg}: OK\n"), r.stderr)
        self.assert_first_error("cpns-gw", head + "pan_max_connections = 100000\n",
                                "FILE:3:23: key 'pan_max_connections' must be 1..16384")
        self.assert_first_error("cpns-gw", head + "pan_max_connections = 100\n"
                                "pan_max_connections_per_source = 101\n",
                                "FILE:4:34: key 'pan_max_connections_per_source' must be 1..100")
        self.assert_first_error("cpns-server", "max_connections = 100001\n",
                                "FILE:1:19: key 'max_connections' must be 1..100000")
        self.assert_first_error("cpns-server", "max_connections_per_source = 10001\n",
                                "FILE:1:30: key 'max_connections_per_source' must be 1..10000")
        self.assert_first_error("cpns-server", "max_connections = 0\n",
                                "FILE:1:19: key 'max_connections' must be 1..100000")

    def test_first_error_with_its_position(self):
        head = f'id = "gw-1"\neukey_file = "{self.key}"\n'
        self.assert_first_error("cpns-gw", head + 'contol = "unix:/tmp/x.sock"\nbogus = 1\n',
                                "FILE:3:1: unknown key 'contol' (did you mean 'control'?)")
        self.assert_first_error("cpns-gw", head + '\n[capabilities]\nmodle = "x"\n',
                                "FILE:5:1: unknown key 'capabilities.modle' (did you mean "
                                "'model'?)")
        self.assert_first_error("cpns-gw", head + 'neighbour_ttl_ms = "5m"\n',
                                "FILE:3:20: key 'neighbour_ttl_ms' must be an integer, got a "
                                "string")
        self.assert_first_error("cpns-gw", head + 'pan_max_connections_per_source = 100000\n',
                                "FILE:3:34: key 'pan_max_connections_per_source' must be 1..512")
        self.assert_first_error("cpns-gw", head + 'log_level = "verbose"\n',
                                "FILE:3:13: key 'log_level': expected trace, debug, info, warn "
                                "or error, got 'verbose'")
        self.assert_first_error("cpns-gw", head + 'control = "somewhere"\n',
                                "FILE:3:11: key 'control': expected unix:/ABSOLUTE/PATH or "
                                "HOST:PORT, got 'somewhere'")
        self.assert_first_error("cpns-gw", head + 'control = "127.0.0.1:7101"\n',
                                "a TCP control endpoint needs control_token_file")
        loose = self.write("loose.token", os.urandom(32).hex() + "\n", 0o644)
        self.assert_first_error("cpns-gw", head + f'control = "127.0.0.1:7101"\n'
                                f'control_token_file = "{loose}"\n',
                                "is accessible by group or others (mode 0644)")
        self.assert_first_error("cpns-pne", 'id = "pne-1"\neukey_file = "/nonexistent.key"\n',
                                "FILE:2:14: key 'eukey_file': cannot open key file "
                                "/nonexistent.key")
        self.assert_first_error("cpns-server", 'listen = "127.0.0.1:7000"\nlisen = "x"\n',
                                "FILE:2:1: unknown key 'lisen' (did you mean 'listen'?)")
        entities = self.write("entities.toml", '[[entity]]\nid = "gw-1"\nkind = "router"\n'
                              f'eukey = "{os.urandom(32).hex()}"\n')
        self.assert_first_error("cpns-server", f'entities = "{entities}"\n',
                                "FILE:1:12: key 'entities': ")
        self.assert_first_error("cpns-server", 'store = 5\n',
                                "FILE:1:9: key 'store' must be a string, got an integer")
        # The old key control_listen is a TCP alias of control: with a warning, not both.
        token = self.write("ok.token", os.urandom(32).hex() + "\n")
        legacy = self.write("legacy.toml", head + 'control_listen = "127.0.0.1:7101"\n'
                            f'control_token_file = "{token}"\n')
        r = self.check("cpns-gw", legacy)
        self.assertEqual((r.returncode, r.stdout), (0, f"{legacy}: OK\n"), r.stderr)
        self.assertIn("key 'control_listen' is deprecated: write control = \"127.0.0.1:7101\"",
                      r.stderr)
        self.assert_first_error("cpns-gw", head + 'control = "unix:/tmp/c.sock"\n'
                                'control_listen = "127.0.0.1:7101"\n',
                                "FILE:4:18: key 'control_listen': deprecated alias of 'control', "
                                "which is set too")
        # A TOML syntax error has its position too.
        self.assert_first_error("cpns-server", 'listen = "127.0.0.1:7000\n', "FILE:1:")


if __name__ == "__main__":
    unittest.main()
