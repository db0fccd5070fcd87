"""EUKey rotation with real processes (docs/operations.md, "EUKey rotation").

`cpnsctl rotate ID --grace D` writes a new device key file while the server runs. Within the
grace period the device's old EUKey still works; after it, a PNE on the old key fails with
'key expired' and the PN GW's link on its old key is refused (the server's log says
'key expired'); the new key file works at once. One test for a PNE, one for the PN GW.
Python 3 standard library only (unittest).
"""

import os
import stat
import subprocess
import sys
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import PneSpec, cleanup, make_lab  # noqa: E402

BUILD = os.environ.get("CPNS_BINARY_DIR", "build/dev")
BIN = os.path.join(BUILD, "apps")
if not __debug__:
    sys.exit("rotation_test: the scenarios check with assert; run python3 without -O")

# Long enough for one establishment on a busy 2-core machine, short enough for a test.
GRACE_S = 10


def ctl(lab, *args):
    env = dict(os.environ)
    env["CPNS_MASTER_KEY"] = (lab.workdir / "master.key").read_text().strip()
    store = f"sqlite:{lab.workdir / 'server.db'}"
    r = subprocess.run([os.path.join(BIN, "cpnsctl", "cpnsctl"), "--store", store, *args],
                       capture_output=True, text=True, timeout=60, env=env)
    return r.returncode, r.stdout, r.stderr


def rotate(lab, entity_id):
    """cpnsctl rotate; returns (new key hex, monotonic time at which the grace ends)."""
    key_file = lab.workdir / f"{entity_id}.new.key"
    started = time.monotonic()
    rc, out, err = ctl(lab, "rotate", entity_id, "--grace", f"{GRACE_S}s", "--key-out",
                       str(key_file))
    assert rc == 0, err
    assert f"rotated the EUKey of" in out and "key version 2" in out, out
    assert str(key_file) in out, out
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, oct(key_file.stat().st_mode)
    key = key_file.read_text().strip()
    assert len(key) == 64 and int(key, 16) >= 0, "a 64-digit hex key file"
    # A second rotate to the same file is refused (key files are never overwritten).
    rc, _, err = ctl(lab, "rotate", entity_id, "--key-out", str(key_file))
    assert rc != 0 and "exists already" in err, err
    return key, started + GRACE_S


def wait_until(deadline_monotonic):
    left = deadline_monotonic - time.monotonic()
    if left > 0:
        time.sleep(left)


def server_log(lab):
    return (lab.workdir / "server.log").read_text(errors="replace")


class Rotation(unittest.TestCase):
    def test_1_pne_old_key_works_in_grace_then_key_expired(self):
        """a PNE: old EUKey in grace ok (with its LocalEUKey), after it 'key expired'"""
        # enough_ui on an insecure PAN: the PNE opens its LocalEUKey copy and runs PSK-TLS with
        # it before it answers, so the copy under its old EUKey is exercised too.
        pne = PneSpec("pne-1", enough_ui=True, pan_secure=False)
        lab = make_lab(BIN, [pne], log_level="info")
        try:
            lab.start_server()
            lab.start_gw()
            lab.wait_server_link()
            rc, out, err = lab.pne_setup(pne, "all")
            assert rc == 0 and out.get("success"), (out, err[-2000:])

            new_key, grace_end = rotate(lab, "pne-1")

            # Within the grace period: the device still holds the old key and succeeds.
            rc, out, err = lab.pne_setup(pne, "all")
            in_grace = time.monotonic() < grace_end
            assert in_grace, "the establishment took longer than the grace period"
            assert rc == 0 and out.get("success"), (out, err[-2000:])
            assert out.get("local_eukey_assigned", True), out

            # After it: refused with the typed reason.
            wait_until(grace_end + 0.5)
            rc, out, err = lab.pne_setup(pne, "all")
            assert rc != 0 and not out.get("success"), out
            assert out.get("reason_text") == "key expired", (out, err[-2000:])

            # The new key file works (its state file, sealed under the old key, is re-sealed).
            pne.previous_eukey, pne.device_eukey = pne.device_eukey, new_key
            rc, out, err = lab.pne_setup(pne, "all")
            assert rc == 0 and out.get("success"), (out, err[-2000:])

            rc, so, _ = ctl(lab, "audit", "--limit", "20")
            assert "cpnsctl      pne-1  ok  EUKey rotated: key version 2" in so, so
            assert "pne-1  FAILED: key expired" in so, so
            rc, so, _ = ctl(lab, "show", "pne-1")
            assert "key version 2" in so and "previous: EUKey of key version 1, expired at" in so, so
            rc, so, _ = ctl(lab, "check")
            assert rc == 0, so
        except BaseException:
            print(lab.logs()[-6000:], file=sys.stderr)
            raise
        finally:
            cleanup(lab)

    def test_2_gw_old_key_works_in_grace_then_refused(self):
        """the PN GW: old EUKey's PSK in grace ok, after it refused ('key expired' at the server)"""
        pne = PneSpec("pne-1", pan_secure=True)
        lab = make_lab(BIN, [pne], log_level="info")
        try:
            lab.start_server()
            lab.start_gw()
            lab.wait_server_link()

            new_key, grace_end = rotate(lab, "gw-1")

            # Within the grace period: a PN GW (re)started with its old key gets its link,
            # once the server has refreshed its PN GW records (every 2 s).
            time.sleep(3)
            lab.stop(lab.proc("gw"))
            lab.restart_gw()
            status = lab.wait_server_link(timeout=GRACE_S)
            assert status.get("server_link"), status
            rc, out, err = lab.pne_setup(pne, "all")
            assert time.monotonic() < grace_end, "slower than the grace period"
            assert rc == 0 and out.get("success"), (out, err[-2000:])
            assert "authenticated from" in server_log(lab) and "with its previous EUKey" in \
                server_log(lab), server_log(lab)[-3000:]

            # After it: the server closes the link on the old key, and refuses it again.
            wait_until(grace_end)
            deadline = time.monotonic() + 20
            status = {}
            while time.monotonic() < deadline:
                status = lab.gw_status()
                if status.get("server_link_reason") == "gateway authentication failed":
                    break
                time.sleep(0.1)
            assert status.get("server_link_reason") == "gateway authentication failed", status
            log = server_log(lab)
            assert "key expired - the PN GW uses its previous EUKey" in log, log[-3000:]
            rc, out, _ = lab.pne_setup(pne, "all", timeout=60)
            assert rc != 0 and not out.get("success"), out

            # Restarted with the new key file: linked at once, establishments succeed.
            lab.stop(lab.proc("gw"))
            lab.gw_previous_key, lab.gw_key = lab.gw_key, new_key
            lab.restart_gw()
            status = lab.wait_server_link(timeout=15)
            assert status.get("server_link"), status
            rc, out, err = lab.pne_setup(pne, "all")
            assert rc == 0 and out.get("success"), (out, err[-2000:])
        except BaseException:
            print(lab.logs()[-6000:], file=sys.stderr)
            raise
        finally:
            cleanup(lab)


if __name__ == "__main__":
    unittest.main()
