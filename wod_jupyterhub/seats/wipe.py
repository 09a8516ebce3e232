"""Wiping a seat for its next participant: its processes, its home, what its uid left elsewhere.

The seat's processes end, and what its uid left goes, through its runtime (``seats/runtime.py``).
"""

from __future__ import annotations

from . import homes
from .fdtrees import tree_size
from .runtime import seat_runtime


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
