"""Store failover with real processes: PostgreSQL as a primary with a synchronous streaming
standby on loopback (scripts/pg-ha-test-cluster.sh: initdb, pg_basebackup -R,
synchronous_standby_names), two cpns-server instances on a multi-host URL with
target_session_attrs=read-write, 200 PN GWs establishing PNs through cpns-load. The primary is
killed with SIGKILL mid-load and the standby promoted a few seconds later. Checks: both
servers report not ready during the gap and ready again after it without a restart;
establishments during the gap fail with "store unavailable" and succeed on retry; the promoted
database holds exactly the PNs acknowledged to cpns-load: none lost, none registered twice
(no row twice, and no establishment both under a PN ID its PN GW was told failed and under
the retry's), none half-written. Python 3 standard library only (unittest). Needs PostgreSQL's server binaries
(/usr/lib/postgresql/*/bin) and, as root, the `postgres` OS user; skipped with
CPNS_TEST_NO_PG=1.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import cleanup, free_port, make_lab  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUILD = os.environ.get("CPNS_BINARY_DIR", "build/dev")
BIN = os.path.join(BUILD, "apps")
CLUSTER = str(ROOT / "scripts" / "pg-ha-test-cluster.sh")
if not __debug__:
    sys.exit("failover_test: the scenarios check with assert; run python3 without -O")

GWS, PNES, PNS = 200, 2, 3  # 200 PN GWs establishing at once, 3 PNs each
KILL_AFTER_ACKED = 100      # of 600
GAP_S = 3.0                 # the primary is dead, the standby not promoted yet
RETRIES, RETRY_DELAY_MS = 60, 500  # cpns-load retries "store unavailable": 30 s of cover


def cluster(action, d, timeout=180):
    r = subprocess.run([CLUSTER, action, d], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"pg-ha-test-cluster.sh {action}: {r.stderr[-3000:]}"
    return r.stdout.strip()


def psql(url, sql):
    r = subprocess.run(["psql", url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def wait_for(what, pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def failover():
    base = tempfile.mkdtemp(prefix="cpns-ha-")
    os.chmod(base, 0o755)  # the postgres user enters it
    d = base + "/cluster"
    lab = None
    load = None
    try:
        pport, sport = cluster("start", d).split()
        url = (f"postgresql://postgres@127.0.0.1:{pport},127.0.0.1:{sport}/cpns_test"
               "?target_session_attrs=read-write")
        lab = make_lab(BIN, [], log_level="info")
        subprocess.run([os.path.join(BIN, "cpns-load", "cpns-load"), "provision", "--gws",
                        str(GWS), "--pnes-per-gw", str(PNES), "--out",
                        str(lab.workdir / "load.toml")],
                       check=True, capture_output=True, timeout=60)
        (lab.workdir / "entities.toml").write_text((lab.workdir / "load.toml").read_text())
        lab.store_url = url
        # The first server imports the 600 entities, one synchronously replicated commit each.
        lab.ready_timeout = 180.0
        lab.write_server_config("server", control_port=free_port())
        lab.write_server_config("server-b", control_port=free_port())
        lab.start_server("server")
        lab.start_server("server-b")
        addr_b = (lab.workdir / "server-b.ready").read_text().strip()
        names = ("server", "server-b")
        for n in names:
            assert lab.server_status(n).get("ready") is True, lab.server_status(n)

        acked = lab.workdir / "acked.jsonl"
        load = subprocess.Popen(
            [os.path.join(BIN, "cpns-load", "cpns-load"), "run", "--entities",
             str(lab.workdir / "load.toml"), "--servers", f"{lab.server_addr},{addr_b}",
             "--pns-per-gw", str(PNS), "--acked", str(acked), "--retries", str(RETRIES),
             "--retry-delay-ms", str(RETRY_DELAY_MS)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def n_acked():
            return len(acked.read_text().splitlines()) if acked.exists() else 0

        wait_for(f"{KILL_AFTER_ACKED} acknowledged PNs", lambda: n_acked() >= KILL_AFTER_ACKED,
                 120)
        cluster("kill-primary", d)
        killed_at = n_acked()
        t_kill = time.monotonic()
        # Both servers notice by themselves and say they are not ready.
        for n in names:
            wait_for(f"{n} not ready", lambda n=n: lab.server_status(n).get("ready") is False, 30)
        not_ready_s = time.monotonic() - t_kill
        time.sleep(max(0.0, GAP_S - (time.monotonic() - t_kill)))
        during = {n: lab.server_status(n) for n in names}
        for n, st in during.items():
            assert st.get("ready") is False and st.get("store_reachable") is False, st
            assert st["store_errors"]["unavailable"] >= 1, st
        acked_in_gap = n_acked()
        cluster("promote", d)
        t_promote = time.monotonic()
        # Both reconnect by themselves (no restart) to the new primary.
        for n in names:
            wait_for(f"{n} ready again", lambda n=n: lab.server_status(n).get("ready") is True,
                     30)
        reconnect_s = time.monotonic() - t_promote

        out, err = load.communicate(timeout=300)
        load = None
        summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        # Every establishment ended registered; those in the gap after retries.
        assert summary.get("registered") == GWS * PNS, (summary, err[-2000:])
        assert not summary.get("failures"), summary
        assert summary.get("retried", {}).get("store unavailable", 0) > 0, summary

        # The promoted standby alone (the old primary is dead).
        new_primary = f"postgresql://postgres@127.0.0.1:{sport}/cpns_test"
        assert psql(new_primary, "SELECT pg_is_in_recovery()") == "f"
        rows = psql(new_primary, "SELECT gw_id || ' ' || pn_id FROM pns").splitlines()
        assert len(rows) == len(set(rows)), "a PN is registered twice"
        stored = set(rows)
        acked_pns = [json.loads(x) for x in acked.read_text().splitlines()]
        acked_keys = [f"{a['gw_id']} {a['pn_id']}" for a in acked_pns]
        assert len(acked_keys) == len(set(acked_keys)) == GWS * PNS, len(acked_keys)
        lost = [k for k in acked_keys if k not in stored]
        assert not lost, f"{len(lost)} acknowledged PN(s) lost in the failover: {lost[:5]}"
        members = int(psql(new_primary, "SELECT COUNT(*) FROM pn_members"))
        assert members == PNES * len(stored), (members, len(stored))  # none half-written
        # Nothing stored that was not acknowledged either: a PN committed on the standby whose
        # answer was lost with the primary (its PN GW was told "store unavailable" and retried
        # under a new PN ID) was withdrawn by its server once the store was back.
        extra = stored - set(acked_keys)
        assert not extra, f"{len(extra)} PN(s) stored but never acknowledged: {sorted(extra)[:5]}"
        env = dict(os.environ)
        env["CPNS_MASTER_KEY"] = (lab.workdir / "master.key").read_text().strip()
        r = subprocess.run([os.path.join(BIN, "cpnsctl", "cpnsctl"), "--store", url, "check"],
                           capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0 and r.stdout.startswith("consistent"), r.stdout + r.stderr
        status = {n: lab.server_status(n) for n in names}
        print(f"  killed after {killed_at} acknowledged ({acked_in_gap} by the end of the gap); "
              f"both not ready {not_ready_s:.1f} s after the kill, "
              f"ready again {reconnect_s:.1f} s after the promotion; load {summary}; "
              f"{len(stored)} PN(s) stored, {len(acked_keys)} acknowledged; status during the gap {during}; after {status}")
        lab.stop_all()
    except Exception:
        if lab:
            print(lab.logs()[-8000:])
        raise
    finally:
        if load:
            load.kill()
            load.wait()
        if lab:
            cleanup(lab)
        cluster("stop", d, timeout=120)
        os.rmdir(base)


class FailoverTest(unittest.TestCase):
    def test_failover_loses_no_acknowledged_pn(self):
        """SIGKILL of the primary under 200 concurrent establishments; promotion"""
        if os.environ.get("CPNS_TEST_NO_PG") == "1":
            self.skipTest("CPNS_TEST_NO_PG=1: PostgreSQL cases skipped on purpose")
        failover()


if __name__ == "__main__":
    unittest.main(verbosity=2)
