"""The portal's side of the mail API, and a real SMTP server as the smarthost.

``portal_bytes`` is the dialog exactly as the portal (api-db) writes it: one
write at connect, before reading anything, bare LF, ``MAIL FROM: addr``
without angle brackets, no header but Subject, no blank line before a verb
mail's body (a participant mail's body starts with a newline).
``portal_send`` plays it from a raw socket: connect, write it all, read one
byte (the greeting), hang up, as the portal does.

``Smarthost`` is aiosmtpd on loopback recording what it receives; ``down()``
really stops listening, ``up()`` listens again on the same port.
"""

import email
import email.policy
import socket
import threading
import time

from aiosmtpd.controller import Controller

from tests.hubutil import free_port

SENDER = "wodmailer@portal.example.com"
VERB_RCPT = "wodadmin@backend.example.com"


def portal_bytes(subject: str, body: str, *, sender=SENDER, recipient=VERB_RCPT, host="portal.example.com") -> bytes:
    return (
        f"HELO {host}\nMAIL FROM: {sender}\nRCPT TO: {recipient}\nDATA\nSubject: {subject}\n{body}\n.\n"
    ).encode("utf-8")


def participant_bytes(recipient: str, subject: str, text: str, **kw) -> bytes:
    # The portal strips its HTML body, which starts with a newline: hence the blank line.
    return portal_bytes(subject, "\n" + text, recipient=recipient, **kw)


def portal_send(port: int, data: bytes, read_first: bool = True) -> bytes:
    """Write ``data`` at once on connect, read one byte, hang up; the byte read (b'' if none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        if not read_first:
            return b""
        try:
            return s.recv(1)
        except OSError:
            return b""


def portal_dialog(port: int, data: bytes, timeout: float = 15) -> str:
    """The portal's bytes, written at once once the greeting is read; the service's reply to the message.

    The portal itself writes before the greeting and reads nothing else, so the
    listener answers it with the greeting only (``portal_send``); a test that
    wants to read the answer to the mail waits for the greeting first.
    """
    replies = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        end = time.monotonic() + timeout
        # the greeting, then HELO, MAIL, RCPT, DATA (354) and the message's own reply: six lines
        for lines in (1, 6):
            while replies.count(b"\n") < lines and time.monotonic() < end:
                chunk = s.recv(4096)
                if not chunk:
                    break
                replies += chunk
            if lines == 1:
                s.sendall(data)
    return replies.decode("utf-8", "replace").strip().splitlines()[-1]


class _Handler:
    def __init__(self):
        self.messages = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append(
                {
                    "from": envelope.mail_from,
                    "to": list(envelope.rcpt_tos),
                    "message": email.message_from_bytes(envelope.original_content, policy=email.policy.default),
                }
            )
        return "250 2.0.0 Ok"


class Smarthost:
    def __init__(self, port=None, **smtp_options):
        """``smtp_options``: aiosmtpd's SMTP options (``tls_context``, ``require_starttls``, ``authenticator`` …)."""
        self.port = port or free_port()
        self.handler = _Handler()
        self.controller = None
        self.smtp_options = smtp_options

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def messages(self) -> list:
        with self.handler.lock:
            return list(self.handler.messages)

    def up(self):
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **self.smtp_options)
        self.controller.start()
        return self

    def down(self):
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def wait_for(self, count: int, timeout: float = 30.0) -> list:
        end = time.monotonic() + timeout
        while len(self.messages) < count:
            assert time.monotonic() < end, f"the smarthost got {len(self.messages)} mails, not {count}, in {timeout} s"
            time.sleep(0.02)
        return self.messages

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()


def self_signed(folder) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files in ``folder``: (cert, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = f"{folder}/cert.pem", f"{folder}/key.pem"
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path
