"""The pure part of fair share: sizes, a workshop's ``limits:``, and the control-group writes (no root needed)."""

import pytest
from traitlets.config import Config

from wod_jupyterhub.config import Wod
from wod_jupyterhub.limits import Limits, limits_from_meta, parent_weight_writes, parse_size, v1_writes, v2_writes
from wod_jupyterhub.workshops.catalog import find_workshop, load_workshop

M = 1024**2


@pytest.mark.parametrize(
    "text,size", [("300M", 300 * M), ("2G", 2048 * M), ("1.5G", 1536 * M), ("512k", 512 * 1024), ("64MiB", 64 * M), (1048576, M), ("4096", 4096)]
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "lots", "-1G", "0", 0, True, "1X", None])
def test_parse_size_refuses_with_a_sentence(bad):
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


def test_v1_writes_close_swap_and_set_every_limit_in_an_accepted_order():
    w = v1_writes(Limits(memory=300 * M, cpu=1.5, pids=64))
    assert w == [
        ("memory", "memory.memsw.limit_in_bytes", "-1"),  # opened first: memsw may never be below the limit
        ("memory", "memory.limit_in_bytes", str(300 * M)),
        ("memory", "memory.memsw.limit_in_bytes", str(300 * M)),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "150000"),
        ("pids", "pids.max", "64"),
    ]


def test_v1_writes_unlimited_and_without_memsw():
    assert v1_writes(Limits(), memsw=False) == [
        ("memory", "memory.limit_in_bytes", "-1"),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "-1"),
        ("pids", "pids.max", "max"),
    ]


def test_v2_writes():
    assert v2_writes(Limits(memory=300 * M, cpu=0.5, pids=100)) == [
        ("memory", "memory.max", str(300 * M)),
        ("memory", "memory.swap.max", "0"),
        ("cpu", "cpu.max", "50000 100000"),
        ("pids", "pids.max", "100"),
    ]
    assert v2_writes(Limits()) == [
        ("memory", "memory.max", "max"),
        ("memory", "memory.swap.max", "max"),
        ("cpu", "cpu.max", "max 100000"),
        ("pids", "pids.max", "max"),
    ]


def test_tiny_cpu_share_keeps_the_kernels_minimum_quota():
    assert ("cpu", "cpu.cfs_quota_us", "1000") in v1_writes(Limits(cpu=0.01))


@pytest.mark.parametrize("kwargs", [{"memory": 1024}, {"cpu": 0}, {"cpu": 5000}, {"pids": 2}, {"pids": True}])
def test_limits_refuse_what_cannot_run_a_server(kwargs):
    with pytest.raises(ValueError):
        Limits(**kwargs)


def test_a_workshops_limits_win_field_by_field():
    base = Limits(memory=2048 * M, cpu=1.0, pids=512)
    assert Limits(memory=4096 * M).over(base) == Limits(memory=4096 * M, cpu=1.0, pids=512)


def test_limits_from_meta_reports_each_bad_entry_and_keeps_the_good_ones():
    limits, problems = limits_from_meta({"memory": "1G", "cpu": "two", "processes": 3, "disk": "1G"})
    assert limits == Limits(memory=1024 * M)
    assert len(problems) == 3
    assert any("limits.cpu" in p for p in problems) and any("limits.processes" in p for p in problems)
    assert any("limits.disk is not known" in p for p in problems)
    assert limits_from_meta(["1G"])[1] and limits_from_meta(None) == (Limits(), [])


def test_wod_yml_limits_reach_the_catalog(tmp_path):
    folder = tmp_path / "WKSHP-Big"
    folder.mkdir()
    (folder / "0-ReadMeFirst.ipynb").write_text("{}")
    (folder / "wod.yml").write_text("name: big\nrange: [1, 5]\nactive: true\nlimits: {memory: 4G, cpu: 2, processes: 1024}\n")
    ws = load_workshop(folder, tmp_path)
    assert ws.limits == Limits(memory=4096 * M, cpu=2.0, pids=1024)
    assert ws.to_json()["limits"] == {"memory": 4096 * M, "cpu": 2.0, "pids": 1024}
    assert find_workshop([tmp_path], "WKSHP-Big").limits == ws.limits
    assert find_workshop([tmp_path], "WKSHP-Nope") is None
    (folder / "wod.yml").write_text("name: big\nrange: [1, 5]\nactive: true\nlimits: {memory: lots}\n")
    ws = load_workshop(folder, tmp_path)
    assert ws.valid and ws.limits == Limits() and any("limits.memory" in p for p in ws.problems)


def test_wod_options_validate():
    c = Config()
    c.Wod.workshop_limits = {"WKSHP-X": {"memory": "nope"}}
    with pytest.raises(Exception, match="workshop_limits"):
        Wod(config=c)
    c = Config()
    c.Wod.cgroup_parent = "../escape"
    with pytest.raises(Exception, match="cgroup_parent"):
        Wod(config=c)
    assert Wod().cgroups is False and Wod(system_users=True).cgroups is True


def test_the_parent_group_weighs_like_the_seats_it_holds():
    assert parent_weight_writes(40, "v1") == [("cpu", "cpu.shares", str(40 * 1024))]
    assert parent_weight_writes(2000, "v1") == [("cpu", "cpu.shares", "262144")]  # the kernel's maximum
    assert parent_weight_writes(40, "v2") == [("cpu", "cpu.weight", "4000")]
    assert parent_weight_writes(2000, "v2") == [("cpu", "cpu.weight", "10000")]
