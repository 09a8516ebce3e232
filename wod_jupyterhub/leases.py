"""Owner strings for leases in the database, and whether their process still lives."""

import hashlib
import os
import socket
import uuid

from .procfs import start_time

# Owners must fit the shortest column they are stored in (wod_outbox.lease_owner, 64).
_HOST_MAX = 32


def _host() -> str:
    host = socket.gethostname()
    # A long name is hashed rather than cut, so two hosts sharing a prefix never pass for one.
    return host if len(host) <= _HOST_MAX else hashlib.sha256(host.encode()).hexdigest()[:_HOST_MAX]


def _proc_start_time(pid: int) -> str | None:
    """Start time of ``pid`` as the owner string writes it, or None if gone."""
    started = start_time(pid)
    return None if started is None else str(started)


def make_owner() -> str:
    """``host:pid:start:random``: enough for a process on the same host to tell whether we still live."""
    pid = os.getpid()
    return f"{_host()}:{pid}:{_proc_start_time(pid) or 0}:{uuid.uuid4().hex[:8]}"


def owner_alive_locally(owner: str) -> bool | None:
    """True/False when ``owner`` ran on this host (we can look); None when it ran elsewhere or is not ours to read."""
    try:
        host, pid, start, _ = owner.split(":")
        pid = int(pid)
    except ValueError:
        return None
    if host != _host():
        return None
    return _proc_start_time(pid) == start


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (another user's counts too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
