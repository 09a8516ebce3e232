"""A real browser (Debian's chromium, driven by Playwright) logs in as a student and lands in JupyterLab.

`make test` installs chromium (the `chromium` target). The screenshot is
kept in artifacts/browser-login.png (gitignored) for a person to look at.
"""

import os
import shutil
import uuid

import httpx
import pytest

from tests.hubutil import RealHub
from tests.pageserver import log_in
from wod_jupyterhub.cli.hubprocess import REPO
from wod_jupyterhub.passwords import hash_password

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "artifacts"
WORKSHOP = "WKSHP-PythonBasics"  # a sample bundled in share/workshops

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="chromium is not installed (make chromium installs it)"),
]


ADMIN_PASSWORD = "Admin-Pa55-" + uuid.uuid4().hex[:8]
PLATFORM = "Acme Workshops"
HELP = "Your student name and password are in the mail Acme sent you."
BROWSER_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory):
    # no notebooks given: c.Wod.notebooks defaults to the bundled samples
    variables = {"BRANDING": "HPE Developer Community", "BRANDINGWOD": "Workshops-on-Demand"}
    # the pages as the demo configuration sets them, and an admin with a password hash
    pages = (
        "from wod_jupyterhub.hub import pages\n"
        "c.JupyterHub.template_paths = [pages.TEMPLATES]\n"
        f"c.JupyterHub.template_vars = {{'wod_platform_name': {PLATFORM!r}, 'wod_login_help': {HELP!r}}}\n"
        "c.JupyterHub.default_url = pages.landing_url\n"
        f"c.WodAuthenticator.admin_password_hashes = {{'admin': {hash_password(ADMIN_PASSWORD, cost=4)!r}}}\n"
    )
    with RealHub(
        tmp_path_factory.mktemp("browser"), authenticator_class="wod", spawner_class="wod", wod_config={"variables": variables},
        extra_config=pages,
    ) as h:
        yield h


def test_the_admin_logs_in_and_lands_on_the_dashboard_and_a_student_sees_the_branded_login(hub):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(hub.url + "hub/login")
            expect(page.locator("#wod-platform-name")).to_have_text(PLATFORM)
            expect(page.locator("#wod-login-help")).to_have_text(HELP)
            page.screenshot(path=str(ARTIFACTS / "browser-branded-login.png"))
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", ADMIN_PASSWORD)
            page.click("input[type=submit], button[type=submit]")
            # no seat, no server to spawn: the hub's OAuth takes the admin to the wod dashboard
            page.wait_for_url("**/services/wod/", timeout=60_000)
            expect(page.locator("body")).to_contain_text("WKSHP-PythonBasics", timeout=30_000)
            assert "spawn" not in page.url and "Failed to start" not in page.content()
            page.screenshot(path=str(ARTIFACTS / "browser-admin-dashboard.png"))

            # The hub's admin page: Start for a seat nobody booked says why, not only that it failed.
            free = "student2"
            assert hub.hub_api("POST", f"/users/{free}").status_code in (201, 409)
            page.goto(hub.url + "hub/admin")
            row = page.locator("tr", has=page.locator("td", has_text=free))
            row.locator("button", has_text="Start Server").first.click(timeout=30_000)
            expect(page.locator("body")).to_contain_text("Failed to start server.", timeout=30_000)  # the admin page's own
            refused = page.locator(f".wod-start-refused[data-user={free}]")
            expect(refused).to_contain_text(f"{free}: {free} has no workshop booked at the moment", timeout=10_000)
            page.screenshot(path=str(ARTIFACTS / "browser-admin-start-refused.png"))
        finally:
            browser.close()


def test_student_logs_in_and_sees_the_readme_in_jupyterlab(hub):
    from playwright.sync_api import expect, sync_playwright

    customer = f"cust-{uuid.uuid4().hex[:8]}"
    r = httpx.post(
        hub.proxy_service_url + "api/create?wait=60",
        headers={"Authorization": f"token {hub.portal_token}"},
        json={"student": 1, "customer": customer, "email": "b@example.com", "workshop": WORKSHOP},
        timeout=90,
    )
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    password = r.json()["result"]["password"]

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser-login.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            log_in(page, hub.url + "hub/login", "student1", password)
            # the hub spawns the server and sends the browser to the workshop's ReadMeFirst
            page.wait_for_url("**/user/student1/lab/**", timeout=120_000)
            assert f"/lab/tree/{WORKSHOP}/0-ReadMeFirst.ipynb" in page.url
            tab = page.locator(".lm-TabBar-tab.jp-mod-current .lm-TabBar-tabLabel", has_text="0-ReadMeFirst.ipynb")
            expect(tab.first).to_be_visible(timeout=90_000)
            # the notebook rendered for this seat, not an empty panel
            heading = page.locator(".jp-NotebookPanel:visible .jp-RenderedMarkdown h1").first
            expect(heading).to_contain_text("Welcome to Python Basics, student1", timeout=60_000)
            expect(page.locator(".jp-NotebookPanel:visible .jp-InputArea-editor", has_text="Hello, student1!").first).to_be_visible()
            # Its kernel has started and written its kernelspec and language_info into the notebook:
            # the same values the provisioning gave it, so the notebook is still unchanged (not "unsaved").
            idle = page.locator(".jp-NotebookPanel:visible .jp-Notebook-ExecutionIndicator[data-status=idle]")
            expect(idle.first).to_be_attached(timeout=90_000)
            page.wait_for_timeout(1000)  # the kernel_info answer lands in the model right after the status
            assert "jp-mod-dirty" not in (tab.first.locator("xpath=..").get_attribute("class") or "")
            assert page.locator(".lm-TabBar-tab.jp-mod-dirty").count() == 0
            page.wait_for_timeout(1000)  # let the lab finish painting for the screenshot
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
