"""How much of a workshop a student ran: executed code cells over code cells.

The original grepped ``execution_count`` lines and counted ``null`` ones, but
outputs (``execute_result``) carry an ``execution_count`` too, so every
executed cell with a result was counted twice. Here each notebook's JSON is
parsed and only the cells are looked at.

Rules, one per decision:

- A code cell counts when its source holds something besides whitespace.
  JupyterLab does not send a blank cell to the kernel when it is run (it
  clears its count instead), so a blank cell can never become executed and
  must not hold the ratio below 100 %.
- Executed means ``execution_count`` is not null (nbformat 3:
  ``prompt_number``).
- nbformat 4 (``cells``) and nbformat 3 (``worksheets[].cells``, the source
  under ``input``) are read; any other version is reported as unreadable.
- The percent is rounded down: 99.6 % is not done, so it reads 99, and 100
  means every counted cell ran. No counted cell at all gives 0.
- A notebook that cannot be read (empty, not JSON, not a notebook, not a
  regular file, larger than ``MAX_NOTEBOOK_BYTES``) is listed with its
  ``error`` and counts 0 of 0; it never raises. Inside a folder, symbolic
  links are not followed: a home belongs to its student, and the service
  reading it as root must not be sent to ``/dev/zero`` or another's file.

``json.loads`` and not ``nbformat.reads``: the latter validates the whole
schema on every call, which costs many times the parse itself, and a ratio
needs no more than the cells' two fields.

This module is core: it imports nothing from the hub process.
"""

import json
import os
import stat
from pathlib import Path

from .errors import BadRequest, NotFound

#: A notebook larger than this is reported, not parsed: parsing costs memory
#: several times its size, in the service process that serves every seat.
MAX_NOTEBOOK_BYTES = 100 * 1024 * 1024

CHECKPOINTS = ".ipynb_checkpoints"


def percent(executed: int, total: int) -> int:
    """Integer percent rounded down; 0 when nothing counts."""
    return executed * 100 // total if total else 0


def _read(path, max_bytes: int, follow_symlinks: bool) -> bytes:
    flags = os.O_RDONLY | os.O_NONBLOCK  # a FIFO named *.ipynb must not hang us
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == getattr(os, "ELOOP", None) and not follow_symlinks:
            raise ValueError("a symbolic link, not followed") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > max_bytes:
            raise ValueError(f"too large to read ({st.st_size} bytes, limit {max_bytes})")
        # read(n) allocates n bytes up front: ask for the size we know, not the limit
        data = f.read(st.st_size + 1)
        if len(data) > st.st_size:  # it grew while we read it
            data += f.read(max_bytes + 1 - len(data))
    if len(data) > max_bytes:
        raise ValueError(f"too large to read (over {max_bytes} bytes)")
    return data


def _cells(nb) -> tuple[list, str, str]:
    """The notebook's cells, with the names of its source and count fields."""
    if not isinstance(nb, dict):
        raise ValueError("not a notebook (the JSON is not an object)")
    version = nb.get("nbformat")
    if version is None:
        raise ValueError("not a notebook (no nbformat)")
    if version == 4:
        cells = nb.get("cells")
        source, count = "source", "execution_count"
    elif version == 3:
        worksheets = nb.get("worksheets")
        if not isinstance(worksheets, list) or not all(isinstance(w, dict) for w in worksheets):
            raise ValueError("not a notebook (nbformat 3 without a list of worksheets)")
        cells = [c for w in worksheets for c in (w.get("cells") or ())]
        source, count = "input", "prompt_number"
    else:
        raise ValueError(f"nbformat {version!r} is not supported (only 3 and 4)")
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


def notebook_completion(path, *, max_bytes: int = MAX_NOTEBOOK_BYTES, follow_symlinks: bool = True) -> dict:
    """``{"path", "executed", "total", "error"}`` for one notebook; never raises for a bad notebook.

    ``error`` is None when the notebook was read, else a sentence saying why
    it was not (and then ``executed`` and ``total`` are 0).
    """
    result = {"path": str(path), "executed": 0, "total": 0, "error": None}
    try:
        data = _read(path, max_bytes, follow_symlinks)
        if not data or data.isspace():
            raise ValueError("empty file")
        result["executed"], result["total"] = _count(json.loads(data))
    except json.JSONDecodeError as e:
        result["error"] = f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}"
    except UnicodeDecodeError:
        result["error"] = "invalid JSON: not UTF-8 text"
    except RecursionError:
        result["error"] = "invalid JSON: nested too deeply"
    except (ValueError, OSError) as e:
        result["error"] = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return result


def _walk(folder: str):
    """``(path, path relative to folder)`` of every ``*.ipynb`` under ``folder``, sorted, skipping checkpoints."""
    for dirpath, dirnames, filenames in os.walk(folder):  # does not descend into linked folders
        dirnames[:] = sorted(d for d in dirnames if d != CHECKPOINTS)
        rel = os.path.relpath(dirpath, folder)
        for name in sorted(filenames):
            if name.endswith(".ipynb"):
                yield os.path.join(dirpath, name), name if rel == "." else os.path.join(rel, name)


def find_notebooks(folder) -> list[Path]:
    """Every ``*.ipynb`` under ``folder``, sorted, skipping checkpoints; symbolic links included (not followed)."""
    return [Path(p) for p, _ in _walk(os.fspath(folder))]


def completion(path, relative_to=None) -> dict:
    """The ratio for a workshop folder (every notebook in it) or for one notebook file.

    Returns ``{"ratio": int percent, "executed", "total", "notebooks": [...]}``
    with one :func:`notebook_completion` entry per notebook, its ``path``
    relative to ``relative_to`` (default: the folder itself, or the file's
    own folder). Bad notebooks are listed with their error, never raised;
    a ``path`` that does not exist raises :class:`NotFound`, and one that is
    neither a folder nor an ``.ipynb`` file :class:`BadRequest`.
    """
    path = Path(path)
    if path.is_dir():
        follow = False
        if relative_to is None:
            notebooks = list(_walk(str(path)))
        else:
            notebooks = [(p, _relative(p, relative_to)) for p, _ in _walk(str(path))]
    elif not os.path.lexists(path):
        raise NotFound(f"{path} does not exist")
    elif path.suffix != ".ipynb":
        raise BadRequest(f"{path} is neither a workshop folder nor a notebook (.ipynb)")
    else:
        follow = True
        notebooks = [(str(path), path.name if relative_to is None else _relative(str(path), relative_to))]

    entries = []
    executed = total = 0
    for full, shown in notebooks:
        entry = notebook_completion(full, follow_symlinks=follow)
        entry["path"] = shown
        executed += entry["executed"]
        total += entry["total"]
        entries.append(entry)
    return {"ratio": percent(executed, total), "executed": executed, "total": total, "notebooks": entries}


def _relative(path: str, base) -> str:
    rel = os.path.relpath(path, base)
    # outside relative_to: keep the full path rather than a chain of ../
    return path if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel
