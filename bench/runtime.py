"""Runtime: bursts of seats on the Docker runtime beside the local one, in the same run; a container seat's memory.

Two real hubs, one after the other on the same machine: the local runtime
(``WodSpawner``, seats as processes of this machine, single-user mode) and
the Docker runtime (``WodDockerSpawner``, a container per seat, as its uid,
with its limits, on the bench's own dockerd of ``tests/dockerutil.py``).
For each, a burst of ``--seats`` (50) seats:

- CREATE: every seat booked through the service's API and its server
  started through the hub's API, all at once; the wall time until the last
  server is ready;
- CLEANUP: every seat's CLEANUP at once (the hub's stop, the completion, the
  wipe through the runtime); the wall time until the last has succeeded.

Prints each, the Docker runtime's over the local one's (the local one is
the floor, measured in the same run), the machine's load, and the memory of
one container seat idle (its server, 5 s after it is ready) and busy (a
kernel that ran every code cell of the sample workshop), as the engine's
control group of the container accounts it, beside the same for a local
seat's processes (PSS). Needs root, dockerd and the seats' image (``make
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

from bench.seat_size import code_cells, pss
from tests import dockerutil
from tests.hubutil import RealHub
from tests.seatutil import Kernel, seat

SAMPLES = dockerutil.REPO / "share" / "workshops"
WORKSHOP = "WKSHP-PythonBasics"
MB = 1024 * 1024
UID_BASE = 10000
FIRST = 1


def notebooks(work: Path, count: int) -> Path:
    """The sample workshop with its range widened to the burst."""
    root = work / "notebooks"
    root.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(SAMPLES / WORKSHOP), str(root / WORKSHOP)], check=True)
    meta = root / WORKSHOP / "wod.yml"
    lines = [f"range: [{FIRST},{FIRST + count - 1}]" if line.startswith("range:") else line for line in meta.read_text().splitlines()]
    meta.write_text("\n".join(lines) + "\n")
    return root


def hub_for(kind: str, work: Path, count: int, engine=None) -> RealHub:
    students = Path(tempfile.mkdtemp(prefix=f"wod-bench-{kind}-"))
    students.chmod(0o711)
    wod = {"student_min": FIRST, "student_max": FIRST + count - 1, "students_root": str(students)}
    extra = ["c.Spawner.start_timeout = 300", "c.Spawner.http_timeout = 300", "c.JupyterHub.concurrent_spawn_limit = 0"]
    if kind == "docker":
        wod.update(system_users=True, cgroups=False, uid_base=UID_BASE, runtime="docker")
        extra += dockerutil.hub_config(engine)
        spawner = "wod-docker"
    else:
        spawner = "wod"
    hub = RealHub(work / kind, notebooks=[notebooks(work / kind, count)], authenticator_class="wod", spawner_class=spawner,
                  wod_config=wod, extra_config="\n".join(extra + ["c.WodAuthenticator.throttle_ip_failures = 0"]),
                  startup_timeout=120)
    hub.students_root = students
    return hub


def create_and_start(hub: RealHub, n: int) -> float:
    with hub.client("portal", via_proxy=True) as c:
        r = c.post("api/create?wait=300", json={"student": n, "customer": f"c{n}", "email": f"c{n}@example.com", "workshop": WORKSHOP})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text[:500]
    name = f"student{n}"
    # A burst of container starts keeps the hub's answer waiting well past the test helper's 30 s.
    r = httpx.post(f"{hub.api_url}/users/{name}/server", headers={"Authorization": f"token {hub.admin_token}"}, timeout=300)
    assert r.status_code in (201, 202), r.text
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        server = hub.hub_api("GET", f"/users/{name}").json().get("servers", {}).get("")
        if server and server.get("ready"):
            return time.monotonic()
        # Fifty pollers: once a second each, so the polls do not slow the hub they measure.
        time.sleep(1)
    raise RuntimeError(f"{name}'s server was not ready in 300 s")


def cleanup(hub: RealHub, n: int) -> float:
    with hub.client("portal", via_proxy=True) as c:
        r = c.post("api/cleanup?wait=300", json={"student": n, "customer": f"c{n}"})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text[:500]
    return time.monotonic()


def burst(fn, hub, count) -> float:
    started = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        ends = list(pool.map(lambda n: fn(hub, n), range(FIRST, FIRST + count)))
    return max(ends) - started


def container_memory(engine, n) -> float:
    """The container's memory as the engine accounts it (its control group, through the engine's stats)."""
    import docker

    (cid,) = engine.containers(f"label=wod.seat=student{n}")
    stats = docker.DockerClient(base_url=engine.host).containers.get(cid).stats(stream=False)
    return stats["memory_stats"]["usage"] / MB


def local_memory(name) -> float:
    """PSS of the seat's server and its children (a local seat without control groups)."""
    out = subprocess.run(["pgrep", "-f", "jupyterhub.singleuser|ipykernel_launcher"], capture_output=True, text=True).stdout.split()
    total = 0
    for pid in out:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if f"JUPYTERHUB_USER={name}".encode() in env:
            total += pss(int(pid))
    return total / MB


def memory(kind, hub, engine, n) -> tuple[float, float]:
    name = f"student{n}"
    client, _customer = seat(hub, n, WORKSHOP)
    read = (lambda: container_memory(engine, n)) if kind == "docker" else (lambda: local_memory(name))
    time.sleep(5)
    idle = read()
    cells = code_cells(hub.students_root / name / WORKSHOP)

    async def busy():
        async with Kernel(hub, client, name) as k:
            for source in cells:
                await k.run(source)
            return read()

    return idle, asyncio.run(busy())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seats", type=int, default=50)
    args = parser.parse_args()
    reason = dockerutil.missing()
    if reason:
        print(f"runtime: {reason}; skipped")
        return 0
    work = Path(tempfile.mkdtemp(prefix="wod-bench-runtime-"))
    engine = dockerutil.Dockerd().start()
    figures = {}
    try:
        for kind in ("local", "docker"):
            hub = hub_for(kind, work, args.seats + 1, engine)
            try:
                with hub:
                    load = os.getloadavg()[0]
                    create = burst(create_and_start, hub, args.seats)
                    clean = burst(cleanup, hub, args.seats)
                    print(f"{kind:<7} CREATE+start of {args.seats}: {create:6.1f} s   CLEANUP of {args.seats}: {clean:6.1f} s", flush=True)
                    idle, busy = memory(kind, hub, engine, FIRST + args.seats)
                    figures[kind] = {"create": create, "cleanup": clean, "idle": idle, "busy": busy, "load": load}
                    print(f"{kind:<7} seat memory idle {idle:5.0f} MB, busy {busy:5.0f} MB   (load at the start {load:.1f})", flush=True)
            finally:
                subprocess.run(["rm", "-rf", str(hub.students_root)], check=False)
    finally:
        engine.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    local, docker = figures["local"], figures["docker"]
    print(f"docker / local: CREATE+start {docker['create'] / local['create']:.2f}x, CLEANUP {docker['cleanup'] / local['cleanup']:.2f}x, "
          f"memory idle {docker['idle'] / local['idle']:.2f}x, busy {docker['busy'] / local['busy']:.2f}x")
    print(f"container seats per GB: ~{1024 / docker['idle']:.1f} idle, ~{1024 / docker['busy']:.1f} busy; "
          f"local: ~{1024 / local['idle']:.1f} idle, ~{1024 / local['busy']:.1f} busy (load {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
