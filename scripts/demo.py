"""The main job: a CPNS Server, a PN GW and four PNEs as real processes on 127.0.0.1 with
freshly provisioned keys establish Personal Networks with both flows, then stop.

The message flow comes from the PN GW's event trace ("send" and "recv" events, see
tests/lab/cpnslab.py) when its cpns-gw writes one, else from the PN GW's debug log lines.

Usage: python3 scripts/demo.py BUILD_DIR [--keep]
"""

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "lab"))
from cpnslab import Lab, PneSpec, cleanup, make_lab  # noqa: E402

FLOW_LINE = re.compile(r"^\S+T(\S+) debug \[gw-1\] (\S+) -> (\S+): (\w+)(?: \((\w+)\))?$")
SERVER_ID = "cpns-server"  # the lab's server ID; the flow calls it "server"


def describe(p: PneSpec) -> str:
    return (f"{p.id:6} {p.device_type:9} UI: {'yes' if p.enough_ui else 'no ':3}  "
            f"PAN: {'secure  ' if p.pan_secure else 'insecure'}  -> "
            + ("clear" if p.pan_secure else
               "PSK-TLS with the " + ("LocalEUKey" if p.enough_ui else "pre-assigned key")))


def print_flow_line(t: str, src: str, dst: str, msg: str, prot: str | None) -> None:
    print(f"  {t}  {src:>7} -> {dst:<7} {msg}{'  [' + prot + ']' if prot else ''}")


def print_flow(log: str, since: int) -> int:
    """The flow from the PN GW's debug log lines after line `since`; returns the line count."""
    lines = log.splitlines()
    for line in lines[since:]:
        m = FLOW_LINE.match(line)
        if m:
            t, src, dst, msg, prot = m.groups()
            print_flow_line(t, src, dst, msg, prot)
    return len(lines)


def print_trace_flow(events: list[dict], since: int) -> int:
    """The flow from the PN GW's trace events after event `since`; returns the event count."""
    for ev in events[since:]:
        kind = ev.get("event")
        if kind not in ("send", "recv") or not ev.get("message"):
            continue
        me, peer = ev.get("entity", ""), ev.get("peer", "")
        peer = "server" if peer in (SERVER_ID, "server") else peer
        src, dst = (me, peer) if kind == "send" else (peer, me)
        ms = int(ev.get("time_ms") or 0)
        t = datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S.%f")[:-3]
        prot = ev.get("detail") if ev.get("detail") in ("clear", "tls") else None
        print_flow_line(t, src, dst, ev["message"], prot)
    return len(events)


class FlowSource:
    """Where the PN GW's message flow is read from: its trace if it writes one, else its log."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.log = lab.workdir / "gw.log"
        self.trace = lab.trace_path("gw")
        self.mark = 0

    def _use_trace(self) -> bool:
        return self.trace.exists()

    def set_mark(self) -> None:
        if self._use_trace():
            self.mark = len(self.lab.read_trace("gw"))
        else:
            self.mark = len(self.log.read_text().splitlines())

    def print_since_mark(self) -> None:
        if self._use_trace():
            self.mark = print_trace_flow(self.lab.read_trace("gw"), self.mark)
        else:
            self.mark = print_flow(self.log.read_text(), self.mark)


def print_outcome(title: str, out: dict) -> None:
    print(f"\n{title}: {'success' if out.get('success') else 'FAILED'} — PN {out.get('pn_id')}")
    inv = out.get("inventory") or {}
    if inv:
        print(f"PN Inventory at PN GW {inv.get('gw_id')}:")
        for m in inv.get("members", []):
            caps = m.get("capabilities", {})
            key = "LocalEUKey assigned" if m.get("local_eukey_assigned") else "pre-assigned key"
            print(f"  - {m['pne_id']:6} {caps.get('device_type', ''):9} {key}")
    for p in out.get("pnes", []):
        if not p.get("joined"):
            print(f"  not joined: {p['pne_id']}: {p.get('reason_text')}")


def main() -> int:
    build = sys.argv[1] if len(sys.argv) > 1 else "build/release"
    pnes = [
        PneSpec("pne-1", enough_ui=True, pan_secure=False, device_type="phone"),
        PneSpec("pne-2", enough_ui=False, pan_secure=False, device_type="headset"),
        PneSpec("pne-3", enough_ui=True, pan_secure=True, device_type="tv"),
        PneSpec("pne-4", enough_ui=False, pan_secure=True, device_type="sensor",
                use_discovery=True),
    ]
    # trace="auto": the daemons write event traces where they offer --trace-file.
    lab = make_lab(str(Path(build) / "apps"), pnes, discovery_group="239.255.67.78:47011",
                   trace="auto")
    print(f"Provisioned fresh 256-bit EUKeys (and pre-assigned keys for PNEs without UI) in "
          f"{lab.workdir}")
    for p in pnes:
        print("  " + describe(p))
    ok = True
    try:
        lab.start_server()
        print(f"\ncpns-server listening on {lab.server_addr}")
        lab.start_gw()
        status = lab.wait_server_link()
        print(f"cpns-gw gw-1: PAN on {lab.pan_addr}, control on {lab.control_addr}, "
              f"server link {'up (TLS 1.3 external PSK)' if status.get('server_link') else 'DOWN'}")
        for p in pnes[1:]:
            lab.start_pne(p)
        lab.wait_linked([p.id for p in pnes[1:]])
        print("cpns-pne pne-2, pne-3, pne-4 running and linked (pne-4 found the PN GW by "
              "multicast Entity Discovery)")
        flow = FlowSource(lab)
        flow.set_mark()

        print("\n=== 5.2.1.1 PNE initiated: `cpns-pne setup --type all` on pne-1 ===")
        rc, out, _ = lab.pne_setup(pnes[0], "all")
        print("Message flow seen by the PN GW:")
        flow.print_since_mark()
        print_outcome("Outcome at pne-1", out)
        ok &= rc == 0

        print("\n=== 5.2.1.2 PN GW initiated: `cpns-gw invite` (every linked PNE) ===")
        lab.start_pne(pnes[0])
        lab.wait_linked([p.id for p in pnes])
        flow.set_mark()
        rc, out2 = lab.gw_invite()
        print("Message flow seen by the PN GW:")
        flow.print_since_mark()
        print_outcome("Outcome at gw-1", out2)
        ok &= rc == 0

        status = lab.gw_status()
        print("\n=== Final PN Inventory at the PN GW (cpns-gw status) ===")
        for inv in status.get("inventory", []):
            print(f"PN {inv['pn_id']} (PN GW {inv['gw_id']}, registered at "
                  f"{time.strftime('%H:%M:%S', time.localtime(int(inv['registered_at_ms']) / 1000))}):")
            for m in inv.get("members", []):
                content = ", ".join(c.get("content_id", "") for c in m.get("contents", []))
                print(f"  - {m['pne_id']:6} {m['capabilities'].get('device_type', ''):9} "
                      f"contents: {content}")
        print("Failure counters at the PN GW: " + json.dumps(status.get("failures", {})))

        # The server's side, read from its store with the operator's tool.
        env = dict(os.environ, CPNS_MASTER_KEY=(lab.workdir / "master.key").read_text().strip())
        ctl = [str(Path(build) / "apps" / "cpnsctl" / "cpnsctl"), "--store",
               f"sqlite:{lab.workdir / 'server.db'}"]
        print("\n=== PN Inventory at the CPNS Server (cpnsctl pns; EUKeys sealed at rest) ===")
        r = subprocess.run(ctl + ["pns"], capture_output=True, text=True, env=env, timeout=30)
        print(r.stdout.rstrip())
        r = subprocess.run(ctl + ["check"], capture_output=True, text=True, env=env, timeout=30)
        print("store check: " + r.stdout.strip())
        ok &= r.returncode == 0
    except Exception as e:  # noqa: BLE001
        ok = False
        print(f"\nmain job failed: {e}\n{lab.logs()[-6000:]}")
    finally:
        try:
            times = lab.stop_all()
            print(f"\nStopped {len(times)} processes with SIGTERM (slowest "
                  f"{max(times.values()) * 1000:.0f} ms).")
        finally:
            if "--keep" in sys.argv:
                print(f"Logs kept in {lab.workdir}")
            else:
                cleanup(lab)
    print("main job: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
