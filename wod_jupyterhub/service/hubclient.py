"""A small async client for the JupyterHub REST API, with the service's own token."""

import asyncio
import logging
import os
import time
from urllib.parse import quote

from .httpclient import Client, HTTPError, Response


class HubAPIError(Exception):
    """The hub could not be reached or refused a call; the message says which and why."""


class HubAPI:
    """The service's client of the hub's REST API (users, servers, tokens), with its own token and a few calls at once."""
    def __init__(self, api_url: str | None = None, token: str | None = None, timeout: float = 30, log=None, concurrency: int = 8):
        self.api_url = (api_url or os.environ.get("JUPYTERHUB_API_URL", "")).rstrip("/")
        self.token = token or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        self.log = log or logging.getLogger("wod.hubapi")
        self._client = Client(timeout=timeout, headers={"Authorization": f"token {self.token}"}, concurrency=concurrency)
        # The hub answers on one thread: a burst's hundred calls at once would only queue there. A few at a time,
        # the rest wait here.
        self._slots = asyncio.Semaphore(concurrency)
        # Users known to exist: the pool's accounts are created once and reused for years.
        self._known: set[str] = set()
        self._pending: dict[str, asyncio.Future] = {}
        self._flush: asyncio.Task | None = None
        # Callers waiting for the list of users with a server (one GET serves a whole burst of them).
        self._active_waiters: list[asyncio.Future] = []
        self._active_fetch: asyncio.Task | None = None

    @property
    def configured(self) -> bool:
        """Whether the hub's API URL and a token are known."""
        return bool(self.api_url and self.token)

    async def close(self):
        """Cancel the shared look-ups in flight (their callers get CancelledError) and close the connections."""
        for task in (self._flush, self._active_fetch):
            if task is not None:
                task.cancel()
        for future in [*self._pending.values(), *self._active_waiters]:
            future.cancel()
        await self._client.aclose()

    async def _request(self, method: str, path: str, ok=(200,), **kwargs) -> Response:
        if not self.configured:
            raise HubAPIError("the hub API is not configured (JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN are unset)")
        url = self.api_url + path
        try:
            async with self._slots:
                r = await self._client.request(method, url, **kwargs)
        except HTTPError as e:
            raise HubAPIError(f"cannot reach the hub API at {self.api_url}: {e}") from e
        if r.status_code not in ok:
            try:
                detail = r.json().get("message") or r.text
            except ValueError:
                detail = r.text
            raise HubAPIError(f"{method} {path} answered {r.status_code}: {detail[:300]}")
        return r

    async def user(self, name: str) -> dict | None:
        """The hub's user model, or None when there is no such user."""
        r = await self._request("GET", f"/users/{quote(name)}", ok=(200, 404))
        return r.json() if r.status_code == 200 else None

    async def _list_users(self, page: int = 200, **params) -> list[dict]:
        """Every user model the hub lists for ``params`` (all pages)."""
        out: list[dict] = []
        while True:
            r = await self._request("GET", "/users", params={**params, "offset": len(out), "limit": page})
            users = r.json()
            if isinstance(users, dict):  # the paginated form
                users = users.get("items", [])
            out.extend(users)
            if len(users) < page:
                return out

    async def load_users(self) -> int:
        """Learn which users the hub has, so ensure_user need not ask; return how many."""
        self._known.update(u["name"] for u in await self._list_users())
        return len(self._known)

    async def last_activity(self) -> dict:
        """``{user name: last activity (ISO) or None}`` of every user of the hub."""
        return {u["name"]: u.get("last_activity") for u in await self._list_users()}

    async def has_server(self, name: str) -> bool:
        """Whether ``name`` has a server running or starting (see ``active_users``)."""
        return name in await self.active_users()

    async def active_users(self) -> set[str]:
        """The users with a server running or starting.

        Concurrent calls share one ``GET /users?state=active``: a burst of
        CLEANUPs asks the hub once instead of once per student.
        """
        future = asyncio.get_running_loop().create_future()
        self._active_waiters.append(future)
        if self._active_fetch is None or self._active_fetch.done():
            self._active_fetch = asyncio.ensure_future(self._fetch_active())
        return await asyncio.shield(future)

    async def active_models(self) -> list[dict]:
        """The models of the users with a server running or starting (their servers' ``started`` and ``ready``)."""
        return await self._list_users(state="active")

    async def _fetch_active(self):
        # Callers who arrive while a list is on its way wait for the next one: theirs must be fresh.
        while self._active_waiters:
            await asyncio.sleep(0.005)  # let the other calls of a burst join
            waiters, self._active_waiters = self._active_waiters, []
            try:
                active = {u["name"] for u in await self._list_users(state="active")}
            except HubAPIError as e:
                for future in waiters:
                    if not future.done():
                        future.set_exception(e)
                continue
            for future in waiters:
                if not future.done():
                    future.set_result(active)

    async def ensure_user(self, name: str) -> bool:
        """Make sure the hub has user ``name``; True if this call created it (so it has no tokens yet).

        Concurrent calls are batched into one ``POST /users`` (a burst of
        CREATEs would otherwise queue 100 calls on the hub's single thread).
        """
        if name in self._known:
            return False
        future = self._pending.get(name)
        if future is None:
            future = self._pending[name] = asyncio.get_running_loop().create_future()
            if self._flush is None or self._flush.done():
                self._flush = asyncio.ensure_future(self._create_pending())
        return await asyncio.shield(future)

    async def ensure_users(self, names) -> set[str]:
        """Create, in one call, those of ``names`` the hub is not known to have; return the names created."""
        missing = sorted(set(names) - self._known)
        if not missing:
            return set()
        # Existing users are skipped by the hub; 409 means all of them existed.
        r = await self._request("POST", "/users", ok=(201, 409), json={"usernames": missing})
        created = {u["name"] for u in r.json()} if r.status_code == 201 else set()
        if created:
            self.log.info("Created hub users %s", ", ".join(sorted(created)))
        self._known.update(missing)
        return created

    async def _create_pending(self):
        # One batch in flight at a time; names asked for meanwhile form the next batch.
        while self._pending:
            await asyncio.sleep(0.005)  # let the other CREATEs of a burst join
            batch, self._pending = self._pending, {}
            try:
                created = await self.ensure_users(batch)
            except HubAPIError as e:
                for future in batch.values():
                    if not future.done():
                        future.set_exception(e)
                continue
            for name, future in batch.items():
                if not future.done():
                    future.set_result(name in created)

    async def stop_server(self, name: str, timeout: float = 60) -> bool:
        """Stop the default server of ``name`` and wait until it is gone; True if one was running."""
        if not await self.has_server(name):
            return False
        # 400: not running (it stopped meanwhile); 404: the user went away.
        r = await self._request("DELETE", f"/users/{quote(name)}/server", ok=(202, 204, 400, 404))
        if r.status_code in (400, 404):
            return False
        deadline = time.monotonic() + timeout
        while True:
            model = await self.user(name)
            if model is None or (not model.get("pending") and not model.get("servers") and not model.get("server")):
                return True
            if time.monotonic() > deadline:
                raise HubAPIError(f"the server of {name} did not stop within {timeout:.0f} s")
            await asyncio.sleep(0.2)

    async def start_server(self, name: str) -> None:
        """Ask the hub to start ``name``'s server; one already running or starting is fine."""
        # 400: already running or pending, which is what we want.
        await self._request("POST", f"/users/{quote(name)}/server", ok=(201, 202, 400))

    async def tokens(self, name: str) -> list[dict]:
        """The API tokens of ``name`` (OAuth tokens of its sessions included); none when the user is gone."""
        r = await self._request("GET", f"/users/{quote(name)}/tokens", ok=(200, 404))
        if r.status_code == 404:
            return []
        data = r.json()
        return data.get("api_tokens", []) + data.get("oauth_tokens", []) if isinstance(data, dict) else data

    async def revoke_tokens(self, name: str) -> int:
        """Delete every API token of ``name`` (OAuth tokens of its sessions included); return how many."""
        tokens = await self.tokens(name)
        for token in tokens:
            await self._request("DELETE", f"/users/{quote(name)}/tokens/{quote(token['id'])}", ok=(204, 404))
        return len(tokens)
