"""Helpers shared by the service tests: OpenAPI validation of every answer, database look-ups, the portal's callbacks."""

import contextlib
import json
import re
from pathlib import Path

from openapi_schema_validator import OAS31Validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from wod_jupyterhub import passwords
from wod_jupyterhub.store.models import Operation, OutboxMessage, Seat, make_engine

OPENAPI = json.loads((Path(__file__).resolve().parent.parent / "wod_jupyterhub" / "service" / "openapi.json").read_text())
_ROUTES = [
    (re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$"), path) for path in OPENAPI["paths"]
]


def ahead_cpu_seconds(metrics_text: str) -> dict:
    """``wod_ahead_cpu_seconds_total`` by work, read from the text of ``/metrics``."""
    return {m[1]: float(m[2]) for m in re.finditer(r'^wod_ahead_cpu_seconds_total\{work="(\w+)"\} (\S+)$', metrics_text, re.M)}


def route(url_path: str) -> str:
    """``/services/wod/api/operations/abc`` → ``/api/operations/{id}``."""
    rel = "/" + url_path.split("/services/wod/", 1)[1]
    for rx, templ in _ROUTES:
        if rx.match(rel):
            return templ
    raise AssertionError(f"{url_path} is not in the OpenAPI document")


def check(response, expected_status=None):
    """Assert the answer is documented and matches its schema; return its JSON (or text)."""
    if expected_status is not None:
        assert response.status_code == expected_status, (response.status_code, response.text[:2000])
    assert response.status_code != 500, response.text
    path = route(response.request.url.path)
    op = OPENAPI["paths"][path][response.request.method.lower()]
    spec = op["responses"].get(str(response.status_code))
    assert spec is not None, f"{response.request.method} {path} answered {response.status_code}, undocumented: {response.text[:300]}"
    content = spec.get("content", {})
    if "application/json" in content:
        assert response.headers["content-type"].startswith("application/json"), response.headers
        data = response.json()
        schema = dict(content["application/json"]["schema"])
        schema["components"] = OPENAPI["components"]
        OAS31Validator(schema).validate(data)
        return data
    return response.text


class DB:
    """Read the service's database the way an admin would."""

    def __init__(self, db_url: str):
        self.engine = make_engine(db_url)

    def student(self, n) -> Seat | None:
        with Session(self.engine) as s:
            return s.get(Seat, n)

    def count_ops(self) -> int:
        with Session(self.engine) as s:
            return s.scalar(select(func.count()).select_from(Operation))

    def ops(self, **where) -> list[Operation]:
        with Session(self.engine) as s:
            q = select(Operation).order_by(Operation.created, Operation.id)
            for k, v in where.items():
                q = q.where(getattr(Operation, k) == v)
            return list(s.scalars(q))

    def outbox(self, n=None) -> list[OutboxMessage]:
        with Session(self.engine) as s:
            q = select(OutboxMessage).order_by(OutboxMessage.id)
            if n is not None:
                q = q.where(OutboxMessage.key == f"student:{n}")
            return list(s.scalars(q))

    def password_ok(self, n, password) -> bool:
        st = self.student(n)
        return st is not None and passwords.verify_password(password, st.password_hash)

    def dispose(self):
        self.engine.dispose()


@contextlib.contextmanager
def hub_and_db(hub):
    """Start ``hub`` (a RealHub not started yet); yield it with a :class:`DB` on its database; stop both after."""
    with hub:
        db = DB(hub.db_url)
        try:
            yield hub, db
        finally:
            db.dispose()


def health(hub) -> dict:
    """The service's ``api/health`` answer, checked against the OpenAPI document."""
    import httpx

    return check(httpx.get(hub.service_url + "api/health", timeout=10), 200)


def settle(portal, db) -> int:
    """How many callbacks the portal took, once every one queued so far went out (an operation may end before)."""
    assert portal.wait_for(lambda p: all(m.delivered or m.failed for m in db.outbox()), 30), "callbacks still pending"
    return len(portal.accepted())


def puts(portal, paths, since=0) -> list:
    """(path, body) of the callbacks to ``paths`` the portal took from the ``since``-th on."""
    return [(c.path, c.body) for c in portal.accepted()[since:] if c.path in paths]
