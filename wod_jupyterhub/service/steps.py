"""Verified steps in the service: running a seat's checks, recording them, and what participants and instructors see.

The participant's endpoints (``api/seat/steps``) answer only the seat whose
own token the request carries (:func:`seat_of_request`); a check runs in a
child process (``seats/checks.py``), one at a time per seat, so repeated or
concurrent presses of Check queue behind the one running. A verified step
stays verified; each failed check reveals one more hint.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select
from traitlets import Float, Integer, TraitError, validate
from traitlets.config import Configurable

from ..errors import Conflict, NotFound
from ..seats import checks as seat_checks
from ..store.models import Seat, SeatState, StepResult, isoformat, utcnow
from ..workshops.steps import find_step, revealed_hints
from .handlers import BaseHandler
from .seatapi import SeatOwnHandler


class WodSteps(Configurable):
    """``c.WodSteps``: how the checks of verified steps run."""

    timeout = Float(
        20,
        help="""Seconds one check may run; a check still running then is killed and fails with a sentence.""",
    ).tag(config=True)
    memory = Integer(
        512 * 1024**2,
        help="Address space (bytes) of the process that runs one check; more is a failed check.",
    ).tag(config=True)
    at_once = Integer(
        4,
        help="Checks that run at the same time in all (one per seat at most); the others wait their turn.",
    ).tag(config=True)

    @validate("timeout", "at_once", "memory")
    def _positive(self, proposal):
        if proposal["value"] <= 0:
            raise TraitError(f"WodSteps.{proposal['trait'].name} must be more than 0, not {proposal['value']}")
        return proposal["value"]


def _seat_row(store, n: int):
    with store.engine.connect() as conn:
        return conn.execute(
            select(Seat.state, Seat.workshop, Seat.customer, Seat.assigned_at).where(Seat.number == n)
        ).first()


class StepChecks:
    """Runs and records the checks of the seats' steps, for the participant's endpoints, CLEANUP and the instructor."""

    def __init__(self, settings: WodSteps, wod, store, catalog, renderer, hostname=None, log=None):
        self.settings, self.wod, self.store, self.catalog = settings, wod, store, catalog
        self.renderer, self.hostname, self.log = renderer, hostname, log
        self.pool = ThreadPoolExecutor(settings.at_once, thread_name_prefix="wod-check")
        self._locks: dict[int, asyncio.Lock] = {}

    # ---- the seat

    def assignment(self, n: int):
        """(seat row, workshop) of active seat ``n``; Conflict when it holds no workshop now."""
        row = _seat_row(self.store, n)
        if row is None or row.state != SeatState.ACTIVE or not row.workshop or row.assigned_at is None:
            raise Conflict(f"Seat student{n} holds no workshop now: there is nothing to check.", code="no_assignment")
        ws, _folder, _mode = self.catalog.workshop_or_none(row.workshop)
        if ws is None:
            raise Conflict(f"The workshop of seat student{n} is not in the catalog any more.", code="no_workshop")
        return row, ws

    def _results(self, n: int, assigned_at) -> dict:
        with self.store.session() as s:
            rows = s.scalars(select(StepResult).where(StepResult.student == n, StepResult.assigned_at == assigned_at)).all()
            return {r.step: _row_json(r) for r in rows}

    def view(self, n: int) -> dict:
        """What the participant of seat ``n`` sees: each step's status, message, hints revealed (blocking)."""
        row, ws = self.assignment(n)
        return self._view(ws, self._results(n, row.assigned_at), self._hinter(ws, n))

    @staticmethod
    def _view(ws, results: dict, hinter=None) -> dict:
        steps = [_step_json(step, results.get(step.number), hinter) for step in ws.steps]
        verified = sum(1 for s in steps if s["status"] == "passed")
        return {"steps": steps, "verified": verified, "total": len(steps)}

    def counts(self, n: int) -> dict | None:
        """``{"verified": n, "total": m}`` for ``api/seat`` when seat ``n``'s workshop has steps, else None (blocking)."""
        try:
            row, ws = self.assignment(n)
        except Conflict:
            return None
        if not ws.steps:
            return None
        view = self._view(ws, self._results(n, row.assigned_at))
        return {"verified": view["verified"], "total": view["total"]}

    def _hinter(self, ws, n: int):
        """Hints rendered for seat ``n`` like the rest of its workshop (a hint that will not render is shown as written)."""
        from ..workshops.variables import template_variables

        variables = template_variables(self.wod, ws, n, "", hostname=self.hostname)

        def render(hint: str) -> str:
            try:
                return self.renderer.text_env.from_string(hint).render(variables)
            except Exception:  # noqa: BLE001 - an author's broken tag: the hint as written beats none
                return hint

        return render

    def _lock(self, n: int) -> asyncio.Lock:
        return self._locks.setdefault(n, asyncio.Lock())

    async def check(self, n: int, number: int) -> dict:
        """Run step ``number``'s check for seat ``n`` (unless verified already), record it; that step's view."""
        loop = asyncio.get_running_loop()
        async with self._lock(n):
            row, ws = await loop.run_in_executor(self.pool, self.assignment, n)
            step = find_step(ws.steps, number)
            if step is None:
                raise NotFound(f"Workshop {ws.name} has no step {number} (it has {len(ws.steps)}).", code="no_step")
            results = await loop.run_in_executor(self.pool, self._results, n, row.assigned_at)
            done = results.get(number)
            if done is None or not done["passed_at"]:
                outcome = await loop.run_in_executor(self.pool, self._run, ws, step, n)
                done = await loop.run_in_executor(self.pool, self._record, n, row, ws, step, outcome)
                if self.log:
                    self.log.info(
                        "Step %d of %s for student%d: %s (%.1f s)", number, ws.name, n,
                        "passed" if outcome.passed else "failed", outcome.seconds,
                    )
            return _step_json(step, done, self._hinter(ws, n))

    def _run(self, ws, step, n: int, mode: str = seat_checks.CHECK) -> seat_checks.Outcome:
        return seat_checks.for_seat(
            self.wod, ws, step, n, renderer=self.renderer, hostname=self.hostname, mode=mode,
            timeout=self.settings.timeout, memory=self.settings.memory,
        )

    def _record(self, n: int, row, ws, step, outcome) -> dict:
        now = utcnow()
        with self.store.session() as s:
            r = s.scalars(
                select(StepResult).where(
                    StepResult.student == n, StepResult.assigned_at == row.assigned_at, StepResult.step == step.number
                )
            ).first()
            if r is None:
                r = StepResult(
                    student=n, assigned_at=row.assigned_at, customer=row.customer, workshop=ws.name, step=step.number,
                    passed=False, failures=0, checks=0, checked_at=now,
                )
                s.add(r)
            r.checks += 1
            r.checked_at = now
            r.passed, r.message = outcome.passed, outcome.message
            if outcome.passed:
                r.passed_at = r.passed_at or now
            else:
                r.failures += 1
            s.flush()
            return _row_json(r)

    # ---- CLEANUP

    def verify_remaining(self, n: int, workshop: str | None) -> dict | None:
        """Check again every step of seat ``n`` not verified yet (blocking); the seat's steps after, or None without steps.

        CLEANUP calls it before the server stops, so the ratio reflects what
        the participant left running, and under the operation's lease: no
        participant's check runs on the seat then (its password is rotated).
        """
        ws, _folder, _mode = self.catalog.workshop_or_none(workshop)
        if ws is None or not ws.steps:
            return None
        row = _seat_row(self.store, n)
        if row is None or row.assigned_at is None:
            return None
        results = self._results(n, row.assigned_at)
        rechecked = []
        for step in ws.steps:
            done = results.get(step.number)
            if done is None or not done["passed_at"]:
                results[step.number] = self._record(n, row, ws, step, self._run(ws, step, n))
                rechecked.append(step.number)
        view = self._view(ws, results)
        return {"verified": view["verified"], "total": view["total"], "rechecked": rechecked}

    # ---- the instructor

    def summary(self, workshop: str | None = None) -> list[dict]:
        """Per workshop with steps: how many active seats passed each step, and per seat which steps and where it is stuck."""
        catalog = self.catalog.get()
        with self.store.session() as s:
            seats = s.execute(
                select(Seat.number, Seat.workshop, Seat.customer, Seat.assigned_at).where(Seat.state == SeatState.ACTIVE)
            ).all()
            held = {(n, a) for n, _w, _c, a in seats}
            numbers = [n for n, *_ in seats]
            rows = s.scalars(select(StepResult).where(StepResult.student.in_(numbers))).all() if numbers else []
            results: dict = {}
            for r in rows:
                if (r.student, r.assigned_at) in held:
                    results.setdefault(r.student, {})[r.step] = _row_json(r)
        out = []
        for ws in sorted(catalog.workshops.values(), key=lambda w: w.name):
            if not ws.steps or (workshop and ws.name != workshop):
                continue
            mine = sorted((n, c) for n, w, c, _a in seats if w == ws.name)
            entry = {"workshop": ws.name, "steps": [], "seats": []}
            for step in ws.steps:
                passed = sum(1 for n, _c in mine if (results.get(n, {}).get(step.number) or {}).get("passed_at"))
                entry["steps"].append({"index": step.number, "title": step.title, "passed": passed, "seats": len(mine)})
            for n, customer in mine:
                done = results.get(n, {})
                verified = [k for k, r in sorted(done.items()) if r["passed_at"]]
                stuck = next((s.number for s in ws.steps if s.number not in verified), None)
                entry["seats"].append({
                    "student": n, "customer": customer, "verified": verified, "total": len(ws.steps),
                    "stuck_on": stuck, "failures": {str(k): r["failures"] for k, r in done.items() if r["failures"]},
                    "last_check": max((r["checked_at"] for r in done.values()), default=None),
                })
            out.append(entry)
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _row_json(r: StepResult) -> dict:
    return {
        "passed": r.passed, "message": r.message, "failures": r.failures, "checks": r.checks,
        "checked_at": isoformat(r.checked_at), "passed_at": isoformat(r.passed_at),
    }


def _step_json(step, done: dict | None, hinter=None) -> dict:
    if done is None:
        status, message, failures, at = "unchecked", None, 0, None
    else:
        status = "passed" if done["passed_at"] else "failed"
        message, failures, at = done["message"], done["failures"], done["checked_at"]
    return {
        "index": step.number, "title": step.title, "status": status, "message": message,
        "hints": [hinter(h) if hinter else h for h in revealed_hints(step, failures)] if status != "passed" else [],
        "checked_at": at,
    }


# ---------------------------------------------------------------------- the participant's endpoints



class SeatStepsHandler(SeatOwnHandler):
    async def get(self):
        self.send(await asyncio.get_running_loop().run_in_executor(self.app.steps.pool, self.app.steps.view, self.seat))


class SeatStepCheckHandler(SeatOwnHandler):
    async def post(self, number):
        self.send(await self.app.steps.check(self.seat, int(number)))


class StepsHandler(BaseHandler):
    """``GET api/steps[?workshop=]`` (read scope): per step how many seats passed, per seat which steps."""

    async def get(self):
        workshop = self.get_query_argument("workshop", None) or None
        if workshop is not None:
            ws, _folder, _mode = self.app.catalog.workshop(workshop)  # 400/404 with a sentence
            workshop = ws.name
        summary = await asyncio.get_running_loop().run_in_executor(self.app.steps.pool, self.app.steps.summary, workshop)
        self.send({"workshops": summary})


def routes(prefix: str) -> list:
    """The steps' Tornado routes under ``prefix``."""
    p = re.escape(prefix)
    return [
        (rf"{p}api/seat/steps", SeatStepsHandler),
        (rf"{p}api/seat/steps/([0-9]{{1,4}})/check", SeatStepCheckHandler),
        (rf"{p}api/steps", StepsHandler),
    ]

