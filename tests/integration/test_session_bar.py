"""The participant's session bar: a real hub spawns a real seat server from the students' Python, with this
package installed from its built wheel (`make system-users`); Chromium drives its JupyterLab.

The wod service's seat API is played by a real HTTP server on loopback (tests/seat_server.py: it resolves
the caller's token with this hub, as the service does), pointed at by ``c.WodSpawner.service_url``, so the
tests choose what the seat's answer says. Everything else is real: the hub, its proxy, the wod service
(CREATE books the seat), the seat's server with its ``wod/`` routes, its kernel, the browser.

Screenshots are kept in artifacts/ (gitignored): session-bar-*.png.
"""

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.hubutil import notebook, write_workshop
from tests.seat_server import SeatServer, active_session, iso
from wod_jupyterhub.cli.hubprocess import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "artifacts"
#: the students' Python with this package installed (not linked), as `make system-users` builds it
STUDENT_PYTHON = os.environ.get("WOD_STUDENT_PYTHON", "")
WORKSHOP = "WKSHP-SessionBar"
N = 490
NAME = f"student{N}"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="chromium is not installed (make chromium installs it)"),
    pytest.mark.skipif(
        not os.path.isfile(STUDENT_PYTHON) and not os.environ.get("CI"),
        reason="no students' Python with the package installed: `make system-users` (as root) builds it and `make test` sets WOD_STUDENT_PYTHON",
    ),
]


@pytest.fixture(scope="module")
def seat():
    with SeatServer() as s:
        yield s


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory, seat):
    root = tmp_path_factory.mktemp("sessionbar")
    # a notebook that names its kernel, so the lab starts one at once (no kernel dialog)
    readme = json.loads(notebook(("markdown", "# {{ WORKSHOP }} for student{{ STDID }}"), ("code", "print('hello')")))
    readme["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    write_workshop(root / "notebooks", WORKSHOP, (N, N + 9), extra={"0-ReadMeFirst.ipynb": json.dumps(readme)})
    config = (
        f"c.WodSpawner.service_url = {seat.url!r}\n"
        f"c.Spawner.cmd = [{STUDENT_PYTHON!r}, '-m', 'jupyterhub.singleuser']\n"
    )
    with module_hubs(root / "hub", notebooks=[root / "notebooks"], authenticator_class="wod", spawner_class="wod", extra_config=config) as h:
        seat.hub_api_url = h.api_url
        yield h


@pytest.fixture(scope="module")
def password(hub, seat):
    r = httpx.post(
        hub.proxy_service_url + "api/create?wait=60",
        headers={"Authorization": f"token {hub.portal_token}"},
        json={"student": N, "customer": f"cust-{uuid.uuid4().hex[:8]}", "email": "bar@example.com", "workshop": WORKSHOP},
        timeout=90,
    )
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    seat.session = {**active_session(N, WORKSHOP), "poll_seconds": 1}
    return r.json()["result"]["password"]


def start_server(hub) -> None:
    r = hub.hub_api("POST", f"/users/{NAME}/server")
    assert r.status_code in (201, 202, 400), r.text  # 400: already running
    deadline = time.monotonic() + 120
    while not hub.hub_api("GET", f"/users/{NAME}").json()["servers"].get("", {}).get("ready"):
        assert time.monotonic() < deadline, "the seat's server did not come up"
        time.sleep(0.2)


def test_the_seat_servers_routes_forward_with_the_servers_own_token(hub, seat, password):
    start_server(hub)
    r = hub.hub_api("POST", f"/users/{NAME}/tokens", json={"scopes": [f"access:servers!user={NAME}"], "note": "test"})
    assert r.status_code == 201, r.text
    mine = r.json()["token"]
    base = f"{hub.url}user/{NAME}/wod/"
    with httpx.Client(headers={"Authorization": f"token {mine}"}, timeout=30) as client:
        r = client.get(base + "session")
        assert r.status_code == 200 and r.json() == seat.session, r.text
        # the service was asked with the server's own token (the stand-in had the hub resolve it to the seat), not the caller's
        assert seat.calls[-1].path == "/services/wod/api/seat"
        assert seat.calls[-1].authorization.startswith("token ") and mine not in seat.calls[-1].authorization

        seat.steps = [{"index": 1, "title": "Say hello", "status": "unchecked", "message": None, "hints": [], "checked_at": None}]
        r = client.get(base + "steps")
        assert r.status_code == 200 and r.json()["total"] == 1, r.text
        r = client.post(base + "steps/9/check")
        assert (r.status_code, r.json()) == (404, {"error": "This workshop has no step 9."})
        assert (seat.calls[-1].method, seat.calls[-1].path) == ("POST", "/services/wod/api/seat/steps/9/check")
        before = len(seat.calls)
        r = client.post(base + "steps/..%2f..%2fapi%2fcreate/check")
        assert r.status_code == 404 and len(seat.calls) == before

        # the service's errors: the same status and a sentence, never its page or a traceback
        seat.fail(403, {"error": "forbidden", "message": "This token is not a seat's server."})
        r = client.get(base + "session")
        assert (r.status_code, r.json()) == (403, {"error": "This token is not a seat's server."})
        seat.fail(500, b"<html>Traceback (most recent call last)</html>")
        r = client.get(base + "session")
        assert (r.status_code, r.json()) == (500, {"error": "The workshop service answered 500."})
        seat.fail(None)
        seat.down()
        try:
            r = client.get(base + "session")
            assert r.status_code == 502 and "cannot be reached" in r.json()["error"], r.text
        finally:
            seat.up()
        assert client.get(base + "session").status_code == 200

    # without a login the server forwards nothing
    before = len(seat.calls)
    r = httpx.get(base + "session", timeout=30, follow_redirects=False)
    assert r.status_code in (302, 403) and len(seat.calls) == before


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"session-bar-{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 5_000
    return path


def test_the_participant_sees_time_progress_announcements_checks_and_the_end(hub, seat, password):
    from playwright.sync_api import expect, sync_playwright

    seat.update(steps={"verified": 0, "total": 2}, progress={"ratio": 0.0, "executed": 0, "total": 8, "measured_at": iso()})
    seat.steps = [
        {"index": 1, "title": "Say hello", "status": "unchecked", "message": None, "hints": [], "checked_at": None},
        {"index": 2, "title": "Add two numbers", "status": "unchecked", "message": None, "hints": [], "checked_at": None},
    ]
    seat.outcomes = {1: [
        {"status": "failed", "message": "No cell printed hello yet.", "hints": ["Run the first code cell of 0-ReadMeFirst."]},
        {"status": "passed", "message": None},
    ]}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(hub.url + "hub/login")
            page.fill("input[name=username]", NAME)
            page.fill("input[name=password]", password)
            page.click("input[type=submit], button[type=submit]")
            page.wait_for_url(f"**/user/{NAME}/lab/**", timeout=120_000)
            bar = page.locator("#wod-session-bar")
            expect(bar.locator(".wod-SessionBar-workshop")).to_have_text(WORKSHOP, timeout=90_000)
            # 5400 s left when answered: the bar counts down between answers
            expect(bar.locator(".wod-SessionBar-time")).to_have_text(re.compile(r"^1 h (29|30) min left$"))
            expect(bar.locator(".wod-SessionBar-time")).not_to_have_class(re.compile("wod-mod-warning"))
            expect(bar.locator(".wod-SessionBar-progress")).to_have_text("0% done (0 of 8 cells run)")

            # the progress moves when the answer does
            seat.update(progress={"ratio": 0.375, "executed": 3, "total": 8, "measured_at": iso()})
            expect(bar.locator(".wod-SessionBar-progress")).to_have_text("38% done (3 of 8 cells run)", timeout=15_000)
            shot(page, "progress")

            # an announcement: in the bar and as a JupyterLab notification
            seat.update(announcements=[{"id": 7, "at": iso(), "text": "Break until 10:30, then step 2."}])
            expect(bar.locator(".wod-SessionBar-announcement")).to_have_text("Break until 10:30, then step 2.", timeout=15_000)
            expect(page.locator(".Toastify__toast", has_text="Break until 10:30, then step 2.")).to_be_visible()

            # under the last threshold: the time turns to a warning, with a notification
            seat.update(seconds_left=590, ends_at=iso(590))
            expect(bar.locator(".wod-SessionBar-time.wod-mod-warning")).to_have_text(re.compile(r"^9 min \d\d s left$"), timeout=15_000)
            expect(page.locator(".Toastify__toast", has_text="The workshop ends in")).to_be_visible()
            shot(page, "warning")

            # Check: the failure's message and hint, then the pass
            bar.locator(".wod-SessionBar-stepsButton").click()
            step = page.locator(".wod-SessionBar-steps .wod-Step[data-index='1']")
            expect(step.locator(".wod-Step-title")).to_have_text("1. Say hello")
            step.locator(".wod-Step-check").click()
            expect(step.locator(".wod-Step-message")).to_have_text("No cell printed hello yet.")
            expect(step.locator(".wod-Step-hint")).to_have_text("Hint: Run the first code cell of 0-ReadMeFirst.")
            shot(page, "check-failed")
            step.locator(".wod-Step-check").click()
            expect(step.locator(".wod-Step-status")).to_have_text("Passed")
            expect(step.locator(".wod-Step-message")).to_have_count(0)
            shot(page, "check-passed")

            # the service says the workshop ended: the end screen, with the configured message and link
            seat.update(state="ended", seconds_left=0)
            end = page.locator("#wod-end-screen")
            expect(end.locator(".wod-EndScreen-title")).to_have_text("This workshop has ended", timeout=15_000)
            expect(end.locator(".wod-EndScreen-message")).to_have_text("Thank you for coming! Your seat has been cleaned up.")
            expect(end.locator("a.wod-EndScreen-link")).to_have_attribute("href", "https://example.org/next-steps")
            shot(page, "ended")

            # the server stopped as CLEANUP stops it, the answer still "active": the end screen, over the lab's errors
            seat.update(state="active", seconds_left=590)
            page.reload()
            expect(bar.locator(".wod-SessionBar-workshop")).to_have_text(WORKSHOP, timeout=90_000)
            expect(page.locator(".jp-Notebook-cell").first).to_be_visible(timeout=60_000)
            expect(page.locator(".jp-NotebookPanel:visible .jp-Toolbar-kernelName")).to_contain_text("Python 3", timeout=60_000)
            r = hub.hub_api("DELETE", f"/users/{NAME}/server")
            assert r.status_code in (202, 204), r.text
            expect(end.locator(".wod-EndScreen-title")).to_have_text("This workshop has ended", timeout=30_000)
            expect(end.locator(".wod-EndScreen-message")).to_have_text("Thank you for coming! Your seat has been cleaned up.")
            page.wait_for_timeout(3000)  # the lab's own reaction to its lost server and kernel comes in meanwhile
            on_top = page.evaluate("() => !!document.elementFromPoint(innerWidth / 2, innerHeight / 2).closest('#wod-end-screen')")
            assert on_top, "something covers the end screen"
            shot(page, "server-gone")
        finally:
            browser.close()
