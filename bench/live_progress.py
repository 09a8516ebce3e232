"""The live progress of 500 active seats holding the real WKSHP-Docker101: the CPU of one pass of the live class view.

Each home is a copy of the workshop where the student ran a share of the
cells (``bench.completion.build_home``). A pass is what the service runs
every ``c.Wod.live_interval`` seconds (``LiveView.measure_all``): each
active seat's provisioned notebooks are looked at, the changed ones are
measured in the kept completion workers (``c.Wod.progress_concurrency`` at
once). Three passes are counted, in CPU seconds of the service's process
and of its workers together:

- cold: the first pass after a start, every seat measured;
- a class at work: a tenth of the seats saved a notebook since the last pass;
- idle: nobody saved.

The floor, measured in the same run: reading the bytes of every seat's
notebooks and ``json.loads`` of each in this process, the least any
correct measure of every seat must do. The event loop's longest stall
during the passes is printed too: the measures run off it.

Goal: under 1 s of CPU per pass, even the cold one that measures every seat.
"""

import asyncio
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from bench.completion import CORPUS, WORKSHOP, build_home
from wod_jupyterhub.config import Wod
from wod_jupyterhub.seats import completion_worker
from wod_jupyterhub.service.liveview import LiveView
from wod_jupyterhub.service.progress import Progress
from wod_jupyterhub.store.models import Seat, SeatState, Store
from wod_jupyterhub.workshops.catalog import CatalogCache

SEATS = 500
CHANGED = SEATS // 10
TICK = os.sysconf("SC_CLK_TCK")


def cpu() -> float:
    """CPU seconds of this process and of its living children (the kept workers: not in RUSAGE_CHILDREN until they end)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    total = me.ru_utime + me.ru_stime + _ended()
    for pid in _children():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def _ended() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _children() -> list[int]:
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


def floor(paths) -> float:
    started = time.process_time()
    for path in paths:
        with open(path, "rb") as f:
            json.loads(f.read())
    return time.process_time() - started


async def passes(live) -> tuple[list, float]:
    """CPU of a cold pass, a pass with a tenth of the seats changed, an idle pass; and the loop's longest stall."""
    stall = 0.0
    stop = asyncio.Event()

    async def ticker():
        nonlocal stall
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            stall = max(stall, time.perf_counter() - t - 0.005)

    tick = asyncio.ensure_future(ticker())
    spent = []
    for changed in (None, CHANGED, 0):
        if changed:
            await asyncio.to_thread(touch, live.wod, changed)
        before = cpu()
        assert await live.measure_all() == SEATS
        spent.append(cpu() - before)
    stop.set()
    await tick
    return spent, stall


def touch(wod, count):
    """``count`` seats run one more cell and save: their exercise notebook changes on disk."""
    for n in range(1, count + 1):
        path = next((wod.home(n) / WORKSHOP).glob("*.ipynb"))
        nb = json.loads(path.read_bytes())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code" and cell.get("execution_count") is None and "".join(cell["source"]).strip():
                cell["execution_count"] = 99
                break
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def main():
    if not (CORPUS / WORKSHOP).is_dir():
        print(f"the real workshops are not at {CORPUS} (set WOD_NOTEBOOKS)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="wod-bench-live-") as tmp:
        root = Path(tmp)
        wod = Wod(notebooks=[str(CORPUS)], students_root=str(root / "students"), student_max=SEATS,
                  db_url=f"sqlite:///{root / 'wod.sqlite'}")
        for n in range(1, SEATS + 1):
            build_home(root / "students", n)
        store = Store(wod.db_url)
        with store.session() as s:
            s.add_all(Seat(number=n, state=SeatState.ACTIVE, workshop=WORKSHOP, customer=f"c{n}") for n in range(1, SEATS + 1))
        catalog = CatalogCache(wod, ttl=3600)
        log = logging.getLogger("bench")
        app = SimpleNamespace(wod=wod, store=store, log=log, hub=SimpleNamespace(configured=False))
        app.progress = Progress(wod, catalog, log)
        live = LiveView(app)
        notebooks = app.progress.notebooks(catalog.workshop(WORKSHOP)[0])
        paths = [wod.home(n) / WORKSHOP / rel for n in range(1, SEATS + 1) for rel in notebooks]
        size = sum(p.stat().st_size for p in paths)
        floor(paths)  # the page cache warm for both sides alike
        t_floor = floor(paths)
        (cold, working, idle), stall = asyncio.run(passes(live))
        ratios = sorted(app.progress.cached(n, WORKSHOP)["ratio"] for n in range(1, SEATS + 1))
        store.dispose()
    for pool in completion_worker._idle.values():
        for w in pool:
            w.close()
    print(f"{SEATS} active seats, {len(paths)} notebooks, {size / 1e6:.1f} MB; progress {ratios[0]:.2f}..{ratios[-1]:.2f}; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"floor (read + json.loads of every seat's notebooks, in process): {t_floor:.3f} s CPU")
    print(f"cold pass (every seat measured in the workers):   {cold:.3f} s CPU = {cold / t_floor:.2f} x the floor")
    print(f"a class at work ({CHANGED} seats saved since):        {working:.3f} s CPU = {working / t_floor:.2f} x the floor")
    print(f"idle pass (nobody saved):                         {idle:.3f} s CPU")
    print(f"longest stall of the event loop during the passes: {stall * 1000:.1f} ms")
    ok = cold < 1
    print(f"goal: a pass measuring every seat under 1 s of CPU: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
