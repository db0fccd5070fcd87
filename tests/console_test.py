"""The web console (web/console/, served by `cpns-server --api`) driven in headless Chromium.

A real CPNS Server with its management API on 127.0.0.1 (plain HTTP, allowed on loopback with
`api_insecure_http`), a PN GW and PNEs as processes (the lab harness tests/lab/cpnslab.py);
tokens made with `cpnsctl token new`. Both flows establish PNs before the page is opened.
Then, in Debian's chromium:

1. a wrong token is refused with the API's error in clear words; the admin token logs in and
   the page shows the role;
2. the PN Inventory shows every PN of the store (`cpnsctl export`) with its PN GW and its
   members, their capabilities and contents; a device-supplied text with markup is shown as
   text (no element is made from it);
3. the live view shows an establishment made while the page is open (registered) and a failed
   one, whose reason is a FailureReason name and is highlighted;
4. a PNE is revoked through the UI (Revoke, then the confirmation dialog; Cancel first changes
   nothing): the page shows it revoked, `cpnsctl show` / `cpnsctl list` on the store say
   revoked, and its lifecycle event reaches the live view;
5. the audit log shows the revocation under the token's name and the failure highlighted; the
   charts count each establishment once, with the failure's reason;
6. the PN GW revoked through the UI leaves its PNs orphaned on the page; one is deleted through
   the UI and is gone from the store (`cpnsctl export`);
7. a read-only token sees the data and no enabled admin button;
8. more Refresh clicks at once than the token's rate limit allows bring the API's RATE_LIMITED
   error to the user in words.
9. Log out forgets the token; a kept token the server refuses brings back the sign-in form.
No uncaught script error and no CSP refusal happens on the pages.

Screenshots (PNG) of each view go to $CPNS_SCREENSHOT_DIR (default: a new temporary directory,
kept for the reader); their paths are printed.

Why the DevTools protocol directly (tests/lab/cdp.py) and not puppeteer-core: Chromium's
--remote-debugging-pipe needs nothing but the standard library, so the test has no npm
dependency to install on a clean clone (no registry access at test time, no lock file to keep
current) and stays in one language with the other multi-process tests; the few commands the
test needs (navigate, evaluate, mouse and keyboard input, screenshot) are each one protocol call.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lab"))
from cdp import CHROMIUM, Browser, CdpError  # noqa: E402
from cpnslab import PneSpec, cleanup, free_port, make_lab  # noqa: E402

BIN = os.path.join(os.environ.get("CPNS_BINARY_DIR", "build/dev"), "apps")
SOURCE = Path(os.environ.get("CPNS_SOURCE_DIR", Path(__file__).resolve().parent.parent))
SANITIZER = bool(os.environ.get("CPNS_SANITIZER"))
# Waits for the page (an API answer, an event on the stream): every process runs several times
# slower under the sanitizers.
UI_TIMEOUT_S = 90.0 if SANITIZER else 30.0
API_READY_TIMEOUT_S = 60.0 if SANITIZER else 20.0  # the API answers /health after start
POLL_S = 0.1
VIEWPORT = (1280, 860)
RATE_BURST_CLICKS = 300  # Refresh clicks at once: far over the API's per-token burst
# A device-supplied text with markup: the console must show it as text.
MARKUP_DEVICE_TYPE = "<img src=x id=injected>tv"


def failure_reason_names() -> set[str]:
    """The names of enum FailureReason in the schema (what the stream's `reason` may be)."""
    text = (SOURCE / "proto" / "cpns" / "messages.proto").read_text()
    body = text.split("enum FailureReason {", 1)[1].split("}", 1)[0]
    return set(re.findall(r"^\s*([A-Z_]+)\s*=", body, re.M))


class ConsoleTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        if not os.access(CHROMIUM, os.X_OK):
            raise AssertionError(f"{CHROMIUM} not found: scripts/deps.sh --with-tests installs "
                                 "chromium")
        cls.pnes = [
            PneSpec("pne-1", enough_ui=True, device_type="phone"),
            PneSpec("pne-2", enough_ui=False, device_type="headset"),
            PneSpec("pne-3", enough_ui=True, pan_secure=True, device_type=MARKUP_DEVICE_TYPE),
            PneSpec("pne-bad", wrong_eukey=True, device_type="sensor"),
        ]
        cls.lab = make_lab(BIN, cls.pnes)
        lab = cls.lab
        # The screenshots outlive the lab's folder (removed at the end): by default a temporary
        # directory of their own, kept for the reader (its path is printed).
        cls.shots = Path(os.environ.get("CPNS_SCREENSHOT_DIR")
                         or tempfile.mkdtemp(prefix="cpns-console-shots-"))
        cls.shots.mkdir(parents=True, exist_ok=True)
        cls.tokens = lab.workdir / "api-tokens"
        cls.browser = None
        try:
            cls.admin_token = cls.new_token("console-admin", "admin")
            cls.read_token = cls.new_token("console-viewer", "read")
            cls.port = free_port()
            with open(lab.workdir / "server.toml", "a") as f:
                f.write(f'api = "127.0.0.1:{cls.port}"\napi_insecure_http = true\n'
                        f'api_tokens = "{cls.tokens}"\n')
            cls.base = f"http://127.0.0.1:{cls.port}"
            lab.start_server()
            cls.wait_api()
            lab.start_gw()
            lab.wait_server_link()
            for p in cls.pnes[1:3]:
                lab.start_pne(p)
            lab.wait_linked([p.id for p in cls.pnes[1:3]])
            # 5.2.1.1: pne-1 asks for a PN of every PNE the PN GW has discovered.
            rc, out, err = lab.pne_setup(cls.pnes[0], "all")
            assert rc == 0, f"PNE initiated establishment failed: {out} {err[-2000:]}"
            # 5.2.1.2: the PN GW invites pne-2 and pne-3 into a second PN.
            rc, out = lab.gw_invite(["pne-2", "pne-3"])
            assert rc == 0, f"PN GW initiated establishment failed: {out}"
            cls.browser = Browser()
        except BaseException:
            print(lab.logs()[-8000:])
            cleanup(lab)
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.browser:
            cls.browser.close()
        print(f"screenshots in {cls.shots}")
        cleanup(cls.lab)

    # --- helpers ------------------------------------------------------------------------

    @classmethod
    def new_token(cls, name: str, role: str) -> str:
        r = subprocess.run([os.path.join(BIN, "cpnsctl", "cpnsctl"), "token", "new", "--name",
                            name, "--role", role, "--tokens", str(cls.tokens)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"cpnsctl token new: {r.returncode} {r.stderr}"
        token = r.stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{64}", token), f"not a token: {token!r}"
        return token

    @classmethod
    def wait_api(cls) -> None:
        deadline = time.monotonic() + API_READY_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(cls.base + "/api/v1/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError) as e:
                last = str(e)
            time.sleep(POLL_S)
        raise AssertionError(f"the API on {cls.base} did not answer within "
                             f"{API_READY_TIMEOUT_S}s: {last}")

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        lab = self.lab
        return subprocess.run(
            [os.path.join(BIN, "cpnsctl", "cpnsctl"), "--store",
             lab.store_url or f"sqlite:{lab.workdir}/server.db",
             "--master-key-file", str(lab.workdir / "master.key"), *args],
            capture_output=True, text=True, timeout=30)

    def shot(self, page, name: str) -> None:
        path = page.screenshot(self.shots / f"{name}.png")
        print(f"screenshot: {path}")

    def open_console(self, token: str):
        page = self.browser.new_page(*VIEWPORT)
        page.goto(self.base + "/")
        self.wait(page, "!document.getElementById('view-login').hidden", "the login form")
        page.type_into("#token", token)
        page.press_enter()
        self.wait(page, "!document.getElementById('session').hidden", "logged in")
        return page

    def wait(self, page, expression: str, what: str):
        try:
            return page.wait_for(expression, UI_TIMEOUT_S, what)
        except CdpError:
            # What the user saw: the page as a picture, its banner, and the daemons' logs.
            try:
                print(f"waiting for {what} failed; the page: "
                      f"{page.screenshot(self.shots / 'failure.png')}; banner: "
                      + repr(page.eval("document.getElementById('banner-text').textContent"))
                      + f"; problems: {page.problems()}")
            except CdpError as e:
                print(f"the page does not answer either: {e}")
            print(self.lab.logs()[-6000:])
            raise

    def show_view(self, page, name: str) -> None:
        """Opens a view from the menu and waits until it has loaded (aria-busy cleared)."""
        page.click(f".nav-btn[data-view={name}]")
        self.wait(page, f"(() => {{ const v = document.getElementById('view-{name}');"
                  " return !v.hidden && v.getAttribute('aria-busy') !== 'true'; })()",
                  f"the {name} view loaded")

    def assert_no_banner(self, page) -> None:
        banner = page.eval("document.getElementById('banner').hidden ? '' : "
                           "document.getElementById('banner-text').textContent")
        self.assertEqual(banner, "", "the page shows an error")

    def assert_no_problems(self, page) -> None:
        # 401 answers are the test's own wrong token; anything else is a problem.
        problems = [p for p in page.problems() if "status of 401" not in p]
        self.assertEqual(problems, [], "script errors or refusals on the page")

    # --- the test --------------------------------------------------------------------------

    def test_console(self):
        page = self.browser.new_page(*VIEWPORT)
        page.goto(self.base + "/")
        self.wait(page, "!document.getElementById('view-login').hidden", "the login form")
        self.shot(page, "01-login")

        # 1. A wrong token: the API's UNAUTHORIZED in clear words, still on the login form.
        page.type_into("#token", "0" * 64)
        page.press_enter()
        err = self.wait(page, "!document.getElementById('login-error').hidden && "
                        "document.getElementById('login-error').textContent", "the login error")
        self.assertIn("did not accept the token", err)
        self.assertIn("UNAUTHORIZED", err)
        self.assertTrue(page.eval("document.getElementById('session').hidden"))

        # The admin token logs in; the page shows its name and role.
        page.type_into("#token", self.admin_token)
        page.press_enter()
        who = self.wait(page, "!document.getElementById('session').hidden && "
                        "document.getElementById('whoami').textContent", "logged in")
        self.assertIn("console-admin", who)
        self.assertIn("admin", who)
        self.assertEqual(page.eval("sessionStorage.length"), 1, "the token is kept per tab")

        # 2. The PN Inventory: every PN of the store with its PN GW and members.
        store = self.lab.store_pns()
        self.assertEqual(len(store), 2, f"two PNs in the store: {store}")
        self.wait(page, f"document.querySelectorAll('.pn-card').length === {len(store)}",
                  "the PN cards")
        shown = page.eval("""[...document.querySelectorAll('.pn-card')].map(c => ({
            pn: c.dataset.pn, gw: c.dataset.gw,
            title: c.querySelector('.pn-id').textContent,
            members: [...c.querySelectorAll('tbody tr')].map(r => r.dataset.pne),
            text: c.textContent}))""")
        newest_first = sorted(store, key=lambda p: (-int(p.get("registered_at_ms", 0)),
                                                    p["gw_id"], p["pn_id"]))
        self.assertEqual([s["pn"] for s in shown], [p["pn_id"] for p in newest_first])
        by_pn = {s["pn"]: s for s in shown}
        for pn in store:
            s = by_pn.get(pn["pn_id"])
            self.assertIsNotNone(s, f"PN {pn['pn_id']} not on the page: {shown}")
            self.assertEqual(s["title"], pn["pn_id"])
            self.assertEqual(s["gw"], pn["gw_id"])
            self.assertEqual(sorted(s["members"]), sorted(m["pne_id"] for m in pn["members"]))
            for m in pn["members"]:
                self.assertIn(m["capabilities"]["device_type"], s["text"])
                for c in m.get("contents", []):
                    self.assertIn(c["content_id"], s["text"])
        self.assertIn("gw-1", page.eval("document.getElementById('pns-list').textContent"))
        # The device's markup is text: no element was made from it.
        self.assertIn(MARKUP_DEVICE_TYPE, page.eval("document.body.textContent"))
        self.assertFalse(page.eval("!!document.getElementById('injected')"))
        # The filters: no PN is orphaned yet; the PN GW filter lists gw-1 and keeps every PN.
        page.click("#pns-orphaned")
        self.wait(page, "document.getElementById('view-pns').getAttribute('aria-busy') === "
                  "'false' && document.querySelectorAll('.pn-card').length === 0 && "
                  "document.getElementById('pns-list').textContent.includes('No registered PNs')",
                  "no orphaned PN")
        page.click("#pns-orphaned")
        self.wait(page, f"document.querySelectorAll('.pn-card').length === {len(store)}",
                  "every PN again")
        self.wait(page, "[...document.querySelectorAll('#pns-gw option')]"
                  ".some(o => o.value === 'gw-1')", "gw-1 in the PN GW filter")
        page.eval("(() => { const s = document.getElementById('pns-gw'); s.value = 'gw-1';"
                  " s.dispatchEvent(new Event('change')); })()")
        self.wait(page, "document.getElementById('pns-gw').value === 'gw-1' && "
                  "document.getElementById('pns-summary').textContent.endsWith('at PN GW gw-1') "
                  f"&& document.querySelectorAll('.pn-card').length === {len(store)}",
                  "the PNs of gw-1")
        self.assert_no_banner(page)
        self.shot(page, "02-pn-inventory")

        # 3. Live: an establishment made while the page is open, and a failed one.
        self.show_view(page, "live")
        self.wait(page, "document.getElementById('live-state').textContent === 'live'",
                  "the event stream open")
        rc, ok_out = self.lab.gw_invite(["pne-2"])
        self.assertEqual(rc, 0, f"the establishment while the page is open failed: {ok_out}")
        ok_pn = ok_out.get("pn_id", "")
        self.assertTrue(ok_pn, ok_out)
        item = self.wait(page, f"""(() => {{
            const li = [...document.querySelectorAll('#live-list .ev')]
              .find(l => l.textContent.includes({json.dumps(ok_pn)}));
            return li && {{cls: li.className, text: li.textContent}}; }})()""",
            f"the live event of PN {ok_pn}")
        self.assertIn("ev-ok", item["cls"])
        self.assertIn("registered", item["text"])
        self.assertIn("PN GW initiated", item["text"])

        rc, bad_out, _ = self.lab.pne_setup(self.pnes[3], "1-1")
        self.assertNotEqual(rc, 0, f"pne-bad has a wrong EUKey and must fail: {bad_out}")
        failed = self.wait(page, """(() => {
            const li = document.querySelector('#live-list .ev-failed');
            if (!li) return null;
            const r = li.querySelector('.ev-reason strong');
            return {text: li.textContent, reason: r ? r.textContent : '',
                    bg: getComputedStyle(li).backgroundColor,
                    reasonColor: getComputedStyle(li.querySelector('.ev-reason')).color,
                    okBg: getComputedStyle(document.querySelector('#live-list .ev-ok'))
                            .backgroundColor}; })()""", "a failed establishment on the live view")
        self.assertIn(failed["reason"], failure_reason_names() - {"REASON_NONE"},
                      f"the reason shown is a FailureReason name: {failed}")
        if bad_out.get("pn_id"):
            self.assertIn(bad_out["pn_id"], failed["text"])
        self.assertNotEqual(failed["bg"], failed["okBg"], "a failure is highlighted")
        self.assertEqual(failed["reasonColor"], "rgb(180, 35, 24)", "its reason in red")
        failed_count = page.eval("document.getElementById('live-failed').textContent")
        self.assertGreaterEqual(int(failed_count), 1)

        # 4. Revoke pne-3 through the UI: the Revoke button, then the confirmation.
        self.show_view(page, "entities")
        self.wait(page, "!!document.querySelector('tr[data-entity=\"pne-3\"]')", "the entities")
        self.assertEqual(page.eval(
            "document.querySelector('tr[data-entity=\"pne-3\"]').dataset.status"), "active")
        page.click('button[data-action="revoke"][data-entity="pne-3"]')
        self.wait(page, "document.getElementById('confirm').open", "the confirmation dialog")
        self.assertIn("pne-3", page.eval("document.getElementById('confirm-text').textContent"))
        self.shot(page, "04-revoke-confirm")
        # Cancel first: nothing changes.
        page.click("#confirm-cancel")
        self.wait(page, "!document.getElementById('confirm').open", "the dialog closed")
        self.assertIn("\nstatus:   active", self.ctl("show", "pne-3").stdout)
        # The keyboard alone: the dialog has the focus on Cancel, and Escape closes it.
        page.click('button[data-action="revoke"][data-entity="pne-3"]')
        self.wait(page, "document.activeElement?.id === 'confirm-cancel'", "Cancel focused")
        page.press("Escape")
        self.wait(page, "!document.getElementById('confirm').open", "the dialog closed by Escape")
        self.assertIn("\nstatus:   active", self.ctl("show", "pne-3").stdout)
        page.click('button[data-action="revoke"][data-entity="pne-3"]')
        self.wait(page, "document.getElementById('confirm').open", "the confirmation dialog")
        page.click("#confirm-ok")
        self.wait(page, "document.querySelector('tr[data-entity=\"pne-3\"]') && "
                  "document.querySelector('tr[data-entity=\"pne-3\"]').dataset.status === "
                  "'revoked'", "pne-3 revoked on the page")
        self.assertEqual(page.eval("document.querySelectorAll('tr[data-entity=\"pne-3\"] "
                                   "button').length"), 0, "no action left for a revoked entity")
        show = self.ctl("show", "pne-3")
        self.assertEqual(show.returncode, 0, show.stderr)
        self.assertIn("\nstatus:   revoked", show.stdout)
        listing = self.ctl("list")
        line = next(ln for ln in listing.stdout.splitlines() if ln.split()[0] == "pne-3")
        self.assertEqual(line.split()[2], "revoked", listing.stdout)
        # Disable and enable pne-bad: each asks first, and the store follows.
        for verb, status in (("disable", "disabled"), ("enable", "active")):
            page.click(f'button[data-action="{verb}"][data-entity="pne-bad"]')
            self.wait(page, "document.getElementById('confirm').open", "the confirmation dialog")
            page.click("#confirm-ok")
            self.wait(page, "document.querySelector('tr[data-entity=\"pne-bad\"]')?.dataset"
                      f".status === '{status}'", f"pne-bad {status} on the page")
            self.assertIn(f"\nstatus:   {status}", self.ctl("show", "pne-bad").stdout)
        self.assert_no_banner(page)
        self.shot(page, "05-entities")

        # The revocation reaches the live view as a lifecycle event.
        self.show_view(page, "live")
        self.wait(page, """[...document.querySelectorAll('#live-list .ev-lifecycle')]
                  .some(l => l.textContent.includes('pne-3'))""", "the lifecycle event of pne-3")
        self.shot(page, "03-live")

        # 5. The audit log and the charts.
        self.show_view(page, "audit")
        rows = self.wait(page, "document.querySelectorAll('#audit-table tbody tr').length",
                         "the audit records")
        self.assertGreater(rows, 0)
        audit = page.eval("""[...document.querySelectorAll('#audit-table tbody tr')].map(r =>
            ({cells: [...r.cells].map(c => c.textContent),
              bad: r.classList.contains('row-bad')}))""")
        # The revocation, under the token's name; pne-bad's failure, highlighted, with its reason.
        self.assertIn(["console-admin", "revoked", "pne-3", "ok"], [a["cells"][1:5] for a in audit])
        bad = [a for a in audit if a["cells"][2:4] == ["establishment", "pne-bad"]]
        self.assertTrue(bad and all(a["bad"] for a in bad), audit)
        self.assertTrue(all(a["cells"][4].startswith("failed: ") for a in bad), bad)
        self.assert_no_banner(page)
        self.shot(page, "06-audit")
        self.show_view(page, "charts")
        self.wait(page, "!!document.querySelector('#chart-rate svg')", "the per-minute chart")
        label = page.eval("document.querySelector('#chart-rate svg').getAttribute('aria-label')")
        # Two PNs before the page was opened (from the audit log), one registered and one
        # failed while it was open (from the event stream): each counted once.
        self.assertIn("4 in all, 1 failed", label)
        reasons = page.eval("(document.querySelector('#chart-reasons svg') || "
                            "{getAttribute: () => ''}).getAttribute('aria-label')")
        self.assertIn(f"{failed['reason']} 1", reasons)
        self.assert_no_banner(page)
        self.shot(page, "07-charts")

        # 6. Revoke the PN GW through the UI: its PNs are orphaned; delete one through the UI.
        self.show_view(page, "entities")
        self.wait(page, "!!document.querySelector('button[data-action=\"revoke\"]"
                  "[data-entity=\"gw-1\"]')", "the Revoke button of gw-1")
        page.click('button[data-action="revoke"][data-entity="gw-1"]')
        self.wait(page, "document.getElementById('confirm').open", "the confirmation dialog")
        page.click("#confirm-ok")
        self.wait(page, "document.querySelector('tr[data-entity=\"gw-1\"]')?.dataset.status "
                  "=== 'revoked'", "gw-1 revoked on the page")
        self.show_view(page, "pns")
        before = [pn["pn_id"] for pn in self.lab.store_pns()]
        self.assertTrue(before)
        self.wait(page, f"document.querySelectorAll('.pn-card.pn-orphaned').length === "
                  f"{len(before)}", "every PN of gw-1 marked orphaned")
        victim = before[0]
        sel = f'.pn-card[data-pn="{victim}"] button.admin-action'
        page.click(sel)
        self.wait(page, "document.getElementById('confirm').open", "the confirmation dialog")
        self.assertIn(victim, page.eval("document.getElementById('confirm-text').textContent"))
        page.click("#confirm-ok")
        self.wait(page, f"!document.querySelector('.pn-card[data-pn=\"{victim}\"]') && "
                  f"document.querySelectorAll('.pn-card').length === {len(before) - 1}",
                  f"PN {victim} gone from the page")
        after = [pn["pn_id"] for pn in self.lab.store_pns()]
        self.assertEqual(sorted(after), sorted(set(before) - {victim}), "deleted in the store")
        self.assert_no_banner(page)
        self.shot(page, "08-orphaned")
        self.assert_no_problems(page)

        # 7. A read-only token: the same data, no enabled admin button.
        ro = self.open_console(self.read_token)
        self.assertIn("read", ro.eval("document.getElementById('whoami').textContent"))
        self.wait(ro, "document.querySelectorAll('.pn-card').length > 0", "the PN cards")
        self.show_view(ro, "entities")
        self.wait(ro, "document.querySelectorAll('#entities-table tbody tr').length >= 5",
                  "the entities")
        enabled = ro.eval("[...document.querySelectorAll('button')].filter(b => "
                          "!b.disabled && b.offsetParent !== null && "
                          "/^(Disable|Enable|Revoke|Delete)$/.test(b.textContent.trim()))"
                          ".map(b => b.textContent)")
        self.assertEqual(enabled, [], "a read token sees no enabled admin button")
        self.assertFalse(ro.eval("document.getElementById('entities-readonly').hidden"))
        self.assert_no_banner(ro)
        self.shot(ro, "09-read-only")
        self.assert_no_problems(ro)

        # 8. An API error reaches the user in words: more requests at once than the token's
        # rate limit allows (docs/api.md) get RATE_LIMITED, shown in the banner.
        ro.eval("(() => { const b = document.getElementById('entities-refresh');"
                f" for (let i = 0; i < {RATE_BURST_CLICKS}; i++) b.click(); }})()")
        banner = self.wait(ro, "!document.getElementById('banner').hidden && "
                           "document.getElementById('banner-text').textContent", "the banner")
        self.assertIn("Too many requests with this token", banner)
        self.assertIn("RATE_LIMITED, HTTP 429", banner)

        # 9. Log out forgets the token; a kept token the server does not accept (here: made up)
        # brings the sign-in form back with the reason.
        ro.click("#logout")
        self.wait(ro, "!document.getElementById('view-login').hidden && "
                  "sessionStorage.length === 0", "signed out")
        self.assertTrue(ro.eval("document.getElementById('nav').hidden"))
        ro.eval(f"sessionStorage.setItem('cpns.console.token', '{'1' * 64}')")
        ro.goto(self.base + "/")
        err = self.wait(ro, "!document.getElementById('login-error').hidden && "
                        "document.getElementById('login-error').textContent", "the login error")
        self.assertIn("UNAUTHORIZED", err)
        self.assertEqual(ro.eval("sessionStorage.length"), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
