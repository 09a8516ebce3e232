"""Pure parsing and building of mails: no I/O, no database."""

from __future__ import annotations

import datetime
import email
import email.policy
import email.utils
import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import EmailMessage

from ...errors import BadRequest
from ..fields import printable

#: a header line: a field name (printable ASCII but ':' and space) and a colon
_HEADER = re.compile(rb"^[!-9;-~]+:")
_MIME_HEADERS = {b"content-type", b"content-transfer-encoding", b"mime-version"}

PROMISE = "[object Promise]"
# The portal's subjects; RESET and PURGE may carry its bug's "[object Promise]" instead of N.
_VERB_SUBJECT = re.compile(
    r"^\s*(?P<verb>CREATE|CLEANUP|RESET|PURGE)\s+"
    r"(?P<who>\[object Promise\]|(?:student)?(?P<first>\d{1,9})(?:\s*,\s*(?P<last>\d{1,9}))?)"
    r"\s+(?P<customer>[A-Za-z0-9._:@+-]{1,255})"
    r"(?:\s+(?P<email>\S{1,320}))?\s*$",
    re.I,
)
_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$|^[^@\s<>]+@[^@\s<>]+$")


@dataclass
class Message:
    """A received message: its headers (lower-cased names), subject and plain-text body."""

    headers: dict[str, str] = field(default_factory=dict)
    subject: str = ""
    body: str = ""

    @property
    def message_id(self) -> str | None:
        """The ``Message-ID`` header (at most 255 characters), or None."""
        value = self.headers.get("message-id", "").strip()
        return value[:255] or None


def _decode_text(raw: bytes) -> str:
    """UTF-8 (what the portal's Node side writes); Latin-1 when it is not, which never fails."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _decode_header_value(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # a malformed encoded word stays as written
        return value


def _lines(data: bytes) -> list[bytes]:
    return [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]


def parse_message(data: bytes) -> Message:
    """Headers while lines look like headers; then the body (a blank line after the headers is optional)."""
    lines = _lines(data)
    if lines and lines[-1] == b"":
        lines.pop()
    headers: list[tuple[bytes, bytes]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line == b"":
            i += 1
            break
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip())
        elif _HEADER.match(line):
            name, value = line.split(b":", 1)
            headers.append((name.strip().lower(), value.strip()))
        else:
            break  # the portal's verb mails: the body starts right after Subject
        i += 1
    body_lines = lines[i:]
    if any(name in _MIME_HEADERS for name, _ in headers):
        # A standard client: let the email package undo MIME and transfer encodings.
        raw = b"\r\n".join(n + b": " + v for n, v in headers) + b"\r\n\r\n" + b"".join(line + b"\r\n" for line in body_lines)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        part = parsed.get_body(preferencelist=("plain", "html")) if parsed.is_multipart() else parsed
        try:
            body = part.get_content() if part is not None else ""
        except Exception:  # an unknown charset or a broken encoding
            payload = part.get_payload(decode=True) if part is not None else b""
            body = _decode_text(payload or b"")
        if not isinstance(body, str):
            body = _decode_text(body)
    else:
        body = _decode_text(b"\n".join(body_lines) + (b"\n" if body_lines else b""))
    decoded = {}
    for name, value in headers:
        decoded.setdefault(_decode_text(name), _decode_header_value(_decode_text(value)))
    body = body.replace("\r\n", "\n")
    return Message(decoded, decoded.get("subject", "").strip(), body)


@dataclass
class Dialog:
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)
    data: bytes | None = None


def path_address(argument: str) -> str:
    """``<a@b>``, ``a@b`` or ``<a@b> SIZE=12`` (the portal writes ``MAIL FROM: a@b``) → ``a@b``."""
    argument = argument.strip()
    if argument.startswith("<"):
        end = argument.find(">")
        return argument[1:end].strip() if end > 0 else argument[1:].strip()
    return argument.split()[0] if argument.split() else ""


def parse_dialog(data: bytes) -> Dialog | None:
    """An SMTP dialog written in one go (``HELO``, ``MAIL FROM``, ``RCPT TO``, ``DATA``, message, ``.``), or None.

    None when ``data`` does not start like one: it is then a plain message.
    """
    lines = _lines(data)
    first = lines[0].split(b" ", 1)[0].upper() if lines else b""
    if first not in (b"HELO", b"EHLO", b"MAIL"):
        return None
    dialog = Dialog()
    for i, line in enumerate(lines):
        upper = line.upper()
        if upper.startswith(b"MAIL FROM:"):
            dialog.sender = path_address(_decode_text(line[10:]))
        elif upper.startswith(b"RCPT TO:"):
            dialog.recipients.append(path_address(_decode_text(line[8:])))
        elif upper.strip() == b"DATA":
            body = []
            for text in lines[i + 1 :]:
                if text == b".":
                    dialog.data = b"\n".join(body) + b"\n"
                    return dialog
                body.append(text[1:] if text.startswith(b"..") else text)
            return dialog  # never finished: data stays None
    return dialog


@dataclass
class VerbMail:
    """A verb as the portal mails it. ``student``: the portal's number, or None for ``[object Promise]``."""

    verb: str
    student: int | None
    student_last: int | None
    customer: str
    email: str | None
    workshop: str | None


def parse_verb(subject: str, body: str) -> VerbMail:
    """``CREATE <N> <customer> <email>`` … with the workshop folder on the body's first line; BadRequest otherwise."""
    m = _VERB_SUBJECT.match(subject or "")
    if not m:
        raise BadRequest(
            f"The subject {subject[:120]!r} is not a verb: CREATE <N> <customer> <email>, CLEANUP <N> <customer>,"
            " RESET <N>|<min>,<max> <customer> or PURGE <N> <customer>.",
            code="bad_subject",
        )
    verb = m.group("verb").upper()
    promise = m.group("who") == PROMISE
    if promise and verb not in ("RESET", "PURGE"):
        raise BadRequest(f"{verb} needs a student number, not {PROMISE}.", code="bad_subject")
    first = None if promise else int(m.group("first"))
    last = int(m.group("last")) if m.group("last") else None
    if last is not None and verb != "RESET":
        raise BadRequest(f"Only RESET takes a range of students, not {verb}.", code="bad_subject")
    address = m.group("email")
    if verb == "CREATE":
        if not address or not _EMAIL.match(address) or not printable(address):
            raise BadRequest("CREATE needs the participant's address after the customer id.", code="bad_subject")
    elif address:
        raise BadRequest(f"{verb} takes a student and a customer id, nothing more: {subject[:120]!r}.", code="bad_subject")
    workshop = next((line.strip() for line in body.splitlines() if line.strip()), None)
    if workshop is not None and len(workshop) > 255:
        raise BadRequest("The body's first line must be the workshop folder name.", code="bad_workshop")
    return VerbMail(verb, first, last, m.group("customer"), address, workshop)


def make_message_id(domain: str) -> str:
    """A new ``Message-ID`` header value in ``domain`` (``localhost`` without one)."""
    return email.utils.make_msgid(domain=domain or "localhost")


def build_relay(sender: str, recipient: str, subject: str, body: str, message_id: str, date) -> EmailMessage:
    """The message a relay sends: From, To, Subject, Date, Message-ID and the body as UTF-8 text."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = subject
    # Times are stored naive UTC (see store.utcnow).
    msg["Date"] = email.utils.format_datetime(date.replace(tzinfo=datetime.timezone.utc) if date.tzinfo is None else date)
    msg["Message-ID"] = message_id
    msg.set_content(body if body.endswith("\n") or not body else body + "\n", charset="utf-8")
    return msg
