"""What a student's uid leaves outside its home, found and removed when the seat changes hands.

A participant can leave more than files in their home: files in the shared
temporary folders (``/tmp``, ``/var/tmp``, ``/dev/shm``, POSIX message
queues), System V IPC objects (shared memory, semaphores, message queues),
a crontab or ``at`` jobs (which would run as ``student<N>`` during the next
participant's session), a mailbox. :func:`remove_leftovers` removes all of
them for one uid; its processes are :mod:`processes`'s job, done before this.

Nothing here raises out of a removal: a neighbour who races names in a
folder they can write (``Directory not empty``, a name swapped away) fails
that one entry, which is listed with its error in ``problems``, and the
rest goes on. A cleanup that raised would leave the seat ``cleaning``.

Removal is safe against a student who shaped these places: the temporary
folders are walked by descriptor without following any link, a folder is
entered only when the uid could have written into it (its own, or writable
by all or by its group; below ``/tmp`` itself only when root owns it or it
is sticky, since elsewhere another student may rename anything under us),
and what belongs to the uid is erased by
:func:`fdtrees.erase_tree` relative to that descriptor. So is any setuid
file of root's found there: a student may move a seat's compiled-script
loader (root's, ``4711``) out of their home into a temporary folder, and
no such file belongs in one.

Core module: imports nothing of the hub or the service.
"""

import ctypes
import ctypes.util
import logging
import os
import stat

from .fdtrees import erase_tree

log = logging.getLogger("wod.leftovers")

#: where a process may leave files outside its home without being given a place
TEMP_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue", "/run/lock")
#: crontab and at spools (Debian, then Red Hat layouts); files named or owned by the student go
SPOOLS = ("/var/spool/cron/crontabs", "/var/spool/cron/atjobs", "/var/spool/cron/atspool", "/var/spool/cron", "/var/spool/at")
#: mailboxes (``/var/spool/mail`` is often a link to ``/var/mail``: opened without following, it is skipped then)
MAIL_SPOOLS = ("/var/mail", "/var/spool/mail")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _writable_by(st: os.stat_result, uid: int, gid: int) -> bool:
    if st.st_uid == uid:
        return True
    return bool(st.st_mode & stat.S_IWOTH) or (st.st_gid == gid and bool(st.st_mode & stat.S_IWGRP))


def _problem(problems: list | None, where: str, name: str, error: OSError) -> None:
    log.warning("could not remove %s/%s: %s", where, name, error)
    if problems is not None:
        problems.append({"path": f"{where}/{name}", "errno": error.errno, "error": error.strerror or str(error)})


def _setuid_root(st: os.stat_result) -> bool:
    return st.st_uid == 0 and stat.S_ISREG(st.st_mode) and bool(st.st_mode & stat.S_ISUID)


def _trusted(st: os.stat_result) -> bool:
    """Whether names in a folder stay as we see them: only root may rename there, or the folder is sticky."""
    return st.st_uid == 0 or bool(st.st_mode & stat.S_ISVTX)


def _stats(fd: int):
    """(name, lstat) of each entry of the open folder ``fd`` that is still there when looked at."""
    with os.scandir(fd) as it:
        names = [e.name for e in it]
    for name in names:
        try:
            yield name, os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue


def _erase_at(dir_fd: int, name: str) -> None:
    """Erase ``name`` (file, link or tree) in the open folder ``dir_fd``, following no link."""
    # /proc/self/fd/N names the folder itself (not a path someone could swap above it).
    erase_tree(os.path.join(f"/proc/self/fd/{dir_fd}", name))


def remove_temp_files(uid: int, gid: int | None = None, folders=TEMP_FOLDERS, problems: list | None = None) -> int:
    """Remove every file, link and folder that ``uid`` owns, and every setuid file of root's, in the shared temporary ``folders``; return how many.

    A folder of another owner is searched only when ``uid`` could have
    written into it (``/tmp`` itself, a world-writable folder inside it),
    so the walk stays within what a student can reach; the student's own
    folders go whole. A folder another student owns and anyone may write
    (not sticky) is searched for the uid's own entries but not below: names
    there can be swapped under the walk. An entry that cannot be removed is
    appended to ``problems`` (path, errno, error) and the walk goes on.
    """
    gid = uid if gid is None else gid
    removed = 0
    for folder in folders:
        try:
            top = os.open(folder, _DIR_FLAGS)
        except OSError:
            continue  # not on this system (no /dev/mqueue mounted, say)
        stack = [(top, folder, True)]
        try:
            while stack:
                fd, where, descend = stack.pop()
                try:
                    for name, st in _stats(fd):
                        try:
                            if st.st_uid == uid or _setuid_root(st):
                                _erase_at(fd, name)
                                removed += 1
                            elif descend and stat.S_ISDIR(st.st_mode) and _writable_by(st, uid, gid):
                                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                                stack.append((sub, f"{where}/{name}", _trusted(os.fstat(sub))))
                        except FileNotFoundError:
                            pass
                        except OSError as e:
                            _problem(problems, where, name, e)
                except OSError as e:  # the folder itself could not be listed
                    _problem(problems, where, ".", e)
                finally:
                    os.close(fd)
        finally:
            for fd, _, _ in stack:
                os.close(fd)
    return removed


# -- System V IPC ---------------------------------------------------------------

_IPC_RMID = 0
_IPC_TABLES = (("shm", "shmid"), ("sem", "semid"), ("msg", "msqid"))
_libc = None


def _ipc_remove(kind: str, ident: int) -> bool:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if kind == "shm":
        rc = _libc.shmctl(ident, _IPC_RMID, None)
    elif kind == "sem":
        rc = _libc.semctl(ident, 0, _IPC_RMID)
    else:
        rc = _libc.msgctl(ident, _IPC_RMID, None)
    return rc == 0


def ipc_objects(uid: int) -> list[tuple[str, int]]:
    """(kind, id) of the System V IPC objects that ``uid`` owns or created (``/proc/sysvipc``)."""
    found = []
    for kind, id_column in _IPC_TABLES:
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                header = f.readline().split()
                rows = [line.split() for line in f]
        except OSError:
            continue
        try:
            at_id, at_uid, at_cuid = header.index(id_column), header.index("uid"), header.index("cuid")
        except ValueError:
            log.warning("/proc/sysvipc/%s has no %s/uid/cuid columns; its objects are not checked", kind, id_column)
            continue
        for row in rows:
            try:
                if int(row[at_uid]) == uid or int(row[at_cuid]) == uid:
                    found.append((kind, int(row[at_id])))
            except (IndexError, ValueError):
                continue
    return found


def remove_ipc(uid: int) -> int:
    """Remove the System V shared memory, semaphores and message queues of ``uid``; return how many."""
    return sum(_ipc_remove(kind, ident) for kind, ident in ipc_objects(uid))


# -- cron and at ------------------------------------------------------------------


def remove_spooled_jobs(uid: int, name: str, spools=SPOOLS, problems: list | None = None) -> int:
    """Remove the files of ``uid`` (owned by it, or named ``name``) from the ``spools``: its crontab, ``at`` jobs, mailbox."""
    removed = 0
    for spool in spools:
        try:
            fd = os.open(spool, _DIR_FLAGS)
        except OSError:
            continue
        try:
            for entry, st in _stats(fd):
                if stat.S_ISDIR(st.st_mode):
                    continue
                if st.st_uid == uid or entry == name:
                    try:
                        os.unlink(entry, dir_fd=fd)
                        removed += 1
                    except FileNotFoundError:
                        pass
                    except OSError as e:
                        _problem(problems, spool, entry, e)
        except OSError as e:
            _problem(problems, spool, ".", e)
        finally:
            os.close(fd)
    return removed


def remove_leftovers(uid: int, gid: int, name: str, temp_folders=TEMP_FOLDERS, mail_spools=MAIL_SPOOLS) -> dict:
    """Everything of ``uid`` outside its home: temporary files, IPC objects, crontab, ``at`` jobs, mailbox.

    Run after its processes are gone (none can make more meanwhile);
    returns what was removed, for the operation's journal, with
    ``problems`` listing what could not be (it never raises for those).
    """
    problems: list = []
    return {
        "temp_files": remove_temp_files(uid, gid, temp_folders, problems),
        "ipc": remove_ipc(uid),
        "jobs": remove_spooled_jobs(uid, name, SPOOLS, problems),
        "mail": remove_spooled_jobs(uid, name, mail_spools, problems),
        "problems": problems,
    }
