"""Seats of a real hub as a student uses them: booked over REST, logged in, a server started, a kernel driven.

Shared by the fair-share tests and the benches that size a seat
(``bench/seat_size.py``, ``bench/cpu_share.py``).
"""

import asyncio
import datetime
import json
import os
import time
import uuid
from pathlib import Path

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests.test_e2e_hub import logged_in, open_lab, spawn


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
        while True:
            raw = await asyncio.wait_for(self.ws.read_message(), max(0.1, deadline - time.monotonic()))
            assert raw is not None, "the kernel's websocket closed"
            msg = json.loads(raw)
            kind = msg["header"]["msg_type"]
            if kind in ("stream", "error") and msg.get("parent_header", {}).get("msg_id") == msg_id:
                content = msg["content"]
                self.output.append(content["text"] if kind == "stream" else f"{content['ename']}: {content['evalue']}\n")
            if kind == "status" and msg["content"].get("execution_state") in ("restarting", "dead"):
                return "died", time.perf_counter() - started
            if kind == "execute_reply" and msg.get("parent_header", {}).get("msg_id") == msg_id:
                return msg["content"]["status"], time.perf_counter() - started


async def trivial(hub, client, name) -> str:
    async with Kernel(hub, client, name) as k:
        return (await k.run("1 + 1"))[0]
