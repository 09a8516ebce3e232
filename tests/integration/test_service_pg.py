"""The service on PostgreSQL, with two service processes sharing one database.

The per-student lease lives in the database, so operations on one student
are serialized even when they reach different processes; an operation left
running by a killed process is taken over by the survivor.
"""

import time

import pytest

from tests.conftest import pg_database
from tests.hubutil import free_port
from tests.integration.test_service_crash import WORKSHOP, crash_env, run_trials
from tests.portal_server import PortalServer
from tests.svcutil import DB, check


@pytest.fixture(scope="module")
def portal():
    with PortalServer() as p:
        yield p


@pytest.fixture(scope="module")
def env(tmp_path_factory, portal):
    url, drop = pg_database()
    root = tmp_path_factory.mktemp("pg")
    hub = crash_env(root, portal, db_url=url)
    try:
        with hub:
            db = DB(hub.db_url)
            yield hub, db
            db.dispose()
    finally:
        drop()


@pytest.fixture(scope="module")
def two(env):
    hub, _ = env
    a, b = hub.service_process("pg-a.log"), hub.service_process("pg-b.log", port=free_port())
    a.start(wait=False)
    b.start(wait=False)
    a.wait_ready()
    b.wait_ready()
    yield a, b
    a.stop()
    b.stop()


def _wait_all(api, ids, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        ops = [check(api.get(f"api/operations/{i}"), 200) for i in ids]
        if all(o["status"] in ("succeeded", "failed") for o in ops) or time.monotonic() > deadline:
            return ops
        time.sleep(0.1)


def test_verbs_on_one_student_through_two_processes_run_one_at_a_time(env, two):
    hub, db = env
    a, b = two
    n = 5
    ids = []
    with hub.client(base_url=a.url) as ca, hub.client(base_url=b.url) as cb:
        for customer in ["pa", "pb", "pc", "pd"]:
            for verb in ("create", "cleanup"):
                body = {"student": n, "customer": customer}
                if verb == "create":
                    body.update(email="e@x", workshop=WORKSHOP)
                client = ca if (len(ids) % 2 == 0) else cb
                ids.append(check(client.post(f"api/{verb}", json=body), 202)["id"])
        ops = _wait_all(ca, ids)
    assert [o["status"] for o in ops] == ["succeeded"] * len(ids), [(o["verb"], o["error"]) for o in ops]
    spans = [(o["started"], o["finished"]) for o in ops]
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, spans
    st = db.student(n)
    assert st.state == "free" and st.lock_owner is None


def test_a_burst_across_two_processes(env, two):
    hub, db = env
    a, b = two
    with hub.client(base_url=a.url) as ca, hub.client(base_url=b.url) as cb:
        ids = []
        for n in range(10, 20):
            client = ca if n % 2 else cb
            body = {"student": n, "customer": f"pg-{n}", "email": "e@x", "workshop": WORKSHOP}
            ids.append(check(client.post("api/create", json=body), 202)["id"])
        ops = _wait_all(ca, ids)
        assert [o["status"] for o in ops] == ["succeeded"] * len(ids), [o["error"] for o in ops]
        for o in ops:
            assert db.password_ok(o["student"], o["result"]["password"])
        cleanups = [check(cb.post("api/cleanup?wait=60", json={"student": n, "customer": f"pg-{n}"}), 200) for n in range(10, 20)]
    assert all(o["status"] == "succeeded" for o in cleanups)
    # Both processes took part (they share the queue through the database).
    assert len({o.owner for o in db.ops() if o.id in ids}) == 2


def test_sigkill_on_postgresql(env, two, portal):
    hub, db = env
    for s in two:
        s.stop()
    kills = run_trials(hub, db, portal, 6, seed=42, check_portal=False)
    assert len(kills) == 6
