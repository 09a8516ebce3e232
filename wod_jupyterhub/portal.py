"""Callbacks to the registration portal (the original api-db), from a durable outbox.

An operation step and the callbacks it causes are written in one transaction
(:class:`Outbox` builders take the caller's session), so a crash can lose
neither half without the other. A delivery loop (:meth:`Outbox.run`, an
asyncio task of the service) sends them with httpx in the original contract:
``POST /api/login`` for an ``accessToken``, then ``x-access-token`` on every
``PUT``; a 401 means the token expired (the real portal's live 180 s), so it
logs in again and retries once.

Guarantees:

* **Nothing is lost.** A message leaves the table only by being delivered
  (2xx) or refused for good (another 4xx: marked ``failed``, logged, kept for
  the admin). Connection errors, timeouts, 5xx, 408/425/429 and failed logins
  keep it with exponential back-off and jitter.
* **In order per key.** Messages share a key per student (``student:<N>``,
  its student *and* customer callbacks) or per workshop; only the oldest
  pending message of a key (its *head*) is ever sent, so a key's messages
  reach the portal in the order they were enqueued. This relies on one
  writer per key at a time, which the service's per-student lock gives:
  with PostgreSQL, ids come from a sequence, and two transactions enqueuing
  for one key concurrently could commit out of id order.
  Different keys go in parallel, at most ``WodPortal.concurrency`` at once.
* **Once, across processes.** Before sending, a process claims the head with
  a lease (a conditional ``UPDATE`` on ``lease_owner``/``lease_expires``,
  atomic on PostgreSQL's row lock and SQLite's single writer), so several
  service processes on one database never send a message at the same time.
  A whole attempt is cut off well before its lease ends. A crashed holder's
  lease is taken over at once when the holder ran on this host (its pid and
  start time show it is gone, see :mod:`~wod_jupyterhub.owners`); on another
  host it simply expires (clocks of the hosts must agree to within
  ``LEASE_MARGIN``).
* **At least once, in practice once.** The message is marked delivered right
  after the 2xx. A crash between the two resends it once (at once from this
  host, after the lease from another); the portal's PUTs set fields to values, so a repeat is harmless.

Passwords wait sealed (``{"password": {"$sealed": "…"}}``, see
:class:`~wod_jupyterhub.passwords.Sealer`), are opened only in memory just
before the request, and are scrubbed from anything logged or stored.
"""

import asyncio
import datetime
import logging
import os
import random
import re
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import httpx
from sqlalchemy import delete, func, or_, select, update
from traitlets import Float, Integer, TraitError, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from .owners import make_owner, owner_alive_locally
from .store import OutboxMessage, utcnow
from .waiting import nap, within

SEALED = "$sealed"
#: tolerated clock difference between service hosts sharing a database
LEASE_MARGIN = 30.0
#: a workshop callback waits with its folder in braces, resolved to the portal's id when sent
_WORKSHOP_PATH = re.compile(r"^/api/workshop/\{(?P<folder>[^{}/]+)\}$")
_WORKSHOP_NAME = re.compile(r"^(WKSHP|CHLG)-[A-Za-z0-9._-]+$")
# 4xx answers that say "not now" rather than "never"
_RETRYABLE_4XX = {408, 425, 429}


class WodPortal(LoggingConfigurable):
    """Where and how to reach the registration portal (``c.WodPortal.*``)."""

    url = Unicode(
        "",
        help="""Base URL of the portal's api-db, e.g. ``http://portal:8021``; every path is under ``/api``.

        Empty (the default) turns callbacks off: nothing is queued or sent.
        """,
    ).tag(config=True)

    @validate("url")
    def _valid_url(self, proposal):
        url = proposal["value"].strip().rstrip("/")
        if not url:
            return ""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TraitError(f"WodPortal.url must be an http:// or https:// URL, not {url!r}")
        return url

    username = Unicode(
        "",
        help="User name the service logs in to the portal with (``POST /api/login``).",
    ).tag(config=True)

    password = Unicode(
        help="""Password for ``username``; never logged. Defaults to ``$WOD_PORTAL_PASSWORD``.""",
    ).tag(config=True)

    @default("password")
    def _password_default(self):
        return os.environ.get("WOD_PORTAL_PASSWORD", "")

    timeout = Float(
        10.0,
        help="Seconds to wait for the portal to connect or answer, per request.",
    ).tag(config=True)

    retry_initial = Float(
        2.0,
        help="Seconds before the first retry of a callback the portal could not take; doubled at each failure (with jitter).",
    ).tag(config=True)

    retry_max = Float(
        300.0,
        help="Longest wait, in seconds, between two tries of one callback.",
    ).tag(config=True)

    concurrency = Integer(
        8,
        help="Callbacks of different students sent at once; one student's are always sent one after the other.",
    ).tag(config=True)

    poll_interval = Float(
        5.0,
        help="""Seconds between two looks at the outbox when nothing woke the delivery loop.

        The service wakes it after each commit; the poll catches callbacks queued
        by other service processes sharing the database.
        """,
    ).tag(config=True)

    retention_days = Float(
        14.0,
        help="Days delivered and refused callbacks stay in the database (for the admin) before they are deleted.",
    ).tag(config=True)

    @validate("timeout", "retry_initial", "retry_max", "poll_interval")
    def _positive_seconds(self, proposal):
        if proposal["value"] <= 0:
            raise TraitError(f"WodPortal.{proposal['trait'].name} must be more than 0 seconds")
        return proposal["value"]

    @validate("concurrency")
    def _positive_concurrency(self, proposal):
        if proposal["value"] < 1:
            raise TraitError("WodPortal.concurrency must be 1 or more")
        return proposal["value"]

    @property
    def enabled(self) -> bool:
        return bool(self.url)


class _Transient(Exception):
    """The portal could not take it now: keep the message and try later."""


class _Rejected(Exception):
    """The portal will never take this message."""


def _scrub(text: str, secrets) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _masked(body: dict) -> dict:
    """The body as it may be logged: sealed values shown as ``***``."""
    return {k: ("***" if isinstance(v, dict) and SEALED in v else v) for k, v in body.items()}


def _excerpt(response: httpx.Response, secrets, limit: int = 200) -> str:
    try:
        text = response.text
    except Exception:  # noqa: BLE001 - an undecodable answer still needs a message
        text = ""
    text = " ".join(_scrub(text, secrets).split())
    return text[:limit] + ("…" if len(text) > limit else "")


class PortalClient:
    """The portal's REST API as the original backend used it: login, token, re-login on 401."""

    def __init__(self, portal: WodPortal, log=None):
        self.portal = portal
        self.log = log or logging.getLogger("wod.portal")
        self._http = None
        self._loop = None
        self._token = None
        self._login_lock = asyncio.Lock()
        self._workshop_ids: dict[str, str] = {}

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            # A client is bound to the loop it first ran on; tests and
            # shutdown may drive us from a fresh one.
            self._http = httpx.AsyncClient(
                base_url=self.portal.url,
                timeout=self.portal.timeout,
                limits=httpx.Limits(max_connections=self.portal.concurrency + 2),
            )
            self._loop = loop
            self._token = None
            self._login_lock = asyncio.Lock()
        return self._http

    async def aclose(self) -> None:
        if self._http is not None and self._loop is asyncio.get_running_loop():
            await self._http.aclose()
        self._http = None

    async def _send(self, method, path, secrets=(), **kwargs) -> httpx.Response:
        try:
            response = await self._client().request(method, path, **kwargs)
        except httpx.HTTPError as e:  # connection refused, reset, timeout, protocol error
            raise _Transient(f"{method} {path}: {type(e).__name__}: {_scrub(str(e), secrets) or 'no answer'}") from None
        if response.status_code >= 500 or response.status_code in _RETRYABLE_4XX:
            raise _Transient(f"{method} {path}: HTTP {response.status_code} {_excerpt(response, secrets)}".rstrip())
        return response

    async def login(self) -> str:
        """Log in with ``username``/``password``; the answer's ``accessToken``."""
        secrets = (self.portal.password,)
        response = await self._send(
            "POST", "/api/login", secrets, json={"username": self.portal.username, "password": self.portal.password}
        )
        if response.status_code >= 400:
            # Wrong credentials are the admin's to fix; the callbacks wait meanwhile.
            raise _Transient(
                f"the portal refused the login of {self.portal.username!r} with HTTP {response.status_code}"
                f" (check c.WodPortal.username and password): {_excerpt(response, secrets)}"
            )
        try:
            token = response.json()["accessToken"]
        except (ValueError, KeyError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise _Transient(f"the portal's login answer holds no accessToken: {_excerpt(response, secrets)}")
        return token

    async def _current_token(self, stale=None) -> str:
        self._client()
        async with self._login_lock:
            # Many senders see one expiry at once; the first logs in for all.
            if self._token is None or self._token == stale:
                self._token = await self.login()
            return self._token

    async def call(self, method: str, path: str, body=None, secrets=()) -> httpx.Response:
        """One authenticated call: a 2xx answer, or _Transient / _Rejected."""
        kwargs = {} if body is None else {"json": body}
        token = await self._current_token()
        response = await self._send(method, path, secrets, headers={"x-access-token": token}, **kwargs)
        if response.status_code == 401:
            token = await self._current_token(stale=token)
            response = await self._send(method, path, secrets, headers={"x-access-token": token}, **kwargs)
            if response.status_code == 401:
                raise _Transient(f"{method} {path}: HTTP 401 even with a fresh token")
        if response.status_code >= 400:
            raise _Rejected(f"{method} {path}: HTTP {response.status_code} {_excerpt(response, secrets)}".rstrip())
        return response

    async def workshops(self) -> list:
        response = await self.call("GET", "/api/workshops")
        try:
            items = response.json()
        except ValueError:
            items = None
        if not isinstance(items, list):
            raise _Transient("GET /api/workshops did not answer a JSON list")
        return items

    def forget_workshop(self, folder: str) -> None:
        self._workshop_ids.pop(folder, None)

    async def workshop_id(self, folder: str) -> str:
        """The portal's id of the workshop whose ``notebook`` is ``folder`` (cached)."""
        if folder not in self._workshop_ids:
            for item in await self.workshops():
                if isinstance(item, dict) and item.get("notebook") and item.get("id") is not None:
                    self._workshop_ids[str(item["notebook"])] = str(item["id"])
            if folder not in self._workshop_ids:
                raise _Rejected(f"the portal lists no workshop whose notebook is {folder!r}")
        return self._workshop_ids[folder]


@dataclass
class _Message:
    id: int
    key: str
    method: str
    path: str
    body: dict
    attempts: int


def _pending():
    return (OutboxMessage.delivered.is_(None), OutboxMessage.failed.is_(None))


def _lease_held(owner, expires, now) -> bool:
    """Whether a claim still stands: unexpired, and not held by a process of this host that is gone."""
    return expires is not None and expires > now and owner_alive_locally(owner or "") is not False


class Outbox:
    """Durable portal callbacks: builders that enqueue, and the loop that delivers."""

    def __init__(self, store, sealer, portal: WodPortal, wod, log=None):
        self.store = store
        self.sealer = sealer
        self.portal = portal
        self.wod = wod
        self.log = log or logging.getLogger("wod.portal")
        if portal.enabled and sealer is None:
            raise ValueError("Outbox needs a Sealer when WodPortal.url is set: passwords wait sealed")
        self.client = PortalClient(portal, self.log)
        self.owner = make_owner()
        # Every attempt (login, workshop lookup, request, re-login, retry) ends
        # before its lease does, so no two processes ever hold one message.
        self.attempt_limit = 3 * portal.timeout
        self.lease = datetime.timedelta(seconds=self.attempt_limit + LEASE_MARGIN)
        self._loop = None
        self._wake = None
        self._unreachable = False
        self._last_prune = 0.0

    # ------------------------------------------------------------------ builders

    def _enqueue(self, session, key, path, body, operation_id):
        if not self.portal.enabled:
            return None
        message = OutboxMessage(
            key=key,
            operation_id=operation_id,
            method="PUT",
            path=path,
            body=body,
            attempts=0,
            next_attempt=utcnow(),
        )
        session.add(message)
        return message

    def _student(self, n: int):
        n = int(n)
        return f"student:{n}", f"/api/student/{n + self.wod.base_student_id}"

    @staticmethod
    def _customer_path(customer) -> str:
        customer = str(customer if customer is not None else "").strip()
        if not customer:
            raise ValueError("a customer callback needs the portal's customer id")
        return "/api/customer/" + quote(customer, safe="")

    def student_password(self, session, n, password, operation_id=None):
        """``PUT /api/student/{n+base}`` ``{"password": pw}``; the password waits sealed."""
        if not self.portal.enabled:
            return None
        key, path = self._student(n)
        return self._enqueue(session, key, path, {"password": {SEALED: self.sealer.seal(password)}}, operation_id)

    def student_assigned(self, session, n, assigned: bool, operation_id=None):
        key, path = self._student(n)
        return self._enqueue(session, key, path, {"assigned": "true" if assigned else "false"}, operation_id)

    def customer_active(self, session, n, customer, active: bool, operation_id=None):
        key, _ = self._student(n)
        return self._enqueue(session, key, self._customer_path(customer), {"active": "true" if active else "false"}, operation_id)

    def customer_completion(self, session, n, customer, percent: int, operation_id=None):
        key, _ = self._student(n)
        body = {"completionPercentage": str(int(percent))}
        return self._enqueue(session, key, self._customer_path(customer), body, operation_id)

    def customer_cleaned(self, session, n, customer, operation_id=None):
        key, _ = self._student(n)
        return self._enqueue(session, key, self._customer_path(customer), {"cleaned": "true"}, operation_id)

    def workshop_capacity(self, session, workshop_folder, capacity: int, operation_id=None):
        """``PUT /api/workshop/{id}`` ``{"capacity": "<int>"}``; the id is looked up when sent."""
        if not _WORKSHOP_NAME.match(workshop_folder or ""):
            raise ValueError(f"not a workshop folder name: {workshop_folder!r}")
        return self._enqueue(
            session,
            f"workshop:{workshop_folder}",
            f"/api/workshop/{{{workshop_folder}}}",
            {"capacity": str(int(capacity))},
            operation_id,
        )

    # ------------------------------------------------------------------ database side (run in threads)

    def pending(self) -> int:
        """Callbacks not delivered yet (refused ones excluded)."""
        with self.store.session() as s:
            return s.scalar(select(func.count()).select_from(OutboxMessage).where(*_pending()))

    def _heads(self):
        """The oldest pending message of each key: (key, next_attempt, lease_owner, lease_expires), oldest first."""
        heads = (
            select(func.min(OutboxMessage.id).label("id")).where(*_pending()).group_by(OutboxMessage.key).subquery()
        )
        with self.store.session() as s:
            return s.execute(
                select(OutboxMessage.key, OutboxMessage.next_attempt, OutboxMessage.lease_owner, OutboxMessage.lease_expires)
                .join(heads, OutboxMessage.id == heads.c.id)
                .order_by(OutboxMessage.id)
            ).all()

    def _due_keys(self) -> list[str]:
        now = utcnow()
        return [
            key
            for key, next_attempt, owner, expires in self._heads()
            if next_attempt <= now and not _lease_held(owner, expires, now)
        ]

    def _next_due_in(self):
        """Seconds until some head becomes due, or None when nothing is pending."""
        now = utcnow()
        times = [max(n, e) if _lease_held(o, e, now) else n for _, n, o, e in self._heads()]
        if not times:
            return None
        return (min(times) - utcnow()).total_seconds()

    def _claim_head(self, key: str):
        now = utcnow()
        m = OutboxMessage
        # Core statements throughout: plain rows, no ORM identity map to fill and keep in sync.
        with self.store.engine.connect() as conn:
            head = conn.execute(
                select(m.id, m.key, m.method, m.path, m.body, m.attempts, m.next_attempt, m.lease_owner, m.lease_expires)
                .where(m.key == key, *_pending())
                .order_by(m.id)
                .limit(1)
            ).first()
            if head is None or head.next_attempt > now or _lease_held(head.lease_owner, head.lease_expires, now):
                return None
            message = _Message(head.id, head.key, head.method, head.path, dict(head.body), head.attempts)
            # Taken over only from the holder seen dead just now: if it changed since, someone else won.
            stale = head.lease_owner if head.lease_expires is not None and head.lease_expires > now else None
        free = [OutboxMessage.lease_expires.is_(None), OutboxMessage.lease_expires <= now]
        if stale is not None:
            free.append(OutboxMessage.lease_owner == stale)
        # A separate, write-first transaction: on SQLite a read that turns into
        # a write can fail at once instead of waiting for the lock.
        with self.store.engine.begin() as conn:
            claimed = conn.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.id == message.id,
                    *_pending(),
                    or_(*free),
                )
                .values(lease_owner=self.owner, lease_expires=now + self.lease)
            ).rowcount
        return message if claimed == 1 else None

    def _finish(self, message: _Message, **values):
        with self.store.engine.begin() as conn:
            conn.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == message.id, OutboxMessage.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires=None, **values)
            )

    def _mark_delivered(self, message: _Message):
        # Whoever holds the lease now, the portal has it: record that.
        with self.store.engine.begin() as conn:
            conn.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == message.id)
                .values(delivered=utcnow(), lease_owner=None, lease_expires=None)
            )

    def _backoff(self, attempts: int) -> float:
        ceiling = min(self.portal.retry_max, self.portal.retry_initial * 2 ** min(attempts - 1, 32))
        return random.uniform(ceiling / 2, ceiling)

    def _mark_retry(self, message: _Message, error: str):
        attempts = message.attempts + 1
        self._finish(
            message,
            attempts=attempts,
            next_attempt=utcnow() + datetime.timedelta(seconds=self._backoff(attempts)),
            last_error=error[:2000],
        )

    def _mark_failed(self, message: _Message, error: str):
        self._finish(message, attempts=message.attempts + 1, failed=utcnow(), last_error=error[:2000])

    def _prune(self):
        cutoff = utcnow() - datetime.timedelta(days=self.portal.retention_days)
        with self.store.session() as s:
            s.execute(
                delete(OutboxMessage).where(
                    or_(OutboxMessage.delivered < cutoff, OutboxMessage.failed < cutoff),
                )
            )

    # ------------------------------------------------------------------ delivery

    def _open(self, body: dict):
        """The body to send, with sealed values opened, and the secrets to scrub."""
        opened, secrets = {}, []
        for k, v in body.items():
            if isinstance(v, dict) and SEALED in v:
                try:
                    v = self.sealer.open(v[SEALED])
                except Exception:  # noqa: BLE001 - InvalidToken and malformed values alike
                    raise _Rejected(
                        f"the sealed {k!r} cannot be opened with this secret key (was c.Wod.secret_key changed?)"
                    ) from None
                secrets.append(v)
            opened[k] = v
        return opened, secrets

    async def _send(self, message: _Message) -> str:
        body, secrets = self._open(message.body)

        async def attempt():
            path = message.path
            m = _WORKSHOP_PATH.match(path)
            if not m:
                await self.client.call(message.method, path, body, secrets)
                return path
            folder = m.group("folder")
            path = "/api/workshop/" + quote(await self.client.workshop_id(folder), safe="")
            try:
                await self.client.call(message.method, path, body, secrets)
            except _Rejected:
                # Perhaps the portal renumbered its workshops: look again next time.
                self.client.forget_workshop(folder)
                raise
            return path

        try:
            return await within(attempt(), self.attempt_limit)
        except TimeoutError:
            raise _Transient(f"{message.method} {message.path}: no answer within {self.attempt_limit:g} s") from None

    async def _drain(self, key: str) -> int:
        """Send the due messages of one key in order; stop at the first that must wait."""
        delivered = 0
        while True:
            message = await asyncio.to_thread(self._claim_head, key)
            if message is None:
                return delivered
            try:
                path = await self._send(message)
            except asyncio.CancelledError:
                # Shutting down: let the next start (or another process) send it now.
                self._finish(message)
                raise
            except _Rejected as e:
                await asyncio.to_thread(self._mark_failed, message, str(e))
                self.log.warning(
                    "Portal refused callback #%d (%s %s %s) for good: %s. Dropped; the next callbacks of %s go on.",
                    message.id, message.method, message.path, _masked(message.body), e, key,
                )  # fmt: skip
                continue
            except _Transient as e:
                await asyncio.to_thread(self._mark_retry, message, str(e))
                if not self._unreachable:
                    self._unreachable = True
                    self.log.warning(
                        "Portal %s cannot take callbacks now (%s); they wait in the outbox and are retried with back-off.",
                        self.portal.url, e,
                    )  # fmt: skip
                else:
                    self.log.debug("Callback #%d of %s waits: %s", message.id, key, e)
                return delivered
            except Exception as e:  # noqa: BLE001 - a bug must not stop the student's queue for good
                self.log.exception("Unexpected error sending callback #%d of %s; it will be retried", message.id, key)
                await asyncio.to_thread(self._mark_retry, message, f"{type(e).__name__}: {e}")
                return delivered
            # Marked right after the 2xx: a crash in between resends this one
            # message once, which the portal's PUTs (set a field to a value) absorb.
            await asyncio.to_thread(self._mark_delivered, message)
            delivered += 1
            if self._unreachable:
                self._unreachable = False
                self.log.info("Portal %s takes callbacks again", self.portal.url)
            self.log.debug("Delivered callback #%d: %s %s", message.id, message.method, path)

    async def _pass(self):
        """One delivery pass: (delivered, errors)."""
        if not self.portal.enabled:
            return 0, 0
        keys = await asyncio.to_thread(self._due_keys)
        if not keys:
            return 0, 0
        gate = asyncio.Semaphore(self.portal.concurrency)

        async def one(key):
            async with gate:
                return await self._drain(key)

        results = await asyncio.gather(*(one(k) for k in keys), return_exceptions=True)
        errors = 0
        for key, result in zip(keys, results):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                errors += 1
                self.log.error("Delivering the callbacks of %s failed: %s: %s", key, type(result).__name__, result)
        return sum(r for r in results if isinstance(r, int)), errors

    async def deliver_once(self) -> int:
        """Deliver every callback due now, in order per key; how many were delivered."""
        delivered, _ = await self._pass()
        return delivered

    def notify(self) -> None:
        """Wake the delivery loop (after committing new callbacks); safe from any thread."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    async def run(self) -> None:
        """Deliver until cancelled; survives any error (logs it, backs off, goes on)."""
        if not self.portal.enabled:
            self.log.info("Portal callbacks are off (c.WodPortal.url is empty)")
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        failures = 0
        self.log.info("Delivering portal callbacks to %s", self.portal.url)
        try:
            while True:
                self._wake.clear()
                try:
                    _, errors = await self._pass()
                    if time.monotonic() - self._last_prune > 3600:
                        await asyncio.to_thread(self._prune)
                        self._last_prune = time.monotonic()
                    delay = await asyncio.to_thread(self._next_due_in)
                except Exception:  # noqa: BLE001 - the database may be briefly away
                    self.log.exception("Portal outbox: a delivery pass failed; trying again")
                    errors, delay = 1, None
                if errors:
                    failures += 1
                    wait = self._backoff(failures)
                else:
                    failures = 0
                    wait = self.portal.poll_interval if delay is None else min(max(delay, 0.01), self.portal.poll_interval)
                await nap(self._wake, wait)
        finally:
            self._wake = None
            self._loop = None

    async def close(self) -> None:
        """Close the HTTP connections (after cancelling :meth:`run`)."""
        await self.client.aclose()
