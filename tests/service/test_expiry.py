"""A seat's end: when it falls, extensions (journaled), and which CLEANUP the portal's later one repeats (SQLite and PostgreSQL)."""

import asyncio
import datetime
import logging
from types import SimpleNamespace

import pytest

from wod_jupyterhub.config import Wod
from wod_jupyterhub.errors import BadRequest, Conflict
from wod_jupyterhub.service import expiry
from wod_jupyterhub.store.models import Operation, Seat, SeatState, Store, utcnow


def test_a_seat_ends_when_asked_else_after_its_workshops_duration_else_the_default():
    wod = Wod(default_duration=2)
    now = datetime.datetime(2026, 12, 7, 8, 0)
    asked = now + datetime.timedelta(minutes=45)
    assert expiry.seat_end(wod, SimpleNamespace(duration=4), asked, now) == asked
    assert expiry.seat_end(wod, SimpleNamespace(duration=4), None, now) == now + datetime.timedelta(hours=4)
    assert expiry.seat_end(wod, SimpleNamespace(duration=None), None, now) == now + datetime.timedelta(hours=2)
    assert expiry.seat_end(Wod(default_duration=0), None, None, now) is None


def test_times_are_read_as_utc_and_bad_ones_refused_with_a_sentence():
    assert expiry.parse_time("2026-12-07T10:00:00Z") == datetime.datetime(2026, 12, 7, 10, 0)
    assert expiry.parse_time("2026-12-07T11:00:00+01:00") == datetime.datetime(2026, 12, 7, 10, 0)
    assert expiry.parse_time("2026-12-07T10:00:00") == datetime.datetime(2026, 12, 7, 10, 0)
    for bad in ("tomorrow", "", "2026-13-01T00:00:00Z"):
        with pytest.raises(BadRequest, match="ISO 8601"):
            expiry.parse_time(bad)
    with pytest.raises(BadRequest, match="already past"):
        expiry.check_end(utcnow() - datetime.timedelta(seconds=1))
    with pytest.raises(BadRequest, match="days ahead"):
        expiry.check_end(utcnow() + datetime.timedelta(days=8))


def _store(db_url, **seats):
    store = Store(db_url)
    with store.session() as s:
        for n, values in seats.items():
            s.add(Seat(number=int(n[1:]), **values))
    return store


def test_an_extension_moves_an_active_seats_end_once_journaled_and_refuses_the_rest(db_url):
    end = utcnow().replace(microsecond=0) + datetime.timedelta(hours=1)
    store = _store(db_url, s3={"state": SeatState.ACTIVE, "customer": "c3", "workshop": "WKSHP-A", "ends_at": end},
                   s4={"state": SeatState.FREE}, s5={"state": SeatState.ACTIVE, "customer": "c5", "workshop": "WKSHP-A"})
    answer = expiry.extend(store, 3, minutes=30, who="admin")
    assert answer["ends_at"] == expiry.isoformat(end + datetime.timedelta(minutes=30))
    assert store.student(3).ends_at == end + datetime.timedelta(minutes=30)
    with store.Session() as s:
        op = s.get(Operation, answer["operation"])
    assert (op.verb, op.status, op.student, op.customer) == ("EXTEND", "succeeded", 3, "c3")
    assert op.steps[0]["detail"] == {"from": expiry.isoformat(end), "to": answer["ends_at"], "by": "admin", "minutes": 30}
    # A seat without an end gets one from now.
    assert store.student(5).ends_at is None
    expiry.extend(store, 5, minutes=10)
    assert abs((store.student(5).ends_at - utcnow()).total_seconds() - 600) < 5
    with pytest.raises(Conflict, match="not active"):
        expiry.extend(store, 4, minutes=10)
    with pytest.raises(BadRequest):
        expiry.extend(store, 3, minutes=0)
    with pytest.raises(BadRequest):
        expiry.extend(store, 3)
    # An operation queued for the seat: its end waits for it.
    with store.session() as s:
        s.add(Operation(id="b" * 32, verb="CLEANUP", student=3, customer="c3", status="queued", steps=[], result={}))
    with pytest.raises(Conflict, match="queued or running"):
        expiry.extend(store, 3, minutes=10)
    assert store.student(3).ends_at == end + datetime.timedelta(minutes=30)
    store.dispose()


def test_only_the_services_own_cleanup_of_an_expired_seat_is_repeated_and_only_for_its_customer(db_url):
    store = _store(db_url, s6={"state": SeatState.FREE})
    entry = expiry.expired_entry(utcnow(), 60)
    t = utcnow()
    with store.session() as s:
        s.add(Operation(id="1" * 32, verb="CREATE", student=6, customer="c6", status="succeeded", steps=[], result={}, created=t))
        s.add(Operation(id="2" * 32, verb="CLEANUP", student=6, customer="c6", status="succeeded", steps=[entry], result={},
                        created=t + datetime.timedelta(seconds=1)))
    with store.engine.connect() as conn:
        assert expiry.expiry_repeat(conn, 6, "c6") == "2" * 32
        assert expiry.expiry_repeat(conn, 6, "someone-else") is None
        assert expiry.expiry_repeat(conn, 7, "c6") is None
    # A new CREATE since, or a failed expiry CLEANUP: the portal's CLEANUP runs.
    with store.session() as s:
        s.add(Operation(id="3" * 32, verb="CREATE", student=6, customer="c6", status="succeeded", steps=[], result={},
                        created=t + datetime.timedelta(seconds=2)))
        s.add(Operation(id="4" * 32, verb="CLEANUP", student=8, customer="c8", status="failed", steps=[entry], result={}, created=t))
    with store.engine.connect() as conn:
        assert expiry.expiry_repeat(conn, 6, "c6") is None
        assert expiry.expiry_repeat(conn, 8, "c8") is None
    store.dispose()


def test_the_loop_finds_active_seats_past_their_end_and_the_grace_not_busy_ones(db_url):
    now = utcnow()
    past = now - datetime.timedelta(minutes=10)
    store = _store(
        db_url,
        s1={"state": SeatState.ACTIVE, "customer": "c1", "workshop": "WKSHP-A", "ends_at": past},
        s2={"state": SeatState.ACTIVE, "customer": "c2", "workshop": "WKSHP-A", "ends_at": now - datetime.timedelta(minutes=1)},  # in its grace
        s3={"state": SeatState.ACTIVE, "customer": "c3", "workshop": "WKSHP-A", "ends_at": past},  # a CLEANUP is queued
        s4={"state": SeatState.KEPT, "customer": "c4", "workshop": "WKSHP-A", "ends_at": past},
        s5={"state": SeatState.ACTIVE, "customer": "c5", "workshop": "WKSHP-A"},  # no end
    )
    with store.session() as s:
        s.add(Operation(id="c" * 32, verb="CLEANUP", student=3, customer="c3", status="queued", steps=[], result={}))
    submitted = []

    class Engine:
        async def submit(self, verb, n, **kw):
            submitted.append((verb, n, kw["customer"], kw["journal"][0]["name"]))
            return SimpleNamespace(id="x", repeat=False)

    loop = expiry.Expiry(Wod(expiry_grace=300), store, Engine(), logging.getLogger("test"))
    assert [row.number for row in loop.expired(now)] == [1]
    asyncio.run(loop.pass_once())
    assert submitted == [("CLEANUP", 1, "c1", "expired")]
    store.dispose()
