"""Runtime: bursts of seats on the Docker runtime beside the local one, in the same run; a seat's memory on each.

Two real hubs, one after the other on the same machine: the local runtime
(``WodSpawner``, seats as processes of this machine, single-user mode) and
the Docker runtime (``WodDockerSpawner``, a container per seat, as its uid,
with the workshop's limits, on the bench's own dockerd of
``tests/dockerutil.py``). For each, a burst of ``--seats`` (50) seats:

- CREATE: every seat booked through the service's API and its server
  started through the hub's API, all at once; the wall time until the last
  server is ready;
- CLEANUP: every seat's CLEANUP at once (the hub's stop, the completion, the
  wipe through the runtime); the wall time until the last has succeeded.

Then one more seat on each: its memory idle (its server, 5 s after it is
ready) and busy (a kernel that ran every code cell of the sample workshop,
as ``bench/seat_size.py``'s busy seat), as PSS of the seat's processes on
both runtimes, and for the container also as the engine accounts it (its
control group, less the page cache it could drop: what ``docker stats``
shows).

Prints each figure, the Docker runtime's over the local one's (the local
one is the floor, measured in the same run), seats per GB, and the
machine's load. Needs root, dockerd and the seats' image (``make
seat-image``); prints why and exits 0 otherwise.
"""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench import pss, server_pid, tree
from bench.seat_size import code_cells
from tests import dockerutil
from tests.hubutil import RealHub
from tests.seatutil import Kernel, seat

SAMPLES = dockerutil.REPO / "share" / "workshops"
WORKSHOP = "WKSHP-PythonBasics"
MB = 1024 * 1024
FIRST = 1
# Fifty starts at once keep the hub's answers waiting well past the tests' timeouts.
TIMEOUT = 300


def notebooks(root: Path, count: int) -> None:
    """The sample workshop in ``root/notebooks``, its range widened to the burst."""
    folder = root / "notebooks"
    folder.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(SAMPLES / WORKSHOP), str(folder / WORKSHOP)], check=True)
    meta = folder / WORKSHOP / "wod.yml"
    lines = [f"range: [{FIRST},{FIRST + count - 1}]" if line.startswith("range:") else line for line in meta.read_text().splitlines()]
    meta.write_text("\n".join(lines) + "\n")


def create_and_start(hub: RealHub, n: int) -> float:
    with hub.client("portal", via_proxy=True, timeout=TIMEOUT) as c:
        r = c.post(f"api/create?wait={TIMEOUT}", json={"student": n, "customer": f"c{n}", "email": f"c{n}@example.com", "workshop": WORKSHOP})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text[:500]
    name = f"student{n}"
    r = httpx.post(f"{hub.api_url}/users/{name}/server", headers={"Authorization": f"token {hub.admin_token}"}, timeout=TIMEOUT)
    assert r.status_code in (201, 202), r.text
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        r = httpx.get(f"{hub.api_url}/users/{name}", headers={"Authorization": f"token {hub.admin_token}"}, timeout=TIMEOUT)
        server = r.json().get("servers", {}).get("")
        if server and server.get("ready"):
            return time.monotonic()
        # Fifty pollers: once a second each, so the polls do not slow the hub they measure.
        time.sleep(1)
    raise RuntimeError(f"{name}'s server was not ready in {TIMEOUT} s")


def cleanup(hub: RealHub, n: int) -> float:
    with hub.client("portal", via_proxy=True, timeout=TIMEOUT) as c:
        r = c.post(f"api/cleanup?wait={TIMEOUT}", json={"student": n, "customer": f"c{n}"})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text[:500]
    return time.monotonic()


def burst(fn, hub, count) -> float:
    started = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        ends = list(pool.map(lambda n: fn(hub, n), range(FIRST, FIRST + count)))
    return max(ends) - started


def container(engine, n):
    import docker

    (cid,) = engine.containers(f"label=wod.seat=student{n}")
    return docker.DockerClient(base_url=engine.host).containers.get(cid)


def container_memory(engine, n) -> dict:
    """The container's processes' PSS, and its memory as the engine accounts it (less the page cache it could drop)."""
    c = container(engine, n)
    top = c.top(ps_args="-o pid")
    pids = [int(row[0]) for row in top["Processes"]]
    stats = c.stats(stream=False)["memory_stats"]
    inactive = stats.get("stats", {}).get("total_inactive_file", stats.get("stats", {}).get("inactive_file", 0))
    return {"pss": sum(pss(p) for p in pids) / MB, "engine": (stats["usage"] - inactive) / MB}


def local_memory(hub, name) -> dict:
    """PSS of the seat's server and its children (its pid as the hub's spawner recorded it)."""
    pid = server_pid(hub, name)
    return {"pss": sum(pss(p) for p in tree(pid)) / MB if pid else 0.0}


def memory(kind, hub, engine, n) -> tuple[dict, dict]:
    name = f"student{n}"
    client, _customer = seat(hub, n, WORKSHOP)
    read = (lambda: container_memory(engine, n)) if kind == "docker" else (lambda: local_memory(hub, name))
    time.sleep(5)
    idle = read()
    cells = code_cells(hub.students_root / name / WORKSHOP)

    async def busy():
        async with Kernel(hub, client, name) as k:
            for source in cells:
                await k.run(source)
            # measured while the kernel is still there, as a participant leaves it
            return read()

    return idle, asyncio.run(busy())


def run(kind: str, work: Path, count: int, engine) -> dict:
    root = work / kind
    notebooks(root, count + 1)
    extra = [f"c.Spawner.start_timeout = {TIMEOUT}", f"c.Spawner.http_timeout = {TIMEOUT}", "c.JupyterHub.concurrent_spawn_limit = 0"]
    with dockerutil.seat_hub(RealHub, root, engine, kind, (FIRST, FIRST + count), extra=extra) as hub:
        load = os.getloadavg()[0]
        create = burst(create_and_start, hub, count)
        print(f"{kind:<7} CREATE+start of {count}: {create:6.1f} s ({create / count:.2f} s a seat; load {load:.1f})", flush=True)
        clean = burst(cleanup, hub, count)
        print(f"{kind:<7} CLEANUP of {count}:      {clean:6.1f} s ({clean / count:.2f} s a seat; load {os.getloadavg()[0]:.1f})", flush=True)
        idle, busy = memory(kind, hub, engine, FIRST + count)
        engine_view = f"; as the engine accounts it: idle {idle['engine']:.0f} MB, busy {busy['engine']:.0f} MB" if "engine" in idle else ""
        print(f"{kind:<7} a seat's memory (PSS): idle {idle['pss']:.0f} MB, busy {busy['pss']:.0f} MB{engine_view}", flush=True)
    return {"create": create, "cleanup": clean, "idle": idle, "busy": busy}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seats", type=int, default=50)
    args = parser.parse_args()
    reason = dockerutil.missing()
    if reason:
        print(f"runtime: {reason}; skipped")
        return 0
    print(f"load at the start: {os.getloadavg()[0]:.1f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="wod-bench-runtime-"))
    engine = dockerutil.Dockerd().start()
    try:
        local = run("local", work, args.seats, engine)
        docker = run("docker", work, args.seats, engine)
    finally:
        engine.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    print(f"docker / local: CREATE+start {docker['create'] / local['create']:.2f}x, CLEANUP {docker['cleanup'] / local['cleanup']:.2f}x, "
          f"memory (PSS) idle {docker['idle']['pss'] / local['idle']['pss']:.2f}x, busy {docker['busy']['pss'] / local['busy']['pss']:.2f}x")
    print(f"seats per GB (PSS): local ~{1024 / local['idle']['pss']:.1f} idle, ~{1024 / local['busy']['pss']:.1f} busy; "
          f"docker ~{1024 / docker['idle']['pss']:.1f} idle, ~{1024 / docker['busy']['pss']:.1f} busy "
          f"(~{1024 / docker['busy']['engine']:.1f} busy as the engine accounts it); load at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
