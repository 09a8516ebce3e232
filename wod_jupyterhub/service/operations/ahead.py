"""Servers started ahead: a booked seat's server starts after its CREATE, so that the participant lands in a running lab.

A class books its seats minutes before it signs in; a server's start costs
seconds of CPU, and a room that signs in at once would otherwise wait for
the sum of its starts on the machine's few cores. Here the starts run
beforehand, a few at a time (the hub stays responsive), only while the
servers running fit the memory budget, and a server nobody opened is
stopped after a while (its participant's sign-in starts it again, as
always). CLEANUP stops them as it stops any server.

The hub's spawner does the start, as the participant's own sign-in would:
as the seat's uid, in its control group and namespace, with its limits;
this module only chooses when.
"""

import asyncio
import datetime
import os
import time

from traitlets import Float, Integer, TraitError, Unicode, default, validate
from traitlets.config import Configurable

from ...limits import parse_size
from ..hubclient import HubAPIError

#: what an idle seat holds as its control group accounts it, rounded up: the README's sizing table
IDLE_SEAT = "110M"


def machine_memory() -> int:
    """Bytes of memory this machine has (``MemTotal``); 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class WodAhead(Configurable):
    """``c.WodAhead``: how many servers are started ahead, how fast, and for how long nobody may use them."""

    memory_budget = Unicode(
        help="""Memory the seats' servers may hold when one more is started ahead (``12G``, ``800M``).

        A server is started ahead only while the servers running (started
        ahead or by their participants) times ``seat_memory`` stay within it.
        Defaults to half of the machine's memory: the rest is for the
        system, the hub, and the seats growing as their participants work.
        """,
    ).tag(config=True)

    @default("memory_budget")
    def _memory_budget_default(self):
        return str(machine_memory() // 2)

    seat_memory = Unicode(
        IDLE_SEAT,
        help="What one idle server holds (PSS): the README's sizing table, or ``bench/room.py`` on this machine.",
    ).tag(config=True)

    @validate("memory_budget", "seat_memory")
    def _valid_size(self, proposal):
        try:
            size = parse_size(proposal["value"])
        except ValueError as e:
            raise TraitError(f"WodAhead.{proposal['trait'].name}: {e}") from None
        if proposal["trait"].name == "seat_memory" and size <= 0:
            raise TraitError(f"WodAhead.seat_memory must be more than 0, not {proposal['value']!r}")
        return proposal["value"]

    at_once = Integer(
        help="""Servers started ahead at the same time (the others wait their turn).

        A start is mostly CPU (imports), so more at once than the machine has
        cores only slows each; fewer keep the hub answering. Defaults to the
        number of CPUs.
        """,
    ).tag(config=True)

    @default("at_once")
    def _at_once_default(self):
        return os.cpu_count() or 1

    max_servers = Integer(
        0,
        help="Most servers running when one more is started ahead, whatever the budget allows; 0: as the budget allows.",
    ).tag(config=True)

    @validate("at_once", "max_servers", "unused_minutes")
    def _not_negative(self, proposal):
        least = 1 if proposal["trait"].name == "at_once" else 0
        if proposal["value"] < least:
            raise TraitError(f"WodAhead.{proposal['trait'].name} must be {least} or more, not {proposal['value']}")
        return proposal["value"]

    unused_minutes = Float(
        60,
        help="""Minutes a ready server nobody opened keeps running before it is stopped (0: it is never stopped).

        Opened means its participant's browser reached it (the hub gave the
        browser a token of that server). The participant's sign-in starts it
        again, as it starts any server. Counted from when this service first
        saw it ready (after a restart of the service, from the restart).
        """,
    ).tag(config=True)

    def limit(self) -> int:
        """Most servers running when one more is started ahead: the budget over a seat, capped by ``max_servers``."""
        fits = parse_size(self.memory_budget) // parse_size(self.seat_memory)
        return min(fits, self.max_servers) if self.max_servers else fits


def _started(server: dict) -> float | None:
    """The epoch seconds the hub started ``server``; None when it does not say."""
    try:
        return datetime.datetime.fromisoformat(server["started"].replace("Z", "+00:00")).timestamp()
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def opened(name: str, tokens: list[dict]) -> bool:
    """Whether ``name``'s browser reached its server: the hub gave it an OAuth token of the server's client."""
    client, path = f"jupyterhub-user-{name}", f"/user/{name}/"
    return any(
        (c := t.get("oauth_client") or "") == client or (c.startswith("Server at ") and c.endswith(path)) for t in tokens
    )


class Ahead:
    """Starts booked seats' servers ahead, ``at_once`` at a time, within the budget; stops those nobody opened."""

    #: most seconds between looks at the budget while seats wait for room, and at the servers nobody opened
    check_every = 30.0

    def __init__(self, settings: WodAhead, hub, *, log):
        self.settings = settings
        self.hub = hub
        self.log = log
        # Users whose server is to start, in order (a dict as an ordered set).
        self._queue: dict[str, None] = {}
        self._wake = asyncio.Event()
        self._starting: set[str] = set()
        # Servers known opened, by (user, started): checked once, then never asked about again.
        self._opened: set[tuple[str, float]] = set()
        # When each server, by (user, started), was first seen ready: its unused time counts from there.
        self._seen: dict[tuple[str, float], float] = {}
        self._tasks: list[asyncio.Task] = []

    @property
    def pending(self) -> int:
        """Servers waiting to start ahead or starting."""
        return len(self._queue) + len(self._starting)

    def request(self, name: str) -> dict:
        """Queue ``name``'s server to start ahead (the step's detail); it starts when a slot and the budget allow."""
        self._queue[name] = None
        self._wake.set()
        return {"queued": True, "position": len(self._queue)}

    def forget(self, name: str) -> None:
        """``name``'s seat was taken back: a start not begun yet is dropped."""
        self._queue.pop(name, None)

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._starter()) for _ in range(self.settings.at_once)]
        if self.settings.unused_minutes:
            self._tasks.append(asyncio.ensure_future(self._reaper()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # ---- starting

    async def _starter(self):
        """One slot: takes the next queued user while the budget has room, starts its server, waits until ready."""
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                room = await self._room()
            except HubAPIError as e:
                self.log.warning("Servers started ahead wait: the hub did not list its servers (%s)", e)
                room = 0
            if room <= 0 or not self._queue:
                # Full: a stop (CLEANUP, or one nobody opened) makes room; look again later.
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.check_every)
                except TimeoutError:
                    pass
                continue
            name = next(iter(self._queue))
            del self._queue[name]
            self._starting.add(name)
            try:
                await self._start_one(name)
            except Exception as e:  # a seat that cannot start now starts at its participant's sign-in
                self.log.warning("The server of %s was not started ahead: %s", name, e)
            finally:
                self._starting.discard(name)

    async def _room(self) -> int:
        """How many more servers may start ahead now: the limit less the servers running or starting."""
        active = await self.hub.active_users()
        return self.settings.limit() - len(active | self._starting)

    async def _start_one(self, name: str, timeout: float = 300) -> None:
        began = time.monotonic()
        await self.hub.start_server(name)
        while True:
            model = await self.hub.user(name)
            server = (model or {}).get("servers", {}).get("")
            if not server or server.get("ready"):
                # Ready; or gone (it failed, or a CLEANUP stopped it): either way this slot is free again.
                break
            if time.monotonic() - began > timeout:
                self.log.warning("The server of %s started ahead is not ready after %.0f s", name, timeout)
                break
            await asyncio.sleep(0.5)
        self.log.info("Started the server of %s ahead (%.1f s)", name, time.monotonic() - began)

    # ---- stopping what nobody opened

    async def _reaper(self):
        # Twice per allowed time at least: a server is stopped at most half of it late.
        every = max(0.5, min(self.check_every, self.settings.unused_minutes * 30))
        while True:
            await asyncio.sleep(every)
            try:
                await self.stop_unopened()
            except HubAPIError as e:
                self.log.warning("Looking for servers nobody opened failed: %s", e)
            except Exception:
                self.log.exception("Looking for servers nobody opened failed")

    async def stop_unopened(self) -> list[str]:
        """Stop the servers ready for longer than ``unused_minutes`` that no browser reached; their names."""
        now = time.monotonic()
        allowed = self.settings.unused_minutes * 60
        stopped, running = [], set()
        for model in await self.hub.active_models():
            name = model["name"]
            server = (model.get("servers") or {}).get("")
            started = _started(server or {})
            if not server or not server.get("ready") or started is None:
                continue
            key = (name, started)
            running.add(key)
            if key in self._opened or now - self._seen.setdefault(key, now) < allowed:
                continue
            if opened(name, await self.hub.tokens(name)):
                self._opened.add(key)
                continue
            self.log.info("Stopping the server of %s: nobody opened it in %d minutes", name, self.settings.unused_minutes)
            await self.hub.stop_server(name)
            stopped.append(name)
        # Servers gone since are forgotten: a new start of the same user is another server.
        self._seen = {k: v for k, v in self._seen.items() if k in running}
        self._opened &= running
        if stopped:
            self._wake.set()  # room in the budget
        return stopped
