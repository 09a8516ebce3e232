"""A real, small HTTP server on loopback standing in for the wod service's seat API (``api/seat``).

The session bar's server extension forwards a participant's JupyterLab to
``$WOD_SERVICE_URL`` + ``api/seat``; the tests point that variable here, so
they control what the seat's answer says (time left, progress,
announcements, steps, the end) and see what the extension sent. It speaks the
seat API's contract: ``GET api/seat`` → :attr:`SeatServer.session`, ``GET
api/seat/steps`` → ``{"steps", "verified", "total"}``, ``POST
api/seat/steps/{k}/check`` → the step's next scripted outcome (404 for an
unknown step). Like the service, it resolves the caller's token with the hub
(``GET <hub api>/user``, the hub's own answer) and answers only the seat's own
user (``student<session["student"]>``); any other caller gets 403 with a sentence.

Every request is recorded (method, path, Authorization header). For faults:
:meth:`fail` answers a status and body on every path for a while, :meth:`down`
really stops listening until :meth:`up`.

In a test::

    with SeatServer() as seat:
        seat.hub_api_url = hub.api_url
        ... seat.url (ends in /) ... seat.session["progress"] = {...} ... seat.calls ...
"""

import json
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

#: the prefix the service serves under, as on the hub's proxy
PREFIX = "/services/wod/"
_CHECK = re.compile(r"^api/seat/steps/(\d+)/check$")


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None


def iso(seconds_from_now: float = 0) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds_from_now)).strftime("%Y-%m-%dT%H:%M:%SZ")


def active_session(student: int, workshop: str, seconds_left: int = 5400) -> dict:
    """An answer of ``api/seat`` for a seat in the middle of its workshop."""
    return {
        "student": student, "workshop": workshop, "state": "active",
        "ends_at": iso(seconds_left), "seconds_left": seconds_left, "warn_at": [3600, 600],
        "announcements": [], "progress": {"ratio": 0.0, "executed": 0, "total": 8, "measured_at": iso()},
        "end": {"message": "Thank you for coming! Your seat has been cleaned up.", "url": "https://example.org/next-steps"},
    }


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # the test reads seat.calls, not stderr
        pass

    def _answer(self, status: int, body) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if not isinstance(body, bytes) else "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve(self, method: str) -> None:
        seat = self.server.seat
        auth = self.headers.get("Authorization")
        path = self.path.split("?", 1)[0]
        with seat.lock:
            seat.calls.append(Request(method, path, auth))
            failure = seat.failure
        if failure is not None:
            self._answer(*failure)
            return
        if not seat.owns(auth):
            self._answer(403, {"error": "forbidden", "message": "Only a seat's own server may read its seat."})
            return
        rel = path[len(PREFIX):] if path.startswith(PREFIX) else None
        with seat.lock:
            if method == "GET" and rel == "api/seat":
                self._answer(200, seat.session)
            elif method == "GET" and rel == "api/seat/steps":
                steps = [dict(s) for s in seat.steps]
                verified = sum(s["status"] == "passed" for s in steps)
                self._answer(200, {"steps": steps, "verified": verified, "total": len(steps)})
            elif method == "POST" and rel and _CHECK.match(rel):
                k = int(_CHECK.match(rel).group(1))
                step = next((s for s in seat.steps if s["index"] == k), None)
                if step is None:
                    self._answer(404, {"error": "not_found", "message": f"This workshop has no step {k}."})
                    return
                outcomes = seat.outcomes.get(k) or []
                if outcomes:
                    step.update(outcomes.pop(0), checked_at=iso())
                self._answer(200, dict(step))
            else:
                self._answer(404, {"error": "not_found", "message": f"No such path: {path}"})

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._serve("POST")


class SeatServer:
    """The stand-in: ``url`` is what ``WOD_SERVICE_URL`` would be (``http://127.0.0.1:PORT/services/wod/``)."""

    def __init__(self, session: dict | None = None):
        #: the hub's REST API (``.../hub/api``) that tokens are resolved with
        self.hub_api_url = ""
        self._names: dict[str, str | None] = {}
        self.session = session or {}
        #: the steps' objects as ``api/seat/steps`` lists them
        self.steps: list[dict] = []
        #: per step index, the outcomes the next checks give (each updates the step), in order
        self.outcomes: dict[int, list[dict]] = {}
        self.calls: list[Request] = []
        self.failure = None
        self.lock = threading.RLock()
        self._httpd = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    def up(self) -> "SeatServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.seat = self
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def owns(self, authorization: str | None) -> bool:
        """Whether the hub says ``authorization`` (``token X``) is a token of the seat's own user."""
        if not authorization or not authorization.startswith("token ") or not self.hub_api_url:
            return False
        token = authorization[len("token "):]
        if token not in self._names:
            r = httpx.get(f"{self.hub_api_url}/user", headers={"Authorization": f"token {token}"}, timeout=10)
            self._names[token] = r.json().get("name") if r.status_code == 200 else None
        return self._names[token] == f"student{self.session.get('student')}"

    def fail(self, status: int | None, body=None) -> None:
        """Answer ``status`` with ``body`` (a dict as JSON, bytes as HTML) to every request; None: answer again."""
        with self.lock:
            self.failure = None if status is None else (status, body if body is not None else {})

    def update(self, **fields) -> None:
        with self.lock:
            self.session = {**self.session, **fields}

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()
