"""Crash points: each party killed at each message boundary of both flows, then restarted.

A CPNS Server, a PN GW and two PNEs run as processes (tests/lab/cpnslab.py). For each flow —
PNE initiated (pne-1 runs `cpns-pne setup --type all`, pne-2 is a running daemon that is
notified) and PN GW initiated (`cpns-gw invite`, both PNEs running daemons) — one reference
run with event traces lists every message each party sends and receives. Then, for every one
of those messages, one case starts a fresh lab in which that party has
`--crash-at WHEN:MESSAGE:N` (docs/operations.md, "Crash points") and runs the flow:

  - `recv:M:N`        the party dies once it has handled the Nth M it received;
  - `send:M:N`        the party dies once the Nth M it sent has been written to its socket;
  - `before-send:M:N` the party dies instead of sending the Nth M.

The party must die there (exit by SIGKILL, its log names the crash point). It is restarted
with the same store / state file (the one-shot `cpns-pne setup` is not: its restart is the
next setup), and then every party must be consistent with what it acknowledged:

  I1. A PN the initiator reported established (`cpns-pne setup` / `cpns-gw invite` printed
      success) is in the server's store, and in the PN GW's inventory after the restart.
  I2. The PN GW's inventory (restored from its state file) is a subset of the server's store,
      PN by PN with the same members: the PN GW stores a PN only after the server's
      PnRegistrationResponse, and the server answers only once the PN is committed.
  I3. A PN any party reported established (an `outcome` event with reason success in its
      trace, written before the kill) is in the store; at a PNE, with that PNE as a member;
      at the PN GW or a PNE, also in the PN GW's inventory.
  I4. A PNE that reported a PN joined still has it after its restart (the count of
      memberships its state file restores, logged at start, is at least the number it
      reported joined).
  I5. No half-registered PN: every stored PN has at least one member, and each member is a
      provisioned PNE.
  Allowed (known limitation, protocol.md): the store may hold a PN that the PN GW never
  acknowledged (the PN GW or the link died between the server's commit and the PN GW's
  inventory write; there is no removal message yet). Such PNs are counted and printed.

Then the same flow runs again without any manual step and must succeed with both PNEs, the
new PN in the store and in the PN GW's inventory.

Python 3 standard library only (unittest). CPNS_CRASH_FILTER=REGEX runs only the cases whose
name matches (e.g. "gw/server" or "pne/.*PnRegistration").
"""

from __future__ import annotations

import os
import re
import sys
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import Lab, PneSpec, cleanup, make_lab  # noqa: E402

BIN = os.path.join(os.environ.get("CPNS_BINARY_DIR", "build/dev"), "apps")
PNE_IDS = ["pne-1", "pne-2"]
FLOW_TIMEOUT_S = 120.0  # one establishment, crash included (the roles' own timeouts are lower)
DEATH_TIMEOUT_S = 15.0  # the victim must be dead this long after the flow returned
RECOVER_TIMEOUT_S = 30.0  # links back after a restart (PN GW retries back off to seconds)
CASE_FILTER = re.compile(os.environ.get("CPNS_CRASH_FILTER", ""))


def new_lab(crash: tuple[str, str] | None) -> Lab:
    pnes = [PneSpec(p, enough_ui=True, pan_secure=False, device_type="headset") for p in PNE_IDS]
    lab = make_lab(BIN, pnes, trace="on", log_level="info")
    if crash:
        lab.crash_at(*crash)
    return lab


def start(lab: Lab, flow: str) -> None:
    lab.start_server()
    lab.start_gw()
    if not lab.wait_server_link().get("server_link"):
        raise RuntimeError("PN GW not linked to the server")
    daemons = PNE_IDS[1:] if flow == "pne" else PNE_IDS
    for p in lab.pnes:
        if p.id in daemons:
            lab.start_pne(p)
    lab.wait_linked(daemons)


def run_flow(lab: Lab, flow: str) -> dict:
    """One establishment; returns the initiator's printed outcome ({} if it printed none)."""
    if flow == "pne":
        _, out, _ = lab.pne_setup(lab.pnes[0], "all", timeout=FLOW_TIMEOUT_S)
        return out
    _, out = lab.gw_invite(timeout=FLOW_TIMEOUT_S)
    return out


def members(inv: dict) -> set[str]:
    return {m["pne_id"] for m in inv.get("members", [])}


def successes(events: list[dict]) -> set[str]:
    return {e["pn_id"] for e in events if e["event"] == "outcome" and e["reason"] == "success"}


RESTORED = re.compile(r"state file .*: (\d+) PN membership\(s\) restored")


def restored(log: Path, skip: int = 0, timeout: float = RECOVER_TIMEOUT_S) -> int:
    """The membership count of the first "state file ...: N PN membership(s) restored" line
    after the first `skip` such lines of a PNE's log; waits for it (-1 if it never comes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = RESTORED.findall(log.read_text()) if log.exists() else []
        if len(found) > skip:
            return int(found[skip])
        time.sleep(0.05)
    return -1


def reference_points(flow: str) -> list[tuple[str, str]]:
    """(party, crash spec) for every message each party sends or receives in one clean run
    of `flow`, counted per message name as the case's fresh process will count them."""
    lab = new_lab(None)
    try:
        start(lab, flow)
        t0 = int(time.time() * 1000)
        out = run_flow(lab, flow)
        if not out.get("success"):
            raise RuntimeError(f"reference run of the {flow} flow failed: {out}")
        lab.stop_all()
        points = []
        for party in ["server", "gw"] + PNE_IDS:
            counts: dict[tuple[str, str], int] = {}
            for e in lab.read_trace(party):
                if e["event"] not in ("send", "recv"):
                    continue
                key = (e["event"], e["message"])
                counts[key] = counts.get(key, 0) + 1
                if int(e["time_ms"]) < t0:
                    continue  # linking before the flow (discovery on the PAN link)
                n = counts[key]
                if e["event"] == "recv":
                    points.append((party, f"recv:{e['message']}:{n}"))
                else:
                    points.append((party, f"before-send:{e['message']}:{n}"))
                    points.append((party, f"send:{e['message']}:{n}"))
        return points
    except BaseException:
        print(lab.logs()[-6000:], flush=True)
        raise
    finally:
        cleanup(lab)


class CrashPointsTest(unittest.TestCase):
    maxDiff = None
    summary: list[str] = []

    @classmethod
    def tearDownClass(cls) -> None:
        print("\ncrash points: case, initiator's outcome, PNs stored / at the PN GW / stored "
              "but not at the PN GW (known limitation), seconds", flush=True)
        for line in cls.summary:
            print("  " + line, flush=True)

    def run_case(self, flow: str, victim: str, spec: str) -> None:
        t_case = time.monotonic()
        lab = new_lab((victim, spec))
        try:
            start(lab, flow)
            setup_victim = flow == "pne" and victim == "pne-1"  # the one-shot setup process
            out = run_flow(lab, flow)

            # 1. The victim died at its crash point.
            log = (lab.workdir / (f"{victim}.setup.log" if setup_victim else f"{victim}.log"))
            if not setup_victim:
                proc = lab.proc(victim)
                deadline = time.monotonic() + DEATH_TIMEOUT_S
                while proc.popen.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                self.assertEqual(proc.popen.returncode, -9, f"{victim} was not killed at {spec}")
            self.assertIn(f"crash point {spec} reached", log.read_text(),
                          f"{victim} did not reach {spec}")
            if setup_victim:
                self.assertFalse(out, f"the killed setup printed an outcome: {out}")

            # What each party acknowledged before and around the crash.
            acked = {name: successes(lab.read_trace(name)) for name in ["server", "gw"] + PNE_IDS}
            initiator_pn = out.get("pn_id") if out.get("success") else None

            # 2. Restart the victim with its state (the setup process has none to restart).
            lab.crash_at(victim, "")
            if victim in PNE_IDS and not setup_victim:  # I4, restarted daemon
                vlog = lab.workdir / f"{victim}.log"
                before = len(RESTORED.findall(vlog.read_text()))
                lab.start_pne(next(p for p in lab.pnes if p.id == victim))
                self.assertGreaterEqual(restored(vlog, before),
                                        len(acked[victim]), f"{victim} lost memberships")
            elif victim == "server":
                lab.restart_server()
            elif victim == "gw":
                lab.restart_gw()
            status = lab.wait_server_link(timeout=RECOVER_TIMEOUT_S)
            self.assertTrue(status.get("server_link"), f"PN GW not linked again: {status}")
            daemons = PNE_IDS[1:] if flow == "pne" else PNE_IDS
            status = lab.wait_linked(daemons, timeout=RECOVER_TIMEOUT_S)

            # 3. Consistency with what was acknowledged.
            stored = {p["pn_id"]: p for p in lab.store_pns()}
            at_gw = {p["pn_id"]: p for p in status.get("inventory", [])}
            if initiator_pn:  # I1
                self.assertIn(initiator_pn, stored, "initiator reported a PN the store lacks")
                self.assertIn(initiator_pn, at_gw, "initiator reported a PN the PN GW lacks")
            for pn, inv in at_gw.items():  # I2
                self.assertIn(pn, stored, f"PN GW inventory has {pn}, the store does not")
                self.assertEqual(members(inv), members(stored[pn]), f"members of {pn}")
            for name, pns in acked.items():  # I3
                for pn in pns:
                    self.assertIn(pn, stored, f"{name} reported {pn} established; not stored")
                    if name in PNE_IDS:
                        self.assertIn(name, members(stored[pn]), f"{name} not a member of {pn}")
                    if name != "server":
                        self.assertIn(pn, at_gw, f"{name} reported {pn}; the PN GW lacks it")
            for pn, inv in stored.items():  # I5
                self.assertTrue(members(inv), f"stored PN {pn} has no member")
                self.assertLessEqual(members(inv), set(PNE_IDS), f"stored PN {pn}")
            orphans = sorted(set(stored) - set(at_gw))

            # 4. The next establishment succeeds without manual action.
            again = run_flow(lab, flow)
            self.assertTrue(again.get("success"), f"next establishment failed: {again}")
            if setup_victim:  # I4: the next setup restored what the killed one joined
                self.assertGreaterEqual(restored(lab.workdir / f"{victim}.setup.log"),
                                        len(acked[victim]), f"{victim} lost memberships")
            pn = again["pn_id"]
            self.assertEqual(members(again.get("inventory", {})), set(PNE_IDS), again)
            self.assertIn(pn, {p["pn_id"] for p in lab.store_pns()}, "next PN not stored")
            self.assertIn(pn, {p["pn_id"] for p in lab.gw_status().get("inventory", [])},
                          "next PN not in the PN GW's inventory")
            self.summary.append(
                f"{flow}/{victim} {spec}: initiator {'ok ' + initiator_pn if initiator_pn else 'failed'}"
                f"; stored {len(stored)}, at PN GW {len(at_gw)}, orphans {len(orphans)}"
                f"; {time.monotonic() - t_case:.1f}s")
        except BaseException:
            print(f"== case {flow}/{victim} {spec}\n" + lab.logs()[-8000:], flush=True)
            raise
        finally:
            cleanup(lab)


def _add_cases() -> None:
    """One test method per flow; each runs its cases as subtests (names flow/party spec)."""
    for flow in ("pne", "gw"):
        def test(self, flow=flow):
            points = [(v, s) for v, s in reference_points(flow)
                      if CASE_FILTER.search(f"{flow}/{v} {s}")]
            self.assertTrue(points or CASE_FILTER.pattern, f"no message boundaries in {flow}")
            parties = {v for v, _ in points}
            if not CASE_FILTER.pattern:
                self.assertEqual(parties, {"server", "gw"} | set(PNE_IDS),
                                 f"every party has boundaries in the {flow} flow")
            for victim, spec in points:
                with self.subTest(case=f"{flow}/{victim} {spec}"):
                    self.run_case(flow, victim, spec)
        test.__doc__ = f"{'PNE' if flow == 'pne' else 'PN GW'} initiated flow: every boundary"
        setattr(CrashPointsTest, f"test_{flow}_initiated", test)


_add_cases()

if __name__ == "__main__":
    unittest.main(verbosity=2)
