"""Benchmarks: run each from the repository root as ``python -m bench.<name>`` (``make bench`` runs them all)."""

import os
from pathlib import Path


def process_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds (user + system, all threads) a process has used so far; 0.0 once it is gone.

    ``children``: add its waited-for children's (a kernel that ran a cell and ended).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    used = (11, 12, 13, 14) if children else (11, 12)
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
        if entry.name.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def template_of(pid: int) -> int | None:
    """The warm template whose fork the server ``pid`` is, or None (a server started as a new process)."""
    try:
        parent = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        return parent if b"seats import template" in Path(f"/proc/{parent}/cmdline").read_bytes() else None
    except (OSError, ValueError, IndexError):
        return None


def server_pid(hub, name) -> int | None:
    """The pid of ``name``'s server as its spawner recorded it (the admin may read a server's state)."""
    model = hub.hub_api("GET", f"/users/{name}").json()
    server = (model.get("servers") or {}).get("")
    if not server or not server.get("ready"):
        return None
    return (server.get("state") or {}).get("pid")
