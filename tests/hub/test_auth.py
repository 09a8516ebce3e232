"""WodAuthenticator on a real database (SQLite and PostgreSQL) and JupyterHub's real ORM.

The hub-level behaviour (login form, 429 shown on the form, cookies ending
when the seat changes hands) is in tests/integration/test_e2e.py; here the same code runs
in-process, where every branch is cheap to reach. The settings' checks, the
grouping of addresses and the cost of a refusal are not the store's: they run
on SQLite only.
"""

import asyncio
import datetime
import ipaddress
import time

import pytest
from jupyterhub import orm
from jupyterhub.user import User
from sqlalchemy import select, update
from tornado import web
from traitlets import TraitError
from traitlets.config import Config, Configurable

from wod_jupyterhub import passwords
from wod_jupyterhub.client_address import forwarded_client
from wod_jupyterhub.config import student_number
from wod_jupyterhub.hub.auth import WodAuthenticator
from wod_jupyterhub.hub.sessions import SESSION_TAG, new_cookie_id, session_generation
from wod_jupyterhub.passwords import hash_params, hash_password
from wod_jupyterhub.store.models import Seat, Throttle, utcnow

ADMIN_HASH = hash_password("admin-secret-pw", cost=11)


def make_auth(db_url, **options):
    c = Config()
    c.Wod.db_url = db_url
    c.Wod.student_min = 1
    c.Wod.student_max = 40
    c.Authenticator.admin_users = {"boss"}
    c.WodAuthenticator.admin_password_hashes = {"boss": ADMIN_HASH}
    for k, v in options.items():
        setattr(c.WodAuthenticator, k, v)
    return WodAuthenticator(config=c)


def seat(auth, n, password="pw-" + "x" * 10, state="active", generation=1):
    with auth.store.session() as s:
        row = s.get(Seat, n) or Seat(number=n)
        row.password_hash = hash_password(password)
        row.state = state
        row.generation = generation
        row.workshop = "WKSHP-Sample"
        row.customer = "c1"
        s.merge(row)
    return password


def bump(auth, n):
    with auth.store.session() as s:
        s.execute(update(Seat).where(Seat.number == n).values(generation=Seat.generation + 1))


async def login(auth, name, password, ip=None):
    """authenticate() without a request: what the hub calls, minus the handler-only parts."""
    if ip is None:
        return await auth.authenticate(None, {"username": name, "password": password})
    outcome = await asyncio.to_thread(auth.check_login, name, password, ip)
    return outcome


@pytest.fixture
def auth(db_url):
    a = make_auth(db_url)
    yield a
    a.store.dispose()


async def test_student_logs_in_only_with_current_password(auth):
    pw = seat(auth, 3)
    assert await login(auth, "student3", pw) == {"name": "student3"}
    assert await login(auth, "  Student3 ", pw) == {"name": "student3"}  # what people type
    assert await login(auth, "student3", pw + "x") is None
    assert await login(auth, "student3", "") is None
    new = seat(auth, 3, password="rotated-pass-1")
    assert await login(auth, "student3", pw) is None
    assert await login(auth, "student3", new) == {"name": "student3"}


async def test_inactive_seat_refused_with_a_sentence_only_after_the_right_password(auth):
    pw = seat(auth, 4, state="free")
    with pytest.raises(web.HTTPError) as e:
        await login(auth, "student4", pw)
    assert e.value.status_code == 403 and "no workshop booked" in e.value.log_message
    # a wrong password tells nothing about the seat
    assert await login(auth, "student4", "wrong") is None
    seat(auth, 4, password=pw, state="kept")
    with pytest.raises(web.HTTPError):
        await login(auth, "student4", pw)


async def test_out_of_range_unknown_and_unprovisioned_names_refused(auth):
    pw = seat(auth, 39)
    with auth.store.session() as s:  # a row for 41 exists, but 41 is outside student_max=40
        s.add(Seat(number=41, password_hash=hash_password(pw), state="active", generation=1))
    assert await login(auth, "student41", pw) is None
    assert await login(auth, "student0", pw) is None
    assert await login(auth, "student039", pw) is None
    assert await login(auth, "teacher", pw) is None
    assert await login(auth, "student7", pw) is None  # in range, never provisioned: no row
    assert auth.check_allowed("student39") and not auth.check_allowed("student41")
    assert not auth.check_allowed("teacher") and auth.check_allowed("boss")
    assert auth.allow_all is False


async def test_admin_logs_in_with_configured_hash(auth):
    assert await login(auth, "boss", "admin-secret-pw") == {"name": "boss"}
    assert await login(auth, "boss", "admin-secret") is None
    assert auth.is_admin(None, {"name": "boss"}) is True
    assert auth.is_admin(None, {"name": "student3"}) is None


def test_admin_hash_config_is_validated(sqlite_url):
    with pytest.raises(TraitError, match="student name"):
        make_auth(sqlite_url, admin_password_hashes={"student5": ADMIN_HASH})
    with pytest.raises(TraitError, match="wod hash-password"):
        make_auth(sqlite_url, admin_password_hashes={"root": "plaintext"})
    with pytest.raises(TraitError, match="0 or more"):
        make_auth(sqlite_url, throttle_lockout=-1)
    with pytest.raises(TraitError, match="costly_checks_waiting must be 0 or more"):
        make_auth(sqlite_url, costly_checks_waiting=-1)


async def test_throttle_locks_name_then_survives_restart(db_url):
    auth = make_auth(db_url, throttle_failures=3, throttle_ip_failures=0)
    pw = seat(auth, 5)
    for _ in range(3):
        assert await login(auth, "student5", "guess") is None
    with pytest.raises(web.HTTPError) as e:
        await login(auth, "student5", "guess again")  # a wrong password, while locked
    assert e.value.status_code == 429
    assert "Too many failed logins" in e.value.log_message and "minute" in e.value.log_message
    assert await login(auth, "student5", pw) == {"name": "student5"}  # the right one, never refused
    # other names are not affected
    pw6 = seat(auth, 6)
    assert await login(auth, "student6", pw6) == {"name": "student6"}
    auth.store.dispose()

    restarted = make_auth(db_url, throttle_failures=3, throttle_ip_failures=0)
    with pytest.raises(web.HTTPError) as e:
        await login(restarted, "student5", "guess")
    assert e.value.status_code == 429
    # the lockout ends (moved into the past instead of sleeping through it): a wrong password is a plain refusal again
    with restarted.store.session() as s:
        s.execute(update(Throttle).values(locked_until=utcnow() - datetime.timedelta(seconds=1)))
    assert await login(restarted, "student5", "guess") is None
    restarted.store.dispose()


async def test_failures_outside_the_window_start_a_new_count(db_url):
    auth = make_auth(db_url, throttle_failures=2, throttle_ip_failures=0, throttle_window=60)
    pw = seat(auth, 8)
    assert await login(auth, "student8", "nope") is None
    with auth.store.session() as s:
        s.execute(update(Throttle).values(window_start=utcnow() - datetime.timedelta(seconds=120)))
    assert await login(auth, "student8", "nope") is None  # first failure of a new window
    assert await login(auth, "student8", pw) == {"name": "student8"}
    # a success forgives the name's earlier failures
    with auth.store.session() as s:
        assert s.get(Throttle, "user:student8") is None
    auth.store.dispose()


async def test_throttle_per_client_address(db_url):
    auth = make_auth(db_url, throttle_failures=0, throttle_ip_failures=4)
    pw9, pw10 = seat(auth, 9), seat(auth, 10, password="pw-ten-xxxxxx")
    for i in range(4):  # spread over names: only the address adds up
        assert (await login(auth, f"student{10 + i}", "guess", ip="192.0.2.7"))["kind"] == "bad"
    # The address is locked: a wrong password from it is told so, and its pair stays locked as long ...
    assert (await login(auth, "student10", "guess again", ip="192.0.2.7"))["kind"] == "locked"
    with auth.store.session() as s:
        assert s.get(Throttle, "pair:student10@192.0.2.7").locked_until > utcnow()
    # ... and the right password is never refused, from there or elsewhere (a room behind one NAT).
    assert (await login(auth, "student10", pw10, ip="192.0.2.7")) == {"kind": "student", "generation": 1}
    assert (await login(auth, "student9", pw9, ip="192.0.2.7")) == {"kind": "student", "generation": 1}
    auth.store.dispose()


async def test_guesses_from_many_addresses_never_lock_out_the_owner(db_url):
    """A flood from every source of this machine: the owner's right password always works."""
    auth = make_auth(db_url, throttle_failures=5, throttle_ip_failures=30)
    pw = seat(auth, 3)
    for i in range(5):
        assert (await login(auth, "student3", "guess", ip=f"203.0.113.{i}"))["kind"] == "bad"
    # The name is locked now: every wrong try is told so, from anywhere ...
    for i in range(5, 40):
        assert (await login(auth, "student3", f"guess{i}", ip=f"203.0.113.{i}"))["kind"] == "locked"
    # ... and the owner's right password works from an address that failed, and one that did not.
    assert (await login(auth, "student3", pw, ip="203.0.113.2")) == {"kind": "student", "generation": 1}
    assert (await login(auth, "student3", pw, ip="198.51.100.9")) == {"kind": "student", "generation": 1}
    # The owner's success did not lift the name's lock for the guessers.
    with auth.store.session() as s:
        assert s.get(Throttle, "user:student3").locked_until > utcnow()
    auth.store.dispose()


async def test_all_of_loopback_is_one_address(db_url):
    """A student's kernel can bind any 127.x.y.z: its guesses from 200 sources add up as one address's."""
    auth = make_auth(db_url, throttle_failures=0, throttle_ip_failures=30)
    seat(auth, 3)
    outcomes = [await login(auth, f"student{1 + i % 40}", "guess", ip=f"127.{1 + i // 250}.{i % 250}.{1 + i % 7}") for i in range(40)]
    assert [o["kind"] for o in outcomes] == ["bad"] * 30 + ["locked"] * 10  # the 30th failure locks
    assert auth.throttle.keys("student3", "127.200.1.2") == auth.throttle.keys("student3", "::1")
    assert auth.throttle.keys("student3", "::ffff:127.0.0.9") == auth.throttle.keys("student3", "127.0.0.1")
    auth.store.dispose()


async def test_a_flood_at_an_admin_name_waits_for_one_costly_check_and_the_owner_goes_first(sqlite_url, monkeypatch):
    """Wrong tries at an admin name take one core at most; the admin's try from elsewhere goes first."""
    auth = make_auth(sqlite_url, throttle_failures=5, throttle_ip_failures=30, costly_checks=1, costly_checks_waiting=8)
    running, most, order = [0], [0], []
    real = auth.check_login

    def counted(name, password, ip):
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            return real(name, password, ip)
        finally:
            order.append(password)
            running[0] -= 1

    monkeypatch.setattr(auth, "check_login", counted)
    for i in range(5):  # the guesser's address has failed for the name
        await auth.checked("boss", f"guess{i}", "127.0.0.1")
    flood = [asyncio.ensure_future(auth.checked("boss", f"flood{i}", "127.0.0.1")) for i in range(30)]
    await asyncio.sleep(0)
    owner = asyncio.ensure_future(auth.checked("boss", "admin-secret-pw", "192.0.2.77"))
    outcomes = [o for o, _ in await asyncio.gather(*flood)]
    assert (await owner)[0] == {"kind": "admin"}
    assert most[0] == 1
    # At most one running and eight waiting: the rest were told the hub is busy, without a check.
    assert sum(o["kind"] == "busy" for o in outcomes) >= 30 - 1 - 8
    assert len([p for p in order if p.startswith("flood")]) <= 1 + 8
    # The owner's try was checked before every queued guess but the one already running.
    assert order.index("admin-secret-pw") <= order.index(next(p for p in order if p.startswith("flood"))) + 1
    auth.store.dispose()


@pytest.mark.parametrize(
    "address,counted",
    [
        ("2001:db8:1:2::5", "ip:2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:1:2:3", "ip:2001:db8:1:2::/64"),
        ("2001:db8:1:3::5", "ip:2001:db8:1:3::/64"),
        ("::ffff:192.0.2.9", "ip:192.0.2.9"),
        ("192.0.2.9", "ip:192.0.2.9"),
        ("127.3.4.5", "ip:127.0.0.0/8"),
        ("::1", "ip:127.0.0.0/8"),
    ],
)
def test_ipv6_addresses_count_by_their_64(sqlite_url, address, counted):
    auth = make_auth(sqlite_url, throttle_failures=5, throttle_ip_failures=30)
    keys = auth.throttle.keys("student3", address)
    assert counted in keys and f"pair:student3@{counted[3:]}" in keys
    auth.store.dispose()


async def test_a_room_behind_one_address_logs_in_despite_typos(db_url):
    auth = make_auth(db_url, throttle_failures=5, throttle_ip_failures=30)
    room = "192.0.2.99"
    passwords = {n: seat(auth, n, password=f"pw-{n}-xxxxxxxx") for n in range(1, 41)}
    for n in range(1, 41):  # each of forty people mistypes once: the 30th failure locks the address
        assert (await login(auth, f"student{n}", "typo", ip=room))["kind"] == ("bad" if n <= 30 else "locked")
    for n in range(1, 41):
        outcome = await login(auth, f"student{n}", passwords[n], ip=room)
        # the address's lock never refuses a right password
        assert outcome["kind"] == "student", (n, outcome)
    assert (await login(auth, "student1", "typo again", ip=room))["kind"] == "locked"
    auth.store.dispose()


async def test_concurrent_failures_are_all_counted(db_url):
    auth = make_auth(db_url, throttle_failures=1000, throttle_ip_failures=1000)
    seat(auth, 11)
    results = await asyncio.gather(*(login(auth, "student11", f"bad{i}", ip="198.51.100.1") for i in range(24)))
    assert all(r["kind"] == "bad" for r in results)
    with auth.store.session() as s:
        counts = {t.key: t.failures for t in s.scalars(select(Throttle))}
    assert counts == {"user:student11": 24, "pair:student11@198.51.100.1": 24, "ip:198.51.100.1": 24}
    auth.store.dispose()


# -- sessions end when the seat changes hands (JupyterHub's own ORM) --------


@pytest.fixture
def hubdb():
    db = orm.new_session_factory("sqlite://")()
    db.add(orm.OAuthClient(identifier="jupyterhub"))
    db.add(orm.OAuthClient(identifier="jupyterhub-user-student3"))
    db.commit()
    yield db
    db.close()


def hub_user(hubdb, name):
    u = orm.User(name=name)
    hubdb.add(u)
    hubdb.commit()
    return User(u, settings={}, db=hubdb)


def test_cookie_id_carries_the_generation():
    assert session_generation(new_cookie_id(12)) == 12
    assert new_cookie_id(3) != new_cookie_id(3)
    assert session_generation("e6fb7c272c834802a1d7b480ed34a01b") is None
    assert session_generation(SESSION_TAG + "x.abc") is None


async def test_add_user_tags_new_student_with_current_generation(auth, hubdb):
    seat(auth, 3, generation=7)
    user = hub_user(hubdb, "student3")
    await auth.add_user(user)
    assert session_generation(user.orm_user.cookie_id) == 7
    tagged = user.orm_user.cookie_id
    await auth.add_user(user)  # idempotent (runs for every user at each hub start)
    assert user.orm_user.cookie_id == tagged
    boss = hub_user(hubdb, "boss")
    await auth.add_user(boss)
    assert session_generation(boss.orm_user.cookie_id) is None


async def test_seat_change_rotates_cookie_and_revokes_personal_tokens(auth, hubdb):
    seat(auth, 3, generation=1)
    user = hub_user(hubdb, "student3")
    await auth.add_user(user)
    first_cookie = user.orm_user.cookie_id
    user.orm_user.new_api_token(note="Server at /user/student3/")
    user.orm_user.new_api_token(note="made on the token page")
    user.orm_user.new_api_token(client_id="jupyterhub-user-student3")  # behind the server's cookie
    assert await auth.refresh_user(user) is True
    assert user.orm_user.cookie_id == first_cookie

    bump(auth, 3)  # CLEANUP
    assert await auth.refresh_user(user) is False
    assert user.orm_user.cookie_id != first_cookie
    assert session_generation(user.orm_user.cookie_id) == 2
    assert hubdb.query(orm.User).filter_by(cookie_id=first_cookie).first() is None
    # a note says nothing (users write their own): no server of this user runs, so no token stays
    # (tests/integration/test_e2e.py: the token of a server started for the current participant stays)
    assert [t.note for t in user.orm_user.api_tokens] == []

    # still no active assignment: refused without another rotation
    seat(auth, 3, state="free", generation=2)
    rotated = user.orm_user.cookie_id
    assert await auth.refresh_user(user) is False
    assert user.orm_user.cookie_id == rotated


async def test_login_after_seat_change_gets_a_fresh_cookie_id(auth, hubdb):
    seat(auth, 3, generation=1)
    user = hub_user(hubdb, "student3")
    await auth.add_user(user)
    old = user.orm_user.cookie_id
    auth.begin_session(hubdb, "student3", 1)  # same participant logs in again: sessions kept
    assert user.orm_user.cookie_id == old
    auth.begin_session(hubdb, "student3", 3)  # the seat changed hands twice since
    assert user.orm_user.cookie_id != old and session_generation(user.orm_user.cookie_id) == 3
    # the next participant's session is then current
    seat(auth, 3, generation=3)
    assert await auth.refresh_user(user) is True
    # The hub's users in memory (handler.users) serve the look-up; the user is the same one, its cookie rotated.
    users = {user.orm_user.id: user}
    auth.begin_session(hubdb, "student3", 4, users=users)
    assert session_generation(user.orm_user.cookie_id) == 4
    auth.begin_session(hubdb, "student3", 5, users={})  # not in memory: read from the hub's database
    assert session_generation(hubdb.query(orm.User).filter_by(name="student3").one().cookie_id) == 5


async def test_a_new_sessions_cookie_id_survives_another_requests_rollback(auth, hubdb):
    """The hub's database session is shared by every request, and a request that finishes
    with dirty objects rolls them back (BaseHandler.finish). Between authenticate and the
    hub's own commit other requests finish: the rotated cookie_id must already be stored.
    (Seen in bench/login.py: a participant's first login, then logged out on the next request.)"""
    seat(auth, 3, generation=1)
    user = hub_user(hubdb, "student3")
    await auth.add_user(user)
    auth.begin_session(hubdb, "student3", 2)
    rotated = user.orm_user.cookie_id
    hubdb.rollback()  # another request's finish
    assert user.orm_user.cookie_id == rotated and session_generation(rotated) == 2


class HubStandIn(Configurable):
    """What the authenticator reads of the JupyterHub app (its database session and users in memory)."""

    def __init__(self, db, users):
        super().__init__()
        self.db, self.users, self.bind_url = db, users, "http://127.0.0.1:8000"


async def test_sessions_of_seats_that_changed_hands_end_ahead_of_the_login(db_url, hubdb):
    users = {}
    for name in ("student3", "student4", "student5", "boss"):
        user = hub_user(hubdb, name)
        user.orm_user.cookie_id = new_cookie_id(1) if name != "boss" else "e6fb7c272c834802a1d7b480ed34a01b"
        users[user.orm_user.id] = user
    hubdb.commit()
    c = Config()
    c.Wod.db_url, c.Wod.student_min, c.Wod.student_max = db_url, 1, 40
    c.WodAuthenticator.session_sweep_interval = 0  # swept by hand below
    auth = WodAuthenticator(config=c, parent=HubStandIn(hubdb, users))
    seat(auth, 3, generation=2)  # changed hands since student3's last login
    seat(auth, 4, generation=1)  # the same participant: untouched
    student3, student4 = (next(u for u in users.values() if u.name == n) for n in ("student3", "student4"))
    student3.orm_user.new_api_token(note="made on the token page")
    kept = student4.orm_user.cookie_id

    assert await auth.sweep_sessions() == ["student3"]
    swept = student3.orm_user.cookie_id
    hubdb.rollback()  # committed: another request's rollback keeps it
    assert student3.orm_user.cookie_id == swept and session_generation(swept) == 2
    assert list(student3.orm_user.api_tokens) == []
    assert student4.orm_user.cookie_id == kept
    assert await auth.sweep_sessions() == []  # nothing changed since
    # A seat that moves later is found, though the look before walked nothing.
    seat(auth, 4, generation=3)
    assert await auth.sweep_sessions() == ["student4"]
    assert session_generation(student4.orm_user.cookie_id) == 3 and student3.orm_user.cookie_id == swept
    # The first login of the seat's participant then writes nothing.
    assert auth.begin_session(hubdb, "student3", 2, users=users) == ""
    assert student3.orm_user.cookie_id == swept
    auth.store.dispose()


@pytest.mark.parametrize("wal", [True, False])
async def test_the_hubs_own_sqlite_file_commits_without_waiting_unless_turned_off(db_url, tmp_path, wal):
    hubdb = orm.new_session_factory(f"sqlite:///{tmp_path / 'jupyterhub.sqlite'}")()
    c = Config()
    c.Wod.db_url, c.Wod.student_min, c.Wod.student_max = db_url, 1, 40
    c.WodAuthenticator.session_sweep_interval = 0
    if not wal:
        c.WodAuthenticator.hub_sqlite_wal = False
    auth = WodAuthenticator(config=c, parent=HubStandIn(hubdb, {}))
    assert auth.hub_sqlite_wal is wal
    raw = hubdb.connection().connection.dbapi_connection
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == ("wal" if wal else "delete")
    assert raw.execute("PRAGMA synchronous").fetchone()[0] == (1 if wal else 2)  # NORMAL, else SQLite's FULL
    hubdb.close()
    auth.store.dispose()


async def test_the_sweeps_run_by_themselves_in_the_hub(db_url, hubdb):
    user = hub_user(hubdb, "student3")
    user.orm_user.cookie_id = new_cookie_id(1)
    hubdb.commit()
    c = Config()
    c.Wod.db_url, c.Wod.student_min, c.Wod.student_max = db_url, 1, 40
    c.WodAuthenticator.session_sweep_interval = 0.05
    auth = WodAuthenticator(config=c, parent=HubStandIn(hubdb, {user.orm_user.id: user}))
    seat(auth, 3, generation=5)
    for _ in range(100):
        await asyncio.sleep(0.05)
        if session_generation(user.orm_user.cookie_id) == 5:
            break
    assert session_generation(user.orm_user.cookie_id) == 5
    auth._sweeper.cancel()
    auth.store.dispose()


async def test_a_failing_sweep_is_logged_once_until_it_works_again():
    """The wod database down for an hour must not write a line every two seconds."""
    import logging

    from sqlalchemy.exc import OperationalError

    from wod_jupyterhub.hub.sessions import keep_sweeping

    outcomes = ["fail", "fail", "fail", "ok", "ok", "boom", "boom", "ok"]
    done = asyncio.Event()

    async def sweep():
        outcome = outcomes.pop(0) if outcomes else "ok"
        if not outcomes:
            done.set()
        if outcome == "fail":
            raise OperationalError("SELECT", {}, Exception("unable to open database file"))
        if outcome == "boom":
            raise RuntimeError("unexpected")

    lines = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append((record.levelname, record.getMessage()))

    log = logging.getLogger("test-sweeps")
    log.setLevel(logging.INFO)
    log.addHandler(Collect())
    task = asyncio.ensure_future(keep_sweeping(sweep, 0.01, log))
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0.05)
    task.cancel()
    assert lines == [
        ("ERROR", "Cannot look for seats that changed hands: the wod database is unavailable: OperationalError"),
        ("INFO", "Looking for seats that changed hands again"),
        ("ERROR", "The look for seats that changed hands failed"),
        ("INFO", "Looking for seats that changed hands again"),
    ]


def test_the_sweep_interval_is_checked(sqlite_url):
    with pytest.raises(TraitError, match="session_sweep_interval must be 0 or more"):
        make_auth(sqlite_url, session_sweep_interval=-1)


async def test_admins_are_never_refreshed_out(auth, hubdb):
    boss = hub_user(hubdb, "boss")
    assert await auth.refresh_user(boss) is True


async def test_unreachable_database_is_a_503_sentence_and_ends_sessions(tmp_path, hubdb):
    # a real database that goes away: its file is replaced by a folder
    db = tmp_path / "gone.sqlite"
    auth = make_auth(f"sqlite:///{db}")
    seat(auth, 3)
    user = hub_user(hubdb, "student3")
    await auth.add_user(user)
    auth.store.dispose()
    for f in tmp_path.glob("gone.sqlite*"):
        f.unlink()
    db.mkdir()
    with pytest.raises(web.HTTPError) as e:
        await auth.authenticate(None, {"username": "student3", "password": "x"})
    assert e.value.status_code == 503 and "try again" in e.value.log_message
    assert await auth.refresh_user(user) is False
    assert auth.auth_refresh_age < 1  # sessions are re-checked on practically every request
    assert auth.auth_refresh_strict is True  # token requests too


# -- the client address, the cost of a refusal, the names ---------------------

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1")]


@pytest.mark.parametrize(
    "peer,forwarded,expected",
    [
        ("198.51.100.7", None, "198.51.100.7"),  # no proxy: the peer
        ("198.51.100.7", "10.9.9.9", "198.51.100.7"),  # an untrusted peer's header is not believed
        ("127.0.0.1", "198.51.100.7", "198.51.100.7"),  # what the hub's proxy saw
        ("127.0.0.1", "1.2.3.4, 198.51.100.7", "198.51.100.7"),  # the client's own entries are never reached
        ("127.0.0.1", "1.2.3.4,127.0.0.2,198.51.100.7", "198.51.100.7"),
        # a loopback entry is a client of the proxy on this machine (a student's kernel): what it wrote is its own
        ("127.0.0.1", "198.51.100.7, 127.0.0.5", "127.0.0.5"),
        ("127.0.0.1", "127.0.0.1", "127.0.0.1"),  # a local client
        ("127.0.0.1", "not-an-address", "127.0.0.1"),
        ("127.0.0.1", "", "127.0.0.1"),
        ("::1", "2001:db8::5", "2001:db8::5"),
    ],
)
def test_client_address_is_what_the_trusted_proxy_saw(peer, forwarded, expected):
    assert forwarded_client(peer, forwarded, LOOPBACK) == expected


def test_trusted_proxies_are_validated(sqlite_url):
    with pytest.raises(TraitError, match="not an address or a network"):
        make_auth(sqlite_url, trusted_proxies=["proxy.example.com"])


def test_every_refusal_checks_once_at_its_own_cost_and_answers_after_the_same_wait(sqlite_url, monkeypatch):
    """A refusal's time must not tell admin names apart, nor may its work feed a flood.

    Each refusal checks the password once, at the cost of the name's hash
    (an unknown name's dummy at the students' cost): no admin-cost hash for
    a student's or nobody's name. Its answer then waits as long as the
    costliest check takes, sleeping (bench/login_refusal.py prints the times).
    """
    c = Config()
    c.Wod.db_url = sqlite_url
    c.Wod.student_min, c.Wod.student_max = 1, 40
    c.Authenticator.admin_users = {"boss"}
    c.WodAuthenticator.admin_password_hashes = {"boss": hash_password("admin-secret-pw", cost=14)}
    auth = WodAuthenticator(config=c)
    seat(auth, 3)
    with auth.store.session() as s:  # a seat with no password (never provisioned)
        s.merge(Seat(number=4, state="free", generation=0))
    import wod_jupyterhub.hub.auth as auth_mod

    calls, slept = [], []
    real = auth_mod.verify_password

    def recording(password, stored):
        calls.append(hash_params(stored))
        return real(password, stored)

    real_sleep = asyncio.sleep
    monkeypatch.setattr(auth_mod, "verify_password", recording)
    monkeypatch.setattr(auth_mod.asyncio, "sleep", lambda seconds: slept.append(seconds) or real_sleep(0))
    cheap, costly = (passwords.STUDENT_COST, 8, 1), (14, 8, 1)
    assert auth._refusal_seconds > 0
    work = {}
    for name in ("boss", "student3", "student4", "student7", "student99", "nobody", "student1\n"):
        calls.clear()
        slept.clear()
        started = time.perf_counter()
        assert asyncio.run(auth.checked(name, "wrong password", "192.0.2.1"))[0] == {"kind": "bad"}
        took = time.perf_counter() - started
        work[name] = sorted(calls)
        # the answer waited for the rest of the costliest check's time
        assert len(slept) == 1 and abs(slept[0] + took - auth._refusal_seconds) < took + 0.05
    assert work == {name: [costly if name == "boss" else cheap] for name in work}, work
    auth.throttle.forgive(["pair:student3@192.0.2.1", "user:student3"])
    calls.clear()
    assert asyncio.run(auth.checked("student3", "pw-" + "x" * 10, "192.0.2.1"))[0]["kind"] == "student"
    assert calls == [cheap]  # a student's success stays cheap
    auth.store.dispose()


def test_a_students_login_is_checked_without_a_thread_on_sqlite(db_url, monkeypatch):
    """The common login (a student's right password, a cheap hash, nothing throttled) is decided on the loop on SQLite.

    A thread's hand-off cost more than the check itself in a room's burst
    (bench/login.py). On PostgreSQL, whose read waits on the network, and for
    everything else (a refusal's counting, an admin's hash), the thread does it.
    """
    auth = make_auth(db_url)
    seat(auth, 3)
    handed = []
    real = auth.executor.submit
    monkeypatch.setattr(auth.executor, "submit", lambda fn, *a: handed.append(a[0].__name__) or real(fn, *a))
    outcome, _ = asyncio.run(auth.checked("student3", "pw-" + "x" * 10, "192.0.2.1"))
    assert outcome == {"kind": "student", "generation": 1}
    assert handed == ([] if db_url.startswith("sqlite") else ["check_login"])
    outcome, _ = asyncio.run(auth.checked("student3", "wrong password", "192.0.2.1"))
    assert outcome == {"kind": "bad"}
    assert handed[-1] == ("refuse" if db_url.startswith("sqlite") else "check_login")
    # Now the pair has a throttle row: the thread's full check (it forgives the typo).
    outcome, _ = asyncio.run(auth.checked("student3", "pw-" + "x" * 10, "192.0.2.1"))
    assert outcome["kind"] == "student" and handed[-1] == "check_login"
    auth.store.dispose()


@pytest.mark.parametrize("name", ["student1\n", "student1 ", " student1", "student01", "student١", "student", "Student1", "student1\x00"])
def test_student_names_are_matched_whole(name):
    assert student_number(name) is None


def test_student_names():
    assert student_number("student1") == 1 and student_number("student2000") == 2000
    assert student_number(None) is None and student_number(5) is None
