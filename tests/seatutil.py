"""Seats of a real hub as a student uses them: booked over REST, logged in, a server started, a kernel driven.

Shared by the tests that start hubs and the benches that size a seat
(``bench/seat_size.py``, ``bench/cpu_share.py``).
"""

import asyncio
import contextlib
import datetime
import json
import os
import re
import secrets
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests.sysusers import student_python
from wod_jupyterhub.cli.users import accounts_for
from wod_jupyterhub.config import Wod
from wod_jupyterhub.seats import accounts as etc_accounts
from wod_jupyterhub.seats import cgroups

#: the workshop ``create`` books by default
WORKSHOP = "WKSHP-E2E"
#: a seat's account has uid UID_BASE + its number (``c.Wod.uid_base``'s default)
UID_BASE = 10000


#: the students' Python with this package installed, as production has it (`make system-users` builds it, `make test` names it)
STUDENTS_PYTHON = os.environ.get("WOD_STUDENT_PYTHON", "")

#: for a module whose seats' servers need the package (its server extensions): skipped without that Python, never in CI
needs_students_python = pytest.mark.skipif(
    not os.path.isfile(STUDENTS_PYTHON) and not os.environ.get("CI"),
    reason="no students' Python with the package installed: `make system-users` (as root) builds it and `make test` sets WOD_STUDENT_PYTHON",
)

#: the ``c.WodSpawner`` lines that run the seats' servers with it
STUDENTS_PYTHON_SPAWNER = [f"c.WodSpawner.cmd = [{STUDENTS_PYTHON!r}, '-m', 'jupyterhub.singleuser']", "c.WodSpawner.environment = {}"]


# -- helpers: what a browser does ------------------------------------------


def create(hub, n, customer=None, workshop=WORKSHOP):
    customer = customer or f"cust-{uuid.uuid4().hex[:8]}"
    with hub.client("portal", via_proxy=True) as c:
        r = c.post("api/create?wait=90", json={"student": n, "customer": customer, "email": f"{customer}@example.com", "workshop": workshop})
    assert r.status_code == 200, r.text
    op = r.json()
    assert op["status"] == "succeeded", (op["error"], op["steps"])
    return op["result"]["password"], customer


def cleanup(hub, n, customer):
    with hub.client("portal", via_proxy=True) as c:
        r = c.post("api/cleanup?wait=120", json={"student": n, "customer": customer})
    assert r.status_code == 200, r.text
    op = r.json()
    assert op["status"] == "succeeded", (op["error"], op["steps"])
    return op


def browser(hub) -> httpx.Client:
    return httpx.Client(base_url=hub.url.rstrip("/"), timeout=60, follow_redirects=False)


def login_form(client, name, password):
    """GET the login page (xsrf token and cookie), POST the form like a browser."""
    page = client.get("/hub/login")
    assert page.status_code == 200
    xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text).group(1)
    return client.post("/hub/login", data={"username": name, "password": password, "_xsrf": xsrf})


def logged_in(hub, name, password) -> httpx.Client:
    c = browser(hub)
    r = login_form(c, name, password)
    assert r.status_code == 302, (r.status_code, r.text[-500:])
    return c


def whoami(client):
    """The hub's answer to the cookie: the user name, or None when it sends the login page."""
    r = client.get("/hub/home")
    if r.status_code == 302 and "/hub/login" in r.headers["location"]:
        return None
    assert r.status_code == 200, r.status_code
    me = client.get("/hub/api/user", headers={"Referer": str(client.base_url) + "/hub/home"})
    assert me.status_code == 200
    return me.json()["name"]


def spawn(hub, client, name, timeout=90):
    r = client.get("/hub/spawn")
    assert r.status_code == 302, r.status_code
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        server = hub.hub_api("GET", f"/users/{name}").json()["servers"].get("")
        if server and server.get("ready"):
            return server
        time.sleep(0.3)
    raise AssertionError(f"the server of {name} did not become ready:\n" + Path(hub.log_path).read_text()[-3000:])


def server_get(client, name, path):
    """A GET on a user's server with the browser's cookies, following redirects (the OAuth dance)."""
    client.follow_redirects = True
    try:
        return client.get(f"/user/{name}/{path}")
    finally:
        client.follow_redirects = False


def wait_ready(hub, name, timeout=90):
    """Until the hub says the server of ``name`` is ready (one started by the service, not by a login)."""
    deadline = time.monotonic() + timeout
    while not hub.hub_api("GET", f"/users/{name}").json()["servers"].get("", {}).get("ready"):
        assert time.monotonic() < deadline, hub.hub_api("GET", f"/users/{name}").json()
        time.sleep(0.5)


def open_lab(client, name):
    """What a browser does first: open the lab page, which logs in to the server through the hub (OAuth)."""
    return server_get(client, name, "lab")


async def run_cells(hub, client, name, sources):
    """Run ``sources`` in a real kernel of ``name``'s server over its websocket; their execution counts."""
    base = f"/user/{name}"
    open_lab(client, name)  # sets the server's _xsrf cookie
    xsrf = next(c.value for c in client.cookies.jar if c.name == "_xsrf" and c.path.startswith(base))
    headers = {"X-XSRFToken": xsrf}
    r = client.post(f"{base}/api/kernels", json={"name": "python3"}, headers=headers)
    assert r.status_code == 201, (r.status_code, r.text)
    kernel = r.json()["id"]
    cookie = "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)
    ws_url = hub.url.replace("http", "ws").rstrip("/") + f"{base}/api/kernels/{kernel}/channels"
    ws = await websocket_connect(HTTPRequest(ws_url, headers={"Cookie": cookie}))
    session = uuid.uuid4().hex
    counts = []
    try:
        for code in sources:
            msg_id = uuid.uuid4().hex
            ws.write_message(
                json.dumps(
                    {
                        "header": {
                            "msg_id": msg_id, "username": name, "session": session, "msg_type": "execute_request",
                            "version": "5.3", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                        },
                        "parent_header": {},
                        "metadata": {},
                        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
                        "channel": "shell",
                        "buffers": [],
                    }
                )
            )
            while True:
                msg = json.loads(await asyncio.wait_for(ws.read_message(), 60))
                if msg.get("parent_header", {}).get("msg_id") == msg_id and msg["header"]["msg_type"] == "execute_reply":
                    assert msg["content"]["status"] == "ok", msg["content"]
                    counts.append(msg["content"]["execution_count"])
                    break
    finally:
        ws.close()
        client.delete(f"{base}/api/kernels/{kernel}", headers=headers)
    return counts, headers


def live_processes(uid: int, ids=(1,)) -> list[int]:
    """Pids running as ``uid`` that are not zombies (PID 1 here reaps late).

    ``ids``: which of the real (0), effective (1) and saved (2) uids to match (by default the effective one).
    """
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                status = Path(f"/proc/{entry.name}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if uid in (int(fields["Uid"].split()[i]) for i in ids) and not fields["State"].strip().startswith(("Z", "X")):
                found.append(int(entry.name))
    return found


def end_processes(uid: int) -> set[int]:
    """Kill every process of ``uid`` until none is left (looping: they may fork); the pids that were found."""
    seen = set()
    for _ in range(100):
        pids = live_processes(uid)
        if not pids:
            break
        seen.update(pids)
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    return seen


def verb(hub, path, body):
    with hub.client("portal", via_proxy=True) as c:
        r = c.post(f"api/{path}?wait=90", json=body)
    assert r.status_code == 200, r.text
    op = r.json()
    assert op["status"] == "succeeded", (op["error"], op["steps"])
    return op


def seat(hub, n, workshop):
    """CREATE seat n, log in, start the server: the browser client and the customer."""
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    op = verb(hub, "create", {"student": n, "customer": customer, "email": f"{customer}@example.com", "workshop": workshop})
    c = logged_in(hub, f"student{n}", op["result"]["password"])
    spawn(hub, c, f"student{n}")
    return c, customer


class Kernel:
    """A real kernel of a student's server, driven over its websocket like JupyterLab does."""

    def __init__(self, hub, client, name):
        self.hub, self.client, self.name = hub, client, name
        self.base = f"/user/{name}"

    async def __aenter__(self):
        lab = open_lab(self.client, self.name)  # the server's _xsrf cookie (and its OAuth login)
        assert lab.status_code == 200, (lab.status_code, str(lab.url), lab.text[-300:])
        xsrf = next(c.value for c in self.client.cookies.jar if c.name == "_xsrf" and c.path.startswith(self.base))
        self.headers = {"X-XSRFToken": xsrf}
        # path "": the kernel starts in the server's root folder (the home), as JupyterLab's do in theirs
        r = self.client.post(f"{self.base}/api/kernels", json={"name": "python3", "path": ""}, headers=self.headers)
        assert r.status_code == 201, (r.status_code, r.text)
        self.id = r.json()["id"]
        cookie = "; ".join(f"{c.name}={c.value}" for c in self.client.cookies.jar)
        url = self.hub.url.replace("http", "ws").rstrip("/") + f"{self.base}/api/kernels/{self.id}/channels"
        self.ws = await websocket_connect(HTTPRequest(url, headers={"Cookie": cookie}))
        self.session = uuid.uuid4().hex
        return self

    async def __aexit__(self, *exc):
        self.ws.close()
        self.client.delete(f"{self.base}/api/kernels/{self.id}", headers=self.headers)

    async def run(self, code: str, timeout: float = 60) -> tuple[str, float]:
        """("ok" | "error" | "died", seconds): died when the server reports the kernel restarting or dead."""
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "username": self.name, "session": self.session, "msg_type": "execute_request", "version": "5.3",
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}
        started = time.perf_counter()
        self.output = []  # the cell's stream text (stdout and stderr), for the tests that read it
        self.ws.write_message(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": "shell", "buffers": []}))
        deadline = time.monotonic() + timeout
        # The reply (shell) and the output (iopub) travel apart: the cell is done when both its
        # reply and its iopub "idle" have come, so no output that follows the reply is missed.
        status, idle = None, False
        while status is None or not idle:
            raw = await asyncio.wait_for(self.ws.read_message(), max(0.1, deadline - time.monotonic()))
            assert raw is not None, "the kernel's websocket closed"
            msg = json.loads(raw)
            kind = msg["header"]["msg_type"]
            mine = msg.get("parent_header", {}).get("msg_id") == msg_id
            if kind in ("stream", "error") and mine:
                content = msg["content"]
                self.output.append(content["text"] if kind == "stream" else f"{content['ename']}: {content['evalue']}\n")
            if kind == "status" and msg["content"].get("execution_state") in ("restarting", "dead"):
                return "died", time.perf_counter() - started
            if kind == "status" and mine and msg["content"].get("execution_state") == "idle":
                idle = True
            if kind == "execute_reply" and mine:
                status = msg["content"]["status"]
        return status, time.perf_counter() - started


async def trivial(hub, client, name) -> str:
    async with Kernel(hub, client, name) as k:
        return (await k.run("1 + 1"))[0]


# -- seats as their own Linux accounts (system-users mode, as root) ---------


@contextlib.contextmanager
def seat_accounts(first: int, last: int, seats, students_root: str, check_survivors: bool = False):
    """The accounts of ``seats``, made as ``wod users create`` makes them (homes under ``students_root``).

    On leaving, what their processes left running is killed (looping: it may fork) and only the
    accounts made here are removed; with ``check_survivors`` a process that outlived its test fails.
    """
    wod = Wod(student_min=first, student_max=last, students_root=str(students_root))
    wanted = [a for n in seats for a in accounts_for(wod, n, n)]
    made, problems = etc_accounts.plan(wanted)
    assert not problems, problems
    etc_accounts.add(made)
    try:
        yield
    finally:
        survivors = {n: left for n in seats if (left := end_processes(UID_BASE + n))}
        etc_accounts.remove({a.name for a in made})
    assert not (check_survivors and survivors), f"processes of these seats outlived the tests: {survivors}"


def students_folder(prefix: str) -> Path:
    """A students' folder their accounts can reach (pytest's tmp folders are 0700): removed by :func:`system_users_hub`."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o711)
    return folder


@contextlib.contextmanager
def system_users_hub(module_hubs, root, notebooks, first: int, last: int, students: Path, *, spawner=(), wod=None, service=None,
                     remove=()):
    """A hub in system-users mode with control groups (as root): seats ``first``..``last``, homes in ``students``.

    ``spawner``: more ``c.WodSpawner`` lines; ``wod``: more ``c.Wod`` settings; ``service``: the
    service's settings (``{"WodOperations.start_server": True}``); ``remove``: more folders to
    delete at the end. The seats' parent group (``hub.cgroup_parent``, of its own) and
    ``students`` are removed on leaving.
    """
    parent = f"wod-test-{secrets.token_hex(4)}"
    cmd, env = student_python(UID_BASE + first)
    extra = [f"c.WodSpawner.cmd = {cmd!r}", f"c.WodSpawner.environment = {env!r}", *spawner, "c.WodAuthenticator.throttle_ip_failures = 0"]
    config = {"student_min": first, "student_max": last, "system_users": True, "cgroups": True, "cgroup_parent": parent,
              "students_root": str(students), **(wod or {})}
    try:
        with module_hubs(root, notebooks=[notebooks], authenticator_class="wod", spawner_class="wod", wod_config=config,
                         service_config=service or {}, extra_config="\n".join(extra)) as h:
            h.cgroup_parent = parent
            h.students_root = students
            yield h
    finally:
        cgroups.detect("/sys/fs/cgroup", parent).clear()
        subprocess.run(["rm", "-rf", str(students), *map(str, remove)], check=False)


def memory_regions(pid: int):
    """The contents of each readable memory region of process ``pid`` (read as root), one ``bytes`` at a time."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if "r" not in perms or line.rstrip().endswith(("[vvar]", "[vsyscall]", "[vvar_vclock]")):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                yield mem.read(end - start)
            except OSError:
                continue


def memory_holds(pid: int, needles: list[bytes]) -> list[bytes]:
    """Which of ``needles`` appear anywhere in the readable memory of process ``pid`` (read as root)."""
    found = set()
    for data in memory_regions(pid):
        found.update(n for n in needles if n in data)
    return sorted(found)
