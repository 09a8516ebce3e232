"""The participant's session bar against the real service, on a real hub in system-users mode (as root).

Seat ``student490`` is a real account (made here, removed at the end); its server runs as the student
from the students' Python, with this package installed from its built wheel (`make system-users`), so
its ``wod/`` routes ask the real wod service with the server's own token. The workshop the test writes
has one verified step, which the participant's first code cell does. Chromium drives the participant's
JupyterLab and, for the announcement, the admin's dashboard; the CLEANUP is the portal's real verb.

Screenshots are kept in artifacts/ (gitignored): session-bar-*.png.
"""

import datetime
import json
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.hubutil import notebook, write_workshop
from tests.pageserver import log_in
from tests.seatutil import STUDENTS_PYTHON_SPAWNER, cleanup, needs_students_python, seat_accounts, students_folder, system_users_hub
from wod_jupyterhub.cli.hubprocess import REPO
from wod_jupyterhub.passwords import hash_password

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "artifacts"
#: the students' Python with this package installed (not linked), as `make system-users` builds it
FIRST, LAST = 490, 499
N = FIRST
NAME = f"student{N}"
WORKSHOP = "WKSHP-SessionBar"
ADMIN_PASSWORD = "admin-pass-for-the-bar"
END_MESSAGE = "Thank you for coming! Your seat has been cleaned up."
#: the seat ends in under ten minutes: the bar shows the last warning from the start
ENDS_IN = 590
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"]

# The one step: the participant's first code cell does it.
STEPS = """duration: 2
steps:
  - title: Say hello
    check: checks/steps.py:hello_written
    hints:
      - Run the first code cell of 0-ReadMeFirst, student{{ STDID }}.
"""
CHECKS = '''import os


def hello_written(seat):
    if not os.path.isfile(os.path.join(seat.folder, "hello.txt")):
        return "There is no hello.txt in the workshop's folder yet."
'''
HELLO = "with open('hello.txt', 'w') as f:\n    f.write('hello')\nprint('hello written')"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(os.geteuid() != 0, reason="system-users mode needs root (CI runs as root)"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="chromium is not installed (make chromium installs it)"),
    needs_students_python,
]


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory):
    root = tmp_path_factory.mktemp("sessionbar")
    notebooks = root / "notebooks"
    # a notebook that names its kernel, so the lab starts one at once (no kernel dialog)
    readme = json.loads(notebook(("markdown", "# {{ WORKSHOP }} for student{{ STDID }}"), ("code", HELLO)))
    readme["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder = write_workshop(notebooks, WORKSHOP, (FIRST, LAST), extra={"0-ReadMeFirst.ipynb": json.dumps(readme)})
    with open(folder / "wod.yml", "a") as f:
        f.write(STEPS)
    (folder / "checks").mkdir()
    (folder / "checks" / "steps.py").write_text(CHECKS)
    students = students_folder("wod-bar-")
    spawner = [
        *STUDENTS_PYTHON_SPAWNER,
        f"c.WodAuthenticator.admin_password_hashes = {{'admin': {hash_password(ADMIN_PASSWORD, cost=4)!r}}}",
    ]
    # the bar asks every second and the progress is measured again after half a second: no test waits long
    wod = {"poll_seconds": 1, "progress_max_age": 0.5, "end_message": END_MESSAGE, "end_url": "https://example.org/next-steps"}
    with seat_accounts(FIRST, LAST, (N,), students), system_users_hub(
        module_hubs, root, notebooks, FIRST, LAST, students, spawner=spawner, wod=wod,
    ) as h:
        yield h


@pytest.fixture(scope="module")
def booked(hub):
    """The seat's password and customer: CREATE with an end in under ten minutes."""
    customer = "cust-bar"
    ends_at = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=ENDS_IN)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with hub.client("portal", via_proxy=True) as c:
        r = c.post("api/create?wait=90", json={"student": N, "customer": customer, "email": "bar@example.com",
                                               "workshop": WORKSHOP, "ends_at": ends_at})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    return r.json()["result"]["password"], customer


def start_server(hub) -> None:
    r = hub.hub_api("POST", f"/users/{NAME}/server")
    assert r.status_code in (201, 202, 400), r.text  # 400: already running
    deadline = time.monotonic() + 120
    while not hub.hub_api("GET", f"/users/{NAME}").json()["servers"].get("", {}).get("ready"):
        assert time.monotonic() < deadline, "the seat's server did not come up"
        time.sleep(0.2)


def test_the_seat_servers_routes_forward_to_the_service_with_the_servers_own_token(hub, booked):
    start_server(hub)
    # (the browser test shows the server asks with its own token: the lab's page sends none, only its cookie)
    r = hub.hub_api("POST", f"/users/{NAME}/tokens", json={"scopes": [f"access:servers!user={NAME}"], "note": "test"})
    assert r.status_code == 201, r.text
    mine = r.json()["token"]
    base = f"{hub.url}user/{NAME}/wod/"
    with httpx.Client(headers={"Authorization": f"token {mine}"}, timeout=30) as client:
        r = client.get(base + "session")
        assert r.status_code == 200, r.text
        session = r.json()
        assert (session["student"], session["workshop"], session["state"]) == (N, WORKSHOP, "active")
        assert 0 < session["seconds_left"] <= ENDS_IN and session["poll_seconds"] == 1
        assert session["steps"] == {"verified": 0, "total": 1}
        assert session["end"] == {"message": END_MESSAGE, "url": "https://example.org/next-steps"}

        r = client.get(base + "steps")
        assert r.status_code == 200, r.text
        assert [(s["index"], s["title"], s["status"]) for s in r.json()["steps"]] == [(1, "Say hello", "unchecked")]
        # the service's error: the same status and its sentence, never its page
        r = client.post(base + "steps/9/check")
        assert r.status_code == 404 and set(r.json()) == {"error"} and "9" in r.json()["error"], r.text
        r = client.post(base + "steps/..%2f..%2fapi%2fcreate/check")
        assert r.status_code == 404, r.text

    # without a login the server forwards nothing
    r = httpx.get(base + "session", timeout=30, follow_redirects=False)
    assert r.status_code in (302, 403)


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"session-bar-{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 5_000
    return path


def announce_from_the_dashboard(browser, hub, text: str) -> None:
    """The admin logs in, and announces ``text`` to the workshop with the dashboard's form."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        log_in(page, hub.url + "hub/login", "admin", ADMIN_PASSWORD)
        page.wait_for_url(lambda url: "/hub/login" not in url, timeout=60_000)
        page.goto(hub.url + "services/wod/")
        expect(page.locator("#announce-workshop option", has_text=WORKSHOP)).to_have_count(1, timeout=60_000)
        page.select_option("#announce-workshop", WORKSHOP)
        page.fill("#announce-text", text)
        page.click("#announce-form button[type=submit]")
        expect(page.locator("#action-result")).to_contain_text(f"Announced to {WORKSHOP}", timeout=30_000)
    finally:
        context.close()


def test_the_participant_sees_time_progress_checks_announcements_and_the_end(hub, booked):
    from playwright.sync_api import expect, sync_playwright

    password, customer = booked
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            log_in(page, hub.url + "hub/login", NAME, password)
            page.wait_for_url(f"**/user/{NAME}/lab/**", timeout=120_000)
            bar = page.locator("#wod-session-bar")
            expect(bar.locator(".wod-SessionBar-workshop")).to_have_text(WORKSHOP, timeout=90_000)
            # under ten minutes left from the start: the last warning, with a notification
            expect(bar.locator(".wod-SessionBar-time.wod-mod-warning")).to_have_text(re.compile(r"^9 min \d\d s left$"))
            expect(page.locator(".Toastify__toast", has_text="The workshop ends in")).to_be_visible()
            progress = bar.locator(".wod-SessionBar-progress")
            expect(progress).to_have_text(re.compile(r"^0% done \(0 of \d+ cells run\)$"), timeout=15_000)
            total = int(re.search(r"of (\d+) cells", progress.inner_text()).group(1))
            assert total >= 2
            expect(bar.locator(".wod-SessionBar-stepsButton")).to_have_text("Steps: 0 of 1 verified")

            # Check before the step is done: the check's message and the first hint
            bar.locator(".wod-SessionBar-stepsButton").click()
            step = page.locator(".wod-SessionBar-steps .wod-Step[data-index='1']")
            expect(step.locator(".wod-Step-title")).to_have_text("1. Say hello")
            step.locator(".wod-Step-check").click()
            expect(step.locator(".wod-Step-message")).to_have_text("There is no hello.txt in the workshop's folder yet.", timeout=30_000)
            expect(step.locator(".wod-Step-hint")).to_have_text(f"Hint: Run the first code cell of 0-ReadMeFirst, student{N}.")
            shot(page, "check-failed")
            bar.locator(".wod-SessionBar-stepsButton").click()  # closes the panel

            # the participant runs the cell in the page and saves: the progress moves, the step is done
            cell = page.locator(".jp-NotebookPanel:visible .jp-CodeCell").first
            expect(page.locator(".jp-NotebookPanel:visible .jp-Toolbar-kernelName")).to_contain_text("Python 3", timeout=60_000)
            cell.locator(".jp-InputArea-editor").click()
            page.keyboard.press("Shift+Enter")
            expect(cell.locator(".jp-OutputArea-output")).to_contain_text("hello written", timeout=60_000)
            page.keyboard.press("Control+s")
            expect(progress).to_have_text(f"{round(100 / total)}% done (1 of {total} cells run)", timeout=15_000)
            shot(page, "progress")

            bar.locator(".wod-SessionBar-stepsButton").click()
            step.locator(".wod-Step-check").click()
            expect(step.locator(".wod-Step-status")).to_have_text("Passed", timeout=30_000)
            expect(step.locator(".wod-Step-message")).to_have_count(0)
            expect(bar.locator(".wod-SessionBar-stepsButton")).to_have_text("Steps: 1 of 1 verified", timeout=15_000)
            shot(page, "check-passed")
            bar.locator(".wod-SessionBar-stepsButton").click()

            # the instructor's announcement from the dashboard: in the bar and as a JupyterLab notification
            text = "Break until 10:30, then step 2."
            announce_from_the_dashboard(browser, hub, text)
            expect(bar.locator(".wod-SessionBar-announcement")).to_have_text(text, timeout=15_000)
            expect(page.locator(".Toastify__toast", has_text=text)).to_be_visible()
            shot(page, "announcement")

            # the portal's CLEANUP: the end screen, over whatever the lab says of its lost server and kernel
            cleanup(hub, N, customer)
            end = page.locator("#wod-end-screen")
            expect(end.locator(".wod-EndScreen-title")).to_have_text("This workshop has ended", timeout=30_000)
            expect(end.locator(".wod-EndScreen-message")).to_have_text(END_MESSAGE)
            expect(end.locator("a.wod-EndScreen-link")).to_have_attribute("href", "https://example.org/next-steps")
            page.wait_for_timeout(2000)  # the lab's own reaction to its lost server and kernel comes in meanwhile
            on_top = page.evaluate("() => !!document.elementFromPoint(innerWidth / 2, innerHeight / 2).closest('#wod-end-screen')")
            assert on_top, "something covers the end screen"
            shot(page, "ended")
        finally:
            browser.close()
