"""The Swarm runtime for real, on a one-node swarm: a real hub whose seats are Swarm services (WodSwarmSpawner).

The test session's dockerd (``tests/dockerutil.py``) becomes a one-node
swarm for this module (``docker swarm init --advertise-addr 127.0.0.1``,
a bridge network of swarm scope for the seats) and leaves it after; what
more nodes add (placement, the homes on a shared file system) is in
docs/scaling-out.md. Seats 410-419 (uids 10410-10419, no account
needed) are this module's. Without root, dockerd or the image, it skips
with the reason; under CI it fails.
"""

import asyncio
import json

import pytest

from tests import dockerutil
from tests.hubutil import write_workshop
from tests.seatutil import UID_BASE, Kernel, live_processes, seat, verb

pytestmark = pytest.mark.root(reason="a Docker engine of the tests' own needs root (namespaces, dockerd)")

M = 1024**2
FIRST, LAST = 410, 419
WORKSHOP = "WKSHP-Swarm"
MEM_LIMIT = 300 * M
PIDS_LIMIT = 64


@pytest.fixture(scope="module")
def engine(docker_engine):
    """The session's engine as a one-node swarm, for this module."""
    docker_engine.init_swarm()
    yield docker_engine
    docker_engine.leave_swarm()


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory, engine):
    root = tmp_path_factory.mktemp("swarm")
    write_workshop(root / "notebooks", WORKSHOP, (FIRST, LAST))
    with dockerutil.seat_hub(module_hubs, root, engine, "swarm", (FIRST, LAST), limits=(MEM_LIMIT, 0.5, PIDS_LIMIT),
                             extra=["c.Spawner.start_timeout = 90"]) as h:
        yield h


def services(engine, n) -> list[str]:
    return engine.docker("service", "ls", "-q", "--filter", f"label=wod.seat=student{n}").stdout.split()


def containers(engine, n) -> list[str]:
    return engine.containers(f"label=wod.seat=student{n}")


def test_a_seat_is_a_service_whose_container_runs_as_its_uid_and_cleanup_leaves_nothing(hub, engine):
    n = 410
    uid = UID_BASE + n
    home = str(hub.students_root / f"student{n}")
    client, customer = seat(hub, n, WORKSHOP)
    assert len(services(engine, n)) == 1
    (cid,) = containers(engine, n)
    info = json.loads(engine.docker("inspect", cid).stdout)[0]
    host = info["HostConfig"]
    assert info["Config"]["User"] == f"{uid}:{uid}" and host["Memory"] == MEM_LIMIT and host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == PIDS_LIMIT and host["CapDrop"] == ["ALL"]
    assert [(m["Source"], m["Destination"]) for m in info["Mounts"]] == [(home, home)]

    async def cells():
        async with Kernel(hub, client, f"student{n}") as k:
            first = await k.run(f"import os, subprocess; print(os.getuid(), os.getcwd() == {home!r})")
            out = "".join(k.output)
            await k.run("subprocess.run(['setsid', 'sh', '-c', 'sleep 1000 & exit 0'])")
            return first[0], out

    status, output = asyncio.run(cells())
    assert status == "ok" and output.split() == [str(uid), "True"], output
    assert live_processes(uid)
    op = verb(hub, "cleanup", {"student": n, "customer": customer})
    release = next(s for s in op["steps"] if s["name"] == "release")
    assert "services_removed" in release["detail"] and op["result"]["completion"]["total"] >= 1
    assert services(engine, n) == [] and containers(engine, n) == [] and live_processes(uid) == []


def test_purge_removes_a_seat_whose_container_is_stuck(hub, engine):
    n = 411
    uid = UID_BASE + n
    _client, customer = seat(hub, n, WORKSHOP)
    (cid,) = containers(engine, n)
    engine.docker("pause", cid)
    verb(hub, "purge", {"student": n, "customer": customer})
    assert services(engine, n) == [] and containers(engine, n) == [] and live_processes(uid) == []
