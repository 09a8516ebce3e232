"""The engine: a durable queue of operations in the database, run by every service process sharing it."""

import asyncio
import datetime
import functools
import time
import uuid

from sqlalchemy import Integer, and_, bindparam, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from ...errors import Unprocessable, WodError
from ...leases import make_owner, owner_alive_locally
from ...store.models import SEATS, Operation, Seat, SeatState, Status, utcnow
from ...waiting import nap, settle
from ..hooks import HookFailed
from ..hubclient import HubAPIError
from .admission import check_request, check_seat, overlapping
from .holders import holding
from .journal import Run, forced_entry, release
from .verbs import VERBS

# The lease of a free seat being prepared (no operation): "<owner>/prepare-<N>".
PREPARE = "prepare-"
#: for bulk updates of rows no session holds: nothing in memory to bring up to date
NO_SYNC = {"synchronize_session": False}


# Built once (a statement caches its own cache key): a burst submits a hundred operations in a row.
_HAVE_SEATS = select(SEATS.c.number).where(SEATS.c.number.in_(bindparam("numbers", expanding=True)))
_ADD_SEATS = insert(SEATS)
_ADD_OPERATION = insert(Operation.__table__)
_QUEUED = (
    select(Operation.id, Operation.student, Operation.student_last, Operation.created)
    .where(Operation.status == Status.QUEUED)
    .order_by(Operation.created, Operation.id)
    .limit(bindparam("b_limit", type_=Integer))
)
_READ_OPERATION = select(Operation.__table__).where(Operation.__table__.c.id == bindparam("op_id"))


def ensure_students(s, numbers) -> None:
    """Add the missing ``Seat`` rows of ``numbers`` (free), on session or connection ``s``.

    Core statements: the callers read the rows they need themselves, so there is nothing for an ORM session to track.
    """
    numbers = list(numbers)
    have = set(s.scalars(_HAVE_SEATS, {"numbers": numbers}))
    missing = [n for n in numbers if n not in have]
    if missing:
        s.execute(_ADD_SEATS, [{"number": n, "state": SeatState.FREE, "generation": 0, "sessions_ended": False} for n in missing])


@functools.cache
def _claim_statements():
    """The three statements of ``Engine.claim``, built once with bound parameters (a dispatcher claims a burst's
    hundred operations in a row; building the clauses each time cost a third of a claim):

    - take the leases of students ``first..last`` that are free or expired;
    - find an older unfinished operation touching one of them (first come, first served);
    - flip the operation from queued to running under this process, answering its row where the database can
      (``UPDATE … RETURNING``: the run then needs no read of its own).
    """
    p = bindparam
    take = (
        update(Seat)
        .where(Seat.number.between(p("first"), p("last")), or_(Seat.lock_owner.is_(None), Seat.lock_expires < p("now")))
        .values(lock_owner=p("lock"), lock_expires=p("expires"))
    )
    older = (
        select(Operation.id)
        .where(
            Operation.status.in_(Status.UNFINISHED),
            Operation.id != p("op_id"),
            overlapping(p("first"), p("last")),
            or_(Operation.created < p("created"), and_(Operation.created == p("created"), Operation.id < p("op_id"))),
        )
        .limit(1)
    )
    start = (
        update(Operation)
        .where(Operation.id == p("op_id"), Operation.status == Status.QUEUED)
        .values(status=Status.RUNNING, owner=p("owner"), started=p("started"), heartbeat=p("started"))
    )
    return take, older, start, start.returning(*Operation.__table__.c)


class Engine:
    """Queues, claims, runs, journals and recovers operations for one service process."""

    def __init__(self, settings, store, work, *, verbs=None, log):
        self.settings = settings
        self.store = store
        self.work = work  # what the verbs use (operations/seatwork.py)
        self.verbs = VERBS if verbs is None else verbs  # a test may run verbs of its own
        self.log = log
        self.owner = make_owner()
        self._events: dict[str, asyncio.Event] = {}
        self._running: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task] = []
        self._listeners: list = []
        self._last_busy = 0.0
        self._stopping = False

    # ------------------------------------------------------------- public seams

    @property
    def running(self) -> int:
        """Operations this process runs now."""
        return len(self._running)

    @property
    def idle(self) -> bool:
        """Nothing to run, and nothing submitted for a short while (the requests of a burst arrive over a few ms)."""
        return not self._running and not self._stopping and time.monotonic() - self._last_busy > 0.2

    def wake(self) -> None:
        """Look for work now (a seat lease was released; another process may have queued something)."""
        self._wake.set()

    def on_end(self, listener) -> None:
        """Call ``listener(run, verb, status, seconds, recovered_from)`` when an operation this process ran ends.

        ``run``: None when the operation could not be read; ``recovered_from``: the dead owner it was taken over from.
        """
        self._listeners.append(listener)

    # ------------------------------------------------------------------ submit

    async def submit(self, verb, student, student_last=None, customer=None, email=None, workshop=None, force=False,
                     journal=None, result=None) -> Operation:
        """Queue an operation; a request the verb refuses raises its ``WodError`` and changes nothing.

        A repeated CREATE (its customer holds the seat for its workshop already, or will once its CREATE ran)
        queues nothing: the answer is that CREATE, with ``repeat`` set. ``force``: a CREATE re-provisions a seat
        its customer holds; the journal's first entry says so. ``journal``: entries the journal opens with (why the
        service queued it); ``result``: what the operation's result starts with (a CREATE's requested ``ends_at``).
        """
        if verb not in self.verbs:
            raise Unprocessable(f"unknown verb {verb!r}")
        workshop = check_request(self.work, verb, student, student_last, workshop)
        last = student_last if student_last is not None else student
        numbers = list(range(student, last + 1))
        # Core statements on one connection: a burst submits a hundred of these, and ORM objects (a flush, an
        # identity map) would cost more than the statements themselves. The row is returned as a detached
        # ``Operation`` carrying the values written.
        for attempt in range(5):
            values = dict(
                id=uuid.uuid4().hex, verb=verb, student=student, student_last=student_last, customer=customer, email=email,
                workshop=workshop, status=Status.QUEUED, steps=forced_entry(force) + list(journal or ()),
                result=dict(result or {}), created=utcnow(),
            )
            try:
                with self.store.engine.begin() as conn:
                    ensure_students(conn, numbers)
                    repeated = check_seat(
                        self.work, conn, verb, student, customer, workshop, single=student_last is None, force=force
                    )
                    if repeated is None:
                        conn.execute(_ADD_OPERATION, values)
                if repeated is not None:
                    return self._repeat(repeated)
                break
            except IntegrityError:
                # Another process created the same student row in between: try again.
                if attempt == 4:
                    raise
        op = Operation(**values)
        self._events[op.id] = asyncio.Event()
        self._last_busy = time.monotonic()
        self._wake.set()
        self.log.info("Queued %s %s for student %s", op.id, verb, student if student_last is None else f"{student}..{last}")
        return op

    def holding(self, n: int):
        """Who holds seat ``n`` once the operations queued for it ran (``operations/holders.py``): a ``Holding``."""
        with self.store.engine.connect() as conn:
            return holding(self.work.catalog, conn, n)

    def _repeat(self, op_id: str) -> Operation:
        op = self.read(op_id)
        op.repeat = True
        self.log.info("A repeated %s for student %s answers operation %s; nothing is run again", op.verb, op.student, op_id)
        return op

    async def wait(self, op_id: str, timeout: float, op: Operation | None = None) -> Operation:
        """The operation once finished, or as it is when ``timeout`` runs out.

        ``op``: the row as the caller just read or wrote it (unfinished), which spares one read.
        """
        deadline = time.monotonic() + timeout
        event = self._events.get(op_id)
        while True:
            if op is None or op.id != op_id:
                op = getattr(event, "op", None) or self.read(op_id)
            left = deadline - time.monotonic()
            if op is None or op.status not in Status.UNFINISHED or left <= 0:
                return op
            # Another process may run it: our event never fires then, so look at the database now and then.
            await nap(event, min(left, 2.0)) if event is not None else await asyncio.sleep(min(left, 0.2))
            op = None

    def read(self, op_id: str) -> Operation | None:
        """Operation ``op_id`` as stored now, detached (a plain read: no session to keep, no identity map)."""
        with self.store.engine.connect() as conn:
            row = conn.execute(_READ_OPERATION, {"op_id": op_id}).first()
        return Operation(**row._mapping) if row is not None else None

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the dispatcher and the heartbeat (call from the running event loop)."""
        self._loops = [asyncio.ensure_future(self._dispatch_loop()), asyncio.ensure_future(self._heartbeat_loop())]

    async def stop(self, grace: float = 0) -> None:
        """Take no more work; give running operations ``grace`` seconds, then cancel them (they resume at the next start).

        Returns within about ``grace`` + 1 s whatever the operations and loops are doing.
        """
        self._stopping = True
        self._wake.set()
        running = list(self._running.values())
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        left = await settle([*self._loops, *self._running.values()], timeout=1)
        if left:
            self.log.warning("%d operation tasks did not end when cancelled; leaving them", len(left))
        self.work.close()

    async def _dispatch_loop(self):
        last_recovery = 0.0
        while not self._stopping:
            self._wake.clear()
            try:
                if time.monotonic() - last_recovery >= self.settings.poll_interval:
                    last_recovery = time.monotonic()
                    self.recover()
                self._dispatch()
            except Exception:
                self.log.exception("Dispatching operations failed; trying again shortly")
            await nap(self._wake, self.settings.poll_interval)

    async def _heartbeat_loop(self):
        lease = self.settings.lease_seconds
        while not self._stopping:
            await asyncio.sleep(lease / 4)
            if not self._running:
                continue
            try:
                now = utcnow()
                with self.store.session() as s:
                    s.execute(
                        update(Seat)
                        .where(Seat.lock_owner.like(self.owner + "/%"))
                        .values(lock_expires=now + datetime.timedelta(seconds=lease))
                    )
                    s.execute(
                        update(Operation)
                        .where(Operation.owner == self.owner, Operation.status == Status.RUNNING)
                        .values(heartbeat=now)
                    )
            except Exception:
                self.log.exception("Renewing the student leases failed")

    # ------------------------------------------------------- claim and recover

    def _dispatch(self):
        free = self.settings.workers - len(self._running)
        if free <= 0 or self._stopping:
            return
        with self.store.engine.connect() as conn:
            rows = conn.execute(_QUEUED, {"b_limit": free * 4 + 32}).all()
        blocked: list[tuple[int, int]] = []
        for op_id, first, last, created in rows:
            if free <= 0:
                break
            last = last if last is not None else first
            if op_id in self._running or any(a <= last and first <= b for a, b in blocked):
                blocked.append((first, last))
                continue
            self._last_busy = time.monotonic()
            op = self.claim(op_id, first, last, created)
            if op is not None:
                self._launch(op_id, row=op)
                free -= 1
            else:
                blocked.append((first, last))

    def claim(self, op_id: str, first: int, last: int, created) -> Operation | None:
        """Take queued operation ``op_id``: its students' leases and ``running``, in one transaction.

        Returns the operation as it now stands (detached), or None if it cannot be taken now.
        """
        now = utcnow()
        params = {
            "op_id": op_id, "first": first, "last": last, "created": created, "now": now, "owner": self.owner,
            "lock": f"{self.owner}/{op_id}", "expires": now + datetime.timedelta(seconds=self.settings.lease_seconds),
        }
        take, older, start, start_returning = _claim_statements()
        returning = self.store.engine.dialect.update_returning
        with self.store.engine.connect() as conn:
            trans = conn.begin()
            try:
                if conn.execute(take, params).rowcount != last - first + 1:
                    trans.rollback()
                    return None
                if conn.execute(older, params).first() is not None:
                    trans.rollback()
                    return None
                # Read the clock once the leases are ours: on PostgreSQL ``take`` waits for the row locks of the
                # transaction that ends the previous operation, so a time read before would start this one
                # before that one finished.
                params["started"] = utcnow()
                if returning:
                    row = conn.execute(start_returning, params).first()
                elif conn.execute(start, params).rowcount == 1:
                    row = conn.execute(_READ_OPERATION, params).first()
                else:
                    row = None
                if row is None:
                    trans.rollback()
                    return None
                trans.commit()
                return Operation(**row._mapping)
            except DBAPIError as e:
                # PostgreSQL may pick us as a deadlock victim between overlapping ranges: just retry later.
                trans.rollback()
                self.log.debug("Claiming %s failed (%s); will retry", op_id, e.__class__.__name__)
                return None

    def recover(self) -> None:
        """Take over operations whose owner died and resume them; free the seats a dead process was preparing."""
        with self.store.Session() as s:
            preparing = s.scalars(select(Seat.lock_owner).where(Seat.lock_owner.like(f"%/{PREPARE}%"))).all()
        for lock in set(preparing):
            if owner_alive_locally(lock.rsplit("/", 1)[0]) is False:
                with self.store.session() as s:
                    s.execute(release(lock), execution_options=NO_SYNC)
                self.log.warning("Released seat lease %s of a process that died while preparing the seat", lock)
        with self.store.Session() as s:
            rows = s.execute(
                select(Operation.id, Operation.owner, Operation.heartbeat, Operation.student, Operation.student_last).where(
                    Operation.status == Status.RUNNING, Operation.owner != self.owner
                )
            ).all()
        now = utcnow()
        lease = datetime.timedelta(seconds=self.settings.lease_seconds)
        for op_id, owner, heartbeat, first, last in rows:
            if op_id in self._running or len(self._running) >= self.settings.workers or self._stopping:
                continue
            alive = owner_alive_locally(owner or "")
            if alive is None:
                alive = heartbeat is not None and heartbeat > now - lease
            if alive:
                continue
            last = last if last is not None else first
            with self.store.session() as s:
                got = s.execute(
                    update(Operation)
                    .where(Operation.id == op_id, Operation.owner == owner, Operation.status == Status.RUNNING)
                    .values(owner=self.owner, heartbeat=now)
                ).rowcount
                if got != 1:
                    continue
                s.execute(
                    update(Seat)
                    .where(
                        Seat.number.between(first, last),
                        or_(Seat.lock_owner.is_(None), Seat.lock_owner.like(f"{owner}/%"), Seat.lock_expires < now),
                    )
                    .values(lock_owner=f"{self.owner}/{op_id}", lock_expires=now + lease)
                )
            self.log.warning("Taking over operation %s left running by %s (dead)", op_id, owner)
            self._launch(op_id, recovered_from=owner)

    def _launch(self, op_id, recovered_from=None, row=None):
        self._events.setdefault(op_id, asyncio.Event())
        self._running[op_id] = asyncio.ensure_future(self._execute(op_id, recovered_from, row))

    # ------------------------------------------------------------------ running

    async def _execute(self, op_id, recovered_from=None, row=None):
        started = time.monotonic()
        lock = f"{self.owner}/{op_id}"
        status, error = Status.FAILED, None
        verb, run, end = "?", None, None
        try:
            row = row if row is not None else self.read(op_id)  # the claim's row, or (a recovered run) a read
            run = Run(row, lock, self.store, self.work.outbox.notify)
            verb = run.verb
            if recovered_from:
                if run.recoveries >= self.settings.max_recoveries:
                    raise WodError(f"given up after {run.recoveries} crashes while it ran")
                run.record("recover", {"from": recovered_from, "resumes_after": run.resumes_after()})
            await self.verbs[verb](run, self.work)
            status = Status.SUCCEEDED
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
            end = self._finish(op_id, lock, status, error, run)
        except Exception:
            self.log.exception("Recording the end of operation %s failed", op_id)
        self._running.pop(op_id, None)
        self._last_busy = time.monotonic()
        elapsed = time.monotonic() - started
        log = self.log.info if status == Status.SUCCEEDED else self.log.warning
        log("Operation %s %s %s in %.0f ms%s", op_id, verb, status, elapsed * 1000, f": {error}" if error else "")
        for listener in self._listeners:
            try:
                listener(run, verb, status, elapsed, recovered_from)
            except Exception:
                self.log.exception("A listener of the end of operation %s failed", op_id)
        event = self._events.pop(op_id, None)
        if event is not None:
            if end is not None and row is not None:
                # The finished row as just committed, for the callers waiting on it: a burst's hundred
                # waiters would otherwise each read it back.
                row.status, row.error, row.finished = end["status"], end["error"], end["finished"]
                row.steps, row.result, row.workshop = list(run.steps), dict(run.result), run.workshop
                event.op = row
            event.set()
        self._wake.set()

    def _finish(self, op_id, lock, status, error, run: Run | None) -> dict | None:
        """Record the end; the end's values when ``run`` committed them with its journal (it then knows the row as stored)."""
        end = {"status": status, "error": error, "finished": utcnow()}
        if run is not None:
            try:
                run.commit(end)
                return end
            except WodError as e:
                # The effects of the last step were refused (a Conflict found in the transaction): that fails it.
                end.update(status=Status.FAILED, error=e.message)
        # Core statements: nothing in a session to keep in sync, so no ORM work.
        with self.store.engine.begin() as conn:
            conn.execute(update(Operation).where(Operation.id == op_id).values(**end))
            conn.execute(release(lock))
        self.work.outbox.notify()
        return None
