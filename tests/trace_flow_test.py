"""The daemons' event traces tell the whole story of an establishment, consistently.

A CPNS Server, a PN GW and two PNEs (enough UI, insecure PAN: PSK-TLS with a LocalEUKey) run as
processes, each with `--trace-file` (tests/lab/cpnslab.py, Lab.trace = "on"). One PNE
initiated setup (type All, pne-1 asks, pne-2 is notified) and one PN GW initiated invite (both
PNEs) must succeed; then every trace is read and, for every party and subject, the
"transition" events must form one chain (each from_state is the previous to_state of that
party, subject and PN) that equals the state sequence of a successful run, each with a reason.
The states and the event contract are described in docs/architecture.md ("Event trace").

Python 3 standard library only (unittest). The scenario runs once (setUpClass); each test
checks one property of the traces it left.
"""

from __future__ import annotations

import os
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cpnslab import Lab, PneSpec, cleanup, make_lab  # noqa: E402

BIN = os.path.join(os.environ.get("CPNS_BINARY_DIR", "build/dev"), "apps")
SERVER_ID = "cpns-server"  # the lab's server ID
GW_ID = "gw-1"
PNE_IDS = ["pne-1", "pne-2"]

KEYS = ("time_ms", "entity", "role", "event", "pn_id", "subject", "from_state", "to_state",
        "reason", "message", "peer", "detail")
EVENTS = {"transition", "send", "recv", "outcome", "link"}

# The states of a successful run, per role and kind of subject.
PNE_RUN = ["idle", "wait_auth_request", "tls_before_auth_response", "wait_result", "idle"]
PNE_STATES = {"idle", "tls_before_join", "wait_auth_request", "tls_before_auth_response",
              "wait_result"}
GW_SESSION = ["none", "collect_joins", "wait_auth_request", "collect_auth", "wait_registration",
              "done"]
GW_MEMBER_STATES = {"none", "invited", "joined", "auth_pending", "answered", "member", "failed"}
GW_MEMBER = ["none", "joined", "auth_pending", "answered", "member"]  # the PNE that asked
GW_INVITEE = ["none", "invited", "joined", "auth_pending", "answered", "member"]
SERVER_SESSION = ["none", "wait_auth_response", "wait_persist", "done"]
SERVER_PNE_STATES = {"none", "pending", "authenticated", "failed", "refused"}
SERVER_PNE = ["none", "pending", "authenticated"]
GW_SESSION_STATES = set(GW_SESSION)
SERVER_SESSION_STATES = set(SERVER_SESSION)

PARTIES = {"server": ("server", SERVER_ID), "gw": ("gw", GW_ID),
           **{p: ("pne", p) for p in PNE_IDS}}


def describe(ev: dict) -> str:
    return (f"{ev.get('entity')}/{ev.get('subject') or '-'} [{ev.get('pn_id') or 'no PN'}] "
            f"{ev.get('from_state')} -> {ev.get('to_state')} ({ev.get('reason')!r})")


def chain_of(events: list[dict]) -> list[str]:
    """The states a chain of transitions went through: the first from_state, then each to_state."""
    return [events[0]["from_state"]] + [e["to_state"] for e in events] if events else []


class TraceFlowTest(unittest.TestCase):
    maxDiff = None
    lab: Lab
    traces: dict[str, list[dict]]
    pn_pne_initiated: str
    pn_gw_initiated: str

    @classmethod
    def setUpClass(cls) -> None:
        pnes = [PneSpec(p, enough_ui=True, pan_secure=False, device_type="headset")
                for p in PNE_IDS]
        lab = make_lab(BIN, pnes, trace="on")
        cls.lab = lab
        try:
            try:
                lab.start_server()
            except RuntimeError as e:  # most likely: the option is not there yet
                raise RuntimeError(f"MISSING TRACE: {e}") from None
            lab.start_gw()
            status = lab.wait_server_link()
            if not status.get("server_link"):
                raise RuntimeError(f"PN GW not linked to the server: {status}")
            # 5.2.1.1, setup type All: pne-1 asks, pne-2 (running, linked) is notified.
            lab.start_pne(pnes[1])
            lab.wait_linked(["pne-2"])
            rc, out, err = lab.pne_setup(pnes[0], "all")
            if rc != 0 or not out.get("success"):
                raise RuntimeError(f"PNE initiated setup failed ({rc}): {out} {err[-2000:]}")
            cls.pn_pne_initiated = out["pn_id"]
            # 5.2.1.2: the PN GW invites both.
            lab.start_pne(pnes[0])
            lab.wait_linked(PNE_IDS)
            rc, out2 = lab.gw_invite()
            if rc != 0 or not out2.get("success"):
                raise RuntimeError(f"PN GW initiated invite failed ({rc}): {out2}")
            cls.pn_gw_initiated = out2["pn_id"]
            lab.stop_all()
            missing = [f"{name}: {lab.trace_path(name)}" for name in PARTIES
                       if not lab.trace_path(name).exists()]
            if missing:
                raise RuntimeError("MISSING TRACE: no trace file was written by "
                                   + "; ".join(missing)
                                   + " (the daemons accept --trace-file but do not write it)")
            cls.traces = {name: lab.read_trace(name) for name in PARTIES}
        except BaseException:
            try:
                print(lab.logs()[-6000:], flush=True)
                cleanup(lab)
            finally:
                pass
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cleanup(cls.lab)

    # --- helpers ------------------------------------------------------------------------
    def transitions(self, name: str) -> list[dict]:
        return [e for e in self.traces[name] if e.get("event") == "transition"]

    def chains(self, name: str, by_pn: bool = True) -> dict[tuple[str, str], list[dict]]:
        """Transitions of one party grouped by (subject, PN ID), or by subject alone."""
        out: dict[tuple[str, str], list[dict]] = {}
        for e in self.transitions(name):
            key = (e["subject"], e["pn_id"] if by_pn else "")
            out.setdefault(key, []).append(e)
        return out

    def assert_linked(self, events: list[dict], what: str) -> None:
        for prev, cur in zip(events, events[1:]):
            self.assertEqual(cur["from_state"], prev["to_state"],
                             f"{what}: broken chain at {describe(cur)} after {describe(prev)}")

    # --- the checks -----------------------------------------------------------------------
    def test_1_every_line_is_a_complete_event(self):
        for name, (role, entity) in PARTIES.items():
            events = self.traces[name]
            self.assertTrue(events, f"{name}: the trace {self.lab.trace_path(name)} is empty")
            for ev in events:
                self.assertEqual(sorted(k for k in KEYS if k not in ev), [],
                                 f"{name}: fields missing in {ev}")
                self.assertIn(ev["event"], EVENTS, f"{name}: unknown event in {ev}")
                self.assertEqual((ev["role"], ev["entity"]), (role, entity), f"{name}: {ev}")
                self.assertGreater(int(ev["time_ms"]), 1_500_000_000_000, f"{name}: {ev}")

    def test_2_every_transition_has_a_reason_and_known_states(self):
        for name, (role, _) in PARTIES.items():
            trs = self.transitions(name)
            self.assertTrue(trs, f"{name}: no transition events")
            for e in trs:
                self.assertTrue(e["reason"].strip(), f"{name}: no reason: {describe(e)}")
                self.assertNotEqual(e["from_state"], e["to_state"], describe(e))
                if role == "pne":
                    self.assertEqual(e["subject"], e["entity"], describe(e))
                    allowed = PNE_STATES
                elif role == "gw":
                    allowed = GW_SESSION_STATES if e["subject"] == "" else GW_MEMBER_STATES
                else:
                    allowed = SERVER_SESSION_STATES if e["subject"] == "" else SERVER_PNE_STATES
                for s in (e["from_state"], e["to_state"]):
                    self.assertIn(s, allowed, f"{name}: unknown state {s!r}: {describe(e)}")

    def test_3_chains_are_consistent(self):
        for name in PARTIES:
            role = PARTIES[name][0]
            # A PNE learns its PN ID during a run: its chain is per subject; elsewhere per
            # subject and PN.
            for (subject, pn), events in self.chains(name, by_pn=role != "pne").items():
                self.assert_linked(events, f"{name} subject {subject or '-'} PN {pn or '-'}")

    def test_4_pn_gw_session_and_members(self):
        chains = self.chains("gw")
        for pn, asked_by in ((self.pn_pne_initiated, "pne-1"), (self.pn_gw_initiated, None)):
            self.assertEqual(chain_of(chains.get(("", pn), [])), GW_SESSION,
                             f"PN GW session of {pn}")
            for pne in PNE_IDS:
                want = GW_MEMBER if pne == asked_by else GW_INVITEE
                self.assertEqual(chain_of(chains.get((pne, pn), [])), want,
                                 f"PN GW's state of {pne} in {pn}")
        self.assertEqual(sorted(pn for _, pn in chains),
                         sorted([self.pn_pne_initiated] * 3 + [self.pn_gw_initiated] * 3),
                         "PN GW transitions belong to the two PNs only")

    def test_5_server_session_and_pnes(self):
        chains = self.chains("server")
        for pn in (self.pn_pne_initiated, self.pn_gw_initiated):
            self.assertEqual(chain_of(chains.get(("", pn), [])), SERVER_SESSION,
                             f"server session of {pn}")
            for pne in PNE_IDS:
                self.assertEqual(chain_of(chains.get((pne, pn), [])), SERVER_PNE,
                                 f"server's state of {pne} in {pn}")
        self.assertEqual(sorted(pn for _, pn in chains),
                         sorted([self.pn_pne_initiated] * 3 + [self.pn_gw_initiated] * 3),
                         "server transitions belong to the two PNs only")

    def test_6_pne_runs(self):
        for pne in PNE_IDS:
            events = self.chains(pne, by_pn=False).get((pne, ""), [])
            runs: list[list[dict]] = []
            for e in events:
                if e["from_state"] == "idle" or not runs:
                    runs.append([])
                runs[-1].append(e)
            self.assertEqual([chain_of(r) for r in runs], [PNE_RUN, PNE_RUN],
                             f"{pne}: two successful runs, one per flow")
            for run, pn in zip(runs, (self.pn_pne_initiated, self.pn_gw_initiated)):
                known = [e["pn_id"] for e in run if e["pn_id"]]
                self.assertTrue(known, f"{pne}: the run for {pn} never names its PN")
                self.assertEqual(set(known), {pn}, f"{pne}: PN IDs in the run for {pn}")
                # Only the PNE that asked may not know its PN ID at first.
                if pne != "pne-1" or pn != self.pn_pne_initiated:
                    self.assertEqual(run[0]["pn_id"], pn, f"{pne}: {describe(run[0])}")

    def test_7_messages_sent_and_received(self):
        for name in PARTIES:
            msgs = [e for e in self.traces[name] if e["event"] in ("send", "recv")]
            self.assertTrue(any(e["event"] == "send" for e in msgs), f"{name}: no send events")
            self.assertTrue(any(e["event"] == "recv" for e in msgs), f"{name}: no recv events")
            for e in msgs:
                self.assertTrue(e["message"] and e["peer"], f"{name}: {e}")
        gw_recv = {(e["peer"], e["message"]) for e in self.traces["gw"] if e["event"] == "recv"}
        self.assertIn(("pne-1", "PnSetupRequest"), gw_recv, "the PN GW received pne-1's request")


if __name__ == "__main__":
    unittest.main(verbosity=2)
