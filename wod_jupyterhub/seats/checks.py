"""Running a step's check (or its solution) for a seat: a child process as the seat's uid, in its group, bounded.

The service never runs a check itself: :func:`run` starts a child Python
running :func:`_main` and reads one line of JSON back.
The child (still root) joins the seat's control group, enters a namespace
built as the seat's server's is (``seatns``: private temporary folders, its
own IPC, the students' folder ``nosuid``, no new privileges), then drops to
the seat's uid *without an exec*: the kernel marks a process whose
credentials changed not dumpable, so none of the participant's processes
(same uid) can attach to it, read its memory or write to its pipe. Only
then does it run the author's function. A check that hangs is killed at
its timeout with its process group; one that crashes, prints without end
or never answers is a failed check with a sentence, never a stuck seat.

:func:`run` is the one place that starts a check, so it can move behind
another runtime's ``exec`` (a container's) unchanged for its callers.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
from collections import namedtuple
from pathlib import Path

#: what the child may print back (its one line of JSON)
MAX_ANSWER = 64 * 1024
#: the longest message a check's answer keeps
MAX_MESSAGE = 1000
CHECK, SOLVE = "check", "solve"
#: the only folders on a check's PATH
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
PR_SET_DUMPABLE = 4
#: the interpreter whose standard library every account may read, when this process's is closed to them
SYSTEM_PYTHON = "/usr/bin/python3"
# The child imports this module as root (from wherever the package is), then runs the check as the seat:
# its package folder goes last on the path, so the interpreter's own standard library comes first.
_BOOT = "import sys; sys.path.append(sys.argv[1]); from wod_jupyterhub.seats.checks import _main; _main()"
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def readable_by_all(path: str) -> bool:
    """Whether any account may read ``path`` (a folder): it and each folder above it open to others."""
    path = os.path.realpath(path)
    try:
        if not os.stat(path).st_mode & 0o005 == 0o005:
            return False
        while path != "/":
            path = os.path.dirname(path)
            if not os.stat(path).st_mode & 0o001:
                return False
    except OSError:
        return False
    return True


def default_python() -> str:
    """The Python that runs checks: this one when every account may read its standard library, else the system's.

    A check imports what it needs after it dropped to the seat's uid, from
    the interpreter's standard library; a Python installed under ``/root``
    (pyenv) would refuse it every module not loaded yet.
    """
    import sysconfig

    if readable_by_all(sysconfig.get_paths()["stdlib"]) or not os.access(SYSTEM_PYTHON, os.X_OK):
        return sys.executable
    return SYSTEM_PYTHON


# The child imports this module too, before it runs the check: what only the parent needs (subprocess,
# selectors; a namedtuple, not a dataclass) is imported where it is used, and the child pays for none of it.
class Outcome(namedtuple("Outcome", "passed message seconds")):
    """What one run answered: passed or not, the sentence the participant reads, how long it took."""

    __slots__ = ()

    def to_json(self) -> dict:
        return {"passed": self.passed, "message": self.message, "seconds": round(self.seconds, 3)}


def run(
    source: str, function: str, *, file: str, seat: dict, mode: str = CHECK, uid: int | None = None,
    procs_files=(), namespace: dict | None = None, timeout: float = 20.0, memory: int | None = 512 * 1024**2,
    python: str | None = None,
) -> Outcome:
    """Run ``function`` of the rendered check ``source`` for ``seat`` in a child process (blocking).

    ``seat``: what the function is given (``student``, ``home``, ``folder``,
    ``workshop``, ``variables``). ``uid``: the seat's account (None: this
    process's, when students run as the hub's account). ``procs_files``:
    the seat's control group to join (:meth:`.cgroups.SeatGroup.procs_files`).
    ``namespace``: the arguments of :func:`.seatns.build` (root only).
    ``python``: the interpreter of the child (default: :func:`default_python`).
    """
    import subprocess

    started = time.monotonic()
    order = {
        "source": source, "function": function, "file": file, "seat": seat, "mode": mode, "uid": uid,
        "procs_files": list(procs_files), "namespace": namespace, "memory": memory, "cpu": int(timeout) + 1,
    }
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}
    try:
        child = subprocess.Popen(
            [python or default_python(), "-I", "-c", _BOOT, _PACKAGE_PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, cwd="/", start_new_session=True, close_fds=True,
        )
    except OSError as e:
        return Outcome(False, f"The check could not start: {e.strerror or e}.", time.monotonic() - started)
    try:
        try:
            child.stdin.write(json.dumps(order).encode())
            child.stdin.close()
        except OSError:
            pass  # the child died at once; its missing answer says so below
        line = _read_line(child.stdout, started + timeout)
    finally:
        _end(child)
    seconds = time.monotonic() - started
    if line is None:
        return Outcome(False, f"The check did not answer within {timeout:g} seconds: it was stopped.", seconds)
    try:
        answer = json.loads(line)
        return Outcome(bool(answer["passed"]), str(answer["message"])[:MAX_MESSAGE], seconds)
    except (ValueError, KeyError, TypeError):
        return Outcome(False, "The check ended without an answer (it crashed).", seconds)


def _read_line(stream, deadline: float) -> bytes | None:
    """The child's first line, read until ``deadline``; None when it never came (b"" when the child ended silent)."""
    import selectors

    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return None
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                return buf
            buf += chunk
            if b"\n" in buf:
                return buf.split(b"\n", 1)[0]
            if len(buf) > MAX_ANSWER:
                return b""


def _end(child) -> None:
    """The child (a ``subprocess.Popen``) and whatever it left in its process group killed; the child reaped."""
    import subprocess

    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    child.stdout.close()
    try:
        child.wait(5)
    except subprocess.TimeoutExpired:  # a process in the D state: reaped by the next wait of the interpreter
        pass


def for_seat(wod, workshop, step, n: int, *, renderer, hostname=None, mode: str = CHECK, timeout: float = 20.0,
             memory: int | None = 512 * 1024**2, private_tmp: bool | None = None, python: str | None = None) -> Outcome:
    """Run ``step``'s check (or, ``mode=SOLVE``, its solution) of ``workshop`` for seat ``n`` (blocking).

    The check file is rendered for the seat from the workshop's own copy
    (never the home's); the seat's group is joined when the hub made one;
    ``private_tmp`` (default: as root in system-users mode) gives the
    child a namespace built as the seat server's is.
    """
    from ..errors import WodError
    from ..workshops.variables import template_variables
    from . import cgroups

    function = step.function if mode == CHECK else step.solution
    try:
        # A check never sees the seat's password: it inspects state, not credentials.
        variables = template_variables(wod, workshop, n, "", hostname=hostname)
        source = renderer.render_file(Path(workshop.path) / step.file, step.file, variables)
    except (WodError, OSError) as e:  # a render error, a variables file that cannot be read
        return Outcome(False, f"The check could not be prepared: {getattr(e, 'message', None) or e}", 0.0)
    uid = wod.uid_base + n if wod.system_users else None
    procs = cgroups.seat_procs_files(wod, n)
    if private_tmp is None:
        private_tmp = bool(wod.system_users) and os.geteuid() == 0
    namespace = None
    if private_tmp:
        namespace = {
            "size": "64M", "inodes": 10000, "students_root": str(Path(wod.students_root).absolute()),
            "allow_setuid_programs": False,
        }
    home = wod.home(n)
    seat = {
        "student": n, "home": str(home), "folder": str(home / workshop.name), "workshop": workshop.name,
        "variables": {k: v for k, v in variables.items() if k != "PASSSTU" and isinstance(v, (str, int, float, bool))},
    }
    return run(
        source, function, file=step.file, seat=seat, mode=mode, uid=uid, procs_files=procs, namespace=namespace,
        timeout=timeout, memory=memory, python=python,
    )


# ---------------------------------------------------------------- the child


class SeatInfo:
    """What a check function is given: ``student``, ``home``, ``folder`` (the workshop's, in the home), ``workshop``, ``variables``."""

    def __init__(self, data: dict):
        self.student = data["student"]
        self.home = Path(data["home"])
        self.folder = Path(data["folder"])
        self.workshop = data["workshop"]
        self.variables = dict(data.get("variables") or {})

    def __repr__(self):
        return f"<seat {self.student} {self.workshop}>"


def _become(order: dict) -> None:
    """Join the seat's group, enter its namespace, drop to its uid (in the child, as root when given a uid)."""
    import resource

    # Imported only when used: a check that joins no group and enters no namespace pays for neither.
    if order["procs_files"]:
        from . import cgroups

        cgroups.join(order["procs_files"])
    if order["namespace"]:
        from . import seatns

        seatns.build(**order["namespace"]).enter()
    # A solution may leave a process running (the step's server): no CPU limit of its own then.
    cpu = order["cpu"] if order["mode"] == CHECK else None
    for limit, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, order["memory"])):
        if value:
            resource.setrlimit(limit, (value, value))
    uid = order["uid"]
    if uid is not None and uid != os.geteuid():
        import pwd

        entry = pwd.getpwuid(uid)
        os.initgroups(entry.pw_name, entry.pw_gid)
        os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
        os.setresuid(uid, uid, uid)
        os.environ.update(USER=entry.pw_name, LOGNAME=entry.pw_name)
    # Changed credentials make a process not dumpable already; said here for the service's own uid too.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    os.environ["HOME"] = order["seat"]["home"]
    try:
        os.chdir(order["seat"]["folder"])
    except OSError:
        os.chdir("/")


def _verdict(value) -> tuple[bool, str]:
    """A function's return value as (passed, message): None or True pass; a text or False fail."""
    if value is None or value is True:
        return True, "Done."
    if isinstance(value, tuple) and len(value) == 2:
        return bool(value[0]), str(value[1])
    if value is False:
        return False, "Not done yet."
    return False, str(value) or "Not done yet."


def _main() -> None:
    answer = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    order = json.loads(sys.stdin.buffer.read())
    for fd in (0, 1, 2):  # what the check prints is not its answer
        os.dup2(devnull, fd)
    try:
        _become(order)
    except OSError as e:
        result = (False, f"The check could not enter the seat: {e.strerror or e}.")
    else:
        result = _call(order)
    passed, message = result
    os.write(answer, (json.dumps({"passed": passed, "message": message[:MAX_MESSAGE]}) + "\n").encode())
    os._exit(0)


def _call(order: dict) -> tuple[bool, str]:
    try:
        code = compile(order["source"], order["file"], "exec")
        module = {"__name__": "wod_check", "__file__": order["file"]}
        exec(code, module)  # noqa: S102 - the workshop author's check, as the seat's uid
        function = module[order["function"]]
        value = function(SeatInfo(order["seat"]))
        if order["mode"] == SOLVE:
            return True, "Solved."
        return _verdict(value)
    except AssertionError as e:
        return False, str(e) or "Not done yet."
    except MemoryError:
        return False, "The check ran out of memory."
    except BaseException as e:  # noqa: BLE001 - any failure of the author's code is a failed check with a sentence
        return False, f"The check failed to run: {e.__class__.__name__}: {str(e)[:300]}"
