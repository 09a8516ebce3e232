"""Portal callbacks: the outbox and its client against a real loopback portal (tests/portal_server.py)."""

import asyncio
import datetime
import logging
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text, update
from traitlets import TraitError

from tests.portal_server import DEFAULT_PASSWORD, DEFAULT_USERNAME, PortalServer
from wod_jupyterhub.config import Wod
from wod_jupyterhub.passwords import Sealer, generate
from wod_jupyterhub.service.callbacks.portal import PortalCallbacks, WodPortal
from wod_jupyterhub.store.models import OutboxMessage, Store, utcnow

BASE = 1000
WORKSHOPS = [
    {"id": 17, "notebook": "WKSHP-Alpha", "reset": False, "range": [1, 20]},
    {"id": 23, "notebook": "WKSHP-Beta", "reset": True, "range": [21, 40]},
]


@pytest.fixture
def portal():
    with PortalServer(workshops=WORKSHOPS) as p:
        yield p


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    yield s
    s.dispose()


def make_outbox(store, url, sealer=None, **options):
    settings = dict(username=DEFAULT_USERNAME, password=DEFAULT_PASSWORD, retry_initial=0.02, retry_max=0.2, timeout=5)
    settings.update(options)
    return PortalCallbacks(
        store,
        sealer or Sealer(Fernet.generate_key().decode()),
        WodPortal(url=url, **settings),
        Wod(base_student_id=BASE),
    )


async def drain(outbox, limit=60.0):
    """Deliver until nothing is pending (the limit only stops a hung test)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while await asyncio.to_thread(outbox.pending):
        await outbox.deliver_once()
        assert loop.time() < end, f"{outbox.pending()} callbacks still pending after {limit} s"
        await asyncio.sleep(0.02)


def rows(store):
    with store.session() as s:
        return s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()


def put_bodies(portal, path):
    return [c.body for c in portal.accepted() if c.path == path]


async def test_each_builder_sends_the_original_contract(store, portal):
    outbox = make_outbox(store, portal.url)
    pw = generate()
    with store.session() as s:
        outbox.student_password(s, 5, pw, operation_id="op1")
        outbox.customer_active(s, 5, "825", True, operation_id="op1")
        outbox.customer_completion(s, 5, "825", 42)
        outbox.student_assigned(s, 5, False)
        outbox.student_assigned(s, 5, True)
        outbox.customer_active(s, 5, 825, False)
        outbox.customer_cleaned(s, 5, "825")
    outbox.notify()  # no loop running: harmless
    assert outbox.pending() == 7
    assert {m.key for m in rows(store)} == {"student:5"}
    assert rows(store)[0].operation_id == "op1"

    assert await outbox.deliver_once() == 7
    calls = portal.calls
    assert [(c.method, c.path, c.body) for c in calls] == [
        ("POST", "/api/login", {"username": DEFAULT_USERNAME, "password": DEFAULT_PASSWORD}),
        ("PUT", "/api/student/1005", {"password": pw}),
        ("PUT", "/api/customer/825", {"active": "true"}),
        ("PUT", "/api/customer/825", {"completionPercentage": "42"}),
        ("PUT", "/api/student/1005", {"assigned": "false"}),
        ("PUT", "/api/student/1005", {"assigned": "true"}),
        ("PUT", "/api/customer/825", {"active": "false"}),
        ("PUT", "/api/customer/825", {"cleaned": "true"}),
    ]
    assert all(c.status == 200 for c in calls)
    assert calls[0].token is None
    token = portal._tokens and next(iter(portal._tokens))
    assert token and all(c.token == token for c in calls[1:])
    assert portal.students["1005"] == {"password": pw, "assigned": "true"}
    assert outbox.pending() == 0 and all(m.delivered and not m.lease_owner for m in rows(store))
    assert await outbox.deliver_once() == 0  # delivered once, never again
    assert len(portal.calls) == len(calls)
    await outbox.close()


async def test_relogin_when_the_token_expired(store):
    with PortalServer(token_ttl=1.0) as portal:
        outbox = make_outbox(store, portal.url)
        with store.session() as s:
            outbox.student_assigned(s, 1, True)
        assert await outbox.deliver_once() == 1
        await asyncio.sleep(1.5)  # past the portal's token lifetime
        with store.session() as s:
            outbox.student_assigned(s, 1, False)
        assert await outbox.deliver_once() == 1
        calls = portal.calls
        assert [(c.method, c.path, c.status) for c in calls] == [
            ("POST", "/api/login", 200),
            ("PUT", "/api/student/1001", 200),
            ("PUT", "/api/student/1001", 401),
            ("POST", "/api/login", 200),
            ("PUT", "/api/student/1001", 200),
        ]
        assert calls[2].token == calls[1].token != calls[4].token
        assert [c.body for c in portal.accepted()] == [{"assigned": "true"}, {"assigned": "false"}]
        # Revoked on the portal's side rather than expired: same cure.
        portal.expire_tokens()
        with store.session() as s:
            outbox.student_assigned(s, 1, True)
        assert await outbox.deliver_once() == 1
        assert len(portal.logins()) == 3
        await outbox.close()


async def test_wrong_portal_credentials_keep_the_callbacks(store, portal, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-portal-password"
    outbox = make_outbox(store, portal.url, password=wrong)
    with store.session() as s:
        outbox.student_assigned(s, 2, True)
    assert await outbox.deliver_once() == 0
    (m,) = rows(store)
    assert m.attempts == 1 and m.delivered is None and m.failed is None
    assert "refused the login" in m.last_error and "401" in m.last_error
    assert "refused the login" in caplog.text
    assert wrong not in caplog.text and wrong not in m.last_error
    assert portal.accepted() == []
    await outbox.close()


async def test_portal_down_then_up_every_callback_once_in_order(store, portal):
    outbox = make_outbox(store, portal.url, concurrency=8)
    portal.down()
    expected = defaultdict(list)
    passwords = {}
    task = asyncio.create_task(outbox.run())
    # Interleaved across students, one transaction per step, like 50 operations running at once.
    for step in range(4):
        for n in range(1, 51):
            customer = f"9{n:03d}"
            with store.session() as s:
                if step == 0:
                    passwords[n] = generate()
                    outbox.student_password(s, n, passwords[n])
                    expected[n].append((f"/api/student/{n + BASE}", {"password": passwords[n]}))
                elif step == 1:
                    outbox.customer_active(s, n, customer, True)
                    expected[n].append((f"/api/customer/{customer}", {"active": "true"}))
                elif step == 2:
                    outbox.customer_completion(s, n, customer, n)
                    expected[n].append((f"/api/customer/{customer}", {"completionPercentage": str(n)}))
                else:
                    outbox.student_assigned(s, n, False)
                    expected[n].append((f"/api/student/{n + BASE}", {"assigned": "false"}))
            outbox.notify()
    assert outbox.pending() == 200

    def all_heads_tried():
        with store.session() as s:
            return s.scalar(select(text("count(*)")).select_from(OutboxMessage).where(OutboxMessage.attempts > 0)) >= 50

    for _ in range(3000):
        if await asyncio.to_thread(all_heads_tried):
            break
        await asyncio.sleep(0.02)
    assert await asyncio.to_thread(all_heads_tried), "the loop never tried while the portal was down"
    assert portal.calls == [] and outbox.pending() == 200
    assert all("ConnectError" in (m.last_error or "") for m in rows(store) if m.attempts)

    portal.up()
    loop = asyncio.get_running_loop()
    end = loop.time() + 60
    while await asyncio.to_thread(outbox.pending) and loop.time() < end:
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outbox.pending() == 0

    got = defaultdict(list)
    for c in portal.accepted():
        n = int(c.path.rsplit("/", 1)[1]) - BASE if c.path.startswith("/api/student/") else int(c.path[-3:])
        got[n].append((c.path, c.body))
    assert len(portal.accepted()) == 200
    assert dict(got) == dict(expected)  # each once, in order per student
    await outbox.close()


async def test_5xx_for_a_while_then_ok(store, portal):
    patient = make_outbox(store, portal.url, retry_initial=60, retry_max=120)
    with store.session() as s:
        patient.student_assigned(s, 3, True)
        patient.customer_active(s, 3, "77", True)
        patient.customer_cleaned(s, 3, "77")
    portal.fail(503)
    assert await patient.deliver_once() == 0
    assert await patient.deliver_once() == 0  # backed off: not even tried again yet
    head, *rest = rows(store)
    assert head.attempts == 1 and "503" in head.last_error
    assert head.next_attempt - utcnow() > datetime.timedelta(seconds=20)
    assert all(m.attempts == 0 for m in rest)
    assert [c.status for c in portal.calls] == [503]
    await patient.close()

    # The back-off is over (a quicker outbox on the same table stands for time passing).
    with store.session() as s:
        s.execute(update(OutboxMessage).values(next_attempt=utcnow()))
    outbox = make_outbox(store, portal.url)
    portal.fail(502, times=3)
    await drain(outbox)
    assert [(c.path, c.body) for c in portal.accepted()] == [
        ("/api/student/1003", {"assigned": "true"}),
        ("/api/customer/77", {"active": "true"}),
        ("/api/customer/77", {"cleaned": "true"}),
    ]
    assert {c.status for c in portal.calls} == {200, 502, 503}
    await outbox.close()


async def test_a_refused_callback_does_not_block_the_next(store, portal, caplog):
    outbox = make_outbox(store, portal.url)
    portal.reject("/api/customer/404", 404)
    with store.session() as s:
        outbox.student_assigned(s, 8, True)
        outbox.customer_active(s, 8, "404", True)
        outbox.customer_completion(s, 8, "404", 50)
        outbox.student_assigned(s, 8, False)
    with caplog.at_level(logging.WARNING, logger="wod.portal"):
        assert await outbox.deliver_once() == 2
    assert [c.body for c in portal.accepted()] == [{"assigned": "true"}, {"assigned": "false"}]
    dead = [m for m in rows(store) if m.failed]
    assert [m.body for m in dead] == [{"active": "true"}, {"completionPercentage": "50"}]
    assert all("HTTP 404" in m.last_error and m.delivered is None for m in dead)
    assert outbox.pending() == 0
    everything = rows(store)
    assert (sum(m.failed is not None for m in everything), sum(m.delivered is not None for m in everything)) == (2, 2)
    assert "refused callback" in caplog.text and "/api/customer/404" in caplog.text
    await outbox.close()


async def test_password_never_plain_in_the_database_or_logs(store, portal, caplog):
    caplog.set_level(logging.DEBUG)
    outbox = make_outbox(store, portal.url)
    refused, delivered = generate(), generate()
    # A careless portal quoting the body in its error must not leak it either.
    portal.reject("/api/student/1004", 400, echo_body=True)
    with store.session() as s:
        outbox.student_password(s, 4, refused)
        outbox.student_password(s, 6, delivered)

    def raw():
        with store.engine.connect() as conn:
            return repr(conn.execute(text("SELECT * FROM wod_outbox")).all())

    before = raw()
    assert "$sealed" in before and refused not in before and delivered not in before
    assert await outbox.deliver_once() == 1
    assert put_bodies(portal, "/api/student/1006") == [{"password": delivered}]
    assert any(c.status == 400 and c.body == {"password": refused} for c in portal.calls)
    after = raw()
    assert refused not in after and delivered not in after
    (dead,) = [m for m in rows(store) if m.failed]
    assert "HTTP 400" in dead.last_error and "***" in dead.last_error
    assert "/api/student/1004" in caplog.text
    assert refused not in caplog.text and delivered not in caplog.text
    await outbox.close()


async def test_a_password_sealed_with_another_key_is_refused_not_stuck(store, portal):
    old = make_outbox(store, portal.url)
    with store.session() as s:
        old.student_password(s, 9, generate())
        old.student_assigned(s, 9, False)
    new = make_outbox(store, portal.url)  # another secret key
    assert await new.deliver_once() == 1
    (dead,) = [m for m in rows(store) if m.failed]
    assert "cannot be opened" in dead.last_error
    assert put_bodies(portal, "/api/student/1009") == [{"assigned": "false"}]
    await new.close()


async def test_url_empty_means_callbacks_off(store):
    outbox = PortalCallbacks(store, None, WodPortal(url=""), Wod(base_student_id=BASE))
    with store.session() as s:
        results = [
            outbox.student_password(s, 1, "pw-that-goes-nowhere"),
            outbox.student_assigned(s, 1, True),
            outbox.customer_active(s, 1, "5", True),
            outbox.customer_completion(s, 1, "5", 10),
            outbox.customer_cleaned(s, 1, "5"),
            outbox.workshop_capacity(s, "WKSHP-Alpha", 20),
        ]
    assert results == [None] * 6
    assert rows(store) == [] and outbox.pending() == 0
    assert await outbox.deliver_once() == 0
    await asyncio.wait_for(outbox.run(), 5)  # returns at once: nothing to deliver, ever


async def test_workshop_capacity_resolves_the_portal_id(store, portal):
    outbox = make_outbox(store, portal.url)
    with store.session() as s:
        m = outbox.workshop_capacity(s, "WKSHP-Beta", 20)
        outbox.workshop_capacity(s, "WKSHP-Beta", 12)
    assert m.key == "workshop:WKSHP-Beta"
    assert await outbox.deliver_once() == 2
    assert [(c.method, c.path, c.body) for c in portal.calls if c.path != "/api/login"] == [
        ("GET", "/api/workshops", None),
        ("PUT", "/api/workshop/23", {"capacity": "20"}),
        ("PUT", "/api/workshop/23", {"capacity": "12"}),  # the id came from the cache
    ]
    assert portal.workshops[1]["capacity"] == "12"

    with store.session() as s:
        outbox.workshop_capacity(s, "WKSHP-Gone", 3)
        outbox.workshop_capacity(s, "WKSHP-Alpha", 4)
    assert await outbox.deliver_once() == 1
    (dead,) = [m for m in rows(store) if m.failed]
    assert "no workshop whose notebook is 'WKSHP-Gone'" in dead.last_error
    assert put_bodies(portal, "/api/workshop/17") == [{"capacity": "4"}]

    # The portal renumbered Beta: the stale id is refused once, then looked up again.
    portal.workshops[1]["id"] = 31
    with store.session() as s:
        outbox.workshop_capacity(s, "WKSHP-Beta", 5)
        outbox.workshop_capacity(s, "WKSHP-Beta", 6)
    assert await outbox.deliver_once() == 1
    assert put_bodies(portal, "/api/workshop/31") == [{"capacity": "6"}]
    with pytest.raises(ValueError):
        with store.session() as s:
            outbox.workshop_capacity(s, "../etc", 1)
    await outbox.close()


async def test_two_processes_sharing_the_database_send_each_once_in_order(db_url, portal):
    stores = [Store(db_url), Store(db_url)]
    sealer = Sealer(Fernet.generate_key().decode())
    a, b = (make_outbox(s, portal.url, sealer=sealer, concurrency=4) for s in stores)
    assert a.owner != b.owner
    expected = defaultdict(list)
    for step in range(3):
        for n in range(1, 21):
            with stores[0].session() as s:
                if step == 1:
                    a.customer_active(s, n, f"c{n}", True)
                    expected[n].append({"active": "true"})
                else:
                    a.student_assigned(s, n, step == 0)
                    expected[n].append({"assigned": "true" if step == 0 else "false"})
    await asyncio.gather(drain(a), drain(b))
    got = defaultdict(list)
    for c in portal.accepted():
        n = int(c.path.rsplit("/", 1)[1]) - BASE if "/student/" in c.path else int(c.path.rsplit("/c", 1)[1])
        got[n].append(c.body)
    assert len(portal.accepted()) == 60 and dict(got) == dict(expected)
    for o in (a, b):
        await o.close()
    for s in stores:
        s.dispose()


async def test_a_message_leased_by_another_process_waits_for_its_lease(store, portal):
    outbox = make_outbox(store, portal.url)
    with store.session() as s:
        outbox.student_assigned(s, 11, True)
        outbox.student_assigned(s, 11, False)
    head = rows(store)[0].id
    with store.session() as s:
        s.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == head)
            .values(lease_owner="other-host:1:dead", lease_expires=utcnow().replace(year=utcnow().year + 1))
        )
    assert await outbox.deliver_once() == 0
    assert portal.calls == []  # not the head, not the one behind it
    with store.session() as s:  # the other process crashed: its lease ran out
        s.execute(update(OutboxMessage).where(OutboxMessage.id == head).values(lease_expires=utcnow().replace(year=2000)))
    assert await outbox.deliver_once() == 2
    assert [c.body for c in portal.accepted()] == [{"assigned": "true"}, {"assigned": "false"}]
    await outbox.close()


async def test_a_message_leased_by_a_dead_process_of_this_host_is_taken_over_at_once(store, portal):
    # A real process of this host claims the head, then dies (as if SIGKILLed mid-send).
    script = "from wod_jupyterhub.leases import make_owner; print(make_owner())"
    dead = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    outbox = make_outbox(store, portal.url)
    alive = make_outbox(store, portal.url).owner  # this very process: alive
    with store.session() as s:
        outbox.student_assigned(s, 12, True)
        outbox.student_assigned(s, 12, False)
    head = rows(store)[0].id
    next_year = utcnow().replace(year=utcnow().year + 1)
    with store.session() as s:
        s.execute(update(OutboxMessage).where(OutboxMessage.id == head).values(lease_owner=alive, lease_expires=next_year))
    assert await outbox.deliver_once() == 0 and portal.calls == []  # a live holder keeps its lease
    with store.session() as s:
        s.execute(update(OutboxMessage).where(OutboxMessage.id == head).values(lease_owner=dead, lease_expires=next_year))
    assert await asyncio.to_thread(outbox.queue.next_due_in) <= 0  # the loop does not sleep until the lease ends
    assert await outbox.deliver_once() == 2
    assert [c.body for c in portal.accepted()] == [{"assigned": "true"}, {"assigned": "false"}]
    assert all(m.delivered and not m.lease_owner for m in rows(store))
    await outbox.close()


def test_portal_settings_are_validated():
    assert WodPortal(url="http://portal:8021/").url == "http://portal:8021"
    assert not WodPortal().enabled and WodPortal(url="https://p.example").enabled
    for bad in ("ftp://portal", "portal:8021", "http://"):
        with pytest.raises(TraitError):
            WodPortal(url=bad)
    with pytest.raises(TraitError):
        WodPortal(timeout=0)
    with pytest.raises(TraitError):
        WodPortal(concurrency=0)
    for name, trait in WodPortal.class_traits(config=True).items():
        assert trait.help, f"WodPortal.{name} has no help"


async def test_notify_from_a_worker_thread_wakes_the_loop(store, portal):
    # A long poll: only notify() can make this delivery prompt enough to finish before the safety limit.
    outbox = make_outbox(store, portal.url, poll_interval=600)
    task = asyncio.create_task(outbox.run())
    await asyncio.sleep(0.1)  # the loop is waiting now

    def operation_step():
        with store.session() as s:
            outbox.student_assigned(s, 12, True)
        outbox.notify()

    await asyncio.to_thread(operation_step)
    assert await asyncio.to_thread(portal.wait_for, lambda p: p.accepted(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [c.body for c in portal.accepted()] == [{"assigned": "true"}]
    await outbox.close()


async def test_fake_portal_runs_as_its_own_process(tmp_path):
    import json
    import socket
    import subprocess
    import sys

    import httpx

    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parents[2] / "portal_server.py"), "--workshops", json.dumps(WORKSHOPS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        store = Store(f"sqlite:///{tmp_path / 'wod.sqlite'}")
        outbox = make_outbox(store, url)
        with store.session() as s:
            outbox.workshop_capacity(s, "WKSHP-Alpha", 20)
        async with httpx.AsyncClient(base_url=url) as control:
            assert (await control.post("/_control", json={"down_for": 1.5})).status_code == 200
            port = int(url.rsplit(":", 1)[1])
            for _ in range(500):  # until it really stops listening
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except ConnectionRefusedError:
                    break
                except ConnectionResetError:
                    pass  # caught in the backlog of the listener as it closed: look again
                await asyncio.sleep(0.01)
            assert await outbox.deliver_once() == 0  # down: refused
            assert "ConnectError" in rows(store)[0].last_error
            await drain(outbox)
            calls = (await control.get("/_calls")).json()
        assert [(c["method"], c["path"], c["body"]) for c in calls if c["path"] != "/api/login"] == [
            ("GET", "/api/workshops", None),
            ("PUT", "/api/workshop/17", {"capacity": "20"}),
        ]
        await outbox.close()
        store.dispose()
    finally:
        proc.terminate()
        proc.wait(10)
