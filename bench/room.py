"""A room arrives at once: N participants (100) from the login form to a ready JupyterLab, beside one alone.

A real JupyterHub (its proxy, the wod service, WodAuthenticator, WodSpawner;
the demo's ``start_timeout`` 120 s and ``http_timeout`` 60 s) and a bench
workshop with N + 2 seats, booked over the REST API (CREATE) as a portal
does, minutes before the class. Then each participant does what a browser
does: GET the login form, POST it, follow where the login sends it (a
running server, or ``/hub/spawn``) and, until the server's own lab page
answers 200, look at ``/user/<name>/lab`` about once a second (as the
spawn-pending page does), following every redirect (the OAuth hand-shake
with the hub, when the login did not sign in to the server). Each participant is its own client with
its own cookies; the clients are made before the clock starts.

Printed, all from the same run:

- the CPU of one cold start: the server process's CPU (user + system) from
  its start until the hub calls it ready, for a seat started alone; with
  the warm template (``c.WodSpawner.warm_start``) the server is a fork of it
  and its CPU counts from the fork: the template's own (its imports, once
  per hub) and its memory are printed beside it;
- the servers started ahead (``c.WodOperations.start_server``): how long
  until all were ready after the bookings, and the memory each holds, as
  PSS (``/proc/<pid>/smaps_rollup``: shared pages split between the seats
  sharing them), per seat, over the server and its children;
- a lone participant's time from the form to the ready lab;
- the room: p50, p95 and max from the form to the ready lab, and the
  failures (with what the participant saw);
- where each participant's time went, step by step (p50, p95, max over the
  room): the form, the login, ``/hub/spawn``, the server's first answer
  (its redirect to the lab), the lab's redirect to the hub, the hub's OAuth ``authorize``, the server's ``oauth_callback``
  (which asks the hub for the token and the user), the lab page itself;
  the redirects are followed one by one, as a browser does;
- the CPU used meanwhile by the hub, its proxy, the service, the servers
  and the bench itself (its clients are aiohttp's: a browser's CPU is not
  the hub's machine's, and those clients cost a fraction of httpx's);
- the hub meanwhile: an unrelated request (a participant already working:
  the hub's home page and its own server's status, in turn, every 0.1 s)
  p50, p99 and max during the room's arrival.

The goals (p95 <= 3 s with 0 failures; a cold start <= 1 s of CPU; an idle
seat <= 55 MB PSS; the unrelated request p99 < 1 s) are printed met or
missed. On a shared machine the wall times follow its load, printed too;
the bench's own clients run on the same CPUs as the hub and the servers.
``--ahead off`` measures without starting ahead (every participant's
sign-in starts its server). Needs root for nothing; as root the servers run
as root (``--allow-root``), as in the tests.
"""

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
from yarl import URL

from bench import process_cpu, pss, server_pid, template_of, tree
from tests.hubutil import RealHub, write_workshop
from wod_jupyterhub.service.operations.settings import WodOperations

WORKSHOP = "WKSHP-Room"
GOALS = {"p95": 3.0, "cold_cpu": 1.0, "pss": 55.0, "probe_p99": 1.0}
MB = 1024 * 1024


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))] if values else float("nan")


def cpu_by_part(hub, servers: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by the hub, its proxy, the service, the given servers (with their children) and this bench."""
    out = {"hub": process_cpu(hub.proc.pid), "proxy": 0.0, "service": 0.0, "servers": 0.0, "bench": time.process_time()}
    for pid in tree(hub.proc.pid)[1:]:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"wod_jupyterhub.service" in cmd:
            out["service"] += process_cpu(pid)
        elif b"configurable-http-proxy" in cmd or cmd.split(b"\0")[0].endswith(b"node"):
            out["proxy"] += process_cpu(pid)
    out["servers"] = sum(process_cpu(p) for pid in servers.values() for p in tree(pid))
    return out


def ready_servers(hub) -> dict[str, int]:
    """Every ready server of the hub: user name -> pid."""
    out = {}
    for user in hub.hub_api("GET", "/users?limit=1000").json():
        server = (user.get("servers") or {}).get("")
        if server and server.get("ready"):
            pid = (server.get("state") or {}).get("pid")
            if pid is None:  # the list may leave the state out: ask for the user
                pid = server_pid(hub, user["name"])
            if pid:
                out[user["name"]] = pid
    return out


async def book(client, hub, n):
    r = await client.post(
        hub.service_url + "api/create?wait=120",
        headers={"Authorization": f"token {hub.portal_token}"},
        json={"student": n, "customer": f"room-{n}", "email": f"r{n}@example.org", "workshop": WORKSHOP},
    )
    op = r.json()
    if r.status_code != 200 or op.get("status") != "succeeded":
        raise RuntimeError(f"CREATE student{n}: {r.status_code} {op.get('error') or r.text[:300]}")
    return op["result"]["password"]


async def book_all(hub, seats) -> dict[int, str]:
    """The seats booked, ten at a time (the booking is not what is measured); their passwords."""
    out = {}
    async with httpx.AsyncClient(timeout=180) as client:
        for i in range(0, len(seats), 10):
            batch = seats[i:i + 10]
            out.update(zip(batch, await asyncio.gather(*(book(client, hub, n) for n in batch))))
    return out


class Page:
    """What a client kept of one answer: its status, headers, text and address."""

    def __init__(self, status_code: int, headers, text: str, url: URL):
        self.status_code, self.headers, self.text, self.url = status_code, headers, text, url


class Browser:
    """A client with its own cookies that follows no redirect itself (aiohttp: a browser's CPU is not the hub's,
    and aiohttp's per request is a fraction of httpx's on the cores the hub shares with the bench)."""

    def __init__(self, base_url: str, timeout: float):
        self.base = URL(base_url)
        self.session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # cookies of an IP address (127.0.0.1)
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def request(self, method: str, path, data=None) -> Page:
        url = self.base.join(URL(path) if isinstance(path, str) else path)
        async with self.session.request(method, url, data=data, allow_redirects=False) as r:
            return Page(r.status, r.headers, await r.text(), r.url)

    async def get(self, path) -> Page:
        return await self.request("GET", path)

    async def post(self, path: str, data) -> Page:
        return await self.request("POST", path, data)

    async def aclose(self) -> None:
        await self.session.close()


class Participant:
    """One browser: its own cookies; from the login form to the server's own lab page."""

    def __init__(self, hub, n, password, timeout):
        self.name, self.password, self.timeout = f"student{n}", password, timeout
        self.client = Browser(hub.url, timeout)
        self.seen = ""
        self.steps: dict[str, float] = {}

    async def arrive(self) -> float:
        """Seconds from the login form to the ready lab; raises with what the participant saw.

        Each request's time is added to ``self.steps`` under what it was
        (the redirects followed one by one, as a browser does).
        """
        c, name = self.client, self.name
        t0 = time.perf_counter()
        page = await self.timed("form", c.get("/hub/login"))
        xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text)
        if page.status_code != 200 or not xsrf:
            raise RuntimeError(f"login form: {page.status_code}")
        r = await self.timed("login", c.post("/hub/login", data={"username": name, "password": self.password, "_xsrf": xsrf.group(1)}))
        if r.status_code != 302:
            raise RuntimeError(f"login: {r.status_code}")
        # Where the login sends the browser: the running server, or /hub/spawn.
        r = await self.visit(r.url.join(URL(r.headers["location"], encoded=True)))
        lab = f"/user/{name}/lab"
        while True:
            if r.status_code == 200 and r.url.path.startswith(lab):
                return time.perf_counter() - t0
            self.seen = f"{r.status_code} {r.url.path}"
            if r.status_code >= 500 or "Spawn failed" in r.text or "failed to start" in r.text:
                raise RuntimeError(f"{self.seen}: " + " ".join(re.sub(r"<[^>]+>", " ", r.text).split())[-200:])
            if time.perf_counter() - t0 > self.timeout:
                raise RuntimeError(f"no lab after {self.timeout:.0f} s (last {self.seen})")
            await asyncio.sleep(1)
            r = await self.visit(lab)

    async def timed(self, step: str, request):
        t = time.perf_counter()
        r = await request
        self.took(step, t)
        return r

    def took(self, step: str, since: float) -> None:
        self.steps[step] = self.steps.get(step, 0.0) + time.perf_counter() - since

    async def visit(self, path):
        """GET ``path`` and the redirects after it, each hop timed under what answered it."""
        for _ in range(10):
            t = time.perf_counter()
            r = await self.client.get(path)
            self.took(self.step_of(r), t)
            if r.status_code not in (301, 302, 303, 307) or "location" not in r.headers:
                return r
            path = r.url.join(URL(r.headers["location"], encoded=True))
        return r

    def step_of(self, r) -> str:
        """What answered ``r``: the hub's OAuth authorize, the server's callback, the lab (its redirect to
        the hub, or the page itself), the hub's pending page."""
        path, server = r.url.path, f"/user/{self.name}/"
        if path.endswith("/oauth2/authorize"):
            return "authorize"
        if path.endswith("/oauth_callback"):
            return "oauth_callback"
        if path == server:
            return "server"
        if path.startswith(server + "lab"):
            return "lab page" if r.status_code == 200 else ("lab -> hub" if r.status_code < 400 else "lab (error)")
        if path.startswith("/hub/spawn") and "spawn-pending" not in path:
            return "spawn"
        return "pending" if "spawn-pending" in path or path.startswith("/hub/") else "other"


async def probe(client, name, stop: asyncio.Event, out: list):
    """An unrelated participant at work: the hub's home page and its own server, in turn, every 0.1 s."""
    paths = ["/hub/home", f"/user/{name}/api/status"]
    i = 0
    while not stop.is_set():
        t = time.perf_counter()
        r = await client.get(paths[i % 2])
        out.append((time.perf_counter() - t, paths[i % 2], r.status_code))
        i += 1
        await asyncio.sleep(0.1)


async def room(hub, passwords, lone_n, timeout, servers):
    lone = Participant(hub, lone_n, passwords.pop(lone_n), timeout)
    lone_s = await lone.arrive()
    people = [Participant(hub, n, pw, timeout) for n, pw in sorted(passwords.items())]
    stop, probes = asyncio.Event(), []
    watcher = asyncio.ensure_future(probe(lone.client, lone.name, stop, probes))
    await asyncio.sleep(1)  # the probe's first answers: the hub before the room
    cpu0 = cpu_by_part(hub, servers)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(p.arrive() for p in people), return_exceptions=True)
    wall = time.perf_counter() - t0
    cpu1 = cpu_by_part(hub, servers)
    stop.set()
    await watcher
    for p in [lone, *people]:
        await p.client.aclose()
    cpu = {part: cpu1[part] - cpu0[part] for part in cpu0}
    return lone_s, results, wall, probes, [p.steps for p in people], cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="participants arriving at once (100)")
    ap.add_argument("--ahead", choices=("default", "on", "off"), default="default",
                    help="c.WodOperations.start_server: as configured by default, or forced on or off")
    ap.add_argument("--warm", choices=("default", "on", "off"), default="default",
                    help="c.WodSpawner.warm_start: as configured by default, or forced on or off")
    ap.add_argument("--timeout", type=float, default=300, help="seconds a participant waits for the lab before giving up")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (hub and service logs)")
    args = ap.parse_args()
    # A stopped bench stops its hub, which stops the servers it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    work = Path(tempfile.mkdtemp(prefix="wod-room-"))
    cold_n, lone_n = args.n + 2, args.n + 1
    write_workshop(work / "notebooks", WORKSHOP, (1, cold_n))
    # The service's own default (on where the machine's memory budget holds a seat), or as asked.
    ahead = WodOperations().start_server if args.ahead == "default" else args.ahead == "on"
    service = {"WodOperations.start_server": ahead}
    warm = "" if args.warm == "default" else f"\nc.WodSpawner.warm_start = {args.warm == 'on'}"
    hub = RealHub(
        work / "hub", notebooks=[work / "notebooks"], authenticator_class="wod", spawner_class="wod",
        wod_config={"student_min": 1, "student_max": cold_n},
        service_config=service,
        # The demo's timeouts (jupyterhub_config.py); no throttle on the room's one address.
        extra_config="c.Spawner.start_timeout = 120\nc.Spawner.http_timeout = 60\nc.WodAuthenticator.throttle_ip_failures = 0" + warm,
    )
    fig = {}
    try:
        with hub:
            # One cold start, alone: the server's CPU from its start until ready.
            asyncio.run(book_all(hub, [cold_n]))
            def has_server():
                return hub.hub_api("GET", f"/users/student{cold_n}").json().get("servers")

            if not _wait(has_server, 5):  # not started ahead: start it
                hub.hub_api("POST", f"/users/student{cold_n}/server").raise_for_status()
            pid = _wait(lambda: server_pid(hub, f"student{cold_n}"), 120)
            fig["cold_cpu"] = process_cpu(pid, children=True)
            fig["cold_pss"] = sum(pss(p) for p in tree(pid)) / MB
            fig["template"] = template_of(pid)
            if fig["template"]:
                fig["template_cpu"] = process_cpu(fig["template"])
            hub.hub_api("DELETE", f"/users/student{cold_n}/server")
            _wait(lambda: not server_pid(hub, f"student{cold_n}") or None, 60)

            t0 = time.perf_counter()
            passwords = asyncio.run(book_all(hub, list(range(1, lone_n + 1))))
            fig["booked"] = time.perf_counter() - t0
            _wait(lambda: len(ready_servers(hub)) >= lone_n, 600 if ahead else 0)
            fig["ahead_ready"] = time.perf_counter() - t0
            time.sleep(5)  # idle, as a seat waits for its participant
            started = ready_servers(hub)
            fig["ahead"] = len(started)
            if started:
                per_seat = [sum(pss(p) for p in tree(pid)) / MB for pid in started.values()]
                fig["pss"] = statistics.median(per_seat)
                fig["pss_total"] = sum(per_seat)
                fig["ahead_cpu"] = statistics.median(process_cpu(pid, children=True) for pid in started.values())
            if fig["template"]:
                fig["template_pss"] = pss(fig["template"]) / MB
            fig["load_before"] = os.getloadavg()[0]
            lone_s, results, wall, probes, steps, cpu = asyncio.run(room(hub, passwords, lone_n, args.timeout, started))
            fig["load_after"] = os.getloadavg()[0]
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    times = [r for r in results if isinstance(r, float)]
    failures = [r for r in results if not isinstance(r, float)]
    during = [d for d, _, status in probes]
    probe_errors = sum(1 for *_, status in probes if status != 200)
    print(f"room: {args.n} participants at once, form -> ready lab; start ahead "
          f"{'on' if ahead else 'off'}{' (the default here)' if args.ahead == 'default' else ''}; {os.cpu_count()} CPUs, "
          f"load {fig['load_before']:.1f} before the room, {fig['load_after']:.1f} after")
    print(f"  cold start      : {fig['cold_cpu']:.2f} s of the server's CPU until ready; PSS {fig['cold_pss']:.1f} MB alone"
          + ("" if fig["template"] else " (started as a new process)"))
    if fig["template"]:
        print(f"  warm template   : {fig['template_cpu']:.2f} s of CPU once (its imports); PSS {fig.get('template_pss', 0):.1f} MB "
              "(its share of the pages it shares with the seats)")
    if fig.get("ahead"):
        print(f"  started ahead   : {fig['ahead']} servers ready {fig['ahead_ready']:.1f} s after the bookings began "
              f"(booking {fig['booked']:.1f} s); each {fig['ahead_cpu']:.2f} s CPU (median)")
        print(f"  idle seat PSS   : {fig['pss']:.1f} MB per seat (median; server and children), {fig['pss_total'] / 1024:.2f} GB for all")
    else:
        print("  started ahead   : none")
    print(f"  lone participant: {lone_s:.2f} s")
    if times:
        print(f"  room            : p50 {pct(times, 50):.2f} s   p95 {pct(times, 95):.2f} s   max {max(times):.2f} s   "
              f"(all {wall:.1f} s); {len(failures)} failed")
    else:
        print(f"  room            : all {len(failures)} failed")
    for f in failures[:5]:
        print(f"    e.g. {f}")
    if times:
        print("  each step's time per participant (all its requests of that step; p50 / p95 / max):")
        for step in ("form", "login", "spawn", "server", "pending", "lab -> hub", "authorize", "oauth_callback", "lab page", "lab (error)", "other"):
            took = [s.get(step, 0.0) for s in steps]
            if any(took):
                print(f"    {step:<15} {pct(took, 50):6.2f} s {pct(took, 95):6.2f} s {max(took):6.2f} s")
        print(f"  CPU during the room ({wall:.1f} s, {os.cpu_count()} CPUs): "
              + ", ".join(f"{part} {cpu[part]:.1f} s" for part in ("hub", "proxy", "service", "servers", "bench"))
              + f" (the bench: its {args.n} clients and the unrelated request)")
    print(f"  unrelated request during the room: p50 {pct(during, 50) * 1000:.0f} ms   p99 {pct(during, 99) * 1000:.0f} ms   "
          f"max {max(during) * 1000:.0f} ms  ({len(during)} requests, {probe_errors} not 200)")
    checks = [
        (f"room p95 <= {GOALS['p95']} s, 0 failures", bool(times) and not failures and pct(times, 95) <= GOALS["p95"]),
        (f"cold start <= {GOALS['cold_cpu']} s CPU", fig["cold_cpu"] <= GOALS["cold_cpu"]),
        (f"idle seat <= {GOALS['pss']} MB PSS", fig.get("pss", fig["cold_pss"]) <= GOALS["pss"]),
        (f"unrelated request p99 < {GOALS['probe_p99']} s", pct(during, 99) < GOALS["probe_p99"] and not probe_errors),
    ]
    for what, ok in checks:
        print(f"  {what}: {'met' if ok else 'MISSED'}")
    return 0


def _wait(fn, timeout, every=0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(every)


if __name__ == "__main__":
    sys.exit(main())
