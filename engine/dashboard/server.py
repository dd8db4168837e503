"""The dashboard's HTTP server: the standard library's ThreadingHTTPServer, GET only.

Why polling and not server-sent events: the page asks for the snapshot (and the selected
task's new log bytes) once a second. Every answer is a complete, self-contained document,
so a restarted server, a laptop waking up or a file rewritten mid-read costs one stale
second, never a stream to re-synchronise; no request holds a thread; and each answer is a
plain GET that the tests read exactly as the page does. A poll re-parses only the files
whose (inode, size, mtime) changed and reads only the journal's new bytes.

What it guards against: it binds 127.0.0.1 unless told otherwise twice (--host and
--allow-remote); it answers only requests whose Host header names that address (a web page
elsewhere cannot reach it through DNS rebinding); URLs never become paths (static files
are a fixed table, task ids are validated and must be tasks of the run); the page is served
with a Content-Security-Policy that allows no inline script and nothing from other origins.
"""

import ipaddress
import json
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from engine.dashboard.files import valid_task_id
from engine.dashboard.model import RunModel
from engine.errors import OrchestratorError

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
PAGES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/style.css": ("style.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_TASK_ROUTE = re.compile(r"/api/task/([^/]{1,200})(/log|/diff)?")


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DashboardServer(ThreadingHTTPServer):
    """One thread per connection (a slow client holds only its own thread, and only for
    `Handler.timeout`).

    `request_queue_size` is listen()'s backlog: connections the kernel completes before the
    server accepts them. socketserver's default of 5 made a burst of 200 requests wait for
    dropped SYNs to be sent again (1, 3, 7 s... later; 21 s, 5 timed out). 1024 fits a burst of
    a few hundred; the kernel caps it at net.core.somaxconn (/proc/sys/net/core/somaxconn:
    4096 by default since Linux 5.4, 128 before), so the effective backlog is the smaller."""
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 1024

    def __init__(self, model, host="127.0.0.1", port=0, allow_remote=False):
        if not allow_remote and not is_loopback(host):
            raise OrchestratorError(f"the dashboard listens on 127.0.0.1 only; binding {host} would show "
                                    "your run, logs and diffs to the network (pass --allow-remote to do it anyway)")
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.model = model
        self.allow_remote = allow_remote
        self.pages = {}
        for route, (name, kind) in PAGES.items():
            with open(os.path.join(STATIC, name), "rb") as fh:
                self.pages[route] = (fh.read(), kind)
        try:
            super().__init__((host, port), Handler)
        except OSError as exc:
            raise OrchestratorError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.host = host

    @property
    def port(self):
        return self.server_address[1]

    @property
    def url(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def allowed_host(self, header):
        """The Host header names this server (by its address or `localhost`), or anything goes
        when remote access was asked for."""
        if self.allow_remote:
            return True
        if not header:
            return False
        host = f"[{self.host}]" if ":" in self.host else self.host
        return header in {f"{name}:{self.port}" for name in (host, "localhost")}


class Handler(BaseHTTPRequestHandler):
    server_version = "orchestrator-dashboard"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a connection may sit idle or half-sent (or not read its answer) before it is closed

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        """Quiet: one line per poll would bury the terminal."""

    def _send(self, code, body, kind="application/json; charset=utf-8", head=False):
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, code, data, head=False):
        body = json.dumps(data, ensure_ascii=False, allow_nan=False, default=str).encode("utf-8")
        self._send(code, body, head=head)

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        server = self.server
        if not server.allowed_host(self.headers.get("Host")):
            return self._json(403, {"error": "unexpected Host header"}, head)
        url = urlsplit(self.path)
        path = url.path
        if path in server.pages:
            body, kind = server.pages[path]
            return self._send(200, body, kind, head)
        model = server.model
        if path == "/api/snapshot":
            return self._json(200, model.snapshot(view=_view(parse_qs(url.query))), head)
        match = _TASK_ROUTE.fullmatch(path)
        if match:
            task = model.known_task(match.group(1))
            if task is None:
                return self._json(404, {"error": "no such task"}, head)
            if match.group(2) == "/log":
                query = parse_qs(url.query)
                return self._json(200, model.log_chunk(task, _int(query.get("offset")), _int(query.get("inode"))),
                                  head)
            if match.group(2) == "/diff":
                return self._json(200, model.diff(task), head)
            return self._json(200, model.task_detail(task), head)
        return self._json(404, {"error": "not found"}, head)

    def _refuse(self):
        self._json(405, {"error": "the dashboard is read-only"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse


def _view(query):
    """Which page of a big run's tasks the page asks for (engine.dashboard.model.paging):
    `?offset=N&limit=N&status=failed,blocked&group=12-40|7|all&task=ID`; what does not parse is
    left out (the server's default)."""
    group = (query.get("group") or [""])[0]
    match = re.fullmatch(r"(\d{1,9})(?:-(\d{1,9}))?", group)
    status = (query.get("status") or [""])[0]
    task = (query.get("task") or [None])[0]
    return {"offset": _int(query.get("offset")), "limit": _int(query.get("limit")),
            "status": status.split(",") if re.fullmatch(r"[a-z_]{1,40}(,[a-z_]{1,40}){0,20}", status) else None,
            "group": "all" if group == "all" else (int(match.group(1)), int(match.group(2) or match.group(1)))
            if match else None,
            "task": task if valid_task_id(task) else None}


def _int(values):
    if not values or not re.fullmatch(r"\d{1,18}", values[0]):
        return None
    return int(values[0])


def _warm(model):
    try:
        model.snapshot()
    except Exception:  # noqa: BLE001 - only a head start: the first request reports any problem
        pass


def serve(root, host="127.0.0.1", port=0, allow_remote=False, open_browser=False, echo=print):
    """Serve the dashboard for the project at ROOT until Ctrl-C."""
    server = DashboardServer(RunModel(root), host, port, allow_remote)
    # the run's files read once now, not on the page's first request (a big progress file
    # takes a while to parse); a request meanwhile waits for this read, it does not repeat it
    threading.Thread(target=_warm, args=(server.model,), name="dashboard-warm", daemon=True).start()
    echo(f"Dashboard: {server.url}")
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
