"""The mail API's listener, ingress and relay against real sockets and a real smarthost (aiosmtpd).

The verb mails' operations and callbacks, end to end through the service,
are in tests/integration/test_mail_service.py.
"""

import asyncio
import logging
import smtplib
import socket
import time

import pytest
from sqlalchemy import select
from traitlets import TraitError

from tests.hubutil import free_port
from tests.mailutil import SENDER, VERB_RCPT, Smarthost, participant_bytes, portal_bytes, portal_send, self_signed
from wod_jupyterhub.config import Wod
from wod_jupyterhub.errors import BadRequest
from wod_jupyterhub.service.mail.gateway import MailGateway
from wod_jupyterhub.service.mail.ingress import Ingress
from wod_jupyterhub.service.mail.listener import MailListener
from wod_jupyterhub.service.mail.message import PROMISE, parse_dialog, parse_message, parse_verb
from wod_jupyterhub.service.mail.relay import Relay
from wod_jupyterhub.service.mail.settings import WodMail
from wod_jupyterhub.store.models import MailMessage, Store

# ---------------------------------------------------------------------- pure parsing


@pytest.mark.parametrize(
    "subject,expected",
    [
        ("CREATE 401 825 frederic@example.com", ("CREATE", 401, None, "825", "frederic@example.com")),
        ("CLEANUP 401 825", ("CLEANUP", 401, None, "825", None)),
        ("RESET 401 825", ("RESET", 401, None, "825", None)),
        ("RESET 401,405 825", ("RESET", 401, 405, "825", None)),
        ("PURGE 401 825", ("PURGE", 401, None, "825", None)),
        (f"RESET {PROMISE} 825", ("RESET", None, None, "825", None)),
        (f"PURGE {PROMISE} 825", ("PURGE", None, None, "825", None)),
        ("purge student401 825 ", ("PURGE", 401, None, "825", None)),
    ],
)
def test_verb_subjects(subject, expected):
    mail = parse_verb(subject, "WKSHP-API101\n")
    assert (mail.verb, mail.student, mail.student_last, mail.customer, mail.email) == expected
    assert mail.workshop == "WKSHP-API101"


@pytest.mark.parametrize(
    "subject",
    [
        "", "Hello", "CREATE 401 825", "CREATE abc 825 a@b.c", f"CREATE {PROMISE} 825 a@b.c",
        f"CLEANUP {PROMISE} 825", "CLEANUP 401,402 825", "PURGE 401 825 extra", "DELETE 401 825",
        "CREATE 401 825 not-an-address", "RESET 401", "CREATE 401 825 a\x00b@example.com", "PURGE 401 82\x005",
    ],
)  # fmt: skip
def test_malformed_subjects_are_refused_with_a_sentence(subject):
    with pytest.raises(BadRequest) as e:
        parse_verb(subject, "WKSHP-API101")
    assert e.value.code == "bad_subject" and e.value.message.endswith(".")


def test_messages_the_portal_way_and_the_standard_way():
    verb = parse_message(b"Subject: CREATE 401 825 a@b.c\nWKSHP-API101\n")
    assert verb.subject == "CREATE 401 825 a@b.c" and verb.body == "WKSHP-API101\n"
    part = parse_message("Subject: Bienvenue à WoD\n\nBonjour Zoé,\nvotre mot de passe: x\n".encode())
    assert part.subject == "Bienvenue à WoD" and part.body == "Bonjour Zoé,\nvotre mot de passe: x\n"
    from email.message import EmailMessage

    std = EmailMessage()
    std["Subject"] = "Crédentials ✓"
    std["Message-ID"] = "<abc@portal>"
    std.set_content("Mot de passe: é" + "x" * 200 + "\n", charset="utf-8", cte="quoted-printable")
    parsed = parse_message(std.as_bytes().replace(b"\n", b"\r\n"))
    assert parsed.subject == "Crédentials ✓" and parsed.message_id == "<abc@portal>"
    assert parsed.body == "Mot de passe: é" + "x" * 200 + "\n"


def test_a_whole_dialog_as_wod_mail_gets_it():
    d = parse_dialog(portal_bytes("CLEANUP 401 825", "WKSHP-API101"))
    assert d.sender == SENDER and d.recipients == [VERB_RCPT]
    assert parse_message(d.data).subject == "CLEANUP 401 825"
    unfinished = parse_dialog(portal_bytes("CLEANUP 401 825", "WKSHP-API101")[:-3])
    assert unfinished.data is None
    assert parse_dialog(b"Subject: x\n\nbody\n") is None


def test_settings_are_validated():
    for bad in ({"sender": "nobody"}, {"relay": "smtp.example.com"}, {"relay": "h:99999"}, {"port": 70000},
                {"allowed_sources": ["not-an-ip"]}, {"recipient": "a b"}, {"timeout": 0}):  # fmt: skip
        with pytest.raises(TraitError):
            WodMail(**bad)
    st = WodMail(sender="W@Portal", recipient="wodadmin@anything", allowed_sources=["10.0.0.0/24"])
    assert st.recipient == "wodadmin" and st.is_sender("w@portal") and st.is_verb_recipient("WODADMIN@other.host")
    assert st.source_allowed("10.0.0.7") and not st.source_allowed("10.0.1.7") and st.enabled is not False


# ---------------------------------------------------------------------- listener and relay


class Mailer:
    """The listener and the relay of one service process, in the test's event loop."""

    def __init__(self, store, smarthost, **settings):
        options = dict(sender=SENDER, ip="127.0.0.1", port=0, retry_initial=0.05, retry_max=0.3, poll_interval=0.1, timeout=5)
        if smarthost is not None:
            options["relay"] = smarthost.address
        options.update(settings)
        self.settings = WodMail(**options)
        self.store = store
        self.relay = Relay(store, self.settings)
        self.ingress = Ingress(self.settings, Wod(), store, self.relay)
        self.listener = MailListener(self.settings, self.ingress)

    async def __aenter__(self):
        await self.listener.start()
        self.port = self.listener.address[1]
        self.task = asyncio.ensure_future(self.relay.run())
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.listener.stop()

    async def send(self, data: bytes, read_first=True) -> bytes:
        return await asyncio.to_thread(portal_send, self.port, data, read_first)

    def rows(self):
        with self.store.Session() as s:
            return list(s.scalars(select(MailMessage).order_by(MailMessage.id)))


@pytest.fixture
def store(db_url):
    """The relay's queue on SQLite and on the real PostgreSQL (conftest.db_url): its delivery is the store's."""
    s = Store(db_url)
    yield s
    s.dispose()


@pytest.fixture
def sqlite_store(sqlite_url):
    """A store on SQLite only, for the listener's own checks."""
    s = Store(sqlite_url)
    yield s
    s.dispose()


@pytest.fixture
def smarthost():
    with Smarthost() as host:
        yield host


async def until(predicate, timeout=20.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.02)


async def test_a_participant_mail_sent_the_portal_way_arrives_once_intact(store, smarthost):
    # The portal does not dot-stuff: none of its texts has a line that starts with a dot.
    text = "Bonjour Zoé,\n\nVotre mot de passe : Xk7-é\"q'\nhttps://hub.example.com/hub/login"
    async with Mailer(store, smarthost) as m:
        greeting = await m.send(participant_bytes("zoe@example.org", "Vos accès à WoD", text))
        assert greeting == b"2"
        got = await asyncio.to_thread(smarthost.wait_for, 1)
        await asyncio.sleep(0.5)  # more passes of the relay: still once
        assert len(smarthost.messages) == 1
    msg = got[0]["message"]
    assert got[0]["from"] == SENDER and got[0]["to"] == ["zoe@example.org"]
    assert msg["Subject"] == "Vos accès à WoD" and msg["To"] == "zoe@example.org" and msg["From"] == SENDER
    assert msg["Date"] and msg["Message-ID"].startswith("<")
    assert msg.get_content_type() == "text/plain" and msg.get_content_charset() == "utf-8"
    assert msg.get_content().replace("\r\n", "\n") == text + "\n"
    (row,) = m.rows()
    assert row.delivered is not None and row.failed is None and row.message_id == msg["Message-ID"]


async def test_smarthost_down_first_and_up_later_still_once(store):
    host = Smarthost()  # not listening yet
    async with Mailer(store, host) as m:
        await m.send(participant_bytes("p@example.org", "Welcome", "Hello\n"))
        await m.send(participant_bytes("P@example.org", "Credentials", "Your password\n"))
        await until(lambda: (m.rows() or [None])[0] is not None and m.rows()[0].attempts >= 2)
        assert m.rows()[0].delivered is None and "cannot reach" in m.rows()[0].last_error
        host.up()
        try:
            got = await asyncio.to_thread(host.wait_for, 2)
            await asyncio.sleep(0.5)
            assert len(host.messages) == 2
        finally:
            host.down()
    # Once each, and one participant's mails in the order the portal sent them.
    assert [g["message"]["Subject"] for g in got] == ["Welcome", "Credentials"]
    assert all(row.delivered is not None for row in m.rows())


async def test_a_standard_smtp_client_is_served(sqlite_store, smarthost):
    async with Mailer(sqlite_store, smarthost) as m:

        def client():
            with smtplib.SMTP("127.0.0.1", m.port, timeout=5) as s:
                s.ehlo()
                s.sendmail(SENDER, ["a@example.org", "b@example.org"], "Subject: Reminder\r\n\r\nOne hour left.\r\n.\r\n..\r\n")

        await asyncio.to_thread(client)
        got = await asyncio.to_thread(smarthost.wait_for, 2)
    assert sorted(g["to"][0] for g in got) == ["a@example.org", "b@example.org"]
    # smtplib dot-stuffs; the listener undoes it.
    assert all(g["message"].get_content().replace("\r\n", "\n") == "One hour left.\n.\n..\n" for g in got)


def _never_finishing(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"HELO x\nMAIL FROM: " + SENDER.encode() + b"\nRCPT TO: p@example.org\nDATA\nSubject: half\n")
    return s


# case -> (the bytes, the reason counted)
BAD = {
    "unknown sender": (portal_bytes("CREATE 401 825 a@b.c", "WKSHP-API101", sender="mallory@evil.example"), "sender"),
    "stranger relay": (participant_bytes("victim@example.org", "Buy now", "spam", sender="mallory@evil.example"), "sender"),
    "malformed subject": (portal_bytes("CREATE four-oh-one 825 a@b.c", "WKSHP-API101"), "subject"),
    "10 MB": (participant_bytes("p@example.org", "Big", ("x" * 1000 + "\n") * 10_500), "too_large"),
    "one 2 MB line": (participant_bytes("p@example.org", "Big", "y" * 2_000_000), "too_large"),
    "garbage": (bytes(range(256)) * 40, "syntax"),
    "garbage lines": (b"\xff\xfe\x00 junk\n" * 20, "syntax"),
    "bad recipient": (participant_bytes("a@b>\tRCPT TO:<c@d.example", "Hi", "x"), "recipient"),
}


@pytest.mark.parametrize("case", [*BAD, "never finishes"])
async def test_bad_mail_changes_nothing_and_the_listener_keeps_serving(sqlite_store, smarthost, caplog, case):
    caplog.set_level(logging.INFO, logger="wod.mail")
    async with Mailer(sqlite_store, smarthost, timeout=1.0) as m:
        if case == "never finishes":
            reason = "timeout"
            sock = await asyncio.to_thread(_never_finishing, m.port)
            await until(lambda: m.ingress.refused["timeout"] == 1)
            sock.close()
        else:
            data, reason = BAD[case]
            await m.send(data)
            await until(lambda: m.ingress.refused[reason] >= 1)
        assert sum(m.ingress.refused.values()) == 1, m.ingress.refused
        assert m.rows() == [] and m.ingress.received == {}
        assert "Mail refused (" + reason in caplog.text
        # and it still serves
        await m.send(participant_bytes("ok@example.org", "Still here", "yes"))
        got = await asyncio.to_thread(smarthost.wait_for, 1)
    assert [g["to"] for g in got] == [["ok@example.org"]]


async def test_participant_mail_without_a_relay_and_strangers_by_address_are_refused(sqlite_store):
    async with Mailer(sqlite_store, None) as m:
        await m.send(participant_bytes("p@example.org", "Hi", "x"))
        await until(lambda: m.ingress.refused["relay_off"] == 1)
    async with Mailer(sqlite_store, None, allowed_sources=["192.0.2.0/24"]) as m:
        assert await m.send(participant_bytes("p@example.org", "Hi", "x")) == b"5"
        assert m.ingress.refused["source"] == 1
    assert m.rows() == []


async def test_starttls_and_login_at_the_smarthost(sqlite_store, tmp_path, monkeypatch):
    import ssl

    from aiosmtpd.smtp import AuthResult

    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    # The relay verifies the smarthost against the system's CAs; here that is our own certificate.
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        login, password = (x.decode() if isinstance(x, bytes) else x for x in (auth_data.login, auth_data.password))
        logins.append((login, password))
        # handled=False: aiosmtpd answers the 535 itself
        return AuthResult(success=(login, password) == ("wod", "s3cret-pw"), handled=False)

    host = Smarthost(tls_context=server_tls, require_starttls=True, auth_required=True, authenticator=authenticator)
    with host:
        async with Mailer(sqlite_store, host, relay_starttls=True, relay_username="wod", relay_password="wrong-pw") as m:
            await m.send(participant_bytes("p@example.org", "Credentials", "pw"))
            await until(lambda: m.rows() and m.rows()[0].attempts >= 1)
            assert "refused the login" in m.rows()[0].last_error and "wrong-pw" not in m.rows()[0].last_error
            assert host.messages == []
        async with Mailer(sqlite_store, host, relay_starttls=True, relay_username="wod", relay_password="s3cret-pw") as m:
            got = await asyncio.to_thread(host.wait_for, 1)
        assert got[0]["message"]["Subject"] == "Credentials" and ("wod", "s3cret-pw") in logins


async def test_a_long_line_within_the_limit_is_relayed_whole(store, smarthost):
    text = "z" * 600_000  # one line, more than the listener reads at once, less than max_message_size
    async with Mailer(store, smarthost) as m:
        await m.send(participant_bytes("long@example.org", "Long", text))
        got = await asyncio.to_thread(smarthost.wait_for, 1)
    assert got[0]["message"].get_content().replace("\r\n", "").replace("\n", "") == text


# ---------------------------------------------------------------------- open by default (security review)


def test_listener_defaults_to_loopback_and_empty_sources_mean_loopback_only():
    st = WodMail(sender=SENDER)
    assert st.ip == "127.0.0.1"
    for address, taken in [("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
                           ("192.0.2.7", False), ("10.0.0.1", False), ("not-an-ip", False)]:  # fmt: skip
        assert st.source_allowed(address) is taken, address


@pytest.mark.parametrize("system_users,sources,listens", [(True, [], False), (True, ["127.0.0.1"], True), (False, [], True)])
async def test_system_users_mode_refuses_a_listener_open_to_loopback(sqlite_store, caplog, system_users, sources, listens):
    settings = WodMail(sender=SENDER, ip="127.0.0.1", port=free_port(), allowed_sources=sources, poll_interval=0.1)
    log = logging.getLogger("test.wod.mail")
    gateway = MailGateway(settings, Wod(system_users=system_users), sqlite_store, submit=None, log=log)
    with caplog.at_level(logging.ERROR, logger="test.wod.mail"):
        await gateway.start()
    try:
        assert (gateway.listener.address is not None) is listens
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        if listens:
            assert errors == [] and gateway.error is None
        else:
            assert len(errors) == 1 and "c.WodMail.allowed_sources" in errors[0] and gateway.error == errors[0]
    finally:
        await gateway.stop()
