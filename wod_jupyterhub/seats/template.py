"""A warm template of the seats' servers: the server's code imported once, as root; one fork per seat, which becomes it.

The hub runs this module with the interpreter and flags a seat's server
runs with (its ``c.WodSpawner.cmd``), and keeps the other end of its
channel. For each server the hub sends a fresh socket over the channel;
the template forks at once and its parent only closes that socket and
reaps children. It never reads a request: neither it nor any later child
ever holds a seat's token, environment or files. The child reads the
request on its socket and becomes the seat exactly as a server started by
``Popen`` does (its control group, its namespace, its uid, groups and
keyring, ``/``, a new session, only its descriptors 0-2), takes the seat's
environment wholesale, and runs ``jupyterhub.singleuser`` as
``python -m`` would.

What seats share is what a fork shares: the pages of the code imported
here, copied as soon as a seat writes to them. Modules that read a seat's
settings when imported (``jupyterhub`` itself) are never imported here,
and an environment variable read by an import here that the seat sets
otherwise makes the child start afresh (``exec``), so the server behaves
as a fresh process would. Only the standard library and this package's
seat modules are imported besides the server's own packages.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import random
import signal
import socket
import sys
import tempfile

from . import cgroups, keyrings, seatns

#: what a server loads, imported once by the template when the seats' Python has it (their own imports follow)
PRELOAD = (
    "jupyter_server.serverapp",
    "jupyter_server.services.contents.largefilemanager",
    "jupyter_server.services.kernels.kernelmanager",
    "jupyter_server.services.sessions.sessionmanager",
    "jupyter_server.gateway.managers",
    "jupyter_server.extension.serverextension",
    # the handlers jupyter_server imports by name when it starts
    "jupyter_server.kernelspecs.handlers",
    "jupyter_server.nbconvert.handlers",
    "jupyter_server.services.api.handlers",
    "jupyter_server.services.config.handlers",
    "jupyter_server.services.contents.handlers",
    "jupyter_server.services.events.handlers",
    "jupyter_server.services.kernels.handlers",
    "jupyter_server.services.kernelspecs.handlers",
    "jupyter_server.services.nbconvert.handlers",
    "jupyter_server.services.security.handlers",
    "jupyter_server.services.sessions.handlers",
    "jupyter_server.services.shutdown",
    "jupyter_server.view.handlers",
    "jupyter_core.migrate",
    "jupyter_lsp.virtual_documents_shadow",
    "tornado.platform.asyncio",
    "jinja2.ext",
    "jupyterlab",
    "jupyterlab.labapp",
    "jupyterlab_server",
    "jupyter_lsp",
    "jupyter_lsp.serverextension",
    "jupyter_server_terminals",
    "jupyter_server_terminals.app",
    "notebook_shim",
    "notebook_shim.nbserver",
    "jupyter_resource_usage",
    # jupyterhub.singleuser's own dependencies (not jupyterhub: see FRESH)
    "sqlalchemy.orm",
    "sqlalchemy.ext.declarative",
    "alembic",
    "alembic.command",
    "alembic.config",
    "cryptography.fernet",
    "unittest.mock",
    "runpy",
    "aiohttp",
    "requests",
    "prometheus_client",
    "pamela",
    "certipy",
    "oauthlib.oauth2",
    "IPython",
)

#: packages the template never imports and a seat's server imports afresh: ``jupyterhub`` reads the seat's
#: settings (its URL prefix, its API's address, which application to run) when imported; this package is the
#: hub's copy here, and the server loads its own (the session bar's extension) from its own path
FRESH = ("jupyterhub", "wod_jupyterhub")

#: variables that imports here read and every seat sets otherwise, which :func:`refresh` makes the server see
#: as the seat's (any other variable an import read that the seat sets otherwise: the child starts afresh)
REFRESHED = frozenset({"USER", "HOME", "XDG_DATA_HOME"})

PR_SET_DUMPABLE = 4
PR_SET_MM, PR_SET_MM_ARG_START, PR_SET_MM_ARG_END, PR_SET_MM_ENV_START, PR_SET_MM_ENV_END = 35, 8, 9, 10, 11
SINGLEUSER = "jupyterhub.singleuser"
REQUEST_MAX = 1 << 22

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
# The seat's command line and environment as /proc shows them (kept alive: the kernel reads them there).
_shown: list = []


class _Watched(type(os.environ)):
    """``os.environ`` while the template imports: notes every variable looked at."""

    reads: set = set()
    recording = False

    def __getitem__(self, key):
        if _Watched.recording:
            _Watched.reads.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        if _Watched.recording:
            _Watched.reads.add(key)
        return super().__contains__(key)


def preload(modules=PRELOAD) -> dict:
    """Import ``modules`` (those the interpreter has); the variables the imports read, with their values here."""
    real = os.environ
    # The same variables, watched: only while importing (a module that kept it sees them too).
    os.environ = _Watched(real._data, real.encodekey, real.decodekey, real.encodevalue, real.decodevalue)  # noqa: B003
    _Watched.recording = True
    try:
        for name in modules:
            if name.split(".")[0] in FRESH:
                raise ValueError(f"the template must not import {name}")
            try:
                importlib.import_module(name)
            except ImportError:
                pass  # not in the seats' Python: the server does without it too
    finally:
        _Watched.recording = False
        os.environ = real  # noqa: B003
    leaked = [m for m in sys.modules if m.split(".")[0] == "jupyterhub"]
    if leaked:
        raise RuntimeError(f"an import of the template loaded {leaked[0]}, which reads each seat's settings")
    return {key if isinstance(key, str) else os.fsdecode(key): os.environ.get(key) for key in _Watched.reads}


def refresh() -> None:
    """What imports here computed from the template's uid, home and user, computed again as the seat's."""
    # send2trash keeps the uid and the trash folder (from $HOME) it saw when imported; reloaded in
    # place, its functions (already bound elsewhere) read the recomputed globals.
    if "send2trash.plat_other" in sys.modules:
        importlib.reload(sys.modules["send2trash.plat_other"])
    # wsgiref's handlers keep a copy of the whole environment (prometheus_client imports them).
    handlers = sys.modules.get("wsgiref.handlers")
    if handlers is not None:
        handlers.BaseHandler.os_environ = handlers.read_environ()
    # jupyter_client's Session takes $USER as its default when its module is imported.
    session = sys.modules.get("jupyter_client.session")
    if session is not None:
        _set_default(session.Session, "username", os.environ.get("USER", "username"))
    # JupyterLab's settings and workspaces folders default to ~/.jupyter/lab/… as $HOME was at its import.
    lab = sys.modules.get("jupyterlab.labapp")
    if lab is not None:
        commands = sys.modules["jupyterlab.commands"]
        _set_default(lab.LabApp, "user_settings_dir", commands.get_user_settings_dir())
        _set_default(lab.LabApp, "workspaces_dir", commands.get_workspaces_dir())


def _set_default(cls, name: str, value) -> None:
    """Make ``value`` the default of trait ``name`` of ``cls``, also where traitlets keeps it for new instances."""
    cls.class_traits()[name].default_value = value
    values = getattr(cls, "_static_immutable_initial_values", None)
    if isinstance(values, dict) and name in values:
        values[name] = value


def _reap(signum, frame) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(channel: socket.socket, seen: dict) -> None:
    """The template's loop: for each socket the hub sends, fork; the parent closes it, the child becomes a seat.

    Returns in a child (which then runs its server and exits) and in the
    template once the hub has closed its end (the hub is gone).
    """
    signal.signal(signal.SIGCHLD, _reap)
    channel.sendall(b"ready")
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(channel, 16, 1)
        except InterruptedError:
            continue
        if not msg and not fds:
            return
        if not fds:
            continue
        pid = os.fork()
        if pid == 0:
            channel.close()
            seat(socket.socket(fileno=fds[0]), seen)
            return
        os.close(fds[0])


def _send(conn: socket.socket, **message) -> None:
    conn.sendall(json.dumps(message).encode())


def seat(conn: socket.socket, seen: dict) -> None:
    """In the child: read the request, become the seat, then run its server (returns when the server ends)."""
    try:
        # The signals as at the template's start (its imports set none: see main), its reaper gone.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        conn.settimeout(60)
        data, fds, _flags, _addr = socket.recv_fds(conn, REQUEST_MAX, 1)
        request = json.loads(data)
        _send(conn, pid=os.getpid())
        # The seat's output from here on, as Popen gives it: stdin /dev/null, stdout and stderr its log.
        null = os.open(os.devnull, os.O_RDWR)
        out = fds[0] if fds else null
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        become(request)
    except BaseException as e:
        # Still root: never the interpreter's shutdown (the template's atexit handlers), only this child's end.
        try:
            os.write(2, f"The seat's server could not be started: {e}\n".encode())
            _send(conn, error=str(e))
        finally:
            os._exit(1)
    _send(conn, ok=True)
    conn.close()
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    if request.get("user"):
        # As after an exec: the seat's uid may look at its own server, as at any process it runs; only now
        # that nothing of the template's (the hub's socket, its descriptors) is left in it.
        _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    # The seat's environment, and nothing of the template's.
    env = request["env"]
    os.environ.clear()
    os.environ.update(env)
    stale = sorted(k for k, v in seen.items() if env.get(k) != v and k not in REFRESHED)
    if stale:
        # An import here read a variable this seat sets otherwise: only a fresh process sees it as it is.
        os.write(2, f"Started afresh: the warm template read {', '.join(stale)} otherwise.\n".encode())
        argv = request["argv"]
        os.execve(argv[0], argv, env)
    refresh()
    for name in [m for m in sys.modules if m.split(".")[0] in FRESH]:
        del sys.modules[name]
    forget_template()
    sys.argv = ["-c", *request["args"]]
    import runpy

    runpy.run_module(SINGLEUSER, run_name="__main__", alter_sys=True)


def forget_template() -> None:
    """Give the seat its own secrets where the fork copied the template's: random's state, multiprocessing's key."""
    random.seed()
    tempfile.tempdir = None
    process = sys.modules.get("multiprocessing.process")
    if process is not None:
        process.current_process().authkey = os.urandom(32)


def show(argv: list[str], env: dict) -> None:
    """Make ``/proc/<pid>/cmdline`` (and ``environ``) the seat's, as after an exec; best effort.

    ``ps`` and the tools of the seat (and of an admin) see its server's
    command. With ``CAP_SYS_RESOURCE`` the kernel points both at new
    copies; without it (a container may drop it) the command line is
    written over the template's own (see ``ROOM`` on the hub's side), and
    ``environ`` stays the template's start environment, which holds
    nothing of any seat.
    """
    cmdline = b"".join(os.fsencode(w) + b"\0" for w in argv)
    environ = b"".join(os.fsencode(f"{k}={v}") + b"\0" for k, v in env.items()) or b"\0"
    try:
        _point(PR_SET_MM_ARG_START, PR_SET_MM_ARG_END, cmdline)
        _point(PR_SET_MM_ENV_START, PR_SET_MM_ENV_END, environ)
    except OSError:
        start, end = _current(PR_SET_MM_ARG_START), _current(PR_SET_MM_ARG_END)
        room = end - start
        ctypes.memmove(start, cmdline[: room - 1].ljust(room, b"\0"), room)


def _point(start: int, end: int, data: bytes) -> None:
    buffer = ctypes.create_string_buffer(data, len(data))
    _shown.append(buffer)
    address = ctypes.addressof(buffer)
    # The kernel keeps start <= end at each step: move the end first when the new area lies above.
    for option, value in sorted(((start, address), (end, address + len(data))), reverse=address > _current(start)):
        if _libc.prctl(PR_SET_MM, option, value, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_SET_MM): {os.strerror(ctypes.get_errno())}")


def _current(option: int) -> int:
    # /proc/self/stat's fields 48-51: arg_start, arg_end, env_start, env_end.
    fields = open("/proc/self/stat").read().rpartition(")")[2].split()
    return int(fields[{PR_SET_MM_ARG_START: 45, PR_SET_MM_ARG_END: 46, PR_SET_MM_ENV_START: 47}[option]])


def become(request: dict) -> None:
    """Turn this (root) process into the seat, in the order the ``Popen`` path follows; raises OSError."""
    os.setsid()
    os.umask(request["umask"])
    show(request["argv"], request["env"])
    # Its group first, so every process the server ever forks is born inside it.
    cgroups.join(request["procs_files"])
    if request.get("namespace"):
        seatns.SeatNamespace.from_json(request["namespace"]).enter()
    user = request.get("user")
    if user:
        os.setgid(user["gid"])
        os.setgroups(user["groups"])
        os.setuid(user["uid"])
        dropped(user)
        keyrings.join_new_session()
    os.chdir("/")


def dropped(user: dict) -> None:
    """Check this process is the seat's user through and through, with no capability left; raises OSError."""
    ids = {"uids": (os.getresuid(), user["uid"]), "gids": (os.getresgid(), user["gid"])}
    for what, (found, wanted) in ids.items():
        if set(found) != {wanted}:
            raise OSError(f"the server's process kept other {what} (real, effective, saved: {found})")
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    for cap in ("CapPrm", "CapEff", "CapAmb"):
        if int(status[cap], 16):
            raise OSError(f"the server's process kept capabilities ({cap} {status[cap].strip()})")


def unsafe_path(paths: list[str]) -> str | None:
    """Why one of ``paths`` (the interpreter, the folders it imports from) might be changed by another user than root.

    Each must be root's and not writable by its group or others, and so
    must every folder above it (one with the sticky bit may be writable by
    all: no one else can rename what root keeps there); None when all are.
    """
    for path in paths:
        real = os.path.realpath(path or ".")
        for i, folder in enumerate([real, *_parents(real)]):
            try:
                st = os.stat(folder)
            except FileNotFoundError:
                continue  # created only by whoever may write the folder above, checked next
            if st.st_uid != 0:
                return f"{folder} belongs to uid {st.st_uid}, not root"
            if st.st_mode & 0o022 and not (i > 0 and st.st_mode & 0o1000):
                return f"{folder} is writable by its group or others (mode {st.st_mode & 0o7777:o})"
    return None


def _parents(path: str) -> list[str]:
    parents = []
    while (parent := os.path.dirname(path)) != path:
        parents.append(parent)
        path = parent
    return parents


def main(argv=None) -> None:
    """``<python> -c <boot> <channel fd> <module,…> <room>``: mark the modules missing, import the server's code, serve.

    ``room``: blanks, where a child writes its seat's command line.
    """
    argv = sys.argv[1:] if argv is None else argv
    channel = socket.socket(fileno=int(argv[0]))
    # As the seat's launcher does (c.WodSpawner.skip_imports), before anything is imported.
    sys.modules.update(dict.fromkeys(filter(None, argv[1].split(","))))
    # This is the seats' interpreter, run as root: only if no one but root can change what it runs.
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    problem = unsafe_path([sys.executable, package, *sys.path])
    if problem:
        channel.sendall(f"refused: {problem}".encode())
        return
    handlers = {s: signal.getsignal(s) for s in signal.valid_signals()}
    seen = preload()
    changed = [signal.Signals(s).name for s in handlers if signal.getsignal(s) != handlers[s]]
    if changed:
        raise RuntimeError(f"an import of the template set a handler for {changed[0]}")
    # A fork copies only the thread that forks: another thread's locks would stay held in every seat.
    threads = os.listdir("/proc/self/task")
    if len(threads) != 1:
        raise RuntimeError(f"an import of the template started a thread ({len(threads)} run)")
    # The imported objects in a generation the collector never visits (nor unfreezes): their pages stay shared.
    gc.freeze()
    serve(channel, seen)
