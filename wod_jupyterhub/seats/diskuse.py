"""How much disk each held seat's home uses, measured while the service is idle."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from typing import Callable, Iterable

from ..store.models import isoformat

log = logging.getLogger(__name__)


def du_command(path: str) -> list[str]:
    """``du`` summing allocated bytes of ``path`` without following links or leaving its filesystem, as politely as possible."""
    cmd = ["du", "--summarize", "--one-file-system", "--no-dereference", "--block-size=1", "--", path]
    if shutil.which("ionice"):
        cmd = ["ionice", "-c", "3", *cmd]
    return ["nice", "-n", "19", *cmd]


def parse_du(output: str) -> int:
    """The byte count of ``du --summarize``'s ``<bytes>\\t<path>`` line; ValueError otherwise."""
    first = output.strip().splitlines()[0] if output.strip() else ""
    head = first.split("\t", 1)[0].strip()
    if not head.isdigit():
        raise ValueError(f"du printed {first[:200]!r}, not a byte count")
    return int(head)


async def home_bytes(path: str, timeout: float = 120) -> int | None:
    """Bytes the tree at ``path`` occupies; None when it is missing. Raises TimeoutError or OSError."""
    if not os.path.isdir(path):
        return None
    proc = await asyncio.create_subprocess_exec(
        *du_command(path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise TimeoutError(f"du {path} took more than {timeout:g} s") from None
    # du exits 1 when some entry could not be read (a file the student made unreadable to root
    # is impossible, but one that vanished while counted is not): its sum is still the figure.
    try:
        return parse_du(out.decode(errors="replace"))
    except ValueError:
        raise OSError(f"du {path} failed ({proc.returncode}): {err.decode(errors='replace').strip()[:300]}") from None


class DiskWatch:
    """The last size of each held seat's home, refreshed while the service is idle."""

    def __init__(self, home: Callable[[int], str], limit: int | None, interval: float = 300, log=log):
        self.home = home
        self.limit = limit
        self.interval = interval
        self.log = log
        self.sizes: dict[int, dict] = {}

    def to_json(self, n: int) -> dict | None:
        """``{"bytes", "limit", "over", "measured_at"}`` for seat ``n``, or None when not measured yet."""
        m = self.sizes.get(n)
        if m is None:
            return None
        return {"bytes": m["bytes"], "limit": self.limit, "over": self.limit is not None and m["bytes"] > self.limit, "measured_at": isoformat(m["at"])}

    def over(self) -> list[int]:
        """The seats whose home was over the limit when last measured, in order."""
        return sorted(n for n in self.sizes if self.limit is not None and self.sizes[n]["bytes"] > self.limit)

    async def measure(self, n: int) -> None:
        """Size seat ``n``'s home now (forgotten when it has none); warn once when it goes over the limit."""
        size = await home_bytes(self.home(n))
        if size is None:
            self.sizes.pop(n, None)
            return
        was_over = self.to_json(n) is not None and self.to_json(n)["over"]
        self.sizes[n] = {"bytes": size, "at": time.time()}
        if self.to_json(n)["over"] and not was_over:
            self.log.warning(
                "student%d's home holds %d MB, over the %d MB of c.Wod.home_size_limit: it slows every CLEANUP and fills the disk the class shares",
                n, size // 2**20, self.limit // 2**20,
            )

    async def run(self, seats: Callable[[], Iterable[int]], idle: Callable[[], bool]) -> None:
        """Forever: every ``interval`` seconds, size the homes of ``seats()``, one at a time, each only when ``idle()``."""
        while True:
            try:
                held = set(await asyncio.to_thread(seats))
                for n in list(self.sizes):
                    if n not in held:
                        del self.sizes[n]  # a freed seat's figure belonged to its last participant
                for n in sorted(held):
                    while not idle():
                        await asyncio.sleep(0.5)
                    try:
                        await self.measure(n)
                    except (OSError, TimeoutError) as e:
                        self.log.warning("Sizing student%d's home failed: %s", n, e)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("Sizing the homes failed; trying again later")
            await asyncio.sleep(self.interval)
