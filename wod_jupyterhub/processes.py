"""Ending what a student left running on this machine (their processes), when a seat is wiped.

Today a scan of ``/proc`` by uid; a later change moves this to the seat's
cgroup. This module is core: it imports nothing from the hub process.
"""

import os
import signal


def kill_uid_processes(uid: int) -> int:
    """SIGKILL every process running as ``uid`` (a student's leftovers); return how many."""
    killed = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            os.kill(int(entry.name), signal.SIGKILL)
                            killed += 1
                        break
        except (OSError, ValueError):
            continue
    return killed
