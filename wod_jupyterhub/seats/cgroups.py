"""One control group per seat: the hub puts a student's server in it, limited; a CLEANUP kills all of it."""

from __future__ import annotations

import errno
import functools
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..limits import Limits, parent_weight_writes, v1_writes, v2_writes

#: controller → what it enforces, for the one warning an admin reads
WHAT = {
    "memory": "memory (mem_limit)",
    "cpu": "CPU (cpu_limit)",
    "pids": "processes (pids_limit)",
    "freezer": "freezing a seat while it is killed",
}
V1_CONTROLLERS = ("memory", "cpu", "pids", "freezer")
V2_CONTROLLERS = ("memory", "cpu", "pids")


def _write(path: Path, value: str) -> None:
    # One write() per value: control files take a value per write call.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _reason(e: OSError) -> str:
    return f"{e.strerror or e} ({e.filename})" if e.filename else str(e.strerror or e)


@dataclass
class Hierarchy:
    """What the host lets this process do with control groups, under one parent group (``wod``)."""

    root: Path
    parent: str
    version: str | None = None  # "v1", "v2" or None
    #: controller → the parent group's folder, for each controller this process may use
    dirs: dict = field(default_factory=dict)
    #: controller → why it cannot be used
    missing: dict = field(default_factory=dict)
    #: v1 has memory.memsw (memory + swap) to close swap with
    memsw: bool = False
    #: v2 has cgroup.kill (Linux 5.14)
    kill_file: bool = False

    @property
    def available(self) -> bool:
        """Whether any controller can be used here (else servers run without per-seat limits)."""
        return bool(self.dirs)

    def enforces(self, controller: str) -> bool:
        """Whether ``controller`` (``memory``, ``cpu``, ``pids`` …) is usable here."""
        return controller in self.dirs

    def warning(self) -> str | None:
        """One sentence naming what is not enforced and why, or None when everything is."""
        if not self.missing:
            return None
        parts = [f"{WHAT[c]}: {why}" for c, why in self.missing.items()]
        where = f"{self.version} at {self.root}" if self.version else f"none found at {self.root}"
        return (
            f"Control groups ({where}): not enforced per seat: " + "; ".join(parts) + ". "
            "Seats are not limited there: one student can use what the others need."
            + (" Killing a seat falls back to killing its uid's processes." if "freezer" in self.missing and self.version != "v2" else "")
        )

    def weigh(self, seats: int) -> str | None:
        """Give the parent group the CPU weight of ``seats`` processes (see :func:`parent_weight_writes`); the error, if any."""
        for controller, name, value in parent_weight_writes(seats, self.version):
            if controller in self.dirs:
                try:
                    _write(self.dirs[controller] / name, value)
                except OSError as e:
                    return f"{name}: {_reason(e)}"
        return None

    def seat(self, name: str) -> "SeatGroup":
        """The group of the seat named ``name`` (``student<N>``) under the parent; nothing is made yet."""
        return SeatGroup(self, name)

    def clear(self) -> int:
        """Kill every seat under the parent group, remove their groups and the parent's; how many processes were killed.

        For tests and benches, and for an admin retiring a backend.
        """
        killed = 0
        parents = sorted(set(self.dirs.values()))
        for d in parents:
            for child in sorted(d.iterdir()) if d.is_dir() else ():
                if child.is_dir():
                    killed += self.seat(child.name).end()
        for d in parents:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
        return killed

    def to_json(self) -> dict:
        """What the service reports: the version, the root, the controllers enforced and why the others are not."""
        return {"version": self.version, "root": str(self.root), "enforced": sorted(c for c in self.dirs if c in WHAT), "missing": dict(self.missing)}


def detect(root: str | os.PathLike = "/sys/fs/cgroup", parent: str = "wod") -> Hierarchy:
    """What ``root`` offers: cgroup v2 when it is a unified mount, else v1 controllers mounted under it.

    The parent group is created here (so "available" means "this process
    could make its groups"), and on v2 the controllers are enabled for its
    children. Never raises: every failure becomes a reason in ``missing``.
    """
    h = Hierarchy(Path(root), parent.strip("/"))
    if not h.parent or ".." in h.parent.split("/"):
        raise ValueError(f"the cgroup parent must be a relative group name such as 'wod', not {parent!r}")
    if (h.root / "cgroup.controllers").is_file():
        _detect_v2(h)
    elif any((h.root / c / "cgroup.procs").is_file() for c in V1_CONTROLLERS):
        _detect_v1(h)
    else:
        for c in V1_CONTROLLERS:
            h.missing[c] = f"no control groups are mounted at {h.root}"
    return h


@functools.lru_cache(maxsize=8)
def shared(root: str, parent: str) -> Hierarchy:
    """One detection per process and (root, parent): the hub and the service ask at every seat."""
    return detect(root, parent)


def for_wod(wod) -> Hierarchy | None:
    """The hierarchy ``c.Wod`` names (``cgroup_root``, ``cgroup_parent``), or None when ``c.Wod.cgroups`` is off."""
    return shared(wod.cgroup_root, wod.cgroup_parent) if wod.cgroups else None


def end_seat(wod, n: int, timeout: float = 15.0) -> dict:
    """Kill every process of seat ``n`` through its group and remove the group (blocking).

    ``{"cgroup_killed": k}``, or ``{}`` when the seat has no usable group
    (then only the uid-wide kill of the caller ends its processes).
    """
    # Only the hub makes groups: a seat whose group was never made has nothing to kill (and nothing is created here).
    if not wod.cgroups or not _made(wod.cgroup_root, wod.cgroup_parent, f"student{n}"):
        return {}
    h = for_wod(wod)
    if not h.available:
        return {}
    return {"cgroup_killed": h.seat(f"student{n}").end(timeout)}


def seat_resources(wod, n: int) -> dict | None:
    """What seat ``n`` uses now (memory in bytes, now and at its peak; processes), or None without a group."""
    if not wod.cgroups or not _made(wod.cgroup_root, wod.cgroup_parent, f"student{n}"):
        return None
    h = for_wod(wod)
    return h.seat(f"student{n}").usage() if h.available else None


def seat_procs_files(wod, n: int) -> list[str]:
    """The ``cgroup.procs`` files a process writes to, to join seat ``n``'s group; none when the hub made no group."""
    if not wod.cgroups or not _made(wod.cgroup_root, wod.cgroup_parent, f"student{n}"):
        return []
    h = for_wod(wod)
    return h.seat(f"student{n}").procs_files() if h.available else []


def _made(root: str, parent: str, name: str) -> bool:
    """Whether the hub made seat ``name``'s group (under any controller), without creating anything."""
    base = Path(root)
    return (base / parent / name).is_dir() or any((base / c / parent / name).is_dir() for c in V1_CONTROLLERS)


def _detect_v1(h: Hierarchy) -> None:
    h.version = "v1"
    for c in V1_CONTROLLERS:
        top = h.root / c
        if not (top / "cgroup.procs").is_file():
            h.missing[c] = f"the {c} controller is not mounted at {top}"
            continue
        group = top / h.parent
        try:
            group.mkdir(parents=True, exist_ok=True)
            # Not writable when this process is not root (or the mount is read-only).
            if not os.access(group / "cgroup.procs", os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(group / "cgroup.procs"))
        except OSError as e:
            h.missing[c] = f"cannot create or write {group}: {_reason(e)}"
            continue
        h.dirs[c] = group
    h.memsw = "memory" in h.dirs and (h.dirs["memory"] / "memory.memsw.limit_in_bytes").exists()


def _detect_v2(h: Hierarchy) -> None:
    h.version = "v2"
    group = h.root / h.parent
    try:
        offered = set(_read(h.root / "cgroup.controllers").split())
        group.mkdir(parents=True, exist_ok=True)
        if not os.access(group / "cgroup.procs", os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(group / "cgroup.procs"))
    except OSError as e:
        for c in V2_CONTROLLERS:
            h.missing[c] = f"cannot create or write {group}: {_reason(e)}"
        return
    h.kill_file = (group / "cgroup.kill").exists()
    # The group itself serves kill and membership even without a controller.
    h.dirs["group"] = group
    for c in V2_CONTROLLERS:
        if c not in offered:
            h.missing[c] = f"the {c} controller is not offered at {h.root} (cgroup.controllers: {' '.join(sorted(offered)) or 'none'})"
            continue
        try:
            # Enabled for the parent's children at each level (root → wod → seat).
            for level in (h.root, group):
                if c not in _read(level / "cgroup.subtree_control").split():
                    _write(level / "cgroup.subtree_control", f"+{c}")
        except OSError as e:
            h.missing[c] = f"cannot enable {c} for {group}'s children: {_reason(e)}"
            continue
        h.dirs[c] = group


class SeatGroup:
    """The control group(s) of one seat."""

    def __init__(self, hierarchy: Hierarchy, name: str):
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"a seat's group is a plain name such as student3, not {name!r}")
        self.h = hierarchy
        self.name = name

    @property
    def dirs(self) -> list[Path]:
        """The seat's folders, one per mounted hierarchy (v2: one)."""
        return sorted({d / self.name for d in self.h.dirs.values()})

    def _dir(self, controller: str) -> Path | None:
        d = self.h.dirs.get(controller)
        return d / self.name if d else None

    def exists(self) -> bool:
        """Whether the seat's group exists under any controller."""
        return any(d.is_dir() for d in self.dirs)

    def create(self, limits: Limits) -> dict:
        """Make the group (or keep it) and set ``limits``; returns what holds and what failed."""
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)  # the parent too, should someone have removed it
        writes = v2_writes(limits) if self.h.version == "v2" else v1_writes(limits, memsw=self.h.memsw)
        failed = {}
        for controller, name, value in writes:
            d = self._dir(controller)
            if d is None:
                continue
            try:
                _write(d / name, value)
            except OSError as e:
                # e.g. a memory limit below what the group already uses (EBUSY)
                failed[name] = f"{controller}: {_reason(e)}"
        broken = {why.split(":")[0] for why in failed.values()}
        enforced = {c for c, _, _ in writes if self._dir(c) is not None} - broken
        return {"enforced": sorted(enforced), "failed": failed}

    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes its pid to, to join the seat (see :func:`join`)."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> set[int]:
        """The processes in the seat's group now."""
        found = set()
        for d in self.dirs:
            try:
                found.update(int(p) for p in _read(d / "cgroup.procs").split())
            except FileNotFoundError:
                continue
        return found

    def live_pids(self) -> set[int]:
        """Members that are not zombies (a zombie holds no memory and runs nothing; PID 1 may reap it late)."""
        return {p for p in self.pids() if _state(p) not in ("Z", "X", None)}

    def kill(self, timeout: float = 15.0) -> int:
        """SIGKILL every process of the seat, until none is left; returns how many were killed.

        v2 writes ``cgroup.kill`` (the kernel kills the whole group at once).
        v1 freezes the group first, so no member can fork while the members are
        listed and killed; then thaws it so the SIGKILLs land; and loops
        until the group is empty. Raises TimeoutError naming the survivors.
        """
        killed: set[int] = set()
        deadline = time.monotonic() + timeout
        while True:
            live = self.live_pids()
            if not live:
                return len(killed)
            if time.monotonic() > deadline:
                raise TimeoutError(f"processes {sorted(live)} of {self.name} survived {timeout:g} s of kills")
            if self.h.version == "v2" and self.h.kill_file:
                killed |= live
                _write(self._dir("group") / "cgroup.kill", "1")
            else:
                frozen = self._freeze()
                try:
                    for pid in self.pids():
                        try:
                            os.kill(pid, signal.SIGKILL)
                            killed.add(pid)
                        except ProcessLookupError:
                            pass
                finally:
                    if frozen:
                        self._thaw()
            time.sleep(0.02)

    def _freezer(self) -> tuple[Path, str, str, str] | None:
        """(file, frozen value, thawed value, the value read back once frozen)."""
        if self.h.version == "v2":
            d = self._dir("group")
            return (d / "cgroup.freeze", "1", "0", "1") if d is not None and (d / "cgroup.freeze").exists() else None
        d = self._dir("freezer")
        return (d / "freezer.state", "FROZEN", "THAWED", "FROZEN") if d is not None and d.is_dir() else None

    def _freeze(self) -> bool:
        f = self._freezer()
        if f is None:
            return False
        path, frozen, _thawed, done = f
        _write(path, frozen)
        # v1 reads FREEZING until every member stopped; one in D state may hold it a while: kill anyway.
        if self.h.version == "v1":
            end = time.monotonic() + 2
            while _read(path).strip() != done and time.monotonic() < end:
                time.sleep(0.005)
        return True

    def _thaw(self) -> None:
        path, _frozen, thawed, _done = self._freezer()
        _write(path, thawed)

    def remove(self, timeout: float = 5.0) -> None:
        """Remove the seat's (empty) groups; a group still busy with zombies is retried until ``timeout``."""
        deadline = time.monotonic() + timeout
        for d in self.dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def end(self, timeout: float = 15.0) -> int:
        """Kill everything in the seat and remove its groups: what a CLEANUP, RESET or PURGE does."""
        if not self.exists():
            return 0
        killed = self.kill(timeout)
        self.remove()
        return killed

    def usage(self) -> dict:
        """Memory (bytes, now and peak) and processes of the seat, read from its groups."""
        out = {}
        d = self._dir("memory")
        if d is not None:
            files = (("memory", "memory.current"), ("memory_peak", "memory.peak")) if self.h.version == "v2" else (
                ("memory", "memory.usage_in_bytes"), ("memory_peak", "memory.max_usage_in_bytes"))
            for key, name in files:
                try:
                    out[key] = int(_read(d / name))
                except (OSError, ValueError):
                    pass
        d = self._dir("pids")
        if d is not None:
            try:
                out["pids"] = int(_read(d / "pids.current"))
            except (OSError, ValueError):
                pass
        return out


def join(procs_files: list[str]) -> None:
    """Put the calling process in a seat's groups. Called in the child between fork and exec (as root).

    The server joins before it runs anything, so nothing it ever forks starts
    outside the seat (moving its pid from the hub after the start would race
    with its first children). Raises OSError; the caller decides.
    """
    pid = str(os.getpid()).encode()
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The state follows the command name, which may hold spaces or parentheses.
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3].decode() or None
