"""Store faults with real processes: a full file system under the SQLite store, a read-only
and a corrupted SQLite database at start, and PostgreSQL connections broken in the middle of
registration transactions. Python 3 standard library only (unittest).

The full and read-only cases mount a small tmpfs and need root (CI runs as root); without it
they are skipped with the reason. The PostgreSQL case uses CPNS_TEST_PG_URL, or starts its own
throw-away server with scripts/pg-test-server.sh (skipped with CPNS_TEST_NO_PG=1).
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import cleanup, free_port, make_lab, new_pg_database  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUILD = os.environ.get("CPNS_BINARY_DIR", "build/dev")
BIN = os.path.join(BUILD, "apps")
if not __debug__:
    sys.exit("store_faults_test: the scenarios check with assert; run python3 without -O")

TMPFS_SIZE = "4m"  # the small file system under the SQLite store


def load(lab, gws_file, servers, pns=1, retries=0, acked=None, timeout=120):
    """One cpns-load run; returns its JSON summary."""
    args = [os.path.join(BIN, "cpns-load", "cpns-load"), "run", "--entities", str(gws_file),
            "--servers", ",".join(servers), "--pns-per-gw", str(pns), "--retries", str(retries),
            "--retry-delay-ms", "300"]
    if acked:
        args += ["--acked", str(acked)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    lines = r.stdout.strip().splitlines()
    assert lines, f"cpns-load printed nothing: {r.stderr[-2000:]}"
    return json.loads(lines[-1])


def provision_load(lab, gws, pnes):
    path = lab.workdir / "load.toml"
    subprocess.run([os.path.join(BIN, "cpns-load", "cpns-load"), "provision", "--gws", str(gws),
                    "--pnes-per-gw", str(pnes), "--out", str(path)],
                   check=True, capture_output=True, timeout=60)
    (lab.workdir / "entities.toml").write_text(path.read_text())
    return path


def can_mount():
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    d = tempfile.mkdtemp(prefix="cpns-mnt-")
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return f"cannot mount a tmpfs: {r.stderr.strip()}"
        subprocess.run(["umount", d], check=True)
        return ""
    finally:
        os.rmdir(d)


class Tmpfs:
    """A small tmpfs mounted for one test (and unmounted, whatever happens)."""

    def __init__(self, size):
        self.path = Path(tempfile.mkdtemp(prefix="cpns-tmpfs-"))
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        str(self.path)], check=True)

    def remount(self, mode):
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True)

    def fill(self):
        """Writes a filler file until the file system is full; returns its path."""
        filler = self.path / "filler"
        with open(filler, "wb", buffering=0) as f:
            block = b"\0" * 4096
            try:
                while True:
                    f.write(block)
                    f.flush()
            except OSError:
                pass
        return filler

    def close(self):
        subprocess.run(["umount", "-l", str(self.path)], check=False)
        os.rmdir(self.path)


def server_start_error(lab):
    """Starts the server, expecting it to refuse; returns (exit code, its output)."""
    binary = lab.bindir / "cpns-server" / "cpns-server"
    r = subprocess.run([str(binary), "--config", str(lab.workdir / "server.toml")],
                       capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def full_disk():
    fs = Tmpfs(TMPFS_SIZE)
    lab = make_lab(BIN, [], log_level="info")
    try:
        load_file = provision_load(lab, 4, 2)
        lab.store_url = f"sqlite:{fs.path / 'server.db'}"
        lab.write_server_config(control_port=free_port())
        lab.start_server()
        s = load(lab, load_file, [lab.server_addr])
        assert s["registered"] == 4, s
        filler = fs.fill()
        # Registrations fail with the typed reason, nothing is acknowledged; the server says so.
        s = load(lab, load_file, [lab.server_addr])
        assert s["registered"] == 0 and s["failures"] == {"storage full": 4}, s
        st = lab.server_status()
        assert st.get("store_full") is True and st["store_errors"]["full"] >= 4, st
        assert st.get("ready") is True, st  # reachable: reads still work
        # Space returns: registrations succeed again, without a restart.
        filler.unlink()
        s = load(lab, load_file, [lab.server_addr])
        assert s["registered"] == 4, s
        st = lab.server_status()
        assert st.get("store_full") is False, st
        lab.stop_all()
        log = (lab.workdir / "server.log").read_text()
        assert "store full: registrations fail with 'storage full'" in log, log[-3000:]
        assert "store accepts writes again" in log, log[-3000:]
        # The store is consistent, with exactly the 8 acknowledged PNs.
        env = dict(os.environ)
        env["CPNS_MASTER_KEY"] = (lab.workdir / "master.key").read_text().strip()
        r = subprocess.run([os.path.join(BIN, "cpnsctl", "cpnsctl"), "--store", lab.store_url,
                            "export"], capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0 and len(json.loads(r.stdout)) == 8, r.stdout + r.stderr
        print(f"  full disk: {st}")
    except Exception:
        print(lab.logs()[-6000:])
        raise
    finally:
        cleanup(lab)
        fs.close()


def read_only_database():
    fs = Tmpfs(TMPFS_SIZE)
    lab = make_lab(BIN, [], log_level="info")
    try:
        lab.store_url = f"sqlite:{fs.path / 'server.db'}"
        lab.write_server_config()
        lab.start_server()
        lab.stop_all()
        fs.remount("ro")
        rc, out = server_start_error(lab)
        assert rc == 2, (rc, out)
        assert f"cannot open SQLite database {fs.path / 'server.db'} for writing: Read-only " \
               "file system" in out, out
        assert "must be writable" in out, out
        print(f"  read-only: {out.strip().splitlines()[-1]}")
        fs.remount("rw")
    finally:
        cleanup(lab)
        fs.close()


def corrupted_database():
    lab = make_lab(BIN, [], log_level="info")
    try:
        db = lab.workdir / "server.db"
        lab.start_server()
        lab.stop_all()
        assert db.stat().st_size > 0
        with open(db, "r+b") as f:  # the header ("SQLite format 3\0", page size, ...)
            f.write(b"\x5a" * 32)
        rc, out = server_start_error(lab)
        assert rc == 2, (rc, out)
        assert f"SQLite database {db} is corrupted or not a SQLite database; restore it from " \
               "a backup" in out, out
        print(f"  corrupted: {out.strip().splitlines()[-1]}")
    finally:
        cleanup(lab)


class OwnPg:
    """CPNS_TEST_PG_URL, or a throw-away PostgreSQL of our own."""

    def __init__(self):
        self.url = os.environ.get("CPNS_TEST_PG_URL", "")
        self.dir = None
        if not self.url:
            self.dir = tempfile.mkdtemp(prefix="cpns-pg-")
            os.chmod(self.dir, 0o755)
            r = subprocess.run([str(ROOT / "scripts" / "pg-test-server.sh"), "start",
                                self.dir + "/pg"], capture_output=True, text=True, timeout=180)
            assert r.returncode == 0, r.stderr
            self.url = r.stdout.strip()

    def close(self):
        if self.dir:
            subprocess.run([str(ROOT / "scripts" / "pg-test-server.sh"), "stop",
                            self.dir + "/pg"], capture_output=True, timeout=60)
            os.rmdir(self.dir)


def psql(url, sql):
    r = subprocess.run(["psql", url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def pg_broken_mid_transaction():
    pg = OwnPg()
    lab = make_lab(BIN, [], log_level="info")
    stop = threading.Event()
    killed = []
    try:
        load_file = provision_load(lab, 20, 2)
        lab.store_url = new_pg_database(pg.url)
        lab.write_server_config(control_port=free_port())
        lab.start_server()
        # Every registration's second member waits in its INSERT, inside the transaction (the
        # PN row written, not committed): there a second connection terminates the backend.
        psql(lab.store_url,
             "CREATE FUNCTION slow_member() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
             "IF NEW.pne_id LIKE '%-p2' THEN PERFORM pg_sleep(0.3); END IF; RETURN NEW; END $$;"
             " CREATE TRIGGER slow_member BEFORE INSERT ON pn_members FOR EACH ROW EXECUTE "
             "FUNCTION slow_member()")
        db = lab.store_url.rsplit("/", 1)[1].split("?")[0]

        def killer():
            # At most 12 terminations, one every ~0.5 s.
            while not stop.is_set() and len(killed) < 12:
                # The sub-query fences the filter: only the chosen backends are terminated.
                out = psql(lab.store_url,
                           "SELECT pid FROM (SELECT pid FROM pg_stat_activity WHERE "
                           f"application_name = 'cpns-store' AND datname = '{db}' AND "
                           "wait_event = 'PgSleep' OFFSET 0) s "
                           "WHERE pg_terminate_backend(pid, 5000)")
                killed.extend(x for x in out.split() if x)
                time.sleep(0.5 if out else 0.05)

        t = threading.Thread(target=killer)
        t.start()
        acked = lab.workdir / "acked.jsonl"
        s = load(lab, load_file, [lab.server_addr], pns=3, retries=20, acked=acked, timeout=240)
        stop.set()
        t.join()
        assert killed, "no transaction was broken: the test did not test anything"
        st = lab.server_status()
        # Every establishment ended registered (a broken transaction was retried by the server,
        # or failed as "store unavailable" and was retried by the PN GW).
        assert s["registered"] == 60 and not s["failures"], s
        assert st["store_retries"] + st["store_errors"]["unavailable"] >= 1, st
        acked_pns = [json.loads(x) for x in acked.read_text().splitlines()]
        assert len(acked_pns) == 60, len(acked_pns)
        rows = psql(lab.store_url, "SELECT gw_id || ' ' || pn_id FROM pns").splitlines()
        assert len(rows) == len(set(rows)), "a PN is registered twice"
        stored = set(rows)
        for a in acked_pns:
            assert f"{a['gw_id']} {a['pn_id']}" in stored, f"acknowledged PN lost: {a}"
        members = int(psql(lab.store_url, "SELECT COUNT(*) FROM pn_members"))
        assert members == 2 * len(stored), (members, len(stored))  # no half-written PN
        print(f"  {len(killed)} backend(s) terminated mid-transaction; load {s}; status {st}; "
              f"{len(stored)} PN(s) stored for {len(acked_pns)} acknowledged")
        lab.stop_all()
    except Exception:
        print(lab.logs()[-6000:])
        raise
    finally:
        stop.set()
        cleanup(lab)
        pg.close()


class StoreFaultsTest(unittest.TestCase):
    def test_1_full_disk(self):
        """SQLite on a full tmpfs: 'storage full', then recovery when space returns"""
        why = can_mount()
        if why:
            self.skipTest(why)
        full_disk()

    def test_2_read_only_database(self):
        """a read-only SQLite database is refused at start with a clear message"""
        why = can_mount()
        if why:
            self.skipTest(why)
        read_only_database()

    def test_3_corrupted_database(self):
        """a corrupted SQLite file is refused at start with a clear message"""
        corrupted_database()

    def test_4_pg_broken_mid_transaction(self):
        """PostgreSQL backends terminated mid-transaction lose nothing acknowledged"""
        if os.environ.get("CPNS_TEST_NO_PG") == "1" and not os.environ.get("CPNS_TEST_PG_URL"):
            self.skipTest("CPNS_TEST_NO_PG=1: PostgreSQL cases skipped on purpose")
        pg_broken_mid_transaction()


if __name__ == "__main__":
    unittest.main(verbosity=2)
