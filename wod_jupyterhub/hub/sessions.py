"""A hub login session ends when its seat changes hands: the seat generation in the hub's ``cookie_id``.

The hub's login cookie holds nothing but the user's ``orm.User.cookie_id``
(signed); a cookie is valid while that value matches the row. So the
generation of the seat a session was opened under is written into the
``cookie_id`` itself (``wodg<generation>.<random token>``), in the hub's own
database. Whenever the hub sees that ``Student.generation`` (bumped by the
service on every CREATE, CLEANUP, PURGE and RESET) differs from the one in
the ``cookie_id``, it draws a new ``cookie_id``: every cookie issued before
stops matching, in every browser at once, and the user must log in again
with the new participant's password. The same step deletes the tokens the
previous holder could still use (OAuth tokens behind the server's cookie,
tokens made on the token page), keeping only running servers' own tokens,
which the service ends by stopping the server.

``WodAuthenticator`` does it in three places:

- ahead, every ``session_sweep_interval`` seconds, for the seats that changed
  hands since (:func:`changed_hands`), all in one commit: so the first login
  of a class writes nothing (a write per login cost a room's burst 1.8 ms of
  the hub's one thread each);
- in ``authenticate``, before the hub sets the new participant's cookie, for a
  seat that changed hands since the last sweep;
- in ``refresh_user``, which the hub calls at most every ``auth_refresh_age``
  seconds (practically every request here, a primary-key read) for each user
  making requests, returning False so the old cookie gets the login page.
  ``refresh_user`` alone could not do it: it is asked about a user, not a
  cookie, so it cannot tell the old participant's cookie from the new one's;
  the ``cookie_id`` can.

Keeping the generation in the hub's database (not in memory) means a hub
restart neither logs everyone out nor forgets a change. The service, for its
part, stops the server and revokes the user's tokens through the hub API when
the seat changes hands.

The login cookie's lifetime is the hub's ``c.JupyterHub.cookie_max_age_days``
(checked against the signed timestamp in the cookie on every request; also
the default lifetime of the OAuth tokens behind the servers' cookies), set
to the length of a workshop in ``jupyterhub_config.py``: 4 hours
(``4 / 24``), not JupyterHub's two weeks.
"""

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


def end_sessions(db, orm_user, generation: int, keep=()) -> str:
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
