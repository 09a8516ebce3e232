"""`wod users create`: the accounts of many seats in one locked batch (wod_jupyterhub/seats/accounts.py).

The account files are machine-wide: these tests write copies of them, in a
temporary folder or, for the real command, in a private mount namespace
(`unshare -m`) where a copy of /etc is mounted over /etc. The command runs
for real there (root, glibc's lckpwdf, getent), and nothing it adds is
seen by the rest of the machine.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.etcutil import private_etc
from wod_jupyterhub.seats import accounts
from wod_jupyterhub.seats.accounts import Account

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def etc(tmp_path):
    """A copy of this machine's account files, without its own ``student<N>`` entries.

    A machine that ran ``WOD_SYSTEM_USERS=1 make demo`` (or serves a real
    backend) has such accounts; these tests add student1.. with uids of
    their own, and must not find them taken.
    """
    folder = tmp_path / "etc"
    folder.mkdir()
    for name in accounts.FILES:
        shutil.copy2(f"/etc/{name}", folder / name)
        lines = (folder / name).read_text().splitlines(keepends=True)
        (folder / name).write_text("".join(line for line in lines if not re.match(r"student\d+:", line)))
    return folder


def snapshot(folder):
    return {name: (folder / name).read_bytes() for name in accounts.FILES}


def seats(first, last, base=47000):
    return [Account(f"student{n}", base + n, base + n, f"/srv/homes/student{n}") for n in range(first, last + 1)]


def test_a_batch_adds_every_entry_once_and_keeps_modes(etc):
    modes = {name: os.stat(etc / name).st_mode for name in accounts.FILES}
    machine = (etc / "passwd").read_text().splitlines()
    assert accounts.add(seats(1, 5), str(etc)) == 5
    passwd = (etc / "passwd").read_text().splitlines()
    assert "student3:x:47003:47003::/srv/homes/student3:/bin/bash" in passwd
    assert any(line.startswith("student3:!:") for line in (etc / "shadow").read_text().splitlines())
    assert "student3:x:47003:" in (etc / "group").read_text().splitlines()
    assert "student3:!::" in (etc / "gshadow").read_text().splitlines()
    assert {name: os.stat(etc / name).st_mode for name in accounts.FILES} == modes
    assert not any(p.name.endswith((".lock", "+")) for p in etc.iterdir())
    # again, wider: only the new ones are added, nothing twice
    assert accounts.add(seats(1, 7), str(etc)) == 2
    ours = [line for line in (etc / "passwd").read_text().splitlines() if ":4700" in line]
    assert len(ours) == 7
    assert accounts.remove({f"student{n}" for n in range(1, 8)}, str(etc)) == 7
    assert ":4700" not in (etc / "passwd").read_text()
    assert set(machine) <= set((etc / "passwd").read_text().splitlines())  # the others' entries untouched


def test_a_clash_writes_nothing(etc):
    accounts.add(seats(1, 2), str(etc))
    before = snapshot(etc)
    with pytest.raises(accounts.AccountsError, match="student2 exists with uid 47002, expected 48002"):
        accounts.add(seats(1, 3, base=48000), str(etc))
    with pytest.raises(accounts.AccountsError, match="uid 0 for student9 is taken by root"):
        accounts.add([Account("student9", 0, 0, "/x")], str(etc))
    assert snapshot(etc) == before


def test_a_lock_held_by_a_live_process_blocks_and_a_dead_ones_is_broken(etc):
    lock = etc / "passwd.lock"
    lock.write_text(str(os.getpid()))
    with pytest.raises(accounts.AccountsError, match="held by another program"):
        with accounts.locked(str(etc), timeout=0.3):
            pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    lock.write_text(dead)
    assert accounts.add(seats(1, 1), str(etc)) == 1
    assert not lock.exists()


@pytest.mark.root(reason="the real command needs root (make test runs as root here)")
def test_wod_users_create_2000_accounts_for_real_in_a_private_etc(tmp_path):
    etc = private_etc(tmp_path / "etc")
    cfg = tmp_path / "jupyterhub_config.py"
    cfg.write_text(f"c.Wod.students_root = {str(tmp_path / 'homes')!r}\nc.Wod.uid_base = 47000\nc.Wod.student_max = 2000\n")
    wod = f"{sys.executable} -m wod_jupyterhub.cli"
    script = (
        f"mount --bind {etc} /etc && {wod} users create --config {cfg} --from 1 --to 2000"
        f" && getent passwd student1 student2000 && id -g student1500 && {wod} users create --config {cfg} --from 1 --to 2000"
    )
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, (r.stdout, r.stderr)
    out = r.stdout.splitlines()
    assert out[0].startswith("2000 account(s) created, 2000 in the range")
    assert out[1] == f"student1:x:47001:47001::{tmp_path / 'homes' / 'student1'}:/bin/bash"
    assert out[2].startswith("student2000:x:49000:49000:")
    assert out[3] == "48500"
    assert out[4].startswith("0 account(s) created, 2000 in the range")  # run again: nothing to do
    # the machine's own files never saw them
    assert "student1:x:47001" not in Path("/etc/passwd").read_text()
