"""Compiled scripts (``compile:`` in ``wod.yml``): programs a participant can run but never read."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import Unprocessable

#: changes when the loader's C source changes: every loader is built again
LOADER_VERSION = "1"
#: the only folders the script's ``PATH`` holds
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
#: a script larger than this is refused (real ones are a few KB)
MAX_SCRIPT_BYTES = 1 << 20


class Interpreter:
    """How one interpreter runs a compiled script: its options, the prologue that closes fd 3, its syntax check."""

    def __init__(self, name: str, prologue: str, options: tuple = (), check: tuple | None = ("-n",)):
        self.name, self.prologue, self.options, self.check = name, prologue, options, check


_SHELL_PROLOGUE = "exec 3<&-"
INTERPRETERS = {
    "sh": Interpreter("sh", _SHELL_PROLOGUE),
    "dash": Interpreter("dash", _SHELL_PROLOGUE),
    "bash": Interpreter("bash", _SHELL_PROLOGUE),
    "python3": Interpreter("python3", "import os as _wod_os; _wod_os.close(3); del _wod_os", ("-I",), None),
}
_OPTION = re.compile(r"-[A-Za-z]+")


class ScriptProblem(Unprocessable):
    """A named script cannot be compiled: missing, unsupported interpreter, syntax error."""

    code = "bad_compiled_script"


# ---------------------------------------------------------------- wod.yml


def scripts_of(meta: dict, ws) -> tuple[str, ...]:
    """The scripts ``compile:`` names (paths relative to the workshop), each checked; problems go to ``ws``.

    ``compile: false`` (or absent) names none; ``compile: 'a.sh,b.sh'`` or a
    list names scripts. A missing or broken script is a blocking problem:
    its seats would get neither the script nor a program.
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
    return _check_cached(path, st.st_size, st.st_mtime_ns, f"{ws.name}/{name}")


@functools.lru_cache(maxsize=512)
def _check_cached(path: str, _size: int, _mtime: int, label: str) -> str | None:
    # Keyed by size and mtime: the catalog is read again every few seconds, the scripts rarely change.
    try:
        source = _read_source(path, label)
        interp, _options, _ = parse_shebang(source, label)
        _syntax_check(interp, source, label)
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
    """The script's interpreter, its options from the ``#!`` line, and the interpreter's real path."""
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
    family = "python3" if re.fullmatch(r"python3(\.\d+)?", name) else name
    interp = INTERPRETERS.get(family)
    if interp is None:
        raise ScriptProblem(
            f"compile: {label} runs with {name}; compiled scripts run with {', '.join(sorted(INTERPRETERS))}."
        )
    options = tuple(words[1:])
    if any(not _OPTION.fullmatch(o) for o in options):
        raise ScriptProblem(f"compile: {label}'s #! line may only add options such as -e, not {' '.join(options)!r}.")
    if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise ScriptProblem(f"compile: {label} runs with {words[0]}, which is not installed here.")
    return interp, options, os.path.realpath(path)


def _syntax_check(interp: Interpreter, source: bytes, label: str) -> None:
    if interp.check is None:  # Python: compiled, never run
        try:
            compile(source, label, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as e:
            where = f" line {e.lineno}" if getattr(e, "lineno", None) else ""
            raise ScriptProblem(f"compile: {label} has a syntax error{where}: {getattr(e, 'msg', e)}.") from None
        return
    _interp, _options, path = parse_shebang(source, label)
    try:
        r = subprocess.run(
            [path, *interp.check], input=source, capture_output=True, timeout=20,
            env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"},
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
    """The store's folders, made when missing; a store another user could write into is refused."""
    folders = {"": (store, 0o711), "interpreters": (os.path.join(store, "interpreters"), 0o711)}
    folders.update({k: (os.path.join(store, k), 0o700) for k in ("scripts", "bin")})
    for path, mode in folders.values():
        os.makedirs(path, mode, exist_ok=True)
        st = os.lstat(path)
        if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise Unprocessable(f"c.Wod.compiled_dir: {path} must be a folder of the service's user that no one else can write into.")
        os.chmod(path, mode)
    return {k: v[0] for k, v in folders.items()}


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


def _loader_source(script: str, interpreter: str, argv0: str, options: tuple) -> str:
    args = ", ".join(_c_string(a) for a in (argv0, *options))
    return _LOADER_C.replace("@SCRIPT@", _c_string(script)).replace("@INTERP@", _c_string(interpreter)).replace(
        "@ARGS@", args
    ).replace("@NARGS@", str(1 + len(options))).replace("@PATH@", _c_string(SAFE_PATH))


def build(store: str, ws, name: str, cc: str = "cc") -> str:
    """The loader of script ``name`` of ``ws``, compiled into ``store`` unless already there; its path.

    Its key is the prologued text, the interpreter and the loader's version:
    a CREATE finds it compiled (a stat), an edited script gets a new one.
    """
    label = f"{ws.name}/{name}"
    source = _read_source(script_path(ws, name), label)
    interp, options, real = parse_shebang(source, label)
    _syntax_check(interp, source, label)
    folders = _folders(store)
    private = _private_interpreter(folders, real)
    if source.startswith(b"#!"):
        body = interp.prologue.encode() + b"\n" + source.split(b"\n", 1)[1] if b"\n" in source else interp.prologue.encode() + b"\n"
    else:
        body = interp.prologue.encode() + b"\n" + source
    key = hashlib.sha256(b"\0".join([LOADER_VERSION.encode(), private.encode(), " ".join(options).encode(), body])).hexdigest()[:32]
    script = os.path.join(folders["scripts"], key)
    loader = os.path.join(folders["bin"], key)
    if os.path.exists(loader) and os.path.exists(script):
        return loader
    _write_new(script, body, 0o400)
    with tempfile.TemporaryDirectory(dir=folders["bin"]) as tmp:
        src = os.path.join(tmp, "loader.c")
        with open(src, "w") as f:
            f.write(_loader_source(script, private, interp.name, options))
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
    return loader


def build_all(store: str, ws) -> list[tuple[str, str]]:
    """``[(relative path, loader)]`` for every script ``ws`` compiles."""
    return [(name, build(store, ws, name)) for name in getattr(ws, "compile", ()) or ()]


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

static void die(const char *what) {
    /* Never the script: only what failed. */
    fprintf(stderr, "%s\n", what);
    _exit(126);
}

int main(int argc, char **argv) {
    uid_t ruid = getuid(), euid = geteuid(), r, e, s;
    if (euid != 0)
        die("this program refuses to run traced, on a nosuid mount or without its setuid bit");
    int fd = open(SCRIPT, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != 0 || st.st_size > (1 << 20))
        die("this program's script is missing: ask the workshop's admin");
    size_t size = (size_t)st.st_size, got = 0;
    char *text = malloc(size + 1);
    if (!text) die("out of memory");
    while (got < size) {
        ssize_t n = read(fd, text + got, size - got);
        if (n <= 0) die("this program's script cannot be read");
        got += (size_t)n;
    }
    close(fd);
    /* Root for good no more: the script runs as the participant. */
    if (setresuid(ruid, ruid, ruid) != 0 || getresuid(&r, &e, &s) != 0 || r != ruid || e != ruid || s != ruid)
        die("cannot drop root");
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    int mfd = memfd_create("script", 0);
    if (mfd < 0) die("memfd_create failed");
    for (got = 0; got < size;) {
        ssize_t n = write(mfd, text + got, size - got);
        if (n <= 0) die("cannot hand the script over");
        got += (size_t)n;
    }
    memset(text, 0, size);
    free(text);
    if (lseek(mfd, 0, SEEK_SET) != 0) die("lseek failed");
    if (mfd != 3) {
        if (dup2(mfd, 3) != 3) die("dup2 failed");
        close(mfd);
    }
    struct passwd *pw = getpwuid(ruid);
    static char home[4200], user[300], logname[310];
    snprintf(home, sizeof home, "HOME=%s", pw && pw->pw_dir ? pw->pw_dir : "/");
    snprintf(user, sizeof user, "USER=%s", pw && pw->pw_name ? pw->pw_name : "");
    snprintf(logname, sizeof logname, "LOGNAME=%s", pw && pw->pw_name ? pw->pw_name : "");
    char *env[] = {"PATH=" @PATH@, home, user, logname, "LANG=C.UTF-8", NULL};
    int nargs = @NARGS@;
    char **av = calloc((size_t)(nargs + argc + 2), sizeof(char *));
    if (!av) die("out of memory");
    int i = 0;
    for (int k = 0; k < nargs; k++) av[i++] = (char *)ARGS[k];
    av[i++] = "/dev/fd/3";
    for (int k = 1; k < argc; k++) av[i++] = argv[k];
    av[i] = NULL;
    execve(INTERP, av, env);
    die("the script's interpreter cannot run");
    return 126;
}
"""
