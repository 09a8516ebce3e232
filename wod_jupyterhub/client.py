"""The ``wod`` command's client of the service's REST API: where the service is, with which token.

The service answers under the hub's public URL at ``/services/wod/``. The
URL is ``--url``, else ``$WOD_URL``, else the hub's public URL read from the
``jupyterhub_config.py`` of the current folder (``c.JupyterHub.bind_url``,
or ``ip``/``port``/``base_url``). The token is ``--token``, else
``$WOD_API_TOKEN``; its owner needs ``custom:wod:operate`` for the verbs and
``custom:wod:read`` for reads.

Core: imports neither the hub nor the service.
"""

import os
import re
from pathlib import Path

import httpx

from .errors import BadRequest, WodError
from .hubconfig import CONFIG_FILE, load_config, public_url

SERVICE_PATH = "services/wod/"


class ServiceError(WodError):
    """The service refused a call or could not be reached; the sentence says which.

    ``exit_status``: 2 when the request or the token is wrong (the caller can
    fix it), 1 when the hub or the service is not there to answer.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None, exit_status: int = 2):
        super().__init__(message, code=code)
        self.status = status or 0
        self.exit_status = exit_status


def _hub_url_from_config(path: Path) -> str | None:
    """The hub's public URL as ``path`` configures it, or None when it says nothing."""
    return public_url(load_config(str(path)))


def resolve_url(url: str | None = None, cwd: str | None = None) -> str:
    """The service's base URL (ending in ``/services/wod/``) from --url, $WOD_URL or ./jupyterhub_config.py."""
    url = url or os.environ.get("WOD_URL")
    if not url:
        config = Path(cwd or ".") / CONFIG_FILE
        if config.is_file():
            url = _hub_url_from_config(config)
        if not url:
            raise BadRequest(f"where is the hub? give --url URL, set $WOD_URL, or run in the folder of its {CONFIG_FILE}")
    if not re.match(r"^https?://[^/]+", url):
        raise BadRequest(f"--url {url!r} is not an http(s) URL")
    url = url.rstrip("/") + "/"
    if not url.endswith("/" + SERVICE_PATH):
        url += SERVICE_PATH
    return url


def resolve_token(token: str | None = None) -> str:
    token = token or os.environ.get("WOD_API_TOKEN", "")
    if not token:
        raise BadRequest("no API token: give --token TOKEN or set $WOD_API_TOKEN (a token with the scope custom:wod:operate or custom:wod:read)")
    return token


def hub_of(url: str) -> str:
    """The hub's public URL of a service URL (``…/services/wod/`` dropped)."""
    return url[: -len(SERVICE_PATH)] if url.endswith(SERVICE_PATH) else url


def _json(r: httpx.Response):
    if "json" not in r.headers.get("content-type", ""):
        return None
    try:
        return r.json()
    except ValueError:
        return None


def _not_the_service(r: httpx.Response, url: str) -> ServiceError:
    return ServiceError(
        f"the hub answers at {hub_of(url)} but the wod service does not (HTTP {r.status_code}): "
        "is the service running? The hub's log says why it stopped.",
        status=r.status_code, exit_status=1,
    )


def _explain(r: httpx.Response, url: str) -> ServiceError:
    body = _json(r)
    if not isinstance(body, dict):
        return _not_the_service(r, url)
    message, code = body.get("message") or r.reason_phrase, body.get("error")
    if r.status_code == 401:
        message = (f"the hub at {hub_of(url)} does not know this token (HTTP 401): give a token of this hub "
                   "with --token or $WOD_API_TOKEN")
    elif r.status_code == 403:
        message = f"the service refused the token: {message}"
    return ServiceError(message, status=r.status_code, code=code, exit_status=2 if r.status_code < 500 else 1)


def _unreachable(url: str, e: Exception) -> ServiceError:
    reason = str(e) or e.__class__.__name__
    return ServiceError(f"cannot reach the hub at {hub_of(url)}: {reason}; is it running there? (--url, $WOD_URL)", exit_status=1)


def _answer(r: httpx.Response, ok, url: str):
    if r.status_code not in ok:
        raise _explain(r, url)
    body = _json(r)
    if body is None:
        raise _not_the_service(r, url)
    return body


class WodClient:
    """Synchronous calls (reads); :class:`AsyncWodClient` runs the verbs concurrently."""

    def __init__(self, url: str, token: str, timeout: float = 60):
        self.url = url
        self._http = httpx.Client(base_url=url, headers={"Authorization": f"token {token}"}, timeout=timeout)

    def close(self):
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, method: str, path: str, ok=(200,), **kwargs):
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise _unreachable(self.url, e) from None
        return _answer(r, ok, self.url)

    def get(self, path: str, **params):
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict, ok=(200, 201, 202), **params):
        return self.request("POST", path, ok=ok, json=body, params=params)


class AsyncWodClient:
    def __init__(self, url: str, token: str, timeout: float = 60, concurrency: int = 8):
        self.url = url
        self._http = httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"token {token}"},
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    async def close(self):
        await self._http.aclose()

    async def request(self, method: str, path: str, ok=(200,), **kwargs):
        try:
            r = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise _unreachable(self.url, e) from None
        return _answer(r, ok, self.url)


def check_service(url: str, token: str, workshop: str) -> dict:
    """One call before a batch: the hub is there, the service answers, the token is known.

    Answers the workshop's catalog entry (``{"error": "no_workshop", …}`` when
    the catalog has none), so that a batch fails once, with the reason,
    instead of once per seat.
    """
    with WodClient(url, token, timeout=30) as client:
        return client.request("GET", f"api/workshops/{workshop}", ok=(200, 404))
