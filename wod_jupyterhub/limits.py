"""A seat's fair share as data: memory, CPU and processes, and the control-group writes that enforce them."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

#: the CFS period the CPU quota is a share of (the kernel's default, 100 ms)
CPU_PERIOD_US = 100_000
# Below ~1 ms of quota per period the kernel refuses the write (and nothing would run anyway).
CPU_QUOTA_MIN_US = 1_000

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.I)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}

#: wod.yml's ``limits:`` keys → Limits fields
META_KEYS = {"memory": "memory", "mem": "memory", "cpu": "cpu", "processes": "pids", "pids": "pids"}


def parse_size(value) -> int:
    """``"300M"`` → 314572800; ``512K``, ``2G``, ``1.5G`` and a plain number of bytes; ValueError with a sentence otherwise.

    The same spelling JupyterHub's ``mem_limit`` takes (K, M, G, T are powers of 1024).
    """
    if isinstance(value, bool):
        raise ValueError(f"a size is a number of bytes or a text like 512M or 2G, not {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"a size must be more than 0 bytes, not {value!r}")
        return int(value)
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"a size is a number of bytes or a text like 512M or 2G, not {value!r}")
    size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size <= 0:
        raise ValueError(f"a size must be more than 0 bytes, not {value!r}")
    return size


def format_size(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit] and n % (_UNITS[unit] // 16 or 1) == 0:
            return f"{n / _UNITS[unit]:g}{unit}"
    return f"{n}B"


@dataclass(frozen=True)
class Limits:
    """What one seat may use; None means unlimited."""

    memory: int | None = None  # bytes
    cpu: float | None = None  # cores
    pids: int | None = None  # processes and threads

    def __post_init__(self):
        if self.memory is not None and (isinstance(self.memory, bool) or self.memory < 4 * 1024**2):
            raise ValueError(f"a memory limit under 4M cannot run a server, not {self.memory!r} bytes")
        if self.cpu is not None and not 0.01 <= self.cpu <= 1024:
            raise ValueError(f"a CPU limit is a number of cores between 0.01 and 1024, not {self.cpu!r}")
        if self.pids is not None and (isinstance(self.pids, bool) or self.pids < 8):
            raise ValueError(f"a process limit under 8 cannot run a server and a kernel, not {self.pids!r}")

    def over(self, other: "Limits") -> "Limits":
        """These limits where set, ``other``'s elsewhere (a workshop's over the hub's defaults)."""
        return replace(
            other,
            **{k: v for k, v in (("memory", self.memory), ("cpu", self.cpu), ("pids", self.pids)) if v is not None},
        )

    def to_json(self) -> dict:
        """The limits as JSON (None where unlimited)."""
        return {"memory": self.memory, "cpu": self.cpu, "pids": self.pids}

    def describe(self) -> str:
        """The limits in one line for a log (``memory 300 MB, cpu 1.0, processes 64``)."""
        cpu = self.cpu if self.cpu is not None else "unlimited"
        pids = self.pids if self.pids is not None else "unlimited"
        return f"memory {format_size(self.memory)}, cpu {cpu}, processes {pids}"


def limits_from_meta(value) -> tuple[Limits, list[str]]:
    """A workshop's ``limits:`` mapping (``memory: 1G``, ``cpu: 1.5``, ``processes: 256``) and the problems found.

    A wrong entry is reported and left out, never raised: one typo must not
    hide the workshop (the catalog's rule).
    """
    if value is None:
        return Limits(), []
    if not isinstance(value, dict):
        return Limits(), [f"limits must be a mapping such as {{memory: 1G, cpu: 1, processes: 256}}, not {value!r}."]
    fields: dict = {}
    problems = []
    for key, raw in value.items():
        name = META_KEYS.get(str(key).lower())
        if name is None:
            problems.append(f"limits.{key} is not known; use memory, cpu or processes.")
            continue
        try:
            if name == "memory":
                parsed = parse_size(raw)
            elif name == "cpu":
                if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                    raise ValueError(f"a CPU limit is a number of cores, not {raw!r}")
                parsed = float(raw)
            else:
                if isinstance(raw, bool) or not isinstance(raw, int):
                    raise ValueError(f"a process limit is a whole number, not {raw!r}")
                parsed = raw
            Limits(**{name: parsed})  # the range checks
        except ValueError as e:
            problems.append(f"limits.{key}: {e}.")
            continue
        fields[name] = parsed
    return Limits(**fields), problems


# ---------------------------------------------------------------- the writes

def cpu_quota(cores: float | None, period: int = CPU_PERIOD_US) -> int | None:
    """Microseconds of CPU per ``period`` for ``cores`` (None: unlimited)."""
    if cores is None:
        return None
    return max(CPU_QUOTA_MIN_US, int(round(cores * period)))


def v1_writes(limits: Limits, memsw: bool = True, period: int = CPU_PERIOD_US) -> list[tuple[str, str, str]]:
    """(controller, file, value) in the order cgroup v1 accepts them.

    ``memory.memsw.limit_in_bytes`` (memory + swap) may never be below
    ``memory.limit_in_bytes``: it is opened first, then both are set, so that
    swap cannot lift the memory limit. Unlimited is ``-1`` (``max`` for pids).
    """
    writes = []
    mem = str(limits.memory) if limits.memory is not None else "-1"
    if memsw:
        writes.append(("memory", "memory.memsw.limit_in_bytes", "-1"))
    writes.append(("memory", "memory.limit_in_bytes", mem))
    if memsw and limits.memory is not None:
        writes.append(("memory", "memory.memsw.limit_in_bytes", mem))
    quota = cpu_quota(limits.cpu, period)
    writes.append(("cpu", "cpu.cfs_period_us", str(period)))
    writes.append(("cpu", "cpu.cfs_quota_us", str(quota) if quota is not None else "-1"))
    writes.append(("pids", "pids.max", str(limits.pids) if limits.pids is not None else "max"))
    return writes


def v2_writes(limits: Limits, period: int = CPU_PERIOD_US) -> list[tuple[str, str, str]]:
    """(controller, file, value) for a cgroup v2 group; swap is closed so the memory limit holds."""
    quota = cpu_quota(limits.cpu, period)
    mem = str(limits.memory) if limits.memory is not None else "max"
    return [
        ("memory", "memory.max", mem),
        ("memory", "memory.swap.max", "0" if limits.memory is not None else "max"),
        ("cpu", "cpu.max", f"{quota if quota is not None else 'max'} {period}"),
        ("pids", "pids.max", str(limits.pids) if limits.pids is not None else "max"),
    ]


def parent_weight_writes(seats: int, version: str) -> list[tuple[str, str, str]]:
    """The CPU weight of the group holding every seat: as much as ``seats`` processes of the host's root group.

    Nested under one parent, all seats together would weigh one process
    against every process outside (the hub, the proxy, anything else): under
    load the whole class would share one process's CPU. Weighing the parent
    like the seats it holds keeps each seat where it would be ungrouped,
    while the seats' own equal weights still split that fairly between them.
    """
    if version == "v2":
        # cpu.weight: 1..10000, 100 for a group of its own
        return [("cpu", "cpu.weight", str(max(1, min(10_000, 100 * seats))))]
    # cpu.shares: 2..262144, 1024 for one process of the root group
    return [("cpu", "cpu.shares", str(max(2, min(262_144, 1024 * seats))))]
