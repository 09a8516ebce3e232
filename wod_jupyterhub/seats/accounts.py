"""Linux accounts for many seats at once: the entries of ``/etc/passwd``, ``group``, ``shadow`` and ``gshadow`` in one locked batch."""

import contextlib
import ctypes
import ctypes.util
import datetime
import os
import subprocess
import time
from dataclasses import dataclass

from ..leases import pid_alive

ETC = "/etc"
FILES = ("passwd", "group", "shadow", "gshadow")


class AccountsError(Exception):
    """The account files are locked, or an entry would clash; nothing was written."""


@dataclass(frozen=True)
class Account:
    """One Linux account of a seat: the entries it gets in ``/etc/passwd`` and ``/etc/group``."""
    name: str
    uid: int
    gid: int
    home: str
    shell: str = "/bin/bash"


def _read(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def _index(lines: list[str]) -> tuple[dict[str, list[str]], dict[int, str]]:
    """name → fields, id → name, for a passwd- or group-style file."""
    names, ids = {}, {}
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] and not fields[0].startswith(("+", "-", "#")):
            names[fields[0]] = fields
            if fields[2].isdigit():
                ids.setdefault(int(fields[2]), fields[0])
    return names, ids


def plan(accounts: list[Account], etc: str = ETC) -> tuple[list[Account], list[str]]:
    """(accounts to add, problems): an existing account with the expected uid is kept; any clash is a problem."""
    users, uids = _index(_read(os.path.join(etc, "passwd")))
    groups, gids = _index(_read(os.path.join(etc, "group")))
    new, problems = [], []
    for a in accounts:
        have = users.get(a.name)
        if have is not None:
            if have[2] != str(a.uid):
                problems.append(f"{a.name} exists with uid {have[2]}, expected {a.uid}")
            continue
        if a.uid in uids:
            problems.append(f"uid {a.uid} for {a.name} is taken by {uids[a.uid]}")
            continue
        group = groups.get(a.name)
        if group is not None and group[2] != str(a.gid):
            problems.append(f"group {a.name} exists with gid {group[2]}, expected {a.gid}")
            continue
        if group is None and a.gid in gids:
            problems.append(f"gid {a.gid} for {a.name} is taken by group {gids[a.gid]}")
            continue
        new.append(a)
    return new, problems


# ---------------------------------------------------------------------- locking


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _lock_file(path: str, timeout: float) -> str:
    """shadow-utils' lock: a file holding our pid, hard-linked to ``<path>.lock``; a dead holder's lock is broken."""
    lock = path + ".lock"
    mine = f"{path}.{os.getpid()}"
    with open(mine, "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                os.link(mine, lock)
                return lock
            except FileExistsError:
                try:
                    holder = int(open(lock).read().strip() or 0)
                except (OSError, ValueError):
                    holder = 0
                if holder and not pid_alive(holder):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(lock)
                    continue
            if time.monotonic() > deadline:
                raise AccountsError(f"{lock} is held by another program (useradd?); try again")
            time.sleep(0.05)
    finally:
        os.unlink(mine)


@contextlib.contextmanager
def locked(etc: str = ETC, timeout: float = 15):
    """Hold the account files' locks (glibc's, then shadow-utils' per file) for one batch."""
    libc = _libc() if etc == ETC else None
    if libc is not None and libc.lckpwdf() != 0:
        raise AccountsError(f"cannot lock the account files (lckpwdf: {os.strerror(ctypes.get_errno())}); try again")
    held = []
    try:
        for name in FILES:
            path = os.path.join(etc, name)
            if os.path.exists(path):
                held.append(_lock_file(path, timeout))
        yield
    finally:
        for lock in reversed(held):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
        if libc is not None:
            libc.ulckpwdf()


def _replace(path: str, lines: list[str]) -> None:
    """Write ``path`` whole as the shadow tools do: backup ``path-``, write ``path+``, fsync, rename."""
    st = os.stat(path)
    with open(path, "rb") as src, open(path + "-", "wb") as backup:
        backup.write(src.read())
    os.chmod(path + "-", st.st_mode & 0o7777)
    os.chown(path + "-", st.st_uid, st.st_gid)
    tmp = path + "+"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, st.st_mode & 0o7777)
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
        os.write(fd, ("\n".join(lines) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def add(accounts: list[Account], etc: str = ETC) -> int:
    """Add ``accounts`` (those not there yet) in one locked batch; return how many were added.

    Raises AccountsError, having written nothing, when an entry would clash.
    """
    with locked(etc):
        new, problems = plan(accounts, etc)  # again under the lock: what we write is what we checked
        if problems:
            raise AccountsError("; ".join(problems[:10]) + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""))
        if not new:
            return 0
        groups, _ = _index(_read(os.path.join(etc, "group")))
        days = (datetime.date.today() - datetime.date(1970, 1, 1)).days
        fresh_groups = [a for a in new if a.name not in groups]
        additions = {
            "passwd": [f"{a.name}:x:{a.uid}:{a.gid}::{a.home}:{a.shell}" for a in new],
            "shadow": [f"{a.name}:!:{days}:0:99999:7:::" for a in new],
            "group": [f"{a.name}:x:{a.gid}:" for a in fresh_groups],
            "gshadow": [f"{a.name}:!::" for a in fresh_groups],
        }
        for name in FILES:
            path = os.path.join(etc, name)
            if additions[name] and os.path.exists(path):
                _replace(path, _read(path) + additions[name])
    _flush_caches()
    return len(new)


def remove(names: set[str], etc: str = ETC) -> int:
    """Remove the accounts (and their own groups) named ``names`` in one locked batch; return how many."""
    with locked(etc):
        removed = 0
        for name in FILES:
            path = os.path.join(etc, name)
            if not os.path.exists(path):
                continue
            lines = _read(path)
            kept = [line for line in lines if line.split(":", 1)[0] not in names]
            if len(kept) != len(lines):
                if name == "passwd":
                    removed = len(lines) - len(kept)
                _replace(path, kept)
    _flush_caches()
    return removed


def _flush_caches() -> None:
    # nscd, when it runs, would answer from its cache for a while.
    if os.path.exists("/usr/sbin/nscd") and os.path.exists("/var/run/nscd/socket"):
        for db in ("passwd", "group"):
            subprocess.run(["/usr/sbin/nscd", "-i", db], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
