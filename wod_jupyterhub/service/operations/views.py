"""The JSON views of operations and seats the REST API answers with (``openapi.json`` describes them)."""

from sqlalchemy import select

from ...errors import NotFound
from ...store.models import Completion, Operation, Seat, SeatState, Status, isoformat
from ..expiry import seconds_left
from .holders import holding, overlapping

#: the verbs whose answer carries the seat's new password (to a caller who may operate)
PASSWORD_VERBS = ("CREATE", "PASSWORD")


class Views:
    """Reads operations and seats from the database and shapes them for the API."""

    def __init__(self, wod, store, sealer, catalog=None):
        """``catalog``: the workshops (``CatalogCache``), for a seat's ``holding``; without it, none is shown."""
        self.wod = wod
        self.store = store
        self.sealer = sealer
        self.catalog = catalog

    def operation(self, op_id: str) -> Operation:
        """The operation ``op_id``; ``NotFound`` when there is none."""
        with self.store.Session() as s:
            op = s.get(Operation, op_id)
        if op is None:
            raise NotFound(f"there is no operation {op_id}")
        return op

    def operations(self, student=None, status=None, verb=None, limit=100) -> list[Operation]:
        """The latest ``limit`` operations, newest first; only those covering seat ``student``, of ``status``, of ``verb`` when given."""
        q = select(Operation).order_by(Operation.created.desc(), Operation.id.desc()).limit(limit)
        if student is not None:
            q = q.where(overlapping(student))
        if status:
            q = q.where(Operation.status == status)
        if verb:
            q = q.where(Operation.verb == verb)
        with self.store.Session() as s:
            return list(s.scalars(q))

    def operation_json(self, op: Operation, reveal: bool = False, repeat: bool = False) -> dict:
        """``op`` as the API shows it; a finished CREATE's or PASSWORD's password only when ``reveal`` (the caller
        may operate). ``repeat``: the answer to a repeated CREATE, which ran nothing (``Engine.submit``)."""
        result = dict(op.result or {})
        public = {k: result[k] for k in ("login_url", "completion", "students", "ends_at") if k in result}
        if op.verb in PASSWORD_VERBS and op.status == Status.SUCCEEDED and "password" in result:
            public["password"] = self.sealer.open(result["password"]) if reveal else None
        return {
            "repeat": repeat,
            "id": op.id,
            "verb": op.verb,
            "student": op.student,
            "students": [op.student, op.student_last] if op.student_last is not None else None,
            "customer": op.customer,
            "email": op.email,
            "workshop": op.workshop,
            "status": op.status,
            "steps": list(op.steps or []),
            "error": op.error,
            "result": public if op.status in Status.FINISHED else None,
            "created": isoformat(op.created, "milliseconds"),
            "started": isoformat(op.started, "milliseconds"),
            "finished": isoformat(op.finished, "milliseconds"),
        }

    def held_seats(self) -> list[int]:
        """Seats whose home belongs to a participant now (active, kept for a RESET, or being cleaned)."""
        with self.store.Session() as s:
            return list(s.scalars(select(Seat.number).where(Seat.state.in_(SeatState.HELD))))

    def student_json(self, n: int) -> dict:
        """What ``api/students/<n>`` answers: the seat's row, its home, its last completion, what holds it."""
        self.wod.check_student(n)
        with self.store.Session() as s:
            st = s.get(Seat, n)
            last = s.scalars(
                select(Completion).where(Completion.student == n).order_by(Completion.taken_at.desc(), Completion.id.desc()).limit(1)
            ).first()
            busy = s.scalars(select(Operation.id).where(Operation.status.in_(Status.UNFINISHED), overlapping(n))).all()
            held = holding(self.catalog, s, n).to_json() if self.catalog is not None else None
        return {
            "student": n,
            "user": f"student{n}",
            "state": st.state if st else SeatState.FREE,
            "customer": st.customer if st else None,
            "email": st.email if st else None,
            "workshop": st.workshop if st else None,
            "assigned_at": isoformat(st.assigned_at, "milliseconds") if st else None,
            "rotated_at": isoformat(st.rotated_at, "milliseconds") if st else None,
            "generation": st.generation if st else 0,
            "ends_at": isoformat(st.ends_at) if st else None,
            "seconds_left": seconds_left(st.ends_at) if st and st.active else None,
            "home_exists": self.wod.home(n).exists(),
            "pending_operations": list(busy),
            "holding": held,
            "completion": None
            if last is None
            else {
                "kind": last.kind, "ratio": last.ratio, "executed": last.executed, "total": last.total,
                "workshop": last.workshop, "taken_at": isoformat(last.taken_at, "milliseconds"),
            },
        }
