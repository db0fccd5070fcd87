"""A daemon given a key or state file that is a FIFO, a device or a directory exits at once with
a clear message naming the file and the problem (status 2), instead of hanging on the FIFO or
reading /dev/zero until memory runs out. Each run is bounded in time and, as a safety net for a
regression, in address space.
"""

import os
import resource
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import cleanup, make_lab, new_key  # noqa: E402

BIN = Path(os.environ.get("CPNS_BINARY_DIR", "build/dev")) / "apps"
EXIT_TIMEOUT_S = 20.0           # generous; a correct daemon exits in milliseconds
ADDRESS_SPACE = 2 << 30         # 2 GiB: a runaway read fails instead of exhausting memory


def limit_memory():
    # Under AddressSanitizer (CPNS_SANITIZER=1, scripts/sanitize.sh) the runtime reserves tens
    # of TiB of shadow address space at start, so an address-space limit stops every process
    # before main(); there the time bound (EXIT_TIMEOUT_S) is what catches a runaway read.
    if os.environ.get("CPNS_SANITIZER") == "1":
        return
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_bounded(args):
    """(exit status, stderr, seconds); status None if it had to be killed."""
    t0 = time.monotonic()
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S,
                           preexec_fn=limit_memory)
        return r.returncode, r.stderr, time.monotonic() - t0
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, err, time.monotonic() - t0


class ConfigFilesTest(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="cpns-config-files-"))
        self.fifo = self.dir / "fifo"
        os.mkfifo(self.fifo, 0o600)

    def tearDown(self):
        for p in sorted(self.dir.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        self.dir.rmdir()

    def pne_config(self, **keys) -> Path:
        lines = ['id = "pne-1"', 'gw = "127.0.0.1:9"', 'enough_ui = true']
        lines += [f'{k} = "{v}"' for k, v in keys.items()]
        cfg = self.dir / "pne.toml"
        cfg.write_text("\n".join(lines) + "\n")
        os.chmod(cfg, 0o600)
        return cfg

    def assert_refused(self, args, *expected):
        status, err, secs = run_bounded(args)
        self.assertIsNotNone(status, f"{Path(args[0]).name} still running after "
                                     f"{EXIT_TIMEOUT_S}s (hangs): {err[-1000:]}")
        self.assertEqual(status, 2, f"exit status {status}: {err[-1000:]}")
        for text in expected:
            self.assertIn(text, err)

    def test_pne_key_file_fifo(self):
        cfg = self.pne_config(eukey_file=self.fifo)
        self.assert_refused([str(BIN / "cpns-pne" / "cpns-pne"), "--config", str(cfg), "run"],
                            f"key file {self.fifo} is a FIFO, not a regular file", "'eukey_file'")

    def test_pne_key_file_dev_zero(self):
        cfg = self.pne_config(eukey_file="/dev/zero")
        self.assert_refused([str(BIN / "cpns-pne" / "cpns-pne"), "--config", str(cfg), "run"],
                            "key file /dev/zero is a character device, not a regular file")

    def test_pne_key_file_directory(self):
        cfg = self.pne_config(eukey_file=self.dir)
        self.assert_refused([str(BIN / "cpns-pne" / "cpns-pne"), "--config", str(cfg), "run"],
                            f"key file {self.dir} is a directory, not a regular file")

    def test_pne_state_file_fifo_and_device(self):
        for state, problem in ((self.fifo, "a FIFO"), ("/dev/zero", "a character device")):
            cfg = self.pne_config(eukey=new_key(), state_file=state)
            self.assert_refused([str(BIN / "cpns-pne" / "cpns-pne"), "--config", str(cfg), "run"],
                                f"state file {state} is {problem}, not a regular file")

    def test_pne_config_file_fifo(self):
        self.assert_refused([str(BIN / "cpns-pne" / "cpns-pne"), "--config", str(self.fifo),
                             "run"], f"configuration file {self.fifo} is a FIFO")

    def test_pne_capability_and_content_over_the_codec_limits(self):
        # Texts and lists the PN GW would drop as malformed (the codec's limits: 256 characters
        # per text, 32 contents, 16 PAN technologies) are refused at start, naming the setting
        # (found by cpns-fuzz-config; before, the PNE started and its joins were dropped).
        pne = [str(BIN / "cpns-pne" / "cpns-pne"), "--config"]
        cases = [
            ('[capabilities]\ndevice_type = "' + "x" * 257 + '"\n',
             "'capabilities.device_type' is 257 characters long; at most 256"),
            ('[capabilities]\npan_technologies = [' + ", ".join(['"ble"'] * 17) + "]\n",
             "'capabilities.pan_technologies' has 17 entries; at most 16"),
            ("".join(f'[[content]]\nid = "c{i}"\n' for i in range(33)),
             "'content' has 33 entries; at most 32"),
            ('[[content]]\nid = "c0"\n[[content]]\nid = "c1"\ntitle = "' + "t" * 300 + '"\n',
             "'content[1].title' is 300 characters long; at most 256"),
            # A float where an integer belongs (toml++ would cast 8.1e29 out of range: undefined
            # behaviour found by cpns-fuzz-config), and a negative size.
            ('[[content]]\nid = "c0"\nsize_bytes = 81e29\n',
             "'content[0].size_bytes' must be a non-negative integer"),
            ('[[content]]\nid = "c0"\nsize_bytes = -1\n',
             "'content[0].size_bytes' must be a non-negative integer"),
            ('neighbour_ttl_ms = 81e29\n', "'neighbour_ttl_ms' must be an integer"),
        ]
        for extra, expected in cases:
            cfg = self.pne_config(eukey=new_key())
            cfg.write_text(cfg.read_text() + extra)
            self.assert_refused(pne + [str(cfg), "run"], expected)
        # At the limits the file is accepted: the configuration is read whole, and only the
        # command line's PN ID, checked after it, is refused.
        cfg = self.pne_config(eukey=new_key())
        cfg.write_text(cfg.read_text() + '[capabilities]\ndevice_type = "' + "x" * 256 + '"\n'
                       + "".join(f'[[content]]\nid = "c{i}"\n' for i in range(32)))
        self.assert_refused(pne + [str(cfg), "leave", "--pn", "not a PN"],
                            "--pn 'not a PN' is not a valid PN ID")

    def test_server_master_key_fifo(self):
        lab = make_lab(str(BIN), [])
        try:
            cfg = lab.workdir / "server.toml"
            cfg.write_text(cfg.read_text().replace(str(lab.workdir / "master.key"),
                                                   str(self.fifo)))
            status, err, _ = run_bounded([str(BIN / "cpns-server" / "cpns-server"),
                                          "--config", str(cfg)])
            self.assertIsNotNone(status, f"cpns-server hangs on a FIFO master key: {err}")
            self.assertNotEqual(status, 0)
            self.assertIn(f"master key file {self.fifo} is not a regular file (a FIFO)", err)
        finally:
            cleanup(lab)


if __name__ == "__main__":
    unittest.main()
