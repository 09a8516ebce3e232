"""The durable outbox of participant mails and its delivery loop to the smarthost."""

from __future__ import annotations

import asyncio
import datetime
import logging
import smtplib
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from ...store.models import MailMessage, utcnow
from ..outbox import LEASE_MARGIN, DeliveryLoop, OutboxQueue, Rejected, Transient, backoff
from .message import build_relay, make_message_id

_COLUMNS = (MailMessage.sender, MailMessage.recipient, MailMessage.subject, MailMessage.body,
            MailMessage.message_id, MailMessage.received)  # fmt: skip


def waiting():
    """The conditions of a participant mail still to deliver (the relay's queue; the status reads it too)."""
    return (MailMessage.kind == "relay", MailMessage.delivered.is_(None), MailMessage.failed.is_(None))


class Relay:
    """Participant mails: :meth:`enqueue` in the receiving transaction, :meth:`run` to deliver."""

    def __init__(self, store, settings, log=None, metrics=None):
        """``metrics``: told of each attempt's outcome (``mail_relay(outcome)``)."""
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.log = log or logging.getLogger("wod.mail")
        # An attempt (connect, TLS, login, send) is cut off by relay_timeout per step, well within the lease.
        self.queue = OutboxQueue(store, MailMessage, 4 * settings.relay_timeout + LEASE_MARGIN, columns=_COLUMNS)
        self.loop = DeliveryLoop(self.log)
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
        """Add a mail to relay to ``session`` (sent once it commits and :meth:`notify` wakes the loop)."""
        now = utcnow()
        row = MailMessage(
            kind="relay", key=recipient.lower()[:320], received_id=received_id, received=now, peer=peer, sender=sender,
            recipient=recipient, subject=subject, body=body, message_id=make_message_id(self.settings.hostname),
            attempts=0, next_attempt=now,
        )  # fmt: skip
        session.add(row)
        return row

    def notify(self) -> None:
        """Wake the delivery loop (after committing a new mail); safe from any thread."""
        self.loop.notify()

    def stats(self) -> dict:
        """The relay's counts for ``api/health``: pending, failed and delivered mails, the oldest pending one's time."""
        with self.store.Session() as s:
            count = lambda *where: s.scalar(select(func.count()).select_from(MailMessage).where(*where))  # noqa: E731
            return {
                "pending": count(*waiting()),
                "failed": count(MailMessage.kind == "relay", MailMessage.failed.is_not(None)),
                "delivered": count(MailMessage.kind == "relay", MailMessage.delivered.is_not(None)),
                "oldest_pending": s.scalar(select(func.min(MailMessage.received)).where(*waiting())),
            }

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
            raise Transient(f"the smarthost refused the login of {st.relay_username!r} ({e.smtp_code}); check c.WodMail.relay_username and password") from None
        except (OSError, smtplib.SMTPException, ssl.SSLError) as e:
            raise Transient(f"cannot reach the smarthost {st.relay}: {type(e).__name__}: {e}") from None
        return smtp

    def _send(self, smtp: smtplib.SMTP, row: MailMessage) -> None:
        sender = self.settings.relay_from or row.sender
        msg = build_relay(sender, row.recipient, row.subject, row.body, row.message_id, row.received)
        try:
            refused = smtp.send_message(msg, from_addr=row.sender, to_addrs=[row.recipient])
        except smtplib.SMTPRecipientsRefused as e:
            code, text = next(iter(e.recipients.values()))
            raise (Rejected if 500 <= code < 600 else Transient)(f"{code} {text.decode(errors='replace')}") from None
        except smtplib.SMTPResponseException as e:
            err = e.smtp_error.decode(errors="replace") if isinstance(e.smtp_error, bytes) else str(e.smtp_error)
            raise (Rejected if 500 <= e.smtp_code < 600 else Transient)(f"{e.smtp_code} {err}") from None
        except (OSError, smtplib.SMTPException) as e:
            raise Transient(f"{type(e).__name__}: {e}") from None
        if refused:
            raise Rejected(f"refused: {refused}")

    def deliver_due(self):
        """One pass (blocking): each due participant's mails in order, over one connection; (delivered, errors)."""
        delivered, smtp = 0, None
        try:
            for key in self.queue.due_keys():
                while True:
                    row = self.queue.claim_head(key)
                    if row is None:
                        break
                    try:
                        if smtp is None:
                            smtp = self._connect()
                        self._send(smtp, row)
                    except Rejected as e:
                        self.queue.failed(row, str(e))
                        self._count("failed")
                        self.log.warning("The smarthost refused mail #%d to %s for good: %s", row.id, row.recipient, e)
                        continue
                    except Transient as e:
                        self.queue.retry(row, str(e), backoff(row.attempts + 1, self.settings.retry_initial, self.settings.retry_max))
                        self._count("retried")
                        if self.last_error is None:
                            self.log.warning("Mail relay: %s; mails wait in the outbox and are retried", e)
                        self.last_error = str(e)
                        return delivered, 0  # the smarthost is away: the others wait too
                    # Marked right after the 250: a crash in between resends it once, with the same Message-ID.
                    self.queue.delivered(row)
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
        return delivered, 0

    # ------------------------------------------------------------------ the loop

    async def _pass(self):
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.deliver_due)

    async def run(self) -> None:
        """Deliver until cancelled; survives any error."""
        if not self.settings.relay_enabled:
            return
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="wod-relay")
        self.log.info("Relaying participant mails to %s", self.settings.relay)
        st = self.settings
        try:
            await self.loop.run(
                self._pass, next_due_in=self.queue.next_due_in, prune=lambda: self.queue.prune(st.retention_days),
                poll_interval=st.poll_interval, backoff=lambda n: backoff(n, st.retry_initial, st.retry_max),
                what="Mail relay",
            )  # fmt: skip
        finally:
            # A send in progress (a smarthost that does not answer holds it up to relay_timeout) is
            # left to its thread: the mail is marked sent or retried, here or at the next start.
            self._pool.shutdown(wait=False, cancel_futures=True)
