"""Provisioning: render a workshop from its templates into a student home.

Jinja2 in a sandbox, with Ansible's template options (``trim_blocks``,
``keep_trailing_newline``) so the real notebooks come out byte-identical to
the original's Ansible path. In ``.ipynb`` files every printed value is
escaped as JSON string content, so no value can break a notebook.

Rendering goes into a temporary folder beside the home, which is then
swapped in atomically: a failed render never leaves a half-written home.
This module is core: it imports nothing from the hub process, and it needs
no shared filesystem with the hub (it can run in an init container).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import getpass
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
from json.encoder import encode_basestring
from pathlib import Path

import jinja2
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from . import errors
from .catalog import read_meta

log = logging.getLogger(__name__)

TEMPLATED_SUFFIXES = (".ipynb", ".py", ".sh", ".yaml", ".src", ".tf", ".env")
TEMPLATED_NAMES = ("Variables.ps1",)

#: JupyterLab (jupyterlab_server.workspaces_handler.slugify) stores the
#: workspace named "default" -- the one ``/lab`` opens -- in
#: ``<jupyter_config_dir>/lab/workspaces/default-<sha256("default")[:4]>.jupyterlab-workspace``;
#: with HOME set to the student home and no JUPYTER_CONFIG_DIR, that is ``~/.jupyter/lab/workspaces``.
WORKSPACE_FILE = "default-" + hashlib.sha256(b"default").hexdigest()[:4] + ".jupyterlab-workspace"
WORKSPACE_DIR = Path(".jupyter") / "lab" / "workspaces"

_JINJA_MARKS = ("{{", "{%", "{#")
_NEEDS_JSON_ESCAPE = re.compile(r'["\\\x00-\x1f]')
_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined|has no attribute '([^']+)'|no element '?([^']+?)'?$")


def is_templated(name: str) -> bool:
    if name.endswith("-checkpoint.ipynb"):
        return False
    return name.endswith(TEMPLATED_SUFFIXES) or name in TEMPLATED_NAMES


class RenderError(errors.Unprocessable):
    """A workshop that will not render; the message names the file, the line and the variable when known."""

    code = "render_failed"

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, variable: str | None = None):
        super().__init__(message)
        self.file = file
        self.line = line
        self.variable = variable

    def to_json(self) -> dict:
        d = super().to_json()
        d.update({k: v for k, v in (("file", self.file), ("line", self.line), ("variable", self.variable)) if v is not None})
        return d


def _clause(text) -> str:
    """A message as the tail of our own sentence: no doubled final period."""
    return str(text).strip().rstrip(".")


def _json_text(value) -> str:
    """Print a value as JSON string content: quote, backslash and control characters escaped, nothing else.

    ``str()`` of a StrictUndefined raises, which is how an undefined variable
    still fails in notebooks. A value without such characters is printed
    exactly as Ansible prints it.
    """
    text = value if type(value) is str else str(value)
    if _NEEDS_JSON_ESCAPE.search(text) is None:
        return text
    return encode_basestring(text)[1:-1]


def _dump_notebook(nb: dict) -> str:
    # nbformat's own on-disk style (nbformat.v4.nbjson.JSONWriter)
    return json.dumps(nb, indent=1, sort_keys=True, separators=(",", ": "), ensure_ascii=False) + "\n"


def _clear(nb: dict) -> None:
    for cell in nb.get("cells") or ():
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(text: str):
    return json.loads(text, parse_constant=_reject_constant)


def validate_notebook(nb) -> str | None:
    """Full nbformat schema validation; the first problem as a sentence, or None. Slow: not for the hot path."""
    from nbformat.validator import get_validator

    if not isinstance(nb, dict):
        return "it is not a JSON object"
    major, minor = nb.get("nbformat"), nb.get("nbformat_minor")
    if major != 4 or not isinstance(minor, int) or isinstance(minor, bool):
        return f"nbformat {major}.{minor} is not supported (nbformat 4 only)"
    validator = get_validator(4, minor)
    if validator is None:
        return f"no schema for nbformat 4.{minor}"
    for err in validator.iter_errors(nb):
        where = "/".join(str(p) for p in getattr(err, "path", None) or getattr(err, "absolute_path", ()) or ())
        return f"{err.message}" + (f" (at {where})" if where else "")
    return None


_STR_ONLY = {str}


class _Skeleton:
    """A validated notebook with the one part a render may change, cell sources, left out.

    Why comparing against it is enough, so full schema validation runs once
    per template file instead of once per seat: the nbformat schema lets a
    cell's ``source`` be any string or list of strings, and constrains
    everything else. The template's notebook (outputs cleared when
    clearing) was fully validated once. A rendered notebook that parses as
    JSON and equals it everywhere but in cell sources, each still a string
    or a list of strings, is therefore valid too: the schema cannot tell it
    from the validated one. Anything else -- a variable printed into
    metadata, a block that adds or merges cells -- fails the comparison and
    falls back to full validation for that render, so correctness never
    depends on where a template author put their tags. The comparison is
    a few dict equality tests per cell, in C.
    """

    __slots__ = ("top", "cells")

    def __init__(self, nb: dict):
        self.top = {k: v for k, v in nb.items() if k != "cells"}
        self.cells = [{k: v for k, v in c.items() if k != "source"} for c in nb["cells"]]

    def matches(self, nb) -> bool:
        if type(nb) is not dict:
            return False
        cells = nb.get("cells")
        if type(cells) is not list or len(cells) != len(self.cells) or len(nb) != len(self.top) + 1:
            return False
        top = self.top
        for k, v in nb.items():
            if k != "cells" and (k not in top or top[k] != v):
                return False
        for cell, ref in zip(cells, self.cells):
            if type(cell) is not dict or len(cell) != len(ref) + 1:
                return False
            src = cell.get("source", 0)
            if type(src) is not str and (type(src) is not list or not set(map(type, src)) <= _STR_ONLY):
                return False
            for k, v in cell.items():
                if k != "source" and (k not in ref or ref[k] != v):
                    return False
        return True


class _Prepared:
    """One template file, compiled once, with what the hot path needs to check its output."""

    __slots__ = ("template", "source", "notebook", "skeleton", "cleared_before", "clear_after", "invalid")

    def __init__(self):
        self.template = None
        self.source = None  # the file's text, to re-render for errors named at the file's own lines
        self.notebook = False
        self.skeleton = None
        self.cleared_before = False
        self.clear_after = False
        self.invalid = None


class Renderer:
    """Renders workshop templates; compiles each file once and caches it by path, mtime and size.

    A service process keeps one Renderer, so it pays the compile and the
    one-off notebook validation once per template file, not once per seat.
    """

    def __init__(self, strict_undefined: bool = True, clear_outputs: bool = True):
        self.strict_undefined = strict_undefined
        self.clear_outputs = clear_outputs
        undefined = jinja2.StrictUndefined if strict_undefined else jinja2.Undefined
        opts = dict(trim_blocks=True, keep_trailing_newline=True, undefined=undefined, autoescape=False)
        self.text_env = SandboxedEnvironment(**opts)
        self.json_env = SandboxedEnvironment(finalize=_json_text, **opts)
        self._cache: dict = {}
        self._lock = threading.Lock()

    # -- compiling ------------------------------------------------------

    def _compile(self, env, source: str, path: Path, rel: str):
        try:
            code = env.compile(source, name=rel, filename=str(path))
        except TemplateSyntaxError as e:
            raise RenderError(
                f"{rel}, line {e.lineno}: template syntax error: {_clause(e.message)}.", file=rel, line=e.lineno
            ) from None
        return env.template_class.from_code(env, code, env.make_globals(None), None)

    def prepare(self, path: Path, rel: str) -> _Prepared:
        st = os.stat(path)
        key = (str(path), st.st_mtime_ns, st.st_size)
        prepared = self._cache.get(key)
        if prepared is not None:
            return prepared
        try:
            source = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise RenderError(f"{rel} is not UTF-8 text ({e.reason}), so it cannot be rendered.", file=rel) from None
        p = _Prepared()
        p.source = source
        if not rel.endswith(".ipynb"):
            p.template = self._compile(self.text_env, source, path, rel)
        else:
            p.notebook = True
            self._prepare_notebook(p, source, path, rel)
        with self._lock:
            # drop older versions of the same file
            for old in [k for k in self._cache if k[0] == key[0]]:
                del self._cache[old]
            self._cache[key] = p
        return p

    def _prepare_notebook(self, p: _Prepared, source: str, path: Path, rel: str) -> None:
        try:
            nb = _parse_json(source)
        except ValueError:
            nb = None  # tags outside JSON strings: only the rendered text can be judged
        text = source
        if nb is not None and type(nb) is dict and type(nb.get("cells")) is list:
            if self.clear_outputs:
                removed = json.dumps(
                    [(c.get("outputs"), c.get("execution_count")) for c in nb["cells"] if isinstance(c, dict)]
                )
                if not any(m in removed for m in _JINJA_MARKS):
                    # Clearing commutes with rendering when no tag lives in what
                    # is cleared, so clear once here instead of on every seat.
                    _clear(nb)
                    text = _dump_notebook(nb)
                    p.cleared_before = True
                else:
                    _clear(nb)
                    p.clear_after = True
            if validate_notebook(nb) is None and all(type(c) is dict for c in nb["cells"]):
                p.skeleton = _Skeleton(nb)
        elif self.clear_outputs:
            p.clear_after = True
        try:
            p.template = self._compile(self.json_env, text, path, rel)
        except RenderError:
            if text is source:
                raise
            self._compile(self.json_env, source, path, rel)  # raises, named at the file's own lines
            raise

    # -- rendering ------------------------------------------------------

    def render_file(self, path: Path, rel: str, variables: dict) -> str:
        """Render one templated file; raise RenderError naming file, line and variable."""
        p = self.prepare(path, rel)
        try:
            out = p.template.render(variables)
        except Exception as e:  # noqa: BLE001 - every template failure becomes one sentence
            if p.cleared_before:
                # Report at the file's own line numbers, not the re-serialized template's.
                env = self.json_env
                original = self._compile(env, p.source, path, rel)
                try:
                    original.render(variables)
                except Exception as e2:  # noqa: BLE001
                    raise self._explain(e2, path, rel) from None
            raise self._explain(e, path, rel) from None
        if not p.notebook:
            return out
        try:
            nb = _parse_json(out)
        except ValueError as e:
            raise RenderError(f"{rel} is not a valid notebook once rendered: invalid JSON ({e}).", file=rel) from None
        if p.clear_after:
            _clear(nb)
        if p.skeleton is None or not p.skeleton.matches(nb):
            problem = validate_notebook(nb)
            if problem:
                raise RenderError(f"{rel} is not a valid notebook once rendered: {problem}.", file=rel)
        if p.clear_after:
            out = _dump_notebook(nb)
        return out

    def _explain(self, e: Exception, path: Path, rel: str) -> RenderError:
        if isinstance(e, RenderError):
            return e
        line = None
        tb = e.__traceback__
        fname = str(path)
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == fname:
                line = tb.tb_lineno
            tb = tb.tb_next
        if isinstance(e, TemplateSyntaxError):
            line = e.lineno
        where = f"{rel}, line {line}" if line else rel
        if isinstance(e, SecurityError):
            return RenderError(f"{where}: refused by the template sandbox: {_clause(e)}.", file=rel, line=line)
        if isinstance(e, UndefinedError):
            msg = str(e)
            m = _UNDEFINED_NAME.search(msg)
            var = next((g for g in m.groups() if g), None) if m else None
            if var:
                return RenderError(f"{where}: variable {var} is undefined.", file=rel, line=line, variable=var)
            return RenderError(f"{where}: {_clause(msg)}.", file=rel, line=line)
        if isinstance(e, TemplateSyntaxError):
            return RenderError(f"{where}: template syntax error: {_clause(e.message)}.", file=rel, line=line)
        return RenderError(f"{where}: the template failed: {type(e).__name__}: {_clause(e)}.", file=rel, line=line)

    def render_tree(
        self, src: Path, dst: Path, variables: dict, root: Path | None = None, part: str = "all", entries=None
    ) -> list[str]:
        """Render or copy the files of ``src`` into the folder ``dst``; return the paths written.

        A symlink is followed only when it stays inside ``root`` (the
        notebooks root); one leading out is refused, so nothing is read
        from outside. ``part``: ``"all"`` builds ``dst``; ``"static"`` builds
        it with the copied files only (a staged seat, see :func:`stage`);
        ``"templates"`` renders the templated files into a ``dst`` that
        ``"static"`` built. ``entries``: :func:`source_tree` of ``src``, when
        the caller has it already.
        """
        src = Path(src)
        if entries is None:
            entries = source_tree(src, root)
        top = src.name
        written = []
        if part != "templates":
            os.mkdir(dst, 0o755)
        for rel, target, is_dir in entries:
            out = os.path.join(dst, rel)
            if is_dir:
                if part != "templates":
                    os.mkdir(out, 0o755)
            elif is_templated(os.path.basename(rel)):
                if part == "static":
                    continue
                data = self.render_file(Path(target), f"{top}/{rel}", variables).encode("utf-8")
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755 if _executable(target) else 0o644)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
                written.append(out)
            elif part != "templates":
                _copy_file(target, out)
                written.append(out)
        return written


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


def _executable(path: str) -> bool:
    return bool(os.stat(path).st_mode & 0o111)


def _copy_file(src: str, dst: str) -> None:
    """Copy bytes (sendfile in the kernel); the copy belongs to the home, writable, keeping only the exec bit."""
    fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fin)
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755 if st.st_mode & 0o111 else 0o644)
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


# -- variables ------------------------------------------------------------


def template_variables(
    wod,
    workshop,
    student: int,
    password: str,
    modews: str = "WKSHP",
    hook_vars: dict | None = None,
    hostname: str | None = None,
) -> dict:
    """The variables of DESIGN "Templating", later layers winning, plus Ansible's ``hostvars``."""
    if modews not in ("WKSHP", "CHLG"):
        raise errors.BadRequest(f"MODEWS must be WKSHP or CHLG, not {modews!r}.")
    variables: dict = {}
    variables.update(wod.variables)
    for folder in wod.variables_dirs:
        path = Path(folder) / f"variables_{workshop.name}.yml"
        if path.is_file():
            try:
                data = read_meta(path)
            except (ValueError, OSError) as e:
                raise errors.Unprocessable(f"Variables file {path} cannot be read: {e}", code="bad_variables") from None
            variables.update(data)
    if hook_vars:
        variables.update(hook_vars)
    students_root = str(wod.students_root)
    variables.update(
        STDID=student,
        PASSSTU=password,
        WORKSHOP=workshop.name,
        CHALLENGE=modews == "CHLG",
        MODEWS=modews,
        DIR="",
        WODUSER=wod.variables.get("WODUSER") or _user(),
        WODSTUDDIR=students_root,
        STDDIR=students_root,
    )
    host = hostname or wod.variables.get("inventory_hostname") or socket.gethostname()
    variables["inventory_hostname"] = host
    variables["hostvars"] = {host: dict(variables)}
    return variables


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return str(os.getuid())


# -- homes ----------------------------------------------------------------


def _check_student(student) -> int:
    if isinstance(student, bool) or not isinstance(student, int) or student < 1:
        raise errors.BadRequest(f"Student number must be a positive integer, not {student!r}.", code="bad_student")
    return student


def home_path(wod, student: int) -> Path:
    """``<students_root>/student<N>``, refused when it resolves outside ``students_root``."""
    _check_student(student)
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
    """Remove a file, a symlink or a tree without following any symlink."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        # rmtree works on file descriptors here and never follows symlinks;
        # errors are ignored only for a hidden leftover a deferred erasure may be removing too
        shutil.rmtree(path, ignore_errors=os.path.basename(path).startswith(".student"))
    else:
        os.unlink(path)


def _stale(wod, student: int):
    root = Path(wod.students_root)
    prefix = f".student{student}."
    try:
        with os.scandir(root) as it:
            return [e.path for e in it if e.name.startswith(prefix)]
    except FileNotFoundError:
        return []


def erase_home(wod, student: int) -> None:
    """Erase a home without following symlinks; a missing home is fine."""
    home = home_path(wod, student)
    for leftover in _stale(wod, student):
        _remove(leftover)
    if not os.path.lexists(home):
        return
    if os.path.islink(home) or not os.path.isdir(home):
        os.unlink(home)
        return
    # Move it aside first: the name is gone at once, the bytes go after.
    trash = tempfile.mkdtemp(prefix=f".student{student}.trash-", dir=wod.students_root)
    os.rename(home, os.path.join(trash, "home"))
    _remove(trash)


_eraser = None
_eraser_lock = threading.Lock()


def _erase_later(path: str) -> None:
    """Free the bytes of a previous home after the swap, off the caller's path.

    The old home already left ``student<N>`` atomically; deleting its files
    is the slowest part of a re-provisioning and nobody waits for it. One
    worker thread does it in order; a process that dies first leaves a
    hidden ``.student<N>.*`` folder that the next provision or erase of N
    removes. :func:`drain` waits for the pending erasures.
    """
    global _eraser
    with _eraser_lock:
        if _eraser is None:
            from concurrent.futures import ThreadPoolExecutor

            _eraser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wod-erase")
        _eraser.submit(shutil.rmtree, path, True)


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


def _copy_skel(skel: str, dst: str) -> None:
    """Regular files and folders of the skeleton; symlinks in it are skipped, never followed."""
    with os.scandir(skel) as it:
        for entry in it:
            out = os.path.join(dst, entry.name)
            if entry.is_symlink():
                log.warning("skeleton %s: symlink skipped", entry.path)
            elif entry.is_dir(follow_symlinks=False):
                os.mkdir(out, 0o755)
                _copy_skel(entry.path, out)
            elif entry.is_file(follow_symlinks=False):
                _copy_file(entry.path, out)


def _chown_tree(top: str, uid: int, gid: int) -> None:
    os.lchown(top, uid, gid)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


_renderers: dict = {}


def default_renderer(wod) -> Renderer:
    """One warm Renderer per setting, shared by every provisioning of this process."""
    key = (bool(wod.strict_undefined), bool(wod.clear_outputs))
    r = _renderers.get(key)
    if r is None:
        r = _renderers.setdefault(key, Renderer(strict_undefined=key[0], clear_outputs=key[1]))
    return r


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
    size, mtime and exec bit; the skeleton's files likewise; the workspace. Editing a workshop changes the key, so an outdated stage is
    never used. The boot id is in it too: a stage is written without fsync
    (like any copy), and only a crash of the machine can lose unsynced
    bytes, which also changes the boot id.
    """
    h = hashlib.sha256()
    h.update(json.dumps([_boot_id(), workshop.name, os.path.realpath(workshop.path), wod.readme_notebook]).encode())
    for rel, target, is_dir in entries:
        if is_dir or is_templated(os.path.basename(rel)):
            h.update(f"{rel}\0{is_dir}\n".encode())
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


def _staged_path(wod, student: int, key: str) -> str:
    return os.path.join(wod.students_root, f".student{student}.staged-{key}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead_staging(path: str) -> bool:
    """A ``.student<N>.staging-<pid>-*`` folder whose process is gone (killed while staging)."""
    try:
        return not _pid_alive(int(path.rsplit(".staging-", 1)[1].split("-", 1)[0]))
    except (IndexError, ValueError):
        return True


def sweep_stages(wod) -> int:
    """Remove what stagers killed mid-way left, for every seat (a seat given since is not staged again); return how many."""
    try:
        with os.scandir(wod.students_root) as it:
            dead = [e.path for e in it if e.name.startswith(".student") and ".staging-" in e.name and _dead_staging(e.path)]
    except FileNotFoundError:
        return 0
    for path in dead:
        _remove(path)
    return len(dead)


def _build(wod, workshop, new: str, entries, renderer: Renderer, variables, part: str, uid, gid) -> None:
    """Fill ``new``: skeleton, ``<WKSHP>/``, the workspace; ``part`` as in ``render_tree``.

    ``"templates"`` fills a stage, which holds the skeleton and the workspace already.
    """
    if part != "templates":
        os.chmod(new, 0o755)
        if wod.skel and os.path.isdir(wod.skel):
            _copy_skel(wod.skel, new)
    renderer.render_tree(
        Path(workshop.path), Path(new) / workshop.name, variables, root=Path(workshop.root), part=part, entries=entries
    )
    if part != "templates":
        wsdir = os.path.join(new, WORKSPACE_DIR)
        os.makedirs(wsdir, 0o755, exist_ok=True)
        with open(os.path.join(wsdir, WORKSPACE_FILE), "w", encoding="utf-8") as f:
            f.write(_workspace(workshop.name, wod.readme_notebook))
    if uid is not None:
        _chown_tree(new, uid, gid if gid is not None else uid)


def stage(wod, workshop, student: int) -> bool:
    """Copy ahead, for a free seat, everything of ``workshop`` that its CREATE will not render.

    A CREATE then only renders the templated files into it and swaps it in
    (:func:`provision`), instead of copying the workshop's every byte while
    the participant waits: the copy is most of a provisioning's cost, and
    all of it for workshops with large pictures or data files. The stage
    is the hidden folder ``.student<N>.staged-<key>`` beside the homes,
    built under another name and renamed when complete, so a stage is
    either whole or absent, and belongs to the service's user until a
    CREATE hands it to the student: no student can write into a stage,
    even one finished after its seat was given. Return False when a
    current stage was there already. Any erase or provisioning of the
    seat removes a stage it does not use.
    """
    _check_workshop(wod, workshop)
    home_path(wod, student)
    root = Path(wod.students_root)
    root.mkdir(parents=True, exist_ok=True)
    entries = source_tree(Path(workshop.path), Path(workshop.root))
    target = _staged_path(wod, student, _stage_key(wod, workshop, entries))
    if os.path.isdir(target):
        return False  # the common case of a periodic look: one walk and a stat per file, no copy
    for old in _stale(wod, student):
        if ".staged-" in old:
            _remove(old)  # an earlier version of the workshop (what killed stagers left: sweep_stages)
    # The pid in the name tells a later stager whether this one still runs.
    tmp = tempfile.mkdtemp(prefix=f".student{student}.staging-{os.getpid()}-", dir=root)
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
) -> Path:
    """Give ``student<N>`` a fresh home: skeleton, ``<WKSHP>/`` rendered, a workspace opening the ReadMeFirst.

    Everything is built in a temporary folder beside the home and swapped in
    at once; on any failure the previous home is left exactly as it was.
    A current stage of the seat (:func:`stage`) is used when there is one:
    then only the templated files are rendered here. ``info`` (a dict, if
    given) gets ``staged``: whether one was.
    """
    renderer = renderer or default_renderer(wod)
    home = home_path(wod, student)
    _check_workshop(wod, workshop)
    root = Path(wod.students_root)
    root.mkdir(parents=True, exist_ok=True)
    entries = source_tree(Path(workshop.path), Path(workshop.root))
    stale = _stale(wod, student)
    new = tempfile.mkdtemp(prefix=f".student{student}.new-", dir=root)
    try:
        staged = False
        if any(".staged-" in p for p in stale):
            try:
                # Onto the empty folder: the stage is ours, or it was not there.
                os.rename(_staged_path(wod, student, _stage_key(wod, workshop, entries)), new)
                staged = True
            except OSError:
                pass
        for leftover in stale:
            _remove(leftover)  # from a process that died mid-way, or an outdated stage (a used one is gone)
        if info is not None:
            info["staged"] = staged
        _build(wod, workshop, new, entries, renderer, variables, "templates" if staged else "all", uid, gid)
        # the check again, right before the swap: the home may have changed meanwhile
        home_path(wod, student)
        if os.path.lexists(home) and not os.path.islink(home) and _exchange(new, str(home)):
            _erase_later(new)  # now holds the previous home, already out of the student's path
        else:
            if os.path.lexists(home):
                old = tempfile.mkdtemp(prefix=f".student{student}.old-", dir=root)
                os.rename(home, os.path.join(old, "home"))
                os.rename(new, home)
                _erase_later(old)
            else:
                os.rename(new, home)
    except BaseException:
        _remove(new)
        raise
    return home
