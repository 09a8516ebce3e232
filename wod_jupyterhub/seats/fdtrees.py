"""Trees a student may have shaped: erase, hand over and measure them by descriptor, without recursion."""

import os
import stat
import uuid

#: how every folder a student may have shaped is opened: a link is never followed, a file is refused
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name, dir_fd=None) -> int:
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def _entries(fd: int) -> list[os.DirEntry]:
    # Listed whole before anything is changed in the folder (changing it while reading can skip names).
    with os.scandir(fd) as it:
        return list(it)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _writable(fd: int) -> None:
    try:
        os.chmod(fd, 0o700)  # a folder its owner made unwritable (root may write anyway)
    except OSError:
        pass


def _empty_folder(top_fd: int, fd: int) -> None:
    """Empty the folder ``fd``, below ``top_fd``: files go, sub-folders move up to ``top_fd`` to be emptied later."""
    _writable(fd)
    while True:
        entries = _entries(fd)
        if not entries:
            return
        for entry in entries:
            try:
                if _is_dir(entry):
                    os.rename(entry.name, f".erase-{uuid.uuid4().hex}", src_dir_fd=fd, dst_dir_fd=top_fd)
                else:
                    os.unlink(entry.name, dir_fd=fd)
            except FileNotFoundError:
                pass


def erase_tree(path: str) -> None:
    """Remove ``path`` and everything below it; never follows a symlink, any depth; a missing path is fine.

    The top's files go first; then each folder in the top is emptied from a
    descriptor opened below the top's (its files unlinked, its sub-folders
    renamed up into the top) and removed, until the top is empty. Depth
    never matters and at most two folders are open. ``path`` itself may be
    a symlink or a file: then only that name goes.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    top_fd = _open_dir(path)
    try:
        _writable(top_fd)
        while True:
            entries = _entries(top_fd)
            if not entries:
                break
            for entry in entries:
                name = entry.name
                if not _is_dir(entry):
                    try:
                        os.unlink(name, dir_fd=top_fd)
                    except FileNotFoundError:
                        pass
                    continue
                try:
                    fd = _open_dir(name, dir_fd=top_fd)
                except FileNotFoundError:
                    continue
                except OSError:
                    os.unlink(name, dir_fd=top_fd)  # not a folder any more (a link put in its place)
                    continue
                try:
                    _empty_folder(top_fd, fd)
                finally:
                    os.close(fd)
                try:
                    os.rmdir(name, dir_fd=top_fd)
                except FileNotFoundError:
                    pass
    finally:
        os.close(top_fd)
    os.rmdir(path)


class TreeChanged(OSError):
    """A folder was moved while the tree was walked (its student still had a process running)."""


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _names(fd: int) -> list[tuple[str, bool]]:
    """(name, is a folder) of each entry; names, not DirEntry objects, which stay tied to this descriptor."""
    return [(e.name, _is_dir(e)) for e in _entries(fd)]


def _walk(path: str, visit, leave) -> None:
    """Depth first below ``path`` with one folder open at a time: ``visit(fd, name)`` for each non-folder
    entry of the open folder ``fd``, ``leave(fd)`` for each folder once everything below it was seen
    (the top last).

    Going back up opens ``..`` and checks it is the folder it came from
    (device and inode), raising :class:`TreeChanged` otherwise: so depth
    costs no descriptors and no recursion, and a moved folder stops the
    walk instead of leading it elsewhere.
    """
    cur = _open_dir(path)
    frames = [[_names(cur), 0, _identity(cur)]]
    try:
        while True:
            frame = frames[-1]
            names = frame[0]
            descended = False
            while frame[1] < len(names):
                name, is_dir = names[frame[1]]
                frame[1] += 1
                if is_dir:
                    try:
                        child = _open_dir(name, dir_fd=cur)
                    except FileNotFoundError:
                        continue
                    except OSError:
                        visit(cur, name)  # no longer a folder (a link put in its place): the name itself
                        continue
                    os.close(cur)
                    cur = child
                    frames.append([_names(cur), 0, _identity(cur)])
                    descended = True
                    break
                visit(cur, name)
            if descended:
                continue
            frames.pop()
            leave(cur)
            if not frames:
                return
            parent = os.open("..", DIR_FLAGS, dir_fd=cur)
            os.close(cur)
            cur = parent
            if _identity(cur) != frames[-1][2]:
                raise TreeChanged(f"a folder under {path} was moved while it was walked")
    finally:
        os.close(cur)


def chown_tree(path: str, uid: int, gid: int) -> None:
    """Give ``path`` and everything below it to ``uid:gid``: bottom up, by descriptor, the top last.

    Files and links are changed by name relative to their open folder,
    never following a link; each folder through its own descriptor once
    all below it is done. Until the top is handed over the student owns no
    folder above one still being worked on, so no process of theirs could
    swap a sub-folder for a link in between (and ``..`` is checked anyway).
    """

    def visit(fd, name):
        try:
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            pass

    _walk(path, visit, lambda fd: os.fchown(fd, uid, gid))


def tree_size(path: str) -> int:
    """Bytes allocated to ``path`` and everything below it (links not followed, a hard link once); 0 if absent."""
    total = 0
    seen = set()

    def visit(fd, name):
        nonlocal total
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return
        if st.st_nlink > 1:
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512

    def leave(fd):
        nonlocal total
        total += os.fstat(fd).st_blocks * 512

    try:
        _walk(path, visit, leave)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    return total
