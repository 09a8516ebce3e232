"""Wiping a seat for its next participant: its processes, its home, what its uid left elsewhere."""

from __future__ import annotations

from . import cgroups, homes
from .fdtrees import tree_size
from .keyrings import clear_keyrings
from .leftovers import remove_leftovers
from .processes import kill_uid


def home_bytes(wod, n: int) -> int:
    """Bytes the home of ``student<n>`` takes on disk (its allocated blocks; links not followed)."""
    return tree_size(str(homes.home_path(wod, n)))


def wipe_seat(wod, n: int, keep_home: bool = False) -> dict:
    """Kill, erase (or keep) and clear seat ``n``; return what was done, for the operation's journal."""
    # The seat's control group first: frozen while it is killed, nothing the server started forks away.
    detail: dict = cgroups.end_seat(wod, n)
    uid = wod.uid_base + n if wod.system_users else None
    try:
        if uid is not None:
            # Then the uid: what the student started outside the server (a cron or at job) is not in the group.
            # Inside the try: processes that would not die still leave the leftovers' removal to run.
            detail["killed"] = kill_uid(uid)
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
        if uid is not None:
            detail.update(remove_leftovers(uid, uid, f"student{n}", wod.temp_folders))
            detail["keyrings_cleared"] = clear_keyrings(uid, uid)
    return detail
