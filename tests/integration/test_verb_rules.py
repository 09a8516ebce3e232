"""No verb destroys a participant's work by mistake, over REST, mail (the portal's exact bytes) and the CLI.

A real hub with the wod authenticator (a password is tried by logging in),
its managed service, the loopback portal taking the callbacks, the service's
SMTP listener fed the portal's raw bytes, and the ``wod`` command in a
subprocess. Two workshops share seats 1..20: WKSHP-Alpha (reset: false) and
WKSHP-Beta (reset: true), so a verb can name the workshop a seat does not hold.
"""

import hashlib
import os
import re
import time
from pathlib import Path

import pytest

from tests.cliutil import run_json, wod
from tests.hubutil import free_port, write_workshop
from tests.mailutil import SENDER, portal_bytes, portal_dialog, portal_send
from tests.portal_server import PortalServer
from tests.seatutil import browser, login_form
from tests.svcutil import DB, check, health, settle

BASE = 400  # the portal calls our student N "N + 400"
ALPHA, BETA = "WKSHP-Alpha", "WKSHP-Beta"


@pytest.fixture(scope="module")
def portal():
    with PortalServer(workshops=[{"id": 1, "notebook": ALPHA}, {"id": 2, "notebook": BETA}]) as p:
        yield p


@pytest.fixture(scope="module")
def mail_port():
    return free_port()


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory, portal, mail_port):
    root = tmp_path_factory.mktemp("verbrules")
    nb = root / "notebooks"
    write_workshop(nb, ALPHA, (1, 20))
    write_workshop(nb, BETA, (1, 20), reset=True)
    extra = "\n".join(
        [
            f"c.WodMail.sender = {SENDER!r}",
            f"c.WodMail.port = {mail_port}",
            "c.WodMail.ip = '127.0.0.1'",
            # every login comes from 127.0.0.1, and a test tries old passwords on purpose
            "c.WodAuthenticator.throttle_ip_failures = 0",
            "c.WodAuthenticator.throttle_failures = 50",
        ]
    )
    with module_hubs(
        root / "hub", notebooks=[nb], api_db_url=portal.url, authenticator_class="wod",
        wod_config={"student_min": 1, "student_max": 30, "base_student_id": BASE, "skel": ""}, extra_config=extra,
    ) as h:  # fmt: skip
        yield h


@pytest.fixture(scope="module")
def db(hub):
    reader = DB(hub.db_url)
    yield reader
    reader.dispose()


@pytest.fixture
def mail(mail_port):
    """Send the portal's bytes to the service's mail port; the service's reply to the message."""
    return lambda data: portal_dialog(mail_port, data)


# ---------------------------------------------------------------- helpers


def home(hub, n) -> dict:
    """Every entry of seat ``n``'s home: relative path -> (mode, sha256 of the bytes or the link's target)."""
    root = hub.students_root / f"student{n}"
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if path.is_symlink():
                content = os.readlink(path).encode()
            elif path.is_file():
                content = path.read_bytes()
            else:
                content = b""
            out[str(path.relative_to(root))] = (st.st_mode, hashlib.sha256(content).hexdigest())
    return out


def logs_in(hub, n, password) -> bool:
    """A browser's login on the hub's form: True when the hub lets student<n> in with ``password``."""
    with browser(hub) as c:
        r = login_form(c, f"student{n}", password)
    return r.status_code == 302 and "/hub/login" not in r.headers.get("location", "")


def create(hub, n, customer, workshop=ALPHA, **more) -> dict:
    with hub.client() as api:
        op = check(api.post("api/create?wait=60", json={"student": n, "customer": customer, "email": "p@example.org", "workshop": workshop, **more}), 200)
    assert op["status"] == "succeeded", (op["error"], op["steps"])
    return op


def seat_as_is(hub, db, n) -> tuple:
    st = db.student(n)
    return st.state, st.customer, st.workshop, st.password_hash, st.generation, home(hub, n)


def mail_stats(hub) -> dict:
    return health(hub)["mail"]


# ---------------------------------------------------------------- a repeated CREATE


def test_a_repeated_rest_create_answers_the_first_and_changes_nothing(hub, db, portal):
    n = 1
    first = create(hub, n, "c-rest")
    password = first["result"]["password"]
    (hub.students_root / f"student{n}" / ALPHA / "mine.txt").write_text("the participant's work\n")
    calls = settle(portal, db)
    before = seat_as_is(hub, db, n)
    assert f"{ALPHA}/mine.txt" in before[-1]
    with hub.client() as api:
        again = check(api.post("api/create", json={"student": n, "customer": "c-rest", "email": "p@example.org", "workshop": ALPHA}), 200)
    assert again["repeat"] is True and first["repeat"] is False
    assert {k: v for k, v in again.items() if k != "repeat"} == {k: v for k, v in first.items() if k != "repeat"}
    assert again["result"]["password"] == password
    assert seat_as_is(hub, db, n) == before and len(db.ops(verb="CREATE", student=n)) == 1
    assert logs_in(hub, n, password)
    time.sleep(0.5)
    assert settle(portal, db) == calls  # the portal hears nothing new


def test_a_create_repeated_while_the_first_is_queued_answers_that_one(hub, db):
    n = 2
    body = {"student": n, "customer": "c-queued", "email": "p@example.org", "workshop": ALPHA}
    with hub.client() as api:
        first = check(api.post("api/create", json=body), 202)
        again = api.post("api/create?wait=60", json=body)
    assert again.status_code in (200, 202) and again.json()["id"] == first["id"] and again.json()["repeat"] is True
    ops = db.ops(verb="CREATE", student=n)
    assert [o.id for o in ops] == [first["id"]]


def test_force_provisions_a_held_seat_again_and_says_so_in_the_journal(hub, db):
    n = 3
    first = create(hub, n, "c-force")
    mine = hub.students_root / f"student{n}" / ALPHA / "mine.txt"
    mine.write_text("work\n")
    forced = create(hub, n, "c-force", force=True)
    assert forced["id"] != first["id"] and forced["repeat"] is False
    assert forced["steps"][0]["name"] == "force" and not mine.exists()
    assert forced["result"]["password"] != first["result"]["password"] and logs_in(hub, n, forced["result"]["password"])


def test_a_create_for_another_workshop_of_a_held_seat_is_refused(hub, db):
    n = 4
    create(hub, n, "c-other")
    before = seat_as_is(hub, db, n)
    with hub.client() as api:
        r = api.post("api/create", json={"student": n, "customer": "c-other", "email": "p@example.org", "workshop": BETA})
    assert r.status_code == 409 and ALPHA in r.json()["message"] and "force" in r.json()["message"]
    assert seat_as_is(hub, db, n) == before


def test_a_repeated_create_mail_answers_the_first_operation(hub, db, portal, mail, mail_port):
    n, customer = 5, "5151"
    data = portal_bytes(f"CREATE {n + BASE} {customer} m@example.org", ALPHA)
    assert portal_send(mail_port, data) == b"2"  # as the portal sends it: all at once, one byte read
    end = time.monotonic() + 60
    while db.student(n).state != "active":
        assert time.monotonic() < end, db.ops(student=n)
        time.sleep(0.1)
    (first,) = db.ops(verb="CREATE", student=n)
    first_id = first.id
    path = f"/api/student/{n + BASE}"
    assert portal.wait_for(lambda p: any(c.path == path and "password" in c.body for c in p.accepted()), 30)
    password = [c.body["password"] for c in portal.accepted() if c.path == path and "password" in c.body][-1]
    calls = settle(portal, db)
    before = seat_as_is(hub, db, n)
    # The portal sends it again (its retry, or a postfix in between): a new Message-ID or none, the same bytes.
    reply = mail(data)
    assert reply == f"250 2.0.0 Ok: already operation {first_id}", reply
    assert portal_send(mail_port, data) == b"2"
    time.sleep(0.5)
    assert seat_as_is(hub, db, n) == before and [o.id for o in db.ops(verb="CREATE", student=n)] == [first_id]
    assert logs_in(hub, n, password)
    time.sleep(0.5)
    assert settle(portal, db) == calls


def test_wod_create_on_a_held_range_names_the_held_seats_and_wipes_nothing(hub, db, portal):
    data, _ = run_json(hub, "create", ALPHA, "6-7", "--show-passwords")
    passwords = {s["student"]: s["password"] for s in data["seats"]}
    before = {n: seat_as_is(hub, db, n) for n in (6, 7, 8)}
    ops = db.count_ops()
    r = wod(hub, "create", ALPHA, "6-8", "--show-passwords")
    assert r.returncode == 1 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    assert "student6 (WKSHP-Alpha, customer 0)" in r.stderr and "student7 (WKSHP-Alpha, customer 0)" in r.stderr
    assert "student8" not in r.stderr and "--force" in r.stderr and "wod passwords" in r.stderr
    assert db.count_ops() == ops and {n: seat_as_is(hub, db, n) for n in (6, 7, 8)} == before
    assert all(logs_in(hub, n, pw) for n, pw in passwords.items())
    # --force provisions them again, as asked.
    data, _ = run_json(hub, "create", ALPHA, "6", "--force", "--show-passwords")
    (seat,) = data["seats"]
    assert seat["status"] == "succeeded" and seat["password"] != passwords[6]
    assert db.ops(verb="CREATE", student=6)[-1].steps[0]["name"] == "force"


# ---------------------------------------------------------------- a verb for another workshop


WRONG = {
    "CLEANUP": {"workshop": BETA},
    "RESET": {"workshop": BETA},
    "PURGE": {"workshop": BETA},
}


@pytest.mark.parametrize("verb", sorted(WRONG))
def test_a_rest_verb_for_another_workshop_is_409_and_changes_nothing(hub, db, portal, verb):
    n = {"CLEANUP": 9, "RESET": 10, "PURGE": 11}[verb]
    password = create(hub, n, f"c-{verb}")["result"]["password"]
    calls = settle(portal, db)
    before, ops = seat_as_is(hub, db, n), db.count_ops()
    with hub.client() as api:
        r = api.post(f"api/{verb.lower()}?wait=30", json={"student": n, "customer": f"c-{verb}", **WRONG[verb]})
    assert r.status_code == 409, r.text
    message = r.json()["message"]
    assert BETA in message and ALPHA in message and verb in message, message
    assert seat_as_is(hub, db, n) == before and db.count_ops() == ops and logs_in(hub, n, password)
    time.sleep(0.5)
    assert settle(portal, db) == calls


@pytest.mark.parametrize("verb", sorted(WRONG))
def test_a_mail_verb_for_another_workshop_is_refused_and_changes_nothing(hub, db, portal, mail, mail_port, verb):
    n, customer = {"CLEANUP": 12, "RESET": 13, "PURGE": 14}[verb], f"61{len(verb)}"
    password = create(hub, n, customer)["result"]["password"]
    calls = settle(portal, db)
    before, ops = seat_as_is(hub, db, n), db.count_ops()
    refused = mail_stats(hub)["refused"].get("conflict", 0)
    data = portal_bytes(f"{verb} {n + BASE} {customer}", BETA)
    assert portal_send(mail_port, data) == b"2"  # the portal's way: it reads the greeting only
    end = time.monotonic() + 30
    while mail_stats(hub)["refused"].get("conflict", 0) < refused + 1:
        assert time.monotonic() < end, mail_stats(hub)
        time.sleep(0.1)
    reply = mail(data)  # the same bytes, read to the end: the sentence of the refusal
    assert reply.startswith("550 5.7.1 ") and BETA in reply and ALPHA in reply, reply
    assert mail_stats(hub)["refused"]["conflict"] == refused + 2
    assert re.search(rf"Mail refused \(conflict\): .*{BETA}", (hub.root / "hub.log").read_text())
    assert seat_as_is(hub, db, n) == before and db.count_ops() == ops and logs_in(hub, n, password)
    time.sleep(0.5)
    assert settle(portal, db) == calls


def test_wod_cleanup_for_another_workshop_fails_naming_both_and_changes_nothing(hub, db, portal):
    n = 15
    password = create(hub, n, "c-cli")["result"]["password"]
    calls = settle(portal, db)
    before, ops = seat_as_is(hub, db, n), db.count_ops()
    data, r = run_json(hub, "cleanup", BETA, str(n), expect=1)
    (seat,) = data["seats"]
    assert seat["status"] == "refused" and BETA in seat["error"] and ALPHA in seat["error"]
    assert seat_as_is(hub, db, n) == before and db.count_ops() == ops and logs_in(hub, n, password)
    time.sleep(0.5)
    assert settle(portal, db) == calls
    # A PURGE that names no workshop takes any seat back: the way out for a seat in trouble.
    with hub.client() as api:
        op = check(api.post("api/purge?wait=60", json={"student": n, "customer": "c-cli"}), 200)
    assert op["status"] == "succeeded" and db.student(n).state == "free"


# ---------------------------------------------------------------- a new password, the home untouched


def test_rest_password_rotates_only_the_password_and_tells_the_portal(hub, db, portal):
    n = 16
    old = create(hub, n, "c-pw")["result"]["password"]
    (hub.students_root / f"student{n}" / ALPHA / "mine.txt").write_text("keep me\n")
    since = settle(portal, db)
    state, customer, workshop, _, generation, files = seat_as_is(hub, db, n)
    with hub.client() as api:
        op = check(api.post("api/password?wait=60", json={"student": n, "customer": "c-pw", "workshop": ALPHA}), 200)
    assert op["status"] == "succeeded", op["error"]
    assert [s["name"] for s in op["steps"]] == ["rotate", "end-sessions", "reopen"]
    new = op["result"]["password"]
    assert new and new != old
    after = seat_as_is(hub, db, n)
    assert (after[0], after[1], after[2], after[5]) == (state, customer, workshop, files) and after[4] == generation + 1
    assert logs_in(hub, n, new) and not logs_in(hub, n, old)
    assert portal.wait_for(lambda p: any(c.body == {"password": new} for c in p.accepted()[since:]), 30)
    # A seat that is not active has no password to renew; another customer's is refused.
    with hub.client() as api:
        assert api.post("api/password", json={"student": 17, "customer": "c-pw"}).status_code == 409
        assert api.post("api/password", json={"student": n, "customer": "someone-else"}).status_code == 409


def test_wod_passwords_gives_working_passwords_and_keeps_the_homes(hub, db):
    data, _ = run_json(hub, "create", ALPHA, "18-19", "--show-passwords")
    old = {s["student"]: s["password"] for s in data["seats"]}
    before = {n: home(hub, n) for n in old}
    data, r = run_json(hub, "passwords", ALPHA, "18-19")
    new = {s["student"]: s["password"] for s in data["seats"]}
    assert all(s["status"] == "succeeded" for s in data["seats"]) and set(new) == {18, 19}, data
    assert {n: home(hub, n) for n in old} == before
    for n in old:
        assert new[n] != old[n] and logs_in(hub, n, new[n]) and not logs_in(hub, n, old[n])
    assert all(o.verb == "PASSWORD" for o in db.ops(verb="PASSWORD") if o.student in (18, 19))
    text = wod(hub, "passwords", BETA, "18")
    assert text.returncode == 1 and BETA in text.stdout + text.stderr


def test_status_and_the_seat_show_each_held_seats_workshop_and_customer(hub, db):
    r = wod(hub, "status")
    assert r.returncode == 0, r.stderr
    line = next(line for line in r.stdout.splitlines() if line.split()[:1] == ["student16"])
    assert line.split()[1:4] == ["active", ALPHA, "c-pw"]
    with hub.client() as api:
        seat = check(api.get("api/students/16"), 200)
    assert seat["holding"] == {"state": "active", "customer": "c-pw", "workshop": ALPHA}
