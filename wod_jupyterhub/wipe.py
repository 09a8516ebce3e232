"""Wiping a seat for its next participant: its processes, its home, what its uid left elsewhere.

The order matters. The processes go first, whatever the rest does (those
of the seat's control group, then any left to its uid): a
home the erase cannot finish (or a hook that failed before) must not leave
a participant's programs running into the next session, and once they are
gone nothing can write into the home or the temporary folders while they
are cleared. Then the home (unless the workshop keeps it for its RESET),
then the uid's files in the shared temporary folders, its IPC objects,
spooled jobs and kernel keyrings: those go even when some process would
not die (the step fails all the same, and the seat is not given away).
Processes and leftovers exist only in system-users mode: otherwise every
server runs as the hub's own user, which nothing may kill.

A kept home is measured first: one over ``c.Wod.home_size_limit`` is
erased all the same (the seat stays kept), so a participant cannot keep
the homes' disk filled until the workshop's RESET.

Core module: imports nothing of the hub or the service.
"""

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
