"""Servers started ahead after CREATE: each its own seat's, as its uid; one nobody opened is stopped and counts nowhere;
a login signs in to its own running server and to nothing else.

A real hub in system-users mode (as root), ``c.WodOperations.start_server``
on, with real accounts ``student430``.. (uids 10430..), made here and removed
at the end. The participants sign in through the login form as a browser does.
"""

import os
import re
import secrets
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.hubutil import write_workshop
from tests.seatutil import (
    STUDENTS_PYTHON_SPAWNER,
    UID_BASE,
    browser,
    logged_in,
    login_form,
    memory_regions,
    needs_students_python,
    open_lab,
    seat_accounts,
    server_get,
    students_folder,
    system_users_hub,
    verb,
    wait_ready,
)
from wod_jupyterhub.store.models import Completion, Store

# The seats' servers run the students' Python with the package: its extension takes the cookie secret of a login.
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="system-users mode needs root (CI runs as root)"), needs_students_python]

FIRST, LAST = 430, 431
WORKSHOP = "WKSHP-Ahead"
UID = UID_BASE
UNUSED = 0.1  # minutes a server nobody opened keeps running: enough for A to be opened in, little for B to wait out


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory):
    students = students_folder("wod-ahead-")
    root = tmp_path_factory.mktemp("ahead")
    write_workshop(root / "notebooks", WORKSHOP, (FIRST, LAST))
    service = {"WodOperations.start_server": True, "WodAhead.unused_minutes": UNUSED}
    with seat_accounts(FIRST, LAST, range(FIRST, LAST + 1), students), \
            system_users_hub(module_hubs, root, root / "notebooks", FIRST, LAST, students, spawner=STUDENTS_PYTHON_SPAWNER, service=service) as h:
        yield h


def book(hub, n):
    customer = f"cust-{secrets.token_hex(4)}"
    op = verb(hub, "create", {"student": n, "customer": customer, "email": f"{customer}@example.com", "workshop": WORKSHOP})
    [step] = [s for s in op["steps"] if s["name"] == "start-server"]
    assert step["detail"].get("queued") is True, step
    return customer, op["result"]["password"]


def server_uids(hub, name) -> set[int]:
    """The effective uids of the server process of ``name`` (from its spawner's state, which the admin may read)."""
    pid = hub.hub_api("GET", f"/users/{name}").json()["servers"][""]["state"]["pid"]
    status = Path(f"/proc/{pid}/status").read_text()
    return {int(line.split()[2]) for line in status.splitlines() if line.startswith("Uid:")}


def snapshots(hub, n) -> list:
    with Store(hub.db_url).session() as s:
        return list(s.scalars(select(Completion).where(Completion.student == n, Completion.kind == "snapshot")))


def wait_stopped(hub, name, timeout):
    deadline = time.monotonic() + timeout
    while hub.hub_api("GET", f"/users/{name}").json()["servers"]:
        assert time.monotonic() < deadline, f"the server of {name} nobody opened still runs after {timeout} s"
        time.sleep(0.5)


def test_each_participant_lands_in_their_own_seats_server_started_ahead(hub):
    a, b = FIRST, FIRST + 1
    customer_a, password_a = book(hub, a)
    # Started by the service after the CREATE, as the seat's own uid, before anyone signed in.
    wait_ready(hub, f"student{a}")
    assert server_uids(hub, f"student{a}") == {UID + a}
    browser = logged_in(hub, f"student{a}", password_a)
    assert open_lab(browser, f"student{a}").status_code == 200
    r = server_get(browser, f"student{a}", f"api/contents/{WORKSHOP}/0-ReadMeFirst.ipynb")
    assert r.status_code == 200 and f"for student{a}" in r.text, r.text[:300]

    customer_b, password_b = book(hub, b)
    wait_ready(hub, f"student{b}")
    assert server_uids(hub, f"student{b}") == {UID + b}
    # A's browser reaches nothing of B's seat: not its lab, not its files.
    for path in ("lab", f"api/contents/{WORKSHOP}/0-ReadMeFirst.ipynb"):
        r = server_get(browser, f"student{b}", path)
        assert r.status_code in (403, 404) or f"/user/student{b}/" not in str(r.url), (r.status_code, r.url)
        assert f"for student{b}" not in r.text

    # Nobody opens B's server: it stops after UNUSED minutes; A's, opened and started earlier, keeps running.
    wait_stopped(hub, f"student{b}", UNUSED * 60 * 2 + 30)
    assert hub.hub_api("GET", f"/users/student{a}").json()["servers"][""]["ready"]
    # A server that was opened leaves its completion snapshot at its stop; B's, never opened, none.
    assert hub.hub_api("DELETE", f"/users/student{a}/server").status_code in (202, 204)
    deadline = time.monotonic() + 30
    while not snapshots(hub, a):
        assert time.monotonic() < deadline, "the opened server of A left no completion snapshot at its stop"
        time.sleep(0.2)
    assert snapshots(hub, b) == []
    # B's participant's sign-in starts it again.
    browser_b = logged_in(hub, f"student{b}", password_b)
    assert browser_b.get("/hub/spawn").status_code == 302
    wait_ready(hub, f"student{b}")
    assert open_lab(browser_b, f"student{b}").status_code == 200
    verb(hub, "cleanup", {"student": a, "customer": customer_a})
    verb(hub, "cleanup", {"student": b, "customer": customer_b})


def follow(client, path):
    """GET ``path`` and every redirect after it, as a browser: the paths asked for and the last answer."""
    seen = [path]
    r = client.get(path)
    while r.status_code in (301, 302, 303, 307) and len(seen) < 10:
        seen.append(r.headers["location"])
        r = client.get(r.headers["location"])
    return seen, r


def cookie(client, name):
    [c] = [c for c in client.cookies.jar if c.name == name]
    return c


def test_a_login_signs_in_to_its_own_running_server_with_the_hand_shakes_grant_and_to_nothing_else(hub):
    a, b = FIRST, FIRST + 1
    (customer_a, password_a), (customer_b, _) = book(hub, a), book(hub, b)
    name_a, name_b = f"student{a}", f"student{b}"
    wait_ready(hub, name_a)
    wait_ready(hub, name_b)
    signed_in = logged_in(hub, name_a, password_a)
    server_cookie = cookie(signed_in, f"jupyterhub-user-{name_a}")
    assert server_cookie.path == f"/user/{name_a}/"
    # The login's own answer signed the browser in: its lab page, without the hub's OAuth hand-shake.
    seen, r = follow(signed_in, f"/user/{name_a}/lab")
    assert r.status_code == 200 and not [p for p in seen if "oauth2/authorize" in p], seen
    r = server_get(signed_in, name_a, f"api/contents/{WORKSHOP}/0-ReadMeFirst.ipynb")
    assert r.status_code == 200 and f"for {name_a}" in r.text

    # The same grant as the hand-shake's: a second browser of A's without that cookie goes through it.
    other = logged_in(hub, name_a, password_a)
    other.cookies.delete(f"jupyterhub-user-{name_a}")
    seen, r = follow(other, f"/user/{name_a}/lab")
    assert r.status_code == 200 and [p for p in seen if "oauth2/authorize" in p], seen
    tokens = [t for t in hub.hub_api("GET", f"/users/{name_a}/tokens").json()["api_tokens"]
              if t["oauth_client"] == f"Server at /user/{name_a}/"]
    # Each login made one, the hand-shake the third: all of the same scopes, each of its browser's hub session.
    sessions = [cookie(c, "jupyterhub-session-id").value for c in (signed_in, other)]
    assert sorted(t["session_id"] for t in tokens) == sorted([sessions[0], sessions[1], sessions[1]]), tokens
    assert len({tuple(sorted(t["scopes"])) for t in tokens}) == 1 and len({t["expires_at"][:15] for t in tokens}) == 1, tokens

    # A's cookie at B's server, under B's name: B's secret is another, so B sends the browser to the hub.
    forged = {"Cookie": f"jupyterhub-user-{name_b}={server_cookie.value}"}
    stranger = browser(hub)
    assert stranger.get(f"/user/{name_b}/api/status", headers=forged).status_code == 403
    r = stranger.get(f"/user/{name_b}/lab", headers=forged)
    assert r.status_code == 302 and "/hub/api/oauth2/authorize" in r.headers["location"]
    # At A's own server the cookie alone is the sign-in...
    own = {"Cookie": f"jupyterhub-user-{name_a}={server_cookie.value}"}
    assert stranger.get(f"/user/{name_a}/api/status", headers=own).status_code == 200
    # ... until the server starts again: a new start, a new secret; the hand-shake brings A back in.
    assert hub.hub_api("DELETE", f"/users/{name_a}/server").status_code in (202, 204)
    wait_stopped(hub, name_a, 60)
    assert hub.hub_api("POST", f"/users/{name_a}/server").status_code in (201, 202)
    wait_ready(hub, name_a)
    assert stranger.get(f"/user/{name_a}/api/status", headers=own).status_code == 403
    seen, r = follow(signed_in, f"/user/{name_a}/lab")
    assert r.status_code == 200 and [p for p in seen if "oauth2/authorize" in p], seen
    verb(hub, "cleanup", {"student": a, "customer": customer_a})
    verb(hub, "cleanup", {"student": b, "customer": customer_b})


def server_cookie_secrets(hub, name) -> set[str]:
    """The cookie secrets the running server of ``name`` holds, as its own uid may read them: its environment, its memory."""
    pid = hub.hub_api("GET", f"/users/{name}").json()["servers"][""]["state"]["pid"]
    found = set()
    for data in memory_regions(pid):
        found.update(m.group(1) for m in re.finditer(rb"WOD_SERVER_COOKIE_SECRET\W{1,4}([0-9a-f]{64})", data))
    assert found, f"no cookie secret found in the server of {name}"
    return found


def test_the_next_participant_of_a_seat_gets_a_server_cookie_secret_the_previous_one_never_saw(hub):
    # The participant may read their own server's environment (their uid's process): what they read there
    # must be worth nothing once the seat changed hands, however the hub numbers the next start's token.
    a = FIRST
    name = f"student{a}"
    held = []
    for _ in range(2):  # a participant, then the seat's next one
        customer, password = book(hub, a)
        wait_ready(hub, name)
        logged_in(hub, name, password)  # opened: the server started ahead is not stopped as unused meanwhile
        held.append(server_cookie_secrets(hub, name))
        verb(hub, "cleanup", {"student": a, "customer": customer})
    assert not held[0] & held[1]


def test_a_login_whose_server_cookie_cannot_be_made_still_signs_in_and_the_hand_shake_follows(hub):
    a = FIRST
    name = f"student{a}"
    customer, password = book(hub, a)
    wait_ready(hub, name)
    # The hub's own database refuses the server's token (as a full disk or a lock would), and only that one.
    db = sqlite3.connect(hub.root / "jupyterhub.sqlite")
    db.execute(f"CREATE TRIGGER no_server_token BEFORE INSERT ON api_tokens WHEN NEW.client_id = 'jupyterhub-user-{name}'"
               " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    db.commit()
    logged = hub.log_path.stat().st_size
    signed_in = browser(hub)
    try:
        r = login_form(signed_in, name, password)
    finally:
        db.execute("DROP TRIGGER no_server_token")
        db.commit()
        db.close()
    assert r.status_code == 302, (r.status_code, r.text[-300:])
    assert not [c for c in signed_in.cookies.jar if c.name == f"jupyterhub-user-{name}"]
    # Its log names what failed, never the statement with the token's parameters.
    with open(hub.log_path, "rb") as log:
        log.seek(logged)
        written = log.read().decode(errors="replace")
    assert "No server cookie at the login of" in written and "INSERT INTO api_tokens" not in written, written[-2000:]
    # The login stands; the first visit goes through the hand-shake.
    seen, r = follow(signed_in, f"/user/{name}/lab")
    assert r.status_code == 200 and [p for p in seen if "oauth2/authorize" in p], seen
    verb(hub, "cleanup", {"student": a, "customer": customer})
