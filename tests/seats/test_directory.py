"""``ldap: true`` workshops against a real OpenLDAP ``slapd`` on loopback (tests/ldaputil.py).

The engine runs in the test's event loop (as in test_engine.py) with a real
database, the real directory client and a real portal stand-in
(tests/portal_server.py) that records the passwords it is sent. The seats'
entries are made by ``wod users create --ldap-only``; a bind as a seat is
checked with ``ldapwhoami``, another client than the service's.
"""

import asyncio
import json
import logging
import os
import subprocess
import sys
import time

import pytest
from cryptography.fernet import Fernet

from tests import ldaputil
from tests.hubutil import write_workshop
from tests.portal_server import DEFAULT_PASSWORD, DEFAULT_USERNAME, PortalServer
from wod_jupyterhub.config import Wod
from wod_jupyterhub.passwords import Sealer
from wod_jupyterhub.seats.directory import Directory, WodLdap
from wod_jupyterhub.service.callbacks.portal import PortalCallbacks, WodPortal
from wod_jupyterhub.service.hooks import WodHooks
from wod_jupyterhub.service.hubclient import HubAPI
from wod_jupyterhub.service.operations import Engine, SeatWork, Views, WodOperations
from wod_jupyterhub.store.models import SeatState, Status, Store
from wod_jupyterhub.workshops.catalog import CatalogCache
from wod_jupyterhub.workshops.templating import Renderer

LOG = logging.getLogger("test.ldap")
WORKSHOP = "WKSHP-Appliance"
PLAIN = "WKSHP-Plain"


@pytest.fixture
def slapd(tmp_path):
    if not ldaputil.available():
        if os.environ.get("CI"):
            pytest.fail("slapd and ldap-utils are missing: make test installs them")
        pytest.skip("slapd and ldap-utils are missing (make test installs them)")
    server = ldaputil.Slapd(tmp_path / "slapd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def ldap_config(tmp_path, slapd, **more) -> str:
    """A configuration file with ``c.WodLdap``; the bind password in a file of its own, never in the text."""
    secret = tmp_path / "ldap.secret"
    secret.write_text(ldaputil.ADMIN_PASSWORD + "\n")
    secret.chmod(0o600)
    lines = [
        f"c.Wod.students_root = {str(tmp_path / 'students')!r}",
        "c.Wod.student_min = 1",
        "c.Wod.student_max = 50",
        f"c.WodLdap.uri = {slapd.uri!r}",
        f"c.WodLdap.bind_dn = {ldaputil.ADMIN_DN!r}",
        f"c.WodLdap.bind_password_file = {str(secret)!r}",
        f"c.WodLdap.seat_dn = {ldaputil.SEAT_DN!r}",
        *(f"c.WodLdap.{k} = {v!r}" for k, v in more.items()),
    ]
    path = tmp_path / "wod_config.py"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def users_create(config: str, first: int, last: int, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wod_jupyterhub.cli", "users", "create", "-f", config, "--from", str(first), "--to", str(last), *extra],
        capture_output=True, text=True, timeout=60,
    )


class Parts:
    """An engine with the directory of ``config``, its outbox sending to ``portal``."""

    def __init__(self, tmp_path, portal, config, **settings):
        from traitlets.config.loader import PyFileConfigLoader

        root = tmp_path / "notebooks"
        if not (root / WORKSHOP).is_dir():
            folder = write_workshop(root, WORKSHOP, (1, 9), reset=True)
            with open(folder / "wod.yml", "a") as f:
                f.write("ldap: true\n")
            write_workshop(root, PLAIN, (10, 19))
        cfg = PyFileConfigLoader(os.path.basename(config), os.path.dirname(config)).load_config()
        self.wod = Wod(config=cfg, db_url=f"sqlite:///{tmp_path / 'wod.sqlite'}", notebooks=[str(root)], skel="")
        self.ldap = WodLdap(config=cfg)
        self.directory = Directory(self.ldap)
        self.settings = WodOperations(poll_interval=0.05, **settings)
        self.store = Store(self.wod.db_url)
        self.sealer = Sealer(Fernet.generate_key().decode())
        portal_settings = WodPortal(
            url=portal.url, username=DEFAULT_USERNAME, password=DEFAULT_PASSWORD, retry_initial=0.02, retry_max=0.2, timeout=5
        )
        self.outbox = PortalCallbacks(self.store, self.sealer, portal_settings, self.wod, log=LOG)
        self.portal = portal
        self.work = SeatWork(
            self.wod, self.settings, catalog=CatalogCache(self.wod), hub=HubAPI(api_url="", token="", log=LOG),
            hooks=WodHooks(self.wod, log=LOG), renderer=Renderer(), sealer=self.sealer, outbox=self.outbox, log=LOG,
            directory=self.directory,
        )
        self.engine = Engine(self.settings, self.store, self.work, log=LOG)
        self.views = Views(self.wod, self.store, self.sealer)
        self.engine.start()

    async def run(self, verb, student, timeout=60, **kw):
        op = await self.engine.submit(verb, student, **kw)
        return await self.engine.wait(op.id, timeout)

    async def delivered(self):
        """Deliver every pending callback to the portal."""
        for _ in range(300):
            if not await asyncio.to_thread(self.outbox.pending):
                return
            await self.outbox.deliver_once()
            await asyncio.sleep(0.02)
        raise AssertionError("callbacks still pending")

    async def portal_password(self, n) -> str | None:
        await self.delivered()
        return self.portal.students.get(str(self.wod.base_student_id + n), {}).get("password")

    async def close(self):
        await self.engine.stop()
        await self.outbox.close()
        self.store.dispose()


def steps(op) -> dict:
    return {s["name"]: s for s in op.steps}


async def found_down(caplog, limit=60.0):
    """Until the ``ldap`` step has found the directory down once and said it tries again (the limit only stops a hung test)."""
    caplog.set_level(logging.WARNING, logger=LOG.name)
    end = time.monotonic() + limit
    while not any("trying again" in r.getMessage() for r in caplog.records if r.name == LOG.name):
        assert time.monotonic() < end, "the ldap step never found the directory down"
        await asyncio.sleep(0.05)


def bind(slapd, n, password) -> bool:
    return ldaputil.can_bind(slapd.uri, ldaputil.SEAT_DN.replace("{N}", str(n)), password)


def test_users_create_adds_the_range_s_entries(tmp_path, slapd):
    config = ldap_config(tmp_path, slapd)
    r = users_create(config, 1, 4, "--ldap-only")
    assert r.returncode == 0, r.stderr
    assert "4 directory entries created, 0 already there" in r.stdout
    r = users_create(config, 1, 6, "--ldap-only")
    assert r.returncode == 0 and "2 directory entries created, 4 already there" in r.stdout, r.stdout + r.stderr
    found = subprocess.run(
        ["ldapsearch", "-x", "-H", slapd.uri, "-b", f"ou=people,{ldaputil.SUFFIX}", "-LLL", "(objectClass=inetOrgPerson)", "uid"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert sorted(line.split(": ")[1] for line in found.splitlines() if line.startswith("uid:")) == [f"student{n}" for n in range(1, 7)]
    # No password yet: nobody binds as a seat before its first CREATE.
    assert not bind(slapd, 1, "")
    # A wrong admin password: a sentence, no traceback, nothing created.
    (tmp_path / "ldap.secret").write_text("wrong\n")
    r = users_create(config, 7, 7, "--ldap-only")
    assert r.returncode == 2 and "refused the bind" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "wrong" not in r.stderr


async def test_every_rotation_sets_the_seat_s_directory_password(tmp_path, slapd, caplog):
    caplog.set_level(logging.DEBUG)
    config = ldap_config(tmp_path, slapd)
    assert users_create(config, 1, 9, "--ldap-only").returncode == 0
    with PortalServer() as portal:
        parts = Parts(tmp_path, portal, config)
        try:
            parts.directory.set_passwords({3: "Before-Create-1"})
            assert bind(slapd, 3, "Before-Create-1")

            op = await parts.run("CREATE", 3, customer="c1", email="e@x", workshop=WORKSHOP)
            assert op.status == Status.SUCCEEDED, (op.error, op.steps)
            assert [s["name"] for s in op.steps][:2] == ["rotate", "ldap"]
            assert steps(op)["ldap"]["detail"] == {"seats": [3], "method": "password-modify"}
            first = await parts.portal_password(3)
            assert first and bind(slapd, 3, first)
            assert not bind(slapd, 3, "Before-Create-1")

            op = await parts.run("CLEANUP", 3, customer="c1")
            assert op.status == Status.SUCCEEDED, (op.error, op.steps)
            assert steps(op)["ldap"]["status"] == "done"
            second = await parts.portal_password(3)
            assert second != first and bind(slapd, 3, second) and not bind(slapd, 3, first)
            assert parts.store.student(3).state == SeatState.KEPT  # reset: true

            op = await parts.run("RESET", 1, student_last=9, workshop=WORKSHOP)
            assert op.status == Status.SUCCEEDED, (op.error, op.steps)
            assert steps(op)["ldap"]["detail"]["seats"] == [3]
            third = await parts.portal_password(3)
            assert third not in (first, second) and bind(slapd, 3, third) and not bind(slapd, 3, second)

            # Another workshop's seat: no ldap step at all.
            op = await parts.run("CREATE", 12, customer="c2", email="e@x", workshop=PLAIN)
            assert op.status == Status.SUCCEEDED and "ldap" not in steps(op)

            for password in (first, second, third):
                assert password not in caplog.text
                assert all(password not in json.dumps(o.steps) for o in [op])
        finally:
            await parts.close()


async def test_a_create_waits_for_the_directory_and_loses_nothing(tmp_path, slapd, caplog):
    """Directory down during a CREATE: no assignment, no password to the portal; once it is back the CREATE ends."""
    config = ldap_config(tmp_path, slapd, retry_for=120.0)
    assert users_create(config, 1, 9, "--ldap-only").returncode == 0
    with PortalServer() as portal:
        parts = Parts(tmp_path, portal, config)
        try:
            slapd.stop()
            op = await parts.engine.submit("CREATE", 4, customer="c1", email="e@x", workshop=WORKSHOP)
            await found_down(caplog)
            now = parts.engine.read(op.id)
            assert now.status == Status.RUNNING and [s["name"] for s in now.steps] == ["rotate"], now.steps
            assert parts.store.student(4).state == SeatState.FREE
            assert await parts.portal_password(4) is None  # the portal heard nothing
            slapd.start()
            op = await parts.engine.wait(op.id, 60)
            assert op.status == Status.SUCCEEDED, (op.error, op.steps)
            assert steps(op)["ldap"]["detail"]["attempts"] > 1
            password = await parts.portal_password(4)
            assert password and bind(slapd, 4, password)
            assert parts.store.student(4).state == SeatState.ACTIVE
        finally:
            await parts.close()


async def test_a_directory_that_stays_down_fails_the_create_not_the_take_back(tmp_path, slapd):
    config = ldap_config(tmp_path, slapd, retry_for=1.0)
    assert users_create(config, 1, 9, "--ldap-only").returncode == 0
    with PortalServer() as portal:
        parts = Parts(tmp_path, portal, config)
        try:
            op = await parts.run("CREATE", 5, customer="c1", email="e@x", workshop=WORKSHOP)
            assert op.status == Status.SUCCEEDED
            given = await parts.portal_password(5)
            slapd.stop()

            # CLEANUP takes the seat back all the same, and says what it could not do.
            op = await parts.run("CLEANUP", 5, customer="c1")
            assert op.status == Status.SUCCEEDED, (op.error, op.steps)
            assert "cannot be reached" in steps(op)["ldap"]["detail"]["warning"]
            assert parts.store.student(5).state == SeatState.KEPT

            # PURGE: one attempt, a warning.
            op = await parts.run("PURGE", 5)
            assert op.status == Status.SUCCEEDED, (op.error, op.steps)
            assert steps(op)["ldap"]["detail"]["attempts"] == 1

            # CREATE: fails, with a sentence; the seat is not handed out and the portal hears no password.
            op = await parts.run("CREATE", 6, customer="c2", email="e@x", workshop=WORKSHOP)
            assert op.status == Status.FAILED
            assert "cannot be reached" in op.error and "not handed out" in op.error, op.error
            assert steps(op)["ldap"]["status"] == "failed"
            assert parts.store.student(6).state == SeatState.FREE and not parts.wod.home(6).exists()
            assert await parts.portal_password(6) is None

            slapd.start()
            assert bind(slapd, 5, given)  # what the take-back could not change: the next CREATE does
            op = await parts.run("CREATE", 5, customer="c3", email="e@x", workshop=WORKSHOP)
            assert op.status == Status.SUCCEEDED, (op.error, op.steps)
            fresh = await parts.portal_password(5)
            assert bind(slapd, 5, fresh) and not bind(slapd, 5, given)
            op = await parts.run("CREATE", 6, customer="c2", email="e@x", workshop=WORKSHOP)
            assert op.status == Status.SUCCEEDED and bind(slapd, 6, await parts.portal_password(6))
        finally:
            await parts.close()


async def test_an_ldap_workshop_without_a_directory_is_never_handed_out(tmp_path):
    config = tmp_path / "none.py"
    config.write_text(f"c.Wod.students_root = {str(tmp_path / 'students')!r}\n")
    with PortalServer() as portal:
        parts = Parts(tmp_path, portal, str(config))
        try:
            op = await parts.run("CREATE", 2, customer="c1", email="e@x", workshop=WORKSHOP)
            assert op.status == Status.FAILED and "no directory is configured (c.WodLdap.uri)" in op.error, op.error
            assert parts.store.student(2).state == SeatState.FREE and await parts.portal_password(2) is None
        finally:
            await parts.close()


def test_the_settings_are_checked_and_the_password_never_in_the_text(tmp_path, monkeypatch):
    from traitlets import TraitError

    for bad in (dict(uri="http://x"), dict(seat_dn="uid=student,dc=x"), dict(seat_dn="{N}"), dict(timeout=0), dict(password_hash="MD5")):
        with pytest.raises(TraitError):
            WodLdap(**bad)
    monkeypatch.setenv("WOD_LDAP_PASSWORD", "from-env")
    assert WodLdap().read_bind_password() == "from-env"
    secret = tmp_path / "s"
    secret.write_text("from-file\nignored\n")
    secret.chmod(0o600)
    assert WodLdap(bind_password_file=str(secret)).read_bind_password() == "from-file"
    with pytest.raises(TraitError, match="cannot be read"):
        WodLdap(bind_password_file=str(tmp_path / "missing")).read_bind_password()
    assert "password" not in {name for name in WodLdap.class_trait_names() if name != "bind_password_file" and name != "bind_password_env"}


async def test_a_password_rotation_tells_the_portal_once_the_directory_knows(tmp_path, slapd, caplog):
    """PASSWORD (any verb that hands a new password out): the portal hears it after the ldap step, never before."""
    config = ldap_config(tmp_path, slapd, retry_for=120.0)
    assert users_create(config, 1, 9, "--ldap-only").returncode == 0
    with PortalServer() as portal:
        parts = Parts(tmp_path, portal, config)
        try:
            op = await parts.run("CREATE", 7, customer="c1", email="e@x", workshop=WORKSHOP)
            assert op.status == Status.SUCCEEDED, (op.error, op.steps)
            given = await parts.portal_password(7)
            slapd.stop()
            op = await parts.engine.submit("PASSWORD", 7, customer="c1", workshop=WORKSHOP)
            await found_down(caplog)
            now = parts.engine.read(op.id)
            assert now.status == Status.RUNNING and [s["name"] for s in now.steps] == ["rotate"], now.steps
            assert await parts.portal_password(7) == given  # not told yet
            slapd.start()
            op = await parts.engine.wait(op.id, 60)
            assert op.status == Status.SUCCEEDED, (op.error, op.steps)
            assert [s["name"] for s in op.steps] == ["rotate", "ldap", "end-sessions", "reopen"]
            fresh = await parts.portal_password(7)
            assert fresh != given and bind(slapd, 7, fresh) and not bind(slapd, 7, given)
        finally:
            await parts.close()
