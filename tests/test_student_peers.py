"""A student's process reaches neither the mail listener nor the REST service, even from loopback.

Real accounts (``tests.sysusers``, as root), real sockets: the owner of a
loopback connection is read from ``/proc/net/tcp{,6}`` (``local_peers``).
The verb mails go through the real listener and ingress into the real
engine's queue (the same ``submit`` as ``wod mail``), so "nothing queued"
is read from the operations table.
"""

import asyncio
import logging
import socket
import subprocess
import sys

import pytest
from traitlets.config import Config

from tests.hubutil import write_workshop
from tests.mailutil import SENDER, VERB_RCPT
from tests.sysusers import STUDENT_PYTHON, as_student, ensure_accounts, require_root, uid  # noqa: F401 - require_root is a fixture
from wod_jupyterhub import local_peers
from wod_jupyterhub.config import Wod
from wod_jupyterhub.mail.ingress import Ingress
from wod_jupyterhub.mail.listener import MailListener
from wod_jupyterhub.mail.settings import WodMail
from wod_jupyterhub.mail.verbs import engine_submit
from wod_jupyterhub.store import Operation, Store

pytestmark = pytest.mark.usefixtures("require_root")

N = 230  # this module's account (tests.sysusers.NUMBERS)

# What the student runs: a verb mail to the listener, with a standard client; prints the refusal's code and text.
SMTP = """
import smtplib, sys
port = int(sys.argv[1])
msg = "Subject: PURGE 231 4711\\n\\nWKSHP-Peers\\n"
try:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.sendmail(sys.argv[2], [sys.argv[3]], msg)
    print("250 accepted")
except smtplib.SMTPException as e:
    print(getattr(e, "smtp_code", None) or getattr(e, "recipients", e), getattr(e, "smtp_error", b"").decode(errors="replace"))
"""


@pytest.fixture(scope="module")
def account(tmp_path_factory):
    ensure_accounts(N, N + 1, tmp_path_factory.mktemp("peers") / "students")
    return N


def test_the_owner_of_a_loopback_connection_is_read_from_the_socket_tables(account):
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as server:
            server.bind((host, 0))
            server.listen()
            port = server.getsockname()[1]
            code = f"import socket,time; s=socket.create_connection(({host!r},{port})); s.recv(1)"
            child = subprocess.Popen([STUDENT_PYTHON, "-c", code], cwd="/", user=uid(account), group=uid(account), extra_groups=[])
            conn, _ = server.accept()
            with conn:
                assert local_peers.connection_uid(conn) == uid(account)
                conn.sendall(b"x")
            child.wait(10)
            # the test's own (root) connection, and a source other than 127.0.0.1 (all of 127/8 is this machine)
            with socket.socket(family) as mine:
                if family == socket.AF_INET:
                    mine.bind(("127.9.8.7", 0))
                mine.connect((host, port))
                conn, _ = server.accept()
                with conn:
                    assert local_peers.connection_uid(conn) == 0
    assert local_peers.peer_uid(("127.0.0.1", 1), ("192.0.2.1", 2)) is None  # nobody on this machine


@pytest.fixture
def queue(tmp_path):
    """A wod site: its database, catalog and the engine's ``submit`` (queues only, like ``wod mail``)."""
    nb = tmp_path / "notebooks"
    write_workshop(nb, "WKSHP-Peers", (N, N + 1))
    config = Config()
    config.Wod.db_url = f"sqlite:///{tmp_path / 'wod.sqlite'}"
    config.Wod.notebooks = [str(nb)]
    config.Wod.system_users = True
    config.Wod.uid_base = 10000
    config.Wod.student_min, config.Wod.student_max = 200, 249
    wod = Wod(config=config)
    store = Store(wod.db_url)
    submit, holding, close = engine_submit(config, wod, store, logging.getLogger("test.peers"))
    yield wod, store, submit, holding
    close()
    store.dispose()


def operations(store) -> list:
    with store.Session() as s:
        return list(s.query(Operation))


async def test_a_students_smtp_from_loopback_is_refused_and_nothing_is_queued(account, queue):
    wod, store, submit, holding = queue
    # The portal on this machine: loopback allowed (the setting of the finding).
    settings = WodMail(sender=SENDER, ip="127.0.0.1", port=0, allowed_sources=["127.0.0.0/8"], timeout=5)
    ingress = Ingress(settings, wod, store, relay=None, submit=submit, holding=holding)
    listener = await MailListener(settings, ingress).start()
    port = listener.address[1]
    try:
        r = await asyncio.to_thread(as_student, account, SMTP, port, SENDER, VERB_RCPT)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("554") and "may not send mail here" in r.stdout, r.stdout
        assert "4711" not in r.stdout
        assert ingress.refused["source"] == 1 and operations(store) == []
        # The same mail from a process that is not a student's (the test, root) is queued.
        r = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", SMTP, str(port), SENDER, VERB_RCPT], capture_output=True, text=True, timeout=60
        )
        assert r.stdout.startswith("250"), r.stdout + r.stderr
        assert [(op.verb, op.student, op.customer) for op in operations(store)] == [("PURGE", 231, "4711")]
    finally:
        await listener.stop()


def test_wod_mail_refuses_a_local_submission_in_system_users_mode(tmp_path):
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(
        f"c.Wod.db_url = 'sqlite:///{tmp_path / 'wod.sqlite'}'\nc.Wod.system_users = True\n"
        f"c.WodMail.sender = {SENDER!r}\nc.WodMail.allowed_sources = ['127.0.0.1']\n"
    )
    mail = b"Subject: PURGE 231 4711\n\nWKSHP-Peers\n"
    for peer in ([], ["--peer", "127.0.0.1"], ["--peer", ""]):
        r = subprocess.run(
            [sys.executable, "-m", "wod_jupyterhub.cli", "mail", "-f", str(config), "--from", SENDER, "--to", VERB_RCPT, *peer],
            input=mail, capture_output=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 2 and b"may not send mail here" in r.stderr, (peer, r.stderr)


# The same call from the student and from the test: the portal's token, leaked to a student, is no use on this machine.
REST = """
import json, sys, urllib.request, urllib.error
url, token = sys.argv[1], sys.argv[2]
body = json.dumps({"student": 231, "customer": "4711"}).encode()
req = urllib.request.Request(url + "api/purge", data=body, method="POST", headers={"Authorization": "token " + token})
try:
    print(urllib.request.urlopen(req, timeout=30).status)
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"""


def test_a_students_process_gets_403_from_the_rest_service_even_with_the_portals_token(account, tmp_path):
    from tests.hubutil import RealHub

    nb = tmp_path / "notebooks"
    write_workshop(nb, "WKSHP-Peers", (N, N + 1))
    wod = {"system_users": True, "uid_base": 10000, "student_min": 200, "student_max": 249}
    with RealHub(tmp_path / "hub", notebooks=[nb], wod_config=wod) as hub:
        r = as_student(account, REST, hub.service_url, hub.portal_token)
        assert r.stdout.startswith("403") and "student_process" in r.stdout, r.stdout + r.stderr
        db = Store(hub.db_url)
        try:
            assert operations(db) == []
        finally:
            db.dispose()
        r = subprocess.run([sys.executable, "-c", REST, hub.service_url, hub.portal_token], capture_output=True, text=True, timeout=60)
        assert r.stdout.split()[0] in ("200", "202", "409"), r.stdout + r.stderr
