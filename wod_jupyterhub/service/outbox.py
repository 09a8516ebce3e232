"""The mechanics of a durable outbox, whatever it delivers and to whom."""

import asyncio
import datetime
import random
import time

from sqlalchemy import bindparam, delete, func, or_, select, update

from ..leases import make_owner, owner_alive_locally
from ..store.models import utcnow
from ..waiting import nap

#: tolerated clock difference between service hosts sharing a database
LEASE_MARGIN = 30.0


class Transient(Exception):
    """The receiver cannot take it now: keep the message and try later."""


class Rejected(Exception):
    """The receiver will never take this message."""


def lease_held(owner, expires, now) -> bool:
    """Whether a claim still stands: unexpired, and not held by a process of this host that is gone."""
    return expires is not None and expires > now and owner_alive_locally(owner or "") is not False


def backoff(attempts: int, initial: float, maximum: float) -> float:
    """Seconds to wait after ``attempts`` failures: doubling from ``initial`` up to ``maximum``, with jitter."""
    ceiling = min(maximum, initial * 2 ** min(attempts - 1, 32))
    return random.uniform(ceiling / 2, ceiling)


class OutboxQueue:
    """Pending messages of one outbox table: heads per key, claims with leases, and their outcome.

    Every method runs blocking database statements: call them in a thread
    from asyncio code. ``columns`` are what :meth:`claim_head` reads for the
    sender (``id`` and ``attempts`` are always read).
    """

    def __init__(self, store, table, lease_seconds: float, columns=()):
        self.store = store
        self.table = table
        self.owner = make_owner()
        self.lease = datetime.timedelta(seconds=lease_seconds)
        self.columns = [table.id, table.attempts] + [c for c in columns if c not in (table.id, table.attempts)]
        # The statements of every message's claim and delivery, built once (a statement caches its own cache key):
        # a burst's callbacks run them hundreds of times. Parameters are named b_*: a parameter named after a
        # column of the SET clause is refused, and a column's name in the parameters sets it.
        p, m = bindparam, table
        pending = self._pending()
        self._head = (
            select(*self.columns, m.next_attempt, m.lease_owner, m.lease_expires)
            .where(m.key == p("b_key"), *pending)
            .order_by(m.id)
            .limit(1)
        )
        free = (m.lease_expires.is_(None), m.lease_expires <= p("b_now"))
        claim = update(m).values(lease_owner=self.owner, lease_expires=p("b_expires"))
        self._claim = claim.where(m.id == p("b_id"), *pending, or_(*free))
        # Taken over only from the holder seen dead just now: if it changed since, someone else won.
        self._take_over = claim.where(m.id == p("b_id"), *pending, or_(*free, m.lease_owner == p("b_stale")))
        self._delivered = update(m).where(m.id == p("b_id")).values(lease_owner=None, lease_expires=None)
        # Every delivery pass reads the heads twice (what is due, when the next falls due).
        first = select(func.min(m.id).label("id")).where(*pending).group_by(m.key).subquery()
        self._heads = (
            select(m.key, m.next_attempt, m.lease_owner, m.lease_expires).join(first, m.id == first.c.id).order_by(m.id)
        )

    def _pending(self):
        return (self.table.delivered.is_(None), self.table.failed.is_(None))

    def pending(self) -> int:
        """Messages not delivered yet (refused ones excluded)."""
        with self.store.session() as s:
            return s.scalar(select(func.count()).select_from(self.table).where(*self._pending()))

    def heads(self):
        """The oldest pending message of each key: (key, next_attempt, lease_owner, lease_expires), oldest first."""
        with self.store.engine.connect() as conn:
            return conn.execute(self._heads).all()

    def due_keys(self) -> list[str]:
        """Keys whose head may be sent now."""
        now = utcnow()
        return [
            key
            for key, next_attempt, owner, expires in self.heads()
            if next_attempt <= now and not lease_held(owner, expires, now)
        ]

    def next_due_in(self):
        """Seconds until some head becomes due, or None when nothing is pending."""
        now = utcnow()
        times = [max(n, e) if lease_held(o, e, now) else n for _, n, o, e in self.heads()]
        if not times:
            return None
        return (min(times) - utcnow()).total_seconds()

    def claim_head(self, key: str, delivered=None):
        """The head of ``key`` leased to this process (a row of ``columns``), or None if it is not ours to send.

        ``delivered``: the message of ``key`` just sent, recorded delivered in
        the same write transaction (a key's messages go one after the other:
        one commit and one thread hop per message instead of two).
        """
        now = utcnow()
        # Core statements throughout: plain rows, no ORM identity map to fill and keep in sync.
        if delivered is not None:
            # Written first, so the transaction holds SQLite's write lock before it reads the next head.
            with self.store.engine.begin() as conn:
                conn.execute(self._delivered, {"b_id": delivered.id, "delivered": now})
                return self._lease(conn, conn.execute(self._head, {"b_key": key}).first(), now)
        with self.store.engine.connect() as conn:
            head = conn.execute(self._head, {"b_key": key}).first()
        if not self._free(head, now):
            return None
        # A separate, write-first transaction: on SQLite a read that turns into
        # a write can fail at once instead of waiting for the lock.
        with self.store.engine.begin() as conn:
            return self._lease(conn, head, now)

    @staticmethod
    def _free(head, now) -> bool:
        return head is not None and head.next_attempt <= now and not lease_held(head.lease_owner, head.lease_expires, now)

    def _lease(self, conn, head, now):
        """``head`` leased to this process in ``conn``'s transaction, or None (not due, or someone else's)."""
        if not self._free(head, now):
            return None
        stale = head.lease_owner if head.lease_expires is not None and head.lease_expires > now else None
        params = {"b_id": head.id, "b_now": now, "b_expires": now + self.lease, "b_stale": stale}
        claimed = conn.execute(self._claim if stale is None else self._take_over, params).rowcount
        return head if claimed == 1 else None

    def release(self, message, **values):
        """Give up our lease of ``message``, setting ``values`` with it (if we still hold it)."""
        with self.store.engine.begin() as conn:
            conn.execute(
                update(self.table)
                .where(self.table.id == message.id, self.table.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires=None, **values)
            )

    def delivered(self, message):
        """Record ``message`` as delivered, whoever holds its lease now: the receiver has it."""
        with self.store.engine.begin() as conn:
            conn.execute(self._delivered, {"b_id": message.id, "delivered": utcnow()})

    def retry(self, message, error: str, wait: float):
        """Try ``message`` again in ``wait`` seconds, noting why it failed."""
        self.release(
            message,
            attempts=message.attempts + 1,
            next_attempt=utcnow() + datetime.timedelta(seconds=wait),
            last_error=error[:2000],
        )

    def failed(self, message, error: str):
        """Refused for good: kept for the admin, no longer blocking its key."""
        self.release(message, attempts=message.attempts + 1, failed=utcnow(), last_error=error[:2000])

    def prune(self, days: float):
        """Delete delivered and refused messages older than ``days``."""
        cutoff = utcnow() - datetime.timedelta(days=days)
        with self.store.session() as s:
            s.execute(delete(self.table).where(or_(self.table.delivered < cutoff, self.table.failed < cutoff)))


class DeliveryLoop:
    """Runs delivery passes until cancelled: at once when notified, else when due or at each poll."""

    #: seconds between two prunes of old rows
    PRUNE_EVERY = 3600

    def __init__(self, log):
        self.log = log
        self._loop = None
        self._wake = None
        self._last_prune = 0.0

    def notify(self) -> None:
        """Wake the loop (after committing new messages); safe from any thread."""
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

    async def run(self, deliver, *, next_due_in, prune, poll_interval: float, backoff, what: str) -> None:
        """Loop until cancelled; survives any error (logs it, backs off, goes on).

        ``deliver()`` is a coroutine answering (delivered, errors); ``next_due_in``
        and ``prune`` are blocking (run in threads); ``backoff(failures)`` is the
        wait after that many failed passes in a row; ``what`` names the outbox in logs.
        """
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        failures = 0
        try:
            while True:
                self._wake.clear()
                try:
                    _, errors = await deliver()
                    if time.monotonic() - self._last_prune > self.PRUNE_EVERY:
                        await asyncio.to_thread(prune)
                        self._last_prune = time.monotonic()
                    delay = await asyncio.to_thread(next_due_in)
                except Exception:  # the database may be briefly away
                    self.log.exception("%s: a delivery pass failed; trying again", what)
                    errors, delay = 1, None
                if errors:
                    failures += 1
                    wait = backoff(failures)
                else:
                    failures = 0
                    wait = poll_interval if delay is None else min(max(delay, 0.01), poll_interval)
                await nap(self._wake, wait)
        finally:
            self._wake = None
            self._loop = None
