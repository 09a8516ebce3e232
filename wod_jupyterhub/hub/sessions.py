"""A hub login session ends when its seat changes hands: the seat generation in the hub's ``cookie_id``."""

import asyncio

from sqlalchemy.exc import SQLAlchemyError

from ..config import student_number
from . import internals

#: prefix of a ``cookie_id`` that carries the seat generation it was issued under
SESSION_TAG = "wodg"


def session_generation(cookie_id: str | None):
    """The seat generation a hub ``cookie_id`` was issued under; None if it carries none."""
    if not cookie_id or not cookie_id.startswith(SESSION_TAG):
        return None
    head, _, _ = cookie_id[len(SESSION_TAG) :].partition(".")
    return int(head) if head.isdigit() else None


def new_cookie_id(generation: int) -> str:
    """A fresh ``cookie_id`` that carries seat ``generation``."""
    return f"{SESSION_TAG}{generation}.{internals.random_token()}"


def revoke_sessions(db, orm_user, generation: int, keep=()) -> str:
    """Draw ``orm_user`` a new ``cookie_id`` of ``generation`` and delete its tokens but ``keep`` (ids); not committed.

    Returns what was ended, for the caller's log line.
    """
    old = session_generation(internals.cookie_id(orm_user))
    internals.set_cookie_id(orm_user, new_cookie_id(generation))
    revoked = internals.revoke_tokens(db, orm_user, keep)
    return f"sessions of seat generation {old} ended, {revoked} token(s) revoked"


def changed_hands(users, generations: dict) -> list:
    """``[(user, generation)]``: the hub ``users`` whose ``cookie_id`` carries another generation than their seat's.

    ``generations``: ``{seat number: generation}`` as the wod database has
    them now. A user whose ``cookie_id`` carries no generation yet is left
    to ``add_user``, and one without a seat to ``refresh_user``.
    """
    changed = []
    for user in users:
        n = student_number(user.name)
        if n is None or n not in generations:
            continue
        tagged = session_generation(internals.cookie_id(user))
        if tagged is not None and tagged != generations[n]:
            changed.append((user, generations[n]))
    return changed


async def keep_sweeping(sweep, interval: float, log) -> None:
    """Await ``sweep()`` every ``interval`` seconds, for ever; a failure is logged once until a sweep works again.

    Logins and requests check their seat themselves meanwhile (and fail
    closed), so a failing sweep costs speed, not safety; a wod database that
    is down for an hour must not write a line every interval.
    """
    failing = False
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep()
        except SQLAlchemyError as e:
            if not failing:
                log.error("Cannot look for seats that changed hands: the wod database is unavailable: %s", e.__class__.__name__)
            failing = True
        except Exception:
            if not failing:
                log.exception("The look for seats that changed hands failed")
            failing = True
        else:
            if failing:
                log.info("Looking for seats that changed hands again")
            failing = False
