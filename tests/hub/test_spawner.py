"""WodSpawner's own steps on a real (SQLite) database and JupyterHub's real ORM objects.

Starting real servers through a real hub is in tests/integration/test_e2e.py; here the
computed environment, arguments, working folder and hooks are checked.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from jupyterhub import orm
from jupyterhub.objects import Hub
from jupyterhub.user import User
from sqlalchemy import select
from tornado import web
from traitlets import TraitError
from traitlets.config import Config

from tests.seatutil import memory_holds
from wod_jupyterhub.cli import users
from wod_jupyterhub.hub import firstvisit, warmstart
from wod_jupyterhub.hub.spawner import WodSpawner, python_command, singleuser_options
from wod_jupyterhub.lab import login_cookie
from wod_jupyterhub.limits import Limits
from wod_jupyterhub.procfs import start_time
from wod_jupyterhub.seats import cgroups
from wod_jupyterhub.store.models import Completion, Seat, Store


@pytest.fixture
def hubdb():
    db = orm.new_session_factory("sqlite://")()
    yield db
    db.close()


@pytest.fixture
def setup(sqlite_url, tmp_path):
    # The spawner's own steps: the store they read is the subject of tests/store and tests/hub/test_auth.py.
    db_url = sqlite_url
    c = Config()
    c.Wod.db_url = db_url
    c.Wod.students_root = str(tmp_path / "students")
    c.Wod.student_max = 50
    # The workshop the seats are booked for: its notebooks are the ones a snapshot counts.
    source = tmp_path / "notebooks" / "WKSHP-Sample"
    source.mkdir(parents=True)
    (source / "wod.yml").write_text("name: sample\nactive: true\nrange: [1, 50]\n")
    for name in ("0-ReadMeFirst.ipynb", "1-More.ipynb"):
        notebook(source / name, [("x", None)])
    c.Wod.notebooks = [str(tmp_path / "notebooks")]
    # No test here touches the host's control groups unless it says so (system-users tests would make groups).
    c.Wod.cgroup_root = str(tmp_path / "no-cgroups")
    store = Store(db_url)
    yield c, store, tmp_path / "students"
    store.dispose()


def book(store, root, n, workshop="WKSHP-Sample", customer="cust-1", state="active", make_home=True):
    with store.session() as s:
        s.merge(Seat(number=n, state=state, workshop=workshop, customer=customer, generation=1))
    home = root / f"student{n}"
    if make_home:
        (home / workshop.replace("CHLG-", "WKSHP-")).mkdir(parents=True, exist_ok=True)
    return home


def spawner(hubdb, config, name="student3"):
    u = orm.User(name=name)
    hubdb.add(u)
    hubdb.commit()
    orm_spawner = orm.Spawner(name="", user=u)
    hubdb.add(orm_spawner)
    hubdb.commit()
    user = User(u, settings={}, db=hubdb)
    sp = WodSpawner(user=user, hub=Hub(), config=config, orm_spawner=orm_spawner)
    sp.api_token = "not-a-real-token"
    return sp


def notebook(path, cells):
    """cells: list of (source, execution_count)."""
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            {"cell_type": "code", "id": f"c{i}", "source": src, "execution_count": count, "outputs": [], "metadata": {}}
            for i, (src, count) in enumerate(cells)
        ],
    }
    path.write_text(json.dumps(nb))


async def test_active_seat_starts_in_its_home_on_the_readme(hubdb, setup):
    config, store, root = setup
    home = book(store, root, 3)
    sp = spawner(hubdb, config)
    await sp.run_pre_spawn_hook()
    env = sp.get_env()
    assert env["HOME"] == str(home) and env["USER"] == "student3"
    assert env["JUPYTERHUB_ROOT_DIR"] == str(home)
    assert env["JUPYTERHUB_DEFAULT_URL"] == "/lab/tree/WKSHP-Sample/0-ReadMeFirst.ipynb"
    # the process really starts in a neutral folder, not on its home (the preexec function, run by a real fork):
    # the home is its root_dir, never on its import path
    out = subprocess.run(["pwd"], preexec_fn=sp.make_preexec_fn("student3"), env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "/"
    assert sp.cmd == [sys.executable, "-m", "jupyterhub.singleuser"]
    assert ("--allow-root" in sp.get_args()) == (os.geteuid() == 0)


async def test_challenge_opens_the_workshop_folder(hubdb, setup):
    config, store, root = setup
    book(store, root, 4, workshop="CHLG-Sample")
    sp = spawner(hubdb, config, "student4")
    await sp.run_pre_spawn_hook()
    assert sp.get_env()["JUPYTERHUB_DEFAULT_URL"] == "/lab/tree/WKSHP-Sample/0-ReadMeFirst.ipynb"


async def test_the_seats_server_learns_the_services_url_and_serves_the_session_bar(hubdb, setup):
    config, store, root = setup
    book(store, root, 5)
    # no wod service among the hub's: no session bar, nothing added
    sp = spawner(hubdb, config, "student5")
    await sp.run_pre_spawn_hook()
    assert sp.service_url == "" and "WOD_SERVICE_URL" not in sp.get_env()
    assert not [a for a in sp.get_args() if "jpserver_extensions" in a]
    # the hub's service named wod: its internal URL and its prefix under the hub's base URL
    config.JupyterHub.base_url = "/wod-hub/"
    config.JupyterHub.services = [{"name": "wod-portal", "api_token": "x"}, {"name": "wod", "url": "http://127.0.0.1:10101/"}]
    hubdb.delete(hubdb.query(orm.User).filter_by(name="student5").one())
    hubdb.commit()
    sp = spawner(hubdb, config, "student5")
    await sp.run_pre_spawn_hook()
    assert sp.get_env()["WOD_SERVICE_URL"] == "http://127.0.0.1:10101/wod-hub/services/wod/"
    flag = "--ServerApp.jpserver_extensions=wod_jupyterhub.lab.extension=True"
    assert flag in sp.get_args()
    # asked again (each start asks, a warm start twice): the flag once, the spawner's own args untouched
    assert sp.get_args().count(flag) == 1 and flag not in sp.args
    # configured: that URL; empty: none
    config.WodSpawner.service_url = ""
    assert WodSpawner(config=config).service_url == ""


async def test_system_users_mode_needs_the_account_and_does_not_add_allow_root(hubdb, setup):
    config, store, root = setup
    config.Wod.system_users = True
    # a seat with no Linux account on this machine (`WOD_SYSTEM_USERS=1 make demo` makes a hundred)
    n = next(n for n in range(3, 2001) if not _account(f"student{n}"))
    if n > 50:
        config.Wod.student_max = n
        (Path(config.Wod.notebooks[0]) / "WKSHP-Sample" / "wod.yml").write_text(f"name: sample\nactive: true\nrange: [1, {n}]\n")
    book(store, root, n)
    sp = spawner(hubdb, config, f"student{n}")
    assert "--allow-root" not in sp.get_args()
    with pytest.raises(web.HTTPError) as e:
        await sp.run_pre_spawn_hook()
    assert e.value.status_code == 409 and "wod users create" in e.value.log_message
    # an account that exists with another uid (root's uid 0 is not uid_base + N) is refused too
    config.Wod.uid_base = 5
    root_sp = spawner(hubdb, config, "root")
    with pytest.raises(web.HTTPError) as e:
        root_sp.check_account(3)
    assert e.value.status_code == 409 and "has uid 0, not 8" in e.value.log_message


@pytest.mark.parametrize("system_users,disabled", [(True, True), (False, False)])
async def test_system_users_mode_ignores_the_students_own_server_config(hubdb, setup, caplog, monkeypatch, system_users, disabled):
    """A student's ~/.jupyter/jupyter_server_config.py could serve any page under the hub's origin."""
    import wod_jupyterhub.hub.spawner as spawner_module

    config, store, root = setup
    config.Wod.system_users = system_users
    sp = spawner(hubdb, config)
    assert sp.disable_user_config is disabled
    assert (sp.get_env().get("JUPYTERHUB_DISABLE_USER_CONFIG") == "1") is disabled
    # The hub says once, at the first spawn, that subdomain_host is empty.
    monkeypatch.setattr(spawner_module, "_warned_same_origin", False)
    with caplog.at_level("WARNING"):
        sp.warn_same_origin()
        spawner(hubdb, config, "student4").warn_same_origin()
    warned = [r.getMessage() for r in caplog.records if "subdomain_host" in r.getMessage()]
    assert len(warned) == (1 if system_users else 0)
    # With subdomain_host set there is nothing to say.
    monkeypatch.setattr(spawner_module, "_warned_same_origin", False)
    caplog.clear()
    sp.user.settings["subdomain_host"] = "https://hub.example.org"
    sp.warn_same_origin()
    assert not [r for r in caplog.records if "subdomain_host" in r.getMessage()]


def _account(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.mark.parametrize(
    "name, state, make_home, message",
    [
        ("boss", None, False, "not a workshop seat"),
        ("student51", None, False, "not a workshop seat"),
        ("student5", None, False, "no workshop booked"),
        ("student5", "free", True, "no workshop booked"),
        ("student5", "kept", True, "no workshop booked"),
        ("student5", "active", False, "home of student5 is missing"),
    ],
)
async def test_pre_spawn_refuses_with_a_sentence(hubdb, setup, name, state, make_home, message):
    config, store, root = setup
    if state:
        book(store, root, 5, state=state, make_home=make_home)
    sp = spawner(hubdb, config, name)
    with pytest.raises(web.HTTPError) as e:
        await sp.run_pre_spawn_hook()
    assert e.value.status_code in (403, 409)
    assert message in e.value.log_message


async def test_configured_pre_spawn_hook_still_runs(hubdb, setup):
    config, store, root = setup
    book(store, root, 3)
    seen = []
    config.Spawner.pre_spawn_hook = lambda sp: seen.append(sp.default_url)
    sp = spawner(hubdb, config)
    await sp.run_pre_spawn_hook()
    assert seen == ["/lab/tree/WKSHP-Sample/0-ReadMeFirst.ipynb"]


async def test_post_stop_records_a_snapshot_for_the_participant_who_used_it(hubdb, setup):
    config, store, root = setup
    home = book(store, root, 3, customer="alice")
    notebook(home / "WKSHP-Sample" / "0-ReadMeFirst.ipynb", [("print(1)", 1), ("x = 2", None), ("", None)])
    notebook(home / "WKSHP-Sample" / "1-More.ipynb", [("y = 3", 4), ("z", None)])
    sp = spawner(hubdb, config)
    await sp.run_pre_spawn_hook()
    state = sp.get_state()

    # the hub restarts while the server runs, then the seat is handed over
    # before the server stops: the snapshot still belongs to alice
    book(store, root, 3, customer="bob")
    sp2 = WodSpawner(user=sp.user, hub=Hub(), config=config, orm_spawner=sp.orm_spawner)
    sp2.load_state(state)
    sp2.clear_state()  # poll() does this when the process is gone, before the hook
    await sp2.run_post_stop_hook()
    with store.session() as s:
        snaps = s.scalars(select(Completion)).all()
    assert [(c.student, c.customer, c.kind, c.executed, c.total, c.ratio) for c in snaps] == [(3, "alice", "snapshot", 2, 4, 50)]
    assert {n["path"] for n in snaps[0].detail["notebooks"]} == {"0-ReadMeFirst.ipynb", "1-More.ipynb"}
    # once recorded, a second stop records nothing more
    await sp2.run_post_stop_hook()
    with store.session() as s:
        assert len(s.scalars(select(Completion)).all()) == 1


async def test_post_stop_without_the_workshop_folder_records_nothing(hubdb, setup):
    config, store, root = setup
    home = book(store, root, 3)
    sp = spawner(hubdb, config)
    await sp.run_pre_spawn_hook()
    (home / "WKSHP-Sample").rmdir()  # wiped by CLEANUP before the stop finished
    await sp.run_post_stop_hook()
    with store.session() as s:
        assert s.scalars(select(Completion)).all() == []


async def test_snapshot_counts_only_the_workshops_notebooks_and_parses_outside_the_hub(hubdb, setup, monkeypatch):
    """A snapshot reads the workshop's own notebooks, in a worker process, without following links."""
    import wod_jupyterhub.seats.completion as completion_mod

    config, store, root = setup
    home = book(store, root, 3, customer="alice")
    notebook(home / "WKSHP-Sample" / "0-ReadMeFirst.ipynb", [("print(1)", 1), ("x = 2", None)])
    notebook(home / "WKSHP-Sample" / "fabricated.ipynb", [("y", 1)] * 50)
    (home / "WKSHP-Sample" / "1-More.ipynb").symlink_to("/dev/zero")
    (home / "WKSHP-Sample" / "sub").symlink_to("/", target_is_directory=True)

    def refuse(*args, **kwargs):
        raise AssertionError("a student's notebook was parsed inside the hub process")

    monkeypatch.setattr(completion_mod, "_measure_one", refuse)
    try:
        sp = spawner(hubdb, config)
        await sp.run_pre_spawn_hook()
        ratio = await asyncio.to_thread(sp.snapshot, sp._assignment)
    finally:
        monkeypatch.undo()
    assert (ratio["executed"], ratio["total"], ratio["ratio"]) == (1, 2, 50)
    by_path = {n["path"]: n["error"] for n in ratio["notebooks"]}
    assert set(by_path) == {"0-ReadMeFirst.ipynb", "1-More.ipynb"} and "symbolic link" in by_path["1-More.ipynb"]


def test_users_create_plans_accounts_and_refuses_conflicts(tmp_path, capsys):
    cfg = tmp_path / "jupyterhub_config.py"
    # two seats with no account on this machine (`WOD_SYSTEM_USERS=1 make demo` makes some)
    a = next(n for n in range(2, 500) if not _account(f"student{n}") and not _account(f"student{n + 1}"))
    b = a + 1
    cfg.write_text(f"c.Wod.students_root = {str(tmp_path / 'homes')!r}\nc.Wod.uid_base = 61000\nc.Wod.student_max = 999\n")
    assert users.main(["create", "--config", str(cfg), "--from", str(a), "--to", str(b), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [
        f"student{a}:x:{61000 + a}:{61000 + a}::{tmp_path / 'homes' / f'student{a}'}:/bin/bash",
        f"student{b}:x:{61000 + b}:{61000 + b}::{tmp_path / 'homes' / f'student{b}'}:/bin/bash",
    ]

    assert users.main(["create", "--config", str(cfg), "--from", "998", "--to", "1002", "--dry-run"]) == 2
    assert "not a range within 1..999" in capsys.readouterr().err

    cfg.write_text(f"c.Wod.uid_base = {-a}\nc.Wod.student_max = 999\n")  # student<a> would get uid 0, which root holds
    assert users.main(["create", "--config", str(cfg), "--from", str(a), "--to", str(a), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"uid 0 for student{a} is taken by root" in err and "nothing was changed" in err

    assert users.main(["create", "--config", str(tmp_path / "missing.py")]) == 2
    assert "is not a file" in capsys.readouterr().err


# -- fair share: the seat's limits and its control group ---------------------------------


def limited_workshop(root, limits_yaml):
    folder = root / "WKSHP-Sample"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "0-ReadMeFirst.ipynb").write_text("{}")
    (folder / "wod.yml").write_text(f"name: sample\nrange: [1, 50]\nactive: true\n{limits_yaml}")


async def test_limits_come_from_c_wod_then_wod_yml_then_the_spawner(hubdb, setup):
    config, store, root = setup
    limited_workshop(root.parent / "notebooks", "limits: {memory: 1G, processes: 256}\n")
    config.Wod.notebooks = [str(root.parent / "notebooks")]
    config.Wod.workshop_limits = {"WKSHP-Sample": {"cpu": 2}}
    book(store, root, 3)
    sp = spawner(hubdb, config)
    await sp.run_pre_spawn_hook()
    assert sp._limits == Limits(memory=1024**3, cpu=2.0, pids=256)
    env = sp.get_env()
    # what the seat really gets, for jupyter-resource-usage and the student's own code
    assert env["MEM_LIMIT"] == str(1024**3) and env["CPU_LIMIT"] == "2.0"
    # c.Wod.cgroups defaults to system_users: off here, so no group to join
    assert sp._procs_files is None


@pytest.mark.parametrize("option,value", [("pids_limit", 2), ("mem_limit", "1K"), ("cpu_limit", 0.0)])
def test_limits_that_cannot_run_a_server_are_refused(hubdb, setup, option, value):
    config, _store, _root = setup
    setattr(config.WodSpawner, option, value)
    with pytest.raises(TraitError, match="WodSpawner"):
        spawner(hubdb, config)


@pytest.mark.root(reason="control groups are written by root (CI runs as root)")
async def test_the_server_process_is_born_in_the_seats_group(hubdb, setup):
    config, store, root = setup
    config.Wod.cgroups = True
    config.Wod.cgroup_root = "/sys/fs/cgroup"
    config.Wod.cgroup_parent = parent = f"wod-test-{os.getpid()}-spawner"
    config.WodSpawner.pids_limit = 99
    home = book(store, root, 3)
    sp = spawner(hubdb, config)
    try:
        await sp.run_pre_spawn_hook()
        assert (Path("/sys/fs/cgroup/pids") / parent / "student3" / "pids.max").read_text().strip() == "99"
        # a real fork through the spawner's preexec: in the group before it runs anything
        out = subprocess.run(["cat", "/proc/self/cgroup"], preexec_fn=sp.make_preexec_fn("student3"), capture_output=True, text=True, check=True)
        for controller in ("memory", "cpu", "pids", "freezer"):
            assert f":{controller}:/{parent}/student3\n" in out.stdout, out.stdout
        assert out.returncode == 0 and home.is_dir()
    finally:
        cgroups.detect("/sys/fs/cgroup", parent).clear()


async def test_without_control_groups_the_server_starts_anyway(hubdb, setup, tmp_path, caplog):
    config, store, root = setup
    config.Wod.cgroups = True
    config.Wod.cgroup_root = str(tmp_path / "no-cgroups")
    book(store, root, 3)
    sp = spawner(hubdb, config)
    await sp.run_pre_spawn_hook()
    assert sp._procs_files is None
    out = subprocess.run(["pwd"], preexec_fn=sp.make_preexec_fn("student3"), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "/"
    assert "Servers start without these per-seat limits" in caplog.text and "memory (mem_limit)" in caplog.text


def test_make_deps_drops_exactly_the_modules_the_servers_skip():
    """The Makefile's ``UNUSED_MODULES`` (left out of the repository's virtualenvs) are ``skip_imports``' default."""
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    (line,) = [line for line in makefile.splitlines() if line.startswith("UNUSED_MODULES :=")]
    assert sorted(line.split(":=", 1)[1].split()) == sorted(WodSpawner.class_traits()["skip_imports"].default())


@pytest.mark.parametrize(
    "cmd, flags, extra, problem",
    [
        ([sys.executable, "-m", "jupyterhub.singleuser"], ["-P", "-s"], {}, None),
        ([sys.executable, "-u", "-m", "jupyterhub.singleuser", "--debug"], ["-P", "-s"], {}, None),
        (["jupyterhub-singleuser"], ["-P", "-s"], {}, "does not run python -m jupyterhub.singleuser"),
        ([sys.executable, "-m", "other"], ["-P", "-s"], {}, "does not run python -m jupyterhub.singleuser"),
        ([sys.executable, "-m", "jupyterhub.singleuser"], ["-P"], {}, "lacks -P or -s"),
        ([sys.executable, "-m", "jupyterhub.singleuser"], ["-P", "-s"], {"shell_cmd": ["bash", "-c"]}, "shell_cmd"),
        ([sys.executable, "-m", "jupyterhub.singleuser"], ["-P", "-s"], {"warm_start": False}, "warm_start is off"),
    ],
)
def test_servers_start_from_the_warm_template_only_where_a_fork_runs_what_a_new_process_would(hubdb, setup, cmd, flags, extra, problem):
    config, store, root = setup
    config.WodSpawner.cmd = cmd
    config.WodSpawner.python_flags = flags
    for key, value in extra.items():
        setattr(config.WodSpawner, key, value)
    sp = spawner(hubdb, config)
    found = sp.warm_template_problem(python_command(sp.cmd, sp.python_flags))
    assert (found is None) if problem is None else (problem in found), found
    if problem is None:
        options, rest = singleuser_options(python_command(sp.cmd, sp.python_flags))
        assert {"-P", "-s"} <= set(options) and rest == cmd[cmd.index("jupyterhub.singleuser") + 1:]


async def test_a_pid_that_now_names_another_process_counts_as_gone_and_is_never_signalled(hubdb, setup):
    """The server's pid, reused by another process, is neither signalled by stop nor taken for the server by poll."""
    c, _store, _root = setup
    other = subprocess.Popen(["sleep", "60"])  # the process that got the ended server's pid
    # Reaped as soon as it ends (as the process of another owner would be): the thread ends with it.
    waiter = threading.Thread(target=other.wait)
    waiter.start()
    try:
        sp = spawner(hubdb, c)
        # As a hub restarted after the server ended would find it: a pid and the start time of its server.
        started = int(Path(f"/proc/{other.pid}/stat").read_text().rpartition(")")[2].split()[19])
        reused = {"pid": other.pid, "pid_start": started - 1}
        sp.load_state(reused)
        assert sp.get_state()["pid_start"] == reused["pid_start"]
        assert await sp.poll() == 0
        sp.load_state(reused)
        await sp.stop(now=True)
        waiter.join(1)
        assert waiter.is_alive()  # never signalled
        # The same pid with its own start time is the server: stopped.
        sp.load_state({"pid": other.pid, "pid_start": started})
        assert await sp.poll() is None
        await sp.stop(now=True)
        waiter.join(10)
        assert other.returncode == -signal.SIGTERM
        assert sp.pid_start is None and "pid_start" not in sp.get_state()
    finally:
        other.kill()
        waiter.join()


def test_start_time_is_field_22_of_the_processes_stat():
    before = float(Path("/proc/uptime").read_text().split()[0])
    proc = subprocess.Popen(["sleep", "30"])
    try:
        started = start_time(proc.pid) / os.sysconf("SC_CLK_TCK")
        assert before - 1 <= started <= float(Path("/proc/uptime").read_text().split()[0])
    finally:
        proc.kill()
        proc.wait()
    assert start_time(proc.pid) is None


def test_a_template_that_cannot_start_makes_the_server_start_the_usual_way():
    template = warmstart.Template("/nonexistent/python3", ["-P", "-s"], [], {})
    with pytest.raises(warmstart.Unavailable, match="could not run"):
        template.spawn({}, None)


def test_a_template_refuses_to_run_as_root_what_another_user_could_change(tmp_path):
    """The template runs the seats' interpreter as root: a folder it imports from that others may write makes it refuse."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    template = warmstart.Template(sys.executable, ["-P", "-s"], ["rfc3987_syntax"], {"LANG": "C.UTF-8", "PYTHONPATH": str(shared)})
    try:
        with pytest.raises(warmstart.Unavailable, match=f"refused: {shared} is writable by its group or others"):
            template.spawn({}, None)
    finally:
        template.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="the folders must be root's")
def test_only_folders_root_alone_may_change_are_safe_for_the_template(tmp_path):
    from wod_jupyterhub.seats.template import unsafe_path

    tmp_path.chmod(0o755)
    safe = tmp_path / "safe"
    (safe / "below").mkdir(parents=True)
    assert unsafe_path([str(safe), str(safe / "below"), str(safe / "missing")]) is None  # /tmp above: sticky
    safe.chmod(0o775)
    assert unsafe_path([str(safe / "below")]) == f"{safe} is writable by its group or others (mode 775)"
    safe.chmod(0o755)
    os.chown(safe / "below", 65534, 65534)
    assert unsafe_path([str(safe / "below" / "x")]) == f"{safe / 'below'} belongs to uid 65534, not root"


def test_a_child_that_cannot_become_its_seat_says_why_and_the_template_never_holds_the_request():
    """The child fails as a failed preexec_fn does (its reason in the seat's log); the template keeps nothing of it."""
    secret = f"seat-secret-{os.getpid()}-{time.time_ns()}"
    template = warmstart.Template(sys.executable, ["-P", "-s"], ["rfc3987_syntax"], {"LANG": "C.UTF-8"})
    r, w = os.pipe()
    request = {"argv": [sys.executable], "args": [], "env": {"JUPYTERHUB_API_TOKEN": secret}, "umask": 0o022,
               "procs_files": ["/nonexistent/cgroup.procs"], "namespace": None, "user": None}
    try:
        with pytest.raises(warmstart.SeatFailed, match="nonexistent/cgroup.procs"):
            template.spawn(request, w)
        os.close(w)
        assert b"could not be started" in os.read(r, 65536)
        assert template.alive()  # the next seat's start does not wait for a new template
        assert memory_holds(template.proc.pid, [secret.encode()]) == []
    finally:
        os.close(r)
        template.stop()


def test_a_seat_that_sets_a_variable_the_templates_imports_read_gets_a_new_process():
    """The fork would keep what the import made of the template's value: the child runs the seat's command afresh."""
    template = warmstart.Template(sys.executable, ["-P", "-s"], ["rfc3987_syntax"], {"LANG": "C.UTF-8"})
    r, w = os.pipe()
    fresh = "import os; print('fresh', os.getpid(), os.environ['TORNADO_EXTENSION'], flush=True)"
    # tornado reads TORNADO_EXTENSION when imported (its C speedups or not).
    request = {"argv": [sys.executable, "-c", fresh], "args": [], "env": {"TORNADO_EXTENSION": "0", "LANG": "C.UTF-8"},
               "umask": 0o022, "procs_files": [], "namespace": None, "user": None}
    try:
        pid, _started = template.spawn(request, w)
        os.close(w)
        out = b""
        while chunk := os.read(r, 65536):
            out += chunk
        assert b"Started afresh: the warm template read TORNADO_EXTENSION otherwise" in out, out
        assert f"fresh {pid} 0".encode() in out, out  # the same process, exec'd
    finally:
        os.close(r)
        template.stop()


async def test_a_start_hands_its_server_a_cookie_secret_of_its_own_that_the_login_signs_with(hubdb, setup):
    config, store, root = setup
    book(store, root, 7)
    book(store, root, 8)
    hub_secret = b"h" * 32
    hubdb.add(orm.OAuthClient(identifier="jupyterhub"))  # the hub's own client, which its API tokens belong to
    hubdb.commit()

    def seat(name):
        sp = spawner(hubdb, config, name)
        sp.user.settings["cookie_secret"] = hub_secret
        sp.api_token = sp.user.orm_user.new_api_token(note=f"Server at /user/{name}/")  # as the hub makes it for a start
        return sp

    sp = seat("student7")
    await sp.run_pre_spawn_hook()
    secret = sp.login_cookie_secret()
    salt = sp.get_state()["wod_login_cookie_salt"]
    assert secret == firstvisit.server_cookie_secret(hub_secret, "student7", sp.server_token_id, salt) and len(secret) == 32
    assert sp.get_env()[login_cookie.SECRET_VARIABLE] == secret.hex()
    flag = f"--ServerApp.jpserver_extensions={login_cookie.__name__}=True"
    assert sp.get_args().count(flag) == 1
    # Each seat and each start its own: a cookie of one counts for nothing at another, or after a restart.
    other = seat("student8")
    await other.run_pre_spawn_hook()
    assert other.login_cookie_secret() not in (None, secret)
    assert firstvisit.server_cookie_secret(hub_secret, "student7", sp.server_token_id + 1, salt) != secret
    assert firstvisit.server_cookie_secret(b"g" * 32, "student7", sp.server_token_id, salt) != secret
    # A hub restart reads it back from the state; another start's token (a restart of the server) takes it away.
    state = sp.get_state()
    again = WodSpawner(user=sp.user, hub=sp.hub, config=config, orm_spawner=sp.orm_spawner)
    again.load_state(state)
    assert again.login_cookie_secret() == secret
    again.server_token_id += 1
    assert again.login_cookie_secret() is None
    # The hub deletes a stopped server's token, and its SQLite may give the next start's token the same id:
    # that start's secret is still another (its participant may read it, as the previous one read theirs).
    for token in hubdb.query(orm.APIToken):  # both servers stopped: the hub deleted their tokens
        hubdb.delete(token)
    hubdb.commit()
    await sp.run_post_stop_hook()
    sp.api_token = sp.user.orm_user.new_api_token(note="Server at /user/student7/")
    await sp.run_pre_spawn_hook()
    assert sp.server_token_id == state["wod_server_token"] and sp.login_cookie_secret() not in (None, secret)
    # Off: no secret, no extension; the login leaves the server alone.
    config.WodSpawner.login_cookie = False
    book(store, root, 9)
    off = seat("student9")
    await off.run_pre_spawn_hook()
    assert off.login_cookie_secret() is None and login_cookie.SECRET_VARIABLE not in off.get_env() and flag not in off.get_args()
