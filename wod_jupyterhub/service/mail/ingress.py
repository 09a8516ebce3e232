"""What a received mail becomes: an operation, a mail to relay, or a refusal (a log line and a metric)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ...errors import Conflict, Unprocessable, WodError
from ...store.models import MailMessage, Operation, Seat, SeatState, Status, utcnow
from ...workshops.catalog import parse_workshop_name
from .message import PROMISE, parse_message, parse_verb

MAX_RECIPIENTS = 100
# What a relayed mail may be addressed to: no SMTP specials, a plain host name.
_RECIPIENT = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253}[A-Za-z0-9])?$")


@dataclass
class Reply:
    """An SMTP reply: its code and its text (what the listener says and ``wod mail`` prints)."""
    code: int
    text: str

    @property
    def ok(self) -> bool:
        """Whether the mail was taken (a code below 400)."""
        return self.code < 400

    def __str__(self):
        return f"{self.code} {self.text}"


OK = Reply(250, "2.0.0 Ok")


@dataclass
class Envelope:
    """One SMTP transaction as it arrives: the peer, the sender, the accepted recipients and what kind of mail they make it."""
    peer: str | None = None
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)
    kind: str | None = None  # "verb" or "relay", fixed by the first accepted recipient


class Ingress:
    """Judges and stores received mail; shared by the listener and ``wod mail``."""

    def __init__(self, settings, wod, store, relay=None, submit=None, log=None, metrics=None, holding=None):
        """``submit``: the engine's ``async submit(verb, student, student_last, customer=, email=, workshop=)``;
        ``holding``: the engine's ``holding(n)``, who holds a seat (the rule the REST admission uses too).

        ``metrics``: told of each event (``mail_received(kind)``, ``mail_refused(reason)``,
        ``mail_duplicate()``), as the metrics module's counters want it.
        """
        self.settings = settings
        self.wod = wod
        self.store = store
        self.relay = relay
        self.submit = submit
        self.holding = holding
        self.log = log or logging.getLogger("wod.mail")
        self.metrics = metrics
        self.received = Counter()  # kind -> mails accepted
        self.refused = Counter()  # reason -> mails or connections refused
        self.duplicates = 0

    def _count(self, event: str, label: str | None = None) -> None:
        """One event: ``received`` (kind), ``refused`` (reason) or ``duplicate``."""
        if event == "received":
            self.received[label] += 1
        elif event == "refused":
            self.refused[label] += 1
        else:
            self.duplicates += 1
        if self.metrics is not None:
            hook = getattr(self.metrics, f"mail_{event}")
            hook() if label is None else hook(label)

    def refuse(self, reason: str, code: int, text: str, detail: str = "") -> Reply:
        """Count and log a refusal for ``reason``; the reply that says it."""
        self._count("refused", reason)
        self.log.warning("Mail refused (%s): %s%s", reason, text, f" [{detail}]" if detail else "")
        return Reply(code, text)

    # ------------------------------------------------------------------ the dialog's steps

    def check_source(self, peer: str | None, student: str | None = None) -> Reply | None:
        """The refusal of a client by its address, or as a seat's process (``student``: why, from ``local_peers``)."""
        if student is not None:
            return self.refuse("source", 554, "5.7.1 This address may not send mail here.", student)
        if peer is not None and not self.settings.source_allowed(peer):
            return self.refuse("source", 554, "5.7.1 This address may not send mail here.", f"client {peer}")
        return None

    def check_sender(self, envelope: Envelope, sender: str) -> Reply:
        """OK for the portal's sender, else the refusal."""
        if not self.settings.is_sender(sender):
            return self.refuse(
                "sender", 550, f"5.7.1 Sender <{sender[:200]}> is not accepted here.", f"client {envelope.peer}"
            )
        return OK

    def check_recipient(self, envelope: Envelope, recipient: str) -> Reply:
        """OK for the verbs' address or a participant's one (when relaying is on), else the refusal."""
        if not (_RECIPIENT.match(recipient) or self.settings.is_verb_recipient(recipient)):
            return self.refuse("recipient", 550, f"5.1.3 Bad recipient address <{recipient[:200]}>.")
        kind = "verb" if self.settings.is_verb_recipient(recipient) else "relay"
        if kind == "relay" and not self.settings.relay_enabled:
            return self.refuse("relay_off", 550, "5.7.1 Relaying is not configured here (c.WodMail.relay).", recipient)
        if envelope.kind is not None and envelope.kind != kind:
            return self.refuse("recipient", 452, "4.5.3 Send verb mails and participant mails separately.")
        if len(envelope.recipients) >= (1 if kind == "verb" else MAX_RECIPIENTS):
            return self.refuse("recipient", 452, "4.5.3 Too many recipients.")
        envelope.kind = kind
        return OK

    # ------------------------------------------------------------------ the message

    async def deliver(self, envelope: Envelope, data: bytes) -> Reply:
        """Act on a whole message whose envelope passed the checks; the reply the client gets."""
        try:
            message = parse_message(data)
        except Exception as e:  # the email package raises assorted errors on garbage
            return self.refuse("syntax", 554, "5.6.0 The message cannot be read.", f"{type(e).__name__}: {e}")
        try:
            if envelope.kind == "verb":
                return await self._verb(envelope, message)
            # A commit per mail: in a thread, so that the listener keeps serving meanwhile.
            return await asyncio.to_thread(self._relay, envelope, message)
        except SQLAlchemyError as e:
            # Nothing was stored, so nothing may be accepted: the client (or postfix) tries again.
            self.log.error("Mail from %s could not be stored: %s", envelope.sender, e)
            self._count("refused", "storage")
            return Reply(451, "4.3.0 The mail could not be stored; try again later.")

    def _relay(self, envelope: Envelope, message) -> Reply:
        rows = []
        try:
            with self.store.session() as s:
                for rcpt in envelope.recipients:
                    received_id = f"{message.message_id} {rcpt}"[:255] if message.message_id else None
                    rows.append(
                        self.relay.enqueue(
                            s, sender=envelope.sender, recipient=rcpt, subject=message.subject, body=message.body,
                            peer=envelope.peer, received_id=received_id,
                        )
                    )  # fmt: skip
        except IntegrityError:
            self._count("duplicate")
            self.log.info("Mail %s from %s was received before; not relayed again", message.message_id, envelope.sender)
            return Reply(250, "2.0.0 Ok: received before")
        self._count("received", "relay")
        self.relay.notify()
        self.log.info(
            "Participant mail #%s to %s queued for the relay (%d characters)",
            ",".join(str(r.id) for r in rows), ", ".join(envelope.recipients), len(message.body),
        )  # fmt: skip
        return Reply(250, f"2.0.0 Ok: queued as {rows[0].id}")

    # ------------------------------------------------------------------ verbs

    async def _verb(self, envelope: Envelope, message) -> Reply:
        subject = message.subject
        try:
            mail = parse_verb(subject, message.body)
        except WodError as e:
            return self.refuse("subject", 550, f"5.6.0 {e.message}")
        if message.message_id and self._seen(message.message_id):
            self._count("duplicate")
            self.log.info("Verb mail %s (%s) was received before; not run again", message.message_id, subject)
            return Reply(250, "2.0.0 Ok: received before")
        base = self.wod.base_student_id
        try:
            first, last = self._students(mail, base)
            duplicate = self._duplicate(mail.verb, first, last, mail.customer)
        except WodError as e:
            return self.refuse(_reason(e), 550, f"5.7.1 {e.message}", subject)
        if duplicate is not None:
            self._count("duplicate")
            self.log.info("Verb mail %r repeats operation %s; not run again", subject, duplicate)
            return Reply(250, f"2.0.0 Ok: already operation {duplicate}")
        workshop = mail.workshop if mail.verb in ("CREATE", "RESET") else _named_workshop(mail.workshop)
        if mail.verb in ("CREATE", "RESET") and not workshop:
            return self.refuse("workshop", 550, f"5.6.0 {mail.verb} needs the workshop folder on the body's first line.", subject)
        if self.submit is None:
            return self.refuse("off", 451, "4.3.0 Verb mails are not taken here.")
        try:
            op = await self.submit(
                mail.verb, first, last if last != first else None, customer=mail.customer, email=mail.email, workshop=workshop
            )
        except WodError as e:
            return self.refuse(_reason(e), 550, f"5.7.1 {e.message}", subject)
        if getattr(op, "repeat", False):
            self._count("duplicate")
            self.log.info("Verb mail %r repeats operation %s; not run again", subject, op.id)
            return Reply(250, f"2.0.0 Ok: already operation {op.id}")
        self._count("received", "verb")
        self._record(envelope, message, op.id)
        self.log.info("Verb mail %r from %s became operation %s", subject, envelope.sender, op.id)
        return Reply(250, f"2.0.0 Ok: operation {op.id}")

    def _seen(self, received_id: str) -> bool:
        with self.store.Session() as s:
            return s.scalar(select(func.count()).select_from(MailMessage).where(MailMessage.received_id == received_id)) > 0

    def _record(self, envelope: Envelope, message, op_id: str) -> None:
        # The operation is the durable part; this row is the record of the mail (and its Message-ID).
        try:
            with self.store.session() as s:
                s.add(
                    MailMessage(
                        kind="verb", received_id=message.message_id, received=utcnow(), peer=envelope.peer,
                        sender=envelope.sender, recipient=envelope.recipients[0], subject=message.subject,
                        body=message.body[:10000], operation_id=op_id, next_attempt=utcnow(), delivered=utcnow(),
                    )
                )  # fmt: skip
        except SQLAlchemyError as e:
            self.log.warning("Recording verb mail %r failed (its operation %s is queued): %s", message.subject, op_id, e)

    def _students(self, mail, base: int) -> tuple[int, int]:
        """This backend's student numbers from the portal's; ``[object Promise]`` from the customer's seat."""
        if mail.student is None:
            n = self.seat_of(mail.customer)
            if n is None:
                raise Unprocessable(
                    f"{mail.verb} {PROMISE}: customer {mail.customer} holds no seat and never held one.",
                    code="student_out_of_range",
                )
            return n, n
        first = mail.student - base
        last = (mail.student_last if mail.student_last is not None else mail.student) - base
        return first, last

    def seat_of(self, customer: str) -> int | None:
        """The seat ``customer`` holds, else the one they held last (their latest operation's)."""
        with self.store.Session() as s:
            held = s.scalar(
                select(Seat.number).where(Seat.customer == customer, Seat.state.in_(SeatState.HELD)).limit(1)
            )
            if held is not None:
                return held
            return s.scalar(
                select(Operation.student)
                .where(Operation.customer == customer, Operation.student.is_not(None), Operation.student_last.is_(None))
                .order_by(Operation.created.desc(), Operation.id.desc())
                .limit(1)
            )

    def _duplicate(self, verb: str, first: int, last: int, customer: str) -> str | None:
        """The operation this verb repeats (not to run again), or None; Conflict when it is stale."""
        with self.store.Session() as s:
            touching = (
                Operation.student <= last,
                func.coalesce(Operation.student_last, Operation.student) >= first,
                Operation.status != Status.FAILED,
            )
            if verb == "RESET":
                latest = s.execute(
                    select(Operation.id, Operation.verb, Operation.student, Operation.student_last, Operation.customer)
                    .where(*touching)
                    .order_by(Operation.created.desc(), Operation.id.desc())
                    .limit(1)
                ).first()
                same = (
                    latest is not None and latest.verb == "RESET" and latest.student == first
                    and (latest.student_last if latest.student_last is not None else latest.student) == last
                    and latest.customer == customer
                )  # fmt: skip
                if same:
                    return latest.id
            else:
                # Customer ids name one registration each: a (verb, seat, customer) seen before is this mail again.
                earlier = s.scalar(
                    select(Operation.id)
                    .where(Operation.verb == verb, Operation.student == first, Operation.customer == customer, *touching)
                    .order_by(Operation.created.desc())
                    .limit(1)
                )
                if earlier is not None:
                    return earlier
            if verb in ("PURGE", "RESET") and first == last and self.holding is not None:
                seat = self.holding(first)
                holder = seat.customer if seat.held else None
                if holder is not None and holder != customer:
                    raise Conflict(
                        # Never the holder's id: whoever sent the mail must not learn whom to name next.
                        f"{verb} for customer {customer}, but student {first} is now held by another customer:"
                        " the mail is stale and would take the seat from its holder."
                    )
        return None


def _named_workshop(line: str | None) -> str | None:
    """The workshop a CLEANUP or PURGE mail names on its body's first line, if that line is one.

    A named workshop the seat does not hold is refused (the admission's 409); a body without one names none.
    """
    try:
        parse_workshop_name(line)
    except WodError:
        return None
    return line


def _reason(e: WodError) -> str:
    """The metric label of a refused verb."""
    code = getattr(e, "code", "")
    if code in ("no_workshop", "bad_workshop"):
        return "workshop"
    if code in ("student_out_of_range", "bad_student"):
        return "student"
    if e.status == 409:
        return "conflict"
    message = e.message.lower()
    if "workshop" in message:
        return "workshop"
    if "student" in message:
        return "student"
    return "invalid"
