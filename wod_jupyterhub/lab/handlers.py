"""The seat server's ``wod/`` routes: each forwards to the ``wod`` service's ``api/seat`` with the server's own token.

``GET wod/session`` → ``api/seat``, ``GET wod/steps`` → ``api/seat/steps``,
``POST wod/steps/<k>/check`` → ``api/seat/steps/<k>/check``. The service's
answer comes back as it is (JSON); its errors, and a service that cannot be
reached, come back as ``{"error": sentence}`` with a status, never a traceback.

The service's address is ``$WOD_SERVICE_URL`` (set by ``WodSpawner``; it ends
in ``/``), the token ``$JUPYTERHUB_API_TOKEN`` (the hub's for this server start),
both read at each request from the server's environment, which the
participant's kernels cannot change.
"""

import json
import os

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

#: seconds a forwarded request may take; a step's check runs in the service within its own, shorter, timeout
REQUEST_TIMEOUT = 60
#: the largest answer passed on (an answer of the seat API is a few kilobytes)
MAX_ANSWER = 1024 * 1024


class SeatForwardHandler(APIHandler):
    """Forwards one request of the session bar to the service (the participant is the server's own user)."""

    def initialize(self, target: str):
        self.target = target

    def fail(self, status: int, sentence: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": sentence}))

    async def forward(self, method: str, path: str) -> None:
        base = os.environ.get("WOD_SERVICE_URL", "")
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if not base or not token:
            self.fail(503, "This server was not started for a workshop seat, so it has no session to show (WOD_SERVICE_URL or its token is missing).")
            return
        request = HTTPRequest(
            base.rstrip("/") + "/" + path,
            method=method,
            body=b"" if method == "POST" else None,
            headers={"Authorization": f"token {token}", "Accept": "application/json"},
            request_timeout=REQUEST_TIMEOUT,
            follow_redirects=False,
        )
        client = AsyncHTTPClient(force_instance=True, max_body_size=MAX_ANSWER)
        try:
            # raise_error=False: the service's own error answers come back as responses
            response = await client.fetch(request, raise_error=False)
        except (HTTPClientError, OSError) as e:  # refused, timed out, cut off, or an answer over MAX_ANSWER
            reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
            self.fail(502, f"The workshop service cannot be reached at the moment ({reason}); the bar tries again shortly.")
            return
        finally:
            client.close()
        try:
            body = json.loads(response.body or b"null")
        except ValueError:
            body = None
        if response.code >= 400 or not isinstance(body, dict):
            self.fail(response.code if response.code >= 400 else 502, _sentence(body, response.code))
            return
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body))


def _sentence(body, status: int) -> str:
    """What the service's error answer says, in one sentence (its ``message``, else its ``error``)."""
    if isinstance(body, dict):
        for key in ("message", "error"):
            if isinstance(body.get(key), str) and body[key]:
                return body[key]
    if status < 400:
        return "The workshop service answered something that is not the seat's JSON."
    return f"The workshop service answered {status}."


class ReadHandler(SeatForwardHandler):
    """``wod/session`` and ``wod/steps``: what the bar shows."""

    @web.authenticated
    async def get(self):
        await self.forward("GET", self.target)


class CheckHandler(SeatForwardHandler):
    """``wod/steps/<k>/check``: the participant's Check button."""

    @web.authenticated
    async def post(self, index: str):
        await self.forward("POST", self.target.format(index=int(index)))


def setup_handlers(web_app) -> None:
    """Adds the ``wod/`` routes under the server's base URL (``/user/<name>/``)."""
    base = web_app.settings["base_url"]
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "wod/session"), ReadHandler, {"target": "api/seat"}),
            (url_path_join(base, "wod/steps"), ReadHandler, {"target": "api/seat/steps"}),
            # a step's index: a number of a few digits, never a path the service would read otherwise
            (url_path_join(base, r"wod/steps/(\d{1,6})/check"), CheckHandler, {"target": "api/seat/steps/{index}/check"}),
        ],
    )
