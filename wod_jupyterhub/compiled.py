"""Compiled scripts (``compile:`` in ``wod.yml``): programs a participant can run but never read.

A workshop may give its participants scripts that hold what they must not
see (a private endpoint's credentials). ``compile: 'login.sh,api.py'``
names them, relative to the workshop's folder. Their sources never reach a
home: in their place each seat gets a small loader, owned by root, mode
``4711``. How the protection comes from the system, and why each piece:

- **Unreadable, so not dumpable.** The loader is execute-only for the
  participant; the kernel makes a process running a file its user cannot
  read non-dumpable: no ``ptrace`` attach, no ``/proc/<pid>/mem``,
  ``environ``, ``fd/`` or core dump. The script's text is in no file the
  participant can read: it lives in ``c.Wod.compiled_dir/scripts`` (root,
  ``0700``), and the loader reads it there.
- **Setuid root, only to read it.** A process traced from its first
  instruction (``strace ./login.sh``) keeps its tracer even when it execs
  an unreadable file: the tracer cannot read its memory but can set its
  registers, so it could make the process write its memory out. A setuid
  program started under a tracer runs without its privilege, so the loader
  reads the script only when its effective uid is root (nothing traces
  it), then drops root for good (``setresuid`` to the participant) before
  anything else; traced or on a ``nosuid`` mount it refuses to run.
- **No child shell with the text in its argv.** ``shc`` runs ``sh -c
  <script>``: the text is in the child's ``/proc/<pid>/cmdline``, which
  anyone may read, and the child, running a readable ``/bin/sh``, is
  dumpable again. The loader instead hands the text to the interpreter in
  a memory file on descriptor 3 (``bash /dev/fd/3``), and runs a private
  copy of the interpreter (``compiled_dir/interpreters``, root, ``0711``),
  execute-only too, so that the interpreter holding the text stays
  non-dumpable. The script's first line (its ``#!``) becomes a prologue
  that closes descriptor 3, so that no program the script runs inherits it;
  line numbers are kept.
- **A clean environment.** The interpreter gets ``PATH`` (system folders
  only), ``HOME``, ``USER``, ``LOGNAME`` and ``LANG``, nothing of the
  caller's: no ``BASH_ENV``, ``ENV``, ``PYTHON*`` or ``LD_*`` that could
  run the participant's code inside the protected process. Python runs
  with ``-I``.

- **Only for a seat, only from its home.** While root, the loader refuses
  unless its caller's real uid is one of the seats' (compiled in) and
  ``/proc/self/exe`` lies in that account's home (a copy moved to
  ``/var/tmp`` runs for no one; a seat's cleanup removes it), and unless
  ``/proc/sys/fs/suid_dumpable`` is 0. It opens the text and the
  interpreter one folder at a time without following links (each folder
  and file root's, writable by no one else) and executes the interpreter
  by that descriptor; the store's folders above must be root's too.
- **Sources kept closed.** A source others may read where it is kept, or
  held under a second name (a link) the seats would get in clear, is a
  blocking problem; so is an interpreter that is not a system one
  (``/usr/bin``, ``/bin``, root's) or a ``#!`` option that prints the text
  (``-x``, ``-v``) or opens a prompt (``-i``). The syntax check runs as
  ``nobody``, on the text as it will run. An edited script's old text and
  loader are removed: a loader left behind says its script is missing.

What the protection does not cover: what the script gives to the programs
it runs. A program started from a readable file (``curl``) is the
participant's to inspect, its command line and environment included: pass
credentials on its standard input or in a here-document
(``curl --config - <<EOF``), never as arguments.

Compiled once per script version (its text, its interpreter) and cached in
``compiled_dir``; a CREATE only copies the loader (17 KB) into the home.
Interpreters: ``sh``, ``dash``, ``bash`` and ``python3`` (the ``#!`` line,
``/usr/bin/env NAME`` included); a script without one runs with ``sh``. A
script missing, with another interpreter, or with a syntax error is a
blocking problem of its workshop (``wod workshops``, ``wod check``,
``api/workshops``), never a failed CREATE. Needs the service to run as root
with ``c.Wod.system_users`` and a C compiler (``cc``).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from .errors import Unprocessable

#: changes when the loader's C source changes: every loader is built again
LOADER_VERSION = "2"
#: the only folders the script's ``PATH`` holds
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
#: a script larger than this is refused (real ones are a few KB)
MAX_SCRIPT_BYTES = 1 << 20


class Interpreter:
    """How one interpreter runs a compiled script: its options, the prologue that closes fd 3, its syntax check."""

    def __init__(self, name: str, prologue: str, options: tuple = (), check: tuple | None = ("-n",), allowed: str = ""):
        self.name, self.prologue, self.options, self.check = name, prologue, options, check
        #: the ``#!`` line's one-letter options it accepts: none that prints the text (``-x``, ``-v``) or opens a prompt (``-i``)
        self.allowed = allowed


_SHELL_PROLOGUE = "exec 3<&-"
INTERPRETERS = {
    "sh": Interpreter("sh", _SHELL_PROLOGUE, allowed="efuC"),
    "dash": Interpreter("dash", _SHELL_PROLOGUE, allowed="efuC"),
    "bash": Interpreter("bash", _SHELL_PROLOGUE, allowed="efuC"),
    "python3": Interpreter("python3", "import os as _wod_os; _wod_os.close(3); del _wod_os", ("-I",), None, allowed="uBOS"),
}
#: where an interpreter's real file must be (root's, not writable by others): never a path a user chose
INTERPRETER_FOLDERS = ("/usr/bin", "/bin")
_OPTION = re.compile(r"-[A-Za-z]+")


class ScriptProblem(Unprocessable):
    """A named script cannot be compiled: missing, unsupported interpreter, syntax error."""

    code = "bad_compiled_script"


# ---------------------------------------------------------------- wod.yml


def scripts_of(meta: dict, ws) -> tuple[str, ...]:
    """The scripts ``compile:`` names (paths relative to the workshop), each checked; problems go to ``ws``.

    ``compile: false`` (or absent) names none; ``compile: 'a.sh,b.sh'`` or a
    list names scripts. A missing or broken script is a blocking problem:
    its seats would get neither the script nor a program. So is a source
    any user may read where it is kept, and one the workshop holds under a
    second name (a link), which its seats would get in clear.
    """
    lowered = {str(k).lower(): k for k in meta}
    key = lowered.get("compile")
    value = meta.get(key) if key is not None else None
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "false", "no")):
        return ()
    if isinstance(value, str):
        names = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        names = [v.strip() for v in value if v.strip()]
    else:
        ws.problem(f"{key} must name the scripts to compile ('a.sh,b.sh' or a list), not {value!r}.", blocking=True)
        return ()
    found = []
    for name in names:
        name = os.path.normpath(name) if name.strip(".") else name
        try:
            script_path(ws, name)
            problem = check_script(ws, name)
        except ScriptProblem as e:
            problem = e.message
        if problem:
            ws.problem(problem, blocking=True)
        else:
            found.append(name)
    for problem in _second_names(ws, found):
        ws.problem(problem, blocking=True)
    return tuple(found)


def script_path(ws, name: str) -> str:
    """The file of script ``name`` in workshop ``ws``; a path leading out of it, or no file, raises :class:`ScriptProblem`."""
    if not name or name.startswith("/") or ".." in Path(name).parts or "\0" in name:
        raise ScriptProblem(f"compile: {name!r} must be a path inside the workshop's folder.")
    path = os.path.join(ws.path, name)
    real, top = os.path.realpath(path), os.path.realpath(ws.path)
    if os.path.commonpath([real, top]) != top or not os.path.isfile(real):
        raise ScriptProblem(f"compile: {ws.name}/{name} is not a file of the workshop.")
    return real


def check_script(ws, name: str) -> str | None:
    """Why script ``name`` of ``ws`` cannot be compiled (a sentence naming it), or None."""
    path = script_path(ws, name)
    st = os.stat(path)
    label = f"{ws.name}/{name}"
    try:
        check_unreadable(path, label)
    except ScriptProblem as e:
        return e.message
    return _check_cached(path, st.st_size, st.st_mtime_ns, label)


def check_unreadable(path: str, label: str) -> None:
    """Raise :class:`ScriptProblem` when any user may read source ``path`` where it is kept.

    Readable means: the file is readable by others and every folder above
    it may be passed by others (``cat <notebooks root>/WKSHP-X/login.sh``
    would print what the seats' programs hide).
    """
    st = os.stat(path)
    if not st.st_mode & stat.S_IROTH:
        return
    folder = os.path.dirname(path)
    while True:
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    raise ScriptProblem(
        f"compile: {label} can be read by every user where it is kept ({path}, mode {st.st_mode & 0o777:04o}): "
        "make it unreadable by others (chmod o-r) or keep the workshop in a folder only the service may pass."
    )


def _second_names(ws, names) -> list[str]:
    """A sentence for each other name (a link, a hard link) under which the workshop holds a compiled script's source."""
    if not names:
        return []
    sources = {}
    for name in names:
        st = os.stat(script_path(ws, name))
        sources[(st.st_dev, st.st_ino)] = name
    named = {os.path.normpath(os.path.join(ws.path, n)) for n in names}
    problems = []
    for folder, dirs, files in os.walk(ws.path):
        for entry in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = os.path.join(folder, entry)
            if path in named:
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            name = sources.get((st.st_dev, st.st_ino))
            if name is not None:
                problems.append(
                    f"compile: {ws.name}/{name} is also in the workshop as {os.path.relpath(path, ws.path)} "
                    "(a link to the same file), which its seats would get in clear: keep the script under one name."
                )
    return problems


@functools.lru_cache(maxsize=512)
def _check_cached(path: str, _size: int, _mtime: int, label: str) -> str | None:
    # Keyed by size and mtime: the catalog is read again every few seconds, the scripts rarely change.
    try:
        source = _read_source(path, label)
        interp, _options, real = parse_shebang(source, label)
        _syntax_check(interp, real, with_prologue(interp, source), label)
    except ScriptProblem as e:
        return e.message
    return None


def _read_source(path: str, label: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_SCRIPT_BYTES + 1)
    if len(data) > MAX_SCRIPT_BYTES:
        raise ScriptProblem(f"compile: {label} is larger than {MAX_SCRIPT_BYTES} bytes.")
    if b"\0" in data:
        raise ScriptProblem(f"compile: {label} is not a text script (it holds a NUL byte).")
    return data


def parse_shebang(source: bytes, label: str) -> tuple[Interpreter, tuple, str]:
    """The script's interpreter, its options from the ``#!`` line, and the interpreter's real path.

    The real path must be a root-owned file no one else may write, in
    :data:`INTERPRETER_FOLDERS`: it is run as root's copy for every seat.
    """
    first = source.split(b"\n", 1)[0].decode("utf-8", "replace") if source.startswith(b"#!") else "#!/bin/sh"
    words = first[2:].split()
    if not words:
        raise ScriptProblem(f"compile: {label} has an empty #! line.")
    if os.path.basename(words[0]) == "env" and len(words) >= 2:
        words = words[1:]
        path = shutil.which(words[0], path=SAFE_PATH)
    else:
        path = words[0] if os.path.isabs(words[0]) else None
    name = os.path.basename(words[0])
    interp = INTERPRETERS.get(_family(name))
    if interp is None:
        raise ScriptProblem(
            f"compile: {label} runs with {name}; compiled scripts run with {', '.join(sorted(INTERPRETERS))}."
        )
    options = tuple(words[1:])
    if any(not _OPTION.fullmatch(o) or not set(o[1:]) <= set(interp.allowed) for o in options):
        allowed = " ".join(f"-{c}" for c in interp.allowed)
        raise ScriptProblem(f"compile: {label}'s #! line may only add the options {allowed} of {interp.name}, not {' '.join(options)!r}.")
    if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise ScriptProblem(f"compile: {label} runs with {words[0]}, which is not installed here.")
    real = os.path.realpath(path)
    st = os.stat(real)
    if (
        os.path.dirname(real) not in INTERPRETER_FOLDERS
        or INTERPRETERS.get(_family(os.path.basename(real))) is None
        or st.st_uid != 0
        or st.st_mode & 0o022
    ):
        raise ScriptProblem(
            f"compile: {label} runs with {words[0]} ({real}); a compiled script's interpreter must be a system one "
            f"in {' or '.join(INTERPRETER_FOLDERS)}, root's and not writable by others."
        )
    return interp, options, real


def _family(name: str) -> str:
    return "python3" if re.fullmatch(r"python3(\.\d+)?", name) else name


def with_prologue(interp: Interpreter, source: bytes) -> bytes:
    """The text as it runs: the ``#!`` line replaced by the prologue closing fd 3, line numbers kept.

    In Python the prologue goes after the docstring and the ``from
    __future__`` imports (which must come first), on the same line.
    """
    prologue = interp.prologue.encode()
    rest = source.split(b"\n", 1)[1] if b"\n" in source else b""
    head = source.startswith(b"#!")
    if interp.check is None:
        after = _python_head_end(source)
        if after is not None:
            lines = source.split(b"\n")
            row, col = after
            lines[row - 1] = lines[row - 1][:col] + b"; " + prologue + lines[row - 1][col:]
            if head:
                lines[0] = b""
            return b"\n".join(lines)
    return prologue + b"\n" + (rest if head else source)


def _python_head_end(source: bytes):
    """(line, byte column) where a Python script's docstring and ``__future__`` imports end, or None without either."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    end = None
    for i, node in enumerate(tree.body):
        docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant) and isinstance(node.value.value, str)
        if docstring or (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            end = (node.end_lineno, node.end_col_offset)
        else:
            break
    return end


def _unprivileged() -> dict:
    """``subprocess.run`` arguments running a child as ``nobody`` when we are root (the syntax check never runs as root)."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam("nobody")
        ids = pw.pw_uid, pw.pw_gid
    except KeyError:
        ids = 65534, 65534
    return {"user": ids[0], "group": ids[1], "extra_groups": [], "cwd": "/"}


def _syntax_check(interp: Interpreter, real: str, text: bytes, label: str) -> None:
    """Check ``text`` (the script as it runs, prologue included) without running it: Python's compiler, ``sh -n`` as nobody."""
    if interp.check is None:  # Python: compiled, never run
        try:
            compile(text, label, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as e:
            where = f" line {e.lineno}" if getattr(e, "lineno", None) else ""
            raise ScriptProblem(f"compile: {label} has a syntax error{where}: {getattr(e, 'msg', e)}.") from None
        return
    try:
        r = subprocess.run(
            [real, *interp.check], input=text, capture_output=True, timeout=20,
            env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"}, **_unprivileged(),
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ScriptProblem(f"compile: {label} could not be checked: {e}.") from None
    if r.returncode != 0:
        said = (r.stderr or r.stdout).decode("utf-8", "replace").strip().splitlines()
        # "bash: line 3: syntax error ..." -> "line 3: syntax error ..."
        detail = re.sub(r"^[^:]*:\s*", "", said[0]) if said else f"{interp.name} -n exited {r.returncode}"
        raise ScriptProblem(f"compile: {label} has a syntax error: {detail}.")


# ---------------------------------------------------------------- the loaders


def excluded(ws) -> set[str]:
    """The relative paths (inside the workshop) a home never gets: the sources of its compiled scripts."""
    return set(getattr(ws, "compile", ()) or ())


def _write_new(path: str, data: bytes, mode: int) -> None:
    """``path`` written whole or not at all (a temporary file renamed), owned by the service's user."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _folders(store: str) -> dict[str, str]:
    """The store's folders, made when missing; a store another user could write into, or swap, is refused.

    Every folder above it must be root's (or the service's) and writable by
    no one else, or sticky (where no one else may rename what is root's):
    else a user could put a tree of their own in its place.
    """
    _check_above(store)
    folders = {"": (store, 0o711), "interpreters": (os.path.join(store, "interpreters"), 0o711)}
    folders.update({k: (os.path.join(store, k), 0o700) for k in ("scripts", "bin")})
    for path, mode in folders.values():
        os.makedirs(path, mode, exist_ok=True)
        st = os.lstat(path)
        if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise Unprocessable(f"c.Wod.compiled_dir: {path} must be a folder of the service's user that no one else can write into.")
        os.chmod(path, mode)
    return {k: v[0] for k, v in folders.items()}


def _check_above(store: str) -> None:
    folder = os.path.dirname(store)
    while True:
        try:
            st = os.lstat(folder)
        except FileNotFoundError:
            st = None  # made by os.makedirs, the service's
        if st is not None and (
            not stat.S_ISDIR(st.st_mode)
            or st.st_uid not in (0, os.geteuid())
            or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX)
        ):
            raise Unprocessable(
                f"c.Wod.compiled_dir: {store} is below {folder}, which another user owns or may write into "
                "(or a link): every folder above the compiled scripts must be root's and writable by no one else."
            )
        parent = os.path.dirname(folder)
        if parent == folder:
            return
        folder = parent


def _private_interpreter(folders, real: str) -> str:
    """An execute-only copy of interpreter ``real`` (so that a process running it is non-dumpable)."""
    with open(real, "rb") as f:
        data = f.read()
    out = os.path.join(folders["interpreters"], f"{os.path.basename(real)}-{hashlib.sha256(data).hexdigest()[:16]}")
    if not os.path.exists(out):
        _write_new(out, data, 0o711)
    return out


def _c_string(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9/._+=:@ -]*", text):
        raise Unprocessable(f"c.Wod.compiled_dir: {text!r} holds characters a compiled script's path may not.")
    return f'"{text}"'


def _loader_source(script: str, interpreter: str, argv0: str, options: tuple, uids: tuple[int, int]) -> str:
    args = ", ".join(_c_string(a) for a in (argv0, *options))
    return (
        _LOADER_C.replace("@SCRIPT@", _c_string(script)).replace("@INTERP@", _c_string(interpreter))
        .replace("@ARGS@", args).replace("@NARGS@", str(1 + len(options))).replace("@PATH@", _c_string(SAFE_PATH))
        .replace("@UID_MIN@", str(int(uids[0]))).replace("@UID_MAX@", str(int(uids[1])))
    )


def seat_uids(wod) -> tuple[int, int]:
    """The uids of ``wod``'s seats, first and last: a loader runs for no other."""
    return wod.uid_base + wod.student_min, wod.uid_base + wod.student_max


def build(store: str, ws, name: str, uids: tuple[int, int], cc: str = "cc") -> str:
    """The loader of script ``name`` of ``ws``, compiled into ``store`` unless already there; its path.

    Its key is the script's place (workshop and name) and a hash of the
    prologued text, the interpreter, the seats' uids and the loader's
    version: a CREATE finds it compiled (a stat), an edited script gets a
    new one, and the previous text and loader of that script are removed
    (a loader left in a home then says its script is missing).
    """
    label = f"{ws.name}/{name}"
    path = script_path(ws, name)
    check_unreadable(path, label)
    source = _read_source(path, label)
    interp, options, real = parse_shebang(source, label)
    body = with_prologue(interp, source)
    _syntax_check(interp, real, body, label)
    folders = _folders(os.path.realpath(store))
    private = _private_interpreter(folders, real)
    place = hashlib.sha256(f"{ws.name}\0{name}".encode()).hexdigest()[:12]
    version = hashlib.sha256(
        b"\0".join([LOADER_VERSION.encode(), private.encode(), " ".join(options).encode(), repr(uids).encode(), body])
    ).hexdigest()[:20]
    key = f"{place}-{version}"
    script = os.path.join(folders["scripts"], key)
    loader = os.path.join(folders["bin"], key)
    if not (os.path.exists(loader) and os.path.exists(script)):
        _write_new(script, body, 0o400)
        _compile_loader(loader, _loader_source(script, private, interp.name, options, uids), label, folders["bin"], cc)
    _prune(folders, place, key)
    return loader


def _compile_loader(loader: str, c_source: str, label: str, where: str, cc: str) -> None:
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        src = os.path.join(tmp, "loader.c")
        with open(src, "w") as f:
            f.write(c_source)
        out = os.path.join(tmp, "loader")
        # Linked dynamically: a setuid program's dynamic loader ignores the LD_* variables (secure mode).
        try:
            r = subprocess.run([cc, "-O2", "-Wall", "-o", out, src], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Unprocessable(f"compile: {label}: the C compiler {cc} cannot run: {e}") from None
        if r.returncode != 0:
            raise Unprocessable(f"compile: {label}: the loader did not compile: {r.stderr.strip()[-500:]}")
        os.chmod(out, 0o711)
        os.rename(out, loader)


def _prune(folders, place: str, key: str) -> None:
    """Remove the texts and loaders of script ``place`` other than ``key``, and those of the older naming."""
    for folder in (folders["scripts"], folders["bin"]):
        for entry in os.listdir(folder):
            if entry != key and (entry.startswith(place + "-") or re.fullmatch(r"[0-9a-f]{32}", entry)):
                try:
                    os.unlink(os.path.join(folder, entry))
                except FileNotFoundError:
                    pass


def build_all(store: str, ws, uids: tuple[int, int]) -> list[tuple[str, str]]:
    """``[(relative path, loader)]`` for every script ``ws`` compiles, for seats of ``uids``."""
    return [(name, build(store, ws, name, uids)) for name in getattr(ws, "compile", ()) or ()]


def install(loaders, workshop_dir: str) -> None:
    """Put each loader at its script's place in a home's ``workshop_dir``: root's, mode ``4711``.

    The folders are the student's already (the tree was handed over):
    the file is created by name in its folder's descriptor, never through a
    link, and anything of that name there is replaced.
    """
    for rel, loader in loaders:
        folder, base = os.path.split(os.path.join(workshop_dir, rel))
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            try:
                os.unlink(base, dir_fd=dfd)
            except FileNotFoundError:
                pass
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700, dir_fd=dfd)
            try:
                with open(loader, "rb") as f:
                    data = f.read()
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchown(fd, 0, 0)
                os.fchmod(fd, 0o4711)  # after the chown, which clears the setuid bit
            finally:
                os.close(fd)
        finally:
            os.close(dfd)


def check_can_install(ws, uid) -> None:
    """A CREATE of a workshop with compiled scripts needs root and real accounts: else a sentence."""
    if getattr(ws, "compile", ()) and (uid is None or os.geteuid() != 0):
        raise Unprocessable(
            f"{ws.name} compiles scripts (compile: in wod.yml): that needs the service to run as root with "
            "c.Wod.system_users, so that the participant's uid cannot read them."
        )


_LOADER_C = r"""/* The loader of one compiled script (wod-jupyterhub, compiled.py says why each step). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

static const char SCRIPT[] = @SCRIPT@;
static const char INTERP[] = @INTERP@;
static const char *const ARGS[] = {@ARGS@};
static const uid_t UID_MIN = @UID_MIN@, UID_MAX = @UID_MAX@;

static void die(const char *what) {
    /* Never the script: only what failed. */
    fprintf(stderr, "%s\n", what);
    _exit(126);
}

/* path opened as root one component at a time, following no link: every folder root's and
   writable by no one else (or sticky), the file root's, regular, writable by no one else. */
static int open_trusted(const char *path) {
    char buf[PATH_MAX];
    struct stat st;
    if (path[0] != '/' || strlen(path) >= sizeof buf) return -1;
    strcpy(buf, path);
    int dfd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    char *p = buf + 1, *slash;
    while (dfd >= 0 && (slash = strchr(p, '/')) != NULL) {
        *slash = '\0';
        int next = openat(dfd, p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        close(dfd);
        dfd = next;
        if (dfd >= 0 && (fstat(dfd, &st) != 0 || st.st_uid != 0 || ((st.st_mode & 022) && !(st.st_mode & S_ISVTX)))) {
            close(dfd);
            dfd = -1;
        }
        p = slash + 1;
    }
    if (dfd < 0) return -1;
    int fd = openat(dfd, p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    close(dfd);
    if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != 0 || (st.st_mode & 022))) {
        close(fd);
        fd = -1;
    }
    return fd;
}

int main(int argc, char **argv) {
    uid_t ruid = getuid(), euid = geteuid(), r, e, s;
    if (euid != 0)
        die("this program refuses to run traced, on a nosuid mount or without its setuid bit");
    /* A setuid process may dump core, or be dumped, when suid_dumpable is not 0. */
    char dumpable = '?';
    int dfd = open("/proc/sys/fs/suid_dumpable", O_RDONLY | O_CLOEXEC);
    if (dfd < 0 || read(dfd, &dumpable, 1) != 1 || dumpable != '0')
        die("this program refuses to run while /proc/sys/fs/suid_dumpable is not 0");
    close(dfd);
    /* Only a seat's student, and only from that student's home: a copy moved elsewhere runs for no one. */
    if (ruid < UID_MIN || ruid > UID_MAX)
        die("this program runs only for the workshop's participants");
    struct passwd *pw = getpwuid(ruid);
    static char exe[PATH_MAX + 1];
    ssize_t n = readlink("/proc/self/exe", exe, PATH_MAX);
    char *home = pw && pw->pw_dir ? realpath(pw->pw_dir, NULL) : NULL;
    if (n <= 0 || !home || strcmp(home, "/") == 0) die("this program runs only from its participant's home");
    exe[n] = '\0';
    size_t hl = strlen(home);
    if (strncmp(exe, home, hl) != 0 || exe[hl] != '/') die("this program runs only from its participant's home");
    int fd = open_trusted(SCRIPT);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size > (1 << 20))
        die("this program's script is missing: ask the workshop's admin");
    int ifd = open_trusted(INTERP);
    if (ifd < 0) die("this program's interpreter is missing: ask the workshop's admin");
    size_t size = (size_t)st.st_size, got = 0;
    char *text = malloc(size + 1);
    if (!text) die("out of memory");
    while (got < size) {
        ssize_t k = read(fd, text + got, size - got);
        if (k <= 0) die("this program's script cannot be read");
        got += (size_t)k;
    }
    close(fd);
    /* Root for good no more: the script runs as the participant. */
    if (setresuid(ruid, ruid, ruid) != 0 || getresuid(&r, &e, &s) != 0 || r != ruid || e != ruid || s != ruid)
        die("cannot drop root");
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    int mfd = memfd_create("script", 0);
    if (mfd < 0) die("memfd_create failed");
    for (got = 0; got < size;) {
        ssize_t k = write(mfd, text + got, size - got);
        if (k <= 0) die("cannot hand the script over");
        got += (size_t)k;
    }
    memset(text, 0, size);
    free(text);
    if (lseek(mfd, 0, SEEK_SET) != 0) die("lseek failed");
    if (mfd != 3) {
        if (dup2(mfd, 3) != 3) die("dup2 failed");
        close(mfd);
    }
    static char henv[PATH_MAX + 8], user[300], logname[310];
    snprintf(henv, sizeof henv, "HOME=%s", pw->pw_dir);
    snprintf(user, sizeof user, "USER=%s", pw->pw_name ? pw->pw_name : "");
    snprintf(logname, sizeof logname, "LOGNAME=%s", pw->pw_name ? pw->pw_name : "");
    char *env[] = {"PATH=" @PATH@, henv, user, logname, "LANG=C.UTF-8", NULL};
    int nargs = @NARGS@;
    char **av = calloc((size_t)(nargs + argc + 2), sizeof(char *));
    if (!av) die("out of memory");
    int i = 0;
    for (int k = 0; k < nargs; k++) av[i++] = (char *)ARGS[k];
    av[i++] = "/dev/fd/3";
    for (int k = 1; k < argc; k++) av[i++] = argv[k];
    av[i] = NULL;
    /* The file opened and checked as root, executed by its descriptor: no path to swap meanwhile. */
    fexecve(ifd, av, env);
    die("the script's interpreter cannot run");
    return 126;
}
"""
