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
