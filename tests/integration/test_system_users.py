"""System-users mode end to end: real accounts, the real hub, its proxy and servers, student B an adversary.

Two seats of one workshop are booked over REST: A (``student210``) and B
(``student211``), Linux accounts made by ``wod users create``. B logs in and
its server runs as B's uid; from B's own kernel, B tries to read A's home
and the hub's secrets. Then B, as B's uid, leaves what a participant could
leave: a forking process, files in ``/tmp`` and ``/dev/shm``, a System V
shared memory segment, a symlink ``~/WKSHP-Iso -> A's home``, a 3,000-deep
tree and a malformed notebook. B's CLEANUP must succeed, report B's own
ratio (not A's), leave no process and no file of B's uid, and free the
seat; A's home must be byte for byte what it was; B's next CREATE must
give a clean home.

Two parts rest on other guards: the completion that never follows the
workshop folder's link and never fails on a malformed notebook or a deep
tree, and the wod database created ``0600``.

The hub's folder is made as a production one would be: passable by all
(the homes are inside), listable by none, its configuration the hub's alone.
"""

import asyncio
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.hubutil import write_workshop
from tests.seatutil import cleanup, create, logged_in, memory_holds, open_lab, run_cells, server_get, spawn
from tests.sysusers import REPO, Hopper, as_student, ensure_accounts, require_root, uid  # noqa: F401 - require_root is a fixture
from wod_jupyterhub.seats import fdtrees
from wod_jupyterhub.seats.leftovers import ipc_objects
from wod_jupyterhub.seats.processes import kill_uid, live_pids

pytestmark = pytest.mark.usefixtures("require_root")

A, B, K = 210, 211, 212
W1, W2 = 213, 214  # two seats started from the warm template
WORKSHOP = "WKSHP-Iso"
KEPT = "WKSHP-IsoKept"  # reset: true, seat K
WARM = "WKSHP-IsoWarm"
STUDENT_PYTHON = os.environ.get("WOD_STUDENT_PYTHON") or str(REPO / ".venv-students" / "bin" / "python")


@pytest.fixture(scope="module")
def place():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    top = Path("/tmp") / f"wod-sysusers-{uuid.uuid4().hex[:8]}"
    top.mkdir(mode=0o711)
    top.chmod(0o711)
    yield top
    for n in (A, B, K, W1, W2):
        kill_uid(uid(n))
    fdtrees.erase_tree(str(top))


@pytest.fixture(scope="module")
def hub(module_hubs, place):
    if not os.access(STUDENT_PYTHON, os.X_OK):
        pytest.fail(f"{STUDENT_PYTHON} is missing: `make system-users` builds the students' Python")
    root = place / "hub"
    root.mkdir(mode=0o711)
    root.chmod(0o711)
    notebooks = root / "notebooks"
    notebooks.mkdir(mode=0o700)
    write_workshop(notebooks, WORKSHOP, (A, B))
    write_workshop(notebooks, KEPT, (K, K), reset=True)
    write_workshop(notebooks, WARM, (W1, W2))
    ensure_accounts(A, W2, root / "students")
    with module_hubs(
        root,
        notebooks=[notebooks],
        authenticator_class="wod",
        spawner_class="wod",
        wod_config={
            "system_users": True,
            "uid_base": 10000,
            "student_min": 200,
            "student_max": 249,
            "secret_key": "",
            "secret_key_file": str(root / "wod_secret.key"),
        },
        extra_config=f"c.Spawner.cmd = [{STUDENT_PYTHON!r}, '-m', 'jupyterhub.singleuser']\nc.WodAuthenticator.throttle_ip_failures = 0",
    ) as h:
        # Its configuration holds the tokens; the log is the hub's business.
        for private in (h.config_path, h.log_path):
            private.chmod(0o600)
        yield h


def forking_process(place: Path, n: int) -> Hopper:
    """A forking process of student ``n`` whose heartbeat lies outside every temporary folder the wipe clears."""
    folder = place / f"heartbeat-{n}"
    folder.mkdir()
    os.chown(folder, uid(n), uid(n))
    return Hopper(n, folder)


def snapshot(home: Path) -> dict:
    """Every entry below ``home``: its bytes (files), its link target (links), its mode and owner."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(home):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            content = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else None)
            out[str(p.relative_to(home))] = (content, st.st_mode, st.st_uid, st.st_gid)
    return out


def files_of(u: int, *folders) -> list[str]:
    r = subprocess.run(["find", *map(str, folders), "-xdev", "-uid", str(u)], capture_output=True, text=True)
    return r.stdout.split()


# What B's kernel tries: each path, listed or read; "PermissionError" is the expected answer.
PROBE = """
import json, os
out = {}
for what, path in PATHS:
    try:
        os.listdir(path) if what == "list" else open(path, "rb").read(1)
        out[path] = "ok"
    except OSError as e:
        out[path] = type(e).__name__
json.dump({"uid": os.getuid(), "results": out}, open(os.path.expanduser("~/probe.json"), "w"))
"""

# B's leftovers: files in the shared temporary folders, a SysV segment, its workshop folder
# replaced by a link to A's home, a 3,000-deep tree and a malformed notebook in its home.
LEAVE = """
import ctypes, os, sys
home, a_home, tag, workshop = sys.argv[1:5]
open(f"/tmp/{tag}-file", "w").write("B was here")
os.makedirs(f"/tmp/{tag}-dir/inner")
open(f"/dev/shm/{tag}-shm", "w").write("x")
assert ctypes.CDLL(None).shmget(0, 4096, 0o1000 | 0o600) >= 0
os.rename(f"{home}/{workshop}", f"{home}/mine")
os.symlink(a_home, f"{home}/{workshop}")
open(f"{home}/mine/1-Exercise.ipynb", "w").write('{"nbformat":3,"worksheets":[{"cells":5}]}')
fd = os.open(f"{home}/mine", os.O_RDONLY)
for _ in range(3000):
    os.mkdir("d", dir_fd=fd)
    nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
    os.close(fd)
    fd = nxt
os.close(fd)
"""


def test_a_student_reaches_nothing_of_another_and_leaves_nothing_behind(hub, place):
    students = Path(hub.students_root)
    home_a, home_b = students / f"student{A}", students / f"student{B}"
    _, customer_a = create(hub, A, workshop=WORKSHOP)
    password_b, customer_b = create(hub, B, workshop=WORKSHOP)

    # A ran two cells of the exercise (its own uid wrote them)
    r = as_student(
        A,
        "import json, sys\np = sys.argv[1]\nnb = json.load(open(p))\n"
        "for i, c in enumerate(c for c in nb['cells'] if c['cell_type'] == 'code' and c['source']):\n    c['execution_count'] = i + 1\n"
        "json.dump(nb, open(p, 'w'))\n",
        home_a / WORKSHOP / "1-Exercise.ipynb",
    )
    assert r.returncode == 0, r.stderr
    before_a = snapshot(home_a)

    # B's server runs as B, and from B's kernel nothing of A or of the hub's secrets can be read
    browser = logged_in(hub, f"student{B}", password_b)
    spawn(hub, browser, f"student{B}")
    servers = [p for p in live_pids(uid(B)) if b"jupyterhub.singleuser" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert servers, "no single-user server runs as B's uid"
    root = Path(hub.root)
    paths = [
        ("list", str(home_a)),
        ("read", str(home_a / WORKSHOP / "0-ReadMeFirst.ipynb")),
        ("list", str(students)),
        ("list", str(root)),
        ("read", str(root / "wod_secret.key")),
        ("read", str(root / "jupyterhub_cookie_secret")),
        ("read", str(hub.config_path)),
        ("read", str(root / "wod.sqlite")),  # 0600
    ]
    asyncio.run(run_cells(hub, browser, f"student{B}", [f"PATHS = {paths!r}\n" + PROBE]))
    probe = json.loads((home_b / "probe.json").read_text())
    assert probe["uid"] == uid(B)
    # Refused, or (what a seat's private /tmp hides when the hub's folder is under /tmp) not there at all.
    assert set(probe["results"]) == {path for _, path in paths}, probe["results"]
    assert all(probe["results"][path] == "PermissionError" or (kind == "read" and probe["results"][path] == "FileNotFoundError")
               for kind, path in paths), probe["results"]

    # B leaves all it can
    tag = f"wod-sysusers-b-{uuid.uuid4().hex[:6]}"
    r = as_student(B, LEAVE, home_b, home_a, tag, WORKSHOP)
    assert r.returncode == 0, r.stderr
    with forking_process(place, B) as hopper:
        op = cleanup(hub, B, customer_b)
        # B's own ratio: its workshop folder is a link to A's home, so B ran nothing of its own
        completion = op["result"]["completion"]
        assert (completion["executed"], completion["ratio"]) == (0, 0), completion
        assert not hopper.alive(1.0), "B's forking process survived the CLEANUP"
    fdtrees.erase_tree(str(hopper.heartbeat.parent))
    assert live_pids(uid(B)) == []
    assert files_of(uid(B), "/tmp", "/var/tmp", "/dev/shm") == []
    assert ipc_objects(uid(B)) == []
    assert not home_b.exists()
    with hub.client("portal") as c:
        assert c.get(f"api/students/{B}").json()["state"] == "free"
    assert snapshot(home_a) == before_a  # byte for byte, modes and owners too

    # the next participant of B's seat gets a clean home, like A's fresh one
    _, customer_b2 = create(hub, B, workshop=WORKSHOP)
    fresh = snapshot(home_b)
    assert sorted(fresh) == sorted(before_a)
    assert {v[2] for v in fresh.values()} == {uid(B)}
    assert all(not v[1] & 0o077 for v in fresh.values())
    assert not any(isinstance(v[0], str) for v in fresh.values())  # no symlink
    for n, customer in ((A, customer_a), (B, customer_b2)):
        assert cleanup(hub, n, customer)["status"] == "succeeded"


def test_the_cleanup_of_a_kept_seat_kills_and_clears_too(hub, place):
    """A ``reset: true`` workshop keeps the home for its RESET, not the participant's processes or temp files."""
    _, customer = create(hub, K, workshop=KEPT)
    home = Path(hub.students_root) / f"student{K}"
    tag = f"wod-sysusers-k-{uuid.uuid4().hex[:6]}"
    assert as_student(K, "import sys; open(f'/tmp/{sys.argv[1]}', 'w').write('x')", tag).returncode == 0
    with forking_process(place, K) as hopper:
        op = cleanup(hub, K, customer)
        assert not hopper.alive(1.0), "the kept seat's forking process survived its CLEANUP"
    [release] = [s for s in op["steps"] if s["name"] == "release"]
    assert release["detail"]["kept"] is True and release["detail"]["temp_files"] >= 1, release
    assert not Path(f"/tmp/{tag}").exists()
    assert (home / KEPT / "0-ReadMeFirst.ipynb").is_file()  # the home itself waits for the RESET
    with hub.client("portal") as c:
        assert c.get(f"api/students/{K}").json()["state"] == "kept"


# What each seat's kernel writes: the environment its server gave it.
ENVIRONMENT = "import json, os\njson.dump(dict(os.environ), open(os.path.expanduser('~/environment.json'), 'w'))\n"


def test_two_seats_from_the_warm_template_hold_nothing_of_each_other(hub):
    """Both servers are forks of the one warm template; each is its seat alone, the template holds no seat's secret, and the servers outlive it."""
    seen = {}
    for n in (W1, W2):
        name = f"student{n}"
        password, customer = create(hub, n, workshop=WARM)
        browser = logged_in(hub, name, password)
        spawn(hub, browser, name)
        pid = hub.hub_api("GET", f"/users/{name}").json()["servers"][""]["state"]["pid"]
        lab = open_lab(browser, name)
        asyncio.run(run_cells(hub, browser, name, [ENVIRONMENT]))
        env = json.loads((Path(hub.students_root) / name / "environment.json").read_text())
        seen[n] = {"pid": pid, "env": env, "lab": lab, "customer": customer, "browser": browser}
    template = {int(Path(f"/proc/{s['pid']}/stat").read_text().rpartition(")")[2].split()[1]) for s in seen.values()}
    assert len(template) == 1, template  # one parent for both: the template
    [template] = template
    assert b"wod_jupyterhub.seats import template" in Path(f"/proc/{template}/cmdline").read_bytes()
    assert "Uid:\t0\t0\t0\t0" in Path(f"/proc/{template}/status").read_text()  # root's
    hub_ns = {k: os.readlink(f"/proc/self/ns/{k}") for k in ("mnt", "ipc")}
    for n, s in seen.items():
        name, pid, env = f"student{n}", s["pid"], s["env"]
        status = Path(f"/proc/{pid}/status").read_text()
        assert f"Uid:\t{uid(n)}\t{uid(n)}\t{uid(n)}\t{uid(n)}" in status, status
        assert f"Gid:\t{uid(n)}\t{uid(n)}\t{uid(n)}\t{uid(n)}" in status, status
        assert f"/{name}\n" in Path(f"/proc/{pid}/cgroup").read_text()
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        assert b"jupyterhub.singleuser" in Path(f"/proc/{pid}/cmdline").read_bytes()
        for k, ns in hub_ns.items():
            assert os.readlink(f"/proc/{pid}/ns/{k}") != ns
        # Its own settings, read by the server as a new process reads them.
        assert (env["USER"], env["HOME"], env["JUPYTERHUB_USER"]) == (name, str(Path(hub.students_root) / name), name)
        assert env["JUPYTERHUB_SERVICE_PREFIX"] == f"/user/{name}/"
        assert env["JUPYTER_RUNTIME_DIR"] == "/tmp/jupyter-runtime"
        assert s["lab"].status_code == 200 and f'"hubUser": "{name}"' in s["lab"].text
    one, two = seen[W1], seen[W2]
    assert os.readlink(f"/proc/{one['pid']}/ns/mnt") != os.readlink(f"/proc/{two['pid']}/ns/mnt")
    tokens = {n: s["env"]["JUPYTERHUB_API_TOKEN"].encode() for n, s in seen.items()}
    assert tokens[W1] != tokens[W2]
    # Nothing of one seat in the other's server, nor in the template that forks the next one.
    assert memory_holds(one["pid"], [tokens[W2]]) == []
    assert memory_holds(two["pid"], [tokens[W1]]) == []
    assert memory_holds(template, list(tokens.values())) == []
    assert memory_holds(one["pid"], [tokens[W1]]) == [tokens[W1]]  # the search finds what is there
    # The template dies: the servers, in sessions of their own, run on (as across a hub restart),
    # and the next start makes a new template.
    os.kill(template, signal.SIGKILL)
    for n, s in seen.items():
        assert server_get(s["browser"], f"student{n}", "api/status").status_code == 200
    assert cleanup(hub, W1, one["customer"])["status"] == "succeeded"
    password, customer = create(hub, W1, workshop=WARM)
    spawn(hub, logged_in(hub, f"student{W1}", password), f"student{W1}")
    pid = hub.hub_api("GET", f"/users/student{W1}").json()["servers"][""]["state"]["pid"]
    again = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    assert again != template and b"wod_jupyterhub.seats import template" in Path(f"/proc/{again}/cmdline").read_bytes()
    for n, c in ((W1, customer), (W2, two["customer"])):
        assert cleanup(hub, n, c)["status"] == "succeeded"
    assert "from the warm template" in Path(hub.log_path).read_text()
