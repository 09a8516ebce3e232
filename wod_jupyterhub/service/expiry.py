"""Each seat has an end: ``ends_at`` set at CREATE, moved by an extension, and the CLEANUP the service runs itself past it.

The portal counts a workshop's time and sends CLEANUP at its end; when it
does not (its expiry run failed), the seat would never be freed. The
service is the safety net: a seat still active ``c.Wod.expiry_grace``
seconds past its ``ends_at`` gets a CLEANUP queued like the portal's, its
journal opening with an ``expired`` entry. That CLEANUP is an ordinary
durable operation (callbacks, restart, recovery); the portal's own CLEANUP
arriving later is answered with it (``repeat``), so nothing runs twice.
"""

import asyncio
import datetime
import uuid

from sqlalchemy import insert, select, update

from ..errors import BadRequest, Conflict, NotFound
from ..store.models import SEATS, Operation, SeatState, Status, isoformat, utcnow
from ..waiting import nap

#: the journal entry a CLEANUP of an expired seat starts with
EXPIRED = "expired"
#: the verb of an extension's journal (an operation recorded done: it is one UPDATE, nothing to queue)
EXTEND = "EXTEND"
#: longest extension at once, and the farthest end a seat may be given
MAX_EXTEND_MINUTES = 7 * 24 * 60

_ADD_OPERATION = insert(Operation.__table__)


def seat_end(wod, ws, requested: datetime.datetime | None = None, now: datetime.datetime | None = None):
    """When a seat given now ends: ``requested`` (the CREATE's), else now + the workshop's ``duration``, else
    now + ``c.Wod.default_duration`` (0: no end, None)."""
    if requested is not None:
        return requested
    hours = getattr(ws, "duration", None) or wod.default_duration
    if not hours:
        return None
    return (now or utcnow()) + datetime.timedelta(hours=hours)


def parse_time(text: str, field: str = "ends_at") -> datetime.datetime:
    """An ISO 8601 time as naive UTC (the database's); one without a zone is taken as UTC. BadRequest otherwise."""
    try:
        t = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        raise BadRequest(f"Field {field!r} must be a time in ISO 8601 (2026-12-07T10:00:00Z), not {str(text)[:40]!r}.", code="bad_field") from None
    if t.tzinfo is not None:
        t = t.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return t.replace(microsecond=0)


def check_end(ends_at: datetime.datetime, now: datetime.datetime | None = None) -> datetime.datetime:
    """Refuse (400) an end in the past or more than ``MAX_EXTEND_MINUTES`` ahead."""
    now = now or utcnow()
    if ends_at <= now:
        raise BadRequest(f"The end {isoformat(ends_at)} is already past.", code="bad_field")
    if ends_at > now + datetime.timedelta(minutes=MAX_EXTEND_MINUTES):
        raise BadRequest(f"The end {isoformat(ends_at)} is more than {MAX_EXTEND_MINUTES // 1440} days ahead.", code="bad_field")
    return ends_at


def seconds_left(ends_at: datetime.datetime | None, now: datetime.datetime | None = None) -> int | None:
    if ends_at is None:
        return None
    return max(0, int((ends_at - (now or utcnow())).total_seconds()))


def extend(store, n: int, *, minutes: int | None = None, ends_at: datetime.datetime | None = None, who: str | None = None) -> dict:
    """Move active seat ``n``'s end by ``minutes`` (from its end, or from now when it has none or is past), or to
    ``ends_at``; journaled as an ``EXTEND`` operation, done. Conflict (409) when the seat is not active."""
    if (minutes is None) == (ends_at is None):
        raise BadRequest("An extension takes either 'minutes' or 'ends_at'.", code="missing_field")
    if minutes is not None and not 1 <= minutes <= MAX_EXTEND_MINUTES:
        raise BadRequest(f"Field 'minutes' must be between 1 and {MAX_EXTEND_MINUTES}, not {minutes}.", code="bad_field")
    from .operations.holders import overlapping  # here: the operations package imports this module

    now = utcnow()
    with store.engine.begin() as conn:
        row = conn.execute(
            select(SEATS.c.state, SEATS.c.customer, SEATS.c.workshop, SEATS.c.ends_at).where(SEATS.c.number == n)
        ).first()
        if row is None or row.state != SeatState.ACTIVE:
            raise Conflict(f"student {n} is not active (it is {row.state if row else SeatState.FREE}): only an active seat's end moves")
        busy = conn.execute(
            select(Operation.id).where(Operation.status.in_(Status.UNFINISHED), overlapping(n)).limit(1)
        ).first()
        if busy is not None:
            raise Conflict(f"student {n} has operation {busy.id} queued or running; extend it once that ended")
        before = row.ends_at
        if minutes is not None:
            base = before if before is not None and before > now else now
            new = check_end(base + datetime.timedelta(minutes=minutes), now)
        else:
            new = check_end(ends_at, now)
        # Only while the seat is still active: a CLEANUP claimed in between wins.
        changed = conn.execute(
            update(SEATS).where(SEATS.c.number == n, SEATS.c.state == SeatState.ACTIVE).values(ends_at=new)
        ).rowcount
        if changed != 1:
            raise Conflict(f"student {n} stopped being active meanwhile; nothing was extended")
        detail = {"from": isoformat(before), "to": isoformat(new), "by": who}
        if minutes is not None:
            detail["minutes"] = minutes
        op_id = uuid.uuid4().hex
        stamp = isoformat(now, "milliseconds")
        conn.execute(
            _ADD_OPERATION,
            dict(
                id=op_id, verb=EXTEND, student=n, customer=row.customer, workshop=row.workshop, status=Status.SUCCEEDED,
                steps=[{"name": "extend", "status": "done", "started": stamp, "finished": stamp, "detail": detail}],
                result={"ends_at": isoformat(new)}, created=now, started=now, finished=now,
            ),
        )
    return {"student": n, "ends_at": isoformat(new), "previous": isoformat(before), "seconds_left": seconds_left(new), "operation": op_id}


def expired_entry(ends_at: datetime.datetime, grace: float) -> dict:
    """The first entry of the journal of a CLEANUP the service queued for an expired seat."""
    stamp = isoformat(utcnow(), "milliseconds")
    return {
        "name": EXPIRED, "status": "done", "started": stamp, "finished": stamp,
        "detail": {"ends_at": isoformat(ends_at), "grace_seconds": grace, "reason": "the seat's time was up"},
    }


_LAST_CHANGE = (
    select(Operation.id, Operation.verb, Operation.customer, Operation.status, Operation.steps)
    .where(Operation.verb.in_(("CREATE", "CLEANUP", "RESET", "PURGE")))
    .order_by(Operation.created.desc(), Operation.id.desc())
    .limit(1)
)


def expiry_repeat(s, n: int, customer) -> str | None:
    """The CLEANUP the service ran (or runs) for expired seat ``n`` that a CLEANUP for ``customer`` now repeats.

    It does when the last operation to change the seat's hands is that
    CLEANUP, for the same customer, and did not fail (a failed one leaves
    the seat ``cleaning``: the portal's CLEANUP is then a retry and runs).
    """
    from .operations.holders import overlapping  # here: the operations package imports this module

    row = s.execute(_LAST_CHANGE.where(overlapping(n))).first()
    if row is None or row.verb != "CLEANUP" or row.status == Status.FAILED or row.customer != customer:
        return None
    steps = row.steps or []
    return row.id if steps and steps[0].get("name") == EXPIRED else None


class Expiry:
    """The loop that queues the CLEANUP of every seat past its end and the grace (every ``c.Wod.expiry_interval`` s)."""

    def __init__(self, wod, store, engine, log):
        self.wod = wod
        self.store = store
        self.engine = engine
        self.log = log
        self._stop = asyncio.Event()

    def expired(self, now: datetime.datetime | None = None) -> list:
        """Active seats past ``ends_at`` + the grace, with no operation queued or running: (number, customer, workshop, ends_at)."""
        limit = (now or utcnow()) - datetime.timedelta(seconds=self.wod.expiry_grace)
        busy = select(Operation.student).where(Operation.status.in_(Status.UNFINISHED))
        q = select(SEATS.c.number, SEATS.c.customer, SEATS.c.workshop, SEATS.c.ends_at).where(
            SEATS.c.state == SeatState.ACTIVE, SEATS.c.ends_at.is_not(None), SEATS.c.ends_at < limit, SEATS.c.number.not_in(busy),
        ).order_by(SEATS.c.ends_at)
        with self.store.engine.connect() as conn:
            return conn.execute(q.limit(500)).all()

    async def pass_once(self) -> list:
        """Queue the CLEANUP of each expired seat; the operations queued (or repeated)."""
        queued = []
        for n, customer, workshop, ends_at in await asyncio.to_thread(self.expired):
            try:
                op = await self.engine.submit(
                    "CLEANUP", n, customer=customer, workshop=workshop, journal=[expired_entry(ends_at, self.wod.expiry_grace)]
                )
            except (Conflict, NotFound, BadRequest) as e:
                self.log.warning("student%s ended at %s, but its CLEANUP was refused: %s", n, isoformat(ends_at), e)
                continue
            if not getattr(op, "repeat", False):
                self.log.info("student%s ended at %s (+%.0f s of grace): CLEANUP %s queued", n, isoformat(ends_at), self.wod.expiry_grace, op.id)
            queued.append(op)
        return queued

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.pass_once()
            except Exception:
                self.log.exception("Looking for seats past their end failed; trying again shortly")
            await nap(self._stop, self.wod.expiry_interval)

    def stop(self) -> None:
        self._stop.set()
