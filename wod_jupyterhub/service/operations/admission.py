"""Whether a request may be queued: the checks ``Engine.submit`` runs before it writes anything.

A user's mistake raises a ``WodError`` (a sentence and its HTTP status) and
changes nothing.
"""

from ...errors import Conflict, Unprocessable
from ...workshops.catalog import parse_workshop_name
from .holders import holding, holding_create, overlapping, same_workshop

__all__ = ["check_active", "check_holder", "check_request", "check_seat", "overlapping"]


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
    elif verb in ("CLEANUP", "PURGE", "PASSWORD") and workshop:
        parse_workshop_name(workshop)  # the seat knows its workshop; a named one must at least be well formed
    return workshop


def check_seat(work, s, verb, n: int, customer, workshop=None, *, single=True, force=False) -> str | None:
    """In the submitting transaction: may the verb be queued for seat ``n`` as it will be by then?

    Returns the id of the CREATE that a repeated CREATE repeats, or of the
    CLEANUP the service ran for an expired seat that the portal's CLEANUP
    repeats (the caller answers it and queues nothing), else None. Raises ``Conflict`` (409, a
    sentence naming both sides) when the verb would take the seat from its
    holder or names another workshop than the one the seat holds.
    ``single``: the verb names seat ``n`` alone (a RESET over a range picks its
    seats itself).
    """
    h = holding(work.catalog, s, n)
    if verb == "CREATE":
        check_holder(n, h.customer if h.held else None, customer)
        if h.active and not force:
            if same_workshop(work.catalog, h.workshop, workshop):
                repeated = holding_create(s, h)
                if repeated is not None:
                    return repeated
            raise Conflict(
                f"student {n} is active for customer {customer} with {h.workshop}; a CREATE for {workshop} would"
                " erase their home: send force to re-provision it, or CLEANUP it first"
            )
        return None
    if verb == "CLEANUP":
        from ..expiry import expiry_repeat

        # The service cleaned the seat up at its end already: the portal's CLEANUP is answered with that one.
        repeated = expiry_repeat(s, n, customer)
        if repeated is not None:
            return repeated
    if verb in ("CLEANUP", "PASSWORD"):
        check_holder(n, h.customer if h.held else None, customer)
    if workshop and h.held and single and not same_workshop(work.catalog, h.workshop, workshop):
        raise Conflict(
            f"{verb} names {workshop}, but student {n} holds {h.workshop}: nothing was done; name the seat's workshop"
            + (" (or none: a PURGE naming no workshop takes any seat back)" if verb == "PURGE" else "")
        )
    if verb == "PASSWORD" and not h.active:
        raise Conflict(f"student {n} is not active (it is {h.state}): only an active seat's password is renewed")
    return None


def check_holder(n: int, holder, customer) -> None:
    """Refuse (409) a request for seat ``n`` by a customer other than the one holding it."""
    if holder is not None and holder != customer:
        raise Conflict(f"student {n} is held by another customer, not by {customer}; CLEANUP or PURGE it first")


def check_active(ws, folder):
    """Refuse (422) a workshop whose ``wod.yml`` says it is not active."""
    if not ws.meta:
        # no wod.yml, or one that cannot be read: that is the reason, not "active: false"
        raise Unprocessable(f"workshop {folder} cannot be used: {' '.join(ws.blocking)}", code="workshop_unusable")
    if not ws.active:
        raise Unprocessable(f"workshop {folder} is not active (wod.yml says active: false)")
