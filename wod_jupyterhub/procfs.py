"""What ``/proc`` says of a process: the fields of its ``stat`` line (state, parent, session, CPU, start time)."""


def stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` from the third (the state) on; None when there is no such process.

    Field 2, the command, may hold spaces and parentheses: the fields are
    counted from its last ``)``. Field N of proc(5) is ``stat_fields(pid)[N - 3]``.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:  # gone, or never was
        return None
    return stat.rpartition(b")")[2].decode("ascii", "replace").split()


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, field 22); None if there is none.

    A pid and its start time name one process: a pid the kernel gave to
    another process since has another start time.
    """
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None
