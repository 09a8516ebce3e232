"""Workshop trees: walk a workshop's folder safely, and write it out rendered or copied."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .steps import CHECKS_FOLDER
from .templating import Renderer, RenderError, is_templated

log = logging.getLogger(__name__)

# A home is its student's alone: ReadMeFirsts carry the student's password ({{ PASSSTU }}), and in
# system-users mode every other account is another participant. No bits for the group or others.
DIR_MODE = 0o700


def _file_mode(executable) -> int:
    return 0o700 if executable else 0o600


def write_tree(
    renderer: Renderer, src: Path, dst: Path, variables: dict, root: Path | None = None, part: str = "all", entries=None
) -> list[str]:
    """Render or copy the files of ``src`` into the folder ``dst``; return the paths written.

    A symlink is followed only when it stays inside ``root`` (the
    notebooks root); one leading out is refused, so nothing is read
    from outside. ``part``: ``"all"`` builds ``dst``; ``"static"`` builds
    it with the copied files, and an empty placeholder for each templated
    file (a staged seat, see :func:`.homes.stage`); ``"templates"`` renders
    the templated files into a ``dst`` that ``"static"`` built, writing into
    the placeholders. ``entries``: :func:`source_tree` of ``src``, when
    the caller has it already.

    Why placeholders: a staged CREATE then makes no new file, and making
    one can be the dearest part of a CREATE. On an ext4 without a journal
    (virtual machines' disks often are), the kernel skips every inode
    deleted in the last minutes when it picks a free one, one lookup each:
    right after a class's homes were erased, a new file costs far more CPU
    than on tmpfs (``python -m bench.burst --profiler perf`` shows it).
    """
    src = Path(src)
    if entries is None:
        entries = source_tree(src, root)
    top = src.name
    written = []
    if part != "templates":
        os.mkdir(dst, DIR_MODE)
    for rel, target, is_dir in entries:
        out = os.path.join(dst, rel)
        if is_dir:
            if part != "templates":
                os.mkdir(out, DIR_MODE)
        elif is_templated(os.path.basename(rel)):
            if part == "static":
                os.close(_create(out, target))
                continue
            data = renderer.render_file(Path(target), f"{top}/{rel}", variables).encode("utf-8")
            fd = _open_placeholder(out) if part == "templates" else None
            if fd is None:
                fd = _create(out, target)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            written.append(out)
        elif part != "templates":
            copy_file(target, out)
            written.append(out)
    return written


def _create(out: str, target: str) -> int:
    """A new file ``out`` open for writing, with the mode a home's copy of ``target`` gets; never an existing one."""
    return os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _file_mode(executable(target)))


def _open_placeholder(path: str) -> int | None:
    """The stage's empty placeholder of a templated file, open for writing; None when the stage has none.

    It has the file's mode already (the stage's key holds whether each
    templated file is executable). Never a symlink: nobody but the service writes
    in a stage. Not opened with ``O_TRUNC``: ext4 takes a file truncated to
    nothing for one being replaced, and starts writing it to disk when it
    is closed (``auto_da_alloc``), which a CREATE would pay for.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    if os.fstat(fd).st_size:
        os.ftruncate(fd, 0)  # never in practice: nothing writes into a stage's placeholder
    return fd


def check_templates(renderer: Renderer, workshop, variables: dict) -> tuple[list[str], list[str]]:
    """Render every templated file of ``workshop`` once, in memory: (errors that stop a CREATE, repair warnings).

    What ``wod workshops`` shows, so that USABLE means provisionable: the
    first error of each file (not JSON once rendered, an undefined variable, a
    syntax error, a symlink out of the root), and for each notebook the
    repairs made so that it validates.
    """
    problems, warnings = [], []
    try:
        entries = workshop_tree(workshop)
    except (RenderError, OSError) as e:
        return [getattr(e, "message", None) or str(e)], []
    top = Path(workshop.path).name
    for rel, target, is_dir in entries:
        if is_dir or not is_templated(os.path.basename(rel)):
            continue
        name = f"{top}/{rel}"
        try:
            renderer.render_file(Path(target), name, variables)
        except RenderError as e:
            problems.append(e.message)
            continue
        except OSError as e:
            problems.append(f"{name} cannot be read: {e.strerror or e}.")
            continue
        repaired = renderer.prepare(Path(target), name).repaired
        if repaired:
            warnings.append(f"{name} was repaired as Jupyter does on load: {'; '.join(repaired)}.")
    return problems, warnings


#: files of a workshop's top folder that are for its authors, not its students: never copied into a home
AUTHOR_FILES = ("wod.yml", "README.md")


def workshop_tree(workshop) -> list[tuple[str, str, bool]]:
    """:func:`source_tree` of a catalog workshop, without its authors' files.

    ``wod.yml`` stays out of every home; ``README.md`` too, unless the
    workshop's ``wod.yml`` says ``show_readme: true``.
    """
    show = str(workshop.meta.get("show_readme", "")).strip().lower() in ("true", "yes")
    leave_out = {"wod.yml"} if show else set(AUTHOR_FILES)
    entries = source_tree(Path(workshop.path), Path(workshop.root))
    # The checks of verified steps are the authors' too: a participant who could read them could fake what they test.
    return [e for e in entries if e[0] not in leave_out and e[0].split("/", 1)[0] != CHECKS_FOLDER]


def source_tree(src: Path, root: Path | None = None) -> list[tuple[str, str, bool]]:
    """Every file and folder of a workshop as ``(relative path, path to read, is a folder)``, folders first.

    Symlinks are followed only inside ``root`` (default ``src``): one leading
    out, or nowhere, or in a loop raises :class:`RenderError`; sockets, fifos
    and devices are left out.
    """
    src = Path(src)
    root_real = os.path.realpath(root if root is not None else src)
    top = src.name
    out: list[tuple[str, str, bool]] = []
    seen: set = set()

    def walk(folder, rel):
        real = os.path.realpath(folder)
        if real in seen:
            raise RenderError(f"{top}/{rel} is a symlink loop.", file=f"{top}/{rel}")
        seen.add(real)
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            erel = f"{rel}/{entry.name}" if rel else entry.name
            target = entry.path
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if os.path.commonpath([target, root_real]) != root_real or not os.path.exists(target):
                    raise RenderError(
                        f"{top}/{erel} is a symlink leading out of the notebooks root (or nowhere); it is refused.",
                        file=f"{top}/{erel}",
                    )
                is_dir = os.path.isdir(target)
            else:
                is_dir = entry.is_dir(follow_symlinks=False)
                if not is_dir and not entry.is_file(follow_symlinks=False):
                    continue  # sockets, fifos, devices: never copied
            out.append((erel, target, is_dir))
            if is_dir:
                walk(target, erel)

    walk(src, "")
    return out


def executable(path: str) -> bool:
    """Whether the file at ``path`` has any execute bit."""
    return bool(os.stat(path).st_mode & 0o111)


def copy_file(src: str, dst: str) -> None:
    """Copy bytes (sendfile in the kernel); the copy belongs to the home, writable, keeping only the exec bit."""
    fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fin)
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _file_mode(st.st_mode & 0o111))
        try:
            offset = 0
            while offset < st.st_size:
                sent = os.sendfile(fd, fin, offset, st.st_size - offset)
                if sent == 0:
                    break
                offset += sent
        finally:
            os.close(fd)
    finally:
        os.close(fin)


def copy_skel(skel: str, dst: str) -> None:
    """Regular files and folders of the skeleton; symlinks in it are skipped, never followed."""
    with os.scandir(skel) as it:
        for entry in it:
            out = os.path.join(dst, entry.name)
            if entry.is_symlink():
                log.warning("skeleton %s: symlink skipped", entry.path)
            elif entry.is_dir(follow_symlinks=False):
                os.mkdir(out, DIR_MODE)
                copy_skel(entry.path, out)
            elif entry.is_file(follow_symlinks=False):
                copy_file(entry.path, out)
