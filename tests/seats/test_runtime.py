"""The seat runtime seam: ``c.Wod.runtime`` picks the engine, and the local one runs a command as the seat.

Seats 420-429 (uids 10420-10429, no account needed: root may setuid to any
uid) are this module's. The container engines' own tests are in
tests/integration/test_docker_seats.py and tests/hub/test_kubernetes.py.
"""

import os
import sys
import time

import pytest
from traitlets import TraitError

from wod_jupyterhub.config import Wod
from wod_jupyterhub.seats.runtime import RUNTIMES, LocalRuntime, SeatRuntime, runtime_class, seat_runtime

N = 420


def test_the_local_runtime_is_the_default_and_every_named_runtime_is_one():
    assert isinstance(seat_runtime(Wod()), LocalRuntime)
    for name in RUNTIMES:
        cls = runtime_class(name)
        assert issubclass(cls, SeatRuntime) and cls.name == name
    assert set(RUNTIMES) == set(Wod.class_traits()["runtime"].values)


def test_an_unknown_runtime_is_refused_with_the_ones_there_are():
    with pytest.raises(TraitError) as e:
        Wod(runtime="podman")
    assert "local" in str(e.value) and "docker" in str(e.value)


def test_without_system_users_the_local_runtime_has_nothing_of_a_uid_to_end_or_clear(tmp_path):
    wod = Wod(students_root=str(tmp_path), system_users=False, cgroups=False)
    runtime = seat_runtime(wod)
    assert runtime.uid(N) is None and runtime.end(N) == {} and runtime.clear_leftovers(N) == {}
    assert runtime.usage(N) is None and runtime.detect() is None


@pytest.mark.root(reason="a command as another uid needs root")
def test_a_command_runs_as_the_seat_in_its_home_and_ends_at_its_timeout(tmp_path):
    home = tmp_path / f"student{N}"
    home.mkdir()
    os.chown(home, 10000 + N, 10000 + N)
    tmp_path.chmod(0o711)
    wod = Wod(students_root=str(tmp_path), system_users=True, cgroups=False, uid_base=10000, temp_folders=[])
    runtime = seat_runtime(wod)
    ran = runtime.exec(N, ["sh", "-c", 'echo "$(id -u) $(id -g) $(id -G) $(pwd) $HOME"; echo oops >&2; exit 3'])
    assert ran.returncode == 3 and ran.stderr == b"oops\n"
    uid = str(10000 + N)
    assert ran.stdout.decode().split() == [uid, uid, uid, str(home), str(home)]
    started = time.monotonic()
    # A child that outlives its parent is in the command's session: it goes at the timeout too.
    slow = runtime.exec(N, ["sh", "-c", "sleep 60 & echo started; wait"], timeout=0.5)
    assert slow.timed_out and slow.stdout == b"started\n" and time.monotonic() - started < 10
    assert runtime.end(N) == {"killed": 0}


def test_a_timed_out_command_is_gone_with_what_it_moved_to_another_process_group(tmp_path):
    wod = Wod(students_root=str(tmp_path), system_users=False, cgroups=False)
    (tmp_path / f"student{N}").mkdir()
    # A child in a process group of its own: killing the command's group misses it.
    escape = f'{sys.executable} -c "import os, time; os.setpgid(0, 0); time.sleep(60)" >/dev/null 2>&1'
    ran = seat_runtime(wod).exec(N, ["sh", "-c", f'{escape} & echo "$!"; wait'], timeout=0.5)
    assert ran.timed_out
    try:
        with open(f"/proc/{int(ran.stdout)}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("Z", "X", "gone")
