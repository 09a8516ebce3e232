"""Callbacks to the registration portal (the original api-db): what it is told, and its outbox."""

import asyncio
import logging
import os
import re
from types import SimpleNamespace
from urllib.parse import quote, urlsplit

from sqlalchemy import insert
from traitlets import Float, Integer, TraitError, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from ...store.models import OutboxMessage, utcnow
from ...waiting import within
from ...workshops.catalog import WORKSHOP_NAME
from ..outbox import LEASE_MARGIN, DeliveryLoop, OutboxQueue, Rejected, Transient, backoff
from .portalclient import PortalClient

SEALED = "$sealed"
#: a workshop callback waits with its folder in braces, resolved to the portal's id when sent
_WORKSHOP_PATH = re.compile(r"^/api/workshop/\{(?P<folder>[^{}/]+)\}$")
_ADD_MESSAGE = insert(OutboxMessage.__table__)


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
        """Whether a portal is set (``c.WodPortal.url``): without one no callback is queued."""
        return bool(self.url)


def _masked(body: dict) -> dict:
    """The body as it may be logged: sealed values shown as ``***``."""
    return {k: ("***" if isinstance(v, dict) and SEALED in v else v) for k, v in body.items()}


class PortalCallbacks:
    """Durable portal callbacks: builders that enqueue, and the loop that delivers."""

    def __init__(self, store, sealer, portal: WodPortal, wod, log=None):
        self.store = store
        self.sealer = sealer
        self.portal = portal
        self.wod = wod
        self.log = log or logging.getLogger("wod.portal")
        if portal.enabled and sealer is None:
            raise ValueError("PortalCallbacks needs a Sealer when WodPortal.url is set: passwords wait sealed")
        self.client = PortalClient(portal, self.log)
        # Every attempt (login, workshop lookup, request, re-login, retry) ends
        # before its lease does, so no two processes ever hold one message.
        self.attempt_limit = 3 * portal.timeout
        m = OutboxMessage
        self.queue = OutboxQueue(store, m, self.attempt_limit + LEASE_MARGIN, columns=(m.key, m.method, m.path, m.body))
        self.owner = self.queue.owner
        self.delivery = DeliveryLoop(self.log)
        self._unreachable = False

    # ------------------------------------------------------------------ builders

    def _enqueue(self, conn, key, path, body, operation_id):
        """Add the message in the transaction of ``conn`` (a Core connection or a session); its values (``.key``, …)."""
        if not self.portal.enabled:
            return None
        values = dict(
            key=key, operation_id=operation_id, method="PUT", path=path, body=body, attempts=0, next_attempt=utcnow()
        )
        # A Core INSERT built once: the verbs' steps enqueue two to four messages per operation. What is
        # returned is a plain namespace: an ORM object would cost a third of the INSERT itself.
        conn.execute(_ADD_MESSAGE, values)
        return SimpleNamespace(**values)

    def _student(self, n: int):
        n = int(n)
        return f"student:{n}", f"/api/student/{n + self.wod.base_student_id}"

    @staticmethod
    def _customer_path(customer) -> str:
        customer = str(customer if customer is not None else "").strip()
        if not customer:
            raise ValueError("a customer callback needs the portal's customer id")
        return "/api/customer/" + quote(customer, safe="")

    def student_password(self, conn, n, password, operation_id=None):
        """``PUT /api/student/{n+base}`` ``{"password": pw}``; the password waits sealed."""
        if not self.portal.enabled:
            return None
        key, path = self._student(n)
        return self._enqueue(conn, key, path, {"password": {SEALED: self.sealer.seal(password)}}, operation_id)

    def student_assigned(self, conn, n, assigned: bool, operation_id=None):
        """Queue, in ``conn``'s transaction, the portal's note that seat ``n`` is given (or given back)."""
        key, path = self._student(n)
        return self._enqueue(conn, key, path, {"assigned": "true" if assigned else "false"}, operation_id)

    def customer_active(self, conn, n, customer, active: bool, operation_id=None):
        """Queue the note that ``customer``'s workshop on seat ``n`` is open (or closed)."""
        key, _ = self._student(n)
        return self._enqueue(conn, key, self._customer_path(customer), {"active": "true" if active else "false"}, operation_id)

    def customer_completion(self, conn, n, customer, percent: int, operation_id=None):
        """Queue ``customer``'s completion (whole percent) measured on seat ``n``."""
        key, _ = self._student(n)
        body = {"completionPercentage": str(int(percent))}
        return self._enqueue(conn, key, self._customer_path(customer), body, operation_id)

    def customer_cleaned(self, conn, n, customer, operation_id=None):
        """Queue the note that ``customer``'s seat ``n`` was cleaned up."""
        key, _ = self._student(n)
        return self._enqueue(conn, key, self._customer_path(customer), {"cleaned": "true"}, operation_id)

    def workshop_capacity(self, conn, workshop_folder, capacity: int, operation_id=None):
        """``PUT /api/workshop/{id}`` ``{"capacity": "<int>"}``; the id is looked up when sent."""
        if not WORKSHOP_NAME.fullmatch(workshop_folder or ""):
            raise ValueError(f"not a workshop folder name: {workshop_folder!r}")
        return self._enqueue(
            conn,
            f"workshop:{workshop_folder}",
            f"/api/workshop/{{{workshop_folder}}}",
            {"capacity": str(int(capacity))},
            operation_id,
        )

    def pending(self) -> int:
        """Callbacks not delivered yet (refused ones excluded)."""
        return self.queue.pending()

    def _backoff(self, attempts: int) -> float:
        return backoff(attempts, self.portal.retry_initial, self.portal.retry_max)

    # ------------------------------------------------------------------ delivery

    def _open(self, body: dict):
        """The body to send, with sealed values opened, and the secrets to scrub."""
        opened, secrets = {}, []
        for k, v in body.items():
            if isinstance(v, dict) and SEALED in v:
                try:
                    v = self.sealer.open(v[SEALED])
                except Exception:  # InvalidToken and malformed values alike
                    raise Rejected(
                        f"the sealed {k!r} cannot be opened with this secret key (was c.Wod.secret_key changed?)"
                    ) from None
                secrets.append(v)
            opened[k] = v
        return opened, secrets

    async def _send(self, message) -> str:
        body, secrets = self._open(message.body)

        async def attempt():
            path = message.path
            m = _WORKSHOP_PATH.fullmatch(path)
            if not m:
                await self.client.call(message.method, path, body, secrets)
                return path
            folder = m.group("folder")
            path = "/api/workshop/" + quote(await self.client.workshop_id(folder), safe="")
            try:
                await self.client.call(message.method, path, body, secrets)
            except Rejected:
                # Perhaps the portal renumbered its workshops: look again next time.
                self.client.forget_workshop(folder)
                raise
            return path

        try:
            return await within(attempt(), self.attempt_limit)
        except TimeoutError:
            raise Transient(f"{message.method} {message.path}: no answer within {self.attempt_limit:g} s") from None

    async def _drain(self, key: str) -> int:
        """Send the due messages of one key in order; stop at the first that must wait."""
        delivered, sent, sent_to = 0, None, None
        while True:
            # Marked delivered right after the 2xx, with the next message's claim: a crash in between resends
            # that one message once, which the portal's PUTs (set a field to a value) absorb.
            message = await asyncio.to_thread(self.queue.claim_head, key, sent)
            if sent is not None:
                delivered += 1
                if self._unreachable:
                    self._unreachable = False
                    self.log.info("Portal %s takes callbacks again", self.portal.url)
                self.log.debug("Delivered callback #%d: %s %s", sent.id, sent.method, sent_to)
            sent = None
            if message is None:
                return delivered
            try:
                sent_to = await self._send(message)
            except asyncio.CancelledError:
                # Shutting down: let the next start (or another process) send it now.
                self.queue.release(message)
                raise
            except Rejected as e:
                await asyncio.to_thread(self.queue.failed, message, str(e))
                self.log.warning(
                    "Portal refused callback #%d (%s %s %s) for good: %s. Dropped; the next callbacks of %s go on.",
                    message.id, message.method, message.path, _masked(message.body), e, key,
                )  # fmt: skip
                continue
            except Transient as e:
                await asyncio.to_thread(self.queue.retry, message, str(e), self._backoff(message.attempts + 1))
                if not self._unreachable:
                    self._unreachable = True
                    self.log.warning(
                        "Portal %s cannot take callbacks now (%s); they wait in the outbox and are retried with back-off.",
                        self.portal.url, e,
                    )  # fmt: skip
                else:
                    self.log.debug("Callback #%d of %s waits: %s", message.id, key, e)
                return delivered
            except Exception as e:  # a bug must not stop the student's queue for good
                self.log.exception("Unexpected error sending callback #%d of %s; it will be retried", message.id, key)
                await asyncio.to_thread(self.queue.retry, message, f"{type(e).__name__}: {e}", self._backoff(message.attempts + 1))
                return delivered
            sent = message

    async def _pass(self):
        """One delivery pass: (delivered, errors)."""
        if not self.portal.enabled:
            return 0, 0
        keys = await asyncio.to_thread(self.queue.due_keys)
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
        self.delivery.notify()

    async def run(self) -> None:
        """Deliver until cancelled; survives any error (logs it, backs off, goes on)."""
        if not self.portal.enabled:
            self.log.info("Portal callbacks are off (c.WodPortal.url is empty)")
            return
        self.log.info("Delivering portal callbacks to %s", self.portal.url)
        await self.delivery.run(
            self._pass,
            next_due_in=self.queue.next_due_in,
            prune=lambda: self.queue.prune(self.portal.retention_days),
            poll_interval=self.portal.poll_interval,
            backoff=self._backoff,
            what="Portal outbox",
        )

    async def close(self) -> None:
        """Close the HTTP connections (after cancelling :meth:`run`)."""
        await self.client.aclose()
