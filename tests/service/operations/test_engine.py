"""The engine and the verbs through their public methods, on a real database, without a hub.

The end-to-end tests (tests/integration/: test_service_api.py, test_e2e.py, test_service_crash.py)
run the same code behind the REST API with a real hub; here the engine runs
in the test's own event loop: ``Engine.submit`` / ``wait`` / ``recover`` /
``stop``, the verbs of ``VERBS`` and verbs of the test's own (the engine
knows no verb, so a test may hand it a table). There is no hub here (its
API is not configured, as on a backend without one), and portal callbacks
are off: both are exercised by the end-to-end tests.
"""

import asyncio
import logging
import re
import subprocess

import pytest
from cryptography.fernet import Fernet
from prometheus_client import generate_latest

from tests.hubutil import write_workshop
from tests.svcutil import ahead_cpu_seconds
from wod_jupyterhub.config import Wod
from wod_jupyterhub.errors import BadRequest, Unprocessable
from wod_jupyterhub.leases import _host
from wod_jupyterhub.passwords import Sealer, verify_password
from wod_jupyterhub.service.callbacks.portal import PortalCallbacks, WodPortal
from wod_jupyterhub.service.hooks import WodHooks
from wod_jupyterhub.service.hubclient import HubAPI
from wod_jupyterhub.service.metrics import Metrics
from wod_jupyterhub.service.operations import VERBS, Engine, SeatWork, Views, WodOperations
from wod_jupyterhub.store.models import Operation, Seat, SeatState, Status, Store, utcnow
from wod_jupyterhub.workshops.catalog import CatalogCache
from wod_jupyterhub.workshops.templating import Renderer

LOG = logging.getLogger("test")
WORKSHOP = "WKSHP-Unit"


class Parts:
    def __init__(self, db_url, tmp_path, verbs=None, **settings):
        root = tmp_path / "notebooks"
        if not (root / WORKSHOP).is_dir():
            write_workshop(root, WORKSHOP, (1, 9))
        self.wod = Wod(students_root=str(tmp_path / "students"), db_url=db_url, notebooks=[str(root)], skel="", student_max=50)
        self.settings = WodOperations(**settings)
        self.store = Store(db_url)
        self.sealer = Sealer(Fernet.generate_key().decode())
        outbox = PortalCallbacks(self.store, self.sealer, WodPortal(), self.wod, log=LOG)  # no portal URL: callbacks off
        self.work = SeatWork(
            self.wod, self.settings, catalog=CatalogCache(self.wod), hub=HubAPI(api_url="", token="", log=LOG),
            hooks=WodHooks(self.wod, log=LOG), renderer=Renderer(), sealer=self.sealer, outbox=outbox, log=LOG,
        )
        self.engine = Engine(self.settings, self.store, self.work, verbs=verbs, log=LOG)
        self.views = Views(self.wod, self.store, self.sealer)

    async def run(self, verb, student, **kw):
        op = await self.engine.submit(verb, student, **kw)
        return await self.engine.wait(op.id, 60)

    async def close(self):
        await self.engine.stop()
        self.store.dispose()


async def test_the_histogram_counts_past_1500_operations(sqlite_url, tmp_path):
    """Every operation's duration reaches /metrics: the histogram never stops at a thousand.

    On SQLite only: the subject is the metrics; the engine's queue on PostgreSQL is the other tests'.
    """
    db_url = sqlite_url
    calls = []

    async def noop(run, work):
        """NOOP: one step."""
        await run.step("note", lambda: _note(calls, run.student))

    parts = Parts(db_url, tmp_path, verbs={"NOOP": noop}, poll_interval=0.05)
    metrics = Metrics()
    parts.engine.on_end(metrics.operation_ended)
    parts.engine.start()
    try:
        ops = []
        for i in range(1500):
            ops.append(await parts.engine.submit("NOOP", 1 + i % 50))
        for op in ops:
            assert (await parts.engine.wait(op.id, 120)).status == Status.SUCCEEDED
        text = metrics.render(store=parts.store, running=parts.engine.running).decode()
    finally:
        await parts.close()
    assert len(calls) == 1500
    assert re.search(r'^wod_operation_seconds_count\{verb="NOOP"\} 1500\.0$', text, re.M), text
    assert re.search(r'^wod_operation_seconds_bucket\{le="\+Inf",verb="NOOP"\} 1500\.0$', text, re.M), text
    assert re.search(r'^wod_operations_finished_total\{status="succeeded"\} 1500\.0$', text, re.M), text
    assert "# TYPE wod_operations_finished_total counter" in text


async def _note(calls, n):
    calls.append(n)
    return {"n": n}


async def test_submit_refuses_what_no_verb_could_do(db_url, tmp_path):
    parts = Parts(db_url, tmp_path)
    try:
        with pytest.raises(Unprocessable, match="unknown verb"):
            await parts.engine.submit("DANCE", 1)
        # One check of student numbers, one status for "out of range" (the views use it too).
        for n in (0, -1, 51):
            with pytest.raises(Unprocessable) as e:
                await parts.engine.submit("CLEANUP", n, customer="c")
            assert e.value.code == "student_out_of_range"
            with pytest.raises(Unprocessable) as e:
                parts.views.student_json(n)
            assert e.value.code == "student_out_of_range"
        with pytest.raises(BadRequest) as e:
            await parts.engine.submit("CLEANUP", "3", customer="c")
        assert e.value.code == "bad_student"
        with pytest.raises(Unprocessable, match="outside the range"):
            await parts.engine.submit("CREATE", 10, customer="c", email="e", workshop=WORKSHOP)
        with parts.store.Session() as s:
            assert s.query(Operation).count() == 0  # nothing was written
    finally:
        await parts.close()


async def test_create_and_cleanup_tell_their_story(db_url, tmp_path):
    parts = Parts(db_url, tmp_path)
    parts.engine.start()
    try:
        op = await parts.run("CREATE", 3, customer="c1", email="e@x", workshop=WORKSHOP)
        assert op.status == Status.SUCCEEDED, (op.error, op.steps)
        assert [(s["name"], s["status"]) for s in op.steps] == [
            ("rotate", "done"), ("hub", "done"), ("hooks-create", "skipped"), ("provision", "done"),
            ("hooks-post-copy", "skipped"), ("assign", "done"),
        ]
        assert op.steps[1]["detail"] == {"skipped": "no hub API configured"}
        assert "no create-WKSHP-Unit.sh" in op.steps[2]["detail"]["reason"]
        password = parts.views.operation_json(op, reveal=True)["result"]["password"]
        st = parts.store.student(3)
        assert st.state == SeatState.ACTIVE and st.customer == "c1" and verify_password(password, st.password_hash)
        assert "for student3" in (parts.wod.home(3) / WORKSHOP / "0-ReadMeFirst.ipynb").read_text()

        op = await parts.run("CLEANUP", 3, customer="c1")
        assert op.status == Status.SUCCEEDED, (op.error, op.steps)
        assert [s["name"] for s in op.steps] == ["rotate", "hooks-cleanup", "end-sessions", "completion", "release"]
        assert op.workshop == WORKSHOP  # taken from the seat
        st = parts.store.student(3)
        assert st.state == SeatState.FREE and st.customer is None and not parts.wod.home(3).exists()
        assert not verify_password(password, st.password_hash)
    finally:
        await parts.close()


def _ahead_cpu(metrics) -> dict:
    return ahead_cpu_seconds(generate_latest(metrics.registry).decode())


async def test_the_cpu_of_work_done_ahead_reaches_the_metrics_and_only_that(db_url, tmp_path):
    """What a burst costs must be told apart from what the service did while idle for the next one (bench.burst)."""
    parts = Parts(db_url, tmp_path)
    metrics = Metrics()
    parts.work.on_ahead_cpu = metrics.ahead_cpu
    parts.engine.start()
    try:
        assert _ahead_cpu(metrics) == {"hash": 0.0, "background": 0.0}
        await parts.work.hash_ahead(2)
        hashed = _ahead_cpu(metrics)["hash"]
        assert hashed > 0  # two scrypts
        assert await parts.work.in_background(lambda: sum(range(300_000))) > 0
        background = _ahead_cpu(metrics)["background"]
        assert background > 0
        for n in (4, 5, 6):  # two rotations take the passwords hashed ahead, the third hashes one on the spot
            op = await parts.run("CREATE", n, customer=f"c{n}", email="e@x", workshop=WORKSHOP)
            assert op.status == Status.SUCCEEDED, (op.error, op.steps)
        assert parts.work.hashed_ahead == 0
        assert _ahead_cpu(metrics) == {"hash": hashed, "background": background}
    finally:
        await parts.close()


async def test_passwords_hashed_ahead_serve_one_rotation_each(db_url, tmp_path):
    # The preparer hashes passwords while idle; each rotation takes one, and the seat's hash is that password's.
    parts = Parts(db_url, tmp_path)
    parts.engine.start()
    try:
        assert await parts.work.hash_ahead(2) == 2 and parts.work.hashed_ahead == 2
        op = await parts.run("CREATE", 4, customer="c1", email="e@x", workshop=WORKSHOP)
        assert op.status == Status.SUCCEEDED, (op.error, op.steps)
        assert parts.work.hashed_ahead == 1
        first = parts.views.operation_json(op, reveal=True)["result"]["password"]
        assert verify_password(first, parts.store.student(4).password_hash)
        # What the waiter got is the row as stored (the engine hands over the row it just committed).
        assert parts.views.operation_json(op, reveal=True) == parts.views.operation_json(parts.engine.read(op.id), reveal=True)

        op = await parts.run("CLEANUP", 4, customer="c1")
        assert op.status == Status.SUCCEEDED and parts.work.hashed_ahead == 0
        op = await parts.run("CREATE", 4, customer="c2", email="f@x", workshop=WORKSHOP)  # none left: hashed on the spot
        second = parts.views.operation_json(op, reveal=True)["result"]["password"]
        assert second != first and verify_password(second, parts.store.student(4).password_hash)
    finally:
        await parts.close()


async def test_a_resumed_operation_lists_what_it_skips_in_step_order(db_url, tmp_path):
    """A dead process's operation is taken over; its journal says what the new run does not do again."""
    ran = []

    async def three(run, work):
        """THREE: zeta, alpha, mid: names out of alphabetical order on purpose."""
        for name in ("zeta", "alpha", "mid"):
            await run.step(name, lambda name=name: _note(ran, name))

    dead = subprocess.Popen(["true"])
    dead.wait()
    parts = Parts(db_url, tmp_path, verbs={"THREE": three})
    try:
        owner = f"{_host()}:{dead.pid}:1:dead"
        done = [{"name": n, "status": "done", "started": None, "finished": None} for n in ("zeta", "alpha")]
        with parts.store.session() as s:
            s.add(Seat(number=4, state=SeatState.FREE, lock_owner=f"{owner}/{'9' * 32}", lock_expires=utcnow()))
            s.add(Operation(id="9" * 32, verb="THREE", student=4, status=Status.RUNNING, owner=owner, steps=done,
                            result={}, created=utcnow(), heartbeat=utcnow()))
        parts.engine.recover()
        op = await parts.engine.wait("9" * 32, 30)
        assert op.status == Status.SUCCEEDED, (op.error, op.steps)
        assert ran == ["mid"]
        recover = [s for s in op.steps if s["name"] == "recover"]
        assert recover and recover[0]["detail"]["resumes_after"] == ["zeta", "alpha"]
        assert parts.store.student(4).lock_owner is None
    finally:
        await parts.close()


async def test_a_failing_step_is_journaled_and_fails_the_operation(db_url, tmp_path):
    async def broken(run, work):
        """BROKEN: fine, then a step that raises a user's error."""
        await run.step("fine", None)
        await run.step("boom", _boom)
        await run.step("never", None)

    parts = Parts(db_url, tmp_path, verbs={"BROKEN": broken})
    parts.engine.start()
    try:
        op = await parts.run("BROKEN", 5)
        assert op.status == Status.FAILED and op.error == "the boom step refused"
        assert [(s["name"], s["status"]) for s in op.steps] == [("fine", "done"), ("boom", "failed")]
        assert op.steps[1]["error"] == "the boom step refused"
        assert parts.store.student(5).lock_owner is None
    finally:
        await parts.close()


async def _boom():
    raise Unprocessable("the boom step refused")


async def test_stop_cancels_a_running_verb_within_its_grace(db_url, tmp_path):
    """A verb still running when the grace ends is cancelled; it stays running, for the next start to resume."""
    started = asyncio.Event()

    async def slow(run, work):
        """SLOW: a step that never ends by itself."""

        async def forever():
            started.set()
            await asyncio.sleep(3600)

        await run.step("forever", forever)

    parts = Parts(db_url, tmp_path, verbs={"SLOW": slow})
    parts.engine.start()
    try:
        op = await parts.engine.submit("SLOW", 6)
        await asyncio.wait_for(started.wait(), 30)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await parts.engine.stop(grace=0.5)
        assert loop.time() - t0 < 3
        assert parts.views.operation(op.id).status == Status.RUNNING
    finally:
        parts.store.dispose()


def test_the_verb_table_names_each_verb():
    assert {verb: fn.__name__ for verb, fn in VERBS.items()} == {
        "CREATE": "create", "CLEANUP": "cleanup", "RESET": "reset", "PURGE": "purge",
        "PASSWORD": "password",
    }
    for fn in VERBS.values():
        assert "Steps, in order:" in fn.__doc__, fn.__name__
