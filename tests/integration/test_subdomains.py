"""System-users mode as production runs it: every seat's server on a subdomain of its own.

The set-up of docs/production.md ("TLS, a real domain, subdomains") on this
machine, without ``c.Wod.allow_single_origin``:
``c.JupyterHub.subdomain_host = "https://wod.localhost:<port>"``,
``cookie_host_prefix_enabled``, and TLS at the proxy with a certificate of
the test's own (a server marks its ``__Host-`` cookies Secure, which they
must be, only when its public URL is https; the browser is told to accept
the certificate). Chromium resolves every ``*.localhost``
name to loopback by itself, so no DNS entry is needed: the hub answers on
``wod.localhost``, ``student<N>``'s server on ``student<N>.wod.localhost``,
the wod service on ``wod--service.wod.localhost`` (JupyterHub's subdomain
for a service). A real hub, its proxy, a real account (``student500``) and
a real Chromium. The attacker's page is what ``student501``'s server would
serve once its student controls it: a small HTTP server of the test in the
proxy's table at that seat's host (a stock server sandboxes the files it
serves), opened by student500 while logged in.
"""

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.hubutil import write_workshop
from tests.pageserver import PageServer, log_in
from tests.seatutil import live_processes
from tests.sysusers import student_python
from wod_jupyterhub.cli import demo
from wod_jupyterhub.cli.hubprocess import REPO, hub_env
from wod_jupyterhub.cli.users import accounts_for
from wod_jupyterhub.config import Wod
from wod_jupyterhub.passwords import hash_password
from wod_jupyterhub.seats import accounts as etc_accounts

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(os.geteuid() != 0, reason="system-users mode needs root (CI runs as root)"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="chromium is not installed (make chromium)"),
]

FIRST, LAST = 500, 509
#: the seats of `WOD_SYSTEM_USERS=1 make demo`'s self-check below (its accounts made by the demo, removed here)
DEMO_FIRST, DEMO_LAST = 490, 491
VICTIM, ATTACKER = 500, 501
WORKSHOP = "WKSHP-Subdomains"
DOMAIN = "wod.localhost"
#: the cookie JupyterHub sets on the whole domain with subdomain_host (its session id, no credential)
SHARED_BY_JUPYTERHUB = {"jupyterhub-session-id"}
#: what the attacker's page tries, each of which the browser must refuse it
PROBES = ("hub_user", "hub_token", "hub_frame", "victim_files", "victim_frame", "service")
ADMIN_PASSWORD = "Admin-Pa55-" + uuid.uuid4().hex[:8]
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]

# Served from the attacker's seat: tries every way at the hub's and the victim seat's cookies and APIs.
ATTACK = """<!doctype html><html><body><script>
const HUB = "{hub}", VICTIM = "{victim}", SERVICE = "{service}";
async function probe(url, init) {{
  try {{
    const r = await fetch(url, Object.assign({{credentials: "include"}}, init || {{}}));
    return "read " + r.status + ": " + (await r.text()).slice(0, 120);
  }} catch (e) {{ return "blocked: " + e.name; }}
}}
function framed(url) {{
  return new Promise((resolve) => {{
    const frame = document.createElement("iframe");
    let done = false;
    const look = () => {{
      if (done) return;
      done = true;
      try {{ resolve("read: " + frame.contentDocument.cookie); }} catch (e) {{ resolve("blocked: " + e.name); }}
    }};
    frame.onload = look;
    setTimeout(look, 5000);
    frame.src = url;
    document.body.appendChild(frame);
  }});
}}
(async () => {{
  const result = {{own_cookies: document.cookie}};
  // the control: the same fetch reads its own host's answers
  result.own_page = await probe("/user/student{attacker}/attack.html");
  result.hub_user = await probe(HUB + "/hub/api/user");
  // a "simple" request: sent without asking first, so only the hub's own check can refuse it
  result.hub_token = await probe(HUB + "/hub/api/users/student{n}/tokens", {{method: "POST", body: '{{"note": "stolen"}}'}});
  result.hub_frame = await framed(HUB + "/hub/static/favicon.ico");
  result.victim_files = await probe(VICTIM + "/user/student{n}/api/contents");
  result.victim_frame = await framed(VICTIM + "/user/student{n}/api/contents");
  result.service = await probe(SERVICE + "/services/wod/api/operations");
  window.result = result;
}})();
</script></body></html>"""


def test_the_system_users_demo_serves_each_seat_on_its_own_host():
    """`WOD_SYSTEM_USERS=1 make demo` in its self-check mode: the repository's configuration, a seat's lab on its host.

    The demo makes its certificate and the accounts of its range, books a seat
    at the service's own port, logs in at ``wod.localhost`` and follows the hub
    to the seat's lab, which must answer on ``student<N>.wod.localhost``.
    """
    state = Path(tempfile.mkdtemp(prefix="wod-demo-subdomains-"))
    state.chmod(0o711)  # the students pass through it to their homes
    notebooks = state / "notebooks"
    write_workshop(notebooks, "WKSHP-Demo", (DEMO_FIRST, DEMO_LAST))
    env = hub_env({
        "WOD_SYSTEM_USERS": "1", "WOD_NOTEBOOKS": str(notebooks), "WOD_START_AHEAD": "0",
        "WOD_STUDENT_MIN": str(DEMO_FIRST), "WOD_STUDENT_MAX": str(DEMO_LAST),
        # what `make system-users` builds, unless the run names another (as the suite's command does)
        "WOD_STUDENT_PYTHON": os.environ.get("WOD_STUDENT_PYTHON") or str(REPO / ".venv-students" / "bin" / "python"),
    })  # fmt: skip
    try:
        r = subprocess.run(
            [sys.executable, "-m", "wod_jupyterhub.cli.demo", "--check", "--state", str(state)],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        key_mode = (state / "demo-tls.key").stat().st_mode & 0o777 if (state / "demo-tls.key").exists() else None
    finally:
        for n in range(DEMO_FIRST, DEMO_LAST + 1):
            for pid in live_processes(10000 + n):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        etc_accounts.remove({f"student{n}" for n in range(DEMO_FIRST, DEMO_LAST + 1)})
        subprocess.run(["rm", "-rf", str(state)], check=False)
    assert r.returncode == 0, r.stdout + r.stderr.split("\n[", 1)[0] + r.stderr[-3000:]  # its sentence, then the log's end
    login = re.search(r"^\s+login\s+(\S+)", r.stdout, re.M)
    assert login and login.group(1).startswith(f"https://{DOMAIN}:") and "/hub/login" in login.group(1), r.stdout
    lab = re.search(r"(student\d+)'s lab answered at (\S+)", r.stdout)
    assert lab, r.stdout
    name, url = lab.groups()
    assert url.startswith(f"https://{name}.{DOMAIN}:") and f"/user/{name}/lab" in url, url
    assert "accept" in r.stdout and f"wod--service.{DOMAIN}" in r.stdout, r.stdout
    assert key_mode == 0o600


@pytest.fixture(scope="module")
def accounts():
    """student500's account, its home in a students' folder of its own; yields that folder."""
    students = Path(tempfile.mkdtemp(prefix="wod-subdomains-"))
    students.chmod(0o711)
    wod = Wod(student_min=FIRST, student_max=LAST, students_root=str(students))
    made, problems = etc_accounts.plan(accounts_for(wod, VICTIM, VICTIM))
    assert not problems, problems
    etc_accounts.add(made)
    yield students
    for pid in live_processes(10000 + VICTIM):  # what the hub left of this test's own seat
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    etc_accounts.remove({a.name for a in made})
    subprocess.run(["rm", "-rf", str(students)], check=False)


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory, accounts):
    root = tmp_path_factory.mktemp("subdomains")
    notebooks = root / "notebooks"
    write_workshop(notebooks, WORKSHOP, (FIRST, LAST))
    cmd, env = student_python(10000 + VICTIM)
    wod = {
        "student_min": FIRST, "student_max": LAST, "system_users": True, "allow_single_origin": False,
        "students_root": str(accounts),
    }  # fmt: skip
    h = module_hubs(root, notebooks=[notebooks], authenticator_class="wod", spawner_class="wod", wod_config=wod)
    h.proxy_token = secrets.token_hex(16)
    h.origin = f"https://{DOMAIN}:{h.port}"
    cert, key = self_signed(root)
    h.extra_config = "\n".join([
        # what docs/production.md asks for, with *.localhost standing for the wildcard domain; TLS too:
        # a server's __Host- cookies carry Secure only when its public URL is https, and need it
        f"c.JupyterHub.subdomain_host = {h.origin!r}",
        "c.JupyterHub.cookie_host_prefix_enabled = True",
        f"c.JupyterHub.ssl_cert = {str(cert)!r}",
        f"c.JupyterHub.ssl_key = {str(key)!r}",
        "from wod_jupyterhub.hub import pages",
        "c.JupyterHub.template_paths = [pages.TEMPLATES]",
        "c.JupyterHub.default_url = pages.landing_url",
        f"c.WodAuthenticator.admin_password_hashes = {{'admin': {hash_password(ADMIN_PASSWORD, cost=4)!r}}}",
        f"c.WodSpawner.cmd = {cmd!r}",
        f"c.WodSpawner.environment = {env!r}",
        f"c.ConfigurableHTTPProxy.auth_token = {h.proxy_token!r}",
    ])  # fmt: skip
    h._wait_ready = lambda: wait_ready_over_tls(h)
    with h:
        yield h


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for the hub's name and every name under it (the browser is told to accept it), and its key."""
    cert, key = folder / "tls.crt", folder / "tls.key"
    demo.self_signed(cert, key, DOMAIN, days=1)
    return cert, key


def wait_ready_over_tls(h) -> None:
    """RealHub's wait for the hub and the service, with the proxy speaking TLS (its own certificate)."""
    deadline = time.monotonic() + h.startup_timeout
    while True:
        if h.proc.poll() is not None:
            raise RuntimeError(f"jupyterhub exited with {h.proc.returncode}:\n{Path(h.log_path).read_text()[-3000:]}")
        try:
            if httpx.get(f"https://127.0.0.1:{h.port}/hub/api/", verify=False, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"jupyterhub did not come up:\n{Path(h.log_path).read_text()[-3000:]}")
        time.sleep(0.1)
    h.wait_service(h.proc, h.log_path)


def seat_url(hub, n: int) -> str:
    return f"https://student{n}.{DOMAIN}:{hub.port}"


def test_each_seat_the_hub_and_the_service_answer_on_their_own_origins_and_a_seats_page_reaches_none(hub):
    from playwright.sync_api import expect, sync_playwright

    with hub.client("portal") as c:
        r = c.post("api/create?wait=90", json={"student": VICTIM, "customer": "c-sub", "email": "v@example.com", "workshop": WORKSHOP})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    created = r.json()["result"]
    assert created["login_url"].startswith(hub.origin + "/hub/login"), created  # what the participant is sent
    victim_origin = seat_url(hub, VICTIM)
    service_origin = f"https://wod--service.{DOMAIN}:{hub.port}"
    page_text = ATTACK.format(hub=hub.origin, victim=victim_origin, service=service_origin, n=VICTIM, attacker=ATTACKER).encode()
    with PageServer(page_text) as attacker:
        # The attacker's seat, as the hub's proxy routes it: by host.
        route = httpx.post(
            f"http://127.0.0.1:{hub.proxy_api_port}/api/routes/student{ATTACKER}.{DOMAIN}/user/student{ATTACKER}",
            headers={"Authorization": f"token {hub.proxy_token}"},
            json={"target": attacker.url}, timeout=10,
        )  # fmt: skip
        assert route.status_code == 201, route.text
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            try:
                page = browser.new_page(ignore_https_errors=True)
                log_in(page, created["login_url"], f"student{VICTIM}", created["password"])
                # login and the lab still work: the seat's server on its own host
                try:
                    page.wait_for_url(f"{victim_origin}/user/student{VICTIM}/lab/**", timeout=120_000)
                except Exception as e:
                    raise AssertionError(f"{page.url}\n{page.content()[-1500:]}\n{logs(hub)}") from e
                expect(page.locator(".jp-NotebookPanel:visible .jp-RenderedMarkdown").first).to_be_visible(timeout=90_000)
                names = {(c["domain"], c["name"]) for c in page.context.cookies()}
                # the hub's session cookie and the server's, each on its own host alone
                assert any(d == DOMAIN and n.startswith("__Host-jupyterhub") for d, n in names), names
                assert any(d == f"student{VICTIM}.{DOMAIN}" for d, _ in names), names

                page.goto(f"{seat_url(hub, ATTACKER)}/user/student{ATTACKER}/attack.html")
                page.wait_for_function("window.result !== undefined", timeout=60_000)
                result = page.evaluate("window.result")
            finally:
                browser.close()
    assert attacker.cookies_seen, "the attacker's page was never asked for"
    # JupyterHub shares its session id with every subdomain by design: not a credential (unsigned,
    # only what a logout revokes the session's tokens by). No other cookie of the hub or a seat gets there.
    sent = {pair.split("=", 1)[0].strip() for header in attacker.cookies_seen for pair in header.split(";") if pair.strip()}
    readable = {pair.split("=", 1)[0].strip() for pair in result["own_cookies"].split(";") if pair.strip()}
    problems = [f"cookies sent to the attacker's host: {sent}"] if sent - SHARED_BY_JUPYTERHUB else []
    problems += [f"cookies its page reads: {readable}"] if readable - SHARED_BY_JUPYTERHUB else []
    problems += [f"{probe}: {result[probe]}" for probe in PROBES if not result[probe].startswith("blocked")]
    problems += [] if result["own_page"].startswith("read 200") else [f"the control did not read its own page: {result['own_page']}"]
    tokens = hub.hub_api("GET", f"/users/student{VICTIM}/tokens").json()["api_tokens"]
    problems += [f"a token was minted: {t}" for t in tokens if t.get("note") == "stolen"]
    assert problems == [], result


def test_the_admin_lands_on_the_dashboard_on_the_services_own_host(hub):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(ignore_https_errors=True)
            log_in(page, hub.origin + "/hub/login", "admin", ADMIN_PASSWORD)
            page.wait_for_url(f"https://wod--service.{DOMAIN}:{hub.port}/services/wod/**", timeout=60_000)
            expect(page.locator("body")).to_contain_text(WORKSHOP, timeout=30_000)
        finally:
            browser.close()


def logs(hub) -> str:
    """The ends of the hub's log and of the victim seat's own log, to say why a page did not come."""
    seat = Path(hub.root) / "seat-logs" / f"student{VICTIM}.log"
    hub_log = Path(hub.log_path).read_text(errors="replace")[-3000:]
    return hub_log + "\n--- seat log\n" + (seat.read_text(errors="replace")[-3000:] if seat.exists() else "(none)")
