"""The idle preparation of free seats, so that a CREATE does little while its caller waits."""

import asyncio
import datetime
import os
import time
from pathlib import Path

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError

from ...config import student_number
from ...errors import WodError
from ...store.models import Seat, SeatState, read_seat, utcnow
from ...waiting import settle
from ..hubclient import HubAPIError
from .engine import NO_SYNC, PREPARE, ensure_students
from .journal import release


class Preparer:
    """Prepares the free seats of the active workshops while the engine is idle."""

    def __init__(self, settings, store, work, engine, *, log):
        self.settings = settings
        self.store = store
        self.work = work
        self.engine = engine
        self.log = log
        # Seats to prepare, in order (a dict as an ordered set); the next full look at the free seats.
        self._queue: dict[int, None] = {}
        self._current: int | None = None  # the seat being prepared now
        self._scan_at = 0.0
        self._seat_map = (None, {})
        self._task: asyncio.Task | None = None
        engine.on_end(self._after_operation)

    def _after_operation(self, run, *_):
        # Seats an operation left are prepared next (the ones it gave away are skipped there).
        if run is not None:
            self._queue.update(dict.fromkeys(run.students))

    @property
    def pending(self) -> int:
        """Free seats waiting to be prepared or being prepared (a full look at the free seats not done yet counts
        as one, and so do passwords not yet hashed ahead)."""
        return (
            len(self._queue) + (self._current is not None) + (1 if time.monotonic() >= self._scan_at else 0)
            + (1 if self._hashes_wanted() else 0)
        )

    def _hashes_wanted(self) -> int:
        """Passwords to hash ahead: one per seat of the active workshops (every verb rotates each of its seats once)."""
        return max(0, len(self.seat_workshops()) - self.work.hashed_ahead)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        """Stop at once: a seat half prepared is only an optimization not done (its lease is released)."""
        if await settle([self._task], timeout=1):
            self.log.warning("The preparation of free seats did not stop when cancelled")

    def seat_workshops(self) -> dict:
        """Seat number -> the active workshops whose range holds it (within this backend's range)."""
        catalog, wod = self.work.catalog.get(), self.work.wod
        if self._seat_map[0] is not catalog:
            seats: dict = {}
            for ws in catalog.workshops.values():
                if ws.active and ws.valid and ws.range:
                    for n in range(max(ws.range[0], wod.student_min), min(ws.range[1], wod.student_max) + 1):
                        seats.setdefault(n, []).append(ws)
            self._seat_map = (catalog, seats)
        return self._seat_map[1]

    async def _loop(self):
        """Do, while the engine has nothing to run, what a CREATE would otherwise do while its caller waits."""
        while True:
            await asyncio.sleep(0.1)
            try:
                if not self.engine.idle:
                    continue
                if time.monotonic() >= self._scan_at:
                    await self._scan()
                while self._queue and self.engine.idle:
                    n = next(iter(self._queue))
                    # Still pending while it is prepared: health's prepare_pending reaches 0 only when it is done.
                    self._current = n
                    del self._queue[n]
                    try:
                        await self.prepare_seat(n)
                    finally:
                        self._current = None
                if self.engine.idle and self._hashes_wanted():
                    await self.work.hash_ahead(len(self.seat_workshops()), keep_going=lambda: self.engine.idle)
            except Exception:
                self.log.exception("Preparing free seats failed; trying again later")

    async def _scan(self):
        from ...seats import homes  # as in verbs.create: not loaded by `wod mail`, which only queues

        self._scan_at = time.monotonic() + self.settings.prepare_rescan
        seats = sorted(self.seat_workshops())
        self._queue.update(dict.fromkeys(seats))
        hub = self.work.hub
        if hub.configured:
            # The pool's accounts, as the original kept them: a CREATE then finds its user there.
            try:
                created = await hub.ensure_users(f"student{n}" for n in seats)
            except HubAPIError as e:
                self.log.warning("Creating the pool's hub users failed (CREATEs will): %s", e)
            else:
                try:
                    self._sessions_ended_for_new_users(created)
                except IntegrityError:
                    pass  # another process made the rows meanwhile: the seats' preparation asks the hub
        # Whether or not seats are staged: what killed stagers or an earlier layout left goes.
        await self.work.in_background(homes.sweep_stages, self.work.wod)

    def _sessions_ended_for_new_users(self, names) -> None:
        """A hub user just created has no server and no token: its free seat needs no ending on the hub.

        Recorded in ``Seat.sessions_ended`` in one statement, so preparing
        the seats of a new pool (2,000 of them at a bootstrap) asks the hub
        nothing per seat. Only free seats nobody holds a lease on: a CREATE
        under way records what it did itself.
        """
        numbers = sorted(n for n in map(student_number, names) if n is not None)
        if not numbers:
            return
        with self.store.session() as s:
            ensure_students(s, numbers)
            s.flush()
            s.execute(
                update(Seat)
                .where(Seat.number.in_(numbers), Seat.state == SeatState.FREE, Seat.lock_owner.is_(None))
                .values(sessions_ended=True),
                execution_options=NO_SYNC,
            )

    async def prepare_seat(self, n: int) -> None:
        """End the hub sessions of free seat ``n`` if not known ended; stage its workshop's files."""
        workshops = self.seat_workshops().get(n)
        if not workshops:
            return
        with self.store.engine.connect() as conn:
            row = read_seat(conn, n)
        if row is not None and row.state != SeatState.FREE:
            return
        if not (row is not None and row.sessions_ended) and self.work.hub.configured:
            await self.end_sessions_ahead(n)
        if self.settings.stage_seats and len(workshops) == 1:
            await self._stage(n, workshops[0])

    async def end_sessions_ahead(self, n: int) -> None:
        """End the hub sessions of free seat ``n`` under its lease, as an operation would.

        A CREATE arriving meanwhile waits for the lease, so this never stops
        the server or revokes the tokens of the participant it gives the seat
        to. A process killed here leaves a lease that ``Engine.recover`` releases.
        """
        lock = f"{self.engine.owner}/{PREPARE}{n}"
        now = utcnow()
        with self.store.session() as s:
            ensure_students(s, [n])
            s.flush()
            got = s.execute(
                update(Seat)
                .where(
                    Seat.number == n,
                    Seat.state == SeatState.FREE,
                    or_(Seat.lock_owner.is_(None), Seat.lock_expires < now),
                )
                .values(lock_owner=lock, lock_expires=now + datetime.timedelta(seconds=self.settings.lease_seconds)),
                execution_options=NO_SYNC,
            ).rowcount
        if got != 1:
            return  # an operation holds it: that one talks to the hub itself
        ended = False
        try:
            detail = await self.work.end_hub_sessions(n, stop=True)
            ended = True
            if detail.get("stopped") or detail.get("revoked"):
                self.log.info("Ended what was left on the hub of free seat %s: %s", n, detail)
        except HubAPIError as e:
            self.log.warning("Ending the hub sessions of free seat %s failed (its CREATE will try again): %s", n, e)
        finally:
            with self.store.session() as s:
                s.execute(release(lock).values(sessions_ended=True) if ended else release(lock), execution_options=NO_SYNC)
            self.engine.wake()  # an operation may have waited for the seat

    async def _stage(self, n: int, ws) -> bool:
        from ...seats import homes  # as in verbs.create: not loaded by `wod mail`, which only queues

        try:
            built = await self.work.in_background(homes.stage, self.work.wod, ws, n)
        except FileNotFoundError as e:
            # A CREATE of this seat removed our half-built stage: it will not need it.
            self.log.debug("Staging student %s for %s stopped: %s", n, ws.name, e)
            return False
        except (OSError, WodError) as e:
            # Only ever an optimization: the CREATE copies what it needs itself.
            self.log.warning("Staging student %s for %s failed: %s", n, ws.name, e)
            return False
        if built:
            self.log.debug("Staged student %s for %s", n, ws.name)
        return built


def warm_up(work) -> int:
    """Compile the templates of every active workshop now (blocking), so the first CREATEs do not pay it.

    Stops between two files once the service is stopping (``work.closing``).
    """
    from ...workshops.templating import is_templated  # Jinja2: not loaded by `wod mail`, which only queues

    compiled = 0
    for ws in work.catalog.get().workshops.values():
        if not (ws.active and ws.valid):
            continue
        for dirpath, _dirs, files in os.walk(ws.path):
            for name in files:
                if work.closing.is_set():
                    return compiled
                if is_templated(name):
                    path = Path(dirpath) / name
                    try:
                        work.renderer.prepare(path, f"{ws.name}/{path.relative_to(ws.path)}")
                        compiled += 1
                    except Exception as e:  # the CREATE that needs it will report it
                        work.log.debug("Warm-up of %s failed: %s", path, e)
    return compiled
