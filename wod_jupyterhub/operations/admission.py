"""Whether a request may be queued: the checks ``Engine.submit`` runs before it writes anything.

A user's mistake raises a ``WodError`` (a sentence and its HTTP status) and
changes nothing.
"""

from sqlalchemy import and_, bindparam, func, select

from ..catalog import parse_workshop_name
from ..errors import Conflict, Unprocessable
from ..store import Operation, Seat, Status, read_seat


def overlapping(first: int, last: int | None = None):
    """The WHERE clause of the operations whose students include any of ``first..last``."""
    last = first if last is None else last
    return and_(Operation.student <= last, func.coalesce(Operation.student_last, Operation.student) >= first)


# Built once (a statement caches its own cache key): every request of a burst runs it.
_PENDING_FOR_SEAT = (
    select(Operation.verb, Operation.customer, Operation.workshop)
    .where(Operation.status.in_(Status.UNFINISHED), overlapping(bindparam("seat_number")))
    .order_by(Operation.created, Operation.id)
)


def check_request(work, verb, student, student_last=None, workshop=None):
    """Raise the WodError a request deserves before anything is written; return its workshop name."""
    wod, catalog = work.wod, work.catalog
    wod.check_student(student)
    if student_last is not None:
        wod.check_student(student_last)
        if student_last < student:
            raise Unprocessable(f"the student range {student},{student_last} is empty (min is above max)")
    if verb == "CREATE":
        ws, folder, _ = catalog.workshop(workshop)
        check_active(ws, folder)
        catalog.get().check_student(ws, student, wod)
    elif verb == "RESET":
        ws, folder, _ = catalog.workshop(workshop)
        if not ws.reset:
            raise Unprocessable(f"workshop {folder} has no reset: true in wod.yml, so it cannot be RESET")
        for n in {student, student_last if student_last is not None else student}:
            catalog.get().check_student(ws, n, wod)
    elif verb == "CLEANUP" and workshop:
        parse_workshop_name(workshop)  # the seat knows its workshop; a named one must at least be well formed
    return workshop


def check_seat(work, s, verb, n: int, customer) -> None:
    """In the submitting transaction: a CREATE or CLEANUP names the customer who will hold seat ``n`` by then."""
    if verb in ("CREATE", "CLEANUP"):
        check_holder(n, holder_after_pending(work, s, n), customer)


def holder_after_pending(work, s, n: int):
    """Who holds seat ``n`` once the operations already queued for it have run (None: free).

    ``s``: a session or a connection (plain column reads, no ORM objects).
    """
    st = read_seat(s, n)
    holder = st.customer if st is not None and st.state in Seat.HELD else None
    # The workshop the seat is kept for, if it is: only a RESET of that one frees it.
    kept = st.workshop if st is not None and st.state == Seat.KEPT else None
    pending = s.execute(_PENDING_FOR_SEAT, {"seat_number": n}).all()
    for op in pending:
        if op.verb == "CREATE":
            holder, kept = op.customer, None
        elif op.verb == "CLEANUP":
            name = op.workshop or (st.workshop if st else None)
            ws, _, _ = work.catalog.workshop_or_none(name)
            if ws is not None and ws.reset:
                kept = name
            else:
                holder = None
        elif op.verb == "RESET":
            if kept is not None and work.catalog.workshop_or_none(kept)[1] == work.catalog.workshop_or_none(op.workshop)[1]:
                holder, kept = None, None
        else:
            holder, kept = None, None
    return holder


def check_holder(n: int, holder, customer) -> None:
    if holder is not None and holder != customer:
        raise Conflict(f"student {n} is held by another customer, not by {customer}; CLEANUP or PURGE it first")


def check_active(ws, folder):
    if not ws.meta:
        # no wod.yml, or one that cannot be read: that is the reason, not "active: false"
        raise Unprocessable(f"workshop {folder} cannot be used: {' '.join(ws.blocking)}", code="workshop_unusable")
    if not ws.active:
        raise Unprocessable(f"workshop {folder} is not active (wod.yml says active: false)")
