"""A real, small HTTP server on loopback standing in for the portal's api-db.

It speaks the contract the original backend used ("Callbacks to
the portal") and checks it strictly, so a test fails when a callback drifts:

* ``POST /api/login`` ``{"username", "password"}`` → ``{"accessToken"}``;
  tokens expire after ``token_ttl`` seconds (the real portal: 180); every
  other ``/api`` call needs ``x-access-token`` and answers 401 without a
  valid one.
* ``GET /api/workshops`` (list with ``id`` and ``notebook``), ``GET /api/workshops/{id}``.
* ``PUT /api/student/{id}`` ``{"password"}`` or ``{"assigned": "true"|"false"}``;
  ``PUT /api/customer/{id}`` ``{"active"}``, ``{"completionPercentage": "<int>"}``
  or ``{"cleaned": "true"}``; ``PUT /api/workshop/{id}`` ``{"capacity": "<int>"}``.
  Anything else: 400 with the reason.

Every call is recorded in arrival order (method, path, JSON body, the
``x-access-token`` header, the status answered). For faults: :meth:`down`
really stops listening (and drops open keep-alive connections) until
:meth:`up` listens again on the same port; :meth:`fail` answers 5xx for a
while; :meth:`reject` answers a 4xx on one path.

In a test::

    with PortalServer(workshops=[{"id": 3, "notebook": "WKSHP-Sample"}]) as portal:
        ... portal.url ... portal.calls ...

From another process (a bench): ``python -m tests.portal_server --port 0`` (from the repository root)
prints the URL; ``GET /_calls`` answers the record as JSON and
``POST /_control`` takes ``{"fail": 503|null, "down_for": seconds,
"expire_tokens": true, "reset": true}``.
"""

import argparse
import json
import re
import secrets
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_USERNAME = "wodbackend"
DEFAULT_PASSWORD = "portal-pass-Xq7"

_BOOL = {"true", "false"}
_INT = re.compile(r"^-?[0-9]+$")


@dataclass
class Call:
    method: str
    path: str
    body: Any
    token: str | None
    status: int = 0

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, portal):
        self.portal = portal
        self.connections = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self):
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive like a real portal, so clients reuse connections and must
    # cope when the server goes away under them.
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle on, the delayed ACK
    # would add ~40 ms to every answer and make the portal the bottleneck.
    disable_nagle_algorithm = True

    def log_message(self, *args):  # quiet: the record is in PortalServer.calls
        pass

    def _answer(self, status, payload=None):
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self):
        portal: PortalServer = self.server.portal
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        if portal._stopping:
            # Down already: never answer, like a host that went away.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        status, payload = portal._dispatch(self.command, self.path, body, self.headers.get("x-access-token"))
        self._answer(status, payload)

    do_GET = do_POST = do_PUT = do_DELETE = _handle


class PortalServer:
    """The fake api-db. Thread-safe; ``calls`` is a snapshot list of :class:`Call`."""

    def __init__(
        self,
        workshops=None,
        *,
        username=DEFAULT_USERNAME,
        password=DEFAULT_PASSWORD,
        token_ttl=180.0,
        host="127.0.0.1",
        port=0,
    ):
        self.workshops = [dict(w) for w in (workshops or [])]
        self.username = username
        self.password = password
        self.token_ttl = token_ttl
        self.host = host
        self.port = port
        self.students: dict[str, dict] = {}
        self.customers: dict[str, dict] = {}
        self._calls: list[Call] = []
        self._tokens: dict[str, float] = {}
        self._fail_status = None
        self._fail_left = None
        self._rejects: dict[str, tuple[int, bool]] = {}
        self._lock = threading.RLock()
        self._httpd = None
        self._thread = None
        self._stopping = False

    # ---------------------------------------------------------------- lifecycle

    def start(self):
        if self._httpd is not None:
            return self
        self._stopping = False
        self._httpd = _Server((self.host, self.port), _Handler, self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-portal", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        httpd = self._httpd
        if httpd is None:
            return
        self._stopping = True
        httpd.shutdown()
        httpd.server_close()
        httpd.drop_connections()
        self._thread.join(5)
        self._httpd = None

    def down(self):
        """Stop listening: new connections are refused, open ones are dropped."""
        self.stop()

    def up(self):
        """Listen again on the same port."""
        return self.start()

    @property
    def is_up(self) -> bool:
        return self._httpd is not None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---------------------------------------------------------------- faults

    def fail(self, status=503, times=None):
        """Answer ``status`` to every call (login too), or to the next ``times`` calls; ``fail(None)`` heals."""
        with self._lock:
            self._fail_status = status
            self._fail_left = times

    def recover(self):
        self.fail(None)

    def reject(self, path, status=400, echo_body=False):
        """Answer ``status`` to calls on ``path`` (``echo_body``: quote the body, as careless servers do)."""
        with self._lock:
            self._rejects[path] = (status, echo_body)

    def expire_tokens(self):
        with self._lock:
            self._tokens.clear()

    def reset(self):
        with self._lock:
            self._calls.clear()
            self.students.clear()
            self.customers.clear()
            self._rejects.clear()
            self._fail_status = self._fail_left = None

    # ---------------------------------------------------------------- record

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def accepted(self, method="PUT") -> list[Call]:
        """The calls of ``method`` the portal took (2xx), in arrival order."""
        return [c for c in self.calls if c.method == method and c.ok]

    def logins(self) -> list[Call]:
        return [c for c in self.calls if c.path == "/api/login"]

    def wait_for(self, predicate, timeout=60.0, interval=0.02):
        """Wait until ``predicate(self)`` is true; False when ``timeout`` passes first (a safety net, not a measure)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate(self):
                return True
            time.sleep(interval)
        return bool(predicate(self))

    # ---------------------------------------------------------------- protocol

    def _dispatch(self, method, path, body, token):
        with self._lock:
            if path.startswith("/_"):  # the control channel is not part of the record
                return self._route(method, path, body, token)
            call = Call(method, path, body, token)
            self._calls.append(call)
            call.status, payload = self._route(method, path, body, token)
            return call.status, payload

    def _route(self, method, path, body, token):
        if path == "/_calls" and method == "GET":
            return 200, [asdict(c) for c in self._calls]
        if path == "/_control" and method == "POST":
            return self._control(body or {})
        if self._fail_status is not None:
            if self._fail_left is None or self._fail_left > 0:
                if self._fail_left is not None:
                    self._fail_left -= 1
                return self._fail_status, {"message": "portal trouble (injected)"}
        if path == "/api/login" and method == "POST":
            return self._login(body)
        if not path.startswith("/api/"):
            return 404, {"message": f"no route {method} {path}"}
        expiry = self._tokens.get(token or "")
        if expiry is None or expiry < time.monotonic():
            return 401, {"sucess": False, "error": "Invalid Token - jwt expired"}
        if path in self._rejects:
            status, echo = self._rejects[path]
            message = f"rejected (injected) {json.dumps(body)}" if echo else "rejected (injected)"
            return status, {"message": message}
        m = re.fullmatch(r"/api/(student|customer|workshop|workshops)(?:/([^/]+))?", path)
        if not m:
            return 404, {"message": f"no route {method} {path}"}
        kind, ident = m.groups()
        if kind == "workshops" and method == "GET":
            if ident is None:
                return 200, self.workshops
            for w in self.workshops:
                if str(w.get("id")) == ident:
                    return 200, w
            return 404, {"message": f"no workshop {ident}"}
        if method != "PUT" or ident is None or kind == "workshops":
            return 404, {"message": f"no route {method} {path}"}
        problem = self._check(kind, body)
        if problem:
            return 400, {"message": problem}
        if kind == "student":
            self.students.setdefault(ident, {}).update(body)
        elif kind == "customer":
            self.customers.setdefault(ident, {}).update(body)
        else:
            for w in self.workshops:
                if str(w.get("id")) == ident:
                    w.update(body)
                    break
            else:
                return 404, {"message": f"no workshop {ident}"}
        return 200, {"message": "updated"}

    @staticmethod
    def _check(kind, body):
        if not isinstance(body, dict) or not body:
            return "the body must be a non-empty JSON object"
        allowed = {
            "student": {"password", "assigned"},
            "customer": {"active", "completionPercentage", "cleaned"},
            "workshop": {"capacity"},
        }[kind]
        extra = set(body) - allowed
        if extra:
            return f"unknown fields for {kind}: {sorted(extra)}"
        for k, v in body.items():
            if not isinstance(v, str):
                return f"{k} must be a string, not {type(v).__name__}"
            if k in ("assigned", "active") and v not in _BOOL:
                return f'{k} must be "true" or "false"'
            if k == "cleaned" and v != "true":
                return 'cleaned must be "true"'
            if k in ("completionPercentage", "capacity") and not _INT.match(v):
                return f"{k} must be an integer in a string"
            if k == "password" and not v:
                return "password must not be empty"
        return None

    def _login(self, body):
        if not isinstance(body, dict) or body.get("username") != self.username or body.get("password") != self.password:
            return 401, {"message": "Invalid username or password"}
        token = secrets.token_urlsafe(16)
        self._tokens[token] = time.monotonic() + self.token_ttl
        return 200, {"id": 1, "username": self.username, "roles": ["ROLE_MODERATOR"], "accessToken": token}

    def _control(self, body):
        if "fail" in body:
            self._fail_status, self._fail_left = body["fail"], body.get("times")
        if body.get("expire_tokens"):
            self._tokens.clear()
        if body.get("reset"):
            self._calls.clear()
            self.students.clear()
            self.customers.clear()
        if body.get("down_for"):
            seconds = float(body["down_for"])

            def bounce():
                self.down()
                time.sleep(seconds)
                self.up()

            # After this answer is written, so the caller hears back first.
            threading.Timer(0.05, bounce).start()
        return 200, {"ok": True}


def main(argv=None):
    p = argparse.ArgumentParser(description="Run the fake portal api-db until interrupted.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--username", default=DEFAULT_USERNAME)
    p.add_argument("--password", default=DEFAULT_PASSWORD)
    p.add_argument("--token-ttl", type=float, default=180.0)
    p.add_argument("--workshops", default="[]", help="JSON list of workshops, each with id and notebook")
    args = p.parse_args(argv)
    portal = PortalServer(
        json.loads(args.workshops),
        username=args.username,
        password=args.password,
        token_ttl=args.token_ttl,
        host=args.host,
        port=args.port,
    ).start()
    print(portal.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        portal.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
