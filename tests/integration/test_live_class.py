"""The seat's own view (``api/seat``) and the instructor's live class view, on a real hub in system-users mode.

Seats ``student480``.. are real accounts (made here, removed at the end):
their servers and kernels run as the students, so a kernel's connection
to the service is a student's process (``local_peers``) and its
``JUPYTERHUB_API_TOKEN`` is the seat server's own token. Cells run in real
kernels; the kernel saves its notebook to disk, where the progress is read.
The live view is driven in a real Chromium; its screenshot is kept in
``artifacts/live_class.png``.
"""

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.hubutil import write_workshop
from tests.lockutil import locked_keys
from tests.pageserver import log_in
from tests.seatutil import Kernel, end_processes, logged_in, login_form, spawn, verb
from tests.seatutil import browser as http_browser
from tests.svcutil import DB, check
from tests.sysusers import student_python
from wod_jupyterhub.cli.hubprocess import REPO
from wod_jupyterhub.cli.users import accounts_for
from wod_jupyterhub.config import Wod
from wod_jupyterhub.passwords import hash_password
from wod_jupyterhub.seats import accounts as etc_accounts
from wod_jupyterhub.store.models import Store

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system-users mode needs root (CI runs as root)")

FIRST, LAST = 480, 489
WORKSHOP = "WKSHP-Live"
UID = 10000
ADMIN_PASSWORD = "admin-pass-for-live"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def accounts():
    students = Path(tempfile.mkdtemp(prefix="wod-live-"))
    students.chmod(0o711)
    wod = Wod(student_min=FIRST, student_max=LAST, students_root=str(students))
    wanted = [a for n in range(FIRST, LAST + 1) for a in accounts_for(wod, n, n)]
    made, problems = etc_accounts.plan(wanted)
    assert not problems, problems
    etc_accounts.add(made)
    yield students
    for n in range(FIRST, LAST + 1):
        end_processes(UID + n)
    etc_accounts.remove({a.name for a in made})


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory, accounts):
    root = tmp_path_factory.mktemp("live")
    notebooks = root / "notebooks"
    write_workshop(notebooks, WORKSHOP, (FIRST, LAST))
    cmd, env = student_python(UID + FIRST)
    extra = "\n".join([
        f"c.WodSpawner.cmd = {cmd!r}",
        f"c.WodSpawner.environment = {env!r}",
        "from wod_jupyterhub.hub import pages",
        "c.JupyterHub.default_url = pages.landing_url",
        f"c.WodAuthenticator.admin_password_hashes = {{'admin': {hash_password(ADMIN_PASSWORD, cost=4)!r}}}",
        "c.WodAuthenticator.throttle_ip_failures = 0",
        "c.WodAuthenticator.throttle_failures = 2",
    ])
    wod = {
        "student_min": FIRST, "student_max": LAST, "system_users": True, "students_root": str(accounts),
        "live_interval": 1.0, "progress_max_age": 0.5, "end_message": "Thanks! <b>bye</b>", "end_url": "https://example.org/next",
    }
    try:
        with module_hubs(root, notebooks=[notebooks], authenticator_class="wod", spawner_class="wod", wod_config=wod, extra_config=extra) as h:
            h.students_root = accounts
            yield h
    finally:
        subprocess.run(["rm", "-rf", str(accounts)], check=False)


def book(hub, n):
    customer = f"cust-{secrets.token_hex(4)}"
    op = verb(hub, "create", {"student": n, "customer": customer, "email": f"{customer}@example.com", "workshop": WORKSHOP})
    c = logged_in(hub, f"student{n}", op["result"]["password"])
    spawn(hub, c, f"student{n}")
    return c, customer


# What a student's kernel runs: its own server's token and a direct connection to the service.
PROBE = """
import json, os, urllib.request, urllib.error
def ask(path, token=os.environ["JUPYTERHUB_API_TOKEN"]):
    req = urllib.request.Request({url!r} + path, headers={{"Authorization": "token " + token}})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
print(json.dumps({{"token": os.environ["JUPYTERHUB_API_TOKEN"], "seat": ask("api/seat"), "status": ask("api/status"),
                  "openapi": ask("api/openapi.json"), "nothing": ask("api/nothing")}}))
"""

# Marks the first ``k`` code cells of the exercise as run and saves it, as JupyterLab's save does.
SAVE = """
import json
path = "{ws}/1-Exercise.ipynb"
nb = json.load(open(path))
code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
for i, c in enumerate(code[:{k}]):
    c["execution_count"] = i + 1
    c["outputs"] = [{{"output_type": "stream", "name": "stdout", "text": "<script>alert(1)</script>"}},
                    {{"output_type": "display_data", "metadata": {{}}, "data": {{"text/html": "<img src=x onerror=alert(2)>"}}}}]
json.dump(nb, open(path, "w"))
print(len(code))
"""


async def kernel_output(hub, client, n, code):
    async with Kernel(hub, client, f"student{n}") as k:
        status, _ = await k.run(code)
        assert status == "ok", k.output
        return "".join(k.output)


def save_run(hub, seats, n, k):
    """Seat n's kernel marks its first k cells run and saves; in a thread of its own (Playwright's loop runs in this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, kernel_output(hub, seats[n][0], n, SAVE.format(ws=WORKSHOP, k=k))).result()


@pytest.fixture(scope="module")
def seats(hub):
    """Two booked seats with their servers running, and the admin's announcement between the bookings."""
    a, ca = book(hub, FIRST)
    with hub.client("portal") as c:
        made = check(c.post("api/announcements", json={"workshop": WORKSHOP, "text": "Break at 10:30 <i>sharp</i>"}), 201)
    b, cb = book(hub, FIRST + 1)
    return {FIRST: (a, ca), FIRST + 1: (b, cb), "announcement": made}


def seat_of(hub, token):
    with httpx.Client(timeout=30) as c:
        return c.get(hub.service_url + "api/seat", headers={"Authorization": f"token {token}"})


def test_a_seats_own_token_gets_its_seat_and_a_students_process_gets_nothing_else(hub, seats):
    found = {}
    for n in (FIRST, FIRST + 1):
        out = json.loads(asyncio.run(kernel_output(hub, seats[n][0], n, PROBE.format(url=hub.service_url))).strip().splitlines()[-1])
        status, seat = out["seat"]
        assert status == 200 and seat["student"] == n and seat["state"] == "active" and seat["workshop"] == WORKSHOP
        assert 0 < seat["seconds_left"] and seat["warn_at"] == [3600, 600]
        assert seat["end"] == {"message": "Thanks! <b>bye</b>", "url": "https://example.org/next"}
        # Anything else of the service, from the student's process: refused, whatever the token.
        for key in ("status", "openapi", "nothing"):
            assert out[key][0] == 403 and out[key][1]["error"] == "student_process", (key, out[key])
        found[n] = out["token"]
    # The same tokens from the test (root): each gets its own seat, never the other's.
    for n, token in found.items():
        seat = check(seat_of(hub, token), 200)
        assert seat["student"] == n
    assert found[FIRST] != found[FIRST + 1]
    # Announcements: the seat booked before it sees it, the one booked after does not.
    made = seats["announcement"]
    assert [a["text"] for a in check(seat_of(hub, found[FIRST]), 200)["announcements"]] == [made["text"]]
    assert check(seat_of(hub, found[FIRST + 1]), 200)["announcements"] == []
    # An admin's, the portal's, no token, a token the hub does not know: refused with a sentence.
    for token in (hub.admin_token, hub.portal_token, None, "0" * 32):
        r = seat_of(hub, token) if token else httpx.get(hub.service_url + "api/seat", timeout=30)
        assert check(r, 403)["message"]


def test_a_seats_progress_moves_when_its_notebook_is_saved_and_the_page_renders_it_inert(hub, seats):
    client, _ = seats[FIRST]
    out = asyncio.run(kernel_output(hub, client, FIRST, PROBE.format(url=hub.service_url)))
    token = json.loads(out.strip().splitlines()[-1])["token"]
    before = check(seat_of(hub, token), 200)["progress"]
    assert before["executed"] == 0 and before["total"] >= 2
    asyncio.run(kernel_output(hub, client, FIRST, SAVE.format(ws=WORKSHOP, k=1)))
    asyncio.run(asyncio.sleep(0.6))  # the cached measure's age
    after = check(seat_of(hub, token), 200)["progress"]
    assert after["executed"] == 1 and after["total"] == before["total"] and after["ratio"] > 0
    with hub.client("portal") as c:
        listed = check(c.get(f"api/students/{FIRST}/notebooks"), 200)
        assert "1-Exercise.ipynb" in listed["notebooks"]
        page = c.get(f"api/students/{FIRST}/notebooks", params={"path": "1-Exercise.ipynb"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "sandbox" in page.headers["content-security-policy"] and "script-src" not in page.headers["content-security-policy"]
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>" not in page.text
        assert "<img src=x" not in page.text and "&lt;img src=x onerror=alert(2)&gt;" in page.text
        for bad in ("../../etc/passwd", "0-ReadMeFirst.ipynb/..", "/etc/passwd"):
            assert check(c.get(f"api/students/{FIRST}/notebooks", params={"path": bad}), 404)["message"]


def test_the_live_class_view_in_a_browser_shows_progress_moving_and_acts_on_seats(hub, seats):
    if not os.path.exists(CHROMIUM) and not os.environ.get("CI"):
        pytest.skip("chromium is not installed (make chromium installs it)")
    from playwright.sync_api import expect, sync_playwright

    a, b = FIRST, FIRST + 1
    db = DB(hub.db_url)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1200}).new_page()
            log_in(page, hub.url + "hub/login", "admin", ADMIN_PASSWORD)
            page.wait_for_url("**/services/wod/**", timeout=60_000)
            page.goto(hub.url + "services/wod/")
            row = {n: page.locator(f"#live tr[data-student='{n}']") for n in (a, b)}
            # Seat b has run nothing yet; a ran one cell (the test before, or now).
            save_run(hub, seats, a, 1)
            expect(row[b].locator(".progress")).to_contain_text("(0/", timeout=30_000)
            expect(row[a].locator(".progress")).to_contain_text("(1/", timeout=30_000)
            # Cells run in both seats: both move on the page.
            save_run(hub, seats, a, 2)
            save_run(hub, seats, b, 1)
            expect(row[a].locator(".progress")).to_contain_text("(2/", timeout=30_000)
            expect(row[b].locator(".progress")).to_contain_text("(1/", timeout=30_000)
            expect(page.locator("#live-charts .chart.live")).to_have_count(1)

            before = db.student(a).ends_at
            row[a].locator("button.extend").click()
            expect(page.locator("#action-result")).to_contain_text(f"student{a}: ends", timeout=30_000)
            assert (db.student(a).ends_at - before).total_seconds() == 30 * 60
            [extended] = db.ops(student=a, verb="EXTEND")
            assert extended.steps[0]["detail"]["by"] == "admin"

            # Two wrong passwords lock the name; the page's Unlock lifts it (and the service logs who did).
            with http_browser(hub) as c:
                for _ in range(2):
                    login_form(c, f"student{a}", "wrong-password")
            store = Store(hub.db_url, upgrade=False)
            assert f"user:student{a}" in locked_keys(store)
            row[a].locator("button.unlock").click()
            expect(page.locator("#action-result")).to_contain_text(f"Unlocked student{a}", timeout=30_000)
            assert not [k for k in locked_keys(store) if f"student{a}" in k]
            store.dispose()

            page.on("dialog", lambda d: d.accept())
            row[b].locator("button.cleanup").click()
            expect(page.locator("#action-result")).to_contain_text(f"student{b}: operation", timeout=30_000)
            expect(row[b]).to_have_count(0, timeout=60_000)  # no longer active once its CLEANUP took it back
            deadline = time.monotonic() + 60
            while db.ops(student=b, verb="CLEANUP")[0].status != "succeeded" and time.monotonic() < deadline:
                time.sleep(0.1)
            [cleaned] = db.ops(student=b, verb="CLEANUP")
            assert cleaned.status == "succeeded" and cleaned.steps[0]["name"] == "requested"
            assert cleaned.steps[0]["detail"]["by"] == "admin" and db.student(b).state == "free"
            (REPO / "artifacts").mkdir(exist_ok=True)
            page.screenshot(path=str(REPO / "artifacts" / "live_class.png"), full_page=True)
        finally:
            browser.close()
    db.dispose()
