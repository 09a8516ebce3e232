"""SIGKILL the service at random points of CREATE and CLEANUP; after a restart every seat is consistent.

The hub knows the ``wod`` service by URL and token only (not managed), so the
test runs the service itself, kills it with SIGKILL a random time after
sending a batch of CREATEs and CLEANUPs, restarts it, lets it recover, and
checks every seat:

* no operation stays queued or running, none failed, no student lease is left;
* the assignment matches the home: ``active`` ⇔ the rendered workshop is there,
  ``free`` ⇔ no home, and no half-built or half-erased folder is left behind;
  a staged seat (``.student<N>/staged-*``, in its side folder) is whole, and what a killed
  stager left is removed by the next look at the free seats;
* the password hash matches the last password reported to the portal (the
  last password callback in the outbox, and what the portal got in the end)
  and, for a seat given by CREATE, the password that CREATE's result reports.

On PostgreSQL, two service processes share one database: the per-student lease lives in the
database, so operations on one student are serialized even when they reach different processes;
an operation left running by a killed process is taken over by the survivor.
"""

import random
import tempfile
import time
from pathlib import Path

import pytest

from tests.homeutil import side_entries, stages
from tests.hubutil import RealHub, free_port, write_workshop
from tests.pgutil import pg_database
from tests.portal_server import PortalServer
from tests.svcutil import DB, check
from wod_jupyterhub import passwords
from wod_jupyterhub.config import Wod
from wod_jupyterhub.seats import homes
from wod_jupyterhub.service.callbacks.portal import SEALED
from wod_jupyterhub.workshops.catalog import load_catalog

TRIALS = 20
STUDENTS = list(range(1, 9))
WORKSHOP = "WKSHP-Crash"


def _hooks(folder: Path):
    # Short sleeps widen the windows a kill can land in: inside hooks, between steps.
    for kind in ("create", "post-copy", "cleanup"):
        path = folder / f"{kind}-{WORKSHOP}.sh"
        path.write_text("#!/bin/sh\nsleep 0.05\necho done\n")
        path.chmod(0o755)


def crash_env(hubs, root: Path, portal, db_url=None, **kwargs) -> RealHub:
    nb = root / "notebooks"
    write_workshop(nb, WORKSHOP, (1, 20))
    scripts = root / "scripts"
    scripts.mkdir(parents=True)
    _hooks(scripts)
    return hubs(
        root / "hub",
        db_url=db_url,
        notebooks=[nb],
        managed_service=False,
        api_db_url=portal.url,
        wod_config={"student_min": 1, "student_max": 20, "scripts": [str(scripts)], "skel": ""},
        # A callback claimed by a killed process is taken over at once (same host), not after its lease.
        # The stager looks at the free seats every second, so what a killed one left goes quickly.
        extra_config="c.WodPortal.timeout = 2.0\nc.WodPortal.retry_initial = 0.2\nc.WodOperations.prepare_rescan = 1.0\n",
        **kwargs,
    )


def send_batch(api, db, rng):
    """CREATE the free seats, CLEANUP the held ones, in a random order; return how many were sent."""
    sent = 0
    students = list(STUDENTS)
    rng.shuffle(students)
    for n in students[: rng.randint(3, len(students))]:
        st = db.student(n)
        if st is not None and st.state == "active":
            body = {"student": n, "customer": st.customer}
            r = api.post("api/cleanup", json=body)
        else:
            body = {"student": n, "customer": f"cust-{n}-{rng.randint(0, 10**6)}", "email": "e@x", "workshop": WORKSHOP}
            r = api.post("api/create", json=body)
        assert r.status_code == 202, r.text
        sent += 1
    return sent


def wait_settled(db, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [o for o in db.ops() if o.status in ("queued", "running")]:
            return
        time.sleep(0.05)
    stuck = [(o.id, o.verb, o.student, o.status, [s["name"] for s in o.steps]) for o in db.ops() if o.status in ("queued", "running")]
    raise AssertionError(f"operations stuck after recovery: {stuck}")


def tree(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes(), p.lstat().st_mode)
        for p in sorted(folder.rglob("*"))
    }


_reference = {}


def check_stages(hub: RealHub, root: Path, timeout=20):
    """Every stage is whole (what homes.stage builds); a stage left half-built by a killed stager goes soon."""
    if "tree" not in _reference:
        ws = load_catalog(hub.notebooks).get(WORKSHOP)
        with tempfile.TemporaryDirectory() as tmp:
            ref = Wod(students_root=tmp, skel="")
            homes.stage(ref, ws, 1)
            [name] = stages(tmp)
            _reference["tree"] = tree(Path(tmp) / name)
    deadline = time.monotonic() + timeout
    while True:
        dead = [str(p) for p in root.glob(".student*/staging-*") if homes._dead_staging(str(p))]
        if not dead:
            break
        assert time.monotonic() < deadline, f"half-built stages of killed processes still there: {dead}"
        time.sleep(0.1)
    for p in root.glob(".student*/staged-*"):
        try:
            got = tree(p)
        except FileNotFoundError:
            continue  # a CREATE took it, or an erase removed it, while we looked
        assert got == _reference["tree"], f"{p.name} is not a whole stage"


def check_consistent(hub: RealHub, db: DB, sealer):
    ops = db.ops()
    failed = [(o.verb, o.student, o.error) for o in ops if o.status != "succeeded"]
    assert not failed, failed
    root = Path(hub.students_root)
    leftovers = [n for n in side_entries(root) if "/staged-" not in n and "/staging-" not in n]
    assert not leftovers, f"half-built or half-erased folders left: {leftovers}"
    check_stages(hub, root)
    # A live process may be preparing a free seat under its lease for a few ms, and a lease of a process
    # killed while preparing is released by the next look for dead owners (every second): wait for both.
    deadline = time.monotonic() + 20
    while any((st := db.student(n)) is not None and st.lock_owner for n in STUDENTS) and time.monotonic() < deadline:
        time.sleep(0.05)
    for n in STUDENTS:
        st = db.student(n)
        if st is None:
            continue
        assert st.lock_owner is None, (n, st.lock_owner)
        home = root / f"student{n}"
        if st.state == "active":
            assert (home / WORKSHOP / "0-ReadMeFirst.ipynb").is_file(), f"student{n} is active without its workshop"
        else:
            assert st.state == "free", (n, st.state)
            assert not home.exists(), f"student{n} is free but its home is still there"
        mine = [o for o in ops if o.student == n]
        if not mine:
            continue
        # The last password reported: the newest password callback of the student.
        reported = [m for m in db.outbox(n) if "password" in m.body]
        assert reported, f"no password was ever reported for student{n}"
        last = sealer.open(reported[-1].body["password"][SEALED])
        assert passwords.verify_password(last, st.password_hash), f"student{n}: the hash is not the last reported password"
        if st.state == "active":
            create = [o for o in mine if o.verb == "CREATE"][-1]
            assert passwords.verify_password(sealer.open(create.result["password"]), st.password_hash)


def run_trials(hub, db, portal, trials, seed, check_portal=True):
    """Two service processes share the database; each trial SIGKILLs one of them (every fourth: both).

    The survivor takes over the victim's operations at once (same host: the
    victim's pid is gone), so trials need not wait for a restart; the victim
    restarts meanwhile. When both die, the restarted one recovers everything.
    """
    rng = random.Random(seed)
    sealer = passwords.Sealer(hub.secret_key)
    services = [hub.service_process("service-0.log"), hub.service_process("service-1.log", port=free_port())]
    kills = []
    try:
        for s in services:
            s.start()
        for trial in range(trials):
            for s in services:
                if not s.alive:
                    s.start(wait=False)  # a restart takes seconds: the other process serves meanwhile
            both = trial % 4 == 3
            ready = [s for s in services if s.ready()]
            if both or not ready:
                for s in services:
                    s.wait_ready()
                ready = services
            entry = rng.choice(ready)
            with hub.client(base_url=entry.url) as api:
                sent = send_batch(api, db, rng)
            delay = rng.uniform(0.0, 0.3)
            time.sleep(delay)
            running = sum(1 for o in db.ops() if o.status == "running")
            victims = services if both else [rng.choice(services)]
            for v in victims:
                v.kill9()
            kills.append((trial, sent, round(delay, 3), running, len(victims)))
            if both:
                services[0].start()
            wait_settled(db)
            check_consistent(hub, db, sealer)
        # Every callback reaches the portal (a dead process's claims are taken over at once),
        # and the portal's last password per student is the one the hash checks.
        for s in services:
            if not s.alive:
                s.start()
        if not check_portal:
            return kills
        assert portal.wait_for(lambda p: not [m for m in db.outbox() if m.delivered is None], 60), "callbacks left undelivered"
        for n in STUDENTS:
            st = db.student(n)
            if st is None or st.password_hash is None:
                continue
            got = [c.body["password"] for c in portal.accepted() if c.path == f"/api/student/{n}" and "password" in c.body]
            assert got and passwords.verify_password(got[-1], st.password_hash), f"portal's last password for student{n} is stale"
    finally:
        for s in services:
            s.stop()
    # The kills must have hit operations in flight, or the test proves nothing.
    assert sum(1 for k in kills if k[3] > 0) >= trials // 2, kills
    return kills


@pytest.fixture(scope="module")
def portal():
    with PortalServer() as p:
        yield p


def test_sigkill_during_create_and_cleanup_sqlite(hubs, tmp_path_factory, portal):
    root = tmp_path_factory.mktemp("crash")
    with crash_env(hubs, root, portal) as hub:
        db = DB(hub.db_url)
        try:
            kills = run_trials(hub, db, portal, TRIALS, seed=20261122)
            # Both ways of provisioning ran under the kills: into a staged seat and from scratch.
            provisions = [s.get("detail", {}).get("staged") for o in db.ops(verb="CREATE") for s in o.steps if s["name"] == "provision"]
            assert True in provisions and False in provisions, provisions
        finally:
            db.dispose()
    assert len(kills) == TRIALS


# -- PostgreSQL, two service processes on one database -----------------------


@pytest.fixture(scope="module")
def pg_env(module_hubs, tmp_path_factory, portal):
    url, drop = pg_database()
    root = tmp_path_factory.mktemp("pg")
    hub = crash_env(module_hubs, root, portal, db_url=url)
    try:
        with hub:
            db = DB(hub.db_url)
            yield hub, db
            db.dispose()
    finally:
        drop()


@pytest.fixture(scope="module")
def two(pg_env):
    hub, _ = pg_env
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


def test_verbs_on_one_student_through_two_processes_run_one_at_a_time(pg_env, two):
    hub, db = pg_env
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


def test_a_burst_across_two_processes(pg_env, two):
    hub, db = pg_env
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


def test_sigkill_on_postgresql(pg_env, two, portal):
    hub, db = pg_env
    for s in two:
        s.stop()
    kills = run_trials(hub, db, portal, 6, seed=42, check_portal=False)
    assert len(kills) == 6
