"""A seat's leftovers outside its home: removal never fails the CLEANUP, and reaches /run/lock and mailboxes.

Real accounts ``student520``/``student521`` (this module's seats, deleted
afterwards), real files made by the student's own uid.
"""

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.sysusers import as_student, ensure_accounts, require_root, uid  # noqa: F401 - require_root is a fixture
from wod_jupyterhub.config import Wod
from wod_jupyterhub.seats import accounts as etc_accounts
from wod_jupyterhub.seats import fdtrees, leftovers

pytestmark = pytest.mark.usefixtures("require_root")

S, N = 520, 521  # the seat being cleaned, a neighbour


@pytest.fixture(scope="module")
def accounts(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    ensure_accounts(S, N, tmp_path_factory.mktemp("users") / "students")
    yield
    etc_accounts.remove({f"student{n}" for n in (S, N)})


@pytest.fixture
def place():
    top = Path("/tmp") / f"wod-left-{os.getpid()}-{time.monotonic_ns()}"
    top.mkdir(mode=0o711)
    top.chmod(0o711)
    yield top
    subprocess.run(["umount", "-l", str(top / "tmp" / "s-dir" / "busy")], capture_output=True)
    fdtrees.erase_tree(str(top))


def test_an_entry_that_cannot_be_removed_is_listed_and_the_rest_goes(accounts, place):
    # A neighbour racing names in a world-writable, non-sticky folder makes the erase fail with
    # ENOTEMPTY; that race cannot be set up deterministically, so a mount point inside the student's
    # folder stands in for it: its rmdir fails with EBUSY, a real OSError other than FileNotFoundError.
    tmp = place / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    r = as_student(S, "import os, sys\nos.makedirs(sys.argv[1] + '/s-dir/busy')\nopen(sys.argv[1] + '/s-file', 'w').write('x')\n", tmp)
    assert r.returncode == 0, r.stderr
    subprocess.run(["mount", "-t", "tmpfs", "none", str(tmp / "s-dir" / "busy")], check=True)
    done = leftovers.remove_leftovers(uid(S), uid(S), f"student{S}", temp_folders=[str(tmp)], mail_spools=[])
    assert done["temp_files"] == 1, done  # s-file went although s-dir failed
    assert not (tmp / "s-file").exists()
    [problem] = done["problems"]
    assert problem["path"] == f"{tmp}/s-dir" and problem["errno"] == errno.EBUSY, problem


def test_a_neighbours_open_folder_is_searched_but_not_descended(accounts, place):
    tmp = place / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    # the neighbour's world-writable, non-sticky folder: names in it can be swapped under the walk
    r = as_student(
        N,
        "import os, sys\nos.makedirs(sys.argv[1] + '/open/sub')\nos.chmod(sys.argv[1] + '/open', 0o777)\nos.chmod(sys.argv[1] + '/open/sub', 0o777)\n",
        tmp,
    )
    assert r.returncode == 0, r.stderr
    r = as_student(S, "import sys\nopen(sys.argv[1] + '/open/s-file', 'w').write('x')\nopen(sys.argv[1] + '/open/sub/s-deep', 'w').write('x')\n", tmp)
    assert r.returncode == 0, r.stderr
    problems = []
    assert leftovers.remove_temp_files(uid(S), uid(S), [str(tmp)], problems) == 1
    assert not (tmp / "open" / "s-file").exists()  # its own entry there goes
    assert (tmp / "open" / "sub" / "s-deep").exists()  # below it, nothing is touched
    assert problems == []


def test_run_lock_is_a_default_temp_folder_and_is_cleared(accounts):
    if not os.path.isdir("/run/lock"):
        pytest.skip("no /run/lock on this system")
    assert "/run/lock" in Wod().temp_folders
    lock = Path("/run/lock") / f"wod-left-{os.getpid()}"
    r = as_student(S, "import sys\nopen(sys.argv[1], 'w').write('x')\n", lock)
    assert r.returncode == 0, r.stderr
    try:
        done = leftovers.remove_leftovers(uid(S), uid(S), f"student{S}", temp_folders=[f for f in Wod().temp_folders if f.startswith("/run/")], mail_spools=[])
        assert done["temp_files"] == 1 and not lock.exists(), done
    finally:
        lock.unlink(missing_ok=True)


def test_the_mailbox_goes_and_the_neighbours_stays(accounts):
    assert os.path.isdir("/var/mail")
    mine, theirs = Path(f"/var/mail/student{S}"), Path(f"/var/mail/student{N}")
    for box, n in ((mine, S), (theirs, N)):
        box.write_text("From someone\n\nsecret\n")
        os.chown(box, uid(n), uid(n))
    try:
        done = leftovers.remove_leftovers(uid(S), uid(S), f"student{S}", temp_folders=[])  # the default mail spools
        assert done["mail"] == 1 and not mine.exists(), done
        assert theirs.read_text().endswith("secret\n")
    finally:
        mine.unlink(missing_ok=True)
        theirs.unlink(missing_ok=True)
