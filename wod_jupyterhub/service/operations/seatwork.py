"""The work the verbs and the preparation of free seats do on a seat, outside the database."""

import asyncio
import collections
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ... import passwords
from ...errors import Unprocessable
from ...seats.directory import DirectoryRefused, DirectoryUnreachable
from ...seats.wipe import wipe_seat


class SeatWork:
    """The parts a verb works with (``wod``, ``catalog``, ``hub``, ``hooks``, ``renderer``, ``sealer``, ``outbox``) and their blocking work."""

    def __init__(
        self, wod, settings, *, catalog, hub, hooks, renderer, sealer, outbox, log, hostname=None, on_ahead_cpu=None,
        directory=None, ahead=None,
    ):
        self.wod = wod
        self.log = log
        self.settings = settings
        self.catalog = catalog
        self.hub = hub
        self.hooks = hooks
        self.renderer = renderer
        self.sealer = sealer
        self.outbox = outbox
        self.hostname = hostname
        #: the LDAP directory of ``ldap: true`` workshops (``directory.Directory``); None: none configured
        self.directory = directory
        #: the servers started ahead after CREATE (``ahead.Ahead``); None: none here
        self.ahead = ahead
        #: the checks of verified steps (``service/steps.py``), which CLEANUP runs again; None: none run
        self.steps = None
        self.pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="wod-op")
        # Hashing gets its own threads (scrypt releases the GIL): a rotation must not queue behind provisionings.
        self.hash_pool = ThreadPoolExecutor(2, thread_name_prefix="wod-hash")
        # Staging free seats and compiling templates ahead: one thread, never in a burst's way.
        self.stage_pool = ThreadPoolExecutor(1, thread_name_prefix="wod-stage")
        #: set when the service stops: long blocking work (the warm-up) stops between files
        self.closing = threading.Event()
        # Passwords drawn and hashed ahead, while idle (``hash_ahead``): the scrypt of a rotation is most
        # of a CREATE's CPU, and a burst should not pay it while its callers wait. Only in this process's
        # memory, never written anywhere: a crash just loses unused random passwords.
        self._fresh: collections.deque[tuple[str, str]] = collections.deque()
        #: ``on_ahead_cpu(work, seconds)``: told the CPU each piece of work done ahead took ("hash", "background"),
        #: so that what a burst costs can be told from what was done for the next one (the metrics, the benches)
        self.on_ahead_cpu = on_ahead_cpu or (lambda work, seconds: None)

    async def blocking(self, fn, *args):
        """``fn(*args)`` in an operation thread."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def in_background(self, fn, *args):
        """``fn(*args)`` in the one background thread (staging, warm-up): work done ahead."""
        return await asyncio.get_running_loop().run_in_executor(self.stage_pool, self._ahead, "background", fn, *args)

    def _ahead(self, work: str, fn, *args):
        """``fn(*args)``, its thread's CPU told to ``on_ahead_cpu`` (in the worker thread)."""
        started = time.thread_time()
        try:
            return fn(*args)
        finally:
            self.on_ahead_cpu(work, time.thread_time() - started)

    def close(self) -> None:
        """Stop taking blocking work; queued work is dropped, running work ends on its own."""
        self.closing.set()
        for pool in (self.pool, self.hash_pool, self.stage_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    # ---- the password

    async def new_password(self) -> tuple[str, str]:
        """A fresh password and its hash: one hashed ahead if there is one, else hashed now."""
        if self._fresh:
            return self._fresh.popleft()
        return await self._hash_one()

    async def _hash_one(self, ahead: bool = False) -> tuple[str, str]:
        password = passwords.generate(self.wod.password_length, self.wod.password_alphabet)
        hash_it = functools.partial(passwords.hash_password, password, self.wod.password_hash_cost)
        if ahead:
            hash_it = functools.partial(self._ahead, "hash", hash_it)
        return password, await asyncio.get_running_loop().run_in_executor(self.hash_pool, hash_it)

    @property
    def hashed_ahead(self) -> int:
        """Passwords ready for the next rotations."""
        return len(self._fresh)

    async def hash_ahead(self, want: int, keep_going=lambda: True) -> int:
        """Draw and hash passwords until ``want`` wait ready (two at a time, one per hash thread); return how many were added.

        ``keep_going()``: checked between pairs (the preparer stops when an operation arrives).
        """
        added = 0
        while len(self._fresh) < want and keep_going() and not self.closing.is_set():
            pair = await asyncio.gather(*(self._hash_one(ahead=True) for _ in range(min(2, want - len(self._fresh)))))
            self._fresh.extend(pair)
            added += len(pair)
        return added

    # ---- the directory

    async def set_directory_passwords(self, passwords: dict, *, retry: bool, required: bool, workshop: str) -> dict:
        """Set ``{N: password}`` in the directory; the ``ldap`` step's detail (never a password).

        ``retry``: an unreachable directory is tried again, a little later
        each time, for ``c.WodLdap.retry_for`` seconds. ``required``: a
        directory that stays unreachable, refuses, or is not configured
        raises (the verb fails); else the detail holds a ``warning``.
        """
        d = self.directory
        if d is None or not d.configured:
            why = f"{workshop} has ldap: true, but no directory is configured (c.WodLdap.uri)"
            if required:
                raise Unprocessable(why, code="no_directory")
            return {"warning": why}
        started = time.monotonic()
        deadline = started + (d.settings.retry_for if retry else 0)
        delay, attempts = 0.5, 0
        while True:
            attempts += 1
            try:
                detail = await self.blocking(d.set_passwords, passwords)
            except DirectoryUnreachable as e:
                if time.monotonic() + delay <= deadline:
                    self.log.warning("%s; trying again in %.1f s", e.message, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 15.0)
                    continue
                gave_up = f"{e.message} (tried {attempts} time(s) in {time.monotonic() - started:.0f} s)"
                if required:
                    raise DirectoryUnreachable(f"{gave_up}: the seat is not handed out with a password it does not know") from None
                return {"warning": gave_up, "attempts": attempts}
            except DirectoryRefused as e:
                if required:
                    raise
                return {"warning": e.message, "attempts": attempts}
            if attempts > 1:
                detail["attempts"] = attempts
            return detail

    # ---- the hub

    async def end_hub_sessions(self, n: int, stop: bool = True) -> dict:
        """Stop the server (if asked) and revoke every token of ``student<n>`` on the hub."""
        name = f"student{n}"
        if not self.hub.configured:
            return {"skipped": "no hub API configured"}
        detail = {}
        if stop:
            if self.ahead is not None:
                self.ahead.forget(name)  # a start queued for the seat's previous holder
            detail["stopped"] = await self.hub.stop_server(name, timeout=self.settings.stop_timeout)
        detail["revoked"] = await self.hub.revoke_tokens(name)
        return detail

    # ---- the home

    def uid(self, n: int) -> int | None:
        """Seat ``n``'s uid in system-users mode; None when the servers run as the hub's user."""
        return self.wod.uid_base + n if self.wod.system_users else None

    def wipe(self, n: int, keep_home: bool = False) -> dict:
        """Kill the seat's processes, erase (or keep) its home, clear what its uid left elsewhere (blocking)."""
        return wipe_seat(self.wod, n, keep_home)

    # ---- the hooks

    def hook_skip(self, kind: str, folder: str | None) -> str | None:
        """Why the ``kind`` hooks step of workshop ``folder`` is skipped (None: there are scripts to run)."""
        if not folder:
            return "no workshop"
        if not self.hooks.find(kind, folder):
            return f"no {kind}-{folder}.sh in the scripts folders"
        return None

    async def run_hooks(self, kind, folder, ws, mode, student, customer, vars_file=None) -> dict:
        """Run the ``kind`` hooks; the step's detail. A failing hook raises ``HookFailed`` (its runs in ``journal``)."""
        runs = await self.hooks.run(
            kind, folder, student=student, customer=customer, challenge=(mode == "CHLG"), workshop=ws, vars_file=vars_file
        )
        return {"runs": runs}
