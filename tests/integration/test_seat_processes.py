"""What a student's server and kernels can reach of another seat, of the next participant and of the hub.

A real hub in system-users mode (as root): each attack is run as a student
would, in the student's own kernel over its websocket; the accounts are
``student360``.. (uids 10360..), made here and removed at the end.
"""

import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import pytest

from tests import seatutil
from tests.hubutil import write_workshop
from tests.seatutil import Kernel, live_processes, logged_in, spawn, verb
from tests.sysusers import student_python

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system-users mode needs root (CI runs as root)")

FIRST, LAST = 360, 369
WORKSHOP = "WKSHP-Seat"
COMPILED = "WKSHP-SeatCompiled"  # a workshop with a compiled script, seats 368..369
SEATS = tuple(range(FIRST, 369))
UID = 10000
TMP_INODES = 3000


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory):
    """The seats' accounts have their homes in the hub's students' folder, as ``wod users create`` makes them
    (a compiled script's loader runs only from its participant's home)."""
    root = tmp_path_factory.mktemp("seatproc")
    notebooks = root / "notebooks"
    write_workshop(notebooks, WORKSHOP, (FIRST, 367))
    folder = write_workshop(notebooks, COMPILED, (368, LAST), extra={"login.sh": COMPILED_SOURCE})
    (folder / "login.sh").chmod(0o755)
    with open(folder / "wod.yml", "a") as f:
        f.write("compile: 'login.sh'\n")
    # Outside /tmp: the seat's own /tmp would hide the interpreters' copies.
    compiled_dir = f"/var/lib/wod-test-seatproc-{secrets.token_hex(4)}"
    students = seatutil.students_folder("wod-seatproc-")
    spawner = ["c.WodSpawner.mem_limit = 400 * 1024**2", "c.WodSpawner.pids_limit = 64", f"c.WodSpawner.private_tmp_inodes = {TMP_INODES}"]
    with seatutil.seat_accounts(FIRST, LAST, SEATS, students), \
            seatutil.system_users_hub(module_hubs, root, notebooks, FIRST, LAST, students, spawner=spawner,
                                      wod={"compiled_dir": compiled_dir}, remove=[compiled_dir]) as h:
        yield h


def book(hub, n, workshop=WORKSHOP):
    customer = f"cust-{secrets.token_hex(4)}"
    op = verb(hub, "create", {"student": n, "customer": customer, "email": f"{customer}@example.com", "workshop": workshop})
    return customer, op["result"]["password"]


def start(hub, n, password):
    c = logged_in(hub, f"student{n}", password)
    spawn(hub, c, f"student{n}")
    return c


def seat(hub, n, workshop=WORKSHOP):
    customer, password = book(hub, n, workshop)
    return start(hub, n, password), customer


async def run(hub, client, n, code, timeout=60) -> str:
    async with Kernel(hub, client, f"student{n}") as k:
        status, _ = await k.run(code, timeout)
        assert status == "ok", (status, "".join(k.output))
        return "".join(k.output)


def step_detail(op, name):
    [step] = [s for s in op["steps"] if s["name"] == name]
    return step["detail"]


# -- 1: a kernel's channels -------------------------------------------------------------------------

# Subscribes a plain ZMQ SUB socket to every listening TCP port of the uids given (read from
# /proc/net/tcp, as any local process may) and to every Unix socket the machine lists, for some
# seconds; prints how many places it tried and every message text it received.
EAVESDROP = r"""
import os, sys, time, zmq
uids = {int(u) for u in ARGS[0].split(",")}
skip = {int(p) for p in ARGS[1].split(",") if p}
ports = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).readlines()[1:]:
        f = line.split()
        if f[3] == "0A" and int(f[7]) in uids:
            port = int(f[1].rsplit(":", 1)[1], 16)
            if port not in skip:
                ports.add(port)
paths = {line.split()[-1] for line in open("/proc/net/unix").readlines()[1:] if len(line.split()) > 7 and line.split()[-1].startswith("/")}
ctx = zmq.Context()
subs = []
for where in [f"tcp://127.0.0.1:{p}" for p in ports] + [f"ipc://{p}" for p in paths]:
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.setsockopt(zmq.LINGER, 0)
    s.connect(where)
    subs.append(s)
got = []
poller = zmq.Poller()
for s in subs:
    poller.register(s, zmq.POLLIN)
end = time.monotonic() + float(ARGS[2])
while time.monotonic() < end:
    for s, _ in poller.poll(200):
        got.append(b"".join(s.recv_multipart()).decode(errors="replace"))
print("tried", len(ports), "ports", len(paths), "sockets; received", len(got), "messages")
print("\n".join(got))
"""


def eavesdrop_cell(uids, skip_ports, seconds):
    return f"ARGS = {[','.join(map(str, uids)), ','.join(map(str, skip_ports)), str(seconds)]!r}\n" + EAVESDROP


def test_another_student_receives_nothing_of_a_kernels_output(hub):
    """Student B subscribes to every port of A's uid and every Unix socket while A's kernel prints a secret."""
    a, b = 360, 361
    ca, _ = seat(hub, a)
    cb, _ = seat(hub, b)
    secret = f"secret-{secrets.token_hex(8)}"

    async def both():
        victim = asyncio.create_task(run(hub, ca, a, f"import time\nfor i in range(60):\n    print({secret!r}, flush=True)\n    time.sleep(0.1)"))
        await asyncio.sleep(2)  # A's kernel is up and printing
        heard = await run(hub, cb, b, eavesdrop_cell([UID + a], [], 3))
        return await victim, heard

    printed, heard = asyncio.run(both())
    assert secret in printed  # A's kernel does run and print
    tried = heard.split()
    assert tried[0] == "tried" and int(tried[1]) >= 1, heard  # A's server's port at least
    assert secret not in heard, heard[:2000]


def test_the_check_kernels_output_is_not_heard_by_a_student(hub):
    """``wod check`` (and ``POST api/check``) runs notebooks as root: a student subscribing to root's ports hears nothing."""
    from wod_jupyterhub.cli.selftest import run_notebook

    secret = f"secret-{secrets.token_hex(8)}"
    folder = Path(tempfile.mkdtemp(prefix="wod-check-nb-"))
    path = folder / "nb.ipynb"
    code = f"import time\nfor i in range(40):\n    print({secret!r}, flush=True)\n    time.sleep(0.1)"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(nb, path)
    # the ports root already listens on (the hub, the proxy, other tests) are left alone
    before = listening_ports(0)
    report = {}
    worker = threading.Thread(target=lambda: report.update(run_notebook(path, 60)))
    worker.start()
    try:
        time.sleep(1.5)
        python = os.environ.get("WOD_STUDENT_PYTHON") or str(Path(__file__).resolve().parents[2] / ".venv-students" / "bin" / "python")
        r = subprocess.run(
            [python, "-c", eavesdrop_cell([0], sorted(before), 2.5)], user=UID + 362, group=UID + 362, extra_groups=[], cwd="/",
            env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}, capture_output=True, text=True, timeout=60,
        )
    finally:
        worker.join(60)
        subprocess.run(["rm", "-rf", str(folder)], check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert report["status"] == "passed", report
    assert "tried" in r.stdout
    assert secret not in r.stdout, r.stdout[:2000]


def listening_ports(uid: int) -> set[int]:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and int(f[7]) == uid:
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


# -- 4: the server's import path --------------------------------------------------------------------

# A package named like the hub's, in the home: it leaves a mark and hands over to the real one,
# so the server starts as if nothing happened (what an attacker's copy would do).
FAKE_JUPYTERHUB = """
import os, sys
open(os.path.join(os.environ["HOME"], "MARK-imported-from-home"), "w").close()
here = os.path.dirname(os.path.abspath(__file__))
for entry in sys.path:
    candidate = os.path.join(entry or ".", "jupyterhub")
    if os.path.abspath(candidate) != here and os.path.isfile(os.path.join(candidate, "__init__.py")):
        __path__.append(candidate)
        break
from ._version import __version__, version_info
"""


def test_the_server_imports_nothing_from_the_home(hub):
    n = 363
    customer, password = book(hub, n)
    home = hub.students_root / f"student{n}"
    site = home / ".local" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    planted = {
        home / "jupyterhub" / "__init__.py": FAKE_JUPYTERHUB,
        site / "wod_mark.pth": 'import os; open(os.path.join(os.environ["HOME"], "MARK-user-site"), "w").close()\n',
    }
    for path, text in planted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    subprocess.run(["chown", "-R", f"{UID + n}:{UID + n}", str(home / "jupyterhub"), str(home / ".local")], check=True)
    c = start(hub, n, password)
    # the server runs, and has imported neither (before any kernel starts: a kernel does read the user's site)
    assert not (home / "MARK-imported-from-home").exists()
    assert not (home / "MARK-user-site").exists()
    # a kernel still imports from the notebook's folder and the user's site (the flags are not inherited),
    # where its interpreter has one: a virtualenv's (the students' Python of a closed clone) has none
    (home / "mymodule.py").write_text("VALUE = 42\n")
    os.chown(home / "mymodule.py", UID + n, UID + n)
    cmd, env = student_python(UID + n)
    user_site = subprocess.run([cmd[0], "-c", "import site, sys; sys.exit(not site.ENABLE_USER_SITE)"], env={**os.environ, **env}).returncode == 0
    out = asyncio.run(run(hub, c, n, "import os, mymodule\nprint(mymodule.VALUE, os.path.exists(os.path.expanduser('~/MARK-user-site')))"))
    assert out.split() == ["42", str(user_site)], out
    verb(hub, "cleanup", {"student": n, "customer": customer})


# -- 6, 8, 13: the seat's own temporary folders, IPC and keyrings --------------------------------------

FLOOD = f"""
import os, errno
made = 0
try:
    for i in range({2 * TMP_INODES}):
        open(f"/tmp/flood-{{i}}", "w").close()
        made += 1
except OSError as e:
    print("stopped", errno.errorcode[e.errno])
print("made", made)
print([line for line in open("/proc/self/mounts") if " /tmp " in line][0])
"""


def test_a_tmp_flood_stays_in_the_seats_own_tmp_and_the_wipe_never_walks_it(hub):
    n = 364
    c, customer = seat(hub, n)
    out = asyncio.run(run(hub, c, n, FLOOD, timeout=120))
    made = int(out.split("made ")[1].split()[0])
    assert "stopped ENOSPC" in out and made < TMP_INODES, out  # the seat's /tmp holds only so many files
    assert "nosuid" in out, out
    # none of it is in the machine's /tmp
    assert not [e.name for e in os.scandir("/tmp") if e.name.startswith("flood-") and e.stat(follow_symlinks=False).st_uid == UID + n]
    op = verb(hub, "cleanup", {"student": n, "customer": customer})
    assert step_detail(op, "release")["temp_files"] == 0, op["steps"]


SETUID_COPIES = """
import os, shutil
for path in (os.path.expanduser("~/suid-sleep"), "/tmp/suid-sleep"):
    shutil.copy("/bin/sleep", path)
    os.chmod(path, 0o4755)
os.chmod(os.path.expanduser("~"), 0o711)
print("made")
"""

RESPAWNER = """
import subprocess
loop = "while true; do for p in {home}/suid-sleep /tmp/suid-sleep; do $p 1000 & done; sleep 0.05; done"
subprocess.Popen(["sh", "-c", loop], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("started")
"""


def test_a_setuid_respawner_from_a_second_seat_cannot_stall_cleanup(hub):
    """A makes setuid copies of a program; the same participant's seat B runs them in a loop; A's CLEANUP still ends clean."""
    a, b = 365, 366
    ca, customer_a = seat(hub, a)
    cb, customer_b = seat(hub, b)
    home_a = hub.students_root / f"student{a}"
    assert asyncio.run(run(hub, ca, a, SETUID_COPIES)).strip() == "made"
    (home_a / "leftover-marker").touch()
    assert asyncio.run(run(hub, cb, b, RESPAWNER.format(home=home_a))).strip() == "started"
    time.sleep(1)
    try:
        # B's loop runs, but none of what it starts is A's: setuid bits mean nothing in a seat
        assert live_processes(UID + b, ids=(0,)), "B's loop is not running"
        assert set(live_processes(UID + b, ids=(0,))) & set(live_processes(UID + a, ids=(1, 2))) == set()
        op = verb(hub, "cleanup", {"student": a, "customer": customer_a})  # asserts it succeeded
        time.sleep(0.5)
        assert live_processes(UID + a, ids=(0, 1, 2)) == [], op["steps"]
        assert not home_a.exists() or not (home_a / "leftover-marker").exists()
    finally:
        verb(hub, "cleanup", {"student": b, "customer": customer_b})


COMPILED_SOURCE = """#!/bin/bash
TOKEN="seat-secret-never-seen"
echo "compiled says $(id -un) $(id -u) ${#TOKEN}"
"""

RUN_COMPILED = """
import os, subprocess
r = subprocess.run([os.path.expanduser("~/WKSHP-SeatCompiled/login.sh")], capture_output=True, text=True)
print(r.stdout + r.stderr + f"exit {r.returncode}")
"""


def test_a_compiled_script_runs_from_the_seats_own_kernel(hub):
    """Its loader is setuid root: a seat of a compile: workshop keeps setuid in its home (its /tmp stays nosuid)."""
    n = 368
    c, customer = seat(hub, n, COMPILED)
    try:
        out = asyncio.run(run(hub, c, n, RUN_COMPILED))
        assert out == f"compiled says student{n} {UID + n} {len('seat-secret-never-seen')}\nexit 0\n", out
        mounts = asyncio.run(run(hub, c, n, "print(open('/proc/self/mounts').read())"))
        tmp = [line.split() for line in mounts.splitlines() if line.split()[1:2] == ["/tmp"]][-1]
        assert "nosuid" in tmp[3].split(","), mounts
    finally:
        verb(hub, "cleanup", {"student": n, "customer": customer})


KEEP_SECRETS = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for ring in (-4, -5, -3):  # @u, @us, @s
    assert libc.syscall(248, b"user", b"wod-secret", b"the-payload", 11, ctypes.c_long(ring)) > 0, ctypes.get_errno()
rt = ctypes.CDLL("librt.so.1", use_errno=True)
q = rt.mq_open(b"/wod-secret", os.O_CREAT | os.O_RDWR, 0o600, None)
assert q >= 0, ctypes.get_errno()
assert rt.mq_send(q, b"the-payload", 11, 0) == 0
print("kept")
"""

FIND_SECRETS = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
found = []
for ring, name in ((-4, "@u"), (-5, "@us"), (-3, "@s")):
    if libc.syscall(250, 10, ctypes.c_long(ring), b"user", b"wod-secret", 0) > 0:
        found.append(name)
rt = ctypes.CDLL("librt.so.1", use_errno=True)
if rt.mq_open(b"/wod-secret", os.O_RDONLY) >= 0:
    found.append("mqueue")
print("found:", " ".join(found))
"""


def test_a_key_and_a_message_queue_do_not_reach_the_next_participant(hub):
    n = 367
    c, customer = seat(hub, n)
    assert asyncio.run(run(hub, c, n, KEEP_SECRETS)).strip() == "kept"
    assert asyncio.run(run(hub, c, n, FIND_SECRETS)).split() == ["found:", "@u", "@us", "@s", "mqueue"]
    verb(hub, "cleanup", {"student": n, "customer": customer})
    c2, customer2 = seat(hub, n)  # the seat's next participant
    assert asyncio.run(run(hub, c2, n, FIND_SECRETS)).split() == ["found:"]
    verb(hub, "cleanup", {"student": n, "customer": customer2})


# -- 7: the seat's output ---------------------------------------------------------------------------

# A shell's output is shown in the notebook and echoed to the kernel's own stderr; the kernel also
# keeps that stderr open (the copy ipykernel echoes to), which it can write to directly.
SHOUT = """
import os, sys
os.system("echo {mark}-shell >&2")
copy = getattr(sys.stderr, "_original_stdstream_copy", None)
if copy is not None:
    os.write(copy, b"{mark}-copy\\n")
print("done")
"""


def test_a_kernels_output_goes_to_the_seats_log_never_the_hubs(hub):
    n = 362
    c, customer = seat(hub, n)
    mark = f"FORGED-{secrets.token_hex(6)}"
    assert "done" in asyncio.run(run(hub, c, n, SHOUT.format(mark=mark))).split()  # the shell's line is shown too, in any order
    seat_log = hub.root / "seat-logs" / f"student{n}.log"

    def text(path):
        return path.read_text() if path.exists() else ""

    deadline = time.monotonic() + 10
    while f"{mark}-shell" not in text(seat_log) + text(hub.log_path):
        assert time.monotonic() < deadline, "the shell's output reached neither log"
        time.sleep(0.1)
    time.sleep(0.5)  # the rest of it, wherever it goes
    assert mark not in text(hub.log_path)
    assert f"{mark}-shell" in text(seat_log) and f"{mark}-copy" in text(seat_log)
    assert oct(seat_log.stat().st_mode & 0o777) == "0o600" and oct(seat_log.parent.stat().st_mode & 0o777) == "0o700"
    verb(hub, "cleanup", {"student": n, "customer": customer})

