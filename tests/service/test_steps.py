"""The service's record of checks (SQLite and PostgreSQL): one row per assignment and step, verified steps kept,
one more hint per failure, CLEANUP's checks of what is not verified yet, the instructor's summary.

Checks run as real child processes under this test's uid (the seat's uid and group: tests/integration/test_steps.py).
"""

import asyncio
import datetime
import shutil

import pytest

from wod_jupyterhub.config import Wod, share_dir
from wod_jupyterhub.errors import Conflict, NotFound
from wod_jupyterhub.service.steps import StepChecks, WodSteps
from wod_jupyterhub.store.models import Seat, SeatState, StepResult, Store
from wod_jupyterhub.workshops.catalog import CatalogCache
from wod_jupyterhub.workshops.steps import steps_ratio
from wod_jupyterhub.workshops.templating import Renderer

SAMPLE = "WKSHP-VerifiedSteps"


@pytest.fixture
def env(tmp_path, db_url):
    root = tmp_path / "notebooks"
    shutil.copytree(share_dir() / "workshops" / SAMPLE, root / SAMPLE)
    wod = Wod(students_root=str(tmp_path / "students"), notebooks=[str(root)], system_users=False, cgroups=False)
    store = Store(db_url)
    at = datetime.datetime(2026, 12, 7, 9, 0)
    with store.session() as s:
        for n in (41, 42):
            s.add(Seat(number=n, state=SeatState.ACTIVE, customer=f"c{n}", workshop=SAMPLE, assigned_at=at))
            (tmp_path / "students" / f"student{n}" / SAMPLE).mkdir(parents=True)
        s.add(Seat(number=43, state=SeatState.FREE))
    checker = StepChecks(WodSteps(timeout=10), wod, store, CatalogCache(wod), Renderer(), hostname="test")
    yield checker, tmp_path / "students"
    checker.close()
    store.dispose()


def test_a_check_fails_with_its_message_and_first_hint_then_passes_and_stays_verified(env):
    checker, students = env
    view = checker.view(41)
    assert (view["verified"], view["total"]) == (0, 3)
    assert [s["status"] for s in view["steps"]] == ["unchecked"] * 3
    failed = asyncio.run(checker.check(41, 1))
    assert failed["status"] == "failed" and failed["message"] == "There is no greeting.txt in the workshop's folder yet."
    assert failed["hints"] == ["The file is greeting.txt, in this workshop's folder (beside this notebook)."]
    again = asyncio.run(checker.check(41, 1))
    assert again["hints"][1] == "Its only line is: Hello from student41"  # the second hint, rendered for the seat
    (students / "student41" / SAMPLE / "greeting.txt").write_text("Hello from student41\n")
    passed = asyncio.run(checker.check(41, 1))
    assert (passed["status"], passed["message"], passed["hints"]) == ("passed", "Done.", [])
    # Verified stays verified: undoing the step afterwards runs no check and changes nothing.
    (students / "student41" / SAMPLE / "greeting.txt").unlink()
    assert asyncio.run(checker.check(41, 1))["status"] == "passed"
    with checker.store.session() as s:
        [row] = s.query(StepResult).filter_by(student=41).all()
        assert (row.checks, row.failures, row.passed, row.passed_at is not None) == (3, 2, True, True)
    assert checker.view(42)["verified"] == 0  # another seat's results are its own
    assert (checker.counts(41), checker.counts(43)) == ({"verified": 1, "total": 3}, None)


def test_unknown_steps_and_seats_without_a_workshop_are_refused_with_a_sentence(env):
    checker, _ = env
    with pytest.raises(NotFound, match="has no step 4"):
        asyncio.run(checker.check(41, 4))
    with pytest.raises(Conflict, match="holds no workshop now"):
        checker.view(43)


def test_a_concurrent_check_of_one_seat_waits_for_the_running_one(env):
    checker, students = env
    (students / "student41" / SAMPLE / "answer.txt").write_text("1\n")

    async def many():
        return await asyncio.gather(*(checker.check(41, 3) for _ in range(4)))

    answers = asyncio.run(many())
    assert {a["status"] for a in answers} == {"failed"}
    with checker.store.session() as s:
        [row] = s.query(StepResult).filter_by(student=41, step=3).all()
        assert (row.checks, row.failures) == (4, 4)


def test_cleanup_checks_what_is_not_verified_and_the_ratio_is_verified_over_total(env):
    checker, students = env
    folder = students / "student42" / SAMPLE
    (folder / "greeting.txt").write_text("Hello from student42\n")
    assert asyncio.run(checker.check(42, 1))["status"] == "passed"
    (folder / "answer.txt").write_text(str(sum(i * i for i in range(1, 421))) + "\n")  # done, never checked
    out = checker.verify_remaining(42, SAMPLE)
    assert out == {"verified": 2, "total": 3, "rechecked": [2, 3]}
    assert steps_ratio(out["verified"], out["total"]) == 67
    [entry] = checker.summary(SAMPLE)
    assert [s["passed"] for s in entry["steps"]] == [1, 0, 1]
    seats = {s["student"]: s for s in entry["seats"]}
    assert (seats[42]["verified"], seats[42]["stuck_on"], seats[41]["stuck_on"]) == ([1, 3], 2, 1)
    assert checker.verify_remaining(42, "WKSHP-Nothing") is None
