"""Each seat has an end: set at CREATE, extended (REST, ``wod extend``), and cleaned up by the service past it.

A real hub that knows the ``wod`` service by URL (not managed), so the test
runs the service itself and kills it with SIGKILL between a seat's end and
its CLEANUP; a recording portal on loopback receives the callbacks.
"""

import datetime
import time

import pytest

from tests.cliutil import wod
from tests.hubutil import write_workshop
from tests.portal_server import PortalServer
from tests.svcutil import DB, check

WORKSHOP = "WKSHP-Ends"
HOURS = 3  # the workshop's duration: in wod.yml


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def parse(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def portal():
    with PortalServer(workshops=[{"id": 3, "notebook": WORKSHOP}]) as p:
        yield p


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory, portal):
    root = tmp_path_factory.mktemp("ends")
    folder = write_workshop(root / "notebooks", WORKSHOP, (1, 10))
    with open(folder / "wod.yml", "a") as f:
        f.write(f"duration: {HOURS}\n")
    write_workshop(root / "notebooks", "WKSHP-Plain", (11, 12))
    wod_config = {"student_min": 1, "student_max": 20, "skel": "", "expiry_grace": 1.0, "expiry_interval": 0.3, "default_duration": 1.5}
    with module_hubs(
        root, notebooks=[root / "notebooks"], managed_service=False, api_db_url=portal.url, wod_config=wod_config,
        extra_config="c.WodPortal.retry_initial = 0.2\n",
    ) as h:
        h.svc = h.service_process().start()
        yield h
        h.svc.kill9()


def create(hub, n, customer, workshop=WORKSHOP, **more):
    with hub.client("portal") as c:
        r = c.post("api/create?wait=60", json={"student": n, "customer": customer, "email": "e@example.com", "workshop": workshop, **more})
    op = check(r, 200)
    assert op["status"] == "succeeded", op
    return op


def test_a_seat_ends_after_its_workshops_duration_else_the_default_else_when_asked(hub):
    op = create(hub, 1, "c-1")
    ends = parse(op["result"]["ends_at"])
    assert abs((ends - now()).total_seconds() - HOURS * 3600) < 60
    asked = (now() + datetime.timedelta(hours=5)).replace(microsecond=0)
    op = create(hub, 2, "c-2", ends_at=asked.isoformat())
    assert parse(op["result"]["ends_at"]) == asked
    op = create(hub, 11, "c-11", workshop="WKSHP-Plain")  # no duration in its wod.yml: c.Wod.default_duration
    assert abs((parse(op["result"]["ends_at"]) - now()).total_seconds() - 1.5 * 3600) < 60
    with hub.client("portal") as c:
        seat = check(c.get("api/students/2"), 200)
        assert parse(seat["ends_at"]) == asked and 5 * 3600 - 60 < seat["seconds_left"] <= 5 * 3600
        free = check(c.get("api/students/15"), 200)
        assert free["ends_at"] is None and free["seconds_left"] is None
    # An end in the past, or one that is not a time: refused, nothing queued.
    db = DB(hub.db_url)
    before = db.count_ops()
    with hub.client("portal") as c:
        for bad in ("2001-01-01T00:00:00Z", "tomorrow"):
            r = c.post("api/create", json={"student": 3, "customer": "c-3", "email": "e@x", "workshop": WORKSHOP, "ends_at": bad})
            assert check(r, 400)["error"] == "bad_field"
    assert db.count_ops() == before
    status = wod(hub, "status", WORKSHOP)
    assert status.returncode == 0, status.stderr
    assert "ENDS" in status.stdout and asked.strftime("%Y-%m-%dT%H:%M:%S") in status.stdout
    db.dispose()


def test_an_admin_extends_a_seat_over_rest_and_with_wod_extend_journaled(hub):
    create(hub, 4, "c-4")
    with hub.client("portal") as c:
        before = parse(check(c.get("api/students/4"), 200)["ends_at"])
        answer = check(c.post("api/students/4/extend", json={"minutes": 30}), 200)
        assert parse(answer["ends_at"]) - before == datetime.timedelta(minutes=30)
        assert parse(check(c.get("api/students/4"), 200)["ends_at"]) == parse(answer["ends_at"])
        op = check(c.get(f"api/operations/{answer['operation']}"), 200)
        assert op["verb"] == "EXTEND" and op["status"] == "succeeded" and op["student"] == 4
        [entry] = op["steps"]
        assert entry["name"] == "extend" and entry["detail"]["minutes"] == 30 and entry["detail"]["by"] == "wod-portal"
        # Bad input: a sentence, a 4xx, nothing changed.
        for body, status in (({"minutes": 0}, 400), ({"minutes": 10, "ends_at": "2030-01-01T00:00:00Z"}, 400), ({"hours": 1}, 400),
                             ({"ends_at": "1999-01-01T00:00:00Z"}, 400), ({"minutes": "ten"}, 400)):
            r = c.post("api/students/4/extend", json=body)
            assert check(r, status)["message"], body
        assert check(c.post("api/students/16/extend", json={"minutes": 5}), 409)["message"].startswith("student 16 is not active")
        assert parse(check(c.get("api/students/4"), 200)["ends_at"]) == parse(answer["ends_at"])
    with hub.client("noscope") as c:
        check(c.post("api/students/4/extend", json={"minutes": 5}), 403)
    with hub.client(None) as c:
        check(c.post("api/students/4/extend", json={"minutes": 5}), 401)
    r = wod(hub, "extend", "4", "--minutes", "15")
    assert r.returncode == 0, r.stderr
    assert "student4: ends at" in r.stdout
    with hub.client("portal") as c:
        assert parse(check(c.get("api/students/4"), 200)["ends_at"]) == parse(answer["ends_at"]) + datetime.timedelta(minutes=15)
    r = wod(hub, "extend", "17", "--minutes", "15")
    assert r.returncode == 1 and "student17: not extended" in r.stderr and "Traceback" not in r.stderr


def _wait(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_a_seat_past_its_end_is_cleaned_up_once_across_a_restart_and_the_portals_cleanup_is_answered(hub, portal):
    db = DB(hub.db_url)
    ends = now() + datetime.timedelta(seconds=3)
    create(hub, 5, "c-5", ends_at=ends.isoformat())
    create(hub, 6, "c-6")  # its end is hours away: left alone
    # Down before the end: the restarted service finds the seat past it and does what is due.
    hub.svc.kill9()
    time.sleep(max(0.0, (ends - now()).total_seconds()) + 1.2)
    hub.svc.start()
    op = _wait(lambda: next((o for o in db.ops(student=5, verb="CLEANUP") if o.status == "succeeded"), None))
    assert op.steps[0]["name"] == "expired" and op.customer == "c-5"
    assert [s["name"] for s in op.steps][-1] == "release"
    assert db.student(5).state == "free" and db.student(5).ends_at is None
    assert db.student(6).state == "active"

    def calls():
        return [c.body for c in portal.accepted() if c.path == "/api/customer/c-5"]

    _wait(lambda: {"cleaned": "true"} in calls())
    # The portal's own CLEANUP, later: answered with the service's, nothing runs again.
    outbox = len(db.outbox(5))
    with hub.client("portal") as c:
        answer = check(c.post("api/cleanup?wait=10", json={"student": 5, "customer": "c-5"}), 200)
    assert answer["repeat"] is True and answer["id"] == op.id and answer["status"] == "succeeded"
    assert [o.id for o in db.ops(student=5, verb="CLEANUP")] == [op.id]
    assert len(db.outbox(5)) == outbox
    time.sleep(1.0)  # a few passes of the expiry loop: nothing more queued
    assert [o.id for o in db.ops(student=5, verb="CLEANUP")] == [op.id]
    assert calls().count({"cleaned": "true"}) == 1 and sum("completionPercentage" in b for b in calls()) == 1
    db.dispose()
