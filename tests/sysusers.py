"""Real Linux accounts and real processes under a student's uid, for the system-users tests.

Needs root (CI runs as root; elsewhere these tests skip, and under CI a
non-root run fails instead). The accounts are ``student<N>`` with uid and
gid ``UID_BASE + N``, made by ``wod users create`` itself and reused
idempotently: this suite owns the numbers of :data:`NUMBERS` only, other
suites on the same machine use others.

What a student does is run by :func:`as_student`: a child process set to
the student's uid and gid (no supplementary groups), running the system's
Python, which every account can execute (the suite's own may live under
``/root``).
"""

import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UID_BASE = 10000
NUMBERS = range(200, 250)
#: the seats of tests/seats/test_leftovers.py, made and deleted there
LEFTOVER_NUMBERS = range(520, 530)
STUDENT_PYTHON = "/usr/bin/python3"


@pytest.fixture
def require_root():
    """Use in the tests that need root: skipped without it, except under CI, where that fails the run."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the system-users tests need root (real accounts, setuid children); CI runs as root")
        pytest.skip("the system-users tests need root (real accounts, setuid children)")


def _range_of(n: int) -> range:
    for numbers in (NUMBERS, LEFTOVER_NUMBERS):
        if n in numbers:
            return numbers
    raise AssertionError(f"student{n} is not one of this suite's seats {NUMBERS} or {LEFTOVER_NUMBERS}")


def uid(n: int) -> int:
    _range_of(n)
    return UID_BASE + n


def ensure_accounts(first: int, last: int, students_root) -> None:
    """``wod users create`` for ``student<first>..student<last>`` (idempotent: existing accounts are kept)."""
    numbers = _range_of(first)
    assert last in numbers
    cfg = Path(students_root).parent / f"users-{first}-{last}.py"
    cfg.write_text(
        f"c.Wod.students_root = {str(students_root)!r}\nc.Wod.uid_base = {UID_BASE}\n"
        f"c.Wod.student_min = {numbers.start}\nc.Wod.student_max = {numbers.stop - 1}\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "wod_jupyterhub.cli", "users", "create", "-f", str(cfg), "--from", str(first), "--to", str(last)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def as_student(n: int, code: str, *args, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Run ``code`` with the system's Python as student ``n``'s uid; its output, its exit status."""
    u = uid(n)
    return subprocess.run(
        [STUDENT_PYTHON, "-c", code, *map(str, args)],
        user=u,
        group=u,
        extra_groups=[],
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


# A pid-hopping process: it forks and its parent exits, again and again, so its pid is never the one a
# pass over /proc is looking at. It leaves a heartbeat (a counter in a file), the only sure sign it lives.
_HOP = """
import os, sys, time
path = sys.argv[1]
n = 0
while True:
    n += 1
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, str(n).encode())
    os.close(fd)
    os.rename(path + ".tmp", path)
    if os.fork():
        os._exit(0)
"""

# Its reaper: a root process that adopts the hopper's orphans (PR_SET_CHILD_SUBREAPER) and lets the kernel
# reap them at once (SIGCHLD ignored): without it every hop would leave a zombie for a slow PID 1.
_REAPER = """
import ctypes, os, signal, sys, time
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
uid, heartbeat, code = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if os.fork() == 0:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    os.execv(sys.argv[4], [sys.argv[4], "-c", code, heartbeat])
while True:
    time.sleep(3600)
"""


class Hopper:
    """A forking process of student ``n`` whose life is read from its heartbeat file (in a folder it owns)."""

    def __init__(self, n: int, folder: Path):
        self.n = n
        self.heartbeat = Path(folder) / "heartbeat"
        self.reaper = None

    def start(self) -> "Hopper":
        self.reaper = subprocess.Popen(
            [sys.executable, "-c", _REAPER, str(uid(self.n)), str(self.heartbeat), _HOP, STUDENT_PYTHON],
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not self.alive(0.05):
            assert time.monotonic() < deadline, "the forking process did not start"
        return self

    def beats(self) -> int:
        try:
            return int(self.heartbeat.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def alive(self, wait: float = 0.5) -> bool:
        """Whether the heartbeat moves within ``wait`` seconds."""
        first = self.beats()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            time.sleep(0.02)
            if self.beats() != first:
                return True
        return False

    def stop(self) -> None:
        from wod_jupyterhub.seats.processes import kill_uid

        kill_uid(uid(self.n))
        if self.reaper is not None:
            os.killpg(self.reaper.pid, signal.SIGKILL)
            self.reaper.wait(10)
            self.reaper = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def student_python(uid: int) -> tuple[list[str], dict]:
    """The server command and environment for a student's ``uid``.

    The hub's interpreter may live where a student cannot run it (a pyenv
    under /root here): then the system's Python of the same version runs the
    servers with the hub's site-packages on its path (same ABI, read-only
    for the student), or, where the student cannot read those either, the
    students' Python (``$WOD_STUDENT_PYTHON``).
    """
    exe = sys.executable
    if runs_as(uid, [exe, "-c", "pass"], dict(os.environ)):
        return [exe, "-m", "jupyterhub.singleuser"], {}
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.access(system, os.X_OK):
        pytest.skip(f"no Python a student uid can run: {exe} is closed to it and {system} is missing")
    # The hub's environment's jupyter config (the lab extension) and data (lab assets) too.
    env = {
        "PYTHONPATH": sysconfig.get_paths()["purelib"],
        "JUPYTER_CONFIG_PATH": os.path.join(sys.prefix, "etc", "jupyter"),
        "JUPYTER_PATH": os.path.join(sys.prefix, "share", "jupyter"),
    }
    # The hub's packages may sit where the uid cannot read them either (a clone in a 0700 folder): then the
    # students' Python that `make test` builds where every account can reach it.
    students = os.environ.get("WOD_STUDENT_PYTHON", "")
    if students and not runs_as(uid, [system, "-c", "import jupyterhub"], env) and runs_as(uid, [students, "-c", "import jupyterhub"], {}):
        return [students, "-m", "jupyterhub.singleuser"], {}
    return [system, "-m", "jupyterhub.singleuser"], env


def runs_as(uid: int, argv: list[str], env: dict) -> bool:
    """Whether ``argv`` runs to a zero exit as ``uid`` (from ``/``, with ``env``)."""
    try:
        return subprocess.run(argv, user=uid, group=uid, env=env, capture_output=True, cwd="/").returncode == 0
    except (PermissionError, FileNotFoundError):
        return False
