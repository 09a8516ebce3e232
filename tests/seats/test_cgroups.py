"""Real control groups (as root, as CI runs): a seat's group limits, holds and kills what it runs.

Each test works under its own parent group (``wod-test-<random>``) and
removes it, so tests of other hubs on the machine never share a group.
Processes started here are bounded (pids.max) and killed by the test.
"""

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wod_jupyterhub.config import Wod
from wod_jupyterhub.limits import Limits
from wod_jupyterhub.seats import cgroups

M = 1024**2
ROOT = Path("/sys/fs/cgroup")
needs_root = pytest.mark.root(reason="control groups are written by root (CI runs as root)")


@pytest.fixture
def hierarchy():
    h = cgroups.detect(ROOT, f"wod-test-{secrets.token_hex(4)}")
    yield h
    h.clear()


def start_in(group, argv, **kwargs):
    files = group.procs_files()
    return subprocess.Popen(argv, preexec_fn=lambda: cgroups.join(files), start_new_session=True, **kwargs)


@needs_root
def test_v1_here_every_controller_is_usable(hierarchy):
    assert hierarchy.version == "v1"
    assert hierarchy.to_json()["enforced"] == ["cpu", "freezer", "memory", "pids"]
    assert hierarchy.warning() is None


@needs_root
def test_a_seat_group_holds_its_limits_and_its_processes(hierarchy):
    g = hierarchy.seat("student300")
    out = g.create(Limits(memory=300 * M, cpu=0.5, pids=40))
    assert out == {"enforced": ["cpu", "memory", "pids"], "failed": {}}
    d = hierarchy.dirs
    assert int((d["memory"] / "student300" / "memory.limit_in_bytes").read_text()) == 300 * M
    assert (d["cpu"] / "student300" / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (d["pids"] / "student300" / "pids.max").read_text().strip() == "40"
    p = start_in(g, ["sleep", "30"])
    try:
        assert p.pid in g.pids()
        for controller in ("memory", "cpu", "pids", "freezer"):
            lines = Path(f"/proc/{p.pid}/cgroup").read_text().splitlines()
            line = next(entry for entry in lines if entry.split(":")[1] == controller)
            assert line.endswith(f"/{hierarchy.parent}/student300"), line
    finally:
        assert g.end() == 1
    assert p.wait(5) == -9 and not g.exists()


@needs_root
def test_memory_past_the_limit_ends_the_process_not_the_machine(hierarchy):
    g = hierarchy.seat("student301")
    g.create(Limits(memory=100 * M, pids=40))
    p = start_in(g, [sys.executable, "-c", "x = bytearray(400 * 2**20); print('survived')"], stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == -9 and b"survived" not in out
    # the same allocation outside the group works (the machine is fine)
    assert subprocess.run([sys.executable, "-c", "x = bytearray(400 * 2**20)"]).returncode == 0
    g.end()


@needs_root
def test_a_fork_bomb_stops_at_the_process_limit_and_the_kill_leaves_nothing(hierarchy):
    g = hierarchy.seat("student302")
    g.create(Limits(pids=30))
    # forks as fast as it can, each child forking again (bounded by pids.max = 30)
    bomb = start_in(g, ["bash", "-c", "f() { f & f & wait; }; f"], stderr=subprocess.DEVNULL)
    time.sleep(2)
    assert 20 <= len(g.live_pids()) <= 30
    assert int((hierarchy.dirs["pids"] / "student302" / "pids.events").read_text().split()[1]) > 0  # forks were refused
    killed = g.kill()
    assert killed >= 20 and g.live_pids() == set()
    bomb.wait(5)
    g.remove()
    assert not g.exists()


@needs_root
def test_kill_catches_a_pid_hopping_process(hierarchy):
    g = hierarchy.seat("student303")
    g.create(Limits(pids=64))
    # the parent forks a child and exits, again and again: one pass over /proc misses it
    hopper = start_in(g, ["bash", "-c", "h() { sleep 0.005; h & exit; }; h"], stderr=subprocess.DEVNULL)
    time.sleep(1)
    assert g.live_pids()
    g.end()
    assert not g.exists()
    hopper.wait(5)


@needs_root
def test_v2_kill_through_cgroup_kill():
    unified = ROOT / "unified"
    if not (unified / "cgroup.controllers").is_file():
        pytest.skip("this host has no cgroup v2 mount beside v1")
    h = cgroups.detect(unified, f"wod-test-{secrets.token_hex(4)}")
    try:
        assert h.version == "v2" and h.kill_file
        # here v2 offers no memory/cpu/pids controller: named, not hidden
        assert set(h.missing) == {"memory", "cpu", "pids"} and "not offered" in h.warning()
        g = h.seat("student304")
        g.create(Limits(memory=300 * M))
        p = start_in(g, ["bash", "-c", "while :; do sleep 30 & sleep 0.01; done"])
        time.sleep(0.5)
        assert len(g.live_pids()) > 5
        assert g.end() > 5 and not g.exists()
        assert p.wait(5) == -9
    finally:
        h.clear()


def test_no_control_groups_at_the_root_is_a_warning_not_a_crash(tmp_path):
    h = cgroups.detect(tmp_path, "wod")
    assert not h.available and h.version is None
    w = h.warning()
    for what in ("memory (mem_limit)", "CPU (cpu_limit)", "processes (pids_limit)"):
        assert what in w
    assert str(tmp_path) in w
    assert h.seat("student305").end() == 0  # nothing to kill, nothing raised


@needs_root
def test_without_root_the_groups_are_refused_and_named(tmp_path):
    # The same detection in a child that dropped to an unprivileged uid (student 306's, no account needed).
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(10306)
            os.setuid(10306)
            h = cgroups.detect(ROOT, "wod-test-noroot")
            os.write(w, json.dumps([h.available, h.warning()]).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        available, warning = json.loads(f.read())
    os.waitpid(pid, 0)
    assert available is False
    assert "Permission denied" in warning and "memory (mem_limit)" in warning and "processes (pids_limit)" in warning
    assert not (ROOT / "memory" / "wod-test-noroot").exists()


def test_group_names_cannot_walk():
    h = cgroups.Hierarchy(Path("/nonexistent"), "wod")
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError):
            h.seat(bad)
    with pytest.raises(ValueError):
        cgroups.detect("/nonexistent", "../x")


@needs_root
def test_the_parent_weighs_like_its_seats(hierarchy):
    assert hierarchy.weigh(40) is None
    assert (hierarchy.dirs["cpu"] / "cpu.shares").read_text().strip() == str(40 * 1024)


def test_ending_a_seat_the_hub_never_grouped_creates_nothing(tmp_path):
    # a v1-looking root: the service kills and reads, only the hub makes groups
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "cgroup.procs").write_text("")
    wod = Wod(cgroups=True, cgroup_root=str(tmp_path), cgroup_parent="wod-x")
    assert cgroups.end_seat(wod, 3) == {} and cgroups.seat_resources(wod, 3) is None
    assert not (tmp_path / "memory" / "wod-x").exists()
