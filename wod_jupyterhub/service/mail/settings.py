"""``c.WodMail.*``: the portal's mail API (listener, verb mails, relay to a smarthost)."""

import ipaddress
import os
import re
import socket

from traitlets import Bool, Float, Integer, List, TraitError, Unicode, default, validate
from traitlets.config import Configurable

from ...local_peers import plain_ip

_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
_LOCAL_PART = re.compile(r"^[A-Za-z0-9._%+-]+$")


def _host_port(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TraitError(f"WodMail.{what} must be host:port (e.g. smtp.example.com:25), not {value!r}")
    return host, int(port)


class WodMail(Configurable):
    """The portal's mail API: its verb mails in, its participant mails relayed to a smarthost."""

    port = Integer(
        10025,
        help="""TCP port of the mail listener (the port the portal's ``location`` points at; the original's postfix used 10025).

        The listener runs in the wod service when ``sender`` is set; 0 turns it off
        (``wod mail`` still reads mails piped from a local postfix).
        """,
    ).tag(config=True)

    @validate("port")
    def _valid_port(self, proposal):
        if not 0 <= proposal["value"] < 65536:
            raise TraitError(f"WodMail.port must be between 0 and 65535, not {proposal['value']}")
        return proposal["value"]

    ip = Unicode(
        "127.0.0.1",
        help="""Address the mail listener binds (default loopback only); empty for every address.

        The portal is usually on another host: set this to the address it
        reaches (or empty), together with ``allowed_sources`` naming the portal.
        """,
    ).tag(config=True)

    sender = Unicode(
        "",
        help="""The portal's sender address (the original's WODSENDER): the only envelope sender (``MAIL FROM``) accepted.

        Verb mails from it become operations; its other mails are relayed to
        participants. Mail from any other sender is refused. Empty (the
        default) turns the mail API off.
        """,
    ).tag(config=True)

    @validate("sender")
    def _valid_sender(self, proposal):
        value = proposal["value"].strip()
        if value and not _ADDRESS.match(value):
            raise TraitError(f"WodMail.sender must be an address such as wodmailer@portal.example.com, not {value!r}")
        return value

    recipient = Unicode(
        help="""Local part of the verb recipient (the portal's WODUSER): mail to ``<recipient>@<any domain>`` is a verb mail.

        Defaults to ``$WOD_MAIL_RECIPIENT``, then ``wodadmin`` (the original's default WODUSER).
        """,
    ).tag(config=True)

    @default("recipient")
    def _recipient_default(self):
        return os.environ.get("WOD_MAIL_RECIPIENT", "") or "wodadmin"

    @validate("recipient")
    def _valid_recipient(self, proposal):
        value = proposal["value"].strip()
        if "@" in value:
            value = value.split("@", 1)[0]
        if not _LOCAL_PART.match(value):
            raise TraitError(f"WodMail.recipient must be a mailbox name such as wodadmin, not {proposal['value']!r}")
        return value

    allowed_sources = List(
        Unicode(),
        help="""Client addresses or networks (``10.0.0.5``, ``10.0.0.0/24``) the listener takes mail from; empty for loopback only.

        The envelope sender is easy to forge; listing the portal's address
        here is what keeps strangers from using the relay (postfix's
        ``mynetworks``). With ``c.Wod.system_users`` the listener does not
        start while this is empty: students run code on this host, so
        loopback is not the portal alone.
        """,
    ).tag(config=True)

    @validate("allowed_sources")
    def _valid_sources(self, proposal):
        for value in proposal["value"]:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise TraitError(f"WodMail.allowed_sources: {value!r} is not an address or network") from None
        return proposal["value"]

    def source_allowed(self, address: str) -> bool:
        """Whether mail from ``address`` is taken: one of ``allowed_sources``, or loopback while that is empty."""
        ip = plain_ip(address)
        if ip is None:
            return False
        if not self.allowed_sources:
            return ip.is_loopback
        return any(ip in ipaddress.ip_network(n, strict=False) for n in self.allowed_sources)

    def refusal(self, system_users: bool) -> str | None:
        """Why the listener must not start, or None: in system-users mode, loopback includes every student."""
        if system_users and self.port > 0 and not self.allowed_sources:
            return (
                "The mail listener does not start: c.WodMail.allowed_sources is empty, and with c.Wod.system_users "
                "students run code on this host, so they could send verb mails from loopback. "
                "Set c.WodMail.allowed_sources to the portal's address."
            )
        return None

    relay = Unicode(
        "",
        help="""Smarthost ``host:port`` that participant mails are relayed to. Empty: participant mails are refused.""",
    ).tag(config=True)

    @validate("relay")
    def _valid_relay(self, proposal):
        value = proposal["value"].strip()
        if value:
            _host_port(value, "relay")
        return value

    @property
    def relay_address(self) -> tuple[str, int]:
        """The smarthost of ``relay`` as (host, port)."""
        return _host_port(self.relay, "relay")

    relay_starttls = Bool(False, help="Upgrade the smarthost connection with STARTTLS before sending.").tag(config=True)
    relay_ssl = Bool(False, help="Connect to the smarthost over TLS from the start (SMTPS, usually port 465).").tag(config=True)
    relay_username = Unicode("", help="User name to log in to the smarthost with; empty for no login.").tag(config=True)

    relay_password = Unicode(
        help="Password for ``relay_username``; never logged. Defaults to ``$WOD_MAIL_RELAY_PASSWORD``.",
    ).tag(config=True)

    @default("relay_password")
    def _relay_password_default(self):
        return os.environ.get("WOD_MAIL_RELAY_PASSWORD", "")

    relay_from = Unicode(
        "",
        help="``From:`` of relayed mails; empty keeps the portal's sender.",
    ).tag(config=True)

    @validate("relay_from")
    def _valid_relay_from(self, proposal):
        value = proposal["value"].strip()
        if value and "@" not in value:
            raise TraitError(f"WodMail.relay_from must hold an address, not {value!r}")
        return value

    hostname = Unicode(
        help="Name the listener greets with and the domain of the Message-IDs it makes; defaults to this host's name.",
    ).tag(config=True)

    @default("hostname")
    def _hostname_default(self):
        # Not getfqdn(): a reverse DNS lookup may hang the service's start.
        return socket.gethostname() or "localhost"

    max_message_size = Integer(
        1024 * 1024,
        help="Largest message in bytes; a larger one is refused (552) and nothing is done with it.",
    ).tag(config=True)

    timeout = Float(
        60.0,
        help="Seconds one connection may last; one that has not finished by then is closed and its unfinished mail dropped.",
    ).tag(config=True)

    max_connections = Integer(64, help="Connections served at once; more are told to come back later (421).").tag(config=True)

    relay_timeout = Float(30.0, help="Seconds to wait for the smarthost to connect or answer.").tag(config=True)
    retry_initial = Float(5.0, help="Seconds before the first retry of a mail the smarthost could not take; doubled each time (with jitter).").tag(config=True)
    retry_max = Float(600.0, help="Longest wait in seconds between two tries of one mail.").tag(config=True)
    poll_interval = Float(5.0, help="Seconds between looks at the mail outbox for mails queued by other processes (``wod mail``).").tag(config=True)
    retention_days = Float(14.0, help="Days relayed and refused mails stay in the database before they are deleted.").tag(config=True)

    @validate("max_message_size", "max_connections")
    def _positive_int(self, proposal):
        if proposal["value"] < 1:
            raise TraitError(f"WodMail.{proposal['trait'].name} must be 1 or more")
        return proposal["value"]

    @validate("timeout", "relay_timeout", "retry_initial", "retry_max", "poll_interval", "retention_days")
    def _positive_seconds(self, proposal):
        if proposal["value"] <= 0:
            raise TraitError(f"WodMail.{proposal['trait'].name} must be more than 0")
        return proposal["value"]

    @property
    def enabled(self) -> bool:
        """Whether the mail API is on (``sender`` is set)."""
        return bool(self.sender)

    @property
    def relay_enabled(self) -> bool:
        """Whether participants' mails are relayed (a ``sender`` and a ``relay``)."""
        return bool(self.sender and self.relay)

    def is_sender(self, address: str) -> bool:
        """Whether ``address`` is the portal's ``sender`` (letter case aside)."""
        return bool(self.sender) and (address or "").strip().lower() == self.sender.lower()

    def is_verb_recipient(self, address: str) -> bool:
        """Whether ``address``'s local part is the verbs' ``recipient``: a verb to run, not a mail to relay."""
        local = (address or "").strip().rsplit("@", 1)[0] if "@" in (address or "") else (address or "").strip()
        return local.lower() == self.recipient.lower()
