"""Disk per seat: homes sized while the service is idle, shown in api/students, a home over the limit warned about once."""

import asyncio
import logging
import os
import subprocess
import time
import uuid

import pytest

from tests.hubutil import write_workshop
from tests.svcutil import check
from wod_jupyterhub.seats.diskuse import DiskWatch, du_command, home_bytes, parse_du

M = 1024**2


def test_du_never_follows_links_nor_leaves_the_filesystem():
    cmd = du_command("/h")
    assert cmd[:3] == ["nice", "-n", "19"]
    for flag in ("--summarize", "--one-file-system", "--no-dereference", "--block-size=1"):
        assert flag in cmd
    assert cmd[-2:] == ["--", "/h"]  # a home named like an option stays a path


def test_parse_du():
    assert parse_du("123456\t/some/home\n") == 123456
    for bad in ("", "du: cannot read directory\n", "12a\t/x"):
        with pytest.raises(ValueError):
            parse_du(bad)


def test_home_bytes_counts_the_home_only(tmp_path):
    home = tmp_path / "student1"
    home.mkdir()
    (home / "data").write_bytes(os.urandom(3 * M))
    (home / "up").symlink_to("/usr")  # a link out of the home counts as a link, not as /usr
    # 3,000 nested folders: a recursive walk in Python would hit its recursion limit
    fd = os.open(home, os.O_RDONLY)
    for _ in range(3000):
        os.mkdir("d", dir_fd=fd)
        fd, old = os.open("d", os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    os.close(fd)
    try:
        size = asyncio.run(home_bytes(str(home)))
        assert 3 * M <= size < 3 * M + 3001 * 8192
        assert asyncio.run(home_bytes(str(tmp_path / "missing"))) is None
    finally:
        subprocess.run(["rm", "-rf", str(home)], check=True)  # GNU rm walks deep trees; pytest's rmtree would not


def test_a_home_over_the_limit_is_warned_about_once(tmp_path, caplog):
    (tmp_path / "student1").mkdir()
    (tmp_path / "student1" / "big").write_bytes(os.urandom(2 * M))
    watch = DiskWatch(lambda n: str(tmp_path / f"student{n}"), limit=1 * M, interval=0.05, log=logging.getLogger("t"))
    assert watch.to_json(1) is None
    with caplog.at_level(logging.WARNING, logger="t"):
        asyncio.run(watch.measure(1))
        asyncio.run(watch.measure(1))
    shown = watch.to_json(1)
    assert shown["over"] is True and shown["bytes"] >= 2 * M and shown["limit"] == M
    assert [r.getMessage() for r in caplog.records if "home_size_limit" in r.getMessage()].__len__() == 1
    assert watch.over() == [1]


def test_freed_seats_are_forgotten_and_measures_wait_for_idle(tmp_path):
    for n in (1, 2):
        (tmp_path / f"student{n}").mkdir()
    watch = DiskWatch(lambda n: str(tmp_path / f"student{n}"), limit=None, interval=0.05)
    held = [1, 2]
    busy = {"on": True}

    async def scenario():
        task = asyncio.ensure_future(watch.run(lambda: list(held), lambda: not busy["on"]))
        await asyncio.sleep(0.3)
        assert watch.sizes == {}  # an operation runs: nothing measured
        busy["on"] = False
        for _ in range(100):
            await asyncio.sleep(0.05)
            if set(watch.sizes) == {1, 2}:
                break
        assert set(watch.sizes) == {1, 2} and watch.to_json(1)["over"] is False
        held.remove(2)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if set(watch.sizes) == {1}:
                break
        assert set(watch.sizes) == {1}
        task.cancel()

    asyncio.run(scenario())


def test_api_students_shows_the_homes_size(hubs, tmp_path):
    notebooks = tmp_path / "notebooks"
    write_workshop(notebooks, "WKSHP-Disk", (1, 5))
    with hubs(
        tmp_path / "hub", notebooks=[notebooks], wod_config={"student_max": 5, "home_size_limit": "1M"},
        service_config={"disk_interval": 0.2},
    ) as hub:
        customer = f"c-{uuid.uuid4().hex[:6]}"
        with hub.client("portal") as c:
            op = c.post("api/create?wait=60", json={"student": 2, "customer": customer, "email": "a@example.com", "workshop": "WKSHP-Disk"}).json()
            assert op["status"] == "succeeded", op
            (hub.students_root / "student2" / "big").write_bytes(os.urandom(3 * M))
            deadline = time.monotonic() + 30
            while True:
                data = check(c.get("api/students/2"), 200)
                if data["disk"] and data["disk"]["bytes"] >= 3 * M:
                    break
                assert time.monotonic() < deadline, data
                time.sleep(0.2)
            assert data["disk"]["over"] is True and data["disk"]["limit"] == M
            assert check(c.get("api/students/3"), 200)["disk"] is None  # a free seat is not measured
            assert data["resources"] is None  # single-user mode: no control group by default
            metrics = c.get("metrics").text
            assert "wod_homes_over_size_limit 1.0" in metrics, metrics[-500:]
        log = hub.log_path.read_text()
    assert log.count("over the 1 MB of c.Wod.home_size_limit") == 1
