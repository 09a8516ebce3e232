"""The seat's own view, ``GET api/seat``, and the instructor's announcements (``api/announcements``).

``api/seat`` is what a participant's JupyterLab shows (time left,
progress, announcements, the end screen). Their server asks it with its own
``JUPYTERHUB_API_TOKEN``; the service resolves the token with the hub and
answers that seat only. It is the one path a student's own process may
reach (``BaseHandler.refuse_students`` lets ``api/seat*`` through): the
token, not the connection, says whose seat it is.
"""

import asyncio
import re

from sqlalchemy import insert, select

from ..errors import BadRequest, Forbidden, NotFound
from ..store.models import Announcement, Seat, SeatState, isoformat, utcnow
from ..workshops.catalog import parse_workshop_name
from .dashboard import Browser
from .expiry import seconds_left
from .handlers import OPENAPI, SCOPE_OPERATE, BaseHandler, json_object, request_fields

ANNOUNCEMENT_FIELDS = request_fields(OPENAPI, "AnnouncementRequest")
#: longest announcement, in characters
MAX_ANNOUNCEMENT = 2000
#: announcements a seat's view carries at most (the latest)
SEAT_ANNOUNCEMENTS = 50
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # newlines and tabs are text


def seat_state(st, now) -> str:
    """"active", "ended" (past its end, or being taken back) or "free", as the participant's bar shows it."""
    if st is None or st.state == SeatState.FREE:
        return "free"
    if st.state == SeatState.ACTIVE and (st.ends_at is None or st.ends_at > now):
        return "active"
    return "ended"


def announcements_for(s, workshop: str | None, since) -> list:
    """The announcements of ``workshop`` made since ``since`` (the seat's assignment), oldest first."""
    if not workshop or since is None:
        return []
    rows = s.scalars(
        select(Announcement).where(Announcement.workshop == workshop, Announcement.created >= since)
        .order_by(Announcement.id.desc()).limit(SEAT_ANNOUNCEMENTS)
    ).all()
    return [{"id": a.id, "at": isoformat(a.created), "text": a.text} for a in reversed(rows)]


async def seat_view(app, n: int) -> dict:
    """What ``api/seat`` answers for seat ``n`` (see the OpenAPI document's ``Seat``)."""
    now = utcnow()
    with app.store.Session() as s:
        st = s.get(Seat, n)
        state = seat_state(st, now)
        workshop = st.workshop if st is not None and state != "free" else None
        news = announcements_for(s, workshop, st.assigned_at if st is not None else None)
    ends_at = st.ends_at if st is not None and state != "free" else None
    progress = await app.progress.get(n, workshop) if state == "active" else app.progress.cached(n, workshop)
    steps = await asyncio.get_running_loop().run_in_executor(app.steps.pool, app.steps.counts, n) if workshop else None
    wod = app.wod
    return {
        "student": n,
        "workshop": workshop,
        "state": state,
        "ends_at": isoformat(ends_at),
        "seconds_left": seconds_left(ends_at, now),
        "warn_at": list(wod.warn_at),
        "poll_seconds": wod.poll_seconds,
        "announcements": news,
        "progress": progress,
        "end": {"message": wod.end_message, "url": wod.end_url or None},
        **({"steps": steps} if steps else {}),
    }


async def seat_of_request(handler) -> int:
    """The seat whose own server's token the request carries (``Authorization: token …``); 403 with a sentence otherwise.

    The token is resolved by the hub; only a user ``student<N>`` of this
    backend's range passes (an admin's token, a service's or none: 403).
    """
    model = await handler.app.hub_auth.get_user(handler, sync=False)
    if not model:
        raise Forbidden("This needs the token of a seat's own server (header 'Authorization: token <token>').", code="no_seat_token")
    n = handler.app.wod.seat(model.get("name") or "") if model.get("kind", "user") == "user" and not model.get("admin") else None
    if n is None:
        who = model.get("name") or "this token"
        raise Forbidden(f"{who} holds no seat: api/seat answers a seat's own server only.", code="not_a_seat")
    handler.caller = model
    return n


class SeatOwnHandler(BaseHandler):
    """The base of ``api/seat*``: the seat of the token's owner, for its own server's token only.

    These are the one paths a student's own process may reach (a seat's
    server runs as its student): the token, not the connection, says whose
    seat it is, so ``authenticate`` does not refuse students' connections.
    """

    async def authenticate(self):
        self.caller = None
        self.seat = await seat_of_request(self)


class SeatHandler(SeatOwnHandler):
    """``GET api/seat``."""

    async def get(self):
        self.send(await seat_view(self.app, self.seat))


def parse_announcement(raw: bytes) -> tuple[str, str]:
    """(workshop, text) of an announcement's body; BadRequest with a sentence otherwise."""
    body = json_object(raw)
    unknown = sorted(set(body) - set(ANNOUNCEMENT_FIELDS))
    if unknown:
        raise BadRequest(f"Unknown field(s) for an announcement: {', '.join(unknown)}.", code="bad_field")
    workshop, text = body.get("workshop"), body.get("text")
    if not isinstance(workshop, str) or not isinstance(text, str):
        raise BadRequest("An announcement takes a 'workshop' and a 'text', both strings.", code="missing_field")
    parse_workshop_name(workshop)
    text = text.strip()
    if not text or len(text) > MAX_ANNOUNCEMENT:
        raise BadRequest(f"Field 'text' must hold 1 to {MAX_ANNOUNCEMENT} characters.", code="bad_field")
    if _CONTROL.search(text):
        raise BadRequest("Field 'text' must not hold control characters (newlines and tabs are fine).", code="bad_field")
    return workshop, text


def announce(app, raw: bytes, caller: dict) -> dict:
    """Store an announcement for every seat of its workshop; the answer: the announcement and how many seats see it now."""
    workshop, text = parse_announcement(raw)
    folder = app.catalog.workshop_or_none(workshop)[1]
    if folder is None:
        raise NotFound(f"There is no workshop {workshop}.")
    now = utcnow()
    with app.store.engine.begin() as conn:
        new_id = conn.execute(
            insert(Announcement.__table__).values(workshop=workshop, text=text, author=caller.get("name"), created=now)
        ).inserted_primary_key[0]
        seats = conn.execute(
            select(Seat.number).where(Seat.workshop == workshop, Seat.state == SeatState.ACTIVE)
        ).all()
    app.log.info("%s announced to %s (%d active seats): %r", caller.get("name") or "a token", workshop, len(seats), text[:80])
    return {"id": new_id, "workshop": workshop, "at": isoformat(now), "text": text, "seats": len(seats)}


def list_announcements(app, workshop: str | None) -> list:
    q = select(Announcement).order_by(Announcement.id.desc()).limit(200)
    if workshop:
        q = q.where(Announcement.workshop == workshop)
    with app.store.Session() as s:
        return [
            {"id": a.id, "workshop": a.workshop, "at": isoformat(a.created), "text": a.text, "author": a.author}
            for a in s.scalars(q)
        ]


class AnnouncementsHandler(BaseHandler):
    """``POST api/announcements`` (operate scope) and ``GET api/announcements`` (read scope)."""

    async def get(self):
        workshop = self.get_query_argument("workshop", None) or None
        self.send({"announcements": list_announcements(self.app, workshop)})

    async def post(self):
        if not self.can_operate:
            raise Forbidden(f"The token of {self.caller.get('name') or 'the caller'} lacks the scope {SCOPE_OPERATE} this call needs.")
        self.send(announce(self.app, self.request.body, self.caller), 201)


class DashboardAnnounceHandler(Browser):
    """``dashboard/announce``: the dashboard's form, with the admin's browser login."""

    redirect_to_login = False

    async def post(self):
        if SCOPE_OPERATE not in set(self.caller.get("scopes") or []):
            raise Forbidden(f"{self.caller.get('name')} may look at the dashboard but not announce: that needs the scope {SCOPE_OPERATE}.")
        self.send(announce(self.app, self.request.body, self.caller), 201)


def routes(prefix: str) -> list:
    p = re.escape(prefix)
    return [
        (rf"{p}api/seat", SeatHandler),
        (rf"{p}api/announcements", AnnouncementsHandler),
        (rf"{p}dashboard/announce", DashboardAnnounceHandler),
    ]
