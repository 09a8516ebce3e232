"""A seat's own view of the machine: private temporary folders, its own IPC namespace, no setuid (but in a seat of compiled scripts)."""

from __future__ import annotations

import ctypes
import os
from dataclasses import asdict, dataclass

from ..limits import parse_size

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38

#: the folders every account may write into, each given a tmpfs of its own (``/run/lock`` where it exists)
PRIVATE_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
MQUEUE = "/dev/mqueue"

# The C library this process already runs with (finding it by name runs ldconfig at each import).
_libc = ctypes.CDLL(None, use_errno=True)
# Resolved now, in the parent: a lookup after the fork could take the loader's lock.
_unshare, _mount, _prctl = _libc.unshare, _libc.mount, _libc.prctl


@dataclass(frozen=True)
class Mount:
    """One ``mount(2)`` call: ``source`` on ``target`` of ``fstype`` with ``flags`` and ``data``."""

    source: str
    target: str
    fstype: str | None
    flags: int
    data: str | None = None
    #: a folder made (root's, 0755) when missing, before mounting
    make: bool = False
    #: a bind mount whose source is the folder as it was before any mount (opened first, bound from its descriptor)
    carry: bool = False


def tmpfs_options(size: str, inodes: int) -> str:
    """The tmpfs options of a private folder: ``size=<bytes>,nr_inodes=<n>,mode=1777``."""
    return f"size={parse_size(size)},nr_inodes={inodes},mode=1777"


def plan(
    size: str, inodes: int, nosuid_folders=(), folders=PRIVATE_FOLDERS, exists=os.path.isdir, allow_setuid_programs=False
) -> list[Mount]:
    """The mounts of a seat's namespace, in order.

    ``nosuid_folders``: folders students may write into (their homes'
    folder) bind-mounted ``nosuid`` onto themselves; with
    ``allow_setuid_programs`` bound as they are (still seen, though they
    may live under ``/tmp``). A private folder that does not exist on this
    machine is left out (``/run/lock`` on some).
    """
    mounts = [Mount("none", "/", None, MS_REC | MS_PRIVATE)]  # nothing propagates back to the machine
    options = tmpfs_options(size, inodes)
    mounts += [Mount("tmpfs", f, "tmpfs", MS_NOSUID | MS_NODEV, options) for f in folders if exists(f)]
    mounts.append(Mount("mqueue", MQUEUE, "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, make=True))
    for folder in nosuid_folders:
        # Bound from the folder as it was before the tmpfs mounts (it may live under /tmp).
        mounts.append(Mount(folder, folder, None, MS_BIND | MS_REC, carry=True))
        if not allow_setuid_programs:
            mounts.append(Mount(folder, folder, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV))
    return mounts


def build(
    size: str, inodes: int, students_root: str, *, allow_setuid_programs: bool, runtime_dir=None, uid=None, exists=os.path.isdir
) -> SeatNamespace:
    """A seat's namespace: the one place deciding whether its processes may run setuid programs.

    Without ``allow_setuid_programs`` (the default for a seat) the students'
    folder is ``nosuid`` and the server has no_new_privs; with it (a
    workshop with compiled scripts, whose setuid loaders must get root)
    neither. The private temporary folders are ``nosuid`` either way.
    """
    mounts = plan(size, inodes, nosuid_folders=[students_root], exists=exists, allow_setuid_programs=allow_setuid_programs)
    return SeatNamespace(mounts, runtime_dir=runtime_dir, uid=uid, no_new_privs=not allow_setuid_programs)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _bytes(value: str | None):
    return value.encode() if value is not None else None


def _ancestors(path: str) -> list:
    """(folder, its stat) of ``path`` and each folder above it, top first (``/`` left out)."""
    found = []
    while path not in ("/", ""):
        found.append((path, os.stat(path)))
        path = os.path.dirname(path)
    return found[::-1]


class SeatNamespace:
    """The namespaces a seat's server enters before it drops root; build it before the fork, ``enter()`` after."""

    def __init__(self, mounts: list[Mount], runtime_dir: str | None = None, uid: int | None = None, no_new_privs: bool = True):
        # Encoded now: the child only passes these to the C library.
        self.mounts = mounts
        self.no_new_privs = no_new_privs
        self._calls = [(_bytes(m.source), _bytes(m.target), _bytes(m.fstype), m.flags, _bytes(m.data)) for m in mounts]
        self._runtime_dir, self._uid = runtime_dir, uid

    def to_json(self) -> dict:
        """What :meth:`from_json` makes the same namespace of (for a process that becomes the seat elsewhere)."""
        return {"mounts": [asdict(m) for m in self.mounts], "runtime_dir": self._runtime_dir, "uid": self._uid,
                "no_new_privs": self.no_new_privs}

    @classmethod
    def from_json(cls, data: dict) -> SeatNamespace:
        """The namespace :meth:`to_json` described."""
        return cls([Mount(**m) for m in data["mounts"]], data["runtime_dir"], data["uid"], data["no_new_privs"])

    def enter(self) -> None:
        """Unshare, mount, make the runtime folder, forbid new privileges unless allowed (in the child, as root)."""
        _check(_unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare")
        # The carried folders as they are now: a tmpfs mounted on /tmp would hide one below it.
        carried = {i: os.open(m.source, os.O_PATH | os.O_DIRECTORY) for i, m in enumerate(self.mounts) if m.carry}
        # ... and the folders above them, remade with their owner and mode where a tmpfs hid them.
        above = {i: _ancestors(self.mounts[i].target) for i in carried}
        for i, (source, target, fstype, flags, data) in enumerate(self._calls):
            m = self.mounts[i]
            if m.make:
                os.makedirs(m.target, 0o755, exist_ok=True)
            if i in carried:
                for path, st in above[i]:
                    if not os.path.isdir(path):
                        os.mkdir(path)
                        os.chown(path, st.st_uid, st.st_gid)
                        os.chmod(path, st.st_mode & 0o7777)
                source = b"/proc/self/fd/%d" % carried[i]
            _check(_mount(source, target, fstype, flags, data), f"mount {m.target}")
        for fd in carried.values():
            os.close(fd)
        if self._runtime_dir is not None:
            # In the seat's fresh /tmp: the kernels' sockets live here, the uid's alone.
            os.mkdir(self._runtime_dir, 0o700)
            os.chown(self._runtime_dir, self._uid, self._uid)
        if self.no_new_privs:
            _check(_prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
