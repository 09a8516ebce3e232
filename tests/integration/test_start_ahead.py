"""Servers started ahead after CREATE: each its own seat's, as its uid; one nobody opened is stopped and counts nowhere.

A real hub in system-users mode (as root), ``c.WodOperations.start_server``
on, with real accounts ``student430``.. (uids 10430..), made here and removed
at the end. The participants sign in through the login form as a browser does.
"""

import os
import secrets
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.hubutil import write_workshop
from tests.seatutil import UID_BASE, logged_in, open_lab, seat_accounts, server_get, students_folder, system_users_hub, verb, wait_ready
from wod_jupyterhub.store.models import Completion, Store

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system-users mode needs root (CI runs as root)")

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
            system_users_hub(module_hubs, root, root / "notebooks", FIRST, LAST, students, service=service) as h:
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
