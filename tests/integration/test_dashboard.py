"""The admins' dashboard at /services/wod/, in a real Chromium (Debian's, driven by Playwright) on a real hub.

An admin logs in to the hub, opens the dashboard (the hub's OAuth), sees the
seats of a booked workshop and an operation's journal; a student gets 403.
The screenshot is kept in artifacts/dashboard.png (gitignored).
"""

import os
import shutil

import httpx
import pytest

from tests.hubutil import write_workshop
from tests.pageserver import log_in
from wod_jupyterhub.cli.hubprocess import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "artifacts"
WORKSHOP = "WKSHP-Board"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="chromium is not installed (make chromium installs it)"),
]


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard")
    write_workshop(root / "notebooks", WORKSHOP, (61, 64))
    # "helper" may reach the service (the hub lets it through OAuth) but lacks custom:wod:read:
    # then the service itself refuses.
    # "viewer" may read the dashboard but not operate: it sees the locks and no Unlock button.
    extra = (
        "c.JupyterHub.load_roles.append({'name': 'helper', 'users': ['helper'], 'scopes': ['access:services!service=wod']})\n"
        "c.JupyterHub.load_roles.append({'name': 'viewer', 'users': ['viewer'], 'scopes': ['custom:wod:read', 'access:services!service=wod']})"
    )
    with module_hubs(root, notebooks=[root / "notebooks"], extra_config=extra) as h:
        yield h


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def login(browser, hub, name):
    page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    log_in(page, hub.url + "hub/login", name, "any")  # the dummy authenticator of the test hub
    page.wait_for_url("**/hub/**", timeout=60_000)
    return page


def test_an_admin_sees_the_booked_seats_and_an_operations_journal(hub, browser):
    from playwright.sync_api import expect

    headers = {"Authorization": f"token {hub.portal_token}"}
    for n, customer in ((61, "cust-<b>61</b>"), (62, "cust-62")):
        r = httpx.post(hub.proxy_service_url + "api/create?wait=60", headers=headers, timeout=90,
                       json={"student": n, "customer": customer, "email": "d@example.com", "workshop": WORKSHOP})
        assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    r = httpx.post(hub.proxy_service_url + "api/cleanup?wait=60", headers=headers, timeout=90,
                   json={"student": 62, "customer": "cust-62"})
    assert r.json()["status"] == "succeeded", r.text

    page = login(browser, hub, "admin")
    page.goto(hub.url + "services/wod/")
    expect(page.locator("h1")).to_have_text("Workshops-on-Demand", timeout=60_000)
    row = page.locator("#workshops tbody tr", has_text=WORKSHOP)
    expect(row).to_have_count(1, timeout=30_000)
    # capacity 4: 3 free, 1 active
    expect(row.locator("td")).to_have_text([WORKSHOP, "yes", "61–64", "4", "3", "1", "0", "0", "0 % of 1"])
    seat = page.locator("#seats tbody tr", has_text="student61")
    # the customer id is shown as text, never as markup
    expect(seat.locator("td").nth(3)).to_have_text("cust-<b>61</b>")
    expect(seat.locator("td").nth(5)).to_have_text("stopped")
    cleanup = page.locator("#operations tbody tr", has_text="CLEANUP").first
    cleanup.locator("summary").click()
    journal = cleanup.locator("ol.steps li")
    expect(journal.first).to_contain_text("rotate: done")
    expect(cleanup.locator("ol.steps")).to_contain_text("completion: done")
    expect(cleanup.locator("ol.steps")).to_contain_text("release: done")
    expect(page.locator(f".chart[data-workshop='{WORKSHOP}'] rect")).to_have_count(10)
    expect(page.locator("#backlog")).to_contain_text("Portal callbacks pending")
    expect(page.locator("#error")).to_have_text("")

    # it refreshes itself: a seat booked now shows up without a reload
    r = httpx.post(hub.proxy_service_url + "api/create?wait=60", headers=headers, timeout=90,
                   json={"student": 63, "customer": "cust-63", "email": "d@example.com", "workshop": WORKSHOP})
    assert r.json()["status"] == "succeeded"
    expect(page.locator("#seats tbody tr", has_text="student63")).to_have_count(1, timeout=15_000)
    expect(cleanup.locator("ol.steps")).to_be_visible()  # the journal opened stays open across refreshes
    page.locator("#operations summary").first.click()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.context.close()


def test_a_student_gets_403(hub, browser):
    page = login(browser, hub, "student99")
    response = page.goto(hub.url + "services/wod/")
    assert response.status == 403, (response.status, page.content()[:500])
    data = page.context.request.get(hub.url + "services/wod/dashboard/data")
    assert data.status in (401, 403)
    assert "customer" not in data.text()
    page.context.close()


def test_a_user_the_hub_lets_through_without_the_read_scope_gets_the_services_403(hub, browser):
    page = login(browser, hub, "helper")
    response = page.goto(hub.url + "services/wod/")
    assert response.status == 403
    assert "needs the scope custom:wod:read" in page.content()
    data = page.context.request.get(hub.url + "services/wod/dashboard/data")
    assert data.status == 403 and "seats" not in data.text()
    page.context.close()


def test_an_anonymous_browser_is_sent_to_the_hubs_login(hub, browser):
    page = browser.new_context().new_page()
    page.goto(hub.url + "services/wod/")
    assert "/hub/login" in page.url
    page.context.close()


def dashboard_with_a_lock(hub, browser, user, name, address):
    """Lock ``name`` from ``address`` (the throttle's own way), open the dashboard as ``user``: the page, the store, the name's row."""
    from playwright.sync_api import expect

    from tests.lockutil import SETTINGS, lock
    from wod_jupyterhub.hub.throttle import LoginThrottle
    from wod_jupyterhub.store.models import Store

    store = Store(hub.db_url)
    lock(LoginThrottle(store, SETTINGS), name, address)
    page = login(browser, hub, user)
    page.goto(hub.url + "services/wod/")
    # who is locked, in words, and until when (a lock's failure count says nothing)
    row = page.locator("#locked tbody tr", has_text=f"{name} (the name, from every address)")
    expect(row).to_have_count(1, timeout=30_000)
    return page, store, row


def test_an_admin_unlocks_a_locked_login_from_the_dashboard(hub, browser):
    from playwright.sync_api import expect

    from tests.lockutil import locked_keys

    page, store, row = dashboard_with_a_lock(hub, browser, "admin", "student63", "10.1.2.3")
    expect(page.locator("#locked tbody tr", has_text="student63 from 10.1.2.3")).to_have_count(1)
    row.locator("button.unlock").click()
    expect(page.locator("#unlock-result")).to_contain_text("Unlocked student63: ", timeout=15_000)
    expect(page.locator("#unlock-result")).to_contain_text("student63 from 10.1.2.3")
    expect(page.locator("#locked tbody tr", has_text="student63")).to_have_count(0, timeout=15_000)
    # the address's own lock (its third failure) is another lock: it stays
    expect(page.locator("#locked tbody tr", has_text="address 10.1.2.3 (every name)")).to_have_count(1)
    assert not {k for k in locked_keys(store) if "student63" in k}
    assert "admin unlocked student63" in (hub.root / "hub.log").read_text()
    page.context.close()
    store.engine.dispose()


def test_a_reader_sees_the_locks_but_may_not_unlock(hub, browser):
    from playwright.sync_api import expect

    from tests.lockutil import locked_keys

    page, store, row = dashboard_with_a_lock(hub, browser, "viewer", "student64", "10.1.2.4")
    expect(page.locator("#locked button")).to_have_count(0)
    # the page's own fetch, with its XSRF token: refused with a sentence, nothing lifted
    answer = page.evaluate("""async () => {
        const r = await fetch("dashboard/unlock", {method: "POST", credentials: "same-origin",
            headers: {"Content-Type": "application/json",
                      "X-XSRFToken": document.querySelector("meta[name=xsrf-token]").content},
            body: JSON.stringify({name: "student64"})});
        return [r.status, (await r.json()).message];
    }""")
    assert answer[0] == 403 and "needs the scope custom:wod:operate" in answer[1], answer
    assert "user:student64" in locked_keys(store)
    page.context.close()
    store.engine.dispose()
