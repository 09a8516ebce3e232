"""Seat size: the memory and CPU of an idle seat and of a busy one, on the sample workshops, and seats per GB.

A real JupyterHub (its proxy, the wod service, WodSpawner) with control
groups on (needs root, as CI runs): each seat's server and kernel live in
the seat's group, so its memory is read where the kernel accounts it
(``memory.usage_in_bytes``: resident memory plus the page cache the seat
caused) and, per process, as PSS (shared pages split between the seats that
share them: the fair figure for "how many fit").

For each sample workshop of ``share/workshops``: CREATE a seat, log in,
start the server, then measure

- idle: the server alone, 5 s after it is ready;
- busy: with a kernel that ran every code cell of the workshop's notebooks
  (what a participant does), measured right after the last cell;
- CPU: seconds of CPU the seat used to start, over 10 s idle, and to run
  the workshop.

With the warm template (``c.WodSpawner.warm_start``, the default) a seat's
server is a fork of it: its control group holds what the seat wrote or
added, not the template's pages it only reads (charged to the template,
once per hub); PSS splits those between the template and the seats. The
template's own PSS and its CPU (its imports, once) are printed apart.

Prints the figures, MB per seat and seats per GB (idle and busy), and the
floor of the same run: the memory of one bare ``python3 -c 'import time;
time.sleep(60)'`` process, so a reader sees the seat against the
interpreter it is made of. Exits 0; prints a note and exits 0 without root.
"""

import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import process_cpu, pss, template_of
from tests.hubutil import RealHub
from tests.seatutil import Kernel, seat
from wod_jupyterhub.seats import cgroups

# What the demo configuration gives the sample workshops' templates.
VARIABLES = {"BRANDING": "Bench", "BRANDINGWOD": "Workshops-on-Demand", "BRANDINGURL": "https://example.com",
             "WODBEFQDN": "127.0.0.1", "WODBEEXTFQDN": "127.0.0.1", "JPHUB": "http://127.0.0.1"}
MB = 1024 * 1024


def measure(group: cgroups.SeatGroup) -> dict:
    pids = group.live_pids()
    usage = group.usage()
    return {
        "processes": len(pids),
        "cgroup_mb": usage.get("memory", 0) / MB,
        "pss_mb": sum(pss(p) for p in pids) / MB,
        "cpu_s": sum(process_cpu(p, children=True) for p in pids),
    }


def floor_mb() -> float:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(1)
    try:
        return pss(p.pid) / MB
    finally:
        p.kill()
        p.wait()


def code_cells(folder: Path) -> list[str]:
    cells = []
    for nb in sorted(folder.glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            if cell["cell_type"] == "code" and source.strip():
                cells.append(source)
    return cells


async def busy(hub, client, name, cells) -> None:
    async with Kernel(hub, client, name) as k:
        for source in cells:
            await k.run(source)
        # measured while the kernel is still there, as a participant leaves it
        hub.busy = measure(hub.group(name))


def main() -> int:
    if os.geteuid() != 0:
        print("seat_size: needs root (control groups); skipped")
        return 0
    parent = f"wod-bench-{secrets.token_hex(4)}"
    work = Path(tempfile.mkdtemp(prefix="wod-seat-size-"))
    rows = []
    try:
        with RealHub(
            work / "hub", authenticator_class="wod", spawner_class="wod",
            wod_config={"cgroups": True, "cgroup_parent": parent, "student_max": 40, "variables": VARIABLES},
            extra_config="c.WodAuthenticator.throttle_ip_failures = 0",
        ) as hub:
            h = cgroups.shared("/sys/fs/cgroup", parent)
            if not h.available:
                print("seat_size: no usable control groups here:", h.warning())
                return 0
            hub.group = lambda name: h.seat(name)
            hub.template = None
            for folder, n in (("WKSHP-PythonBasics", 1), ("WKSHP-StdlibData", 21)):
                name = f"student{n}"
                client, _customer = seat(hub, n, folder)
                g = h.seat(name)
                started = measure(g)
                hub.template = hub.template or next(filter(None, map(template_of, g.live_pids())), None)
                time.sleep(5)
                idle = measure(g)
                time.sleep(10)
                idle_cpu = measure(g)["cpu_s"] - idle["cpu_s"]
                cells = code_cells(hub.students_root / name / folder)
                asyncio.run(busy(hub, client, name, cells))
                rows.append((folder, len(cells), started, idle, idle_cpu, hub.busy))
            template = (process_cpu(hub.template), pss(hub.template) / MB) if hub.template else None
    finally:
        cgroups.shared("/sys/fs/cgroup", parent).clear()
        subprocess.run(["rm", "-rf", str(work)], check=False)

    floor = floor_mb()
    print(f"floor: one bare {Path(sys.executable).name} process: {floor:.1f} MB PSS")
    if template:
        print(f"warm template (once per hub): {template[1]:.1f} MB PSS, {template[0]:.2f} s CPU (its imports)")
    else:
        print("servers started as new processes (no warm template)")
    print(f"{'workshop':<22}{'state':<7}{'procs':>6}{'PSS MB':>9}{'cgroup MB':>11}{'CPU s':>8}")
    for folder, ncells, started, idle, idle_cpu, b in rows:
        print(
            f"{folder:<22}{'idle':<7}{idle['processes']:>6}{idle['pss_mb']:>9.1f}{idle['cgroup_mb']:>11.1f}{started['cpu_s']:>8.2f}"
            f"  (start; {idle_cpu:.2f} s over 10 s idle)"
        )
        print(f"{'':<22}{'busy':<7}{b['processes']:>6}{b['pss_mb']:>9.1f}{b['cgroup_mb']:>11.1f}{b['cpu_s'] - idle['cpu_s']:>8.2f}  ({ncells} cells run)")
    idle_mb = max(r[3]["cgroup_mb"] for r in rows)
    busy_mb = max(r[5]["cgroup_mb"] for r in rows)
    print(f"seat size (largest, cgroup): idle {idle_mb:.0f} MB = {idle_mb / floor:.1f}x the floor, busy {busy_mb:.0f} MB = {busy_mb / floor:.1f}x the floor")
    print(f"seats per GB: {1024 / idle_mb:.1f} idle, {1024 / busy_mb:.1f} busy")
    for gb in (8, 16, 32):
        # 1 GB kept for the system, the hub, the proxy and the service
        print(f"  a {gb} GB machine: ~{int((gb - 1) * 1024 / busy_mb)} busy seats ({int((gb - 1) * 1024 / idle_mb)} idle)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
