"""The service's HTTP client (httpclient.py) against real servers on loopback: answers, and no answers in words."""

import asyncio
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.hubutil import free_port
from wod_jupyterhub.service.httpclient import Client, HTTPError


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list = []

    def log_message(self, *args):
        pass

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append((self.command, self.path, dict(self.headers), body))
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status = int(self.path.rsplit("/", 1)[1]) if self.path.startswith("/status/") else 200
        out = json.dumps({"method": self.command, "path": self.path}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_PUT = do_POST = do_DELETE = _answer


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def silent():
    """A server that accepts connections and never answers, and one that closes them at once."""
    quiet, rude = socket.socket(), socket.socket()
    for s in (quiet, rude):
        s.bind(("127.0.0.1", 0))
        s.listen(16)
    stop = threading.Event()

    def hang_up():
        rude.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = rude.accept()
            except (TimeoutError, OSError):
                continue
            conn.recv(65536)
            conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    yield quiet.getsockname()[1], rude.getsockname()[1]
    stop.set()
    thread.join()
    quiet.close()
    rude.close()


@pytest.mark.parametrize(
    "method, path, kwargs, status, seen_path, seen_body",
    [
        ("GET", "/status/200", {}, 200, "/status/200", b""),
        ("GET", "/status/404", {}, 404, "/status/404", b""),  # any status is an answer, not an error
        ("DELETE", "/status/503", {}, 503, "/status/503", b""),
        ("PUT", "/api/customer/a%2Fb%20c", {"json": {"active": "true"}}, 200, "/api/customer/a%2Fb%20c", b'{"active": "true"}'),
        ("GET", "/users", {"params": {"state": "active", "offset": 0, "limit": 200}}, 200, "/users?state=active&offset=0&limit=200", b""),
        ("GET", "/redirect", {}, 302, "/redirect", b""),  # not followed
    ],
)
async def test_a_request_reaches_the_server_as_given_and_any_status_is_answered(server, method, path, kwargs, status, seen_path, seen_body):
    client = Client(base_url=server + "/", headers={"Authorization": "token abc"}, timeout=10)
    try:
        _Handler.seen.clear()
        r = await client.request(method, path, **kwargs)
    finally:
        await client.aclose()
    assert r.status_code == status
    [(got_method, got_path, headers, body)] = _Handler.seen
    assert (got_method, got_path, body) == (method, seen_path, seen_body)
    assert headers["Authorization"] == "token abc"
    if status != 302:
        assert r.json() == {"method": method, "path": seen_path} and json.loads(r.text)["path"] == seen_path


async def test_no_answer_is_an_error_that_says_why(silent):
    quiet, rude = silent
    closed = free_port()
    cases = [
        (f"http://127.0.0.1:{closed}", f"ConnectError: cannot connect to 127.0.0.1:{closed}: Connect"),
        (f"http://127.0.0.1:{quiet}", "Timeout: no answer within 0.3 s"),
        (f"http://127.0.0.1:{rude}", "ServerDisconnected: the server closed the connection without an answer"),
    ]
    for url, message in cases:
        client = Client(base_url=url, timeout=0.3)
        try:
            with pytest.raises(HTTPError) as e:
                await client.request("GET", "/x")
        finally:
            await client.aclose()
        assert str(e.value).startswith(message), (url, str(e.value))


async def test_the_environments_proxy_is_honoured(server, monkeypatch):
    """An organisation that reaches its portal through a proxy sets HTTP_PROXY for the hub; NO_PROXY keeps the hub direct."""
    monkeypatch.setenv("HTTP_PROXY", server)
    monkeypatch.setenv("NO_PROXY", "hub.example.invalid")
    client = Client(timeout=10)
    try:
        _Handler.seen.clear()
        r = await client.request("PUT", "http://portal.example.invalid/api/student/3", json={"password": "x"})
        assert r.status_code == 200
        assert [(m, p) for m, p, *_ in _Handler.seen] == [("PUT", "http://portal.example.invalid/api/student/3")]
        with pytest.raises(HTTPError, match="ConnectError: cannot connect to hub.example.invalid"):
            await client.request("GET", "http://hub.example.invalid/hub/api/")
    finally:
        await client.aclose()


def test_a_client_follows_its_caller_to_a_new_loop(server):
    """The service's clients outlive a loop in tests and at shutdown: a new loop gets new connections."""
    client = Client(base_url=server, timeout=10)

    async def get():
        return (await client.request("GET", "/status/202")).status_code

    assert asyncio.run(get()) == 202
    assert asyncio.run(get()) == 202
    asyncio.run(client.aclose())
