"""Verified steps on a real hub in system-users mode (as root): the bundled sample with two more steps, real accounts
``student460``.. (uids 10460..), real servers and kernels, a recording portal.

A participant presses Check through the service's seat endpoints with its server's own token; the
hostile one edits, fakes, races and tries to make a check hang or read its neighbour; CLEANUP counts
the verified steps.
"""

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.portal_server import PortalServer
from tests.seatutil import Kernel, live_processes, logged_in, seat_accounts, spawn, verb
from tests.sysusers import student_python
from wod_jupyterhub.config import share_dir
from wod_jupyterhub.seats import cgroups

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="system-users mode needs root (CI runs as root)")

FIRST, LAST = 460, 463
SEATS = (460, 461)
UID = 10000
WORKSHOP = "WKSHP-VerifiedSteps"
TIMEOUT = 3.0

# Two steps beside the sample's three: one whose check never ends, one whose check follows a link
# the participant made (to show the check reads only what the seat's own uid may).
MORE_STEPS = """
  - title: Wait for ever
    check: checks/steps.py:never_ends
  - title: Share a note
    check: checks/steps.py:note_shared
    hints:
      - note.txt holds the words shared note.
"""
MORE_CHECKS = '''

def never_ends(seat):
    import time
    time.sleep(1000)


def note_shared(seat):
    with open(os.path.join(seat.folder, "note.txt")) as f:
        if f.read().strip() != "shared note":
            return "note.txt does not hold the shared note."
'''


@pytest.fixture(scope="module")
def accounts():
    students = Path(tempfile.mkdtemp(prefix="wod-steps-"))
    students.chmod(0o711)
    with seat_accounts(FIRST, LAST, SEATS, students):
        yield students


@pytest.fixture(scope="module")
def portal():
    with PortalServer() as p:
        yield p


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory, accounts, portal):
    root = tmp_path_factory.mktemp("steps")
    notebooks = root / "notebooks"
    folder = notebooks / WORKSHOP
    shutil.copytree(share_dir() / "workshops" / WORKSHOP, folder)
    meta = (folder / "wod.yml").read_text().replace("range: [41,60]", f"range: [{FIRST},{LAST}]")
    (folder / "wod.yml").write_text(meta + MORE_STEPS)
    with open(folder / "checks" / "steps.py", "a") as f:
        f.write(MORE_CHECKS)
    parent = f"wod-test-{secrets.token_hex(4)}"
    cmd, env = student_python(UID + FIRST)
    extra = "\n".join([f"c.WodSpawner.cmd = {cmd!r}", f"c.WodSpawner.environment = {env!r}", "c.WodSpawner.pids_limit = 128"])
    wod = {"student_min": FIRST, "student_max": LAST, "system_users": True, "cgroups": True, "cgroup_parent": parent,
           "students_root": str(accounts), "skel": ""}
    try:
        with module_hubs(
            root, notebooks=[notebooks], authenticator_class="wod", spawner_class="wod", wod_config=wod, extra_config=extra,
            api_db_url=portal.url, service_config={"WodSteps.timeout": TIMEOUT},
        ) as h:
            h.students_root = accounts
            yield h
    finally:
        cgroups.detect("/sys/fs/cgroup", parent).clear()
        subprocess.run(["rm", "-rf", str(accounts)], check=False)


def service(hub, token):
    return httpx.Client(base_url=hub.service_url, headers={"Authorization": f"token {token}"} if token else {}, timeout=60)


def check(hub, token, k):
    with service(hub, token) as c:
        r = c.post(f"api/seat/steps/{k}/check")
    assert r.status_code == 200, r.text
    return r.json()


async def run(hub, client, n, code, timeout=60) -> str:
    async with Kernel(hub, client, f"student{n}") as k:
        status, _ = await k.run(code, timeout)
        assert status == "ok", (status, "".join(k.output))
        return "".join(k.output)


@pytest.fixture(scope="module")
def seats(hub):
    """Seat 460 booked and started (its browser, customer, server token); seat 461 booked, with a note of its own."""
    out = {}
    for n in SEATS:
        customer = f"cust-{secrets.token_hex(4)}"
        op = verb(hub, "create", {"student": n, "customer": customer, "email": f"{customer}@example.com", "workshop": WORKSHOP})
        out[n] = {"customer": customer, "password": op["result"]["password"]}
    c = logged_in(hub, "student460", out[460]["password"])
    spawn(hub, c, "student460")
    token = asyncio.run(run(hub, c, 460, "import os; print(os.environ['JUPYTERHUB_API_TOKEN'])")).strip()
    out[460].update(client=c, token=token)
    note = hub.students_root / "student461" / WORKSHOP / "note.txt"
    note.write_text("shared note\n")
    os.chown(note, UID + 461, UID + 461)
    note.chmod(0o600)
    return out


def test_only_a_seats_own_token_opens_its_steps(hub, seats):
    with service(hub, seats[460]["token"]) as c:
        view = c.get("api/seat/steps").json()
    assert (view["verified"], view["total"]) == (0, 5)
    assert [s["status"] for s in view["steps"]] == ["unchecked"] * 5 and view["steps"][0]["title"] == "Write a greeting file"
    for token in (hub.portal_token, hub.admin_token, None, "not-a-token"):
        with service(hub, token) as c:
            r = c.get("api/seat/steps")
        assert r.status_code == 403 and r.json()["message"].endswith(".") and "Traceback" not in r.text, r.text
    with service(hub, seats[460]["token"]) as c:
        r = c.post("api/seat/steps/9/check")
    assert r.status_code == 404 and "has no step 9" in r.json()["message"]


def test_a_check_fails_fresh_with_its_message_and_first_hint_then_passes_once_done(hub, seats):
    token, c = seats[460]["token"], seats[460]["client"]
    failed = check(hub, token, 1)
    assert failed["status"] == "failed" and failed["message"] == "There is no greeting.txt in the workshop's folder yet."
    assert failed["hints"] == ["The file is greeting.txt, in this workshop's folder (beside this notebook)."]
    asyncio.run(run(hub, c, 460, f"open('{WORKSHOP}/greeting.txt', 'w').write('Hello from student460\\n')"))
    passed = check(hub, token, 1)
    assert (passed["status"], passed["message"], passed["hints"]) == ("passed", "Done.", [])


def test_the_participant_cannot_edit_the_results_or_the_checks(hub, seats):
    c = seats[460]["client"]
    db = hub.db_url.split("///", 1)[1]
    out = asyncio.run(run(hub, c, 460, f"""
import os
for path in ({db!r}, {str(Path(hub.notebooks[0]) / WORKSHOP / 'checks' / 'steps.py')!r}):
    try:
        open(path, 'a').close()
        print('opened', path)
    except OSError as e:
        print('refused', e.errno)
print('checks in home:', os.path.exists('{WORKSHOP}/checks'))
"""))
    assert "opened" not in out and out.count("refused") == 2 and "checks in home: False" in out, out


def test_a_faked_notebook_output_does_not_pass_a_check_of_live_state(hub, seats):
    token, c = seats[460]["token"], seats[460]["client"]
    asyncio.run(run(hub, c, 460, "print('Serving HTTP on 127.0.0.1 port 20460 (http://127.0.0.1:20460/) ...')"))
    failed = check(hub, token, 2)
    assert (failed["status"], failed["message"]) == ("failed", "Nothing listens on port 20460 yet.")


# Looks for the check's process among the machine's and tries what the same uid may do to a process
# of its own: write its memory, attach to it, write its answer pipe. Prints the errors it got.
RACE = r"""
import ctypes, errno, json, os, time
libc = ctypes.CDLL(None, use_errno=True)
tries, found = {"mem": set(), "ptrace": set(), "fd": set()}, set()
end = time.time() + 2.5
while time.time() < end:
    for pid in os.listdir('/proc'):
        try:
            if not pid.isdigit() or b'wod_jupyterhub.seats.checks' not in open(f'/proc/{pid}/cmdline', 'rb').read():
                continue
        except OSError:
            continue
        found.add(pid)
        for kind, path in (("mem", f"/proc/{pid}/mem"), ("fd", f"/proc/{pid}/fd/1")):
            try:
                os.close(os.open(path, os.O_WRONLY))
                tries[kind].add("ok")
            except OSError as e:
                tries[kind].add(errno.errorcode[e.errno])
        if libc.ptrace(16, int(pid), 0, 0) == 0:
            tries["ptrace"].add("ok")
            libc.ptrace(17, int(pid), 0, 0)
        else:
            tries["ptrace"].add(errno.errorcode[ctypes.get_errno()])
    time.sleep(0.01)
print(json.dumps({"found": len(found), **{k: sorted(v) for k, v in tries.items()}}))
"""


def _check_process(deadline):
    """(uid, NoNewPrivs, cgroup, mount namespace) of the running check once it dropped to the seat's uid, seen as root."""
    while time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            try:
                if pid.isdigit() and b"wod_jupyterhub.seats.checks" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
                    uid = int(status["Uid"].split()[1])
                    if uid != 0:
                        return uid, status["NoNewPrivs"].strip(), Path(f"/proc/{pid}/cgroup").read_text(), os.readlink(f"/proc/{pid}/ns/mnt")
            except (OSError, KeyError):
                pass
        time.sleep(0.01)
    return None


def test_a_hanging_check_fails_in_time_cannot_be_tampered_with_and_runs_as_the_seat(hub, seats):
    token, c = seats[460]["token"], seats[460]["client"]
    answer, seen = {}, {}

    def press():
        started = time.monotonic()
        answer.update(check(hub, token, 4), seconds=time.monotonic() - started)

    presser = threading.Thread(target=press)
    watcher = threading.Thread(target=lambda: seen.update(process=_check_process(time.monotonic() + 10)))
    presser.start()
    watcher.start()
    raced = json.loads(asyncio.run(run(hub, c, 460, RACE)))
    presser.join(30)
    watcher.join(30)
    assert raced["found"] >= 1, raced
    for kind in ("mem", "ptrace", "fd"):
        assert raced[kind] and "ok" not in raced[kind], raced
    assert answer["status"] == "failed" and answer["message"] == f"The check did not answer within {TIMEOUT:g} seconds: it was stopped."
    uid, no_new_privs, group, mnt = seen["process"]
    assert (uid, no_new_privs) == (UID + 460, "1") and "student460" in group and mnt != os.readlink("/proc/self/ns/mnt")
    # The seat is not stuck: the next check answers at once, and nothing of the hung one is left.
    started = time.monotonic()
    assert check(hub, token, 3)["message"] == "There is no answer.txt in the workshop's folder yet."
    assert time.monotonic() - started < TIMEOUT
    assert not [p for p in live_processes(UID + 460) if b"seats.checks" in Path(f"/proc/{p}/cmdline").read_bytes()]


def test_a_check_reads_only_what_its_seat_may(hub, seats):
    token, c = seats[460]["token"], seats[460]["client"]
    neighbour = hub.students_root / "student461" / WORKSHOP / "note.txt"
    asyncio.run(run(hub, c, 460, f"import os; os.symlink({str(neighbour)!r}, '{WORKSHOP}/note.txt')"))
    failed = check(hub, token, 5)
    assert failed["status"] == "failed" and failed["message"].startswith("The check failed to run: PermissionError"), failed
    assert failed["hints"] == ["note.txt holds the words shared note."]


def test_cleanup_checks_what_was_not_verified_and_reports_verified_over_total(hub, seats, portal):
    c, customer = seats[460]["client"], seats[460]["customer"]
    # Steps 2 and 3 done, never checked: the server runs in the seat (started from its kernel).
    asyncio.run(run(hub, c, 460, f"""
import os, subprocess, sys, time
os.makedirs('{WORKSHOP}/www', exist_ok=True)
open('{WORKSHOP}/www/index.html', 'w').write('<h1>student460</h1>')
subprocess.Popen([sys.executable, '-m', 'http.server', '20460', '--bind', '127.0.0.1', '--directory', '{WORKSHOP}/www'],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
open('{WORKSHOP}/answer.txt', 'w').write(str(sum(i * i for i in range(1, 4601))))
time.sleep(1)
"""))
    with service(hub, hub.portal_token) as s:
        summary = s.get("api/steps", params={"workshop": WORKSHOP}).json()["workshops"]
    [entry] = summary
    assert [st["passed"] for st in entry["steps"]] == [1, 0, 0, 0, 0]
    mine = {seat["student"]: seat for seat in entry["seats"]}
    assert (mine[460]["verified"], mine[460]["stuck_on"], mine[461]["stuck_on"]) == ([1], 2, 1)
    with service(hub, seats[460]["token"]) as s:
        assert s.get("api/steps").status_code == 403  # the instructor's view is not a seat's
    op = verb(hub, "cleanup", {"student": 460, "customer": customer})
    completion = op["result"]["completion"]
    assert completion["steps"] == {"verified": 3, "total": 5, "rechecked": [2, 3, 4, 5]}
    assert completion["ratio"] == 60 and "cells_ratio" in completion
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sent = [call.body for call in portal.calls if call.path == f"/api/customer/{customer}" and call.ok]
        if {"completionPercentage": "60"} in sent:
            break
        time.sleep(0.2)
    assert {"completionPercentage": "60"} in sent, sent
