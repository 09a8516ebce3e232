"""Ending what a student left running on this machine (their processes), when a seat is wiped."""

import os
import signal
import subprocess
import time

from ..errors import WodError
from ..procfs import stat_fields


class ProcessesSurvived(WodError):
    status = 500
    code = "processes_survived"


def _state_and_uids(pid: str):
    with open(f"/proc/{pid}/status") as f:
        state = None
        for line in f:
            if line.startswith("State:"):
                state = line.split()[1]
            elif line.startswith("Uid:"):
                return state, line.split()[1:5]
    return state, []


def live_pids(uid: int) -> list[int]:
    """Pids of the live processes (zombies left out) running as ``uid``.

    The owner of ``/proc/<pid>`` (the effective uid of a dumpable process)
    picks the candidates, a stat each: reading every process's status
    costs a second on a machine with thousands of zombies. A candidate's
    status then says whether it lives. A process that changed its
    effective uid away from the student's is not listed, but ``kill(-1)``
    reaches it all the same.
    """
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != uid:
                continue
            state, uids = _state_and_uids(entry.name)
        except (OSError, ValueError):
            continue  # gone meanwhile
        if str(uid) in uids and state not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


def session_pids(sid: int) -> list[int]:
    """Pids of the live processes (zombies left out) of session ``sid``: what a command started with its own session forked."""
    pids = []
    for entry in os.scandir("/proc"):
        fields = stat_fields(int(entry.name)) if entry.name.isdigit() else None  # None: gone meanwhile
        # Fields 3 and 6: the state, the session.
        if fields and int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


def end_session(sid: int, timeout: float = 10.0) -> int:
    """SIGKILL session ``sid`` until none of its processes is alive; how many were seen alive."""
    return _kill_until_gone(lambda: session_pids(sid), f"session {sid}", timeout)


def _kill_until_gone(look, what: str, timeout: float, each_round=None) -> int:
    """SIGKILL what ``look()`` lists (after ``each_round()``, if given) until a look lists nothing; how many were seen.

    Raises :class:`ProcessesSurvived`, naming ``what``, when some still live after ``timeout`` seconds.
    """
    pids = look()
    seen = set(pids)
    deadline = time.monotonic() + timeout
    pause = 0.002
    while True:
        if each_round is not None:
            each_round()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        # A killed process takes a moment to exit: look again after it.
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
        pids = look()
        if not pids:
            return len(seen)
        seen.update(pids)
        if time.monotonic() > deadline:
            raise ProcessesSurvived(f"{len(pids)} process(es) of {what} still live after {timeout:.0f} s of SIGKILL: {sorted(pids)[:10]}")


def _kill_as(uid: int, gid: int) -> None:
    """``kill -9 -1`` run as ``uid``: every process the uid may signal, in one walk of the kernel's list.

    Through ``/bin/sh``, whose builtin ``kill`` every system has and which
    every account can run (a Python of the service's own may sit where
    students cannot reach); ``-9 -1`` is the one spelling that dash, bash
    and procps all read as SIGKILL to pid -1.
    """
    subprocess.run(
        ["/bin/sh", "-c", "kill -9 -1"],
        user=uid,
        group=gid,
        extra_groups=[],
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
        check=False,
        timeout=30,
    )


def kill_uid(uid: int, gid: int | None = None, timeout: float = 10.0) -> int:
    """SIGKILL every process of ``uid`` until none is alive; return how many were seen alive.

    As root the uid's own ``kill(-1)`` runs first, whatever a look at
    ``/proc`` says (a pid-hopping process is never where the look is), then
    again for as long as a look still finds one. Without root only the
    processes found are killed, by pid. Raises :class:`ProcessesSurvived`
    when some still live after ``timeout`` seconds (a process stuck in the
    kernel, on a dead NFS server say): the seat is then not clean, and the
    caller must not give it away.
    """
    if uid == 0 or uid == os.getuid():
        raise ValueError(f"refusing to kill every process of uid {uid}")
    gid = uid if gid is None else gid
    as_uid = (lambda: _kill_as(uid, gid)) if os.geteuid() == 0 else None
    return _kill_until_gone(lambda: sorted(live_pids(uid)), f"uid {uid}", timeout, as_uid)
