"""The durable outbox of participant mails and its delivery loop to the smarthost.

The portal's mails to participants (welcome, credentials, reminders) are
written to ``wod_mail`` (kind ``relay``) before the listener says 250, and
sent from there, so a smarthost that is down loses nothing:

* **Retried with back-off.** Connection errors, timeouts, 4xx answers and a
  refused login keep the mail (exponential back-off with jitter, up to
  ``WodMail.retry_max``); a 5xx answer to the mail itself marks it failed
  for good, logged and kept for the admin.
* **Once.** A process claims a mail with a lease before sending (the same
  conditional UPDATE as the portal callbacks, so several processes on one
  database never send one mail at once) and marks it delivered right after
  the smarthost's 250. A crash in between sends it once more, with the same
  Message-ID, which receiving systems use to drop the copy.
* **A proper message.** Rebuilt from what the portal meant: From, To,
  Subject, Date, Message-ID and the body as UTF-8 text
  (:func:`..message.build_relay`).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import smtplib
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import delete, func, or_, select, update

from ..owners import make_owner
from ..portal import LEASE_MARGIN, _lease_held
from ..store import MailMessage, utcnow
from ..waiting import nap
from .message import build_relay, make_message_id


class _Transient(Exception):
    """The smarthost cannot take it now."""


class _Rejected(Exception):
    """The smarthost will never take this mail."""


def _pending(kind="relay"):
    return (MailMessage.kind == kind, MailMessage.delivered.is_(None), MailMessage.failed.is_(None))


class Relay:
    """Participant mails: :meth:`enqueue` in the receiving transaction, :meth:`run` to deliver."""

    def __init__(self, store, settings, log=None, metrics=None):
        """``metrics``: told of each attempt's outcome (``mail_relay(outcome)``)."""
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.log = log or logging.getLogger("wod.mail")
        self.owner = make_owner()
        self.lease = datetime.timedelta(seconds=3 * settings.relay_timeout + LEASE_MARGIN)
        self._wake: asyncio.Event | None = None
        self._loop = None
        self._last_prune = 0.0
        # For api/health: the outcome of the last attempt to reach the smarthost.
        self.last_error: str | None = None
        self.last_success: datetime.datetime | None = None
        self.counts = {"relayed": 0, "retried": 0, "failed": 0}
        self._pool = None

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        if self.metrics is not None:
            self.metrics.mail_relay(outcome)

    # ------------------------------------------------------------------ enqueue

    def enqueue(self, session, *, sender, recipient, subject, body, peer=None, received_id=None) -> MailMessage:
        now = utcnow()
        row = MailMessage(
            kind="relay", received_id=received_id, received=now, peer=peer, sender=sender, recipient=recipient,
            subject=subject, body=body, message_id=make_message_id(self.settings.hostname),
            attempts=0, next_attempt=now,
        )  # fmt: skip
        session.add(row)
        return row

    # ------------------------------------------------------------------ database side (threads)

    def stats(self) -> dict:
        with self.store.Session() as s:
            count = lambda *where: s.scalar(select(func.count()).select_from(MailMessage).where(*where))  # noqa: E731
            oldest = s.scalar(select(func.min(MailMessage.received)).where(*_pending()))
            return {
                "pending": count(*_pending()),
                "failed": count(MailMessage.kind == "relay", MailMessage.failed.is_not(None)),
                "delivered": count(MailMessage.kind == "relay", MailMessage.delivered.is_not(None)),
                "oldest_pending": oldest,
            }

    def _claim(self):
        """The oldest due mail, leased to this process; None when none is due."""
        now = utcnow()
        m = MailMessage
        with self.store.Session() as s:
            rows = s.execute(
                select(m.id, m.lease_owner, m.lease_expires)
                .where(*_pending(), m.next_attempt <= now)
                .order_by(m.next_attempt, m.id)
                .limit(16)
            ).all()
        for row in rows:
            if _lease_held(row.lease_owner, row.lease_expires, now):
                continue
            free = [m.lease_expires.is_(None), m.lease_expires <= now]
            if row.lease_owner is not None and row.lease_expires is not None and row.lease_expires > now:
                free.append(m.lease_owner == row.lease_owner)  # a dead local holder's lease
            with self.store.engine.begin() as conn:
                got = conn.execute(
                    update(m).where(m.id == row.id, *_pending(), or_(*free))
                    .values(lease_owner=self.owner, lease_expires=now + self.lease)
                ).rowcount  # fmt: skip
            if got == 1:
                with self.store.Session() as s:
                    return s.get(m, row.id)
        return None

    def _finish(self, mail_id: int, **values):
        with self.store.engine.begin() as conn:
            conn.execute(
                update(MailMessage).where(MailMessage.id == mail_id).values(lease_owner=None, lease_expires=None, **values)
            )

    def _backoff(self, attempts: int) -> float:
        ceiling = min(self.settings.retry_max, self.settings.retry_initial * 2 ** min(attempts - 1, 32))
        return random.uniform(ceiling / 2, ceiling)

    def _next_due_in(self):
        with self.store.Session() as s:
            due = s.scalar(select(func.min(MailMessage.next_attempt)).where(*_pending()))
        return None if due is None else (due - utcnow()).total_seconds()

    def _prune(self):
        cutoff = utcnow() - datetime.timedelta(days=self.settings.retention_days)
        with self.store.session() as s:
            s.execute(delete(MailMessage).where(or_(MailMessage.delivered < cutoff, MailMessage.failed < cutoff)))
            # Verb mails are kept as long as the relayed ones: they are the record of what the portal asked.
            s.execute(delete(MailMessage).where(MailMessage.kind == "verb", MailMessage.received < cutoff))

    # ------------------------------------------------------------------ sending (a thread)

    def _connect(self) -> smtplib.SMTP:
        st = self.settings
        host, port = st.relay_address
        try:
            if st.relay_ssl:
                smtp = smtplib.SMTP_SSL(host, port, local_hostname=st.hostname, timeout=st.relay_timeout,
                                        context=ssl.create_default_context())  # fmt: skip
            else:
                smtp = smtplib.SMTP(host, port, local_hostname=st.hostname, timeout=st.relay_timeout)
                if st.relay_starttls:
                    smtp.starttls(context=ssl.create_default_context())
            if st.relay_username:
                smtp.login(st.relay_username, st.relay_password)
        except smtplib.SMTPAuthenticationError as e:
            raise _Transient(f"the smarthost refused the login of {st.relay_username!r} ({e.smtp_code}); check c.WodMail.relay_username and password") from None
        except (OSError, smtplib.SMTPException, ssl.SSLError) as e:
            raise _Transient(f"cannot reach the smarthost {st.relay}: {type(e).__name__}: {e}") from None
        return smtp

    def _send(self, smtp: smtplib.SMTP, row: MailMessage) -> None:
        sender = self.settings.relay_from or row.sender
        msg = build_relay(sender, row.recipient, row.subject, row.body, row.message_id, row.received)
        try:
            refused = smtp.send_message(msg, from_addr=row.sender, to_addrs=[row.recipient])
        except smtplib.SMTPRecipientsRefused as e:
            code, text = next(iter(e.recipients.values()))
            raise (_Rejected if 500 <= code < 600 else _Transient)(f"{code} {text.decode(errors='replace')}") from None
        except smtplib.SMTPResponseException as e:
            err = e.smtp_error.decode(errors="replace") if isinstance(e.smtp_error, bytes) else str(e.smtp_error)
            raise (_Rejected if 500 <= e.smtp_code < 600 else _Transient)(f"{e.smtp_code} {err}") from None
        except (OSError, smtplib.SMTPException) as e:
            raise _Transient(f"{type(e).__name__}: {e}") from None
        if refused:
            raise _Rejected(f"refused: {refused}")

    def deliver_due(self, limit: int = 100) -> int:
        """Send the due mails over one connection (blocking); how many were delivered."""
        delivered = 0
        smtp = None
        try:
            for _ in range(limit):
                row = self._claim()
                if row is None:
                    break
                try:
                    if smtp is None:
                        smtp = self._connect()
                    self._send(smtp, row)
                except _Rejected as e:
                    self._finish(row.id, attempts=row.attempts + 1, failed=utcnow(), last_error=str(e)[:2000])
                    self._count("failed")
                    self.log.warning("The smarthost refused mail #%d to %s for good: %s", row.id, row.recipient, e)
                    continue
                except _Transient as e:
                    attempts = row.attempts + 1
                    wait = self._backoff(attempts)
                    self._finish(
                        row.id, attempts=attempts, last_error=str(e)[:2000],
                        next_attempt=utcnow() + datetime.timedelta(seconds=wait),
                    )  # fmt: skip
                    self._count("retried")
                    if self.last_error is None:
                        self.log.warning("Mail relay: %s; mails wait in the outbox and are retried", e)
                    self.last_error = str(e)
                    break
                # Marked right after the 250: a crash in between resends it once, with the same Message-ID.
                self._finish(row.id, delivered=utcnow(), attempts=row.attempts + 1, last_error=None)
                delivered += 1
                self._count("relayed")
                if self.last_error is not None:
                    self.log.info("Mail relay: the smarthost %s takes mail again", self.settings.relay)
                self.last_error = None
                self.last_success = utcnow()
                self.log.info("Relayed mail #%d to %s (%s)", row.id, row.recipient, row.message_id)
        finally:
            if smtp is not None:
                try:
                    smtp.quit()
                except (OSError, smtplib.SMTPException, socket.timeout):
                    pass
        return delivered

    # ------------------------------------------------------------------ the loop

    def notify(self) -> None:
        """Wake the delivery loop (after committing a new mail); safe from any thread."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    async def run(self) -> None:
        """Deliver until cancelled; survives any error."""
        if not self.settings.relay_enabled:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        # Its own thread, not the loop's default executor: asyncio.run waits for that one at exit.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="wod-relay")
        self.log.info("Relaying participant mails to %s", self.settings.relay)
        try:
            while True:
                self._wake.clear()
                try:
                    await self._in_thread(self.deliver_due)
                    if time.monotonic() - self._last_prune > 3600:
                        await self._in_thread(self._prune)
                        self._last_prune = time.monotonic()
                    due = await self._in_thread(self._next_due_in)
                except Exception:  # noqa: BLE001 - the database may be away for a moment
                    self.log.exception("Mail relay: a delivery pass failed; trying again")
                    due = None
                wait = self.settings.poll_interval if due is None else min(max(due, 0.01), self.settings.poll_interval)
                await nap(self._wake, wait)
        finally:
            self._wake = None
            self._loop = None
            # A send in progress (a smarthost that does not answer holds it up to relay_timeout) is
            # left to its thread: the mail is marked sent or retried, here or at the next start.
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _in_thread(self, fn):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
