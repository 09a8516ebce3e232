"""For the browser tests: a page an attacker's seat would serve (one HTML page on loopback, with the cookies
each request brought), and the hub's login form filled in and sent."""

import http.server
import threading

from tests.hubutil import free_port


class PageServer:
    """``with PageServer(page) as s``: ``page`` (bytes) at every path of ``s.url``; ``s.cookies_seen`` lists each request's Cookie header."""

    def __init__(self, page: bytes):
        self.page = page
        self.cookies_seen: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                outer.cookies_seen.append(self.headers.get("Cookie") or "")
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(outer.page)))
                self.end_headers()
                self.wfile.write(outer.page)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


def log_in(page, login_url: str, name: str, password: str) -> None:
    """Opens the hub's login form at ``login_url`` in the Playwright ``page``, fills in ``name`` and ``password`` and sends it.

    Where the browser lands is the caller's to wait for: a student's lab, the dashboard, ``next``.
    """
    page.goto(login_url)
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("input[type=submit], button[type=submit]")
