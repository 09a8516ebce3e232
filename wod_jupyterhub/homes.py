"""Homes: the life of a student's home ``<students_root>/student<N>``.

Provision a seat (:func:`provision`): build the home in a temporary folder
beside it and swap it in atomically (``renameat2``), so a failed render
never leaves a half-written home; the previous home is erased in the
background (:func:`drain` waits for it). Stage a free seat ahead
(:func:`stage`), erase a home (:func:`erase_home`), sweep what killed
stagers left (:func:`sweep_stages`).

Everything of seat N that is not its home (its stage, a home being built,
the previous one being erased) lives in the seat's side folder
``<students_root>/.student<N>`` (``0700``, the service's): one look at that
small folder finds all of it, whatever the number of seats beside it, and
no student can reach into it. Rendering is :mod:`.templating`,
walking and copying the workshop's tree :mod:`.trees`. This module is core:
it imports nothing from the hub process, and it needs no shared filesystem
with the hub (it can run in an init container).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import json
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from pathlib import Path

from . import compiled, errors
from .fdtrees import chown_tree, erase_tree
from .owners import pid_alive
from .templating import Renderer, default_renderer, is_templated
from .trees import DIR_MODE, copy_skel, executable, workshop_tree, write_tree

#: JupyterLab (jupyterlab_server.workspaces_handler.slugify) stores the
#: workspace named "default" -- the one ``/lab`` opens -- in
#: ``<jupyter_config_dir>/lab/workspaces/default-<sha256("default")[:4]>.jupyterlab-workspace``;
#: with HOME set to the student home and no JUPYTER_CONFIG_DIR, that is ``~/.jupyter/lab/workspaces``.
WORKSPACE_FILE = "default-" + hashlib.sha256(b"default").hexdigest()[:4] + ".jupyterlab-workspace"
WORKSPACE_DIR = Path(".jupyter") / "lab" / "workspaces"


def home_path(wod, student: int) -> Path:
    """``<students_root>/student<N>``.

    Refused for a student this backend does not serve (``Wod.check_student``)
    and when it resolves outside ``students_root``.
    """
    wod.check_student(student)
    root = Path(wod.students_root)
    home = root / f"student{student}"
    if os.path.lexists(home):
        root_real = os.path.realpath(root)
        real = os.path.realpath(home)
        if real == root_real or os.path.commonpath([real, root_real]) != root_real:
            raise errors.BadRequest(
                f"The home of student{student} resolves to {real}, outside the students folder {root}; refused.",
                code="unsafe_home",
            )
    return home


def _remove(path: str) -> None:
    """Remove a file, a symlink or a tree: by descriptor, at any depth, without following any symlink.

    A stage, or a stager's folder, in a side folder is first renamed to a ``trash-`` name of its own, then
    erased under it: an eraser works through a descriptor it opened, so without that, a stager publishing
    the folder (``staging-`` to ``staged-``) or a CREATE claiming it at the same moment would get it emptied
    behind its back. Whoever renames first has it; the other finds it gone. Nothing else there is renamed
    by anyone but its maker.
    """
    side = os.path.dirname(path)
    in_side = is_side_name(os.path.basename(side))
    try:
        if in_side and os.path.basename(path).startswith((STAGED, STAGING)):
            claimed = _unique(side, TRASH)
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                return  # someone else's now, or gone
            path = claimed
        erase_tree(path)
    except OSError:
        # Only what lies in a side folder (or an earlier version's hidden leftover) may be removed by a
        # deferred erasure at the same time.
        if not (in_side or os.path.basename(path).startswith(".student")):
            raise


def _students_root(wod) -> Path:
    """The folder of the homes, made ``0711`` when missing: every student may pass through it to their
    home, none may list it (the names of the seats in use, of the stages)."""
    root = Path(wod.students_root)
    if not root.is_dir():
        root.mkdir(mode=0o711, parents=True, exist_ok=True)
        root.chmod(0o711)  # mkdir's mode is cut by the umask
    return root


_SIDE_NAME = re.compile(r"\.student\d+")


def is_side_name(name: str) -> bool:
    """Whether ``name`` (an entry of the students folder) is a seat's side folder's."""
    return _SIDE_NAME.fullmatch(name) is not None


def side_path(wod, student: int) -> str:
    """``<students_root>/.student<N>``: the seat's side folder (see the module's docstring)."""
    return os.path.join(wod.students_root, f".student{student}")


def _side_folder(wod, student: int) -> str:
    """The seat's side folder, made ``0700`` when missing; refused unless it is a folder of ours nobody else may enter.

    Nobody else can write in a service's students folder, but ``wod render``
    writes beside any folder: a symlink there, or someone else's folder,
    would hand them what we build or erase. A file or symlink of our own
    (no process of ours makes one) is replaced, so that the seat is not
    blocked for good.
    """
    side = side_path(wod, student)
    for _ in range(3):
        try:
            st = os.lstat(side)
        except FileNotFoundError:
            try:
                os.mkdir(side, 0o700)
                return side
            except FileExistsError:
                continue
        ours = st.st_uid == os.geteuid()
        if ours and stat.S_ISDIR(st.st_mode) and not st.st_mode & 0o077:
            return side
        if not ours or stat.S_ISDIR(st.st_mode):
            break
        os.unlink(side)
    raise errors.BadRequest(
        f"{side} must be a folder of the service's own user that nobody else may enter (mode 0700); "
        f"it is not, so student {student} is refused until an admin removes it.",
        code="unsafe_side_folder",
    )


def drop_side_folder(wod, student: int) -> None:
    """Remove the seat's side folder if it is empty: after a one-off render into a folder of one's own
    (``wod render``), nothing of ours stays beside it. A service keeps it, for the seat's next stage."""
    try:
        os.rmdir(side_path(wod, student))
    except OSError:
        pass


def _stale(side: str) -> list[str]:
    """Everything in a seat's (checked) side folder: its stage, and what an earlier run of any process left there.

    One small folder, not the students folder: with 2,000 seats beside it,
    scanning that for the seat's names took a provisioning 1.7 ms more.
    """
    with os.scandir(side) as it:
        return [e.path for e in it]


def _unique(side: str, prefix: str) -> str:
    """A name in a seat's side folder that nothing has: ``<prefix><pid>-<random>`` (not made, unlike ``mkdtemp``).

    Only the service writes in a side folder, and a name holds a pid and 64 random bits: a rename to it never
    lands on something else's.
    """
    return os.path.join(side, f"{prefix}{os.getpid()}-{secrets.token_hex(8)}")


def _move_aside(side: str, home) -> str:
    """Move a home out of the students folder, to a fresh name in its seat's side folder; that name.

    The name is gone from the student's path at once; its bytes go after (:func:`_remove`, :func:`_erase_later`).
    """
    aside = _unique(side, TRASH)
    _let_move(home)
    os.rename(home, aside)
    return aside


def _let_move(home) -> None:
    """Let a previous home of our own be moved out of the students folder, even if its student made it read-only.

    A folder moved to another parent has its ``..`` rewritten, which takes
    write permission on it without root: in single-user mode (one user for
    the service and every student) and for ``wod render``. It is on its way
    out, so making it writable for us changes nothing a student keeps.
    """
    if os.geteuid() == 0:
        return
    try:
        st = os.lstat(home)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & stat.S_IWUSR:
            os.chmod(home, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
    except OSError:
        pass  # the move that follows says what is wrong


def erase_home(wod, student: int) -> None:
    """Erase a home without following symlinks; a missing home is fine."""
    home = home_path(wod, student)
    if not os.path.lexists(home) and not os.path.lexists(side_path(wod, student)):
        return  # a seat never used
    side = _side_folder(wod, student)
    for leftover in _stale(side):
        _remove(leftover)
    if not os.path.lexists(home):
        return
    if os.path.islink(home) or not os.path.isdir(home):
        os.unlink(home)
        return
    _remove(_move_aside(side, home))


_eraser = None
_eraser_lock = threading.Lock()


def _erase_later(path: str) -> None:
    """Free the bytes of a previous home after the swap, off the caller's path.

    The old home already left ``student<N>`` atomically; deleting its files
    is the slowest part of a re-provisioning and nobody waits for it. One
    worker thread does it in order; a process that dies first leaves it in
    the seat's side folder, where the next provision or erase of N removes
    it. :func:`drain` waits for the pending erasures.
    """
    global _eraser
    with _eraser_lock:
        if _eraser is None:
            from concurrent.futures import ThreadPoolExecutor

            _eraser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wod-erase")
        _eraser.submit(_remove, path)


def drain() -> None:
    """Wait until every deferred erasure of a previous home is done."""
    with _eraser_lock:
        eraser = _eraser
    if eraser is not None:
        eraser.submit(lambda: None).result()


_libc = None


def _exchange(a: str, b: str) -> bool:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE); False when the kernel or libc cannot."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.renameat2  # noqa: B018 - probe
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    rc = _libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    return rc == 0


@functools.lru_cache(maxsize=256)
def _workspace(workshop_name: str, readme: str) -> str:
    target = f"{workshop_name}/{readme}"
    widget = f"notebook:{target}"
    return json.dumps(
        {
            "data": {
                "layout-restorer:data": {
                    "main": {
                        "dock": {"type": "tab-area", "currentIndex": 0, "widgets": [widget]},
                        "current": widget,
                    },
                    "down": {"size": 0, "widgets": []},
                    "left": {"collapsed": False, "visible": True, "current": "filebrowser", "widgets": ["filebrowser"]},
                    "right": {"collapsed": True, "visible": True, "widgets": []},
                    "relativeSizes": [0.2, 0.8, 0],
                },
                widget: {"data": {"path": target, "factory": "Notebook"}},
                "file-browser-filebrowser:cwd": {"path": workshop_name},
            },
            "metadata": {"id": "default"},
        },
        indent=1,
    )


def _sources(workshop) -> list:
    """The workshop's files a home gets (:func:`.trees.workshop_tree`): all but the sources of its compiled scripts."""
    entries = workshop_tree(workshop)
    hidden = compiled.excluded(workshop)
    return [e for e in entries if e[0] not in hidden] if hidden else entries


def _check_workshop(wod, workshop) -> None:
    if not Path(workshop.path).is_dir():
        raise errors.NotFound(f"Workshop folder {workshop.path} does not exist.", code="no_workshop")
    if not (Path(workshop.path) / wod.readme_notebook).is_file():
        raise errors.Unprocessable(
            f"Workshop {workshop.name} has no {wod.readme_notebook}, the notebook that opens first.", code="no_readme"
        )


@functools.lru_cache(maxsize=1)
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _stage_key(wod, workshop, entries) -> str:
    """What a staged seat's copied files depend on, as a short digest.

    The workshop's folders and file names, and for every copied file its
    size, mtime and exec bit; for every templated file whether it is
    executable (its placeholder has its mode); the skeleton's files
    likewise; the workspace. Editing a workshop changes the key, so an
    outdated stage is never used. The boot id is in it too: a stage is
    written without fsync (like any copy), and only a crash of the machine
    can lose unsynced bytes, which also changes the boot id.
    """
    h = hashlib.sha256()
    h.update(json.dumps([_boot_id(), workshop.name, os.path.realpath(workshop.path), wod.readme_notebook]).encode())
    for rel, target, is_dir in entries:
        if is_dir:
            h.update(f"{rel}\0{is_dir}\n".encode())
        elif is_templated(os.path.basename(rel)):
            # Its placeholder in the stage has the file's mode, which depends only on whether it is executable.
            h.update(f"{rel}\0{executable(target)}\n".encode())
        else:
            st = os.stat(target)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode & 0o111}\n".encode())
    if wod.skel and os.path.isdir(wod.skel):
        for dirpath, dirnames, filenames in os.walk(wod.skel):
            dirnames.sort()
            for name in sorted(filenames):
                st = os.lstat(os.path.join(dirpath, name))
                h.update(f"skel/{os.path.relpath(os.path.join(dirpath, name), wod.skel)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


STAGED, STAGING, TRASH = "staged-", "staging-", "trash-"


def _staged_path(wod, student: int, key: str) -> str:
    return os.path.join(side_path(wod, student), STAGED + key)


def _dead_staging(path: str) -> bool:
    """A ``staging-<pid>-*`` folder whose process is gone (killed while staging)."""
    try:
        return not pid_alive(int(os.path.basename(path).split(STAGING, 1)[1].split("-", 1)[0]))
    except (IndexError, ValueError):
        return True


#: What wod-jupyterhub before side folders left beside the homes.
_FLAT = re.compile(r"\.student\d+\.(staged|staging|new|old|trash)-")
_FLAT_AGE = 3600  # seconds: a flat leftover this old is no process's work in progress


def sweep_stages(wod) -> int:
    """Remove what stagers killed mid-way left, for every seat (a seat given since is not staged again); return how many.

    Also removes what an earlier version of wod-jupyterhub left beside the
    homes (``.student<N>.staged-*``, ``.student<N>.new-*``, ...): its stages
    are never used, and its leftovers are no longer looked for. A stager's
    folder goes once its process is gone, a home being built or erased once
    it is an hour old: an older version still running (a ``wod`` command
    during an upgrade) keeps its work in progress.
    """
    try:
        with os.scandir(wod.students_root) as it:
            hidden = [e for e in it if e.name.startswith(".student")]
    except FileNotFoundError:
        return 0
    dead = []
    for e in hidden:
        flat = _FLAT.match(e.name)
        if flat:
            kind = flat.group(1)
            if kind == "staged" or (kind == "staging" and _dead_staging(e.path)):
                dead.append(e.path)
            elif kind in ("new", "old", "trash") and time.time() - e.stat(follow_symlinks=False).st_mtime > _FLAT_AGE:
                dead.append(e.path)
        elif is_side_name(e.name) and e.is_dir(follow_symlinks=False):
            try:
                with os.scandir(e.path) as it:
                    dead.extend(x.path for x in it if x.name.startswith(STAGING) and _dead_staging(x.path))
            except OSError:
                pass  # not ours to look into: the seat's next operation says so
    for path in dead:
        _remove(path)
    return len(dead)


def _build(wod, workshop, new: str, entries, renderer: Renderer, variables, part: str, uid, gid, scripts=True) -> None:
    """Fill ``new``: skeleton, ``<WKSHP>/``, the workspace; ``part`` as in :func:`.trees.write_tree`.

    ``"templates"`` fills a stage, which holds the skeleton and the workspace already.
    """
    if part != "templates":
        os.chmod(new, DIR_MODE)
        if wod.skel and os.path.isdir(wod.skel):
            copy_skel(wod.skel, new)
    write_tree(
        renderer, Path(workshop.path), Path(new) / workshop.name, variables, root=Path(workshop.root), part=part, entries=entries
    )
    if part != "templates":
        wsdir = os.path.join(new, WORKSPACE_DIR)
        for d in (os.path.join(new, ".jupyter"), os.path.join(new, ".jupyter", "lab"), wsdir):
            try:
                # One level at a time, never makedirs: that would make ``new`` again if an erase of the seat
                # removed it meanwhile, and a stage holding only this folder would be published.
                os.mkdir(d, DIR_MODE)
            except FileExistsError:
                pass  # from the skeleton
        fd = os.open(os.path.join(wsdir, WORKSPACE_FILE), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            f.write(_workspace(workshop.name, wod.readme_notebook))
    if uid is not None:
        chown_tree(new, uid, gid if gid is not None else uid)
    if part != "static" and scripts and getattr(workshop, "compile", ()):
        # After the handover: the loaders stay root's (a stage never holds them: its files become the student's).
        compiled.install(compiled.build_all(wod.compiled_dir, workshop, compiled.seat_uids(wod)), os.path.join(new, workshop.name))


def stage(wod, workshop, student: int) -> bool:
    """Copy ahead, for a free seat, everything of ``workshop`` that its CREATE will not render.

    A CREATE then only renders the templated files into it and swaps it in
    (:func:`provision`), instead of copying the workshop's every byte while
    the participant waits: the copy is most of a provisioning's cost, and
    all of it for workshops with large pictures or data files. The stage
    is ``staged-<key>`` in the seat's side folder ``.student<N>``,
    built under another name and renamed when complete, so a stage is
    either whole or absent, and belongs to the service's user until a
    CREATE hands it to the student: no student can write into a stage,
    even one finished after its seat was given. Return False when a
    current stage was there already. Any erase or provisioning of the
    seat removes a stage it does not use.
    """
    _check_workshop(wod, workshop)
    home_path(wod, student)
    _students_root(wod)
    entries = _sources(workshop)
    if getattr(workshop, "compile", ()) and os.geteuid() == 0:
        try:
            compiled.build_all(wod.compiled_dir, workshop, compiled.seat_uids(wod))  # compiled ahead too, once per script version
        except errors.WodError:
            pass  # the seat's CREATE says why
    side = _side_folder(wod, student)
    target = _staged_path(wod, student, _stage_key(wod, workshop, entries))
    if os.path.isdir(target):
        return False  # the common case of a periodic look: one walk and a stat per file, no copy
    for old in _stale(side):
        if old == target:
            continue  # published by another stager since the look above: current, and perhaps being claimed
        if os.path.basename(old).startswith(STAGED) or (os.path.basename(old).startswith(STAGING) and _dead_staging(old)):
            _remove(old)  # an earlier version of the workshop; a killed stager's work
    # The pid in the name tells a later stager whether this one still runs.
    tmp = tempfile.mkdtemp(prefix=f"{STAGING}{os.getpid()}-", dir=side)
    try:
        _build(wod, workshop, tmp, entries, default_renderer(wod), None, "static", None, None)
        os.rename(tmp, target)
    except OSError:
        _remove(tmp)
        if not os.path.isdir(target):  # not another process staging the same seat: a real failure
            raise
        return False
    except BaseException:
        _remove(tmp)
        raise
    return True


def provision(
    wod,
    workshop,
    student: int,
    variables: dict,
    renderer: Renderer | None = None,
    uid: int | None = None,
    gid: int | None = None,
    info: dict | None = None,
    compiled_scripts: bool = True,
) -> Path:
    """Give ``student<N>`` a fresh home: skeleton, ``<WKSHP>/`` rendered, a workspace opening the ReadMeFirst.

    Everything is built in a temporary folder beside the home and swapped in
    at once; on any failure the previous home is left exactly as it was.
    A current stage of the seat (:func:`stage`) is used when there is one:
    then only the templated files are rendered here. ``info`` (a dict, if
    given) gets ``staged``: whether one was. ``compiled_scripts``: False
    leaves out the programs of the workshop's compiled scripts (``wod check``
    renders for a scratch seat, as no student: their sources were checked).
    """
    renderer = renderer or default_renderer(wod)
    home = home_path(wod, student)
    _check_workshop(wod, workshop)
    if compiled_scripts:
        compiled.check_can_install(workshop, uid)
    _students_root(wod)
    entries = _sources(workshop)
    side = _side_folder(wod, student)
    stale = _stale(side)
    # Not made (mkdtemp) but claimed by renaming the stage to it: a staged CREATE makes no new inode (see
    # .trees.write_tree for why that matters). The name is this call's alone, and the rename either takes the
    # whole stage or finds it gone.
    new = _unique(side, "new-")
    try:
        staged = False
        if any(os.path.basename(p).startswith(STAGED) for p in stale):
            current = _staged_path(wod, student, _stage_key(wod, workshop, entries))
            try:
                # A folder, never a symlink rendered through (only the service writes here: a check that costs
                # one lstat).
                if stat.S_ISDIR(os.lstat(current).st_mode):
                    os.rename(current, new)
                    staged = True
            except OSError:
                pass  # taken by another process, or outdated: built whole
        if not staged:
            os.mkdir(new, 0o700)
        for leftover in stale:
            _remove(leftover)  # from a process that died mid-way, or an outdated stage (a used one is gone)
        if info is not None:
            info["staged"] = staged
        _build(wod, workshop, new, entries, renderer, variables, "templates" if staged else "all", uid, gid, compiled_scripts)
        # the check again, right before the swap: the home may have changed meanwhile
        home_path(wod, student)
        _let_move(home)
        if os.path.lexists(home) and not os.path.islink(home) and _exchange(new, str(home)):
            _erase_later(new)  # now holds the previous home, already out of the student's path
        else:
            if os.path.lexists(home):
                old = _move_aside(side, home)
                os.rename(new, home)
                _erase_later(old)
            else:
                os.rename(new, home)
    except BaseException:
        _remove(new)
        raise
    return home
