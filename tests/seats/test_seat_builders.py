"""The pure parts of a seat's start: its interpreter's flags, its namespace's mounts, its rotating log."""

import os
import subprocess
import sys
import time

import pytest

from wod_jupyterhub.hub.spawner import python_command, without_imports
from wod_jupyterhub.seats import seatlog, seatns

FLAGS = ["-P", "-s"]


@pytest.mark.parametrize(
    "cmd, expected",
    [
        (["/usr/bin/python3", "-m", "jupyterhub.singleuser"], ["/usr/bin/python3", "-P", "-s", "-m", "jupyterhub.singleuser"]),
        (["/opt/py/bin/python3.11", "-P", "-m", "x"], ["/opt/py/bin/python3.11", "-s", "-P", "-m", "x"]),
        (["python", "-m", "x", "-s"], ["python", "-P", "-s", "-m", "x", "-s"]),  # the module's own -s is not the interpreter's
        (["jupyterhub-singleuser"], ["jupyterhub-singleuser"]),  # not a Python interpreter: left as it is
        ([], []),
    ],
)
def test_the_servers_python_gets_the_safe_flags(cmd, expected):
    assert python_command(cmd, FLAGS) == expected


def test_the_server_runs_without_the_modules_it_skips_and_with_its_arguments():
    cmd = without_imports([sys.executable, "-P", "-m", "jupyterhub.singleuser", "--help"], ["rfc3987_syntax", "json"])
    assert cmd[:3] == [sys.executable, "-P", "-c"] and cmd[-1] == "--help"
    assert without_imports(cmd, ["json"]) == cmd  # rewritten once
    # What the launcher does before it runs the server: the skipped modules cannot be imported.
    before_server = cmd[3].split("; import runpy")[0]
    out = subprocess.run([sys.executable, "-c", before_server + "\ntry:\n import json\nexcept ImportError:\n print('skipped')"],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "skipped", out.stderr
    for other in (["jupyterhub-singleuser"], [sys.executable, "script.py", "-m", "jupyterhub.singleuser"], []):
        assert without_imports(other, ["json"]) == other
    assert without_imports(cmd[:1] + ["-m", "jupyterhub.singleuser"], []) == cmd[:1] + ["-m", "jupyterhub.singleuser"]


def test_a_seats_mounts_are_private_nosuid_and_limited():
    mounts = seatns.plan("64M", 1000, nosuid_folders=["/srv/students"], exists=lambda f: f != "/run/lock")
    assert mounts[0].target == "/" and mounts[0].flags & seatns.MS_PRIVATE and mounts[0].flags & seatns.MS_REC
    tmpfs = {m.target: m for m in mounts if m.fstype == "tmpfs"}
    assert sorted(tmpfs) == ["/dev/shm", "/tmp", "/var/tmp"]  # /run/lock only where it exists
    for m in tmpfs.values():
        assert m.flags & seatns.MS_NOSUID and m.flags & seatns.MS_NODEV
        assert m.data == f"size={64 << 20},nr_inodes=1000,mode=1777"
    [mq] = [m for m in mounts if m.fstype == "mqueue"]
    assert mq.target == "/dev/mqueue" and mq.make
    bind, remount = [m for m in mounts if m.target == "/srv/students"]
    assert bind.flags & seatns.MS_BIND and remount.flags & seatns.MS_REMOUNT and remount.flags & seatns.MS_NOSUID
    with pytest.raises(ValueError):
        seatns.plan("lots", 1000)


@pytest.mark.parametrize(
    "allow, students_flags, no_new_privs",
    [
        # A seat without compiled scripts: its students' folder nosuid, no new privileges.
        (False, [seatns.MS_BIND | seatns.MS_REC, seatns.MS_BIND | seatns.MS_REMOUNT | seatns.MS_NOSUID | seatns.MS_NODEV], True),
        # A seat with compiled scripts: the folder bound as it is (still seen), setuid loaders can get root.
        (True, [seatns.MS_BIND | seatns.MS_REC], False),
    ],
)
def test_only_a_seat_with_compiled_scripts_may_run_setuid_programs(allow, students_flags, no_new_privs):
    ns = seatns.build("64M", 1000, "/srv/students", allow_setuid_programs=allow, exists=lambda f: True)
    assert [m.flags for m in ns.mounts if m.target == "/srv/students"] == students_flags
    assert ns.no_new_privs is no_new_privs
    # The private temporary folders stay nosuid either way: nowhere for a second seat to run a setuid copy from.
    tmpfs = [m for m in ns.mounts if m.fstype == "tmpfs"]
    assert [m.target for m in tmpfs] == list(seatns.PRIVATE_FOLDERS)
    assert all(m.flags & seatns.MS_NOSUID and m.flags & seatns.MS_NODEV for m in tmpfs)


def _size(path):
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _lines_of(folder, name):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(name))


def test_a_seats_log_is_rotated_and_capped(tmp_path):
    folder = tmp_path / "logs"
    w = seatlog.open_seat_log(str(folder), "student9", max_bytes=1000, backups=2, rate=1 << 30)
    for i in range(50):
        os.write(w, f"{i:04d} ".encode() * 20)  # 100 bytes a line
    os.close(w)
    deadline = time.monotonic() + 10
    # a rotation renames the current file before it opens the next: between the two it is absent
    while sum(_size(p) for p in folder.iterdir()) < 2000 or _size(folder / "student9.log") < 1000:
        assert time.monotonic() < deadline, [(p.name, _size(p)) for p in folder.iterdir()]
        time.sleep(0.05)
    time.sleep(0.2)
    assert _lines_of(folder, "student9") == ["student9.log", "student9.log.1", "student9.log.2"]
    assert all(p.stat().st_size <= 1000 for p in folder.iterdir())
    assert (folder / "student9.log").read_bytes().endswith(b"0049 ")  # the newest output is in the current file
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert oct((folder / "student9.log").stat().st_mode & 0o777) == "0o600"


def test_a_seat_that_prints_faster_than_its_rate_waits_and_loses_nothing(tmp_path):
    folder = tmp_path / "logs"
    w = seatlog.open_seat_log(str(folder), "student8", max_bytes=1 << 20, backups=0, rate=100_000)
    data = b"x" * 250_000
    started = time.monotonic()
    os.set_blocking(w, True)
    os.write(w, data[:60_000])  # a pipe holds 64 KiB: the rest waits for the pump
    os.write(w, data[60_000:])
    waited = time.monotonic() - started
    os.close(w)
    deadline = time.monotonic() + 10
    while (folder / "student8.log").stat().st_size < len(data):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert waited > 0.8  # about 1.5 s past the first second's budget: the writer waited, not the pump's thread


@pytest.mark.parametrize("allow", [False, True])
def test_a_seats_namespace_reaches_the_warm_templates_child_as_it_was_built(allow):
    import json

    built = seatns.build("64M", 1000, "/srv/students", allow_setuid_programs=allow, runtime_dir="/tmp/jupyter-runtime", uid=1234)
    sent = seatns.SeatNamespace.from_json(json.loads(json.dumps(built.to_json())))
    assert sent.mounts == built.mounts and sent._calls == built._calls
    assert (sent.no_new_privs, sent._runtime_dir, sent._uid) == (not allow, "/tmp/jupyter-runtime", 1234)


def test_what_imports_computed_from_the_templates_user_and_home_is_the_seats_after_the_fork():
    """``template.refresh``: jupyter_client's session user and send2trash's trash folder, as a new process would have them."""
    code = (
        "import os, jupyter_client.session as s, jupyter_server.services.contents.filemanager as fm\n"
        "from wod_jupyterhub.seats import template\n"
        "os.environ.update(USER='student7', HOME='/srv/students/student7')\n"
        "template.refresh()\n"
        "print(s.Session().username, fm.send2trash.__globals__['HOMETRASH'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env={"PATH": os.environ["PATH"], "USER": "root", "HOME": "/root"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["student7", "/srv/students/student7/.local/share/Trash"], out.stderr


# In a child of the template, after refresh(): every string a loaded module keeps (its globals, its classes'
# attributes, its traits' defaults) that still holds the template's home or user.
SCAN = """
import os, sys
from traitlets import HasTraits
from wod_jupyterhub.seats import template
template.preload()
markers, found, path = [os.environ["HOME"], os.environ["USER"]], set(), os.environ["PATH"]
os.environ.clear()
os.environ.update(PATH=path, HOME="/srv/students/student7", USER="student7")
template.refresh()
def scan(value, where, depth=0):
    if isinstance(value, (str, bytes)):
        text = value if isinstance(value, str) else value.decode("latin-1")
        if any(m in text for m in markers):
            found.add(where)
    elif depth < 3 and isinstance(value, (list, tuple, set, frozenset)):
        for v in list(value):
            scan(v, where, depth + 1)
    elif depth < 3 and isinstance(value, dict):
        for k, v in list(value.items()):
            scan(k, where, depth + 1)
            scan(v, f"{where}[{k!r}]", depth + 1)
for name, module in list(sys.modules.items()):
    if module is None or name in ("__main__", "__mp_main__") or name.split(".")[0] in template.FRESH:
        continue
    for key, value in list(vars(module).items()):
        scan(value, f"{name}.{key}")
        if isinstance(value, type) and value.__module__ == name:
            for attr, v in list(vars(value).items()):
                scan(v, f"{name}.{key}.{attr}")
            if issubclass(value, HasTraits):
                for trait, t in value.class_traits().items():
                    scan(getattr(t, "default_value", None), f"{name}.{key}.{trait} (default)")
print(__import__("site").ENABLE_USER_SITE)
print("\\n".join(sorted(found)))
"""


def test_nothing_the_template_computed_from_its_home_or_user_is_left_in_a_seat():
    """``template.refresh``: no module the template loaded keeps the template's $HOME or $USER (root's) for the seat."""
    out = subprocess.run([sys.executable, "-P", "-s", "-c", SCAN],
                         env={"PATH": os.environ["PATH"], "HOME": "/marker-home", "USER": "marker-user"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    enable_user_site, *found = out.stdout.splitlines()
    # The user site (computed from $HOME when sysconfig is asked) is never used with -s, the template's flag:
    # neither on sys.path nor in jupyter_core's search paths, which add it only where site.ENABLE_USER_SITE.
    assert enable_user_site == "False"
    exempt = {"site.USER_BASE", "site.USER_SITE", "sysconfig._CONFIG_VARS['userbase']"}
    assert [f for f in found if f not in exempt] == []


def test_a_child_given_a_bad_request_ends_at_once_without_the_templates_exit_handlers():
    """Before it becomes the seat the child is root: a bad request ends it with ``_exit``, never an interpreter shutdown."""
    code = (
        "import atexit, os, socket\n"
        "from wod_jupyterhub.seats import template\n"
        "atexit.register(lambda: os.write(1, b'exit handler ran as root'))\n"
        "ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        "ours.send(b'{not json')\n"
        "template.seat(theirs, {})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "exit handler" not in out.stdout, out
    assert "could not be started: Expecting property name" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_seat_gets_its_own_multiprocessing_key_and_random_state():
    code = (
        "import multiprocessing.process as p, random\n"
        "from wod_jupyterhub.seats import template\n"
        "key, state = p.current_process().authkey, random.getstate()\n"
        "template.forget_template()\n"
        "print(p.current_process().authkey != key, len(p.current_process().authkey), random.getstate() != state)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", "32", "True"], out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change uids")
def test_a_seats_process_that_kept_any_other_id_or_a_capability_is_refused():
    """``template.dropped``: all three uids and gids the seat's, CapPrm, CapEff and CapAmb empty; else OSError."""
    code = (
        "import os, sys\n"
        "from wod_jupyterhub.seats import template\n"
        "user = {'uid': 65534, 'gid': 65534}\n"
        "def check(label):\n"
        "    try:\n"
        "        template.dropped(user)\n"
        "        print(label, 'ok')\n"
        "    except OSError as e:\n"
        "        print(label, 'refused:', e)\n"
        "check('root')\n"
        "os.setresgid(65534, 65534, 65534)\n"
        "os.setgroups([])\n"
        "os.setresuid(65534, 65534, 0)\n"  # the saved uid still root: capabilities may come back
        "check('saved-root')\n"
        "os.setresuid(65534, 65534, 65534)\n"
        "check('nobody')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("root refused: the server's process kept other uids"), lines
    assert lines[1].startswith("saved-root refused: the server's process kept other uids (real, effective, saved: (65534, 65534, 0))"), lines
    assert lines[2] == "nobody ok", lines
