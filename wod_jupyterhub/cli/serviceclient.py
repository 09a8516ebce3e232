"""The ``wod`` command's client of the service's REST API: where the service is, with which token."""

import contextlib
import io
import os
import re
from pathlib import Path

import httpx

from ..errors import BadRequest, WodError

SERVICE_PATH = "services/wod/"
CONFIG_FILE = "jupyterhub_config.py"


class ServiceError(WodError):
    """The service refused a call or could not be reached; the sentence says which."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message, code=code)
        self.status = status or 0


def _hub_url_from_config(path: Path) -> str | None:
    """The hub's public URL as ``path`` configures it, or None when it says nothing."""
    from traitlets.config.loader import PyFileConfigLoader

    # The demo configuration prints a generated portal token when it has none:
    # that line is not for a person asking the status of a class.
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        config = PyFileConfigLoader(path.name, str(path.parent.absolute())).load_config()
    hub = config.get("JupyterHub", {})
    base = str(hub.get("base_url", "/") or "/")
    if "bind_url" in hub:
        url = str(hub["bind_url"])
    elif "ip" in hub or "port" in hub:
        url = f"http://{hub.get('ip') or '127.0.0.1'}:{hub.get('port', 8000)}{base}"
    else:
        return None
    return url


def resolve_url(url: str | None = None, cwd: str | None = None) -> str:
    """The service's base URL (ending in ``/services/wod/``) from --url, $WOD_URL or ./jupyterhub_config.py."""
    url = url or os.environ.get("WOD_URL")
    if not url:
        config = Path(cwd or ".") / CONFIG_FILE
        if config.is_file():
            try:
                url = _hub_url_from_config(config)
            except Exception as e:  # any error in the admin's file is reported, never raised
                raise BadRequest(f"cannot read the hub's URL from {config}: {e.__class__.__name__}: {e}") from None
        if not url:
            raise BadRequest(f"where is the hub? give --url URL, set $WOD_URL, or run in the folder of its {CONFIG_FILE}")
    if not re.match(r"^https?://[^/]+", url):
        raise BadRequest(f"--url {url!r} is not an http(s) URL")
    url = url.rstrip("/") + "/"
    if not url.endswith("/" + SERVICE_PATH):
        url += SERVICE_PATH
    return url


def resolve_token(token: str | None = None) -> str:
    """The API token: ``token``, else ``$WOD_API_TOKEN``; a ``BadRequest`` that says how to give one when neither is set."""
    token = token or os.environ.get("WOD_API_TOKEN", "")
    if not token:
        raise BadRequest("no API token: give --token TOKEN or set $WOD_API_TOKEN (a token with the scope custom:wod:operate or custom:wod:read)")
    return token


def _explain(r: httpx.Response) -> ServiceError:
    try:
        body = r.json()
        message, code = body.get("message") or r.text, body.get("error")
    except (ValueError, AttributeError):
        message, code = (r.text or r.reason_phrase).strip()[:300], None
    if r.status_code == 401:
        message = f"the service refused the token: {message}"
    return ServiceError(message, status=r.status_code, code=code)


def _unreachable(url: str, e: Exception) -> ServiceError:
    return ServiceError(f"cannot reach the wod service at {url}: {e.__class__.__name__}: {e}")


def _answer(r: httpx.Response, ok):
    if r.status_code not in ok:
        raise _explain(r)
    try:
        return r.json()
    except ValueError:
        raise ServiceError(f"the service at {r.request.url} answered {r.status_code} with no JSON: is this the wod service?") from None


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
        return _answer(r, ok)

    def get(self, path: str, **params):
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict, ok=(200, 201, 202), **params):
        return self.request("POST", path, ok=ok, json=body, params=params)


class AsyncWodClient:
    """The service's REST API over httpx with a bounded number of requests at once (``wod create`` and friends)."""
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
        return _answer(r, ok)
