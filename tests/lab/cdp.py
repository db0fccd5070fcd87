"""cdp: drives Debian's headless Chromium over the DevTools protocol, standard library only.

Chromium is started with --remote-debugging-pipe: it reads protocol commands from its
descriptor 3 and writes answers and events to its descriptor 4, each message one JSON object
followed by a NUL octet. No WebSocket, no port, no npm package: nothing to download, and the
browser is reachable only by this process.

    with Browser() as b:
        page = b.new_page(1280, 800)
        page.goto("http://127.0.0.1:8080/")
        page.wait_for("document.title === 'x'")
        page.click("#button")
        page.screenshot(Path("shot.png"))

Every wait is bounded (the timeouts below, or the caller's); a browser that does not answer in
time raises CdpError with what was asked.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM = os.environ.get("CPNS_CHROMIUM", "/usr/bin/chromium")
COMMAND_TIMEOUT_S = 60.0  # one protocol command (a screenshot of a long page takes a while)
WAIT_POLL_S = 0.05  # how often wait_for() asks the page again
STOP_GRACE_S = 5.0  # Browser.close, then SIGKILL
# The flags that work on this machine as root (a fresh profile each time, no network use).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
         "--remote-debugging-pipe"]


class CdpError(RuntimeError):
    pass


class Browser:
    """One Chromium process; new_page() opens tabs. Use as a context manager."""

    def __init__(self, extra_flags: list[str] | None = None) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="cpns-chromium-"))
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        self.log = self.profile / "chromium.log"

        def wire() -> None:  # in the child, before exec: the pipe ends on descriptors 3 and 4
            # First above 4, so that neither dup2 overwrites the other's source (os.pipe() may
            # have returned 3 or 4 itself); dup2 leaves the copies inheritable.
            src_r = os.dup2(to_child_r, 1020, inheritable=False)
            src_w = os.dup2(from_child_w, 1021, inheritable=False)
            os.dup2(src_r, 3)
            os.dup2(src_w, 4)

        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [CHROMIUM, *FLAGS, *(extra_flags or []), f"--user-data-dir={self.profile}",
                 "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=wire, close_fds=False, start_new_session=True)
        os.close(to_child_r)
        os.close(from_child_w)
        self._next_id = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._answers: dict[int, dict] = {}
        self.events: list[dict] = []  # every event, in order (method, params, sessionId)
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.version = self.send("Browser.getVersion")

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_child, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._cond:
                    if "id" in msg:
                        self._answers[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                    self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str = "",
             timeout: float = COMMAND_TIMEOUT_S) -> dict:
        with self._lock:
            self._next_id += 1
            mid = self._next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        with self._lock:
            os.write(self._to_child, data)
        deadline = time.monotonic() + timeout
        with self._cond:
            while mid not in self._answers:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    why = "exited" if self._closed else f"no answer within {timeout}s"
                    raise CdpError(f"chromium {why} to {method}; its log:\n{self.log_text()}")
                self._cond.wait(left)
            answer = self._answers.pop(mid)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def new_page(self, width: int = 1280, height: int = 800) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log"):
            page.send(f"{domain}.enable")
        page.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        return page

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("Browser.close", timeout=STOP_GRACE_S)
            except CdpError:
                pass
            try:
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    """One tab, attached in flat mode (its commands carry its session ID)."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def send(self, method: str, params: dict | None = None,
             timeout: float = COMMAND_TIMEOUT_S) -> dict:
        return self.browser.send(method, params, self.session, timeout)

    def goto(self, url: str) -> None:
        r = self.send("Page.navigate", {"url": url})
        if r.get("errorText"):
            raise CdpError(f"navigation to {url} failed: {r['errorText']}")
        self.wait_for("document.readyState === 'complete'")

    def eval(self, expression: str):
        """The value of a JavaScript expression (promises are awaited); raises on exceptions."""
        r = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                           "returnByValue": True})
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            text = d.get("exception", {}).get("description") or d.get("text")
            raise CdpError(f"exception in page evaluating {expression!r}: {text}")
        return r.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, what: str = ""):
        """Polls until the expression is truthy; returns its value, raises after timeout."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(WAIT_POLL_S)
        raise CdpError(f"timed out after {timeout}s waiting for {what or expression} "
                       f"(last value {value!r})")

    def center(self, selector: str) -> tuple[float, float]:
        js = (f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
              " if (!e) return null; e.scrollIntoView({block: 'center'});"
              " const r = e.getBoundingClientRect();"
              " return [r.left + r.width / 2, r.top + r.height / 2, r.width, r.height]; })()")
        r = self.eval(js)
        if not r or r[2] <= 0 or r[3] <= 0:
            raise CdpError(f"no visible element for {selector}")
        return r[0], r[1]

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre: the pointer moves there, then the left
        button is pressed and released, in this tab brought to the front (a tab in the
        background of a headless browser may let a click go unhandled)."""
        self.send("Page.bringToFront")
        x, y = self.center(selector)
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent",
                      {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def type_into(self, selector: str, text: str) -> None:
        """Focuses the field (a click) and types the text as keyboard input."""
        self.click(selector)
        self.send("Input.insertText", {"text": text})

    KEYS = {"Enter": (13, "\r"), "Escape": (27, ""), "Tab": (9, "")}

    def press(self, key: str) -> None:
        """A key pressed and released in the focused element (one of KEYS)."""
        code, text = self.KEYS[key]
        for kind in ("keyDown", "keyUp"):
            ev = {"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code}
            if kind == "keyDown" and text:
                ev["text"] = text
            self.send("Input.dispatchKeyEvent", ev)

    def press_enter(self) -> None:
        self.press("Enter")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (not only the viewport)."""
        m = self.send("Page.getLayoutMetrics")
        size = m.get("cssContentSize") or m["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        r = self.send("Page.captureScreenshot",
                      {"format": "png", "captureBeyondViewport": True, "clip": clip})
        path.write_bytes(base64.b64decode(r["data"]))
        return path

    def problems(self) -> list[str]:
        """Uncaught exceptions, console errors and browser log errors (e.g. a CSP refusal)."""
        out = []
        for ev in list(self.browser.events):
            if ev.get("sessionId") != self.session:
                continue
            p = ev.get("params", {})
            if ev["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append("exception: " + (d.get("exception", {}).get("description")
                                            or d.get("text", "")))
            elif ev["method"] == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append("console.error: " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif ev["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                e = p["entry"]
                out.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}")
        return out
