"""One run of an operation and its journal: ``Run.step`` is the one way a verb does a step."""

import itertools

from sqlalchemy import bindparam, update

from ...store.models import SEATS, Operation, Seat, isoformat, utcnow

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


def release(lock: str):
    """The UPDATE that frees every student leased under ``lock``."""
    return update(Seat).where(Seat.lock_owner == lock).values(lock_owner=None, lock_expires=None)


# The statements of ``Run.commit``, built once (a statement caches its own cache key): the journal's UPDATE,
# whose SET comes from the parameters' names, and the release of the run's students, found by their numbers.
_JOURNAL = update(Operation.__table__).where(Operation.__table__.c.id == bindparam("op_id"))
_RELEASE = (
    update(SEATS)
    .where(SEATS.c.number.between(bindparam("first"), bindparam("last")), SEATS.c.lock_owner == bindparam("lock"))
    .values(lock_owner=None, lock_expires=None)
)


class Run:
    """What one run of an operation knows (its row, the steps journaled) and the journal it writes."""

    def __init__(self, op: Operation, lock: str, store, notify=None):
        self.id = op.id
        self.verb = op.verb
        self.student = op.student
        self.last = op.student_last if op.student_last is not None else op.student
        self.customer = op.customer
        self.email = op.email
        self.workshop = op.workshop
        self.result = dict(op.result or {})
        self.steps = list(op.steps or [])
        #: name -> entry of every step journaled done or skipped: a resumed run does not do them again
        self.journaled = {s["name"]: s for s in self.steps if s.get("status") in (DONE, SKIPPED)}
        self.recoveries = sum(1 for s in self.steps if s.get("name") == "recover")
        #: the seat as this run's rotate step read it (None: rotated in an earlier run)
        self.seat: dict | None = None
        self.lock = lock
        self.store = store
        self.notify = notify or (lambda: None)
        self._order = itertools.count()
        # Entries (with their order) and effects not committed yet.
        self._entries: list[tuple[int, dict]] = []
        self._effects: list = []

    @property
    def students(self) -> range:
        """The seats the operation covers (one, or a range)."""
        return range(self.student, self.last + 1)

    def step(self, name: str, work=None, effects=None, *, skip: str | None = None):
        """Do step ``name``, unless journaled already; an awaitable of its detail (the journaled one then).

        ``work()``: a coroutine function doing the step's work outside the
        database; it returns the step's detail (a JSON-able dict) or None.
        ``effects(conn, detail)``: the step's database effects (Core statements on
        ``conn``, see ``store.update_seat``), committed
        with its entry (see the module's docstring for when). ``skip``: a
        sentence; the step is journaled ``skipped`` with it and nothing runs.

        The step's place in the journal and its start are taken when this is
        called, so a step run beside others (``asyncio.ensure_future``) is
        journaled where it began.
        """
        if name in self.journaled:
            return _ready(self.journaled[name].get("detail"))
        if self._effects:
            self.commit()  # the previous step's effects land before this step's work
        order, started = next(self._order), utcnow()
        if skip is not None:
            self._entries.append((order, _entry(name, started, {"reason": skip}, SKIPPED)))
            return _ready(None)
        return self._do(order, started, name, work, effects)

    async def _do(self, order, started, name, work, effects):
        try:
            detail = await work() if work is not None else None
        except Exception as e:
            # The error itself (and what it carries for the journal, e.g. a hook's output) ends the operation.
            self._entries.append((order, _entry(name, started, getattr(e, "journal", None), FAILED, str(e))))
            raise
        self._entries.append((order, _entry(name, started, detail)))
        if effects is not None:
            self._effects.append(lambda conn: effects(conn, detail))
        return detail

    def record(self, name: str, detail: dict) -> None:
        """Journal an event of the run itself (``recover``) and commit it at once."""
        self._entries.append((next(self._order), _entry(name, utcnow(), detail)))
        self.commit()

    def commit(self, end: dict | None = None) -> None:
        """Commit the pending effects, entries and result; ``end``: the operation's final values too."""
        entries = [e for _, e in sorted(self._entries, key=lambda oe: oe[0])]
        steps = self.steps + entries
        # Effects that fail (a Conflict found in the transaction) fail the operation: never tried twice.
        pending, self._effects = self._effects, []
        with self.store.engine.begin() as conn:
            for effects in pending:
                effects(conn)
            # After the effects: they may set the workshop; the steps' work may have added to the result.
            values = {"steps": steps, "result": dict(self.result), "workshop": self.workshop, "heartbeat": utcnow()}
            if end is not None:
                values.update(end)
            # Core statements built once: every operation commits here two or three times, and the ORM's unit of
            # work (or even building the statement each time) cost more than the statements.
            conn.execute(_JOURNAL, {"op_id": self.id, **values})
            if end is not None:
                conn.execute(_RELEASE, {"lock": self.lock, "first": self.student, "last": self.last})
        self.steps = steps
        self.journaled.update((e["name"], e) for e in entries if e["status"] in (DONE, SKIPPED))
        self._entries = []
        self.notify()

    def resumes_after(self) -> list[str]:
        """The steps a resumed run will not do again, in the order they ran."""
        return [s["name"] for s in self.steps if s.get("status") in (DONE, SKIPPED) and s["name"] != "recover"]


async def _ready(value):
    return value


def forced_entry(force: bool) -> list:
    """The journal a submitted operation starts with: a ``force`` entry when it was sent with force."""
    return [_entry("force", utcnow(), {"reason": "sent with force: a seat its customer holds is provisioned again"})] if force else []


def _entry(name, started, detail=None, status=DONE, error=None) -> dict:
    entry = {"name": name, "status": status, "started": isoformat(started, "milliseconds"), "finished": isoformat(utcnow(), "milliseconds")}
    if detail is not None:
        entry["detail"] = detail
    if error is not None:
        entry["error"] = error
    return entry
