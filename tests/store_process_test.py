"""Durable state with real processes: revocation through cpnsctl while the server runs, a
server killed with SIGKILL in the middle of 200 concurrent establishments (SQLite and
PostgreSQL), and two server instances sharing one PostgreSQL under 1,000 concurrent PNs.
Python 3 standard library only (unittest); one test per scenario. The PostgreSQL cases fail
without CPNS_TEST_PG_URL, unless CPNS_TEST_NO_PG=1 asks to skip them on purpose.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import PneSpec, cleanup, make_lab, new_pg_database  # noqa: E402

BUILD = os.environ.get("CPNS_BINARY_DIR", "build/dev")
BIN = os.path.join(BUILD, "apps")
PG_URL = os.environ.get("CPNS_TEST_PG_URL", "")
# How long the PN GW may take to have the server record the dissolve of a superseded PN (its
# change request, the store commit and the answer; the PN GW repeats a lost request after 5 s).
SUPERSEDE_WAIT_S = 15.0
if not __debug__:
    sys.exit("store_process_test: the scenarios check with assert; run python3 without -O")
NO_PG = not PG_URL and os.environ.get("CPNS_TEST_NO_PG") == "1"


def need_pg(t):
    """PostgreSQL cases: skipped with CPNS_TEST_NO_PG=1, a failure when no server is given."""
    if NO_PG:
        t.skipTest("CPNS_TEST_NO_PG=1: PostgreSQL cases skipped on purpose")
    if not PG_URL:
        t.fail("PostgreSQL cases: CPNS_TEST_PG_URL is not set; run the README's test command, "
               "which starts a throw-away PostgreSQL")


def ctl(lab, store, *args):
    env = dict(os.environ)
    env["CPNS_MASTER_KEY"] = (lab.workdir / "master.key").read_text().strip()
    r = subprocess.run([os.path.join(BIN, "cpnsctl", "cpnsctl"), "--store", store, *args],
                       capture_output=True, text=True, timeout=60, env=env)
    return r.returncode, r.stdout, r.stderr


def revoke_while_running():
    pnes = [PneSpec("pne-1"), PneSpec("pne-2", pan_secure=True)]
    lab = make_lab(BIN, pnes, log_level="info")
    store = f"sqlite:{lab.workdir / 'server.db'}"
    try:
        lab.start_server()
        lab.start_gw()
        lab.wait_server_link()
        lab.start_pne(pnes[1])
        lab.wait_linked(["pne-2"])
        rc, out, _ = lab.pne_setup(pnes[0], "all")
        assert rc == 0 and len(out["inventory"]["members"]) == 2, out
        rc, so, se = ctl(lab, store, "revoke", "pne-2")
        assert rc == 0, se
        first = out["pn_id"]
        # The revocation reaches the PN GW: the first PN without pne-2. (The PN GW decides a
        # supersede on the membership it holds when the new PN registers: docs/protocol.md,
        # limitation 14.)
        deadline = time.monotonic() + SUPERSEDE_WAIT_S
        while True:
            at_gw = {p["pn_id"]: p for p in lab.gw_status().get("inventory", [])}
            members = [m["pne_id"] for m in at_gw.get(first, {}).get("members", [])]
            if members == ["pne-1"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert members == ["pne-1"], at_gw
        rc, out, _ = lab.pne_setup(pnes[0], "all")
        assert rc == 0, out
        excluded = {p["pne_id"]: p.get("reason_text") for p in out["pnes"] if not p.get("joined")}
        assert excluded == {"pne-2": "revoked"}, out
        # The revocation took pne-2 out of the first PN, so the second setup holds every member
        # of the first: it supersedes it (docs/protocol.md, "A repeated setup"), and cpnsctl
        # sees only the second PN once the PN GW's dissolve is recorded.
        deadline = time.monotonic() + SUPERSEDE_WAIT_S
        while True:
            rc, so, _ = ctl(lab, store, "export")
            pns = json.loads(so)
            if [p["pn_id"] for p in pns] == [out["pn_id"]] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [p["pn_id"] for p in pns] == [out["pn_id"]], (first, so)
        # The audit trail says why pne-2 was left out.
        rc, so, _ = ctl(lab, store, "audit", "--limit", "20")
        assert "pne-2  FAILED: revoked" in so, so
        rc, so, _ = ctl(lab, store, "check")
        assert rc == 0 and so.startswith("consistent"), so
        # Disabling the PN GW cuts its link within the directory refresh, and it stays out.
        rc, so, se = ctl(lab, store, "disable", "gw-1")
        assert rc == 0, se
        deadline = time.monotonic() + 10
        status = {}
        while time.monotonic() < deadline:
            status = lab.gw_status()
            if status.get("server_link_reason") == "gateway authentication failed":
                break
            time.sleep(0.1)
        assert not status.get("server_link"), status
        assert status.get("server_link_reason") == "gateway authentication failed", status
        lab.stop_all()
    except Exception:
        print(lab.logs()[-6000:])
        raise
    finally:
        cleanup(lab)


def run_load(lab, servers, pns_per_gw, acked, kill_after_acked=None, server_proc=None):
    """cpns-load against `servers`; optionally SIGKILL `server_proc` once `kill_after_acked`
    registrations were acknowledged. Returns (summary, killed_at_count)."""
    p = subprocess.Popen([os.path.join(BIN, "cpns-load", "cpns-load"), "run", "--entities",
                          str(lab.workdir / "load.toml"), "--servers", ",".join(servers),
                          "--pns-per-gw", str(pns_per_gw), "--acked", str(acked)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed_at = None
    if kill_after_acked is not None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            n = len(acked.read_text().splitlines()) if acked.exists() else 0
            if n >= kill_after_acked:
                os.kill(server_proc.popen.pid, signal.SIGKILL)
                server_proc.popen.wait()
                killed_at = n
                break
            time.sleep(0.005)
        assert killed_at is not None, "the load never got going"
    out, err = p.communicate(timeout=300)
    summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return summary, killed_at, err


def load_lab(gws, pnes, backend):
    lab = make_lab(BIN, [], log_level="info")
    subprocess.run([os.path.join(BIN, "cpns-load", "cpns-load"), "provision", "--gws", str(gws),
                    "--pnes-per-gw", str(pnes), "--out", str(lab.workdir / "load.toml")],
                   check=True, capture_output=True, timeout=60)
    # The server imports the load's entities instead of the lab's own.
    (lab.workdir / "entities.toml").write_text((lab.workdir / "load.toml").read_text())
    if backend == "postgresql":
        lab.store_url = new_pg_database(PG_URL)
    lab.write_server_config()
    return lab


def crash_mid_establishment(backend):
    lab = load_lab(200, 2, backend)
    store = lab.store_url or f"sqlite:{lab.workdir / 'server.db'}"
    acked = lab.workdir / "acked.jsonl"
    try:
        server = lab.start_server()
        # 200 PN GWs establish at once (3 PNs each, one after the other): kill the server
        # while about 60 of 600 are acknowledged and ~200 are in flight.
        summary, killed_at, err = run_load(lab, [lab.server_addr], 3, acked, kill_after_acked=60,
                                           server_proc=server)
        acked_pns = [json.loads(line) for line in acked.read_text().splitlines()]
        assert len(acked_pns) >= killed_at, (len(acked_pns), killed_at)
        assert summary.get("registered", 0) < 600, f"the kill came too late: {summary}"
        lab.procs.remove(server)
        # Restart on the same store: every acknowledged PN is there, nothing is half-written.
        lab.start_server()
        rc, so, se = ctl(lab, store, "check")
        assert rc == 0 and so.startswith("consistent"), so + se
        rc, so, se = ctl(lab, store, "export")
        stored = {(p["gw_id"], p["pn_id"]): sorted(m["pne_id"] for m in p["members"])
                  for p in json.loads(so)}
        for a in acked_pns:
            key = (a["gw_id"], a["pn_id"])
            assert key in stored, f"acknowledged PN {key} lost after the crash"
            assert stored[key] == sorted(a["members"]), (key, stored[key], a["members"])
        print(f"  {backend}: killed after {killed_at} acknowledged, {len(acked_pns)} acknowledged "
              f"in all, {len(stored)} in the store after restart; load summary {summary}")
        lab.stop_all()
    except Exception:
        print(lab.logs()[-6000:])
        raise
    finally:
        cleanup(lab)


def two_servers_one_postgresql():
    lab = load_lab(200, 2, "postgresql")
    acked = lab.workdir / "acked.jsonl"
    try:
        lab.start_server()
        lab.write_server_config("server-b")
        b = lab.start_server("server-b")
        addr_b = (lab.workdir / "server-b.ready").read_text().strip()
        summary, _, err = run_load(lab, [lab.server_addr, addr_b], 5, acked)
        assert summary.get("registered") == 1000, (summary, err[-2000:])
        acked_pns = [json.loads(line) for line in acked.read_text().splitlines()]
        rc, so, se = ctl(lab, lab.store_url, "export")
        stored = [(p["gw_id"], p["pn_id"]) for p in json.loads(so)]
        assert len(stored) == 1000, len(stored)
        assert len(set(stored)) == 1000, "a PN is registered twice"
        assert set(stored) == {(a["gw_id"], a["pn_id"]) for a in acked_pns}
        # Both instances did part of the work: each registered PNs in the shared store.
        for name in ("server", "server-b"):
            lab.stop(next(p for p in lab.procs if p.name == name))
            log = (lab.workdir / f"{name}.log").read_text()
            m = re.search(r"stopped: (\d+) PN\(s\) registered by this process", log)
            assert m and int(m.group(1)) > 0, f"{name} registered nothing: {log[-1500:]}"
        rc, so, se = ctl(lab, lab.store_url, "check")
        assert rc == 0, so + se
        print(f"  two servers: {summary}")
        lab.stop_all()
        del b
    except Exception:
        print(lab.logs()[-6000:])
        raise
    finally:
        cleanup(lab)


class StoreProcessTest(unittest.TestCase):
    def test_1_revoke_while_running(self):
        """cpnsctl revoke reaches a running server"""
        revoke_while_running()

    def test_2_crash_sqlite(self):
        """SIGKILL mid-establishment, SQLite"""
        crash_mid_establishment("sqlite")

    def test_3_crash_postgresql(self):
        """SIGKILL mid-establishment, PostgreSQL"""
        need_pg(self)
        crash_mid_establishment("postgresql")

    def test_4_two_servers_one_postgresql(self):
        """two servers over one PostgreSQL, 1,000 PNs"""
        need_pg(self)
        two_servers_one_postgresql()


if __name__ == "__main__":
    unittest.main(verbosity=2)
