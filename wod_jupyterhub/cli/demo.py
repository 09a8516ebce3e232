"""``make demo``: the hub with ``jupyterhub_config.py``, one seat booked through the REST API."""

import argparse
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from .hubprocess import REPO, free_port, hub_env, start_hub, stop_group


def wait_for(url: str, proc: subprocess.Popen, timeout: float, what: str, headers=None) -> None:
    """Until ``url`` answers 200; ``RuntimeError`` when ``proc`` ends or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the hub exited (code {proc.returncode}) before {what} answered")
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f} s")


def book_seat(hub_url: str, token: str, customer: str, email: str) -> dict:
    """CREATE the first free seat of the first workshop the catalog offers; the finished operation."""
    api = f"{hub_url}/services/wod/api"
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


def login(hub_url: str, name: str, password: str) -> httpx.Client:
    """Log in through the real login form; the client then holds the login cookie."""
    client = httpx.Client(base_url=hub_url, timeout=30, follow_redirects=False)
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


class DemoHub:
    """``jupyterhub -f jupyterhub_config.py`` as a child process (:mod:`.hubprocess`; used by the demo and bench/login.py).

    ``private=True`` gives it free ports, so it runs beside a demo or a hub
    already on this machine; ``log`` is a file for the hub's output (None:
    this terminal).
    """

    def __init__(self, config=REPO / "jupyterhub_config.py", state=None, url=None, private=False, log=None, extra_env=None):
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
        self.env = env
        self.cwd = env.get("WOD_STATE_DIR") or str(self.config.parent)
        self.log_path = Path(log) if log else None
        self.proc = None

    def start(self, timeout: float = 90) -> "DemoHub":
        if not shutil.which("configurable-http-proxy", path=self.env["PATH"]):
            raise RuntimeError("configurable-http-proxy is missing: run `make deps` (npm install)")
        self._log = open(self.log_path, "w") if self.log_path else None
        self.proc = start_hub(self.config, self.cwd, self.env, self._log)  # its own session: Ctrl-C reaches us
        wait_for(f"{self.url}/hub/health", self.proc, timeout, "the hub")
        wait_for(f"{self.url}/services/wod/api/health", self.proc, timeout, "the wod service")
        return self

    def log_tail(self, chars: int = 6000) -> str:
        if self.log_path is None:
            return ""
        if self._log:
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
    probe = subprocess.run([python, "-c", "import jupyterhub"], user=65534, group=65534, extra_groups=[], capture_output=True)
    if probe.returncode != 0:
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
    hub = DemoHub(args.config, state=state, url=args.url, private=args.check)
    # The hub's start-up (proxy, service, servers) goes to a file; the terminal keeps what a person needs.
    hub.log_path = Path(hub.cwd) / "hub.log"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        if system_users_requested(hub.env):
            make_accounts(str(hub.config), hub.env)
        hub.start()
        op = book_seat(hub.url, hub.token, customer="demo", email="demo@example.com")
        result = op.get("result") or {}
        name = f"student{op['student']}"
        password = result.get("password")
        if not password:
            raise RuntimeError("the finished CREATE carries no password")
        login_url = result.get("login_url") or f"{hub.url}/hub/login"
        if login_url.startswith("/"):
            login_url = hub.url + login_url
        admin = f"admin, password {admin_password}" if admin_password else "admin, with the password whose hash is $WOD_ADMIN_HASH"
        if args.check:
            login(hub.url, name, password).close()
            print(f"demo check: {name} logged in through the login form", flush=True)
        else:
            print(f"The hub's log is {hub.log_path}; Ctrl-C stops the hub, the proxy, the service and the servers.", flush=True)
        print(
            f"\nwod demo is up: {hub.url}\n"
            f"  workshop     {op.get('workshop')}\n"
            f"  login        {login_url}\n"
            f"  student      {name}, password {password}\n"
            f"  dashboard    {hub.url}/services/wod/ (log in as the admin)\n"
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
