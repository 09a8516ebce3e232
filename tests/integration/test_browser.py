"""A real browser (Debian's chromium, driven by Playwright) logs in as a student and lands in JupyterLab.

`make test` installs chromium (the `chromium` target). The screenshot is
kept in artifacts/browser-login.png (gitignored) for a person to look at.
"""

import os
import shutil
import uuid

import httpx
import pytest

from wod_jupyterhub.cli.hubprocess import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "artifacts"
WORKSHOP = "WKSHP-PythonBasics"  # a sample bundled in share/workshops

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="chromium is not installed (make chromium installs it)"),
]


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory):
    # no notebooks given: c.Wod.notebooks defaults to the bundled samples
    variables = {"BRANDING": "HPE Developer Community", "BRANDINGWOD": "Workshops-on-Demand"}
    with module_hubs(
        tmp_path_factory.mktemp("browser"), authenticator_class="wod", spawner_class="wod", wod_config={"variables": variables}
    ) as h:
        yield h


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
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(hub.url + "hub/login")
            page.fill("input[name=username]", "student1")
            page.fill("input[name=password]", password)
            page.click("input[type=submit], button[type=submit]")
            # the hub spawns the server and sends the browser to the workshop's ReadMeFirst
            page.wait_for_url("**/user/student1/lab/**", timeout=120_000)
            assert f"/lab/tree/{WORKSHOP}/0-ReadMeFirst.ipynb" in page.url
            tab = page.locator(".lm-TabBar-tab.jp-mod-current .lm-TabBar-tabLabel", has_text="0-ReadMeFirst.ipynb")
            expect(tab.first).to_be_visible(timeout=90_000)
            # the notebook rendered for this seat, not an empty panel
            heading = page.locator(".jp-NotebookPanel:visible .jp-RenderedMarkdown h1").first
            expect(heading).to_contain_text("Welcome to Python Basics, student1", timeout=60_000)
            expect(page.locator(".jp-NotebookPanel:visible .jp-InputArea-editor", has_text="Hello, student1!").first).to_be_visible()
            page.wait_for_timeout(1000)  # let the lab finish painting for the screenshot
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
