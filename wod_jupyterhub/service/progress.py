"""A participant's live progress: the completion ratio of their own provisioned notebooks, as CLEANUP will count it.

Measured in the completion workers (``seats/completion_worker.py``: a
bounded process, never the service's event loop), at most
``c.Wod.progress_concurrency`` at once, and kept per seat for
``c.Wod.progress_max_age`` seconds. Before asking a worker, the seat's
notebooks are looked at (``lstat``: size, time, inode): a seat none of whose
notebooks changed keeps its last measure, so a pass over a room where a few
people saved costs a few measures, not one per seat.
"""

import asyncio
import os
import threading
import time

from ..errors import WodError
from ..seats import completion as completion_mod
from ..seats import completion_worker
from ..store.models import isoformat

#: seconds a workshop's list of provisioned notebooks is reused (walking its folder costs more than a seat's stats)
NOTEBOOKS_TTL = 60.0


class Progress:
    """Measures and caches the progress of seats; every call is made from the service's event loop."""

    def __init__(self, wod, catalog, log):
        self.wod = wod
        self.catalog = catalog
        self.log = log
        self._seats: dict[int, dict] = {}  # n -> {"workshop", "checked", "signature", "value"}
        self._running: dict[int, asyncio.Future] = {}
        self._notebooks: dict[str, tuple[float, list]] = {}
        self._notebooks_lock = threading.Lock()
        self._gate: asyncio.Semaphore | None = None

    @property
    def gate(self) -> asyncio.Semaphore:
        if self._gate is None:
            self._gate = asyncio.Semaphore(self.wod.progress_concurrency)
        return self._gate

    def cached(self, n: int, workshop: str | None) -> dict | None:
        """The last progress measured for seat ``n`` in ``workshop`` (any age), or None."""
        entry = self._seats.get(n)
        return entry["value"] if entry is not None and entry["workshop"] == workshop else None

    def forget(self, n: int) -> None:
        self._seats.pop(n, None)

    async def get(self, n: int, workshop: str | None, max_age: float | None = None) -> dict | None:
        """Seat ``n``'s progress in ``workshop``, measured again when older than ``max_age`` (default: the setting)."""
        if not workshop:
            return None
        max_age = self.wod.progress_max_age if max_age is None else max_age
        entry = self._seats.get(n)
        if entry is not None and entry["workshop"] == workshop and time.monotonic() - entry["checked"] < max_age:
            return entry["value"]
        running = self._running.get(n)
        if running is None or running.done():
            running = self._running[n] = asyncio.ensure_future(self._measure(n, workshop))
            running.add_done_callback(lambda f: self._running.pop(n, None) if self._running.get(n) is f else None)
        return await asyncio.shield(running)

    async def _measure(self, n: int, workshop: str) -> dict | None:
        async with self.gate:
            entry = self._seats.get(n)
            previous = entry if entry is not None and entry["workshop"] == workshop else None
            checked = time.monotonic()
            signature, value = await asyncio.to_thread(self.measure_blocking, n, workshop, previous)
        self._seats[n] = {"workshop": workshop, "checked": checked, "signature": signature, "value": value}
        return value

    def notebooks(self, ws) -> list:
        """The workshop's provisioned notebooks, walked at most once per ``NOTEBOOKS_TTL``."""
        with self._notebooks_lock:
            hit = self._notebooks.get(ws.name)
            if hit is not None and time.monotonic() - hit[0] < NOTEBOOKS_TTL:
                return hit[1]
        found = completion_mod.provisioned_notebooks(ws)
        with self._notebooks_lock:
            self._notebooks[ws.name] = (time.monotonic(), found)
        return found

    def measure_blocking(self, n: int, workshop: str, previous: dict | None = None) -> tuple:
        """(signature, progress) of seat ``n``: blocking, in a thread. ``previous``: the seat's last entry, kept when
        no notebook changed since."""
        ws, folder, _mode = self.catalog.workshop_or_none(workshop)
        if ws is None or not folder:
            return None, None
        try:
            notebooks = self.notebooks(ws)
        except WodError:
            return None, None
        base = self.wod.home(n) / folder
        signature = _signature(base, notebooks)
        if previous is not None and previous["signature"] == signature and previous["value"] is not None:
            return signature, {**previous["value"], "measured_at": isoformat(time.time())}
        result = completion_worker.measure(base, notebooks=notebooks, **self.wod.completion_limits())
        total = result.get("total") or 0
        value = {
            "ratio": round(result["executed"] / total, 4) if total else 0.0,
            "executed": result.get("executed") or 0,
            "total": total,
            "measured_at": isoformat(time.time()),
        }
        return signature, value


def _signature(base, notebooks) -> tuple:
    """What tells a seat's notebooks changed: each one's size, time and inode (never followed through a link)."""
    out = []
    for rel in notebooks:
        try:
            st = os.lstat(os.path.join(base, rel))
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)
