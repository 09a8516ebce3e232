"""Who holds a seat: the one rule the REST admission, the mail ingress and the class tools ask.

A seat's holding is what its row says once the operations already queued
or running for it have run: a CREATE gives it to its customer for its
workshop, a CLEANUP frees it (or keeps it, for a ``reset: true`` workshop,
until a RESET of that workshop), a PURGE frees it. ``holding`` answers it
inside the caller's transaction, so a verb is admitted against the seat as
it will be when the verb runs.
"""

from dataclasses import dataclass

from sqlalchemy import and_, bindparam, func, select

from ...store.models import Operation, SeatState, Status, read_seat


def overlapping(first: int, last: int | None = None):
    """The WHERE clause of the operations whose students include any of ``first..last``."""
    last = first if last is None else last
    return and_(Operation.student <= last, func.coalesce(Operation.student_last, Operation.student) >= first)


@dataclass(frozen=True)
class Holding:
    """Seat ``student`` once its pending operations ran: ``state`` is free, active, kept or cleaning."""

    student: int
    state: str
    customer: str | None = None
    workshop: str | None = None
    #: the unfinished CREATE that gives the seat to ``customer``, if one does (else the seat's row does)
    pending_create: str | None = None

    @property
    def held(self) -> bool:
        """Whether the seat is anyone's (not free)."""
        return self.state != SeatState.FREE

    @property
    def active(self) -> bool:
        """The customer may log in (or will, once the pending CREATE ran)."""
        return self.state == SeatState.ACTIVE

    def to_json(self) -> dict:
        """The seat's state, customer and workshop, as the API shows them."""
        return {"state": self.state, "customer": self.customer, "workshop": self.workshop}


# Built once (a statement caches its own cache key): every request of a burst runs it.
_PENDING_FOR_SEAT = (
    select(Operation.id, Operation.verb, Operation.customer, Operation.workshop)
    .where(Operation.status.in_(Status.UNFINISHED), overlapping(bindparam("seat_number")))
    .order_by(Operation.created, Operation.id)
)
_HOLDING_CREATE = (
    select(Operation.id)
    .where(
        Operation.verb == "CREATE", Operation.student == bindparam("n"), Operation.student_last.is_(None),
        Operation.customer == bindparam("customer"), Operation.status == Status.SUCCEEDED,
    )
    .order_by(Operation.created.desc(), Operation.id.desc())
    .limit(1)
)


def folder_of(catalog, name: str | None) -> str | None:
    """The workshop folder ``name`` stands for (``CHLG-X`` may be ``WKSHP-X``'s); ``name`` when the catalog lacks it."""
    if not name:
        return None
    folder = catalog.workshop_or_none(name)[1]
    return folder or name


def same_workshop(catalog, a: str | None, b: str | None) -> bool:
    """Whether workshops ``a`` and ``b`` render into one folder (a ``CHLG-`` and its ``WKSHP-``); None matches only None."""
    return folder_of(catalog, a) == folder_of(catalog, b)


def holding(catalog, s, n: int) -> Holding:
    """Seat ``n`` once the operations already queued for it have run.

    ``s``: a session or a connection (plain column reads, no ORM objects).
    """
    st = read_seat(s, n)
    if st is None or st.state not in SeatState.HELD:
        state, customer, workshop = SeatState.FREE, None, None
    else:
        # A seat being cleaned stays held: its pending CLEANUP, RESET or PURGE decides below, and one whose
        # verb failed stays ``cleaning`` (held, not active) until a PURGE takes it back.
        state, customer, workshop = st.state, st.customer, st.workshop
    pending_create = None
    for op in s.execute(_PENDING_FOR_SEAT, {"seat_number": n}).all():
        if op.verb == "CREATE":
            state, customer, workshop, pending_create = SeatState.ACTIVE, op.customer, op.workshop, op.id
        elif op.verb == "CLEANUP":
            name = op.workshop or workshop
            ws, _, _ = catalog.workshop_or_none(name)
            if ws is not None and ws.reset:
                state, workshop, pending_create = SeatState.KEPT, name, None
            else:
                state, customer, workshop, pending_create = SeatState.FREE, None, None, None
        elif op.verb == "RESET":
            if state == SeatState.KEPT and same_workshop(catalog, workshop, op.workshop):
                state, customer, workshop = SeatState.FREE, None, None
        elif op.verb == "PURGE":
            state, customer, workshop, pending_create = SeatState.FREE, None, None, None
    return Holding(n, state, customer, workshop, pending_create)


def holding_create(s, h: Holding) -> str | None:
    """The CREATE operation that gave the seat to its holder: the pending one, else the last that succeeded."""
    if h.pending_create is not None:
        return h.pending_create
    if not h.active:
        return None
    return s.execute(_HOLDING_CREATE, {"n": h.student, "customer": h.customer}).scalar()
