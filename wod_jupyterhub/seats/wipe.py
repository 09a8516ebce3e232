"""Wiping a seat for its next participant: its processes, its home, what its uid left elsewhere.

The seat's processes end through its runtime (``seats/runtime.py``); the
local one, a seat as processes of this machine, is here.
"""

from __future__ import annotations

import os
import subprocess

from . import cgroups, homes
from .fdtrees import tree_size
from .keyrings import clear_keyrings
from .leftovers import remove_leftovers
from .processes import kill_uid
from .runtime import Ran, SeatRuntime, seat_runtime


def home_bytes(wod, n: int) -> int:
    """Bytes the home of ``student<n>`` takes on disk (its allocated blocks; links not followed)."""
    return tree_size(str(homes.home_path(wod, n)))


def wipe_seat(wod, n: int, keep_home: bool = False) -> dict:
    """Kill, erase (or keep) and clear seat ``n``; return what was done, for the operation's journal."""
    runtime = seat_runtime(wod)
    detail: dict = {}
    try:
        # Inside the try: processes that would not die still leave the leftovers' removal to run.
        detail.update(runtime.end(n))
        limit = wod.home_size_bytes
        if keep_home and limit:
            size = home_bytes(wod, n)
            detail["home_bytes"] = size
            if size > limit:
                detail["over_limit"] = True
                keep_home = False
        if not keep_home:
            homes.erase_home(wod, n)
            detail["erased"] = True
    finally:
        detail.update(runtime.clear_leftovers(n))
    return detail


class LocalRuntime(SeatRuntime):
    """Seats as processes of this machine: the seat's uid and its control group (``c.Wod.cgroups``)."""

    name = "local"

    def end(self, n: int, timeout: float = 15.0) -> dict:
        # The seat's control group first: frozen while it is killed, nothing the server started forks away.
        detail = cgroups.end_seat(self.wod, n, timeout)
        uid = self.uid(n)
        if uid is not None:
            # Then the uid: what the student started outside the server (a cron or at job) is not in the group.
            detail["killed"] = kill_uid(uid)
        return detail

    def clear_leftovers(self, n: int) -> dict:
        uid = self.uid(n)
        if uid is None:
            return {}
        detail = remove_leftovers(uid, uid, f"student{n}", self.wod.temp_folders)
        detail["keyrings_cleared"] = clear_keyrings(uid, uid)
        return detail

    def usage(self, n: int) -> dict | None:
        return cgroups.seat_resources(self.wod, n)

    def detect(self) -> str | None:
        h = cgroups.for_wod(self.wod)
        return h.warning() if h is not None else None

    def exec(self, n: int, argv: list[str], timeout: float = 30.0, cwd: str | None = None) -> Ran:
        uid = self.uid(n)
        h = cgroups.for_wod(self.wod)
        group = h.seat(f"student{n}") if h is not None and h.available else None
        procs_files = group.procs_files() if group is not None and group.exists() else []
        home = str(self.wod.home(n))

        def preexec():
            # Still root: into the seat's group first, so what the command forks counts against the seat.
            cgroups.join(procs_files)
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)

        env = {"HOME": home, "USER": f"student{n}", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            argv, cwd=cwd or home, env=env, preexec_fn=preexec, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Its own session: what it forked goes with it.
            os.killpg(proc.pid, 9)
            out, err = proc.communicate()
            return Ran(None, out, err)
        return Ran(proc.returncode, out, err)
