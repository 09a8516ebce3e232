"""How much of a workshop a student ran: executed code cells over code cells."""

import errno
import json
import os
import stat
from pathlib import Path

from ..errors import BadRequest, NotFound
from .fdtrees import DIR_FLAGS

#: Defaults of the bounds (``c.Wod.notebook_max_bytes`` and friends set them for the service and the hub).
MAX_NOTEBOOK_BYTES = 64 * 1024 * 1024
MAX_TOTAL_BYTES = 256 * 1024 * 1024
MAX_DEPTH = 64
MAX_ENTRIES = 100_000

CHECKPOINTS = ".ipynb_checkpoints"

# O_NONBLOCK: a FIFO named *.ipynb must not hang us
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


def percent(executed: int, total: int) -> int:
    """Integer percent rounded down; 0 when nothing counts."""
    return executed * 100 // total if total else 0


class Budget:
    """Bytes left to read for one measure (the bound over every notebook of a folder)."""

    def __init__(self, max_notebook: int = MAX_NOTEBOOK_BYTES, max_total: int = MAX_TOTAL_BYTES):
        self.max_notebook = max_notebook
        self.max_total = max_total
        self.left = max_total

    def take(self, size: int) -> None:
        """Count ``size`` bytes as read; ``ValueError`` when that is more than is left."""
        if size > self.left:
            raise ValueError(f"not read: the notebooks of this folder hold more than {self.max_total} bytes in all")
        self.left -= size


def _open_file(name, dir_fd, follow_symlinks: bool) -> int:
    flags = _FILE_FLAGS if follow_symlinks else _FILE_FLAGS | os.O_NOFOLLOW
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow_symlinks:
            raise ValueError("a symbolic link, not followed") from None
        raise


def _read_fd(fd: int, budget: Budget) -> bytes:
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        limit = budget.max_notebook
        if st.st_size > limit:
            raise ValueError(f"too large to read ({st.st_size} bytes, limit {limit})")
        budget.take(st.st_size)
        # read(n) allocates n bytes up front: ask for the size we know, not the limit
        data = f.read(st.st_size + 1)
        if len(data) > st.st_size:  # it grew while we read it
            data += f.read(limit + 1 - len(data))
    if len(data) > limit:
        raise ValueError(f"too large to read (over {limit} bytes)")
    return data


def _version_text(version) -> str:
    # repr of a student's deeply nested value could itself recurse: name small scalars only
    return repr(version) if isinstance(version, (int, float, str)) and len(repr(version)) < 40 else type(version).__name__


def _cells(nb) -> tuple[list, str, str]:
    """The notebook's cells, with the names of its source and count fields."""
    if not isinstance(nb, dict):
        raise ValueError("not a notebook (the JSON is not an object)")
    version = nb.get("nbformat")
    if version is None:
        raise ValueError("not a notebook (no nbformat)")
    if version == 4 and not isinstance(version, bool):
        cells = nb.get("cells")
        source, count = "source", "execution_count"
    elif version == 3 and not isinstance(version, bool):
        worksheets = nb.get("worksheets")
        if not isinstance(worksheets, list) or not all(isinstance(w, dict) for w in worksheets):
            raise ValueError("not a notebook (nbformat 3 without a list of worksheets)")
        cells = []
        for w in worksheets:
            more = w.get("cells", [])
            if not isinstance(more, list):
                raise ValueError("not a notebook (a worksheet's cells are not a list)")
            cells.extend(more)
        source, count = "input", "prompt_number"
    else:
        raise ValueError(f"nbformat {_version_text(version)} is not supported (only 3 and 4)")
    if not isinstance(cells, list):
        raise ValueError("not a notebook (no list of cells)")
    return cells, source, count


def _count(nb) -> tuple[int, int]:
    cells, source_key, count_key = _cells(nb)
    executed = total = 0
    for cell in cells:
        if not isinstance(cell, dict):
            raise ValueError("not a notebook (a cell is not an object)")
        if cell.get("cell_type") != "code":
            continue
        source = cell.get(source_key, "")
        if isinstance(source, list):
            # The usual case: a list of lines. Stop at the first line with
            # content rather than joining them all.
            for line in source:
                if not isinstance(line, str):
                    raise ValueError("not a notebook (a cell's source is not text)")
                if line and not line.isspace():
                    break
            else:
                continue
        elif isinstance(source, str):
            if not source or source.isspace():
                continue
        else:
            raise ValueError("not a notebook (a cell's source is not text)")
        total += 1
        if cell.get(count_key) is not None:
            executed += 1
    return executed, total


def _measure_one(shown: str, opener, budget: Budget) -> dict:
    """One notebook's entry; ``opener()`` returns its descriptor. Never raises for what the file holds."""
    result = {"path": shown, "executed": 0, "total": 0, "error": None}
    try:
        data = _read_fd(opener(), budget)
        if not data or data.isspace():
            raise ValueError("empty file")
        result["executed"], result["total"] = _count(json.loads(data))
    except json.JSONDecodeError as e:
        result["error"] = f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}"
    except UnicodeDecodeError:
        result["error"] = "invalid JSON: not UTF-8 text"
    except RecursionError:
        result["error"] = "invalid JSON: nested too deeply"
    except MemoryError:
        result["error"] = "too large to parse within the memory the completion may use"
    except (ValueError, OSError) as e:
        result["error"] = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    except Exception as e:  # a student's file must never fail a CLEANUP; the cases above name the known ones
        result["error"] = f"not a notebook ({e.__class__.__name__})"
    return result


def notebook_completion(path, *, max_bytes: int = MAX_NOTEBOOK_BYTES, follow_symlinks: bool = True) -> dict:
    """``{"path", "executed", "total", "error"}`` for one notebook; never raises for a bad notebook.

    ``error`` is None when the notebook was read, else a sentence saying why
    it was not (and then ``executed`` and ``total`` are 0).
    """
    return _measure_one(str(path), lambda: _open_file(path, None, follow_symlinks), Budget(max_bytes, max_bytes))


def _open_dir(name, dir_fd=None) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ValueError("a symbolic link or not a folder, not followed") from None
        raise


def _walk(top_fd: int, problems: list, max_depth: int = MAX_DEPTH, max_entries: int = MAX_ENTRIES):
    """``(folder descriptor, name, relative path)`` of every ``*.ipynb`` under ``top_fd``, sorted, skipping checkpoints.

    Iterative depth-first walk holding one descriptor per level; folders are
    opened relative to their parent without following links. What it does
    not walk (too deep, too many entries, unreadable) goes to ``problems``.
    """
    seen = 0
    stack = []  # (descriptor, relative path, sub-folder names still to visit)

    def scan(fd, rel):
        nonlocal seen
        files, folders = [], []
        with os.scandir(fd) as it:
            for entry in it:
                seen += 1
                if seen > max_entries:
                    raise OverflowError
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != CHECKPOINTS:
                        folders.append(entry.name)
                elif entry.name.endswith(".ipynb"):
                    files.append(entry.name)  # links and special files too: reported on their entry
        return sorted(files), sorted(folders, reverse=True)

    try:
        files, folders = scan(top_fd, "")
        for name in files:
            yield top_fd, name, name
        stack.append((None, "", folders))
        while stack:
            fd, rel, folders = stack[-1]
            if not folders:
                stack.pop()
                if fd is not None:
                    os.close(fd)
                continue
            name = folders.pop()
            sub_rel = f"{rel}/{name}" if rel else name
            if len(stack) > max_depth:
                problems.append(f"{sub_rel}: deeper than {max_depth} folders, not walked")
                continue
            parent = top_fd if fd is None else fd
            try:
                sub = _open_dir(name, parent)
            except (ValueError, OSError) as e:
                problems.append(f"{sub_rel}: {e.strerror if isinstance(e, OSError) and e.strerror else e}")
                continue
            stack.append((sub, sub_rel, []))
            try:
                files, subfolders = scan(sub, sub_rel)
            except OSError as e:
                problems.append(f"{sub_rel}: {e.strerror or e}")
                continue
            stack[-1] = (sub, sub_rel, subfolders)
            for file in files:
                yield sub, file, f"{sub_rel}/{file}"
    except OverflowError:
        problems.append(f"more than {max_entries} entries: the rest is not walked")
    finally:
        for fd, _rel, _folders in stack:
            if fd is not None:
                os.close(fd)


def _open_under(top_fd: int, rel: str) -> int:
    """Descriptor of ``rel`` (``a/b/c.ipynb``) under ``top_fd``, no component followed if it is a link."""
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError("not a path inside the workshop folder")
    fd = top_fd
    opened = []
    try:
        for part in parts[:-1]:
            fd = _open_dir(part, fd)
            opened.append(fd)
        return _open_file(parts[-1], fd, follow_symlinks=False)
    finally:
        for d in opened:
            os.close(d)


def read_under(folder, rel: str, max_bytes: int = MAX_NOTEBOOK_BYTES) -> bytes:
    """The bytes of file ``rel`` under ``folder``, no component followed if it is a link, at most ``max_bytes``.

    ValueError (or OSError) with what is wrong: the file is a student's, any of it may be a trap.
    """
    top = _open_dir(os.fspath(folder))
    try:
        fd = _open_under(top, rel)
    finally:
        os.close(top)
    return _read_fd(fd, Budget(max_bytes, max_bytes))


def completion(path, relative_to=None, *, notebooks=None, budget: Budget | None = None, max_depth: int = MAX_DEPTH,
               max_entries: int = MAX_ENTRIES) -> dict:
    """The ratio for a workshop folder or for one notebook file, measured in this process.

    Returns ``{"ratio": int percent, "executed", "total", "notebooks": [...]}``
    with one entry per notebook, its ``path`` relative to ``relative_to``
    (default: the folder itself, or the file's own folder), and
    ``problems`` (a list of sentences) when part of the folder was not
    walked. With ``notebooks`` (paths relative to the folder, ``/``
    separated), exactly those count, missing ones as 0 of 0 with their
    error; without, every ``*.ipynb`` found. Bad notebooks are listed with
    their error, never raised; a ``path`` that does not exist raises
    :class:`NotFound`, and one that is neither a folder nor an ``.ipynb``
    file :class:`BadRequest`.
    """
    budget = budget or Budget()
    path = Path(path)
    if not os.path.lexists(path):
        raise NotFound(f"{path} does not exist")
    if path.is_file() or path.suffix == ".ipynb" and not path.is_dir():
        if path.suffix != ".ipynb":
            raise BadRequest(f"{path} is neither a workshop folder nor a notebook (.ipynb)")
        # Named explicitly, a single notebook is read through its link (an admin's command).
        shown = path.name if relative_to is None else _relative(str(path), relative_to)
        return _summary([_measure_one(shown, lambda: _open_file(path, None, True), budget)], [])
    if not path.is_dir():
        raise BadRequest(f"{path} is neither a workshop folder nor a notebook (.ipynb)")

    def show(rel):
        return rel if relative_to is None else _relative(os.path.join(path, rel), relative_to)

    entries, problems = [], []
    try:
        top = _open_dir(str(path))
    except (ValueError, OSError) as e:
        # The folder itself swapped for a link (~/WKSHP-X -> /): nothing of it counts.
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        missing = [{"path": show(rel), "executed": 0, "total": 0, "error": f"not read: {path.name} is {why}"} for rel in notebooks or ()]
        return _summary(missing, [f"{path.name}: {why}"])
    try:
        if notebooks is not None:
            for rel in notebooks:
                entries.append(_measure_one(show(rel), lambda rel=rel: _open_under(top, rel), budget))
        else:
            for fd, name, rel in _walk(top, problems, max_depth, max_entries):
                entries.append(_measure_one(show(rel), lambda fd=fd, name=name: _open_file(name, fd, False), budget))
    finally:
        os.close(top)
    return _summary(entries, problems)


def _summary(entries: list, problems: list) -> dict:
    executed = sum(e["executed"] for e in entries)
    total = sum(e["total"] for e in entries)
    out = {"ratio": percent(executed, total), "executed": executed, "total": total, "notebooks": entries}
    if problems:
        out["problems"] = problems
    return out


def find_notebooks(folder) -> list[Path]:
    """Every ``*.ipynb`` under ``folder``, sorted, skipping checkpoints; symbolic links listed, not followed."""
    folder = os.fspath(folder)
    top = _open_dir(folder)
    try:
        return [Path(folder) / rel for _fd, _name, rel in _walk(top, [])]
    finally:
        os.close(top)


def provisioned_notebooks(workshop) -> list[str]:
    """The notebooks a workshop puts in a home (paths relative to its folder): the only ones its ratio counts.

    ``workshop`` is a catalog ``Workshop``. Anything else a student adds
    (a fabricated notebook at 100 %) does not count; a provisioned one the
    student deleted counts 0 of 0 with its error.
    """
    # Here, not at the top: the worker process imports this module with the standard library only.
    from ..workshops.trees import workshop_tree

    return [
        rel
        for rel, _src, is_dir in workshop_tree(workshop)
        if not is_dir and rel.endswith(".ipynb") and CHECKPOINTS not in rel.split("/")
    ]


def _relative(path: str, base) -> str:
    rel = os.path.relpath(path, base)
    # outside relative_to: keep the full path rather than a chain of ../
    return path if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel
