"""A real Prometheus scrapes the three daemons while both flows run, and agrees with them.

A CPNS Server, a PN GW and three PNEs (two with enough UI on an insecure PAN: PSK-TLS with a
LocalEUKey; one without UI: PSK-TLS with its pre-assigned key) run as processes on 127.0.0.1
(tests/lab/cpnslab.py), each with `metrics` set: the server and the PNEs as 127.0.0.1:PORT, the
PN GW as a bare PORT (which must mean 127.0.0.1). The Debian `prometheus` binary is started on
127.0.0.1 with a generated configuration (scrape_interval 1s, its own storage folder) scraping
all five endpoints. Then:

  - PNE initiated (5.2.1.1): pne-a asks for a PN of type All (pne-1..3 are notified), then
    pne-b one of type 1-1 (both run only `cpns-pne setup`);
  - PN GW initiated (5.2.1.2): the PN GW invites pne-1, pne-2 and pne-3;
  - one establishment that fails: pne-4, whose EUKey is not the one provisioned, asks for a
    1-1 PN (the server cannot authenticate it).

Checks: Prometheus's HTTP API (/api/v1/query) reports every target up, the server's
cpns_pn_registrations_total equal to the number of PNs the store holds (cpnsctl export) and to
the successes the commands printed, and the establishment latency histogram's _count (at the
server and at the PN GW, outcome "success") equal to that number; the failed one is counted
under its typed reason. `promtool check metrics` accepts every endpoint's output; the endpoint
answers only GET /metrics (404, 405, 400 otherwise).

Prometheus and promtool come from the Debian package `prometheus` (scripts/deps.sh
--with-tests). Without them the test is skipped, unless CPNS_REQUIRE_PROMETHEUS is set (then it
fails). Python 3 standard library only (unittest).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import PneSpec, cleanup, free_port, make_lab  # noqa: E402

BIN = os.path.join(os.environ.get("CPNS_BINARY_DIR", "build/dev"), "apps")
SOURCE_DIR = Path(os.environ.get("CPNS_SOURCE_DIR", Path(__file__).resolve().parent.parent))
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
REQUIRED = bool(os.environ.get("CPNS_REQUIRE_PROMETHEUS"))
# Bounds of the test's waits (each loop polls and ends at its deadline).
PROMETHEUS_READY_S = 20.0
SCRAPE_WAIT_S = 15.0
HTTP_TIMEOUT_S = 5.0


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def raw_request(port: int, data: bytes) -> str:
    """Sends `data` to 127.0.0.1:port and returns the whole answer (the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT_S) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode(errors="replace")


def samples(text: str, name: str) -> list[tuple[dict, float]]:
    """The samples of metric `name` in an exposition: (labels, value)."""
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        labels = {}
        for part in rest.rstrip("}").split('",') if rest else []:
            k, _, v = part.partition("=")
            labels[k] = v.strip('"')
        out.append((labels, float(value)))
    return out


def total(text: str, name: str, **match: str) -> float:
    return sum(v for labels, v in samples(text, name)
               if all(labels.get(k) == want for k, want in match.items()))


@unittest.skipUnless((PROMETHEUS and PROMTOOL) or REQUIRED,
                     "prometheus/promtool not installed (scripts/deps.sh --with-tests)")
class MetricsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not (PROMETHEUS and PROMTOOL):
            raise RuntimeError("CPNS_REQUIRE_PROMETHEUS is set but prometheus/promtool are "
                               "missing: install the Debian package 'prometheus'")
        cls.pnes = [PneSpec("pne-1"), PneSpec("pne-2"), PneSpec("pne-3", enough_ui=False)]
        # PNEs that only run one-shot `setup` (a running `cpns-pne run` of the same PNE would
        # hold a second PAN link under its ID): two that ask, and one the server cannot
        # authenticate (its EUKey is not the provisioned one).
        cls.askers = [PneSpec("pne-a"), PneSpec("pne-b")]
        cls.impostor = PneSpec("pne-4", wrong_eukey=True)
        ports = {name: free_port() for name in ["server", "gw"] + [p.id for p in cls.pnes]}
        cls.ports = ports
        metrics = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        metrics["gw"] = str(ports["gw"])  # a bare port: loopback
        cls.lab = make_lab(BIN, cls.pnes + cls.askers + [cls.impostor], metrics=metrics,
                           log_level="info")
        cls.prom = None
        cls.promdir = Path(tempfile.mkdtemp(prefix="cpns-prometheus-"))
        try:
            cls._run()
        except BaseException:
            cls._stop_prometheus()
            cleanup(cls.lab)
            raise

    @classmethod
    def _start_prometheus(cls) -> None:
        cls.prom_port = free_port()
        jobs = [("server", ["server"]), ("gw", ["gw"]), ("pne", [p.id for p in cls.pnes])]
        lines = ["global:", "  scrape_interval: 1s", "  scrape_timeout: 1s", "scrape_configs:"]
        for job, names in jobs:
            targets = ", ".join(f"'127.0.0.1:{cls.ports[n]}'" for n in names)
            lines += [f"  - job_name: {job}", f"    static_configs:", f"      - targets: [{targets}]"]
        config = cls.promdir / "prometheus.yml"
        config.write_text("\n".join(lines) + "\n")
        cls.prom_log = cls.promdir / "prometheus.log"
        with open(cls.prom_log, "wb") as log:
            cls.prom = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}",
                 f"--storage.tsdb.path={cls.promdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{cls.prom_port}",
                 "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + PROMETHEUS_READY_S
        while time.monotonic() < deadline:
            if cls.prom.poll() is not None:
                raise RuntimeError("prometheus exited:\n" + cls.prom_log.read_text())
            try:
                if http_get(f"http://127.0.0.1:{cls.prom_port}/-/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("prometheus not ready:\n" + cls.prom_log.read_text())

    @classmethod
    def _stop_prometheus(cls) -> None:
        if cls.prom and cls.prom.poll() is None:
            cls.prom.send_signal(signal.SIGTERM)
            try:
                cls.prom.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(cls.prom.pid, signal.SIGKILL)
                cls.prom.wait()
        shutil.rmtree(cls.promdir, ignore_errors=True)

    @classmethod
    def _run(cls) -> None:
        lab = cls.lab
        lab.start_server()
        lab.start_gw()
        for p in cls.pnes:
            lab.start_pne(p)
        lab.wait_linked([p.id for p in cls.pnes])
        lab.wait_server_link()
        cls._start_prometheus()
        cls.outcomes = []
        rc, out, _ = lab.pne_setup(cls.askers[0], "all")
        cls.outcomes.append(("5.2.1.1 all", rc, out))
        rc, out, _ = lab.pne_setup(cls.askers[1], "1-1")
        cls.outcomes.append(("5.2.1.1 1-1", rc, out))
        rc, out = lab.gw_invite([p.id for p in cls.pnes])
        cls.outcomes.append(("5.2.1.2", rc, out))
        rc, out, _ = lab.pne_setup(cls.impostor, "1-1")
        cls.failed = (rc, out)
        cls.registered = sum(1 for _, rc, out in cls.outcomes if rc == 0 and out.get("success"))
        cls.texts = {name: http_get(f"http://127.0.0.1:{port}/metrics")[1]
                     for name, port in cls.ports.items()}

    @classmethod
    def tearDownClass(cls):
        cls._stop_prometheus()
        cleanup(cls.lab)

    def query(self, promql: str) -> list[dict]:
        url = (f"http://127.0.0.1:{self.prom_port}/api/v1/query?"
               + urllib.parse.urlencode({"query": promql}))
        status, body = http_get(url)
        self.assertEqual(status, 200, body)
        data = json.loads(body)
        self.assertEqual(data["status"], "success", body)
        return data["data"]["result"]

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, promql: str, want: float) -> float | None:
        """Polls Prometheus until `promql` equals want (a scrape after the run), up to
        SCRAPE_WAIT_S; returns the last value."""
        deadline = time.monotonic() + SCRAPE_WAIT_S
        value = None
        while time.monotonic() < deadline:
            value = self.scalar(promql)
            if value == want:
                return value
            time.sleep(0.25)
        return value

    def test_every_establishment_of_both_flows_succeeded(self):
        for what, rc, out in self.outcomes:
            self.assertEqual(rc, 0, f"{what}: {out}\n{self.lab.logs()}")
            self.assertTrue(out.get("success"), f"{what}: {out}")
        self.assertEqual(self.registered, 3)
        self.assertEqual(len(self.lab.store_pns()), self.registered)
        rc, out = self.failed
        self.assertNotEqual(rc, 0, out)

    def test_prometheus_scrapes_every_daemon(self):
        up = self.wait_for("count(up == 1)", 5)
        self.assertEqual(up, 5, f"targets up: {self.query('up')}\n"
                         + self.prom_log.read_text())

    def test_prometheus_sees_the_registrations(self):
        n = float(self.registered)
        got = self.wait_for('cpns_pn_registrations_total{job="server"}', n)
        self.assertEqual(got, n, "cpns_pn_registrations_total in Prometheus")
        got = self.wait_for('sum(cpns_establishment_duration_seconds_count'
                            '{job="server",outcome="success"})', n)
        self.assertEqual(got, n, "server latency histogram observations in Prometheus")
        got = self.wait_for('sum(cpns_establishment_duration_seconds_count'
                            '{job="gw",outcome="success"})', n)
        self.assertEqual(got, n, "PN GW latency histogram observations in Prometheus")
        # By flow: two PNE initiated, one PN GW initiated.
        got = self.wait_for('sum(cpns_establishments_finished_total{job="gw",outcome="success",'
                            'flow="pne_initiated"})', 2)
        self.assertEqual(got, 2)
        got = self.wait_for('sum(cpns_establishments_finished_total{job="gw",outcome="success",'
                            'flow="gw_initiated"})', 1)
        self.assertEqual(got, 1)

    def test_endpoints_agree_with_the_run(self):
        server, gw = self.texts["server"], self.texts["gw"]
        n = self.registered
        self.assertEqual(total(server, "cpns_pn_registrations_total"), n)
        self.assertEqual(total(server, "cpns_establishment_duration_seconds_count",
                               outcome="success"), n)
        self.assertEqual(total(gw, "cpns_establishments_started_total", flow="pne_initiated",
                               setup="all"), 1)
        # pne-b's and the impostor's.
        self.assertEqual(total(gw, "cpns_establishments_started_total", flow="pne_initiated",
                               setup="one_to_one"), 2, gw)
        self.assertEqual(total(gw, "cpns_establishments_started_total", flow="gw_initiated"), 1)
        # The failed one (an initiator the server cannot authenticate), by its typed reason.
        failed = [(labels, v) for labels, v in samples(gw, "cpns_establishments_finished_total")
                  if labels.get("outcome") == "failure"]
        self.assertEqual(sum(v for _, v in failed), 1, failed)
        self.assertNotEqual(failed[0][0]["reason"], "REASON_NONE", failed)
        # ... and the impostor among the PNEs of finished establishments, at the server.
        self.assertEqual(total(server, "cpns_establishment_pnes_total", result="excluded",
                               reason="AUTHENTICATION_FAILED"), 1, server)
        # Each phase at the PN GW, once per registered PN.
        for phase in ("setup", "server_authentication", "result_delivery"):
            self.assertGreaterEqual(total(gw, "cpns_establishment_phase_seconds_count",
                                          phase=phase), n, phase)
        # PSK-TLS: the PN GW's link to the server, and PAN links (every PNE uses PSK-TLS).
        self.assertGreaterEqual(total(server, "cpns_tls_handshakes_total", link="server",
                                      result="ok"), 1)
        self.assertGreaterEqual(total(gw, "cpns_tls_handshakes_total", link="server",
                                      result="ok"), 1)
        self.assertGreaterEqual(total(gw, "cpns_tls_handshakes_total", link="pan", result="ok"),
                                3)
        self.assertGreaterEqual(total(self.texts["pne-3"], "cpns_tls_handshakes_total",
                                      link="pan", result="ok"), 1)
        # pne-1 joined the All PN (notified: 5.2.1.1) and the invited one (5.2.1.2).
        pne1 = self.texts["pne-1"]
        for flow in ("pne_initiated", "gw_initiated"):
            self.assertEqual(total(pne1, "cpns_establishments_finished_total", flow=flow,
                                   outcome="success"), 1, pne1)
        self.assertEqual(total(pne1, "cpns_establishment_duration_seconds_count"), 2)
        self.assertEqual(total(server, "cpns_store_errors_total"), 0)
        self.assertGreaterEqual(total(server, "cpns_store_commit_seconds_count"), n)
        self.assertGreaterEqual(total(gw, "cpns_connections_open", listener="pan"), 3)

    def test_process_and_build_metrics(self):
        for name, text in self.texts.items():
            self.assertGreater(total(text, "process_resident_memory_bytes"), 1 << 20, name)
            self.assertGreater(total(text, "process_open_fds"), 3, name)
            self.assertGreater(total(text, "process_start_time_seconds"), 1.6e9, name)
            self.assertIn("process_cpu_seconds_total", text, name)
            info = samples(text, "cpns_build_info")
            self.assertEqual(len(info), 1, name)
            self.assertTrue(info[0][0].get("version") and info[0][0].get("openssl"), info)

    def test_no_device_id_in_any_label(self):
        ids = ["gw-1", "cpns-server"] + [p.id for p in self.pnes + self.askers + [self.impostor]]
        for name, text in self.texts.items():
            for line in text.splitlines():
                if line.startswith("#"):
                    continue
                for i in ids:
                    self.assertNotIn(i, line, f"{name}: a device ID in a label: {line}")
                self.assertIsNone(re.search(r"pn-[0-9a-f]{12}", line), f"{name}: a PN ID: {line}")

    def test_promtool_accepts_every_endpoint(self):
        for name, text in self.texts.items():
            r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                               text=True, timeout=30)
            self.assertEqual(r.returncode, 0, f"{name}: promtool: {r.stdout}{r.stderr}")

    def test_only_get_metrics_is_served(self):
        port = self.ports["server"]
        self.assertTrue(raw_request(port, b"GET / HTTP/1.0\r\n\r\n").startswith("HTTP/1.0 404"))
        self.assertTrue(raw_request(port, b"POST /metrics HTTP/1.0\r\n\r\n")
                        .startswith("HTTP/1.0 405"))
        self.assertTrue(raw_request(port, b"hello\r\n\r\n").startswith("HTTP/1.0 400"))
        self.assertTrue(raw_request(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 8192)
                        .startswith("HTTP/1.0 400"))
        head = raw_request(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        self.assertTrue(head.startswith("HTTP/1.0 200"), head)
        self.assertTrue(head.endswith("\r\n\r\n"), "HEAD has no body")

    def test_documented_configuration_and_rules_are_valid(self):
        """docs/operations.md, "Prometheus configuration": the scrape configuration passes
        `promtool check config` (with the alert rules beside it, as it names them) and the rules
        `promtool check rules`; every metric the rules use is one a daemon exports."""
        doc = (SOURCE_DIR / "docs" / "operations.md").read_text()
        section = doc[doc.index("### Prometheus configuration"):doc.index("### JSON logs")]
        blocks = [b.split("\n", 1)[1] for b in section.split("```yaml")[1:]]
        blocks = [b[:b.index("```")] for b in blocks]
        config = next(b for b in blocks if "scrape_configs:" in b)
        rules = next(b for b in blocks if "groups:" in b)
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "prometheus.yml").write_text(config)
            (Path(d) / "cpns-alerts.yml").write_text(rules)
            for args in (["check", "config", "prometheus.yml"],
                         ["check", "rules", "cpns-alerts.yml"]):
                r = subprocess.run([PROMTOOL] + args, cwd=d, capture_output=True, text=True,
                                   timeout=30)
                self.assertEqual(r.returncode, 0, f"promtool {args}: {r.stdout}{r.stderr}")
        exported = set()
        for text in self.texts.values():
            for line in text.splitlines():
                if line.startswith("# TYPE "):
                    exported.add(line.split()[2])
        for name in set(re.findall(r"\b(cpns_[a-z_]+?)(?:_bucket)?\b[\[{ ]", rules)):
            self.assertIn(name, exported, f"the rules use {name}, which nothing exports")

    def test_bare_port_means_loopback(self):
        self.assertIn("metrics on http://127.0.0.1:" + str(self.ports["gw"]),
                      self.lab.proc("gw").log.read_text())


if __name__ == "__main__":
    unittest.main(verbosity=2)
