"""Drive a headless Chromium over the DevTools protocol on a pipe: the browser tests and
`make screenshot` use it. Standard library only: `--remote-debugging-pipe` speaks JSON
messages ending in NUL on file descriptors 3 (to the browser) and 4 (from it), so no
websocket client and no browser-automation package is needed.

Launch flags are the ones known to work on this kind of machine (no GPU, no sandbox as
root, no background network traffic that the closed network would refuse)."""

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--mute-audio")


class BrowserError(Exception):
    pass


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page; `with Browser() as b: b.goto(url); b.eval(js)`."""

    def __init__(self, width=1400, height=1000, executable=None):
        self.executable = executable or find_chromium()
        if not self.executable:
            raise BrowserError("chromium not found (apt-get install -y chromium)")
        self.width, self.height = width, height
        self.profile = tempfile.mkdtemp(prefix="dashboard-chromium-")
        self.next_id = 0
        self.buffer = b""
        self.session = None
        self.proc = None

    def __enter__(self):
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()

        def wire():  # in the child: the pipe ends become fds 3 and 4 (dup2 makes them inheritable);
            # via fds >= 10 first, since a pipe end may already be 3 or 4
            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [self.executable, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=wire, start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        try:
            target = None
            deadline = time.time() + 30
            while target is None and time.time() < deadline:
                pages = [t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page"]
                target = pages[0]["targetId"] if pages else None
                if target is None:
                    time.sleep(0.1)
            if target is None:
                target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.call("Page.enable")
            self.call("Runtime.enable")
            self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            try:
                self.call("Browser.close", timeout=5, browser=True)
            except (BrowserError, OSError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for fd in (self.to_browser, self.from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)
        return False

    # ------------------------------------------------------------------ protocol
    def call(self, method, timeout=30, browser=False, **params):
        """Send one command (to the page's session unless `browser`) and return its result."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session and not browser and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def _read(self, deadline):
        while b"\0" not in self.buffer:
            left = deadline - time.time()
            if left <= 0:
                raise BrowserError("the browser did not answer in time")
            ready, _, _ = select.select([self.from_browser], [], [], left)
            if ready:
                chunk = os.read(self.from_browser, 1 << 16)
                if not chunk:
                    raise BrowserError("the browser exited")
                self.buffer += chunk
        raw, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(raw)

    # ------------------------------------------------------------------ conveniences
    def goto(self, url):
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def eval(self, expression):
        """The value of a JavaScript expression (promises awaited), as JSON data."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('text')} "
                               f"{result['exceptionDetails'].get('exception', {}).get('description', '')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression, timeout=20, interval=0.1):
        """Poll the expression until it is truthy; return its value or raise with the last one."""
        deadline = time.time() + timeout
        value = None
        while time.time() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(interval)
        raise BrowserError(f"timed out waiting for {expression} (last value {value!r})")

    def screenshot(self, path, full_page=False):
        params = {"format": "png"}
        if full_page:
            height = self.eval("Math.ceil(document.documentElement.scrollHeight)")
            self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=max(self.height, height),
                      deviceScaleFactor=1, mobile=False)
        data = self.call("Page.captureScreenshot", **params)["data"]
        from engine import store

        store.atomic_write(path, base64.b64decode(data), keep_last_good=False)
        return path
