"""Fair share, end to end: real hub, real servers and kernels, real Linux accounts (system-users mode, as root).

Seats 300-349 (uids 10300-10349) are this module's; the accounts it makes
are removed at the end, and its control groups live under a parent of
its own (``wod-test-<random>``), removed too. Limits are kept small
(300M of memory, 64 processes) because the machine is shared.
"""

import asyncio
import secrets
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests import seatutil
from tests.hubutil import write_workshop
from tests.seatutil import Kernel, end_processes, live_processes, open_lab, trivial, verb
from tests.sysusers import student_python
from wod_jupyterhub.cli.users import accounts_for
from wod_jupyterhub.config import Wod
from wod_jupyterhub.seats import accounts as etc_accounts
from wod_jupyterhub.seats import cgroups

pytestmark = pytest.mark.root(reason="system-users mode and control groups need root (CI runs as root)")

M = 1024**2
FIRST, LAST = 300, 349
FAIR, BIG, KEPT = "WKSHP-Fair", "WKSHP-Big", "WKSHP-Kept"
MEM_LIMIT = 300 * M
PIDS_LIMIT = 64
#: the seats the tests book (accounts are made for these only: useradd is slow)
SEATS = (300, 301, 302, 303, 304, 340, 345)


@pytest.fixture(scope="module")
def accounts():
    """The accounts the tests use, made like `wod users create` makes them; only those made here are removed."""
    wod = Wod(student_min=FIRST, student_max=LAST, students_root="/nonexistent-fair-share")
    wanted = [a for n in SEATS for a in accounts_for(wod, n, n)]
    made, problems = etc_accounts.plan(wanted)
    assert not problems, problems
    etc_accounts.add(made)
    yield
    survivors = {}
    for n in SEATS:
        # Whatever a failed test left behind ends here, then is reported.
        left = end_processes(10000 + n)
        if left:
            survivors[n] = left
    etc_accounts.remove({a.name for a in made})
    assert not survivors, f"processes of these seats outlived the tests: {survivors}"


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory, accounts):
    root = tmp_path_factory.mktemp("fair")
    notebooks = root / "notebooks"
    write_workshop(notebooks, FAIR, (FIRST, 339))
    write_workshop(notebooks, BIG, (340, 344))
    write_workshop(notebooks, KEPT, (345, LAST), reset=True)
    # a workshop asking for more than the hub's defaults
    with open(notebooks / BIG / "wod.yml", "a") as f:
        f.write("limits: {memory: 400M, processes: 100}\n")
    # Homes must be reachable by their students: not under pytest's 0700 tmp folder.
    students = Path(tempfile.mkdtemp(prefix="wod-fair-students-"))
    students.chmod(0o711)
    parent = f"wod-test-{secrets.token_hex(4)}"
    cmd, env = student_python(10000 + FIRST)
    extra = "\n".join(
        [
            f"c.WodSpawner.cmd = {cmd!r}",
            f"c.WodSpawner.environment = {env!r}",
            f"c.WodSpawner.mem_limit = {MEM_LIMIT}",
            "c.WodSpawner.cpu_limit = 1.0",
            f"c.WodSpawner.pids_limit = {PIDS_LIMIT}",
            "c.WodAuthenticator.throttle_ip_failures = 0",
        ]
    )
    wod = {"student_min": FIRST, "student_max": LAST, "system_users": True, "cgroups": True, "cgroup_parent": parent, "students_root": str(students)}
    try:
        with module_hubs(root, notebooks=[notebooks], authenticator_class="wod", spawner_class="wod", wod_config=wod, extra_config=extra) as h:
            h.cgroup_parent = parent
            h.students_root = students
            yield h
    finally:
        cgroups.detect("/sys/fs/cgroup", parent).clear()
        subprocess.run(["rm", "-rf", str(students)], check=False)


# -- helpers ------------------------------------------------------------------


def seat(hub, n, workshop=FAIR):
    return seatutil.seat(hub, n, workshop)


def group(hub, n) -> cgroups.SeatGroup:
    return cgroups.shared("/sys/fs/cgroup", hub.cgroup_parent).seat(f"student{n}")


def cgroup_file(hub, controller, n, name) -> str:
    return Path(f"/sys/fs/cgroup/{controller}/{hub.cgroup_parent}/student{n}/{name}").read_text().strip()


# -- the tests ------------------------------------------------------------------


def test_the_server_and_its_kernels_live_in_the_seats_group_with_its_limits(hub):
    n = 340
    c, customer = seat(hub, n, BIG)
    g = group(hub, n)
    uid = 10000 + n
    members = g.live_pids()
    # the server and nothing else yet (no kernel), each running as the student
    assert members and set(members) == set(live_processes(uid))
    # the workshop's wod.yml wins over the hub's defaults; the rest are the hub's
    assert int(cgroup_file(hub, "memory", n, "memory.limit_in_bytes")) == 400 * M
    assert cgroup_file(hub, "pids", n, "pids.max") == "100"
    assert cgroup_file(hub, "cpu", n, "cpu.cfs_quota_us") == "100000"
    assert cgroup_file(hub, "cpu", n, "cpu.cfs_period_us") == "100000"

    async def kernel_inside():
        async with Kernel(hub, c, f"student{n}") as k:
            assert (await k.run("import os; print(os.getpid())"))[0] == "ok"
            return int("".join(k.output))

    kernel = asyncio.run(kernel_inside())
    assert kernel not in members
    for line in Path(f"/proc/{kernel}/cgroup").read_text().splitlines() if Path(f"/proc/{kernel}").exists() else []:
        if line.split(":")[1] in ("memory", "cpu", "pids", "freezer"):
            assert line.endswith(f"/{hub.cgroup_parent}/student{n}"), line
    verb(hub, "cleanup", {"student": n, "customer": customer})


def test_a_cell_past_mem_limit_ends_that_kernel_and_only_it(hub):
    a, b = 300, 301
    ca, cust_a = seat(hub, a)
    cb, cust_b = seat(hub, b)

    async def scenario():
        async with Kernel(hub, ca, f"student{a}") as ka, Kernel(hub, cb, f"student{b}") as kb:
            assert (await ka.run("x = bytearray(100 * 2**20)"))[0] == "ok"  # under the limit: fine
            status, _ = await ka.run("y = bytearray(600 * 2**20)")  # past the 300M limit
            assert status == "died"
            # the other seat's kernel answers; the seat's own server too
            assert (await kb.run("1 + 1"))[0] == "ok"
        assert open_lab(ca, f"student{a}").status_code == 200
        # the student gets a fresh kernel and goes on
        assert await trivial(hub, ca, f"student{a}") == "ok"

    asyncio.run(scenario())
    # the kernel's OOM killer acted inside the seat's group (this kernel does not count it in memory.failcnt)
    oom = dict(line.split() for line in cgroup_file(hub, "memory", a, "memory.oom_control").splitlines())
    assert int(oom["oom_kill"]) >= 1, oom
    assert int(cgroup_file(hub, "memory", a, "memory.max_usage_in_bytes")) <= MEM_LIMIT
    verb(hub, "cleanup", {"student": a, "customer": cust_a})
    verb(hub, "cleanup", {"student": b, "customer": cust_b})


def test_a_fork_bomb_stops_at_the_process_limit_and_another_seat_answers(hub):
    a, b = 302, 303
    ca, cust_a = seat(hub, a)
    cb, cust_b = seat(hub, b)
    bomb = "import subprocess; subprocess.Popen(['bash', '-c', 'f() { f & f & wait; }; f'], start_new_session=True, stderr=subprocess.DEVNULL)"

    async def scenario():
        async with Kernel(hub, ca, f"student{a}") as ka:
            assert (await ka.run(bomb))[0] == "ok"
        await asyncio.sleep(3)
        # the seat is full, the machine is not: another seat's kernel still answers
        assert int(cgroup_file(hub, "pids", a, "pids.current")) == PIDS_LIMIT
        assert int(cgroup_file(hub, "pids", a, "pids.events").split()[1]) > 0  # forks refused at the limit
        assert await trivial(hub, cb, f"student{b}") == "ok"

    asyncio.run(scenario())
    # PURGE ends the bomb through the seat's group (freeze, kill, thaw): nothing of it survives
    op = verb(hub, "purge", {"student": a, "customer": cust_a})
    assert not live_processes(10000 + a), op["steps"]
    [erase] = [s for s in op["steps"] if s["name"] == "erase"]
    assert erase["detail"]["cgroup_killed"] >= 10, erase  # the bomb's processes (threads of the server count in pids.max too)
    assert not group(hub, a).exists()
    verb(hub, "cleanup", {"student": b, "customer": cust_b})


def leave_a_hopper(hub, client, n):
    """What a student may leave: detached from the server (its own session, its parent gone), hopping pids forever."""
    hopper = (
        "import subprocess; subprocess.Popen(['bash', '-c', 'h() { sleep 0.01; h & exit; }; h & (sleep 600 &) ; exit'],"
        " start_new_session=True, stderr=subprocess.DEVNULL)"
    )

    async def leave_it():
        async with Kernel(hub, client, f"student{n}") as k:
            assert (await k.run(hopper))[0] == "ok"

    asyncio.run(leave_it())
    time.sleep(1)


def test_cleanup_leaves_no_process_of_a_seat_whose_student_left_a_forking_one(hub):
    n = 304
    c, customer = seat(hub, n)
    leave_a_hopper(hub, c, n)
    assert len(live_processes(10000 + n)) >= 3  # the server, the hopper, the sleep (the kernel is gone)
    op = verb(hub, "cleanup", {"student": n, "customer": customer})
    time.sleep(0.5)  # a survivor would have forked again by now
    assert live_processes(10000 + n) == [], op["steps"]
    assert not group(hub, n).exists()
    [release] = [s for s in op["steps"] if s["name"] == "release"]
    assert release["detail"]["cgroup_killed"] >= 2, release  # through the group, before the uid-wide kill


def test_a_kept_seat_ends_its_processes_at_cleanup_and_reset_erases_it(hub):
    """A reset: true workshop keeps the home at CLEANUP for RESET, not the participant's processes."""
    n = 345
    c, customer = seat(hub, n, KEPT)
    leave_a_hopper(hub, c, n)
    assert len(live_processes(10000 + n)) >= 3
    op = verb(hub, "cleanup", {"student": n, "customer": customer})
    time.sleep(0.5)
    assert live_processes(10000 + n) == [], op["steps"]
    [release] = [s for s in op["steps"] if s["name"] == "release"]
    assert release["detail"]["kept"] is True and release["detail"]["cgroup_killed"] >= 2, release
    home = hub.students_root / f"student{n}"
    assert (home / KEPT / "0-ReadMeFirst.ipynb").is_file()  # kept for RESET
    verb(hub, "reset", {"student": n, "workshop": KEPT})
    assert live_processes(10000 + n) == [] and not (home / KEPT).exists()


def test_without_control_groups_the_hub_warns_once_and_servers_still_start(hubs, tmp_path):
    """A host without cgroups (here: c.Wod.cgroup_root pointing at an empty folder): one warning, nothing crashes."""
    notebooks = tmp_path / "notebooks"
    write_workshop(notebooks, FAIR, (FIRST, LAST))
    empty = tmp_path / "no-cgroups"
    empty.mkdir()
    wod = {"student_min": FIRST, "student_max": LAST, "cgroups": True, "cgroup_root": str(empty)}
    with hubs(tmp_path / "hub", notebooks=[notebooks], authenticator_class="wod", spawner_class="wod", wod_config=wod,
                 extra_config="c.WodAuthenticator.throttle_ip_failures = 0") as hub:
        for n in (305, 306):
            c, customer = seat(hub, n)
            assert open_lab(c, f"student{n}").status_code == 200
            verb(hub, "cleanup", {"student": n, "customer": customer})
        log = hub.log_path.read_text()
    # one clear warning at start (the service the hub starts), naming each limit and why
    warnings = [line for line in log.splitlines() if "not enforced per seat" in line]
    assert len(warnings) == 1, warnings
    for what in ("memory (mem_limit)", "CPU (cpu_limit)", "processes (pids_limit)", str(empty), "by its uid only"):
        assert what in warnings[0]
    # and the hub process says once, at its first server (after the start), that it starts servers without them
    assert log.count("Servers start without these per-seat limits") == 1
    assert log.index(warnings[0]) < log.index("Servers start without these per-seat limits")
    assert "Traceback" not in log
