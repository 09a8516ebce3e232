"""The service's HTTP client, for its calls to the hub's REST API and to the portal."""

from __future__ import annotations

import asyncio
import json as _json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp


class HTTPError(Exception):
    """No answer: the server could not be reached, dropped the connection, or did not answer in time."""


class Response:
    """An answer read whole: ``status_code``, ``content``, ``text``, ``json()``."""

    __slots__ = ("status_code", "content", "headers")

    def __init__(self, status_code: int, content: bytes, headers):
        self.status_code = status_code
        self.content = content
        self.headers = headers

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self):
        """The body as JSON; ``ValueError`` when it is not."""
        return _json.loads(self.content)


def _describe(e: BaseException, timeout: float) -> str:
    import aiohttp

    if isinstance(e, asyncio.TimeoutError):
        return f"Timeout: no answer within {timeout:g} s"
    if isinstance(e, aiohttp.ClientConnectorError):
        reason = e.os_error.strerror if e.os_error is not None and e.os_error.strerror else str(e.os_error or e)
        return f"ConnectError: cannot connect to {e.host}:{e.port}: {reason}"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "ServerDisconnected: the server closed the connection without an answer"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class Client:
    """Keep-alive connections to one or more servers, at most ``concurrency`` at once, on the loop it first runs on.

    ``base_url`` is put before every path given; ``headers`` go with every
    request; ``timeout`` (seconds) bounds each whole request.
    """

    def __init__(self, *, base_url: str = "", headers: dict | None = None, timeout: float = 30, concurrency: int = 8):
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self._loop = None

    def _current(self) -> aiohttp.ClientSession:
        # aiohttp is imported on first use: the processes that only queue (``wod mail``) load the
        # engine, which names this module's errors, but never make a request.
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            # A session belongs to the loop it was made on; tests and a shutdown may drive us from a fresh one.
            # The old one cannot be closed from here: it is let go, its sockets closed with it.
            self._drop()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers=self.headers,
                # The URL as given: paths are quoted by the callers (a customer id, a token id), not again here.
                requote_redirect_url=False,
                trust_env=True,
            )
            self._loop = loop
        return self._session

    async def request(self, method: str, url: str, *, json=None, headers: dict | None = None, params: dict | None = None) -> Response:
        """One request, its answer read whole; :class:`HTTPError` when there is none."""
        import aiohttp
        from yarl import URL

        target = URL(self.base_url + url, encoded=True)
        if params:
            target = target.update_query({k: str(v) for k, v in params.items()})
        try:
            async with self._current().request(method, target, json=json, headers=headers, allow_redirects=False) as r:
                return Response(r.status, await r.read(), r.headers)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise HTTPError(_describe(e, self.timeout)) from None

    def _drop(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            connector = session.connector
            session.detach()
            if connector is not None:
                connector._close()  # the synchronous close; the public one needs the session's loop

    async def aclose(self) -> None:
        """Close the connections (from the loop they belong to; from another they are let go)."""
        if self._session is not None and self._loop is asyncio.get_running_loop():
            session, self._session = self._session, None
            await session.close()
        else:
            self._drop()
