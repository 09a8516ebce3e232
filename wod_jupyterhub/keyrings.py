"""The kernel keyrings of a student's uid: a fresh session keyring per server, all of them cleared at the wipe.

Linux keeps a keyring per uid (``@u``) and a default session keyring per
uid (``@us``) for as long as the machine runs, not for as long as the
uid's processes: a key a participant adds there would still be there for
the seat's next participant. The wipe clears both, and the uid's persistent
keyring, as the uid itself (root cannot name another uid's keyrings).
Each server also joins a session keyring of its own at its start (its
``@s``, gone with its last process), rather than the hub's or the uid's.

Core module: imports nothing of the hub or the service.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import subprocess

SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(os.uname().machine)
KEYCTL_JOIN_SESSION_KEYRING, KEYCTL_CLEAR, KEYCTL_GET_PERSISTENT = 1, 7, 22
KEY_SPEC_PROCESS_KEYRING, KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING = -2, -4, -5

log = logging.getLogger("wod.keyrings")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syscall = _libc.syscall


def _keyctl(*args) -> int:
    if SYS_KEYCTL is None:
        return -1
    return _syscall(SYS_KEYCTL, *(ctypes.c_long(a) if isinstance(a, int) else a for a in args))


def join_new_session() -> None:
    """Make the calling process's session keyring a new, anonymous one (in a server's child, after setuid)."""
    _keyctl(KEYCTL_JOIN_SESSION_KEYRING, None)


def _clear_own() -> None:
    """Clear the calling uid's user, user-session and persistent keyrings (a missing one is nothing to clear)."""
    _keyctl(KEYCTL_CLEAR, KEY_SPEC_USER_KEYRING)
    _keyctl(KEYCTL_CLEAR, KEY_SPEC_USER_SESSION_KEYRING)
    persistent = _keyctl(KEYCTL_GET_PERSISTENT, -1, KEY_SPEC_PROCESS_KEYRING)
    if persistent > 0:
        _keyctl(KEYCTL_CLEAR, persistent)


def clear_keyrings(uid: int, gid: int) -> bool:
    """Clear the keyrings of ``uid`` as that uid (a child set to it); whether that ran (root only).

    Never raises: it runs while a seat is wiped, after the rest, and a
    failure here is logged and reported, not allowed to hide another.
    """
    if os.geteuid() != 0 or SYS_KEYCTL is None:
        return False

    def as_uid():
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        _clear_own()

    try:
        r = subprocess.run(
            ["/bin/true"], preexec_fn=as_uid, env={}, cwd="/", close_fds=True, check=False, timeout=30,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("could not clear the keyrings of uid %d: %s", uid, e)
        return False
    return r.returncode == 0
