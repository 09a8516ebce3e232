"""CPU share: seat B's trivial cell while seat A's kernel spins on every core, against B's idle latency.

A real JupyterHub with control groups on (needs root, as CI runs) and
``c.WodSpawner.cpu_limit = 1``. Seat B runs ``1 + 1`` in its kernel, over
the websocket a browser uses, N times:

1. idle: nothing else runs (the floor, measured in this run);
2. limited: seat A's kernel started one busy loop per core (here 2), its
   seat held to 1 core by its control group;
3. no quota: the same spin with A's CPU quota lifted (written ``-1`` into
   its group): the two seats' groups still share the CPU fairly;
4. no control group: both seats' processes moved back to the root cpu
   group, as on a host without this feature (the floor of fairness).

and the same for a cell that computes for ~0.1 s.

Prints the median and p90 latency of each and the ratio limited/idle against
the goal (2×: a busy neighbour at most doubles a trivial cell). Exits 0;
prints a note and exits 0 without root. The machine may be shared: the three
phases run in the same minute, so they see the same background.
"""

import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.hubutil import RealHub, write_workshop
from tests.seatutil import Kernel, seat
from wod_jupyterhub.seats import cgroups

GOAL = 2.0
CELLS = 40
# A cell that computes for ~0.1 s: where a neighbour's spin shows when nothing limits it.
WORK = "sum(range(3_000_000))"
WORK_CELLS = 10
WORKSHOP = "WKSHP-CpuShare"
SPIN = (
    "import os, subprocess, sys\n"
    "spinners = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(os.cpu_count())]"
)


async def latencies(kernel: Kernel, n: int, code: str = "1 + 1") -> list[float]:
    await kernel.run(code)  # warm
    out = []
    for _ in range(n):
        status, seconds = await kernel.run(code)
        assert status == "ok", status
        out.append(seconds * 1000)
        await asyncio.sleep(0.05)
    return out


async def measure(kb: Kernel) -> tuple[list[float], list[float]]:
    return await latencies(kb, CELLS), await latencies(kb, WORK_CELLS, WORK)


def p90(values):
    return sorted(values)[int(0.9 * (len(values) - 1))]


async def scenario(hub, h, ca, cb) -> dict:
    results = {}
    async with Kernel(hub, ca, "student1") as ka, Kernel(hub, cb, "student2") as kb:
        results["idle"] = await measure(kb)
        assert (await ka.run(SPIN))[0] == "ok"
        await asyncio.sleep(2)  # the spinners use their quota before B measures
        results["limited"] = await measure(kb)
        quota = h.dirs["cpu"] / "student1" / "cpu.cfs_quota_us"
        quota.write_text("-1")
        await asyncio.sleep(2)
        results["unlimited"] = await measure(kb)
        quota.write_text("100000")
        # No control group at all: both seats' processes back in the root cpu group, as without this feature.
        top = h.dirs["cpu"].parent
        members = {n: h.seat(f"student{n}").pids() for n in (1, 2)}
        for pids in members.values():
            for pid in pids:
                (top / "cgroup.procs").write_text(str(pid))
        await asyncio.sleep(2)
        results["none"] = await measure(kb)
        for n, pids in members.items():
            for pid in pids:
                try:
                    (h.dirs["cpu"] / f"student{n}" / "cgroup.procs").write_text(str(pid))
                except ProcessLookupError:
                    pass
        await ka.run("[p.kill() for p in spinners]")
    return results


def main() -> int:
    if os.geteuid() != 0:
        print("cpu_share: needs root (control groups); skipped")
        return 0
    parent = f"wod-bench-{secrets.token_hex(4)}"
    work = Path(tempfile.mkdtemp(prefix="wod-cpu-share-"))
    write_workshop(work / "notebooks", WORKSHOP, (1, 2))
    h = None
    try:
        with RealHub(
            work / "hub", notebooks=[work / "notebooks"], authenticator_class="wod", spawner_class="wod",
            wod_config={"cgroups": True, "cgroup_parent": parent, "student_max": 2},
            extra_config="c.WodAuthenticator.throttle_ip_failures = 0\nc.WodSpawner.cpu_limit = 1.0",
        ) as hub:
            h = cgroups.shared("/sys/fs/cgroup", parent)
            if not h.enforces("cpu"):
                print("cpu_share: no cpu control group here:", h.warning())
                return 0
            ca, _ = seat(hub, 1, WORKSHOP)
            cb, _ = seat(hub, 2, WORKSHOP)
            results = asyncio.run(scenario(hub, h, ca, cb))
    finally:
        if h is not None:
            h.clear()
        subprocess.run(["rm", "-rf", str(work)], check=False)

    print(f"seat B's trivial cell (1 + 1 over the kernel's websocket), {CELLS} runs each, {os.cpu_count()} cores:")
    labels = (("idle", "idle (floor)"), ("limited", "A spins, cpu_limit 1"), ("unlimited", "A spins, no quota"), ("none", "A spins, no cgroup"))
    for phase, label in labels:
        v = results[phase][0]
        print(f"  {label:<22} median {statistics.median(v):7.1f} ms   p90 {p90(v):7.1f} ms")
    ratio = statistics.median(results["limited"][0]) / statistics.median(results["idle"][0])
    none = statistics.median(results["none"][0]) / statistics.median(results["idle"][0])
    verdict = "met" if ratio <= GOAL else "NOT met"
    print(f"ratio limited/idle: {ratio:.2f}x (goal <= {GOAL:g}x: {verdict}); without any control group: {none:.2f}x")
    print(f"seat B's computing cell ({WORK}), {WORK_CELLS} runs each:")
    for phase, label in labels:
        print(f"  {label:<22} median {statistics.median(results[phase][1]):7.1f} ms")
    work = statistics.median(results["limited"][1]) / statistics.median(results["idle"][1])
    work_none = statistics.median(results["none"][1]) / statistics.median(results["idle"][1])
    print(f"ratio limited/idle: {work:.2f}x; without any control group: {work_none:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
