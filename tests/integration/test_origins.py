"""A page a student serves cannot act as whoever opens it: one origin per seat, and the hub never framed.

In a real Chromium (driven by Playwright) against a real hub and its proxy.
The attacker's page is what student A's server would serve once A controls
it (A's own code in A's server): here a small HTTP server of the test, put
in the proxy's routing table at ``/user/student2/`` (A's place on the hub's
origin), since a stock server sandboxes the files it serves. Student B
(``student1``, a booked seat) logs in and opens it.
"""

import os
import secrets
import shutil
import uuid

import httpx
import pytest

from tests.pageserver import PageServer, log_in
from wod_jupyterhub.config import Wod

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# Frames a file the hub serves on its path (/hub/), reads the hub's cookies through it, mints a token for the victim.
ATTACK = b"""<!doctype html><html><body><script>
window.result = null;
const frame = document.createElement("iframe");
frame.src = "/hub/static/favicon.ico";
let done = false;
async function attack() {
  if (done) return;
  done = true;
  let cookie;
  try { cookie = frame.contentDocument ? frame.contentDocument.cookie : "no document"; }
  catch (e) { cookie = "blocked: " + e.name; }
  const m = /(?:^|; )_xsrf=([^;]+)/.exec(cookie || "");
  let status = null;
  if (m) {
    const r = await fetch("/hub/api/users/student1/tokens", {
      method: "POST", credentials: "same-origin", body: JSON.stringify({note: "stolen"}),
      headers: {"X-XSRFToken": decodeURIComponent(m[1]), "Content-Type": "application/json"}});
    status = r.status;
  }
  window.result = {cookie: cookie, status: status};
}
frame.onload = attack;
setTimeout(attack, 5000);
document.body.appendChild(frame);
</script></body></html>"""


@pytest.mark.parametrize(
    "system_users,subdomain,prefix,told,refused",
    [
        (True, "", False, False, True),
        (True, "https://wod.example.com", False, False, True),
        (True, "", True, False, True),
        (True, "https://wod.example.com", True, False, False),
        (True, "", False, True, False),
        (False, "", False, False, False),
    ],
)
def test_system_users_mode_needs_an_origin_per_seat(system_users, subdomain, prefix, told, refused):
    sentence = Wod(system_users=system_users, allow_single_origin=told).check_origin(subdomain, prefix)
    assert bool(sentence) is refused
    if refused:
        assert "allow_single_origin" in sentence and ("subdomain_host" in sentence or "cookie_host_prefix" in sentence)


def test_the_hub_refuses_to_start_system_users_mode_on_one_origin(hubs, tmp_path):
    hub = hubs(tmp_path / "refused", authenticator_class="wod", wod_config={"system_users": True, "allow_single_origin": False})
    with pytest.raises(RuntimeError, match="exited with 1") as e:
        hub.start()
    assert "c.JupyterHub.subdomain_host" in str(e.value) and "Traceback" not in str(e.value)


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory):
    token = secrets.token_hex(16)
    # no notebooks given: the bundled samples, with the variables their templates need
    variables = {"BRANDING": "HPE Developer Community", "BRANDINGWOD": "Workshops-on-Demand"}
    with module_hubs(
        tmp_path_factory.mktemp("origins"), authenticator_class="wod", wod_config={"variables": variables},
        extra_config=f"c.ConfigurableHTTPProxy.auth_token = {token!r}",
    ) as h:  # fmt: skip
        h.proxy_token = token
        yield h


def test_the_hubs_static_files_and_logo_refuse_to_be_framed(hub):
    for path in ("hub/static/favicon.ico", "hub/logo", "hub/login"):
        r = httpx.get(hub.url + path, timeout=10)
        assert r.status_code == 200, path
        assert "frame-ancestors 'none'" in r.headers.get("Content-Security-Policy", ""), path
    assert httpx.get(hub.url + "hub/static/favicon.ico", timeout=10).headers["X-Frame-Options"] == "DENY"


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="chromium is not installed (make chromium)")
def test_a_page_served_on_the_hubs_origin_cannot_read_its_xsrf_cookie_or_mint_a_token(hub):
    from playwright.sync_api import sync_playwright

    r = httpx.post(
        hub.proxy_service_url + "api/create?wait=60", headers={"Authorization": f"token {hub.portal_token}"},
        json={"student": 1, "customer": f"c-{uuid.uuid4().hex[:8]}", "email": "b@example.com", "workshop": "WKSHP-PythonBasics"},
        timeout=90,
    )  # fmt: skip
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    password = r.json()["result"]["password"]
    with PageServer(ATTACK) as attacker:
        route = httpx.post(
            f"http://127.0.0.1:{hub.proxy_api_port}/api/routes/user/student2",
            headers={"Authorization": f"token {hub.proxy_token}"},
            json={"target": attacker.url},
            timeout=10,
        )
        assert route.status_code == 201, route.text
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
            try:
                page = browser.new_page()
                log_in(page, hub.url + "hub/login?next=/hub/home", "student1", password)
                page.wait_for_url("**/hub/home", timeout=60_000)
                assert any(c["name"] == "_xsrf" for c in page.context.cookies())  # the cookie the page is after
                page.goto(hub.url + "user/student2/attack.html")
                page.wait_for_function("window.result !== null", timeout=30_000)
                result = page.evaluate("window.result")
            finally:
                browser.close()
    assert "_xsrf" not in (result["cookie"] or ""), result
    assert result["status"] is None, result
    tokens = httpx.get(hub.api_url + "/users/student1/tokens", headers={"Authorization": f"token {hub.admin_token}"}, timeout=10)
    assert all(t.get("note") != "stolen" for t in tokens.json()["api_tokens"]), tokens.text
