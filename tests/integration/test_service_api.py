"""The wod service end to end: a real hub (its proxy, the managed service), a real loopback portal.

One hub for the module (a start costs ~7 s). Every answer is validated against
the OpenAPI document the service serves.
"""

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.homeutil import stages as staged_folders
from tests.hubutil import write_workshop
from tests.portal_server import PortalServer
from tests.svcutil import OPENAPI, check, hub_and_db, puts, settle
from wod_jupyterhub.store.models import SeatState

CUSTOMER = "825"


@pytest.fixture(scope="module")
def portal():
    with PortalServer(workshops=[{"id": 7, "notebook": "WKSHP-Keep"}]) as p:
        yield p


@pytest.fixture(scope="module")
def env(module_hubs, tmp_path_factory, portal):
    root = tmp_path_factory.mktemp("svc")
    nb = root / "notebooks"
    write_workshop(nb, "WKSHP-Svc", (1, 10))
    write_workshop(nb, "WKSHP-Keep", (11, 20), reset=True)
    write_workshop(nb, "WKSHP-Off", (21, 25), active=False)
    write_workshop(nb, "WKSHP-Hooked", (26, 30), readme_source="Appliance {{ APPLIANCE_IP }}, password {{ PASSSTU }}")
    write_workshop(nb, "WKSHP-FailHook", (31, 35))
    write_workshop(nb, "WKSHP-Undef", (36, 40), readme_source="{{ NOPE }}")
    write_workshop(nb, "WKSHP-Slow", (41, 45))
    write_workshop(nb, "WKSHP-Over", (16, 17))  # inside WKSHP-Keep's range: seats two workshops share
    scripts = root / "scripts"
    scripts.mkdir()
    hooks = {
        "create-WKSHP-Hooked.sh": '#!/bin/sh\necho "create STDID=$STDID CUSTOMER=$CUSTOMER WORKSHOP=$WORKSHOP CHALLENGE=$CHALLENGE"\n'
        'printf "APPLIANCE_IP: 10.0.0.%s\\n" "$STDID" > "$WOD_VARS_FILE"\n',
        "post-copy-WKSHP-Hooked.sh": '#!/bin/sh\necho "post-copy $STDID"\n',
        "cleanup-WKSHP-Hooked.sh": '#!/bin/sh\necho "cleanup $STDID"\n',
        "create-WKSHP-FailHook.sh": '#!/bin/sh\necho "appliance down for $STDID"\nexit 3\n',
        "create-WKSHP-Slow.sh": "#!/bin/sh\nsleep 60\n",
    }
    for name, text in hooks.items():
        (scripts / name).write_text(text)
        (scripts / name).chmod(0o755)
    hub = module_hubs(
        root / "hub",
        notebooks=[nb],
        api_db_url=portal.url,
        wod_config={"student_min": 1, "student_max": 60, "scripts": [str(scripts)], "skel": ""},
        service_config={"WodHooks.timeout": 3.0},
        # Free seats are looked at every 2 s (not 60), so the preparation test need not wait long.
        extra_config="c.WodOperations.prepare_rescan = 2.0",
    )
    with hub_and_db(hub) as env:
        yield env


@pytest.fixture
def hub(env):
    return env[0]


@pytest.fixture
def db(env):
    return env[1]


@pytest.fixture
def api(hub):
    with hub.client() as c:
        yield c


def create(api, n, customer=CUSTOMER, workshop="WKSHP-Svc", wait=60, expect=200):
    r = api.post(f"api/create?wait={wait}", json={"student": n, "customer": customer, "email": "p@example.com", "workshop": workshop})
    return check(r, expect)


def verb(api, name, body, wait=60, expect=200):
    return check(api.post(f"api/{name}?wait={wait}", json=body), expect)


def home(hub, n):
    return Path(hub.students_root) / f"student{n}"


# ------------------------------------------------------------------ plumbing


def test_health_needs_no_token_and_openapi_is_served(hub):
    with hub.client(None) as anon:
        data = check(anon.get("api/health"), 200)
        assert data["status"] == "ok" and data["database"] == "ok"
        doc = check(anon.get("api/openapi.json"), 200)
    assert doc == OPENAPI


def test_no_token_is_401_and_token_without_scope_is_403(hub, db):
    before = db.count_ops()
    body = {"student": 1, "customer": CUSTOMER, "email": "e@x", "workshop": "WKSHP-Svc"}
    with hub.client(None) as anon, hub.client("noscope") as noscope:
        for client, status in ((anon, 401), (noscope, 403)):
            err = check(client.post("api/create", json=body), status)
            assert err["message"]
            check(client.get("api/workshops"), status)
            check(client.get("api/students/1"), status)
            check(client.get("api/operations"), status)
            assert client.get("metrics").status_code == status
    assert db.count_ops() == before


def test_workshops_catalog(api):
    data = check(api.get("api/workshops"), 200)
    names = {w["name"] for w in data["workshops"]}
    assert {"WKSHP-Svc", "WKSHP-Keep", "WKSHP-Off"} <= names
    ws = check(api.get("api/workshops/WKSHP-Keep"), 200)
    assert ws["reset"] is True and ws["range"] == [11, 20]
    assert check(api.get("api/workshops/CHLG-Keep"), 200)["name"] == "WKSHP-Keep"
    check(api.get("api/workshops/WKSHP-Nope"), 404)


# ------------------------------------------------------------------ the verbs


def test_create_then_cleanup_through_the_proxy(hub, db, portal):
    n = 2
    since = settle(portal, db)
    with hub.client(via_proxy=True) as proxied:
        op = create(proxied, n)
    assert op["status"] == "succeeded", (op["error"], op["steps"])
    # The journal tells the story in the order the steps began; this workshop has no hooks (see the hooks test).
    steps = [(s["name"], s["status"]) for s in op["steps"]]
    assert steps == [
        ("rotate", "done"), ("hub", "done"), ("hooks-create", "skipped"), ("provision", "done"),
        ("hooks-post-copy", "skipped"), ("assign", "done"),
    ]
    password = op["result"]["password"]
    assert password and op["result"]["login_url"].endswith("/hub/login")
    assert db.password_ok(n, password)
    readme = json.loads((home(hub, n) / "WKSHP-Svc" / "0-ReadMeFirst.ipynb").read_text())
    assert f"Your password is {password}" in "".join(readme["cells"][0]["source"])
    assert (home(hub, n) / ".jupyter").exists() or any(home(hub, n).iterdir())
    st = db.student(n)
    assert (st.state, st.customer, st.workshop) == ("active", CUSTOMER, "WKSHP-Svc")
    generation = st.generation
    assert hub.hub_api("GET", f"/users/student{n}").status_code == 200
    # The callbacks of CREATE, in the original's order.
    assert portal.wait_for(lambda p: len(puts(p, {f"/api/student/{n}", f"/api/customer/{CUSTOMER}"}, since)) >= 2, 30)
    assert puts(portal, {f"/api/student/{n}", f"/api/customer/{CUSTOMER}"}, since) == [
        (f"/api/student/{n}", {"password": password}),
        (f"/api/customer/{CUSTOMER}", {"active": "true"}),
    ]
    # The participant ran one of the three non-empty code cells; and holds an API token.
    ex = home(hub, n) / "WKSHP-Svc" / "1-Exercise.ipynb"
    nb = json.loads(ex.read_text())
    nb["cells"][0]["execution_count"] = 1
    ex.write_text(json.dumps(nb))
    r = hub.hub_api("POST", f"/users/student{n}/tokens", json={"note": "participant"})
    assert r.status_code == 201, r.text
    token_id = r.json()["id"]

    since = settle(portal, db)
    with hub.client() as api:
        op = verb(api, "cleanup", {"student": n, "customer": CUSTOMER})
    assert op["status"] == "succeeded", (op["error"], op["steps"])
    assert op["result"]["completion"]["ratio"] == 33
    assert op["result"].get("password") is None
    assert not home(hub, n).exists()
    st = db.student(n)
    assert st.state == "free" and st.customer is None and st.generation > generation
    assert not db.password_ok(n, password)
    tokens = hub.hub_api("GET", f"/users/student{n}/tokens").json()
    assert token_id not in [t["id"] for t in tokens.get("api_tokens", [])]
    want = 4
    assert portal.wait_for(lambda p: len(puts(p, {f"/api/student/{n}", f"/api/customer/{CUSTOMER}"}, since)) >= want, 30)
    got = puts(portal, {f"/api/student/{n}", f"/api/customer/{CUSTOMER}"}, since)
    assert [path for path, _ in got] == [f"/api/student/{n}", f"/api/customer/{CUSTOMER}", f"/api/student/{n}", f"/api/customer/{CUSTOMER}"]
    new_password = got[0][1]["password"]
    assert db.password_ok(n, new_password)
    assert got[1:] == [
        (f"/api/customer/{CUSTOMER}", {"completionPercentage": "33"}),
        (f"/api/student/{n}", {"assigned": "false"}),
        (f"/api/customer/{CUSTOMER}", {"cleaned": "true"}),
    ]
    with hub.client() as api:
        seat = check(api.get(f"api/students/{n}"), 200)
        assert seat["state"] == "free" and seat["completion"]["ratio"] == 33 and seat["home_exists"] is False
        listed = check(api.get(f"api/operations?student={n}"), 200)["operations"]
        assert [o["verb"] for o in listed[:2]] == ["CLEANUP", "CREATE"]
        assert check(api.get(f"api/operations/{op['id']}"), 200)["status"] == "succeeded"


def test_cleanup_of_a_hostile_home_succeeds_and_counts_only_the_workshops_notebooks(hub, db, api):
    """Malformed notebooks, a fabricated one at 100 %, a link to / in the workshop folder."""
    n = 5
    assert create(api, n, "c-hostile")["status"] == "succeeded"
    ws = home(hub, n) / "WKSHP-Svc"
    ex = ws / "1-Exercise.ipynb"
    nb = json.loads(ex.read_text())
    nb["cells"][0]["execution_count"] = 1
    ex.write_text(json.dumps(nb))
    malformed = '{"nbformat": 3, "worksheets": [{"cells": 5}]}'
    (ws / "0-ReadMeFirst.ipynb").write_text(malformed)  # a provisioned notebook the student broke
    (ws / "malformed.ipynb").write_text(malformed)
    cell = {"cell_type": "code", "source": "x", "execution_count": 1}
    (ws / "fabricated.ipynb").write_text(json.dumps({"nbformat": 4, "cells": [cell] * 100}))
    (ws / "root").symlink_to("/", target_is_directory=True)
    op = verb(api, "cleanup", {"student": n, "customer": "c-hostile"})
    assert op["status"] == "succeeded", (op["error"], op["steps"])
    ratio = op["result"]["completion"]
    assert (ratio["executed"], ratio["total"], ratio["ratio"]) == (1, 2, 50)
    assert {e["path"]: bool(e["error"]) for e in ratio["notebooks"]} == {"0-ReadMeFirst.ipynb": True, "1-Exercise.ipynb": False}
    # Read once the student's server is stopped (the completion is read before the erase).
    names = [s["name"] for s in op["steps"]]
    assert names.index("end-sessions") < names.index("completion") < names.index("release"), names
    assert not home(hub, n).exists() and db.student(n).state == "free"


def stages(hub) -> dict:
    """Seat number -> its staged folders (``.student<N>/staged-<key>``)."""
    out: dict = {}
    for name in staged_folders(hub.students_root):
        out.setdefault(int(name[len(".student") :].split("/", 1)[0]), []).append(name)
    return out


def stager_done(hub, timeout=60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = check(httpx.get(hub.service_url + "api/health"), 200)
        if health["prepare_pending"] == 0 and health["running"] == 0:
            return health
        time.sleep(0.1)
    raise AssertionError(f"the stager still has seats to look at after {timeout} s: {health}")


def test_free_seats_are_staged_and_a_create_renders_into_its_stage(hub, db, api):
    stager_done(hub)
    staged = stages(hub)
    # Every free seat of an active workshop, one stage each; none for the inactive WKSHP-Off (21..25),
    # none for the seats of two workshops (16, 17: WKSHP-Keep's and WKSHP-Over's).
    free = [n for n in range(1, 46) if (st := db.student(n)) is None or st.state == "free"]
    assert all(len(staged.get(n, [])) == 1 for n in free if not (21 <= n <= 25 or n in (16, 17))), (free, staged)
    assert 16 not in staged and 17 not in staged
    assert not any(21 <= n <= 25 for n in staged)
    n = 6
    assert n in staged
    op = create(api, n, "c-staged")
    assert op["status"] == "succeeded", op["error"]
    [provision] = [s for s in op["steps"] if s["name"] == "provision"]
    assert provision["detail"] == {"staged": True}
    assert n not in stages(hub)  # the stage became the home
    assert "Your password is " + op["result"]["password"] in (home(hub, n) / "WKSHP-Svc" / "0-ReadMeFirst.ipynb").read_text()
    # An active seat is not staged again; once CLEANUP frees it, it is.
    stager_done(hub)
    assert n not in stages(hub)
    assert verb(api, "cleanup", {"student": n, "customer": "c-staged"})["status"] == "succeeded"
    stager_done(hub)
    assert len(stages(hub).get(n, [])) == 1
    assert not home(hub, n).exists()


def test_a_free_seat_has_its_hub_sessions_ended_ahead_so_its_create_need_not(hub, db, api):
    from sqlalchemy import update

    from wod_jupyterhub.store.models import Seat

    n = 10
    stager_done(hub)
    assert db.student(n).sessions_ended  # looked at at start-up: no hub user then, nothing to end
    # The pool's hub users were made at start-up, before any booking.
    assert hub.hub_api("GET", f"/users/student{n}").status_code == 200
    # As with a database that is new while the hub still has the pool's users from an earlier life:
    # a user with a token, and a seat whose history the service does not know.
    r = hub.hub_api("POST", f"/users/student{n}/tokens", json={"note": "from an earlier life"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    with db.engine.begin() as conn:
        conn.execute(update(Seat).where(Seat.number == n).values(sessions_ended=False))
    # The next look at the free seats (every 2 s here) ends it while the service is idle.
    deadline = time.monotonic() + 30
    while not db.student(n).sessions_ended:
        assert time.monotonic() < deadline, "the free seat was not prepared"
        time.sleep(0.1)
    assert httpx.get(hub.api_url + "/user", headers={"Authorization": f"token {token}"}).status_code == 403
    assert hub.hub_api("GET", f"/users/student{n}/tokens").json()["api_tokens"] == []
    op = create(api, n, "c-ahead")
    assert op["status"] == "succeeded", op["error"]
    [step] = [s for s in op["steps"] if s["name"] == "hub"]
    assert step["detail"] == {"revoked": "already: at the seat's last CLEANUP, PURGE or RESET, or while it was free"}
    assert db.student(n).sessions_ended is False  # the participant may log in: the next CREATE must ask
    assert verb(api, "cleanup", {"student": n, "customer": "c-ahead"})["status"] == "succeeded"
    assert db.student(n).sessions_ended is True


def test_cleanup_of_a_reset_workshop_keeps_the_home_until_reset(hub, db, portal, api):
    n, customer = 12, "c-keep"
    assert create(api, n, customer, "WKSHP-Keep")["status"] == "succeeded"
    since = settle(portal, db)
    op = verb(api, "cleanup", {"student": n, "customer": customer})
    assert op["status"] == "succeeded", (op["error"], op["steps"])
    assert db.student(n).state == "kept" and home(hub, n).is_dir()
    paths = {f"/api/student/{n}", f"/api/customer/{customer}"}
    assert portal.wait_for(lambda p: len(puts(p, paths, since)) >= 5, 30)
    got = puts(portal, paths, since)
    assert [b for _, b in got[1:]] == [
        {"completionPercentage": "0"}, {"assigned": "true"}, {"active": "false"}, {"cleaned": "true"},
    ]
    # A kept seat is not free for someone else until RESET.
    check(api.post("api/create", json={"student": n, "customer": "other", "email": "e@x", "workshop": "WKSHP-Keep"}), 409)

    since = settle(portal, db)
    op = verb(api, "reset", {"student": n, "customer": customer, "workshop": "WKSHP-Keep"})
    assert op["status"] == "succeeded", (op["error"], op["steps"])
    assert db.student(n).state == "free" and not home(hub, n).exists()
    assert portal.wait_for(lambda p: len(puts(p, paths, since)) >= 2, 30)
    got = puts(portal, paths, since)
    assert db.password_ok(n, got[0][1]["password"]) and got[1][1] == {"assigned": "false"}

    since = settle(portal, db)
    op = verb(api, "reset", {"students": [13, 15], "workshop": "WKSHP-Keep"})
    assert op["status"] == "succeeded" and op["students"] == [13, 15], op
    assert portal.wait_for(lambda p: any(c.path == "/api/workshop/7" for c in p.accepted()[since:]), 30)
    assert [c.body for c in portal.accepted()[since:] if c.path == "/api/workshop/7"] == [{"capacity": "3"}]
    check(api.post("api/reset", json={"student": 3, "workshop": "WKSHP-Svc"}), 422)


def test_reset_of_a_range_touches_only_the_seats_kept_for_its_workshop(hub, db, api):
    """Seat 16 is in session for another workshop whose range overlaps; 18 is free."""
    password = create(api, 16, "c-over", "WKSHP-Over")["result"]["password"]
    (home(hub, 16) / "work.txt").write_text("in session")
    assert create(api, 17, "c-kept", "WKSHP-Keep")["status"] == "succeeded"
    assert verb(api, "cleanup", {"student": 17, "customer": "c-kept"})["status"] == "succeeded"
    assert db.student(17).state == "kept"
    generation = db.student(16).generation
    op = verb(api, "reset", {"students": [16, 18], "workshop": "WKSHP-Keep"})
    assert op["status"] == "succeeded", (op["error"], op["steps"])
    [seats] = [s for s in op["steps"] if s["name"] == "seats"]
    assert seats["detail"]["seats"] == [17]
    # the other workshop's participant keeps seat, home, password and session
    st = db.student(16)
    assert (st.state, st.customer, st.workshop, st.generation) == ("active", "c-over", "WKSHP-Over", generation)
    assert db.password_ok(16, password) and (home(hub, 16) / "work.txt").read_text() == "in session"
    assert db.student(17).state == "free" and not home(hub, 17).exists()
    assert verb(api, "cleanup", {"student": 16, "customer": "c-over"})["status"] == "succeeded"


def test_purge_gets_a_broken_seat_back(hub, db, api):
    n = 7
    assert create(api, n, "c-broken")["status"] == "succeeded"
    # Break it: the home half gone, a stray file in its place.
    import shutil

    shutil.rmtree(home(hub, n))
    home(hub, n).write_text("not a folder")
    op = verb(api, "purge", {"student": n, "customer": "c-broken"})
    assert op["status"] == "succeeded", (op["error"], op["steps"])
    assert not home(hub, n).exists() and db.student(n).state == "free"
    # A seat nobody ever used, naming a workshop that does not exist.
    op = verb(api, "purge", {"student": 8, "customer": "c-x", "workshop": "WKSHP-Gone"})
    assert op["status"] == "succeeded", (op["error"], op["steps"])


def test_hooks_get_their_environment_and_feed_the_templates(hub, db, api):
    n = 27
    op = create(api, n, "c-hook", "CHLG-Hooked")
    assert op["status"] == "succeeded", (op["error"], op["steps"])
    steps = {s["name"]: s for s in op["steps"]}
    out = steps["hooks-create"]["detail"]["runs"][0]["output"]
    assert f"create STDID={n} CUSTOMER=c-hook WORKSHOP=WKSHP-Hooked CHALLENGE=1" in out
    assert steps["hooks-post-copy"]["detail"]["runs"][0]["output"].strip() == f"post-copy {n}"
    readme = (home(hub, n) / "WKSHP-Hooked" / "0-ReadMeFirst.ipynb").read_text()
    assert f"Appliance 10.0.0.{n}" in readme
    op = verb(api, "cleanup", {"student": n, "customer": "c-hook"})
    assert op["status"] == "succeeded"
    assert {s["name"]: s for s in op["steps"]}["hooks-cleanup"]["detail"]["runs"][0]["output"].strip() == f"cleanup {n}"


def test_failing_hook_fails_the_operation_with_its_output(hub, db, api):
    op = create(api, 32, "c-fail", "WKSHP-FailHook")
    assert op["status"] == "failed"
    assert "exited with status 3" in op["error"] and "appliance down for 32" in op["error"]
    failed = [s for s in op["steps"] if s["status"] == "failed"]
    assert failed and failed[0]["name"] == "hooks-create"
    assert db.student(32).state == "free" and not home(hub, 32).exists()
    op = create(api, 42, "c-slow", "WKSHP-Slow")
    assert op["status"] == "failed" and "timed out" in op["error"]


def test_render_error_fails_cleanly(hub, db, api):
    op = create(api, 37, "c-undef", "WKSHP-Undef")
    assert op["status"] == "failed" and "NOPE" in op["error"]
    assert db.student(37).state == "free" and not home(hub, 37).exists()


def test_seat_held_by_another_customer_is_409_and_changes_nothing(hub, db, api):
    n = 3
    first = create(api, n, "c-first")
    assert first["status"] == "succeeded"
    before = (db.count_ops(), db.student(n).generation, db.student(n).password_hash)
    err = check(api.post("api/create", json={"student": n, "customer": "c-second", "email": "e@x", "workshop": "WKSHP-Svc"}), 409)
    assert err["error"] == "conflict"
    check(api.post("api/cleanup", json={"student": n, "customer": "c-second"}), 409)
    assert (db.count_ops(), db.student(n).generation, db.student(n).password_hash) == before
    assert db.password_ok(n, first["result"]["password"])
    assert verb(api, "cleanup", {"student": n, "customer": "c-first"})["status"] == "succeeded"


def test_conflicting_verbs_on_one_student_run_one_at_a_time(hub, db, api):
    n = 4
    sequence = [("create", "c-a"), ("cleanup", "c-a"), ("create", "c-b"), ("cleanup", "c-b"), ("create", "c-c")]
    ids = []
    for name, customer in sequence:
        body = {"student": n, "customer": customer}
        if name == "create":
            body.update(email="e@x", workshop="WKSHP-Svc")
        ids.append(check(api.post(f"api/{name}", json=body), 202)["id"])
    ops = [check(api.get(f"api/operations/{i}?x=1".split("?")[0]), 200) for i in ids]
    deadline = time.monotonic() + 120
    while any(o["status"] in ("queued", "running") for o in ops) and time.monotonic() < deadline:
        time.sleep(0.1)
        ops = [check(api.get(f"api/operations/{i}"), 200) for i in ids]
    assert [o["status"] for o in ops] == ["succeeded"] * len(ops), [(o["verb"], o["error"]) for o in ops]
    spans = [(o["started"], o["finished"]) for o in ops]
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, spans  # each one started after the previous one finished
    st = db.student(n)
    assert st.state == "active" and st.customer == "c-c"
    assert db.password_ok(n, ops[-1]["result"]["password"])
    assert verb(api, "cleanup", {"student": n, "customer": "c-c"})["status"] == "succeeded"


def test_wait_zero_answers_202_with_a_queued_or_running_operation(api):
    op = check(api.post("api/purge?wait=0", json={"student": 9, "customer": "c-w"}), 202)
    assert op["status"] in ("queued", "running", "succeeded")
    assert op["result"] is None or op["status"] == "succeeded"
    # Let it end here, so the tests after this one start from a quiet seat.
    deadline = time.monotonic() + 30
    while op["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
        op = check(api.get(f"api/operations/{op['id']}"), 200)
    assert op["status"] == "succeeded", op


# ------------------------------------------------------------------ bad requests

HUGE = b'{"student": 1, "customer": "' + b"x" * (10 * 1024 * 1024) + b'"}'

BAD = [
    ("create", b"{", 400),
    ("create", b"[1, 2]", 400),
    ("create", b"", 400),
    ("create", b"\xff\xfe", 400),
    ("create", {"student": 1, "customer": CUSTOMER, "workshop": "WKSHP-Svc"}, 400),
    ("create", {"student": "1", "customer": CUSTOMER, "email": "e", "workshop": "WKSHP-Svc"}, 400),
    ("create", {"student": True, "customer": CUSTOMER, "email": "e", "workshop": "WKSHP-Svc"}, 400),
    ("create", {"student": 1.5, "customer": CUSTOMER, "email": "e", "workshop": "WKSHP-Svc"}, 400),
    # Integer customer ids are the portal's (test_mail_service); other types are not ids.
    ("create", {"student": 1, "customer": 82.5, "email": "e", "workshop": "WKSHP-Svc"}, 400),
    ("create", {"student": 1, "customer": True, "email": "e", "workshop": "WKSHP-Svc"}, 400),
    ("create", {"student": 1, "customer": "", "email": "e", "workshop": "WKSHP-Svc"}, 400),
    ("create", {"student": 1, "customer": "c" * 300, "email": "e", "workshop": "WKSHP-Svc"}, 400),
    ("create", {"student": 1, "customer": CUSTOMER, "email": "e", "workshop": "WKSHP-Svc", "extra": 1}, 400),
    ("create", {"student": 1, "customer": CUSTOMER, "email": "e", "workshop": "../../etc"}, 400),
    ("create", {"student": 1, "customer": CUSTOMER, "email": "e", "workshop": "WKSHP-Nope"}, 404),
    ("create", {"student": 21, "customer": CUSTOMER, "email": "e", "workshop": "WKSHP-Off"}, 422),
    ("create", {"student": 15, "customer": CUSTOMER, "email": "e", "workshop": "WKSHP-Svc"}, 422),
    ("create", {"student": 999, "customer": CUSTOMER, "email": "e", "workshop": "WKSHP-Svc"}, 422),
    ("create", {"student": 0, "customer": CUSTOMER, "email": "e", "workshop": "WKSHP-Svc"}, 422),
    ("create", {"student": -1, "customer": CUSTOMER, "email": "e", "workshop": "WKSHP-Svc"}, 422),
    ("create?wait=abc", {"student": 1, "customer": CUSTOMER, "email": "e", "workshop": "WKSHP-Svc"}, 400),
    ("create?wait=-1", {"student": 1, "customer": CUSTOMER, "email": "e", "workshop": "WKSHP-Svc"}, 400),
    ("create", HUGE, 413),
    # Nested past the JSON decoder's recursion limit: a 400, not a 500.
    ("create", b"[" * 100_000, 400),
    ("create", b'{"student": ' + b"[" * 100_000, 400),
    # Control characters in a customer id or an address never reach logs, callbacks or mails.
    ("create", {"student": 1, "customer": "82\x005", "email": "e@example.com", "workshop": "WKSHP-Svc"}, 400),
    ("create", {"student": 1, "customer": CUSTOMER, "email": "e@example.com\r\nBcc: x@y.z", "workshop": "WKSHP-Svc"}, 400),
    ("purge", {"student": 1, "customer": "c\u2028d"}, 400),
    ("create", b'{"student": 1, "customer": ' + b"[" * 20 + b"]" * 20 + b"}", 400),
    ("cleanup", {"student": 1}, 400),
    ("cleanup", {"student": 1000, "customer": CUSTOMER}, 422),
    ("cleanup", {"student": 1, "customer": CUSTOMER, "workshop": "a/b"}, 400),
    ("reset", {"student": 11}, 400),
    ("reset", {"student": 11, "students": [11, 12], "workshop": "WKSHP-Keep"}, 400),
    ("reset", {"students": [11], "workshop": "WKSHP-Keep"}, 400),
    ("reset", {"students": [15, 11], "workshop": "WKSHP-Keep"}, 422),
    ("reset", {"students": [11, 30], "workshop": "WKSHP-Keep"}, 422),
    ("reset", {"student": 1, "workshop": "WKSHP-Svc"}, 422),
    ("purge", {"customer": CUSTOMER}, 400),
    ("purge", {"student": None, "customer": CUSTOMER}, 400),
]


@pytest.mark.parametrize("path,body,status", BAD, ids=[f"{p}-{s}-{i}" for i, (p, _, s) in enumerate(BAD)])
def test_bad_verb_requests_change_nothing(hub, db, api, path, body, status):
    before = db.count_ops()
    seats = {n: (s.state, s.generation) for n in range(1, 61) if (s := db.student(n))}
    if isinstance(body, bytes):
        r = api.post(f"api/{path}", content=body, headers={"Content-Type": "application/json"})
    else:
        r = api.post(f"api/{path}", json=body)
    err = check(r, status)
    assert err["error"] and len(err["message"]) > 10, err
    assert "Traceback" not in r.text
    assert db.count_ops() == before
    after = {n: (s.state, s.generation) for n in range(1, 61) if (s := db.student(n))}
    # The idle preparation may add rows for free seats meanwhile (it creates a
    # seat's row before staging it); a request changes no row that was there.
    assert {n: after[n] for n in seats} == seats
    assert all(after[n] == (SeatState.FREE, 0) for n in after.keys() - seats.keys()), after


BAD_READS = [
    ("api/operations/not-an-id", 404),
    ("api/operations/" + "0" * 32, 404),
    ("api/operations?status=bogus", 400),
    ("api/operations?student=x", 400),
    ("api/operations?limit=0", 400),
    ("api/operations?verb=DROP", 400),
    ("api/students/9999", 422),
    ("api/students/0", 422),
    ("api/workshops/WKSHP-Nope", 404),
    ("api/workshops/bad..name", 400),
]


@pytest.mark.parametrize("path,status", BAD_READS)
def test_bad_reads(api, path, status):
    err = check(api.get(path), status)
    assert err["message"]


def test_unknown_endpoint_is_a_json_404(api):
    r = api.get("api/nothing")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_metrics(api):
    r = api.get("metrics")
    assert r.status_code == 200
    assert "wod_operations_finished" in r.text and "wod_operation_seconds_bucket" in r.text


# ------------------------------------------------------------------ unlock


def test_unlock_lifts_a_names_and_an_addresss_locks_and_says_which(hub, api):
    from tests.lockutil import SETTINGS, lock, locked_keys
    from wod_jupyterhub.hub.throttle import LoginThrottle
    from wod_jupyterhub.store.models import Store

    store = Store(hub.db_url)
    throttle = LoginThrottle(store, SETTINGS)
    lock(throttle, "student7", "10.0.0.1")
    lock(throttle, "student8", "10.0.0.9")
    lock(throttle, "student9", "10.0.0.9")  # the address's third failing name locks it
    assert {"pair:student7@10.0.0.1", "user:student7", "ip:10.0.0.9"} <= locked_keys(store)
    status = check(api.get("api/status"), 200)
    assert {"user:student7", "ip:10.0.0.9"} <= {t["key"] for t in status["locked_logins"]}

    data = check(api.post("api/unlock", json={"name": "student7"}), 200)
    assert data["name"] == "student7" and data["address"] is None
    assert "student7 from 10.0.0.1" in data["unlocked"] and "student7 (the name, from every address)" in data["unlocked"]
    assert not {k for k in locked_keys(store) if "student7" in k}
    assert "ip:10.0.0.9" in locked_keys(store)  # another's lock stays

    data = check(api.post("api/unlock", json={"address": "10.0.0.9"}), 200)
    assert "address 10.0.0.9 (every name)" in data["unlocked"]
    assert not {k for k in locked_keys(store) if "10.0.0.9" in k}
    # nothing locked any more: an empty list, not an error
    assert check(api.post("api/unlock", json={"name": "student7"}), 200)["unlocked"] == []
    assert "wod-portal unlocked student7: student7 from 10.0.0.1" in (hub.root / "hub.log").read_text()  # the caller, logged
    store.engine.dispose()


@pytest.mark.parametrize(
    "body, status, says",
    [
        ({}, 400, "takes a 'name'"),
        ({"name": ""}, 400, "non-empty string"),
        ({"name": 7}, 400, "must be a string"),
        ({"address": "not-an-ip"}, 400, "must be an IP address"),
        ({"student": 3}, 400, "Unknown field(s) for an unlock: student"),
        ([], 400, "must be a JSON object"),
    ],
)
def test_bad_unlock_requests_are_400_with_a_sentence(hub, api, body, status, says):
    from tests.lockutil import SETTINGS, lock, locked_keys
    from wod_jupyterhub.hub.throttle import LoginThrottle
    from wod_jupyterhub.store.models import Store

    store = Store(hub.db_url)
    lock(LoginThrottle(store, SETTINGS), "student6", "10.0.0.6")
    before = locked_keys(store)
    err = check(api.post("api/unlock", json=body), status)
    assert says in err["message"], err
    assert locked_keys(store) == before  # changes nothing
    with hub.client("noscope") as noscope, hub.client(None) as anon:
        assert "custom:wod:operate" in check(noscope.post("api/unlock", json={"name": "student6"}), 403)["message"]
        check(anon.post("api/unlock", json={"name": "student6"}), 401)
    assert locked_keys(store) == before
    store.engine.dispose()
