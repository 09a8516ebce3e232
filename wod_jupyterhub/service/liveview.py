"""The instructor's live class view: every active seat's progress, activity and time left, and the actions on seats.

Every ``c.Wod.live_interval`` seconds the progress of each active seat is
measured (``progress.Progress``: the completion workers, bounded, off the
event loop; a seat whose notebooks did not change is not read again). The
view adds the hub's last activity, the time left and how long the seat's
progress has not moved. The actions (extend, a new password, CLEANUP)
take a seat or a range; each is journaled as an operation. A participant's
notebook is rendered read-only from disk (``notebookview.py``).
"""

import asyncio
import re
import time

from sqlalchemy import select

from ..errors import BadRequest, Conflict, Forbidden, NotFound, WodError
from ..store.models import Seat, SeatState, isoformat, utcnow
from ..waiting import nap
from .dashboard import Browser
from .expiry import extend, parse_time, seconds_left
from .handlers import SCOPE_OPERATE, BaseHandler, json_object
from .overview import histogram

#: seconds the hub's list of users (their last activity) is reused
ACTIVITY_TTL = 30.0
#: seats one action may name at most
MAX_RANGE = 500
ACTIONS = ("extend", "password", "cleanup")


def _live_seats(store) -> list:
    with store.engine.connect() as conn:
        return conn.execute(
            select(Seat.number, Seat.workshop, Seat.customer, Seat.ends_at, Seat.assigned_at)
            .where(Seat.state == SeatState.ACTIVE).order_by(Seat.number)
        ).all()


class LiveView:
    """The live measures of the active seats, and the view built from them."""

    def __init__(self, app):
        self.app = app
        self.wod = app.wod
        self.progress = app.progress
        #: n -> (workshop, executed, monotonic time it last changed)
        self._moved: dict[int, tuple] = {}
        self._activity: tuple[float, dict] = (0.0, {})
        self._stop = asyncio.Event()
        self.passes = 0

    async def measure_all(self) -> int:
        """Measure the progress of every active seat (at most ``progress_concurrency`` at once); how many."""
        seats = await asyncio.to_thread(_live_seats, self.app.store)
        # A measure younger than half the interval (asked by the seat's own bar) is fresh enough.
        fresh = self.wod.live_interval / 2
        results = await asyncio.gather(*(self.progress.get(s.number, s.workshop, fresh) for s in seats), return_exceptions=True)
        for s, value in zip(seats, results):
            if isinstance(value, dict):
                self.note(s.number, s.workshop, value)
        live = {s.number for s in seats}
        for n in [n for n in self._moved if n not in live]:
            self._moved.pop(n, None)
            self.progress.forget(n)
        self.passes += 1
        return len(seats)

    def note(self, n: int, workshop: str, value: dict) -> None:
        """Remember when seat ``n``'s executed cells last changed."""
        seen = self._moved.get(n)
        if seen is None or seen[0] != workshop or seen[1] != value["executed"]:
            self._moved[n] = (workshop, value["executed"], time.monotonic())

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.measure_all()
            except Exception:
                self.app.log.exception("Measuring the live progress of the active seats failed; trying again later")
            await nap(self._stop, self.wod.live_interval)

    def stop(self) -> None:
        self._stop.set()

    async def activity(self) -> dict:
        """The hub's last activity per user name (cached ``ACTIVITY_TTL`` s); empty without a hub."""
        at, known = self._activity
        hub = self.app.hub
        if not hub.configured or time.monotonic() - at < ACTIVITY_TTL:
            return known
        from .hubclient import HubAPIError

        try:
            known = await hub.last_activity()
        except HubAPIError as e:
            self.app.log.warning("Asking the hub for its users' last activity failed: %s", e)
        self._activity = (time.monotonic(), known)
        return known

    async def view(self, workshop: str | None = None) -> dict:
        """The live class view (``GET api/live``)."""
        seats = await asyncio.to_thread(_live_seats, self.app.store)
        if workshop:
            seats = [s for s in seats if s.workshop == workshop]
        activity = await self.activity()
        now, mono = utcnow(), time.monotonic()
        stalled_after = self.wod.stalled_minutes * 60
        rows, by_workshop = [], {}
        for s in seats:
            value = self.progress.cached(s.number, s.workshop)
            moved = self._moved.get(s.number)
            still = int((mono - moved[2]) // 60) if moved is not None and moved[0] == s.workshop else None
            rows.append({
                "student": s.number, "workshop": s.workshop, "customer": s.customer,
                "since": isoformat(s.assigned_at), "ends_at": isoformat(s.ends_at), "seconds_left": seconds_left(s.ends_at, now),
                "progress": value, "last_activity": activity.get(f"student{s.number}"),
                "unchanged_minutes": still,
                "stalled": still is not None and moved is not None and mono - moved[2] >= stalled_after,
            })
            if value is not None:
                by_workshop.setdefault(s.workshop, []).append(int(value["ratio"] * 100))
        return {
            "generated": isoformat(now),
            "interval": self.wod.live_interval,
            "stalled_minutes": self.wod.stalled_minutes,
            "seats": rows,
            "workshops": [
                {"name": name, "measured": len(ratios), "mean": round(sum(ratios) / len(ratios), 1), "histogram": histogram(ratios)}
                for name, ratios in sorted(by_workshop.items())
            ],
        }


# ---------------------------------------------------------------------- actions


def _int(body: dict, name: str, low: int, high: int):
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(f"Field {name!r} must be a whole number between {low} and {high}.", code="bad_field")
    return value


def extend_body(raw: bytes) -> dict:
    """The fields of an extension: ``minutes`` or ``ends_at``."""
    body = json_object(raw)
    unknown = sorted(set(body) - {"minutes", "ends_at"})
    if unknown:
        raise BadRequest(f"Unknown field(s) for an extension: {', '.join(unknown)}.", code="bad_field")
    minutes = body.get("minutes")
    if minutes is not None and (not isinstance(minutes, int) or isinstance(minutes, bool)):
        raise BadRequest("Field 'minutes' must be a whole number.", code="bad_field")
    ends_at = body.get("ends_at")
    if ends_at is not None and not isinstance(ends_at, str):
        raise BadRequest("Field 'ends_at' must be a time in ISO 8601.", code="bad_field")
    return {"minutes": minutes, "ends_at": parse_time(ends_at) if ends_at is not None else None}


async def seat_action(app, action: str, n: int, who: str, minutes: int | None = None) -> dict:
    """One action on seat ``n`` from the live view; its answer (never raises a person's mistake: it is the answer)."""
    try:
        app.wod.check_student(n)
        if action == "extend":
            return {"student": n, "ok": True, **await asyncio.to_thread(extend, app.store, n, minutes=minutes, who=who)}
        with app.store.engine.connect() as conn:
            row = conn.execute(select(Seat.state, Seat.customer, Seat.workshop).where(Seat.number == n)).first()
        if row is None or row.state != SeatState.ACTIVE:
            raise Conflict(f"student {n} is not active")
        stamp = isoformat(utcnow(), "milliseconds")
        asked = [{"name": "requested", "status": "done", "started": stamp, "finished": stamp, "detail": {"by": who, "from": "live view"}}]
        op = await app.engine.submit(action.upper(), n, customer=row.customer, workshop=row.workshop, journal=asked)
        return {"student": n, "ok": True, "operation": op.id}
    except WodError as e:
        return {"student": n, "ok": False, "error": e.message}


async def seats_action(app, raw: bytes, who: str) -> dict:
    """``{"action", "students": [first, last], "minutes"?}``: the action on each seat of the range."""
    body = json_object(raw)
    unknown = sorted(set(body) - {"action", "students", "minutes"})
    if unknown:
        raise BadRequest(f"Unknown field(s) for an action: {', '.join(unknown)}.", code="bad_field")
    action = body.get("action")
    if action not in ACTIONS:
        raise BadRequest(f"Field 'action' must be one of {', '.join(ACTIONS)}.", code="bad_field")
    pair = body.get("students")
    if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair):
        raise BadRequest("Field 'students' must be [first, last], two whole numbers.", code="bad_field")
    first, last = pair
    if not 0 <= last - first < MAX_RANGE:
        raise BadRequest(f"Field 'students' must be a range of 1 to {MAX_RANGE} seats, first first.", code="bad_field")
    minutes = _int(body, "minutes", 1, 7 * 24 * 60) if action == "extend" else None
    results = [await seat_action(app, action, n, who, minutes) for n in range(first, last + 1)]
    app.log.info("%s: %s on students %s..%s: %d done", who, action, first, last, sum(r["ok"] for r in results))
    return {"action": action, "results": results}


# ---------------------------------------------------------------------- notebooks


def seat_notebooks(app, n: int) -> tuple:
    """(workshop folder path, the provisioned notebooks) of active seat ``n``; NotFound when it has none."""
    app.wod.check_student(n)
    with app.store.Session() as s:
        st = s.get(Seat, n)
    if st is None or st.state not in SeatState.HELD or not st.workshop:
        raise NotFound(f"student {n} holds no workshop: there is no notebook to show")
    ws, folder, _ = app.catalog.workshop_or_none(st.workshop)
    if ws is None:
        raise NotFound(f"{st.workshop} is not in the catalog: its notebooks are not known")
    return app.wod.home(n) / folder, app.progress.notebooks(ws)


def notebook_page(app, n: int, rel: str | None) -> str:
    from .notebookview import render_file

    base, notebooks = seat_notebooks(app, n)
    if rel not in notebooks:
        raise NotFound(f"{str(rel)[:80]!r} is not a notebook of student {n}'s workshop (one of: {', '.join(notebooks[:20])}).")
    try:
        return render_file(base, rel)
    except (OSError, ValueError) as e:
        raise NotFound(f"{rel} of student {n} cannot be read: {e}") from None


class _Page:
    """Sends a rendered notebook with the policy that lets nothing in it run."""

    def send_page(self, page: str):
        from .notebookview import CSP

        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.finish(page)


def _may_operate(caller, what: str):
    if SCOPE_OPERATE not in set(caller.get("scopes") or []):
        raise Forbidden(f"{caller.get('name') or 'The caller'} may look but not {what}: that needs the scope {SCOPE_OPERATE}.")


class LiveHandler(BaseHandler):
    """``GET api/live``: the live class view."""

    async def get(self):
        self.send(await self.app.live.view(self.get_query_argument("workshop", None) or None))


class ExtendHandler(BaseHandler):
    """``POST api/students/<N>/extend``: move an active seat's end."""

    scopes = (SCOPE_OPERATE,)

    async def post(self, number):
        n = self.app.wod.check_student(int(number))
        body = extend_body(self.request.body)
        who = self.caller.get("name") or "a token"
        answer = await asyncio.to_thread(extend, self.app.store, n, minutes=body["minutes"], ends_at=body["ends_at"], who=who)
        self.app.log.info("%s extended student%s to %s", who, n, answer["ends_at"])
        self.send(answer)


class NotebooksHandler(BaseHandler):
    """``GET api/students/<N>/notebooks``: the seat's provisioned notebooks; ``?path=``: one rendered read-only (HTML)."""

    async def get(self, number):
        n = int(number)
        rel = self.get_query_argument("path", None)
        if rel is None:
            _base, notebooks = await asyncio.to_thread(seat_notebooks, self.app, n)
            return self.send({"student": n, "notebooks": notebooks})
        page = await asyncio.to_thread(notebook_page, self.app, n, rel)
        _Page.send_page(self, page)


class DashboardLiveHandler(Browser):
    redirect_to_login = False

    async def get(self):
        self.send(await self.app.live.view(self.get_query_argument("workshop", None) or None))


class DashboardSeatsHandler(Browser):
    """``dashboard/seats``: an action on a seat or a range, from the live view."""

    redirect_to_login = False

    async def post(self):
        _may_operate(self.caller, "act on seats")
        self.send(await seats_action(self.app, self.request.body, self.caller.get("name") or "an admin"))


class DashboardNotebookHandler(Browser):
    """``dashboard/notebook?student=N&path=REL``: a participant's notebook, read-only."""

    async def get(self):
        raw = self.get_query_argument("student", "")
        if not raw.isdigit():
            raise BadRequest("Query parameter student must be a seat number.")
        rel = self.get_query_argument("path", None)
        if rel is None:
            _base, notebooks = await asyncio.to_thread(seat_notebooks, self.app, int(raw))
            return self.send({"student": int(raw), "notebooks": notebooks})
        page = await asyncio.to_thread(notebook_page, self.app, int(raw), rel)
        _Page.send_page(self, page)


def routes(prefix: str) -> list:
    p = re.escape(prefix)
    return [
        (rf"{p}api/live", LiveHandler),
        (rf"{p}api/students/([0-9]{{1,9}})/extend", ExtendHandler),
        (rf"{p}api/students/([0-9]{{1,9}})/notebooks", NotebooksHandler),
        (rf"{p}dashboard/live", DashboardLiveHandler),
        (rf"{p}dashboard/seats", DashboardSeatsHandler),
        (rf"{p}dashboard/notebook", DashboardNotebookHandler),
    ]

