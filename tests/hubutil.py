"""A real JupyterHub for tests: its own config in a tmp folder, its own proxy, the wod service.

Tests start one through the suite's fixtures (tests/conftest.py), which mark them ``hub``; a
start takes seconds, so a module shares one where it can::

    @pytest.fixture(scope="module")
    def hub(module_hubs, tmp_path_factory):
        with module_hubs(tmp_path_factory.mktemp("hub"), notebooks=[...]) as h:
            yield h

    h.url            # the proxy, e.g. http://127.0.0.1:PORT/
    h.service_url    # the wod service directly, e.g. http://127.0.0.1:PORT/services/wod/
    h.proxy_service_url   # the same through the proxy
    h.admin_token, h.portal_token, h.noscope_token, h.service_token
    h.students_root, h.db_url, h.notebooks, h.config_path

By default the hub runs the wod service as a *managed* service (it starts and
restarts it). With ``managed_service=False`` the hub only knows its URL and
token, and the test runs the service itself (:meth:`RealHub.service_process`),
which is how the crash test kills it with SIGKILL.

Everything started here runs in its own process group and is stopped on
exit (SIGTERM, then SIGKILL): no stray processes.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

# One way to start and stop a hub, shared with `make demo` (wod_jupyterhub/cli/hubprocess.py).
from wod_jupyterhub.cli.hubprocess import free_port, hub_env, start_hub, stop_group

SERVICE_PREFIX = "/services/wod/"
#: set by the suite around each test: False when the test is not marked ``hub`` (None outside pytest)
HUB_ALLOWED = None


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class _Subprocess:
    """A child process group with its log file, stopped on leaving a ``with`` block."""

    def stop(self):
        if self.proc is not None:
            stop_group(self.proc)
            self._log.close()
            self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class ServiceProcess(_Subprocess):
    """The wod service run by a test (not by the hub): start, wait ready, SIGKILL, restart."""

    def __init__(self, hub: "RealHub", log_name: str = "service.log", port: int | None = None):
        self.hub = hub
        self.log_path = hub.root / log_name
        # Another port than the hub's entry: a second process sharing the database.
        self.port = port or hub.service_port
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{SERVICE_PREFIX}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True, extra_args=()):
        env = hub_env(self.hub.service_env())
        env["JUPYTERHUB_SERVICE_URL"] = f"http://127.0.0.1:{self.port}"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wod_jupyterhub.service", "--config", str(self.hub.config_path), *extra_args],
            cwd=self.hub.root,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            self.wait_ready()
        return self

    def ready(self) -> bool:
        try:
            return self.alive and httpx.get(self.url + "api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 60):
        self.hub.wait_service(self.proc, self.log_path, timeout=timeout, url=self.url)

    def kill9(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            self._log.close()
            self.proc = None



class RealHub(_Subprocess):
    """``jupyterhub -f <tmp>/jupyterhub_config.py`` as a subprocess, ready to take API calls."""

    def __init__(
        self,
        root,
        *,
        db_url: str | None = None,
        notebooks=None,
        authenticator_class: str = "dummy",
        spawner_class: str | None = None,
        managed_service: bool = True,
        api_db_url: str = "",
        portal_username: str = "wodbackend",
        portal_password: str = "portal-pass-Xq7",
        extra_config: str = "",
        wod_config: dict | None = None,
        service_config: dict | None = None,
        startup_timeout: float = 60,
    ):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_url = db_url or f"sqlite:///{self.root / 'wod.sqlite'}"
        self.students_root = self.root / "students"
        self.notebooks = [str(p) for p in (notebooks or [])]
        self.authenticator_class = authenticator_class
        self.spawner_class = spawner_class
        self.managed_service = managed_service
        self.api_db_url = api_db_url
        self.portal_username = portal_username
        self.portal_password = portal_password
        self.extra_config = extra_config
        self.wod_config = dict(wod_config or {})
        self.service_config = dict(service_config or {})
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.hub_port = free_port()
        self.proxy_api_port = free_port()
        self.service_port = free_port()
        self.admin_token = secrets.token_hex(16)
        self.portal_token = secrets.token_hex(16)
        self.noscope_token = secrets.token_hex(16)
        self.service_token = secrets.token_hex(16)
        from cryptography.fernet import Fernet

        self.secret_key = Fernet.generate_key().decode()
        self.config_path = self.root / "jupyterhub_config.py"
        self.log_path = self.root / "hub.log"
        self.proc = None

    # ---- addresses

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}/hub/api"

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.service_port}{SERVICE_PREFIX}"

    @property
    def proxy_service_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{SERVICE_PREFIX}"

    # ---- configuration

    def config_text(self) -> str:
        service = {
            "name": "wod", "url": f"http://127.0.0.1:{self.service_port}", "api_token": self.service_token,
            # The dashboard: browsers log in with the hub's OAuth; their token may carry the read scope
            # (to look) and the operate scope (to unlock), as far as the user's roles grant them.
            "oauth_client_allowed_scopes": ["custom:wod:read", "custom:wod:operate"], "oauth_no_confirm": True,
        }
        if not self.managed_service:
            # The hub waits this long for an external service at start-up; the test starts it later.
            service["timeout"] = 1
        if self.managed_service:
            service["command"] = [sys.executable, "-m", "wod_jupyterhub.service", "--config", str(self.config_path)]
            service["environment"] = {"PYTHONUNBUFFERED": "1"}
        wod = {
            "db_url": self.db_url,
            "students_root": str(self.students_root),
            "secret_key": self.secret_key,
            # A test's browsers are its own; test_origins.py runs system-users mode on subdomains.
            "allow_single_origin": True,
        }
        if self.notebooks:
            wod["notebooks"] = self.notebooks
        wod.update(self.wod_config)
        services = [
            service,
            {"name": "wod-portal", "api_token": self.portal_token},
            {"name": "test-noscope", "api_token": self.noscope_token},
            {"name": "test-admin", "api_token": self.admin_token},
        ]
        lines = [
            "# written by tests/hubutil.py",
            "c = get_config()  # noqa",
            "c.JupyterHub.ip = '127.0.0.1'",
            f"c.JupyterHub.port = {self.port}",
            "c.JupyterHub.hub_ip = '127.0.0.1'",
            f"c.JupyterHub.hub_port = {self.hub_port}",
            f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{self.proxy_api_port}'",
            f"c.JupyterHub.db_url = {('sqlite:///' + str(self.root / 'jupyterhub.sqlite'))!r}",
            f"c.JupyterHub.cookie_secret_file = {str(self.root / 'jupyterhub_cookie_secret')!r}",
            f"c.JupyterHub.pid_file = {str(self.root / 'jupyterhub.pid')!r}",
            "c.JupyterHub.cleanup_servers = True",
            f"c.JupyterHub.authenticator_class = {self.authenticator_class!r}",
            "c.Authenticator.admin_users = {'admin'}",
            "c.Spawner.args = ['--allow-root']",
            "c.JupyterHub.custom_scopes = {",
            "    'custom:wod:operate': {'description': 'Run the wod verbs: CREATE, CLEANUP, RESET, PURGE.'},",
            "    'custom:wod:read': {'description': 'Read wod operations, students and workshops.'},",
            "}",
            f"c.JupyterHub.services = {services!r}",
            "c.JupyterHub.load_roles = [",
            "    {'name': 'wod-service', 'scopes': ['admin:users', 'servers', 'tokens'], 'services': ['wod']},",
            "    {'name': 'wod-portal', 'scopes': ['custom:wod:operate', 'custom:wod:read', 'access:services!service=wod'], 'services': ['wod-portal']},",
            "    {'name': 'admin', 'services': ['test-admin']},",
            "    {'name': 'wod-admins', 'users': ['admin'], 'scopes': ['custom:wod:read', 'custom:wod:operate', 'access:services!service=wod']},",
            "]",
        ]
        if self.authenticator_class == "dummy":
            lines.append("c.Authenticator.allow_all = True")
        if self.spawner_class:
            lines.append(f"c.JupyterHub.spawner_class = {self.spawner_class!r}")
        for key, value in wod.items():
            lines.append(f"c.Wod.{key} = {value!r}")
        # No server starts unless a test asks for one (a test of servers started ahead sets it in service_config).
        lines.append("c.WodOperations.start_server = False")
        for key, value in self.service_config.items():
            # "name" is c.WodService.name; "Section.name" (WodOperations.workers) is c.Section.name.
            lines.append(f"c.{key if '.' in key else 'WodService.' + key} = {value!r}")
        if self.api_db_url:
            lines += [
                f"c.WodPortal.url = {self.api_db_url!r}",
                f"c.WodPortal.username = {self.portal_username!r}",
                f"c.WodPortal.password = {self.portal_password!r}",
            ]
        lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def service_env(self) -> dict:
        """The environment a managed service gets from the hub, for a service run by the test."""
        return {
            "JUPYTERHUB_SERVICE_NAME": "wod",
            "JUPYTERHUB_API_TOKEN": self.service_token,
            "JUPYTERHUB_API_URL": self.api_url,
            "JUPYTERHUB_BASE_URL": "/",
            "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{self.service_port}",
            "JUPYTERHUB_SERVICE_PREFIX": SERVICE_PREFIX,
            "PYTHONUNBUFFERED": "1",
        }

    # ---- lifecycle

    def start(self):
        if HUB_ALLOWED is False:
            raise RuntimeError("this test starts a hub but is not marked hub: start it through the module_hubs or hubs fixture")
        self.config_path.write_text(self.config_text())
        self._log = open(self.log_path, "ab")
        self.proc = start_hub(self.config_path, self.root, hub_env(), self._log)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self):
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited with {self.proc.returncode}:\n{_tail(self.log_path)}")
            try:
                r = httpx.get(f"{self.url}hub/api/", timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyterhub did not come up in {self.startup_timeout} s:\n{_tail(self.log_path)}")
            time.sleep(0.1)
        if self.managed_service:
            self.wait_service(self.proc, self.log_path)

    def wait_service(self, proc, log_path, timeout: float | None = None, url: str | None = None):
        url = url or self.service_url
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the process exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                if httpx.get(url + "api/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the wod service did not come up:\n{_tail(log_path)}")
            time.sleep(0.05)

    def service_process(self, log_name: str = "service.log", port: int | None = None) -> ServiceProcess:
        return ServiceProcess(self, log_name, port)


    # ---- clients

    def client(self, token: str | None = "portal", via_proxy: bool = False, base_url: str | None = None, **kwargs) -> httpx.Client:
        """An httpx client on the service; token: "portal", "admin", "noscope", None or a raw token."""
        token = {"portal": self.portal_token, "admin": self.admin_token, "noscope": self.noscope_token}.get(token, token)
        headers = {"Authorization": f"token {token}"} if token else {}
        base = base_url or (self.proxy_service_url if via_proxy else self.service_url)
        return httpx.Client(base_url=base, headers=headers, timeout=kwargs.pop("timeout", 60), **kwargs)

    def hub_api(self, method: str, path: str, **kwargs) -> httpx.Response:
        """A call to the hub's REST API with the admin token."""
        headers = {"Authorization": f"token {self.admin_token}"}
        return httpx.request(method, self.api_url + path, headers=headers, timeout=30, **kwargs)


# ---------------------------------------------------------------------- sample workshops


def notebook(*cells) -> str:
    """A minimal nbformat 4 notebook; ``cells`` are ("markdown"|"code", source) pairs."""
    out = []
    for kind, source in cells:
        cell = {"cell_type": kind, "metadata": {}, "source": source}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        out.append(cell)
    return json.dumps(
        {"cells": out, "metadata": {}, "nbformat": 4, "nbformat_minor": 4}, indent=1
    )


def write_workshop(root, name, rng, *, active=True, reset=False, readme_source="Your password is {{ PASSSTU }}", extra=None) -> Path:
    """A small workshop folder ``root/name`` with a wod.yml, a templated ReadMeFirst and one exercise."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wod.yml").write_text(
        f"name: '{name} for tests'\nactive: {str(active).lower()}\ncapacity: {rng[1] - rng[0] + 1}\n"
        f"range: [{rng[0]},{rng[1]}]\nreset: {str(reset).lower()}\nmonoappliance: false\nmultiappliance: false\n"
    )
    (folder / "0-ReadMeFirst.ipynb").write_text(
        notebook(("markdown", f"# {{{{ WORKSHOP }}}} for student{{{{ STDID }}}}\n{readme_source}"), ("code", "print('hello')"))
    )
    (folder / "1-Exercise.ipynb").write_text(notebook(("code", "1 + 1"), ("code", "2 + 2"), ("code", "")))
    (folder / "README.md").write_text("{{ not rendered }}\n")
    for rel, text in (extra or {}).items():
        (folder / rel).write_text(text)
    return folder
