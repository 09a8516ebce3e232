"""A seat handed on carries nothing of its previous participant: real uids, real processes.

Each test plays the student with a real process under the student's uid
(``sysusers.as_student``, a setuid child), as root may; the accounts are
``student200``.. of this suite's range, made by ``wod users create``.
"""

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.sysusers import Hopper, as_student, ensure_accounts, require_root, uid  # noqa: F401 - require_root is a fixture
from wod_jupyterhub.config import Wod, share_dir
from wod_jupyterhub.seats import fdtrees as trees
from wod_jupyterhub.seats import homes, leftovers, processes
from wod_jupyterhub.workshops.catalog import load_catalog
from wod_jupyterhub.workshops.variables import template_variables

pytestmark = pytest.mark.usefixtures("require_root")

A, B = 240, 241  # two students of this module


@pytest.fixture(scope="module")
def accounts(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    ensure_accounts(A, B, tmp_path_factory.mktemp("users") / "students")
    yield


@pytest.fixture
def place():
    """A folder students can pass through (pytest's own is root's, 0700), removed afterwards."""
    top = Path("/tmp") / f"wod-iso-{os.getpid()}-{time.monotonic_ns()}"
    top.mkdir(mode=0o711)
    top.chmod(0o711)
    yield top
    trees.erase_tree(str(top))


def student_dir(place: Path, n: int, name: str = None) -> Path:
    d = place / (name or f"s{n}")
    d.mkdir()
    os.chown(d, uid(n), uid(n))
    return d


# -- item 1: a home is its student's alone -------------------------------------------------------

# Tries to list a folder and read a file; prints what it managed ("listed", "read") or the errors.
PEEK = """
import os, sys
folder, path = sys.argv[1], sys.argv[2]
out = []
for what, act in (("listed", lambda: os.listdir(folder)), ("read", lambda: open(path).read())):
    try:
        act()
        out.append(what)
    except OSError as e:
        out.append(type(e).__name__)
print(" ".join(out))
"""


def test_another_student_cannot_list_a_home_or_read_the_password_in_its_readme(accounts, place):
    wod = Wod(students_root=str(place / "students"), uid_base=10000, system_users=True, variables={"BRANDING": "B", "BRANDINGWOD": "W"})
    ws = load_catalog([share_dir() / "workshops"]).get("WKSHP-PythonBasics")
    password = "Secret-of-A-42"
    variables = template_variables(wod, ws, A, password, modews="WKSHP", hostname="wodhost")
    home = homes.provision(wod, ws, A, variables, uid=uid(A), gid=uid(A))
    readme = home / ws.name / "0-ReadMeFirst.ipynb"
    assert password in readme.read_text()  # the ReadMeFirst does carry it

    # student A reads their own; student B neither lists the home nor reads the notebook
    assert as_student(A, PEEK, home, readme).stdout.split() == ["listed", "read"]
    assert as_student(B, PEEK, home, readme).stdout.split() == ["PermissionError", "PermissionError"]
    assert as_student(B, PEEK, home / ws.name, readme).stdout.split() == ["PermissionError", "PermissionError"]
    # nor the folder of the homes (which seats are in use), while each student still reaches their own
    assert as_student(B, PEEK, wod.students_root, readme).stdout.split()[0] == "PermissionError"
    # and nothing inside gives the group or others a bit, should the student open their home's top
    loose = [str(p) for p in [home, *home.rglob("*")] if not p.is_symlink() and p.lstat().st_mode & 0o077]
    assert loose == []
    homes.drain()


# -- item 6: no process of the uid survives ------------------------------------------------------


def test_a_pid_hopping_process_is_killed_and_another_uids_survives(accounts, place):
    other = subprocess.Popen(["/usr/bin/python3", "-c", "import time; time.sleep(120)"], user=uid(A), group=uid(A), extra_groups=[])
    with Hopper(B, student_dir(place, B)) as hopper:
        assert hopper.alive()
        seen = processes.kill_uid(uid(B))
        assert not hopper.alive(1.0), "the forking process survived the kill"
        assert processes.live_pids(uid(B)) == []
        assert seen >= 0
    assert other.poll() is None  # student A's process is not B's business
    other.kill()
    other.wait()


def test_processes_that_will_not_die_are_reported_not_ignored(monkeypatch):
    monkeypatch.setattr(processes, "live_pids", lambda u: [12345678])
    monkeypatch.setattr(processes, "_kill_as", lambda u, g: None)
    with pytest.raises(processes.ProcessesSurvived, match="still live"):
        processes.kill_uid(uid(B), timeout=0.2)
    with pytest.raises(ValueError):
        processes.kill_uid(0)


# -- item 5: erase iteratively, by descriptor, following no link ---------------------------------


def deep_tree(top: Path, depth: int) -> None:
    fd = os.open(top, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(os.open("f.txt", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=nxt))
        os.close(fd)
        fd = nxt
    os.symlink("/etc", "etc-link", dir_fd=fd)
    os.close(fd)


def test_erase_removes_a_3000_deep_tree_and_follows_no_link(place):
    outside = place / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    home = place / "home"
    home.mkdir()
    deep_tree(home, 3000)
    (home / "to-outside").symlink_to(outside)
    (home / "ro").mkdir()
    (home / "ro" / "x").write_text("x")
    (home / "ro").chmod(0o500)  # its owner made it unwritable
    trees.erase_tree(str(home))
    assert not os.path.lexists(home)
    assert (outside / "keep.txt").read_text() == "precious"
    assert os.path.exists("/etc/passwd")
    trees.erase_tree(str(home))  # gone already: nothing to do, no error
    link = place / "link"
    link.symlink_to(outside)
    trees.erase_tree(str(link))  # a link is removed, never what it leads to
    assert not os.path.lexists(link) and (outside / "keep.txt").exists()


def test_tree_size_counts_a_deep_tree_and_not_what_links_lead_to(place):
    home = place / "home"
    home.mkdir()
    (home / "big").write_bytes(os.urandom(1 << 20))
    deep_tree(home, 500)
    (home / "root").symlink_to("/")
    size = trees.tree_size(str(home))
    assert (1 << 20) <= size < (1 << 20) + 600 * 8192
    assert trees.tree_size(str(place / "absent")) == 0


# -- item 18: hand a tree over bottom-up, by descriptor --------------------------------------------


def test_chown_hands_the_top_over_last_so_no_student_can_swap_a_folder_for_a_link(accounts, place):
    """A student process waits for the top to become theirs and swaps ``sub`` for a link to a decoy."""
    decoy = place / "decoy"
    decoy.mkdir()
    top = place / "new"
    (top / "sub").mkdir(parents=True)
    names = [f"f{i:05d}" for i in range(3000)]
    for name in names:
        (top / "sub" / name).write_text("")
        (decoy / name).write_text("")
    attacker = subprocess.Popen(
        [
            "/usr/bin/python3",
            "-c",
            "import os, sys, time\n"
            "top, decoy = sys.argv[1], sys.argv[2]\n"
            "end = time.monotonic() + 30\n"
            "while time.monotonic() < end:\n"
            "    try:\n"
            "        os.rename(top + '/sub', top + '/moved')\n"
            "        os.symlink(decoy, top + '/sub')\n"
            "        break\n"
            "    except OSError:\n"
            "        pass\n",
            str(top),
            str(decoy),
        ],
        user=uid(B),
        group=uid(B),
        extra_groups=[],
    )
    time.sleep(0.3)  # the attacker is spinning
    trees.chown_tree(str(top), uid(B), uid(B))
    attacker.wait(40)
    taken = [n for n in names if (decoy / n).lstat().st_uid != 0]
    assert taken == [], f"{len(taken)} files outside the tree were handed to the student"
    assert {p.lstat().st_uid for p in [top, *top.rglob("*")]} == {uid(B)}


# -- item 7: what lives outside the home ---------------------------------------------------------


def test_temp_files_ipc_objects_and_jobs_of_the_uid_go_and_no_one_elses(accounts, place):
    tmp = place / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    shared = tmp / "shared"  # a world-writable folder of someone else, inside
    shared.mkdir()
    shared.chmod(0o1777)
    secret = place / "secret"  # a folder the student cannot write: never entered
    secret.mkdir(mode=0o700)
    (secret / "root-file").write_text("root")
    (tmp / "a-file").write_text("A's")
    os.chown(tmp / "a-file", uid(A), uid(A))
    r = as_student(
        B,
        "import os, sys\n"
        "tmp, target = sys.argv[1], sys.argv[2]\n"
        "open(tmp + '/b-file', 'w').write('x')\n"
        "os.makedirs(tmp + '/b-dir/deep/er')\n"
        "open(tmp + '/b-dir/deep/er/f', 'w').write('x')\n"
        "os.symlink(target, tmp + '/b-link')\n"
        "open(tmp + '/shared/b-inside', 'w').write('x')\n",
        tmp,
        place / "secret",
    )
    assert r.returncode == 0, r.stderr
    ipc = as_student(
        B,
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "IPC_PRIVATE, IPC_CREAT = 0, 0o1000\n"
        "ids = [libc.shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0o600), libc.semget(IPC_PRIVATE, 1, IPC_CREAT | 0o600),\n"
        "       libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600)]\n"
        "assert min(ids) >= 0, ctypes.get_errno()\n"
        "print(*ids)\n",
    )
    assert ipc.returncode == 0, ipc.stderr
    shm, sem, msg = map(int, ipc.stdout.split())
    assert set(leftovers.ipc_objects(uid(B))) >= {("shm", shm), ("sem", sem), ("msg", msg)}

    removed = leftovers.remove_leftovers(uid(B), uid(B), f"student{B}", temp_folders=[str(tmp)])
    assert removed["temp_files"] == 4 and removed["ipc"] >= 3, removed
    assert sorted(p.name for p in tmp.iterdir()) == ["a-file", "shared"]
    assert list(shared.iterdir()) == []
    assert (secret / "root-file").read_text() == "root"  # the link's target stayed
    assert leftovers.ipc_objects(uid(B)) == []


# Schedules a job with the command of argv; prints its exit status and what it said.
TRY_JOB = "import subprocess, sys; r = subprocess.run(sys.argv[1:], input='* * * * * true\\n', text=True, capture_output=True); print(r.returncode, r.stderr)"


def test_users_create_refuses_cron_and_at_and_the_wipe_removes_spooled_jobs(accounts, tmp_path):
    import shutil

    if not (shutil.which("crontab") and shutil.which("at")):
        pytest.fail("cron and at must be installed (make system-tools)")
    deny = Path("/etc/cron.deny").read_text().split()
    assert f"student{B}" in deny and f"student{B}" in Path("/etc/at.deny").read_text().split()
    r = as_student(B, TRY_JOB, "crontab", "-")
    assert r.stdout.split()[0] != "0" and "not allowed" in r.stdout, r.stdout
    r = as_student(B, TRY_JOB, "at", "now + 1 hour")
    assert r.stdout.split()[0] != "0" and "permission" in r.stdout, r.stdout
    # a job spooled before the refusal (or by someone else for them) goes with the wipe
    spool = tmp_path / "crontabs"
    spool.mkdir()
    (spool / f"student{B}").write_text("* * * * * true\n")
    (spool / "other").write_text("* * * * * true\n")
    owned = spool / "tmp.owned"
    owned.write_text("x")
    os.chown(owned, uid(B), uid(B))
    assert leftovers.remove_spooled_jobs(uid(B), f"student{B}", spools=[str(spool)]) == 2
    assert sorted(p.name for p in spool.iterdir()) == ["other"]


# -- the wipe: processes first, whatever the erase does; a kept home over its size limit goes ---------


def test_the_wipe_kills_and_clears_even_when_the_erase_fails(accounts, place):
    from wod_jupyterhub import errors
    from wod_jupyterhub.seats.wipe import wipe_seat

    wod = Wod(students_root=str(place / "students"), uid_base=10000, system_users=True, temp_folders=[str(place / "tmp")])
    (place / "students").mkdir(mode=0o711)
    (place / "tmp").mkdir(mode=0o1777)
    (place / "tmp").chmod(0o1777)
    (place / "students" / f"student{B}").symlink_to(place)  # a home the erase refuses (it leads out)
    assert as_student(B, "import sys; open(sys.argv[1] + '/b-tmp', 'w').write('x')", place / "tmp").returncode == 0
    with Hopper(B, student_dir(place, B)) as hopper:
        with pytest.raises(errors.BadRequest, match="outside the students folder"):
            wipe_seat(wod, B)
        assert not hopper.alive(1.0)
    assert list((place / "tmp").iterdir()) == []


def test_a_kept_home_over_the_size_limit_is_erased_and_one_under_it_kept(accounts, place):
    from wod_jupyterhub.seats.wipe import wipe_seat

    wod = Wod(students_root=str(place / "students"), uid_base=10000, system_users=True, temp_folders=[], home_size_limit="1M")
    for n, size in ((A, 4096), (B, 3 << 20)):
        home = place / "students" / f"student{n}"
        home.mkdir(parents=True)
        (home / "data").write_bytes(os.urandom(size))
    kept = wipe_seat(wod, A, keep_home=True)
    assert kept["home_bytes"] < 1 << 20 and "erased" not in kept and (place / "students" / f"student{A}" / "data").exists()
    full = wipe_seat(wod, B, keep_home=True)
    assert full["over_limit"] is True and full["erased"] is True and full["home_bytes"] > 3 << 20
    assert not (place / "students" / f"student{B}").exists()


def test_leftovers_and_keyrings_go_even_when_processes_survive_the_kill(accounts, place, monkeypatch):
    """Processes that will not die fail the wipe, but never keep what the uid left elsewhere from going."""
    from wod_jupyterhub.seats import runtime, wipe
    from wod_jupyterhub.seats.processes import ProcessesSurvived

    def survivors(uid, *args, **kwargs):
        raise ProcessesSurvived(f"135 process(es) of uid {uid} still live after 10 s of SIGKILL")

    monkeypatch.setattr(runtime, "kill_uid", survivors)  # the local runtime's end
    wod = Wod(students_root=str(place / "students"), uid_base=10000, system_users=True, temp_folders=[str(place / "tmp")])
    (place / "students").mkdir(mode=0o711)
    (place / "tmp").mkdir(mode=0o1777)
    (place / "tmp").chmod(0o1777)
    assert as_student(B, "import sys; open(sys.argv[1] + '/b-tmp', 'w').write('x')", place / "tmp").returncode == 0
    assert as_student(B, ADD_KEY).returncode == 0
    with pytest.raises(ProcessesSurvived):
        wipe.wipe_seat(wod, B)
    assert list((place / "tmp").iterdir()) == []
    assert as_student(B, FIND_KEY).stdout.split() == ["found:"]


# Adds a key to the uid's keyring (@u) and its default session keyring (@us); then finds them.
ADD_KEY = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
for ring in (-4, -5):
    assert libc.syscall(248, b"user", b"wod-secret", b"payload", 7, ctypes.c_long(ring)) > 0, ctypes.get_errno()
"""
FIND_KEY = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
found = [name for ring, name in ((-4, "@u"), (-5, "@us")) if libc.syscall(250, 10, ctypes.c_long(ring), b"user", b"wod-secret", 0) > 0]
print("found:", *found)
"""


def test_a_uids_keyrings_outlive_its_processes_until_the_wipe_clears_them(accounts):
    from wod_jupyterhub.seats.keyrings import clear_keyrings

    assert as_student(A, ADD_KEY).returncode == 0
    assert as_student(A, FIND_KEY).stdout.split() == ["found:", "@u", "@us"]  # no process of the uid in between
    assert as_student(B, FIND_KEY).stdout.split() == ["found:"]
    assert as_student(B, ADD_KEY).returncode == 0
    assert clear_keyrings(uid(A), uid(A)) is True
    assert as_student(A, FIND_KEY).stdout.split() == ["found:"]
    assert as_student(B, FIND_KEY).stdout.split() == ["found:", "@u", "@us"]  # another uid's are not touched
    clear_keyrings(uid(B), uid(B))
