"""Benchmarks: run each from the repository root as ``python -m bench.<name>`` (``make bench`` runs them all)."""

import os
from pathlib import Path

from wod_jupyterhub.procfs import stat_fields


def process_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds (user + system, all threads) a process has used so far; 0.0 once it is gone.

    ``children``: add its waited-for children's (a kernel that ran a cell and ended).
    """
    fields = stat_fields(pid)
    if fields is None:
        return 0.0
    used = (11, 12, 13, 14) if children else (11, 12)  # fields 14-17: utime, stime, cutime, cstime
    return sum(int(fields[i]) for i in used) / os.sysconf("SC_CLK_TCK")


def pss(pid: int) -> int:
    """Proportional set size of one process in bytes (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a server and its kernels)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        fields = stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields:  # field 4: the parent
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def template_of(pid: int) -> int | None:
    """The warm template whose fork the server ``pid`` is, or None (a server started as a new process)."""
    fields = stat_fields(pid)
    try:
        parent = int(fields[1])
        return parent if b"seats import template" in Path(f"/proc/{parent}/cmdline").read_bytes() else None
    except (OSError, TypeError):
        return None


def server_pid(hub, name) -> int | None:
    """The pid of ``name``'s server as its spawner recorded it (the admin may read a server's state)."""
    model = hub.hub_api("GET", f"/users/{name}").json()
    server = (model.get("servers") or {}).get("")
    if not server or not server.get("ready"):
        return None
    return (server.get("state") or {}).get("pid")
