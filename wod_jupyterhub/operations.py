"""Durable operations: the four verbs, journaled in the database from before they start to their end.

How an operation lives:

1. ``submit`` validates the request (a user's mistake raises a ``WodError``
   and changes nothing), then writes the ``Operation`` row (``queued``) in the
   same transaction that makes sure the student rows exist.
2. The dispatcher of any service process sharing the database claims it: in
   one transaction it takes the lease of every student the operation touches
   (a conditional UPDATE on ``Student.lock_owner``/``lock_expires``, so it
   works across processes on PostgreSQL and SQLite), checks that no older
   unfinished operation touches one of them (first come, first served) and
   flips the operation to ``running``.
3. Each step commits its effects, its journal entry and the callbacks it
   enqueues in one transaction, so a crash leaves the operation at a step
   boundary (or inside a step whose effects are idempotent: hooks,
   provisioning, erasing). A step whose only effects are such idempotent
   ones (files on disk, hub calls) may be journaled with the next commit
   instead of its own (``Context.deferred``): a crash before that commit
   just does it again. The last commit of an operation may also record its
   end (``end=True``), so a CREATE costs four write transactions: submit,
   claim, rotate, assign.
4. A process that finds an operation ``running`` under an owner that is dead
   (same host: the pid is gone; elsewhere: its heartbeat is older than the
   lease) takes it over and resumes it from the first step not journaled.
   An operation recovered too often fails, so nothing stays running forever.

While a process has no operation to run, it prepares the free seats of the
active workshops, so that a CREATE does little while its caller waits: it
creates the pool's hub users, ends what a seat's hub user may have left on
the hub (under the seat's lease, recorded in ``Student.sessions_ended``) and
stages the seat's files (``homes.stage``).

Secrets: the rotated password is sealed (``passwords.Sealer``) in
``Operation.result`` in the very transaction that stores its hash, so a
resumed operation reports the same password that the hash checks.
"""

import asyncio
import datetime
import json
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from traitlets import Bool, Float, Integer, Unicode
from traitlets.config import LoggingConfigurable

from . import completion as completion_mod
from . import passwords
from .errors import Conflict, NotFound, Unprocessable, WodError
from .hooks import HookFailed, new_vars_file, read_vars_file
from .hubapi import HubAPIError
from .owners import make_owner, owner_alive_locally
from .store import Completion, Operation, Student, utcnow

VERBS = ("CREATE", "CLEANUP", "RESET", "PURGE")
UNFINISHED = ("queued", "running")
# A seat in one of these states belongs to its customer.
HELD = ("active", "kept", "cleaning")


def _iso(t: datetime.datetime | None) -> str | None:
    return t.isoformat(timespec="milliseconds") + "Z" if t else None


_NO_SYNC = {"synchronize_session": False}
# The lease of a free seat being prepared (no operation): "<owner>/prepare-<N>".
PREPARE = "prepare-"


def _release(lock: str):
    """The UPDATE that frees every student leased under ``lock``."""
    return update(Student).where(Student.lock_owner == lock).values(lock_owner=None, lock_expires=None)


def kill_uid_processes(uid: int) -> int:
    """SIGKILL every process running as ``uid`` (a student's leftovers); return how many."""
    killed = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            os.kill(int(entry.name), signal.SIGKILL)
                            killed += 1
                        break
        except (OSError, ValueError):
            continue
    return killed


class Context:
    """What one run of an operation knows: its row's identity and the steps already done."""

    def __init__(self, op: Operation, lock: str):
        self.id = op.id
        self.verb = op.verb
        self.student = op.student
        self.last = op.student_last if op.student_last is not None else op.student
        self.customer = op.customer
        self.email = op.email
        self.workshop = op.workshop
        self.result = dict(op.result or {})
        self.steps = list(op.steps or [])
        self.done = {s["name"] for s in self.steps if s.get("status") == "done"}
        self.recoveries = sum(1 for s in (op.steps or []) if s.get("name") == "recover")
        self.lock = lock
        # Entries of steps done but not journaled yet: they go with the next commit.
        self.deferred: list[dict] = []
        # The operation's end was committed with its last step.
        self.ended = False
        # Student.sessions_ended as the rotate step read it (None: not read in this run).
        self.sessions_ended: bool | None = None

    @property
    def students(self) -> range:
        return range(self.student, self.last + 1)


class Operations(LoggingConfigurable):
    """Runs the verbs for one service process; several processes may share one database."""

    # Set by the service from c.WodService.*, which is where admins configure them.
    workers = Integer(32, help="Operations this process runs at once (on distinct students).")
    threads = Integer(4, help="Threads for blocking work: provisioning, erasing, completion, password hashing.")
    lease_seconds = Float(60, help="A student's lock lease; a holder that stops renewing it loses it after this long.")
    poll_interval = Float(1.0, help="Seconds between looks at the database for work other processes queued or orphaned.")
    start_server = Bool(False, help="Start the student's server at the end of CREATE.")
    login_url = Unicode("/hub/login", help="The login URL a finished CREATE reports; {user} and {student} are replaced.")

    catalog_ttl = Float(5.0, help="Seconds the workshop catalog is cached before wod.yml files are read again.").tag(config=True)
    max_recoveries = Integer(3, help="An operation taken over after a crash this many times fails instead of resuming again.").tag(config=True)
    stop_timeout = Float(60, help="Seconds to wait for a student's server to stop.").tag(config=True)
    stage_seats = Bool(
        True,
        help="""Copy ahead, for every free seat, the files of its workshop that a CREATE does not render.

        A CREATE then renders only the templated files and swaps the seat in: a
        few ms instead of the time it takes to copy the whole workshop (its
        pictures and data files). Staging runs in one thread, only while this
        process has no operation to run, so it never slows a burst. It takes
        the disk of one more copy of the workshop per free seat. Seats in the
        range of two active workshops are not staged.
        """,
    ).tag(config=True)
    prepare_rescan = Float(
        60,
        help="""Seconds between looks at every free seat of the active workshops, to prepare it while idle.

        Each look also creates, in one call, the hub users of the seats that
        have none yet (the pool's accounts). Preparing a free seat: end what
        its hub user may have left on the hub (a server, tokens) unless
        already known ended, and stage its files (stage_seats). A finished
        operation queues its seats at once.
        """,
    ).tag(config=True)

    def __init__(self, wod, store, sealer, outbox, hub, hooks, renderer, hostname=None, **kwargs):
        super().__init__(**kwargs)
        self.wod = wod
        self.store = store
        self.sealer = sealer
        self.outbox = outbox
        self.hub = hub
        self.hooks = hooks
        self.renderer = renderer
        self.hostname = hostname
        self.owner = make_owner()
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="wod-op")
        # Hashing gets its own threads (scrypt releases the GIL): a rotation must not queue behind provisionings.
        self.hash_pool = ThreadPoolExecutor(2, thread_name_prefix="wod-hash")
        self.stage_pool = ThreadPoolExecutor(1, thread_name_prefix="wod-stage")
        # Seats to prepare, in order (a dict as an ordered set); the next full look at the free seats.
        self._prepare_queue: dict[int, None] = {}
        self._prepare_scan_at = 0.0
        self._last_busy = 0.0
        self._seat_map = (None, {})
        self._events: dict[str, asyncio.Event] = {}
        self._running: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task] = []
        self._catalog = None
        self._catalog_at = 0.0
        self.counts = {"succeeded": 0, "failed": 0, "recovered": 0}
        self.durations: list[tuple[str, float]] = []

    # ----------------------------------------------------------------- catalog

    def catalog(self):
        from . import catalog as catalog_mod

        now = time.monotonic()
        if self._catalog is None or now - self._catalog_at > self.catalog_ttl:
            self._catalog = catalog_mod.load_catalog(self.wod.notebooks, prefer_private=self.wod.prefer_private)
            self._catalog_at = now
        return self._catalog

    def workshop(self, name: str):
        """(Workshop, folder, mode) for a requested ``WKSHP-``/``CHLG-`` name; NotFound if absent."""
        from . import catalog as catalog_mod

        folder, mode = catalog_mod.parse_workshop_name(name)
        return self.catalog().get(folder), folder, mode

    def workshop_or_none(self, name: str | None):
        if not name:
            return None, None, "WKSHP"
        try:
            return self.workshop(name)
        except WodError:
            from . import catalog as catalog_mod

            try:
                folder, mode = catalog_mod.parse_workshop_name(name)
            except WodError:
                return None, None, "WKSHP"
            return None, folder, mode

    def warm_up(self) -> int:
        """Compile the templates of every active workshop now (blocking), so the first CREATEs do not pay it."""
        from .templating import is_templated

        compiled = 0
        for ws in self.catalog().workshops.values():
            if not (ws.active and ws.valid):
                continue
            for dirpath, _dirs, files in os.walk(ws.path):
                for name in files:
                    if is_templated(name):
                        path = Path(dirpath) / name
                        try:
                            self.renderer.prepare(path, f"{ws.name}/{path.relative_to(ws.path)}")
                            compiled += 1
                        except Exception as e:  # noqa: BLE001 - the CREATE that needs it will report it
                            self.log.debug("Warm-up of %s failed: %s", path, e)
        return compiled

    # ------------------------------------------------------------------ submit

    def _check_student(self, n: int):
        if not isinstance(n, int) or isinstance(n, bool):
            raise Unprocessable(f"student must be a whole number, not {n!r}")
        if not self.wod.in_range(n):
            raise Unprocessable(
                f"student {n} is out of this backend's range {self.wod.student_min}..{self.wod.student_max}"
            )

    def validate(self, verb, student, student_last=None, customer=None, email=None, workshop=None):
        """Raise the WodError a request deserves; return the (normalized) workshop name."""
        self._check_student(student)
        if student_last is not None:
            self._check_student(student_last)
            if student_last < student:
                raise Unprocessable(f"the student range {student},{student_last} is empty (min is above max)")
        if verb == "CREATE":
            ws, folder, mode = self.workshop(workshop)
            if not ws.active:
                raise Unprocessable(f"workshop {folder} is not active (wod.yml says active: false)")
            self.catalog().check_student(ws, student, self.wod)
        elif verb == "RESET":
            ws, folder, mode = self.workshop(workshop)
            if not ws.reset:
                raise Unprocessable(f"workshop {folder} has no reset: true in wod.yml, so it cannot be RESET")
            for n in {student, student_last if student_last is not None else student}:
                self.catalog().check_student(ws, n, self.wod)
        elif verb == "CLEANUP" and workshop:
            # The seat knows its workshop; a named one must at least be well formed.
            from . import catalog as catalog_mod

            catalog_mod.parse_workshop_name(workshop)
        return workshop

    def _ensure_students(self, s, numbers):
        # Whole rows: the checks that follow find them in the session instead of asking again.
        have = {st.number for st in s.scalars(select(Student).where(Student.number.in_(list(numbers))))}
        for n in numbers:
            if n not in have:
                s.add(Student(number=n, state="free", generation=0))

    def _holder_after_pending(self, s, n: int, st: Student | None):
        """Who holds seat ``n`` once the operations already queued for it have run (None: free)."""
        holder = st.customer if st is not None and st.state in HELD else None
        pending = s.scalars(
            select(Operation)
            .where(
                Operation.status.in_(UNFINISHED),
                Operation.student <= n,
                func.coalesce(Operation.student_last, Operation.student) >= n,
            )
            .order_by(Operation.created, Operation.id)
        ).all()
        for op in pending:
            if op.verb == "CREATE":
                holder = op.customer
            elif op.verb == "CLEANUP":
                ws, _, _ = self.workshop_or_none(op.workshop or (st.workshop if st else None))
                if not (ws is not None and ws.reset):
                    holder = None
            else:
                holder = None
        return holder

    async def submit(self, verb, student, student_last=None, customer=None, email=None, workshop=None) -> Operation:
        if verb not in VERBS:
            raise Unprocessable(f"unknown verb {verb!r}")
        workshop = self.validate(verb, student, student_last, customer, email, workshop)
        last = student_last if student_last is not None else student
        numbers = list(range(student, last + 1))
        for attempt in range(5):
            try:
                with self.store.session() as s:
                    self._ensure_students(s, numbers)
                    s.flush()
                    if verb in ("CREATE", "CLEANUP"):
                        st = s.get(Student, student)
                        self._check_holder(student, self._holder_after_pending(s, student, st), customer)
                    op = Operation(
                        id=uuid.uuid4().hex,
                        verb=verb,
                        student=student,
                        student_last=student_last,
                        customer=customer,
                        email=email,
                        workshop=workshop,
                        status="queued",
                        steps=[],
                        result={},
                        created=utcnow(),
                    )
                    s.add(op)
                break
            except IntegrityError:
                # Another process created the same student row in between: try again.
                if attempt == 4:
                    raise
        self._events[op.id] = asyncio.Event()
        self._last_busy = time.monotonic()
        self._wake.set()
        self.log.info("Queued %s %s for student %s", op.id, verb, student if student_last is None else f"{student}..{last}")
        return op

    # ------------------------------------------------------------------- reads

    def get(self, op_id: str) -> Operation:
        with self.store.Session() as s:
            op = s.get(Operation, op_id)
        if op is None:
            raise NotFound(f"there is no operation {op_id}")
        return op

    def list(self, student=None, status=None, verb=None, limit=100) -> list[Operation]:
        q = select(Operation).order_by(Operation.created.desc(), Operation.id.desc()).limit(limit)
        if student is not None:
            q = q.where(Operation.student <= student, func.coalesce(Operation.student_last, Operation.student) >= student)
        if status:
            q = q.where(Operation.status == status)
        if verb:
            q = q.where(Operation.verb == verb)
        with self.store.Session() as s:
            return list(s.scalars(q))

    def to_json(self, op: Operation, reveal: bool = False) -> dict:
        result = dict(op.result or {})
        public = {}
        if "login_url" in result:
            public["login_url"] = result["login_url"]
        if "completion" in result:
            public["completion"] = result["completion"]
        if "students" in result:
            public["students"] = result["students"]
        if op.verb == "CREATE" and op.status == "succeeded" and "password" in result:
            public["password"] = self.sealer.open(result["password"]) if reveal else None
        return {
            "id": op.id,
            "verb": op.verb,
            "student": op.student,
            "students": [op.student, op.student_last] if op.student_last is not None else None,
            "customer": op.customer,
            "email": op.email,
            "workshop": op.workshop,
            "status": op.status,
            "steps": list(op.steps or []),
            "error": op.error,
            "result": public if op.status in ("succeeded", "failed") else None,
            "created": _iso(op.created),
            "started": _iso(op.started),
            "finished": _iso(op.finished),
        }

    async def wait(self, op_id: str, timeout: float, op: Operation | None = None) -> Operation:
        """The operation once finished, or as it is when ``timeout`` runs out.

        ``op``: the row as the caller just read or wrote it (unfinished), which spares one read.
        """
        deadline = time.monotonic() + timeout
        event = self._events.get(op_id)
        while True:
            if op is None or op.id != op_id:
                op = self.get(op_id)
            left = deadline - time.monotonic()
            if op.status not in UNFINISHED or left <= 0:
                return op
            # Another process may run it: our event never fires then, so look at the database now and then.
            try:
                if event is not None:
                    await asyncio.wait_for(event.wait(), min(left, 2.0))
                else:
                    await asyncio.sleep(min(left, 0.2))
            except asyncio.TimeoutError:
                pass
            op = None

    # -------------------------------------------------------------- lifecycle

    def start(self):
        """Start the dispatcher and heartbeat (call from the running event loop)."""
        self._loops = [
            asyncio.ensure_future(self._dispatch_loop()),
            asyncio.ensure_future(self._heartbeat_loop()),
        ]
        self._loops.append(asyncio.ensure_future(self._prepare_loop()))

    async def stop(self):
        for t in self._loops + list(self._running.values()):
            t.cancel()
        await asyncio.gather(*self._loops, *self._running.values(), return_exceptions=True)
        for pool in (self.pool, self.hash_pool, self.stage_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    def wake(self):
        self._wake.set()

    async def _dispatch_loop(self):
        last_recovery = 0.0
        while True:
            self._wake.clear()
            try:
                if time.monotonic() - last_recovery >= self.poll_interval:
                    last_recovery = time.monotonic()
                    self._recover()
                self._dispatch()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("Dispatching operations failed; trying again shortly")
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except asyncio.TimeoutError:
                pass

    async def _heartbeat_loop(self):
        while True:
            await asyncio.sleep(self.lease_seconds / 4)
            if not self._running:
                continue
            try:
                now = utcnow()
                with self.store.session() as s:
                    s.execute(
                        update(Student)
                        .where(Student.lock_owner.like(self.owner + "/%"))
                        .values(lock_expires=now + datetime.timedelta(seconds=self.lease_seconds))
                    )
                    s.execute(
                        update(Operation)
                        .where(Operation.owner == self.owner, Operation.status == "running")
                        .values(heartbeat=now)
                    )
            except Exception:
                self.log.exception("Renewing the student leases failed")

    def _dispatch(self):
        free = self.workers - len(self._running)
        if free <= 0:
            return
        with self.store.Session() as s:
            rows = s.execute(
                select(Operation.id, Operation.student, Operation.student_last, Operation.created)
                .where(Operation.status == "queued")
                .order_by(Operation.created, Operation.id)
                .limit(free * 4 + 32)
            ).all()
        blocked: list[tuple[int, int]] = []
        for op_id, first, last, created in rows:
            if free <= 0:
                break
            last = last if last is not None else first
            if op_id in self._running or any(a <= last and first <= b for a, b in blocked):
                blocked.append((first, last))
                continue
            self._last_busy = time.monotonic()
            if self._claim(op_id, first, last, created):
                self._launch(op_id)
                free -= 1
            else:
                blocked.append((first, last))

    def _claim(self, op_id, first, last, created) -> bool:
        lock = f"{self.owner}/{op_id}"
        now = utcnow()
        with self.store.engine.connect() as conn:
            trans = conn.begin()
            try:
                got = conn.execute(
                    update(Student)
                    .where(
                        Student.number.between(first, last),
                        or_(Student.lock_owner.is_(None), Student.lock_expires < now),
                    )
                    .values(lock_owner=lock, lock_expires=now + datetime.timedelta(seconds=self.lease_seconds))
                ).rowcount
                if got != last - first + 1:
                    trans.rollback()
                    return False
                older = conn.execute(
                    select(Operation.id)
                    .where(
                        Operation.status.in_(UNFINISHED),
                        Operation.id != op_id,
                        Operation.student <= last,
                        func.coalesce(Operation.student_last, Operation.student) >= first,
                        or_(Operation.created < created, and_(Operation.created == created, Operation.id < op_id)),
                    )
                    .limit(1)
                ).first()
                if older is not None:
                    trans.rollback()
                    return False
                got = conn.execute(
                    update(Operation)
                    .where(Operation.id == op_id, Operation.status == "queued")
                    .values(status="running", owner=self.owner, started=now, heartbeat=now)
                ).rowcount
                if got != 1:
                    trans.rollback()
                    return False
                trans.commit()
                return True
            except DBAPIError as e:
                # PostgreSQL may pick us as a deadlock victim between overlapping ranges: just retry later.
                trans.rollback()
                self.log.debug("Claiming %s failed (%s); will retry", op_id, e.__class__.__name__)
                return False

    def _recover(self):
        """Take over operations whose owner died; resume them. Free the seats a dead process was preparing."""
        with self.store.Session() as s:
            preparing = s.scalars(select(Student.lock_owner).where(Student.lock_owner.like(f"%/{PREPARE}%"))).all()
        for lock in set(preparing):
            if owner_alive_locally(lock.rsplit("/", 1)[0]) is False:
                with self.store.session() as s:
                    s.execute(_release(lock), execution_options=_NO_SYNC)
                self.log.warning("Released seat lease %s of a process that died while preparing the seat", lock)
        with self.store.Session() as s:
            rows = s.execute(
                select(Operation.id, Operation.owner, Operation.heartbeat, Operation.student, Operation.student_last).where(
                    Operation.status == "running", Operation.owner != self.owner
                )
            ).all()
        now = utcnow()
        for op_id, owner, heartbeat, first, last in rows:
            if op_id in self._running or len(self._running) >= self.workers:
                continue
            alive = owner_alive_locally(owner or "")
            if alive is None:
                alive = heartbeat is not None and heartbeat > now - datetime.timedelta(seconds=self.lease_seconds)
            if alive:
                continue
            last = last if last is not None else first
            lock = f"{self.owner}/{op_id}"
            with self.store.session() as s:
                got = s.execute(
                    update(Operation)
                    .where(Operation.id == op_id, Operation.owner == owner, Operation.status == "running")
                    .values(owner=self.owner, heartbeat=now)
                ).rowcount
                if got != 1:
                    continue
                s.execute(
                    update(Student)
                    .where(
                        Student.number.between(first, last),
                        or_(
                            Student.lock_owner.is_(None),
                            Student.lock_owner.like(f"{owner}/%"),
                            Student.lock_expires < now,
                        ),
                    )
                    .values(lock_owner=lock, lock_expires=now + datetime.timedelta(seconds=self.lease_seconds))
                )
            self.log.warning("Taking over operation %s left running by %s (dead)", op_id, owner)
            self.counts["recovered"] += 1
            self._launch(op_id, recovered_from=owner)

    def _launch(self, op_id, recovered_from=None):
        self._events.setdefault(op_id, asyncio.Event())
        task = asyncio.ensure_future(self._execute(op_id, recovered_from))
        self._running[op_id] = task

    # ------------------------------------------------------- preparing free seats

    @property
    def prepare_pending(self) -> int:
        """Free seats waiting to be prepared (a full look at the free seats not done yet counts as one)."""
        return len(self._prepare_queue) + (1 if time.monotonic() >= self._prepare_scan_at else 0)

    def _idle(self) -> bool:
        # A short quiet time first: requests of a burst arrive over a few ms.
        return not self._running and time.monotonic() - self._last_busy > 0.2

    def _seat_workshops(self) -> dict:
        """Seat number -> the active workshops whose range holds it (within this backend's range)."""
        catalog = self.catalog()
        if self._seat_map[0] is not catalog:
            seats: dict = {}
            for ws in catalog.workshops.values():
                if ws.active and ws.valid and ws.range:
                    for n in range(max(ws.range[0], self.wod.student_min), min(ws.range[1], self.wod.student_max) + 1):
                        seats.setdefault(n, []).append(ws)
            self._seat_map = (catalog, seats)
        return self._seat_map[1]

    async def _prepare_loop(self):
        """Do, while this process has nothing to run, what a CREATE would otherwise do while its caller waits."""
        while True:
            await asyncio.sleep(0.1)
            try:
                if not self._idle():
                    continue
                if time.monotonic() >= self._prepare_scan_at:
                    self._prepare_scan_at = time.monotonic() + self.prepare_rescan
                    seats = sorted(self._seat_workshops())
                    self._prepare_queue.update(dict.fromkeys(seats))
                    if self.hub.configured:
                        # The pool's accounts, as the original kept them: a CREATE then finds its user there.
                        try:
                            await self.hub.ensure_users(f"student{n}" for n in seats)
                        except HubAPIError as e:
                            self.log.warning("Creating the pool's hub users failed (CREATEs will): %s", e)
                    if self.stage_seats:
                        from . import homes

                        await asyncio.get_running_loop().run_in_executor(self.stage_pool, homes.sweep_stages, self.wod)
                while self._prepare_queue and self._idle():
                    n = next(iter(self._prepare_queue))
                    del self._prepare_queue[n]
                    await self._prepare_seat(n)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("Preparing free seats failed; trying again later")

    async def _prepare_seat(self, n: int) -> None:
        """End the hub sessions of free seat ``n`` if not known ended; stage its workshop's files."""
        workshops = self._seat_workshops().get(n)
        if not workshops:
            return
        with self.store.Session() as s:
            row = s.execute(select(Student.state, Student.sessions_ended).where(Student.number == n)).first()
        if row is not None and row.state != "free":
            return
        if not (row is not None and row.sessions_ended) and self.hub.configured:
            await self._end_sessions_ahead(n)
        if self.stage_seats and len(workshops) == 1:
            await self._stage(n, workshops[0])

    async def _end_sessions_ahead(self, n: int) -> None:
        # Under the seat's lease, as an operation would be: a CREATE arriving meanwhile waits for
        # it, so this never stops the server or revokes the tokens of the participant it gives
        # the seat to. A process killed here leaves a lease that _recover releases.
        lock = f"{self.owner}/{PREPARE}{n}"
        now = utcnow()
        with self.store.session() as s:
            self._ensure_students(s, [n])
            s.flush()
            got = s.execute(
                update(Student)
                .where(
                    Student.number == n,
                    Student.state == "free",
                    or_(Student.lock_owner.is_(None), Student.lock_expires < now),
                )
                .values(lock_owner=lock, lock_expires=now + datetime.timedelta(seconds=self.lease_seconds)),
                execution_options=_NO_SYNC,
            ).rowcount
        if got != 1:
            return  # an operation holds it: that one talks to the hub itself
        ended = False
        try:
            detail = await self._end_sessions(n, stop=True)
            ended = True
            if detail.get("stopped") or detail.get("revoked"):
                self.log.info("Ended what was left on the hub of free seat %s: %s", n, detail)
        except HubAPIError as e:
            self.log.warning("Ending the hub sessions of free seat %s failed (its CREATE will try again): %s", n, e)
        finally:
            with self.store.session() as s:
                s.execute(
                    _release(lock).values(sessions_ended=True) if ended else _release(lock), execution_options=_NO_SYNC
                )
            self._wake.set()  # an operation may have waited for the seat

    async def _stage(self, n: int, ws) -> bool:
        from . import homes

        try:
            built = await asyncio.get_running_loop().run_in_executor(self.stage_pool, homes.stage, self.wod, ws, n)
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

    # --------------------------------------------------------------- running

    async def _execute(self, op_id, recovered_from=None):
        started = time.monotonic()
        lock = f"{self.owner}/{op_id}"
        status, error = "failed", None
        verb = "?"
        ctx = None
        try:
            with self.store.Session() as s:
                op = s.get(Operation, op_id)
            ctx = Context(op, lock)
            verb = ctx.verb
            if recovered_from:
                if ctx.recoveries >= self.max_recoveries:
                    raise WodError(f"given up after {ctx.recoveries} crashes while it ran")
                self._journal(ctx, "recover", detail={"from": recovered_from, "resumes_after": sorted(ctx.done)})
            await getattr(self, "_run_" + ctx.verb.lower())(ctx)
            status = "succeeded"
        except asyncio.CancelledError:
            # Shutdown: the operation stays running under our name and the next start resumes it.
            self._running.pop(op_id, None)
            raise
        except (WodError, HookFailed, HubAPIError) as e:
            error = getattr(e, "message", None) or str(e)
        except Exception as e:  # our bug: keep the traceback for the admin, fail the operation
            self.log.exception("Operation %s (%s) failed unexpectedly", op_id, verb)
            error = f"internal error: {e.__class__.__name__}: {e}"
        try:
            if not (ctx is not None and ctx.ended):
                self._finish(op_id, lock, status, error, ctx)
        except Exception:
            self.log.exception("Recording the end of operation %s failed", op_id)
        self._running.pop(op_id, None)
        self._last_busy = time.monotonic()
        if ctx is not None:
            # Seats an operation left free are prepared next; the others are skipped there.
            self._prepare_queue.update(dict.fromkeys(ctx.students))
        elapsed = time.monotonic() - started
        self.counts[status] += 1
        self.durations.append((verb, elapsed))
        del self.durations[:-1000]
        log = self.log.info if status == "succeeded" else self.log.warning
        log("Operation %s %s %s in %.0f ms%s", op_id, verb, status, elapsed * 1000, f": {error}" if error else "")
        event = self._events.pop(op_id, None)
        if event is not None:
            event.set()
        self._wake.set()

    def _finish(self, op_id, lock, status, error, ctx=None):
        values = {"status": status, "error": error, "finished": utcnow()}
        if ctx is not None and ctx.deferred:
            values["steps"] = ctx.steps + ctx.deferred
            if status == "succeeded":
                values["result"] = dict(ctx.result)
        # Core statements: nothing in a session to keep in sync, so no ORM work.
        with self.store.engine.begin() as conn:
            conn.execute(update(Operation).where(Operation.id == op_id).values(**values))
            conn.execute(_release(lock))
        self.outbox.notify()

    @staticmethod
    def _entry(name, started=None, detail=None, status="done", error=None) -> dict:
        now = utcnow()
        entry = {"name": name, "status": status, "started": _iso(started or now), "finished": _iso(now)}
        if detail is not None:
            entry["detail"] = detail
        if error is not None:
            entry["error"] = error
        return entry

    def _journal(self, ctx, name, fn=None, *, started=None, detail=None, status="done", error=None, after=(), end=False):
        """Commit one step: its effects (``fn(session)``), its journal entry, and the callbacks it enqueues.

        The deferred entries of steps done before it go first, ``after`` (entries
        of steps already done, journaled after it) last. ``end``: this is the
        operation's last step, so the same commit records its success and
        frees its students.
        """
        entries = [*ctx.deferred, self._entry(name, started, detail, status, error), *after]
        steps = ctx.steps + entries
        with self.store.session() as s:
            if fn is not None:
                fn(s)
            # After fn: it may add to the result (a sealed password) and set the workshop.
            now = utcnow()
            values = {"steps": steps, "result": dict(ctx.result), "workshop": ctx.workshop, "heartbeat": now}
            if end:
                values.update(status="succeeded", error=None, finished=now)
            # Plain UPDATEs: the context already knows the row, no need to load it or keep a session in sync.
            s.execute(update(Operation).where(Operation.id == ctx.id).values(**values), execution_options=_NO_SYNC)
            if end:
                s.execute(_release(ctx.lock), execution_options=_NO_SYNC)
        ctx.steps = steps
        ctx.deferred = []
        ctx.done.update(e["name"] for e in entries if e["status"] == "done")
        ctx.ended = end
        self.outbox.notify()

    async def _blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _hook_step(self, ctx, kind, folder, workshop, mode, student, vars_file=None):
        """Run the ``kind`` hooks as one journaled step; without hooks there is nothing to journal."""
        started, runs = await self._hooks(ctx, kind, folder, workshop, mode, student, vars_file)
        if runs:
            self._journal(ctx, f"hooks-{kind}", started=started, detail={"runs": runs})
        else:
            ctx.done.add(f"hooks-{kind}")
        return runs

    async def _hooks(self, ctx, kind, folder, workshop, mode, student, vars_file=None):
        started = utcnow()
        try:
            runs = await self.hooks.run(
                kind, folder, student=student, customer=ctx.customer, challenge=(mode == "CHLG"),
                workshop=workshop, vars_file=vars_file,
            )
        except HookFailed as e:
            self._journal(ctx, f"hooks-{kind}", started=started, detail={"runs": e.runs}, status="failed", error=str(e))
            raise
        return started, runs

    # ---- the password

    async def _new_password(self):
        password = passwords.generate(self.wod.password_length, self.wod.password_alphabet)
        hashed = await asyncio.get_running_loop().run_in_executor(self.hash_pool, passwords.hash_password, password)
        return password, hashed

    def _set_password(self, st: Student, hashed: str):
        st.password_hash = hashed
        st.rotated_at = utcnow()
        # The generation ends every session issued before the seat changed hands.
        st.generation = (st.generation or 0) + 1

    @staticmethod
    def _check_holder(n: int, holder, customer) -> None:
        if holder is not None and holder != customer:
            raise Conflict(f"student {n} is held by another customer, not by {customer}; CLEANUP or PURGE it first")

    def _rotate(self, s, ctx, n: int, password: str, hashed: str, check_holder: bool = False) -> Student:
        """The rotate step's common part: the new hash on the seat, the password sealed on the operation."""
        st = s.get(Student, n)
        if check_holder:
            self._check_holder(n, st.customer if st.state in HELD else None, ctx.customer)
        self._set_password(st, hashed)
        ctx.result["password"] = self.sealer.seal(password)
        return st

    def _password(self, ctx) -> str:
        return self.sealer.open(ctx.result["password"])

    # ---- the hub

    async def _end_sessions(self, n: int, stop: bool) -> dict:
        """Stop the server (if asked) and revoke every token of ``student<n>`` on the hub."""
        name = f"student{n}"
        if not self.hub.configured:
            return {"skipped": "no hub API configured"}
        detail = {}
        if stop:
            detail["stopped"] = await self.hub.stop_server(name, timeout=self.stop_timeout)
        detail["revoked"] = await self.hub.revoke_tokens(name)
        return detail

    def _uid(self, n: int):
        return self.wod.uid_base + n if self.wod.system_users else None

    def _wipe(self, n: int) -> dict:
        """Erase the home and kill the student's leftover processes (blocking)."""
        from . import homes

        homes.erase_home(self.wod, n)
        killed = kill_uid_processes(self._uid(n)) if self.wod.system_users else 0
        return {"killed": killed}

    # ------------------------------------------------------------------ CREATE

    async def _run_create(self, ctx: Context):
        from . import homes
        from .variables import template_variables

        n = ctx.student
        ws, folder, mode = self.workshop(ctx.workshop)

        if "rotate" not in ctx.done:
            if not ws.active:
                raise Unprocessable(f"workshop {folder} is not active (wod.yml says active: false)")
            self.catalog().check_student(ws, n, self.wod)
            started = utcnow()
            password, hashed = await self._new_password()

            def rotate(s):
                ctx.sessions_ended = self._rotate(s, ctx, n, password, hashed, check_holder=True).sessions_ended

            self._journal(ctx, "rotate", rotate, started=started)
        password = self._password(ctx)

        # The hub's part (make sure the user exists, revoke the previous holder's tokens) runs
        # beside the provisioning: the hub is another process, with its own core.
        hub_started = utcnow()
        hub_part = asyncio.ensure_future(self._hub_part(ctx)) if "hub" not in ctx.done else None
        hub_detail = None

        try:
            if "hooks-create" not in ctx.done:
                vars_file = new_vars_file()
                try:
                    started, runs = await self._hooks(ctx, "create", folder, ws, mode, n, vars_file)
                    hook_vars = read_vars_file(vars_file)
                except ValueError as e:
                    raise Unprocessable(str(e)) from e
                finally:
                    os.unlink(vars_file)
                if hook_vars:
                    ctx.result["hook_vars"] = self.sealer.seal(json.dumps(hook_vars))
                if runs:
                    self._journal(ctx, "hooks-create", started=started, detail={"runs": runs})
                else:
                    ctx.done.add("hooks-create")
            hook_vars = json.loads(self.sealer.open(ctx.result["hook_vars"])) if "hook_vars" in ctx.result else None

            if "provision" not in ctx.done:
                started = utcnow()
                variables = template_variables(
                    self.wod, ws, n, password, modews=mode, hook_vars=hook_vars, hostname=self.hostname
                )
                uid = self._uid(n)
                info = {}
                await self._blocking(
                    lambda: homes.provision(self.wod, ws, n, variables, renderer=self.renderer, uid=uid, gid=uid, info=info)
                )
                # Files only, swapped in whole: journaled with the next commit (a crash before it provisions again).
                ctx.deferred.append(self._entry("provision", started, info))

            if "hooks-post-copy" not in ctx.done:
                await self._hook_step(ctx, "post-copy", folder, ws, mode, n)

            if hub_part is not None and "assign" not in ctx.done:
                # Before the assignment: the new participant hears of the seat once the previous
                # holder's tokens are gone, and a hub that fails leaves no seat half given.
                hub_detail = await hub_part
        except BaseException as e:
            if hub_part is not None:
                hub_part.cancel()
                await asyncio.gather(hub_part, return_exceptions=True)
            if not isinstance(e, asyncio.CancelledError):
                await self._undo_create(n)
            raise

        ctx.result["login_url"] = self.login_url.format(user=f"student{n}", student=n)
        start = self.start_server and self.hub.configured
        if "assign" not in ctx.done:

            def assign(s):
                st = s.get(Student, n)
                st.state = "active"
                st.sessions_ended = False  # from now on the participant may log in
                st.customer = ctx.customer
                st.email = ctx.email
                st.workshop = ctx.workshop
                st.assigned_at = utcnow()
                self.outbox.student_password(s, n, password, operation_id=ctx.id)
                self.outbox.customer_active(s, n, ctx.customer, True, operation_id=ctx.id)

            if hub_detail is not None and not start:
                # The hub's part is done: one commit for the assignment, its journal and the end.
                self._journal(ctx, "assign", assign, after=[self._entry("hub", hub_started, hub_detail)], end=True)
                return
            self._journal(ctx, "assign", assign)

        if "hub" not in ctx.done:
            detail = hub_detail if hub_detail is not None else await hub_part
            if start:
                await self.hub.start_server(f"student{n}")
                detail["started"] = True
            # Journaled with the operation's end: a crash before it just does the (idempotent) hub part again.
            ctx.deferred.append(self._entry("hub", hub_started, detail))

    async def _hub_part(self, ctx) -> dict:
        n = ctx.student
        if not self.hub.configured:
            return {"skipped": "no hub API configured"}
        created = await self.hub.ensure_user(f"student{n}")
        if created:
            return {"created": True}  # a new user has no token to revoke
        if not self._needs_revoke(ctx):
            return {"revoked": "already: at the seat's last CLEANUP, PURGE or RESET, or while it was free"}
        return await self._end_sessions(n, stop=False)

    def _needs_revoke(self, ctx) -> bool:
        """False when the seat's sessions were ended on the hub already (``Student.sessions_ended``).

        CLEANUP, PURGE and RESET end them, and so does the preparation of a
        free seat while the service is idle; since then no one could log in
        (the seat was not active), so there is nothing new to revoke.
        """
        if ctx.sessions_ended is not None:  # read with the seat in the rotate step; the lease kept it since
            return not ctx.sessions_ended
        with self.store.Session() as s:
            return not s.scalar(select(Student.sessions_ended).where(Student.number == ctx.student))

    @staticmethod
    def _record_sessions(details: dict):
        """The journal effect of a step that ended sessions on the hub: ``Student.sessions_ended`` per seat.

        ``details``: seat number -> what ``_end_sessions`` (or a PURGE's attempt)
        said; a skipped or failed attempt leaves the next CREATE to ask the hub.
        """

        def record(s):
            for n, detail in details.items():
                s.get(Student, n).sessions_ended = "skipped" not in detail and "warning" not in detail

        return record

    async def _undo_create(self, n: int):
        """A CREATE that failed before the assignment leaves no half-provisioned home behind."""
        with self.store.Session() as s:
            st = s.get(Student, n)
            held = st is not None and st.state in HELD
        if not held:
            try:
                await self._blocking(self._wipe, n)
            except Exception:
                self.log.exception("Erasing the home of student %s after a failed CREATE failed", n)

    # ----------------------------------------------------------------- CLEANUP

    async def _run_cleanup(self, ctx: Context):
        n = ctx.student

        if "rotate" not in ctx.done:
            started = utcnow()
            password, hashed = await self._new_password()

            def rotate(s):
                st = self._rotate(s, ctx, n, password, hashed, check_holder=True)
                if st.workshop and not ctx.workshop:
                    ctx.workshop = st.workshop
                # From here no one logs in as N: the assignment ends with the old password.
                st.state = "cleaning"
                self.outbox.student_password(s, n, password, operation_id=ctx.id)

            self._journal(ctx, "rotate", rotate, started=started)
        ws, folder, mode = self.workshop_or_none(ctx.workshop)

        if folder and "hooks-cleanup" not in ctx.done:
            await self._hook_step(ctx, "cleanup", folder, ws, mode, n)

        if "completion" not in ctx.done:
            started = utcnow()
            ratio = await self._blocking(self._completion, n, folder)
            ctx.result["completion"] = ratio

            def store_completion(s):
                s.add(
                    Completion(
                        student=n, customer=ctx.customer, workshop=ctx.workshop, kind="cleanup",
                        ratio=ratio["ratio"], executed=ratio["executed"], total=ratio["total"], detail=ratio,
                    )
                )
                self.outbox.customer_completion(s, n, ctx.customer, ratio["ratio"], operation_id=ctx.id)

            self._journal(ctx, "completion", store_completion, started=started, detail={"ratio": ratio["ratio"]})

        if "stop-server" not in ctx.done:
            started = utcnow()
            detail = await self._end_sessions(n, stop=True)
            self._journal(ctx, "stop-server", self._record_sessions({n: detail}), started=started, detail=detail)

        if "release" not in ctx.done:
            started = utcnow()
            keep = ws is not None and ws.reset
            detail = {"kept": keep}
            if not keep:
                detail.update(await self._blocking(self._wipe, n))

            def release(s):
                st = s.get(Student, n)
                if keep:
                    st.state = "kept"
                    self.outbox.student_assigned(s, n, True, operation_id=ctx.id)
                    self.outbox.customer_active(s, n, ctx.customer, False, operation_id=ctx.id)
                else:
                    self._free(st)
                    self.outbox.student_assigned(s, n, False, operation_id=ctx.id)
                self.outbox.customer_cleaned(s, n, ctx.customer, operation_id=ctx.id)

            self._journal(ctx, "release", release, started=started, detail=detail)

    def _completion(self, n: int, folder: str | None) -> dict:
        path = self.wod.home(n) / folder if folder else None
        if path is None or not path.is_dir():
            return {"ratio": 0, "executed": 0, "total": 0, "notebooks": []}
        return completion_mod.completion(path)

    @staticmethod
    def _free(st: Student):
        st.state = "free"
        st.customer = None
        st.email = None
        st.workshop = None
        st.assigned_at = None

    # ------------------------------------------------------------------- RESET

    async def _run_reset(self, ctx: Context):
        ws, folder, mode = self.workshop(ctx.workshop)
        numbers = list(ctx.students)

        if "rotate" not in ctx.done:
            started = utcnow()
            fresh = [await self._new_password() for _ in numbers]

            def rotate(s):
                sealed = {}
                for n, (password, hashed) in zip(numbers, fresh):
                    st = s.get(Student, n)
                    self._set_password(st, hashed)
                    st.state = "cleaning"
                    sealed[str(n)] = self.sealer.seal(password)
                    self.outbox.student_password(s, n, password, operation_id=ctx.id)
                ctx.result["passwords"] = sealed

            self._journal(ctx, "rotate", rotate, started=started)

        if "stop-servers" not in ctx.done:
            started = utcnow()
            detail = {str(n): await self._end_sessions(n, stop=True) for n in numbers}
            self._journal(
                ctx, "stop-servers", self._record_sessions({n: detail[str(n)] for n in numbers}), started=started, detail=detail
            )

        if "hooks-reset" not in ctx.done:
            await self._hook_step(ctx, "reset", folder, ws, mode, ctx.student)

        if "erase" not in ctx.done:
            started = utcnow()
            for n in numbers:
                await self._blocking(self._wipe, n)

            def erase(s):
                for n in numbers:
                    self._free(s.get(Student, n))
                    self.outbox.student_assigned(s, n, False, operation_id=ctx.id)
                if ctx.last != ctx.student:
                    self.outbox.workshop_capacity(s, folder, len(numbers), operation_id=ctx.id)
                ctx.result["students"] = [ctx.student, ctx.last]

            self._journal(ctx, "erase", erase, started=started)

    # ------------------------------------------------------------------- PURGE

    async def _run_purge(self, ctx: Context):
        n = ctx.student

        if "stop-server" not in ctx.done:
            started = utcnow()
            try:
                detail = await self._end_sessions(n, stop=True)
            except HubAPIError as e:
                # PURGE must get the seat back even when the hub side is broken too.
                detail = {"warning": str(e)}
            self._journal(ctx, "stop-server", self._record_sessions({n: detail}), started=started, detail=detail)

        if "rotate" not in ctx.done:
            started = utcnow()
            password, hashed = await self._new_password()

            def rotate(s):
                st = self._rotate(s, ctx, n, password, hashed)
                if st.workshop and not ctx.workshop:
                    ctx.workshop = st.workshop
                st.state = "cleaning"

            self._journal(ctx, "rotate", rotate, started=started)
        password = self._password(ctx)

        if "erase" not in ctx.done:
            started = utcnow()
            detail = await self._blocking(self._wipe, n)

            def erase(s):
                self._free(s.get(Student, n))
                self.outbox.student_assigned(s, n, False, operation_id=ctx.id)
                self.outbox.student_password(s, n, password, operation_id=ctx.id)

            self._journal(ctx, "erase", erase, started=started, detail=detail)

    # ---------------------------------------------------------------- students

    def student_json(self, n: int) -> dict:
        self._check_student(n)
        with self.store.Session() as s:
            st = s.get(Student, n)
            last = s.scalars(
                select(Completion).where(Completion.student == n).order_by(Completion.taken_at.desc(), Completion.id.desc()).limit(1)
            ).first()
            busy = s.scalars(
                select(Operation.id).where(
                    Operation.status.in_(UNFINISHED),
                    Operation.student <= n,
                    func.coalesce(Operation.student_last, Operation.student) >= n,
                )
            ).all()
        return {
            "student": n,
            "user": f"student{n}",
            "state": st.state if st else "free",
            "customer": st.customer if st else None,
            "email": st.email if st else None,
            "workshop": st.workshop if st else None,
            "assigned_at": _iso(st.assigned_at) if st else None,
            "rotated_at": _iso(st.rotated_at) if st else None,
            "generation": st.generation if st else 0,
            "home_exists": self.wod.home(n).exists(),
            "pending_operations": list(busy),
            "completion": None
            if last is None
            else {
                "kind": last.kind, "ratio": last.ratio, "executed": last.executed, "total": last.total,
                "workshop": last.workshop, "taken_at": _iso(last.taken_at),
            },
        }
