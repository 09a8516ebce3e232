"""The portal's mail API end to end: a real hub and its managed wod service, the portal's raw bytes
on a socket, a real loopback portal taking the callbacks, a real SMTP server as the smarthost.
"""

import re
import time

import httpx
import pytest

from tests.hubutil import free_port, write_workshop
from tests.mailutil import SENDER, Smarthost, participant_bytes, portal_bytes, portal_send
from tests.portal_server import PortalServer
from tests.svcutil import check, health, hub_and_db, puts, settle

BASE = 400  # the portal calls our student N "N + 400"
PROMISE = "[object Promise]"


@pytest.fixture(scope="module")
def portal():
    with PortalServer(workshops=[{"id": 5, "notebook": "WKSHP-Mail"}, {"id": 6, "notebook": "WKSHP-MailKeep"}]) as p:
        yield p


@pytest.fixture(scope="module")
def smarthost():
    with Smarthost() as host:
        yield host


@pytest.fixture(scope="module")
def env(module_hubs, tmp_path_factory, portal, smarthost):
    root = tmp_path_factory.mktemp("mailsvc")
    nb = root / "notebooks"
    write_workshop(nb, "WKSHP-Mail", (1, 10))
    write_workshop(nb, "WKSHP-MailKeep", (11, 20), reset=True)
    mail_port = free_port()
    hub = module_hubs(
        root / "hub",
        notebooks=[nb],
        api_db_url=portal.url,
        wod_config={"student_min": 1, "student_max": 30, "base_student_id": BASE, "skel": ""},
        extra_config="\n".join(
            [
                f"c.WodMail.sender = {SENDER!r}",
                f"c.WodMail.port = {mail_port}",
                "c.WodMail.ip = '127.0.0.1'",
                f"c.WodMail.relay = {smarthost.address!r}",
                "c.WodMail.timeout = 2.0",
                "c.WodMail.retry_initial = 0.1",
                "c.WodMail.poll_interval = 0.2",
            ]
        ),
    )
    with hub_and_db(hub) as (hub, db):
        yield hub, db, mail_port


@pytest.fixture
def hub(env):
    return env[0]


@pytest.fixture
def db(env):
    return env[1]


@pytest.fixture
def mail(env):
    """Send bytes the portal's way to the service's mail port."""
    return lambda data: portal_send(env[2], data)


def wait_ops(db, count, timeout=60, **where) -> list:
    """The operations matching ``where`` once ``count`` of them exist and all have ended."""
    end = time.monotonic() + timeout
    while True:
        ops = db.ops(**where)
        if len(ops) >= count and all(o.status in ("succeeded", "failed") for o in ops):
            return ops
        assert time.monotonic() < end, f"{len(ops)} operations {where}: {[(o.verb, o.status) for o in ops]}"
        time.sleep(0.05)


def wait_puts(portal, paths, since, count):
    assert portal.wait_for(lambda p: len(puts(p, paths, since)) >= count, 30), puts(portal, paths, since)
    return puts(portal, paths, since)


def test_each_verb_from_the_portals_raw_bytes_runs_and_calls_back_in_order(hub, db, portal, mail):
    n, customer = 2, "4242"
    paths = {f"/api/student/{n + BASE}", f"/api/customer/{customer}"}
    since = settle(portal, db)
    # The greeting is all the portal reads before hanging up.
    assert mail(portal_bytes(f"CREATE {n + BASE} {customer} zoe@example.org", "WKSHP-Mail")) == b"2"
    (op,) = wait_ops(db, 1, verb="CREATE", student=n)
    assert op.status == "succeeded", op.error
    assert (op.customer, op.email, op.workshop) == (customer, "zoe@example.org", "WKSHP-Mail")
    got = wait_puts(portal, paths, since, 2)
    password = got[0][1]["password"]
    assert got == [(f"/api/student/{n + BASE}", {"password": password}), (f"/api/customer/{customer}", {"active": "true"})]
    assert db.password_ok(n, password)

    # The same mail again (the portal or a postfix in between sent it twice): no second rotation.
    mail(portal_bytes(f"CREATE {n + BASE} {customer} zoe@example.org", "WKSHP-Mail"))
    time.sleep(1.0)
    assert len(db.ops(verb="CREATE", student=n)) == 1 and db.password_ok(n, password)
    assert health(hub)["mail"]["duplicates"] >= 1

    since = settle(portal, db)
    mail(portal_bytes(f"CLEANUP {n + BASE} {customer}", "WKSHP-Mail"))
    (op,) = wait_ops(db, 1, verb="CLEANUP", student=n)
    assert op.status == "succeeded", op.error
    got = wait_puts(portal, paths, since, 4)
    assert [body for _, body in got[1:]] == [
        {"completionPercentage": "0"}, {"assigned": "false"}, {"cleaned": "true"},
    ]  # fmt: skip
    assert got[0][0] == f"/api/student/{n + BASE}" and db.password_ok(n, got[0][1]["password"])
    assert db.student(n).state == "free"
    # CLEANUP twice: the completion already reported is not overwritten by a 0.
    since = settle(portal, db)
    mail(portal_bytes(f"CLEANUP {n + BASE} {customer}", "WKSHP-Mail"))
    time.sleep(1.0)
    assert len(db.ops(verb="CLEANUP", student=n)) == 1 and puts(portal, paths, since) == []


def test_purge_and_reset_with_object_promise_name_the_customers_seat(hub, db, portal, mail):
    # PURGE [object Promise]: the seat the customer holds.
    n, customer = 4, "6262"
    mail(portal_bytes(f"CREATE {n + BASE} {customer} p@example.org", "WKSHP-Mail"))
    assert wait_ops(db, 1, verb="CREATE", student=n)[0].status == "succeeded"
    since = settle(portal, db)
    mail(portal_bytes(f"PURGE {PROMISE} {customer}", "WKSHP-Mail"))
    (op,) = wait_ops(db, 1, verb="PURGE", student=n)
    assert op.status == "succeeded" and op.customer == customer, op.error
    got = wait_puts(portal, {f"/api/student/{n + BASE}"}, since, 2)
    assert got[0][1] == {"assigned": "false"} and db.password_ok(n, got[1][1]["password"])
    assert db.student(n).state == "free"
    # The same PURGE again: the seat it names was purged already; nothing runs twice.
    mail(portal_bytes(f"PURGE {PROMISE} {customer}", "WKSHP-Mail"))
    time.sleep(0.5)
    assert len(db.ops(verb="PURGE", student=n)) == 1

    # RESET [object Promise]: the seat the customer held last (kept by a reset: true workshop).
    n, customer = 12, "7272"
    mail(portal_bytes(f"CREATE {n + BASE} {customer} r@example.org", "WKSHP-MailKeep"))
    assert wait_ops(db, 1, verb="CREATE", student=n)[0].status == "succeeded"
    mail(portal_bytes(f"CLEANUP {n + BASE} {customer}", "WKSHP-MailKeep"))
    assert wait_ops(db, 1, verb="CLEANUP", student=n)[0].status == "succeeded"
    assert db.student(n).state == "kept"
    since = settle(portal, db)
    mail(portal_bytes(f"RESET {PROMISE} {customer}", "WKSHP-MailKeep"))
    (op,) = wait_ops(db, 1, verb="RESET", student=n)
    assert op.status == "succeeded", op.error
    got = wait_puts(portal, {f"/api/student/{n + BASE}"}, since, 2)
    assert db.password_ok(n, got[0][1]["password"]) and got[1][1] == {"assigned": "false"}
    assert db.student(n).state == "free"


def test_integer_customer_ids_over_rest_and_mail_on_one_seat(hub, db, portal, mail):
    n = 5
    with hub.client() as api:
        op = check(api.post("api/create?wait=30", json={"student": n, "customer": 8383, "email": "i@example.org", "workshop": "WKSHP-Mail"}), 200)
        assert op["status"] == "succeeded" and op["customer"] == "8383"
        # A stale PURGE for another customer would take the seat from its holder: refused.
        before = db.count_ops()
        mail(portal_bytes(f"PURGE {n + BASE} 1111", "WKSHP-Mail"))
        time.sleep(0.5)
        assert db.count_ops() == before and db.student(n).state == "active"
        since = settle(portal, db)
        mail(portal_bytes(f"CLEANUP {n + BASE} 8383", "WKSHP-Mail"))
        (op,) = wait_ops(db, 1, verb="CLEANUP", student=n)
        assert op.status == "succeeded", op.error
        assert ("/api/customer/8383", {"cleaned": "true"}) in wait_puts(portal, {"/api/customer/8383"}, since, 2)
        check(api.post("api/purge", json={"student": n, "customer": True}), 400)


BAD = {
    "unknown workshop": (portal_bytes(f"CREATE {6 + BASE} 1 a@example.org", "WKSHP-Nope"), "workshop"),
    "student out of range": (portal_bytes(f"CREATE {29 + BASE} 1 a@example.org", "WKSHP-Mail"), "student"),
    "below this backend": (portal_bytes("CREATE 3 1 a@example.org", "WKSHP-Mail"), "student"),
    "malformed subject": (portal_bytes(f"CREATE {6 + BASE}", "WKSHP-Mail"), "subject"),
    "unknown sender": (portal_bytes(f"CREATE {6 + BASE} 1 a@example.org", "WKSHP-Mail", sender="x@evil.example"), "sender"),
    "stranger relay": (participant_bytes("victim@example.org", "Hi", "spam", sender="x@evil.example"), "sender"),
    "promise for nobody": (portal_bytes(f"PURGE {PROMISE} 999999", "WKSHP-Mail"), "student"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_verb_mail_runs_nothing_and_is_counted(hub, db, smarthost, mail, case):
    data, reason = BAD[case]
    before_ops, before_mails = db.count_ops(), len(smarthost.messages)
    refused = health(hub)["mail"]["refused"].get(reason, 0)
    mail(data)
    end = time.monotonic() + 10
    while health(hub)["mail"]["refused"].get(reason, 0) == refused:
        assert time.monotonic() < end, health(hub)["mail"]
        time.sleep(0.05)
    assert db.count_ops() == before_ops and len(smarthost.messages) == before_mails
    metrics = httpx.get(hub.service_url + "metrics", headers={"Authorization": f"token {hub.portal_token}"}).text
    assert re.search(rf'^wod_mail_refused_total\{{reason="{reason}"\}} [1-9]', metrics, re.M), metrics


def test_participant_mails_are_relayed_once_and_health_shows_the_relay(hub, smarthost, mail):
    before = len(smarthost.messages)
    mail(participant_bytes("zoe@example.org", "Vos accès", "Bonjour,\nmot de passe : é-Xq7"))
    got = smarthost.wait_for(before + 1)
    time.sleep(0.5)
    assert len(smarthost.messages) == before + 1
    msg = got[-1]["message"]
    assert msg["Subject"] == "Vos accès" and msg["To"] == "zoe@example.org" and msg["Message-ID"]
    assert msg.get_content().replace("\r\n", "\n") == "Bonjour,\nmot de passe : é-Xq7\n"
    state = health(hub)["mail"]
    assert state["listening"] and state["relay"]["state"] == "ok" and state["relay"]["delivered"] >= 1
    assert state["relay"]["pending"] == 0


def test_a_mail_verb_and_a_rest_verb_on_one_seat_run_one_after_the_other(hub, db, portal, mail):
    n, customer = 7, "9191"
    with hub.client() as api:
        created = check(api.post("api/create", json={"student": n, "customer": customer, "email": "s@example.org", "workshop": "WKSHP-Mail"}), 202)
    # At once, while the CREATE may still run: the mail's CLEANUP waits for it, as a second REST verb would.
    mail(portal_bytes(f"CLEANUP {n + BASE} {customer}", "WKSHP-Mail"))
    create, cleanup = wait_ops(db, 2, student=n)
    assert (create.id, create.verb, cleanup.verb) == (created["id"], "CREATE", "CLEANUP")
    assert create.status == cleanup.status == "succeeded", (create.error, cleanup.error)
    assert cleanup.started >= create.finished
    assert db.student(n).state == "free"


def test_a_reset_of_a_range_by_mail_sets_the_workshop_capacity(hub, db, portal, mail):
    since = settle(portal, db)
    mail(portal_bytes(f"RESET {13 + BASE},{15 + BASE} 5555", "WKSHP-MailKeep"))
    (op,) = wait_ops(db, 1, verb="RESET", student=13)
    assert (op.status, op.student_last) == ("succeeded", 15), op.error
    assert portal.wait_for(lambda p: any(c.path == "/api/workshop/6" for c in p.accepted()[since:]), 30)
    assert [c.body for c in portal.accepted()[since:] if c.path == "/api/workshop/6"] == [{"capacity": "3"}]
    # Sent twice: nothing happened on those seats since, so it is the same RESET.
    mail(portal_bytes(f"RESET {13 + BASE},{15 + BASE} 5555", "WKSHP-MailKeep"))
    time.sleep(0.5)
    assert len(db.ops(verb="RESET", student=13)) == 1
