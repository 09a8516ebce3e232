"""The Docker runtime for real: a real hub whose seats run in containers of a real dockerd (DockerSpawner).

The engine is the test session's own (``tests/dockerutil.py``): dockerd in
a network and mount namespace of its own, its image built here with no
registry (``make seat-image``). Seats 400-409 (uids 10400-10409, no Linux
account needed: a container's uid is a number) are this module's. Without
root, dockerd or the image, it skips with the reason; under CI it fails.
"""

import asyncio
import json
import tempfile
from pathlib import Path

import pytest

from tests import dockerutil
from tests.hubutil import write_workshop
from tests.seatutil import UID_BASE, Kernel, live_processes, seat, verb
from wod_jupyterhub.config import Wod
from wod_jupyterhub.seats.runtime import seat_runtime

pytestmark = pytest.mark.root(reason="a Docker engine of the tests' own needs root (namespaces, dockerd)")

M = 1024**2
FIRST, LAST = 400, 409
WORKSHOP = "WKSHP-Box"
MEM_LIMIT = 300 * M
PIDS_LIMIT = 64


@pytest.fixture(scope="module")
def engine(docker_engine):
    return docker_engine


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory, engine):
    root = tmp_path_factory.mktemp("docker")
    write_workshop(root / "notebooks", WORKSHOP, (FIRST, LAST))
    with dockerutil.seat_hub(module_hubs, root, engine, "docker", (FIRST, LAST), limits=(MEM_LIMIT, 0.5, PIDS_LIMIT),
                             extra=["c.Spawner.start_timeout = 90"]) as h:
        yield h


def wod_config(hub, engine):
    """The service's view of this hub's seats, for a runtime made in the test."""
    from traitlets.config import Config

    c = Config()
    c.Wod.runtime, c.Wod.uid_base, c.Wod.system_users = "docker", UID_BASE, True
    c.Wod.students_root, c.Wod.student_min, c.Wod.student_max = str(hub.students_root), FIRST, LAST
    c.DockerRuntime.docker_host = engine.host
    return c


def seat_containers(engine, n) -> list[str]:
    return engine.containers(f"label=wod.seat=student{n}")


def inspect(engine, n) -> dict:
    (cid,) = seat_containers(engine, n)
    return json.loads(engine.docker("inspect", cid).stdout)[0]


async def run(hub, client, n, *cells) -> list[tuple[str, str]]:
    out = []
    async with Kernel(hub, client, f"student{n}") as k:
        for code in cells:
            status, _ = await k.run(code)
            out.append((status, "".join(k.output)))
    return out


def test_a_seat_runs_in_its_own_container_as_its_uid_with_its_limits_and_only_its_home(hub, engine):
    n = 400
    client, customer = seat(hub, n, WORKSHOP)
    info = inspect(engine, n)
    uid = UID_BASE + n
    home = str(hub.students_root / f"student{n}")
    assert info["Config"]["User"] == f"{uid}:{uid}"
    assert info["Config"]["Labels"]["wod.seat"] == f"student{n}"
    host = info["HostConfig"]
    assert (host["Memory"], host["MemorySwap"], host["CpuQuota"], host["CpuPeriod"], host["PidsLimit"]) == (
        MEM_LIMIT, MEM_LIMIT, 50_000, 100_000, PIDS_LIMIT)
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"] and host["Init"] is True
    assert [(m["Source"], m["Destination"], m["RW"]) for m in info["Mounts"]] == [(home, home, True)]
    assert host["NetworkMode"] == "bridge" and info["NetworkSettings"]["IPAddress"].startswith("10.213.0.")
    # Inside: the seat's uid, its home, none of the machine's files (a file of its /tmp) nor its loopback
    # services (the hub's API port there).
    marker = tempfile.NamedTemporaryFile(prefix="wod-docker-marker-", dir="/tmp")
    probe = (
        "import os, socket\n"
        "s = socket.socket(); s.settimeout(2)\n"
        f"print(os.getuid(), os.getgid(), os.getcwd() == {home!r}, not os.path.exists({marker.name!r}),"
        f" s.connect_ex(('127.0.0.1', {hub.hub_port})) != 0)"
    )
    [(status, output)] = asyncio.run(run(hub, client, n, probe))
    marker.close()
    assert status == "ok" and output.split() == [str(uid), str(uid), "True", "True", "True"], output
    # The service's view of the seat reads the container's usage through the runtime.
    with hub.client("portal", via_proxy=True) as c:
        resources = c.get(f"api/students/{n}").json()["resources"]
    assert resources["memory"] > 10 * M and 1 <= resources["pids"] <= PIDS_LIMIT
    # A command run as the seat (a check's way in): in its container, as its uid, in its home, bounded in time.
    runtime = seat_runtime(Wod(config=wod_config(hub, engine)))
    ran = runtime.exec(n, ["sh", "-c", "id -u; pwd"])
    assert (ran.returncode, ran.stdout.decode().split()) == (0, [str(uid), home])
    assert runtime.exec(n, ["sleep", "30"], timeout=0.5).timed_out
    verb(hub, "cleanup", {"student": n, "customer": customer})
    assert seat_containers(engine, n) == []


def test_a_cell_past_the_memory_limit_kills_only_that_seats_kernel(hub, engine):
    n = 401
    client, customer = seat(hub, n, WORKSHOP)
    results = asyncio.run(run(hub, client, n, "x = bytearray(400 * 1024 * 1024); x[::4096] = b'1' * len(x[::4096])"))
    assert results[0][0] == "died", results
    # The server lives on in the same container, and a new kernel runs.
    (cid,) = seat_containers(engine, n)
    [(status, output)] = asyncio.run(run(hub, client, n, "print(6 * 7)"))
    assert status == "ok" and output.strip() == "42" and seat_containers(engine, n) == [cid]
    verb(hub, "cleanup", {"student": n, "customer": customer})


def test_cleanup_removes_the_container_with_a_double_forked_leftover_and_reads_completion_after_it(hub, engine):
    n = 402
    uid = UID_BASE + n
    client, customer = seat(hub, n, WORKSHOP)
    leftover = (
        "import subprocess\n"
        "subprocess.run(['setsid', 'sh', '-c', 'sleep 1000 & exit 0'])\n"
        "print('left')"
    )
    [(status, output)] = asyncio.run(run(hub, client, n, leftover))
    assert status == "ok" and "left" in output
    # The daemon runs as the seat's uid, seen from the machine.
    assert any("sleep" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
               for p in live_processes(uid) if Path(f"/proc/{p}").exists())
    # A cell of the workshop's notebook run and saved in the home, for the completion ratio.
    notebook = hub.students_root / f"student{n}" / WORKSHOP / "0-ReadMeFirst.ipynb"
    nb = json.loads(notebook.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["execution_count"] = 1
    notebook.write_text(json.dumps(nb))
    op = verb(hub, "cleanup", {"student": n, "customer": customer})
    steps = [s["name"] for s in op["steps"]]
    # The hub's stop removes the container before the completion is read; the wipe then finds none left.
    assert steps.index("end-sessions") < steps.index("completion") < steps.index("release")
    assert op["result"]["completion"]["executed"] >= 1
    wipe = next(s for s in op["steps"] if s["name"] == "release")
    assert wipe["detail"].get("containers_removed") == 0, wipe
    assert seat_containers(engine, n) == [] and live_processes(uid) == []


def test_purge_removes_a_stuck_container(hub, engine):
    n = 403
    uid = UID_BASE + n
    client, customer = seat(hub, n, WORKSHOP)
    (cid,) = seat_containers(engine, n)
    # Stuck: every process of it frozen, so no stop request is answered.
    engine.docker("pause", cid)
    op = verb(hub, "purge", {"student": n, "customer": customer})
    assert seat_containers(engine, n) == [] and live_processes(uid) == []
    assert op["status"] == "succeeded"
