"""What an admin wants to see of a class at a glance, read from the database (pure reads, core)."""

import datetime

from sqlalchemy import func, select

from ..store.models import Completion, MailMessage, Operation, OutboxMessage, Seat, Throttle, isoformat, utcnow
from .mail import relay

SEAT_STATES = ("free", "active", "kept", "cleaning")
#: completion histogram buckets: 0-9 %, 10-19 % … 90-100 %
BUCKETS = 10


def _op_json(op: Operation, journal: bool) -> dict:
    data = {
        "id": op.id, "verb": op.verb, "student": op.student,
        "students": [op.student, op.student_last] if op.student_last is not None else None,
        "customer": op.customer, "workshop": op.workshop, "status": op.status, "error": op.error,
        "created": isoformat(op.created), "started": isoformat(op.started), "finished": isoformat(op.finished),
        "seconds": round((op.finished - op.created).total_seconds(), 3) if op.finished else None,
    }
    if journal:
        # The journal without hook output bodies: a page refreshed every few seconds stays small.
        data["steps"] = [
            {**{k: v for k, v in step.items() if k in ("name", "status", "started", "finished", "error")},
             "seconds": _seconds(step.get("started"), step.get("finished"))}
            for step in (op.steps or [])
        ]
    return data


def _seconds(start: str | None, end: str | None) -> float | None:
    try:
        return round((datetime.datetime.fromisoformat(end.rstrip("Z")) - datetime.datetime.fromisoformat(start.rstrip("Z"))).total_seconds(), 3)
    except (AttributeError, TypeError, ValueError):
        return None


def histogram(ratios: list[int]) -> list[int]:
    """Counts per 10 % bucket (100 % falls in the last one)."""
    counts = [0] * BUCKETS
    for r in ratios:
        counts[min(BUCKETS - 1, max(0, int(r)) // (100 // BUCKETS))] += 1
    return counts


def overview(store, catalog, wod, *, workshop: str | None = None, recent: int = 20, completions: int = 50) -> dict:
    """The status of the backend (or of one workshop) as JSON-ready data."""
    now = utcnow()
    workshops = sorted(catalog.workshops.values(), key=lambda w: w.name)
    if workshop is not None:
        workshops = [w for w in workshops if w.name == workshop]
    with store.Session() as s:
        held = s.execute(
            select(Seat.workshop, Seat.state, func.count()).where(Seat.state != "free")
            .group_by(Seat.workshop, Seat.state)
        ).all()
        busy_numbers = [n for (n,) in s.execute(select(Seat.number).where(Seat.state != "free"))]
        active_q = select(Seat).where(Seat.state != "free").order_by(Seat.number)
        if workshop is not None:
            active_q = active_q.where(Seat.workshop == workshop)
        seats = list(s.scalars(active_q.limit(2000)))

        def ops(q, journal, limit):
            if workshop is not None:
                q = q.where(Operation.workshop == workshop)
            return [_op_json(op, journal) for op in s.scalars(q.order_by(Operation.created.desc()).limit(limit))]

        running = ops(select(Operation).where(Operation.status.in_(("queued", "running"))), True, 200)
        failed = ops(select(Operation).where(Operation.status == "failed"), True, recent)
        latest = ops(select(Operation), True, recent)

        ratios: dict[str, list[int]] = {}
        for w in workshops:
            ratios[w.name] = list(
                s.scalars(
                    select(Completion.ratio).where(Completion.kind == "cleanup", Completion.workshop == w.name)
                    .order_by(Completion.taken_at.desc(), Completion.id.desc()).limit(completions)
                )
            )
        undelivered = (OutboxMessage.delivered.is_(None), OutboxMessage.failed.is_(None))
        pending, oldest = s.execute(select(func.count(), func.min(OutboxMessage.created)).where(*undelivered)).one()
        refused = s.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.failed.is_not(None)))
        retrying = s.scalar(select(func.count()).select_from(OutboxMessage).where(*undelivered, OutboxMessage.attempts > 0))
        locked = [
            {"key": t.key, "failures": t.failures, "locked_until": isoformat(t.locked_until)}
            # a "try:" row times a locked name's one try per interval; it is not a lock
            for t in s.scalars(
                select(Throttle).where(Throttle.locked_until > now, Throttle.key.not_like("try:%")).order_by(Throttle.locked_until.desc()).limit(200)
            )
        ]
        mail = _mail_backlog(s)

    by_workshop: dict[str, dict[str, int]] = {}
    for name, state, count in held:
        by_workshop.setdefault(name or "", {})[state] = count
    busy = set(busy_numbers)
    out_workshops = []
    for w in workshops:
        rng = [max(w.range[0], wod.student_min), min(w.range[1], wod.student_max)] if w.range else None
        capacity = rng[1] - rng[0] + 1 if rng and rng[1] >= rng[0] else 0
        states = {state: by_workshop.get(w.name, {}).get(state, 0) for state in SEAT_STATES[1:]}
        # A seat held for another (overlapping) workshop is not free for this one either.
        states["free"] = capacity - sum(1 for n in busy if rng and rng[0] <= n <= rng[1]) if capacity else 0
        values = ratios.get(w.name, [])
        out_workshops.append({
            "name": w.name, "title": w.meta.get("name"),
            "active": w.active, "valid": w.valid, "reset": w.reset, "range": list(w.range) if w.range else None,
            "capacity": capacity, "seats": states,
            "completion": {
                "count": len(values), "mean": round(sum(values) / len(values), 1) if values else None,
                "histogram": histogram(values),
            },
        })
    return {
        "generated": isoformat(now),
        "workshops": out_workshops,
        "seats": [
            {"student": st.number, "state": st.state, "customer": st.customer, "workshop": st.workshop,
             "since": isoformat(st.assigned_at), "ends_at": isoformat(st.ends_at)}
            for st in seats
        ],
        "operations": {"running": running, "failed": failed, "recent": latest},
        "outbox": {"pending": pending, "retrying": retrying, "refused": refused, "oldest": isoformat(oldest)},
        "mail_outbox": mail,
        "locked_logins": locked,
    }


def _mail_backlog(s) -> dict:
    """Participant mails the mail API took and the smarthost has not yet (``Relay``'s queue)."""
    mail = MailMessage
    pending, oldest = s.execute(select(func.count(), func.min(mail.received)).where(*relay.waiting())).one()
    refused = s.scalar(select(func.count()).select_from(mail).where(mail.kind == "relay", mail.failed.is_not(None)))
    return {"pending": pending, "refused": refused, "oldest": isoformat(oldest)}
