"""The wipe of a system user's seat kills what the student left running (system_users mode).

A real process under a uid with no account (root may setuid to any uid), as
a student's leftover would be; another uid's process must survive.
"""

import subprocess
import time

import pytest

from wod_jupyterhub.seats.processes import kill_uid

pytestmark = pytest.mark.root(reason="running processes under other uids needs root")

STUDENT_UID, OTHER_UID = 10245, 10246  # students 245 and 246 of tests/sysusers.py's range


def sleeper(uid: int) -> subprocess.Popen:
    return subprocess.Popen(["sleep", "120"], user=uid, group=uid)


def test_every_process_of_the_students_uid_is_killed_and_no_other():
    mine = [sleeper(STUDENT_UID) for _ in range(3)]
    other = sleeper(OTHER_UID)
    try:
        assert kill_uid(STUDENT_UID) == 3
        for p in mine:
            assert p.wait(timeout=10) == -9  # SIGKILL: nothing a student can trap
        time.sleep(0.2)
        assert other.poll() is None
        assert kill_uid(STUDENT_UID) == 0  # nothing left: nothing to do
    finally:
        for p in [*mine, other]:
            if p.poll() is None:
                p.kill()
                p.wait()
