"""A small async client for the registration portal's REST API (the original api-db)."""

import asyncio
import logging

from ..httpclient import Client, HTTPError, Response
from ..outbox import Rejected, Transient

# 4xx answers that say "not now" rather than "never"
_RETRYABLE_4XX = {408, 425, 429}


def _scrub(text: str, secrets) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _excerpt(response: Response, secrets, limit: int = 200) -> str:
    try:
        text = response.text
    except Exception:  # an undecodable answer still needs a message
        text = ""
    text = " ".join(_scrub(text, secrets).split())
    return text[:limit] + ("…" if len(text) > limit else "")


class PortalClient:
    """The portal's REST API as the original backend used it: login, token, re-login on 401."""

    def __init__(self, portal, log=None):
        """``portal``: the :class:`~.portal.WodPortal` settings (url, username, password, timeout, concurrency)."""
        self.portal = portal
        self.log = log or logging.getLogger("wod.portal")
        # Its connections follow the caller's loop by themselves (httpclient.Client).
        self._http = Client(base_url=portal.url, timeout=portal.timeout, concurrency=portal.concurrency + 2)
        self._loop = None
        self._token = None
        self._login_lock = asyncio.Lock()
        self._workshop_ids: dict[str, str] = {}

    def _client(self) -> Client:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # The login lock belongs to a loop, and a fresh one (tests, a shutdown) logs in afresh.
            self._loop = loop
            self._token = None
            self._login_lock = asyncio.Lock()
        return self._http

    async def aclose(self) -> None:
        """Close the HTTP connections (the next call opens new ones and logs in again)."""
        await self._http.aclose()
        self._loop = None  # the next call logs in again, as on a fresh loop

    async def _send(self, method, path, secrets=(), **kwargs) -> Response:
        try:
            response = await self._client().request(method, path, **kwargs)
        except HTTPError as e:  # connection refused, reset, timeout
            raise Transient(f"{method} {path}: {_scrub(str(e), secrets) or 'no answer'}") from None
        if response.status_code >= 500 or response.status_code in _RETRYABLE_4XX:
            raise Transient(f"{method} {path}: HTTP {response.status_code} {_excerpt(response, secrets)}".rstrip())
        return response

    async def login(self) -> str:
        """Log in with ``username``/``password``; the answer's ``accessToken``."""
        secrets = (self.portal.password,)
        response = await self._send(
            "POST", "/api/login", secrets, json={"username": self.portal.username, "password": self.portal.password}
        )
        if response.status_code >= 400:
            # Wrong credentials are the admin's to fix; the callbacks wait meanwhile.
            raise Transient(
                f"the portal refused the login of {self.portal.username!r} with HTTP {response.status_code}"
                f" (check c.WodPortal.username and password): {_excerpt(response, secrets)}"
            )
        try:
            token = response.json()["accessToken"]
        except (ValueError, KeyError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise Transient(f"the portal's login answer holds no accessToken: {_excerpt(response, secrets)}")
        return token

    async def _current_token(self, stale=None) -> str:
        self._client()
        async with self._login_lock:
            # Many senders see one expiry at once; the first logs in for all.
            if self._token is None or self._token == stale:
                self._token = await self.login()
            return self._token

    async def call(self, method: str, path: str, body=None, secrets=()) -> Response:
        """One authenticated call: a 2xx answer, or Transient / Rejected."""
        kwargs = {} if body is None else {"json": body}
        token = await self._current_token()
        response = await self._send(method, path, secrets, headers={"x-access-token": token}, **kwargs)
        if response.status_code == 401:
            token = await self._current_token(stale=token)
            response = await self._send(method, path, secrets, headers={"x-access-token": token}, **kwargs)
            if response.status_code == 401:
                raise Transient(f"{method} {path}: HTTP 401 even with a fresh token")
        if response.status_code >= 400:
            raise Rejected(f"{method} {path}: HTTP {response.status_code} {_excerpt(response, secrets)}".rstrip())
        return response

    async def workshops(self) -> list:
        """The portal's list of workshops; ``Transient`` when it answers anything but a JSON list."""
        response = await self.call("GET", "/api/workshops")
        try:
            items = response.json()
        except ValueError:
            items = None
        if not isinstance(items, list):
            raise Transient("GET /api/workshops did not answer a JSON list")
        return items

    def forget_workshop(self, folder: str) -> None:
        """Drop the cached portal id of ``folder``, so that the next call asks again."""
        self._workshop_ids.pop(folder, None)

    async def workshop_id(self, folder: str) -> str:
        """The portal's id of the workshop whose ``notebook`` is ``folder`` (cached)."""
        if folder not in self._workshop_ids:
            for item in await self.workshops():
                if isinstance(item, dict) and item.get("notebook") and item.get("id") is not None:
                    self._workshop_ids[str(item["notebook"])] = str(item["id"])
            if folder not in self._workshop_ids:
                raise Rejected(f"the portal lists no workshop whose notebook is {folder!r}")
        return self._workshop_ids[folder]
