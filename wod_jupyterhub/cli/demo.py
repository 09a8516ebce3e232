"""``make demo``: the hub with ``jupyterhub_config.py``, one seat booked through the REST API.

In system-users mode the demo serves every seat on a host of its own, as
production does (docs/production.md, "TLS, a real domain, subdomains"): the
hub on ``https://wod.localhost:<port>``, ``student<N>``'s server on
``student<N>.wod.localhost``, the wod service on ``wod--service.wod.localhost``.
Browsers resolve every ``*.localhost`` name to loopback themselves; TLS with a
certificate the demo makes once is needed because a server marks its
``__Host-`` cookies Secure only when its public URL is https.
"""

import argparse
import datetime
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from .hubprocess import REPO, free_port, hub_env, start_hub, stop_group

#: the demo's domain in system-users mode: the hub's host, each seat's and the service's under it
DEMO_DOMAIN = "wod.localhost"


def self_signed(cert_path: Path, key_path: Path, domain: str = DEMO_DOMAIN, days: int = 365) -> None:
    """Write a self-signed certificate for ``domain`` and every name under it, and its key (0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain), x509.DNSName(f"*.{domain}")]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    Path(cert_path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class LoopbackTransport(httpx.HTTPTransport):
    """Sends what is meant for a ``*.localhost`` name to 127.0.0.1, as browsers do.

    The system's resolver need not know these names. The request keeps its
    ``Host`` header (the hub's proxy routes by it) and the certificate is
    checked against the name; the client's cookies stay keyed by the name.
    """

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host == "localhost" or host.endswith(".localhost"):
            request = httpx.Request(
                request.method, request.url.copy_with(host="127.0.0.1"), headers=request.headers,
                stream=request.stream, extensions={**request.extensions, "sni_hostname": host},
            )  # fmt: skip
        return super().handle_request(request)


def wait_for(url: str, proc: subprocess.Popen, timeout: float, what: str, headers=None, client=None) -> None:
    """Until ``url`` answers 200 (through ``client``, else a plain request); ``RuntimeError`` when ``proc`` ends or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the hub exited (code {proc.returncode}) before {what} answered")
        try:
            if (client or httpx).get(url, timeout=2, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f} s")


def book_seat(service_url: str, token: str, customer: str, email: str) -> dict:
    """CREATE the first free seat of the first workshop the catalog offers (at the service's own port); the finished operation."""
    api = f"{service_url}/services/wod/api"
    headers = {"Authorization": f"token {token}"}
    r = httpx.get(f"{api}/workshops", headers=headers, timeout=30)
    r.raise_for_status()
    body = r.json()
    workshops = body.get("workshops", body) if isinstance(body, dict) else body
    usable = [w for w in workshops if w.get("active") and w.get("valid", True) and w.get("range")]
    if not usable:
        raise RuntimeError("the catalog has no workshop to book (c.Wod.notebooks)")
    ws = sorted(usable, key=lambda w: w["name"])[0]
    low, high = (ws.get("range") or [1, 1])[:2]
    for student in range(low, high + 1):
        r = httpx.post(
            f"{api}/create?wait=120",
            headers=headers,
            json={"student": student, "customer": customer, "email": email, "workshop": ws["name"]},
            timeout=150,
        )
        if r.status_code == 409:  # seat held (a demo from before, on the same state folder)
            continue
        if r.status_code != 200:
            raise RuntimeError(f"CREATE of student{student} answered {r.status_code}: {r.text[:300]}")
        op = r.json()
        if op.get("status") != "succeeded":
            raise RuntimeError(f"CREATE of student{student} ended {op.get('status')}: {op.get('error')}")
        return op
    raise RuntimeError(f"every seat of {ws['name']} ({low}..{high}) is held")


def login(hub_url: str, name: str, password: str, **client_options) -> httpx.Client:
    """Log in through the real login form; the client (``client_options`` for httpx) then holds the login cookie."""
    client = httpx.Client(base_url=hub_url, timeout=30, follow_redirects=False, **client_options)
    form = client.get("/hub/login")
    form.raise_for_status()
    m = re.search(r'name="_xsrf"\s+value="([^"]+)"', form.text)
    if not m:
        raise RuntimeError("the login page has no _xsrf field")
    r = client.post("/hub/login", data={"username": name, "password": password, "_xsrf": m.group(1)})
    if r.status_code != 302:
        raise RuntimeError(f"login as {name} answered {r.status_code}, not a redirect")
    me = client.get("/hub/api/user", headers={"Referer": hub_url + "/hub/"})
    if me.status_code != 200 or me.json().get("name") != name:
        raise RuntimeError(f"after login the hub does not know {name} (answered {me.status_code})")
    return client


def open_lab(client: httpx.Client, name: str, timeout: float = 90) -> str:
    """Follow the hub to ``name``'s lab (starting its server) until the lab answers 200; its URL."""
    deadline = time.monotonic() + timeout
    client.get(f"/hub/spawn/{name}", follow_redirects=True)  # where the login sends a participant: starts the server
    while True:
        r = client.get(f"/hub/user/{name}/lab", follow_redirects=True)
        if r.status_code == 200 and f"/user/{name}/lab" in r.url.path:
            return str(r.url)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}'s lab did not answer within {timeout:.0f} s (last: {r.status_code} at {r.url})")
        time.sleep(0.5)  # the server is still starting: the hub answers with its spawn-pending page


class DemoHub:
    """``jupyterhub -f jupyterhub_config.py`` as a child process (:mod:`.hubprocess`; used by the demo and bench/login.py).

    ``private=True`` gives it free ports, so it runs beside a demo or a hub
    already on this machine; ``log`` is a file for the hub's output (None:
    this terminal). ``subdomains=True`` serves each seat on its own host
    under :data:`DEMO_DOMAIN`, over TLS with the certificate of
    ``demo-tls.crt`` in the state folder (made on the first start).
    """

    def __init__(self, config=REPO / "jupyterhub_config.py", state=None, url=None, private=False, log=None, extra_env=None, subdomains=False):
        self.config = Path(config).resolve()
        env = hub_env(extra_env)
        self.token = env.get("WOD_API_TOKEN") or secrets.token_hex(32)
        env["WOD_API_TOKEN"] = self.token
        state = state or env.get("WOD_STATE_DIR")
        if state:
            Path(state).mkdir(parents=True, exist_ok=True)
            env["WOD_STATE_DIR"] = str(Path(state).resolve())
        self.url = (url or env.get("WOD_HUB_URL") or (f"http://127.0.0.1:{free_port()}" if private else "http://127.0.0.1:8000")).rstrip("/")
        env["WOD_HUB_URL"] = self.url
        if private:
            env.setdefault("WOD_HUB_API_URL", f"http://127.0.0.1:{free_port()}")
            env.setdefault("WOD_PROXY_API_URL", f"http://127.0.0.1:{free_port()}")
            env.setdefault("WOD_SERVICE_URL", f"http://127.0.0.1:{free_port()}")
        self.service_url = env.get("WOD_SERVICE_URL", "http://127.0.0.1:10101")
        self.env = env
        self.cwd = env.get("WOD_STATE_DIR") or str(self.config.parent)
        #: where people (and the demo's own helper) reach the hub
        self.public_url = self.url
        self.tls = None
        if subdomains:
            port = httpx.URL(self.url).port or 443
            self.url = env["WOD_HUB_URL"] = f"https://127.0.0.1:{port}"
            self.public_url = env["WOD_SUBDOMAIN_HOST"] = f"https://{DEMO_DOMAIN}:{port}"
            self.tls = (Path(self.cwd) / "demo-tls.crt", Path(self.cwd) / "demo-tls.key")
            env["WOD_SSL_CERT"], env["WOD_SSL_KEY"] = (str(p) for p in self.tls)
        self.log_path = Path(log) if log else None
        self.proc = None

    @property
    def dashboard_url(self) -> str:
        """The wod service's dashboard: on the service's own host (JupyterHub's ``<name>--service.``) with subdomains."""
        if self.tls is None:
            return f"{self.public_url}/services/wod/"
        return self.public_url.replace("://", "://wod--service.", 1) + "/services/wod/"

    def client_options(self) -> dict:
        """What an httpx client needs to reach :attr:`public_url`: the loopback names and the demo's certificate."""
        if self.tls is None:
            return {}
        return {"transport": LoopbackTransport(verify=ssl.create_default_context(cafile=str(self.tls[0])))}

    def start(self, timeout: float = 90) -> "DemoHub":
        if not shutil.which("configurable-http-proxy", path=self.env["PATH"]):
            raise RuntimeError("configurable-http-proxy is missing: run `make deps` (npm install)")
        if self.tls and not self.tls[0].exists():
            self_signed(*self.tls)  # once: the browser is asked to accept it once
        self._log = open(self.log_path, "w") if self.log_path else None
        self.proc = start_hub(self.config, self.cwd, self.env, self._log)  # its own session: Ctrl-C reaches us
        with httpx.Client(**self.client_options()) as client:
            wait_for(f"{self.public_url}/hub/health", self.proc, timeout, "the hub", client=client)
        wait_for(f"{self.service_url}/services/wod/api/health", self.proc, timeout, "the wod service")
        return self

    def log_tail(self, chars: int = 6000) -> str:
        """The end of the hub's log; empty before the hub was started."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        if getattr(self, "_log", None):
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout=60)
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def system_users_requested(env=os.environ) -> bool:
    return env.get("WOD_SYSTEM_USERS", "0").lower() not in ("", "0", "false", "no")


def make_accounts(config: str, env: dict) -> None:
    """System-users mode: the accounts of the configuration's range (``wod users create``), or a clear error."""
    if os.geteuid() != 0:
        raise RuntimeError("WOD_SYSTEM_USERS=1 needs root: the servers run as the accounts student<N>")
    python = env.get("WOD_STUDENT_PYTHON") or sys.executable
    try:
        probe = subprocess.run([python, "-c", "import jupyterhub"], user=65534, group=65534, extra_groups=[], capture_output=True)
    except OSError:  # no such file, or not a program
        probe = None
    if probe is None or probe.returncode != 0:
        raise RuntimeError(f"{python} cannot run jupyterhub as another account; run `make system-users` or set WOD_STUDENT_PYTHON")
    r = subprocess.run([sys.executable, "-m", "wod_jupyterhub.cli.users", "create", "--config", config], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"wod users create failed: {r.stderr.strip() or r.stdout.strip()}")
    print(r.stdout.strip(), flush=True)


def main(argv=None) -> int:
    """``make demo``: run a hub with this configuration until Ctrl-C (``--check``: book a seat, log in once, stop); the exit status."""
    parser = argparse.ArgumentParser(prog="python -m wod_jupyterhub.cli.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "jupyterhub_config.py"), help="hub configuration (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="book a seat, log in once through the login form, stop, exit 0")
    parser.add_argument("--state", help="folder for databases, homes and keys (default: $WOD_STATE_DIR, else beside the config; a temporary one with --check)")
    parser.add_argument("--url", help="public URL of the hub (default: $WOD_HUB_URL, else http://127.0.0.1:8000; a free port with --check)")
    args = parser.parse_args(argv)

    tmp = None
    state = args.state
    if args.check and not (state or os.environ.get("WOD_STATE_DIR")):
        state = tmp = tempfile.mkdtemp(prefix="wod-demo-")
    admin_password = None
    if not os.environ.get("WOD_ADMIN_HASH"):
        # An admin to log in with: the dashboard is the admin's way in (a hash, as production has it).
        from ..passwords import generate, hash_password

        admin_password = generate(16)
        os.environ["WOD_ADMIN_HASH"] = hash_password(admin_password, cost=11)
    subdomains = system_users_requested()
    hub = DemoHub(args.config, state=state, url=args.url, private=args.check, subdomains=subdomains)
    # The hub's start-up (proxy, service, servers) goes to a file; the terminal keeps what a person needs.
    hub.log_path = Path(hub.cwd) / "hub.log"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        if subdomains:
            make_accounts(str(hub.config), hub.env)
        hub.start()
        op = book_seat(hub.service_url, hub.token, customer="demo", email="demo@example.com")
        result = op.get("result") or {}
        name = f"student{op['student']}"
        password = result.get("password")
        if not password:
            raise RuntimeError("the finished CREATE carries no password")
        login_url = result.get("login_url") or f"{hub.public_url}/hub/login"
        if login_url.startswith("/"):
            login_url = hub.public_url + login_url
        admin = f"admin, password {admin_password}" if admin_password else "admin, with the password whose hash is $WOD_ADMIN_HASH"
        if args.check:
            client = login(hub.public_url, name, password, **hub.client_options())
            try:
                print(f"demo check: {name} logged in through the login form", flush=True)
                if subdomains:
                    print(f"demo check: {name}'s lab answered at {open_lab(client, name)}", flush=True)
            finally:
                client.close()
        else:
            print(f"The hub's log is {hub.log_path}; Ctrl-C stops the hub, the proxy, the service and the servers.", flush=True)
        if hub.tls:
            print(
                f"Each seat is served on its own host under {DEMO_DOMAIN}, over https with the demo's own certificate"
                f" ({hub.tls[0]}): the browser asks once to accept it (and again for a host it has not seen).",
                flush=True,
            )
        print(
            f"\nwod demo is up: {hub.public_url}\n"
            f"  workshop     {op.get('workshop')}\n"
            f"  login        {login_url}\n"
            f"  student      {name}, password {password}\n"
            f"  dashboard    {hub.dashboard_url} (log in as the admin)\n"
            f"  admin        {admin}\n"
            f"  portal token {hub.token} (WOD_API_TOKEN of the wod command)",
            flush=True,
        )
        if args.check:
            return 0
        hub.proc.wait()
        return hub.proc.returncode or 0
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, httpx.HTTPError) as e:
        print(f"demo: {e}", file=sys.stderr)
        print(hub.log_tail(), file=sys.stderr)
        return 1
    finally:
        hub.stop()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
