"""What one press of Check costs: a step's check run in its own process, against the bare interpreter's start.

``seats.checks.run`` starts a child Python, sends it the rendered check and
reads its answer; the floor, measured in the same run, is the least any
check in its own process pays: starting the same interpreter with ``-I``
and running ``pass``. The check is the bundled sample's first (a file read
in the workshop's folder), as the participant's press runs it (as this
process's uid: no seat account needed).

Goal: at most 1.5 x the floor (median of 15, interleaved), so a class pressing
Check costs the machine little more than starting as many interpreters.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wod_jupyterhub.config import Wod, share_dir
from wod_jupyterhub.seats import checks
from wod_jupyterhub.workshops.catalog import load_catalog
from wod_jupyterhub.workshops.templating import Renderer

REPEAT = 15
WORKSHOP = "WKSHP-VerifiedSteps"


def main():
    scratch = Path(tempfile.mkdtemp(prefix="wod-bench-steps-"))
    try:
        root = scratch / "notebooks"
        shutil.copytree(share_dir() / "workshops" / WORKSHOP, root / WORKSHOP)
        wod = Wod(students_root=str(scratch / "students"), notebooks=[str(root)], system_users=False, cgroups=False)
        ws = load_catalog([root]).get(WORKSHOP)
        folder = scratch / "students" / "student41" / WORKSHOP
        folder.mkdir(parents=True)
        (folder / "greeting.txt").write_text("Hello from student41\n")
        renderer = Renderer()
        step = ws.steps[0]

        def ours():
            outcome = checks.for_seat(wod, ws, step, 41, renderer=renderer, private_tmp=False)
            assert outcome.passed, outcome.message

        def floor():
            subprocess.run([sys.executable, "-I", "-c", "pass"], check=True, cwd="/")

        times = {ours: [], floor: []}
        for _ in range(REPEAT):
            for fn in (floor, ours):
                started = time.perf_counter()
                fn()
                times[fn].append(time.perf_counter() - started)
        t_ours, t_floor = statistics.median(times[ours]), statistics.median(times[floor])
        print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        print(f"floor (python -I -c pass):      {t_floor * 1000:.1f} ms")
        print(f"one check (render, run, answer): {t_ours * 1000:.1f} ms")
        ratio = t_ours / t_floor
        print(f"ratio to floor: {ratio:.2f}  (goal: at most 1.5: {'met' if ratio <= 1.5 else 'MISSED'})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
