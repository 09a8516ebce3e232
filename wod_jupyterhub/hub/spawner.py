"""``WodSpawner``: each student's server runs in its seat's home and opens the workshop's ReadMeFirst."""

import asyncio
import os
import pwd
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner, set_user_setuid
from jupyterhub.utils import random_port
from traitlets import Bool, CaselessStrEnum, Integer, List, TraitError, Unicode, default, validate

from ..config import Wod
from ..limits import parse_size
from ..procfs import start_time
from ..seats import cgroups, keyrings, seatlog, seatns
from . import warmstart
from .seatspawner import SeatSpawnerMixin

# (cgroup_root, cgroup_parent) whose missing parts this hub process already warned about
_WARNED: set = set()
# Why servers start without the warm template, each said once per hub process.
_WARM_REASONS: set = set()


# The same-origin warning is logged once per hub process, at the first spawn.
_warned_same_origin = False

#: the servers' runtime folder (connection files, kernels' sockets) inside the seat's private /tmp
RUNTIME_DIR = "/tmp/jupyter-runtime"


def python_command(cmd: list[str], flags: list[str]) -> list[str]:
    """``cmd`` with ``flags`` right after its interpreter when it runs Python (``python``, ``python3.11`` …); else as is."""
    if not cmd or not os.path.basename(cmd[0]).startswith("python"):
        return list(cmd)
    # The interpreter's own options end at the first word that is not one (-m, -c, a script).
    options = next((i for i, word in enumerate(cmd[1:], 1) if not word.startswith("-") or word in ("-m", "-c")), len(cmd))
    missing = [f for f in flags if f not in cmd[1:options]]
    return [cmd[0], *missing, *cmd[1:]]


SINGLEUSER = "jupyterhub.singleuser"


def without_imports(cmd: list[str], modules: list[str]) -> list[str]:
    """``cmd`` running ``python -m jupyterhub.singleuser`` so that ``modules`` cannot be imported; else as is.

    Marked missing in ``sys.modules`` before anything is imported, so the
    libraries that use them only if present (``try: import …``) go without.
    """
    if not modules or not cmd or not os.path.basename(cmd[0]).startswith("python"):
        return list(cmd)
    for i in range(1, len(cmd) - 1):
        if cmd[i] == "-m" and cmd[i + 1] == SINGLEUSER:
            launcher = (
                f"import sys; sys.modules.update(dict.fromkeys({sorted(modules)!r})); import runpy; "
                f"runpy.run_module({SINGLEUSER!r}, run_name='__main__', alter_sys=True)"
            )
            return [*cmd[:i], "-c", launcher, *cmd[i + 2:]]
        if not cmd[i].startswith("-"):  # a script or another module: not ours to change
            break
    return list(cmd)


def singleuser_options(cmd: list[str]) -> tuple[list[str], list[str]] | None:
    """(the interpreter's options, the words after the module) when ``cmd`` is ``python [options] -m jupyterhub.singleuser …``."""
    if not cmd or not os.path.basename(cmd[0]).startswith("python"):
        return None
    for i in range(1, len(cmd) - 1):
        if cmd[i] == "-m":
            return (cmd[1:i], cmd[i + 2:]) if cmd[i + 1] == SINGLEUSER else None
        if not cmd[i].startswith("-") or cmd[i] == "-c":
            return None
    return None


def current_umask() -> int:
    """This process's umask, read without changing it (another thread may be creating files)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


class WodSpawner(SeatSpawnerMixin, LocalProcessSpawner):
    """Local process spawner that knows about seats, homes and workshops: the local runtime's spawner."""

    shell = Unicode("/bin/bash", help="SHELL given to the student's terminals in single-user mode.").tag(config=True)

    private_tmp = Bool(
        help="""Start each server in a mount and IPC namespace of its own (as systemd's PrivateTmp and PrivateIPC do).

        The seat then has its own ``/tmp``, ``/var/tmp``, ``/dev/shm`` and
        ``/run/lock`` (tmpfs of ``private_tmp_size`` and ``private_tmp_inodes``,
        ``nosuid``, gone with the seat's last process), its own POSIX message
        queues and System V objects, its kernels' sockets in a folder only
        its uid can enter (``c.WodSpawner.kernel_transport``), the students'
        folder ``nosuid``, and cannot gain privileges through a setuid
        program (except a seat whose workshop has compiled scripts: see
        ``runs_compiled_scripts``). Defaults to ``c.Wod.system_users`` when the hub runs as root
        (it needs root); see the README's security model.
        """,
    ).tag(config=True)

    @default("private_tmp")
    def _private_tmp_default(self):
        return self._system_users() and os.geteuid() == 0

    private_tmp_size = Unicode(
        "1G",
        help="""Most bytes each of a seat's private temporary folders holds (``512M``, ``2G``).

        tmpfs keeps them in memory, charged to the seat's control group, so
        they count against its ``mem_limit`` too.
        """,
    ).tag(config=True)

    @validate("private_tmp_size", "log_max_bytes", "log_rate")
    def _valid_size(self, proposal):
        try:
            parse_size(proposal["value"])
        except ValueError as e:
            raise TraitError(f"WodSpawner.{proposal['trait'].name}: {e}") from None
        return proposal["value"]

    private_tmp_inodes = Integer(
        200_000,
        help="Most files and folders each of a seat's private temporary folders holds.",
    ).tag(config=True)

    @validate("private_tmp_inodes", "log_backups")
    def _valid_count(self, proposal):
        if proposal["value"] < (1 if proposal["trait"].name == "private_tmp_inodes" else 0):
            raise TraitError(f"WodSpawner.{proposal['trait'].name} must be a positive number, not {proposal['value']}")
        return proposal["value"]

    kernel_transport = CaselessStrEnum(
        ["ipc", "tcp"],
        help="""How a server talks to its kernels: ``ipc`` (Unix sockets) or ``tcp`` (ports on loopback).

        On ``tcp`` any process of the machine can subscribe to a kernel's
        output port and read what it runs and prints (messages are signed,
        not encrypted). ``ipc`` puts the sockets in the seat's runtime folder,
        which only its uid can enter (in the seat's private ``/tmp`` with
        ``private_tmp``). Defaults to ``ipc`` in system-users mode.
        """,
    ).tag(config=True)

    @default("kernel_transport")
    def _kernel_transport_default(self):
        return "ipc" if self._system_users() else "tcp"

    python_flags = List(
        Unicode(),
        ["-P", "-s"],
        help="""Flags given to the server's Python when ``cmd`` runs one (its first word is ``python…``).

        ``-P``: the working folder is not put on the import path; ``-s``: the
        user's site-packages (``~/.local/lib/python3.X``, with its ``.pth``
        files) is not either. Together with the server's neutral working
        folder (``/``), nothing in a student's home is imported by the server
        (``~/jupyterhub/__init__.py`` would replace the hub's own): only what
        ``disable_user_config`` allows. Flags are not inherited, so kernels
        still import from the notebook's folder and ``pip install --user``.
        """,
    ).tag(config=True)

    skip_imports = List(
        Unicode(),
        ["rfc3987_syntax"],
        help="""Modules the server runs without although installed, when ``cmd`` is ``python -m jupyterhub.singleuser``.

        For optional dependencies that the server does not need and that cost
        each start dearly: ``rfc3987_syntax`` (pulled in by jsonschema's
        format checks, which jupyter_events loads) builds a grammar when
        imported, about as much CPU as the rest of the server's imports
        together; without it jsonschema leaves ``iri`` formats unchecked.
        Kernels and terminals are not affected. Empty to import everything.
        """,
    ).tag(config=True)

    warm_start = Bool(
        help="""Start each server from a warm template instead of as a new process.

        The template (a process of the hub's user, root in system-users mode)
        runs ``cmd``'s interpreter with its flags and has imported the server's
        code once; for each server it forks a child that becomes the seat, as a
        new process does (its control group, private namespace, uid, groups and
        keyring, ``/`` as working folder, its log, its environment alone), then
        runs ``jupyterhub.singleuser``. A start then costs a fraction of the
        CPU, and the imported code's pages are shared between the seats until
        one writes to them. The template never reads a seat's request (each
        child reads its own), so nothing of one seat reaches another: see the
        README's security model. Needs ``cmd`` to be ``python … -m
        jupyterhub.singleuser`` with ``-P`` and ``-s`` in ``python_flags``,
        and neither ``shell_cmd`` nor ``popen_kwargs``; otherwise, or when the
        template cannot start, servers start as new processes (the hub logs
        why). Defaults to on (Linux).
        """,
    ).tag(config=True)

    @default("warm_start")
    def _warm_start_default(self):
        return sys.platform.startswith("linux")

    log_folder = Unicode(
        "seat-logs",
        help="""Folder (made 0700; relative to the hub's working folder) of each seat's log, ``student<N>.log``.

        A server's and its kernels' output goes there, never to the hub's
        own stdout or stderr, rotated at ``log_max_bytes`` and kept in
        ``log_backups`` older files.
        """,
    ).tag(config=True)

    @validate("log_folder")
    def _abs_log_folder(self, proposal):
        return str(Path(proposal["value"]).expanduser().absolute())

    log_max_bytes = Unicode("10M", help="Size at which a seat's log is rotated (``10M``).").tag(config=True)
    log_backups = Integer(2, help="Rotated logs kept per seat (``student<N>.log.1`` …); 0 keeps none.").tag(config=True)
    log_rate = Unicode(
        "1M",
        help="Bytes a second of a seat's output copied into its log; a server that prints faster waits (and only it).",
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # The seat's cgroup.procs files the server joins before it execs (None: no group).
        self._procs_files = None
        self._namespace = None

    @default("cmd")
    def _cmd_default(self):
        # The hub's own interpreter: jupyterhub-singleuser need not be on PATH.
        return [sys.executable, "-m", "jupyterhub.singleuser"]

    def _system_users(self) -> bool:
        # A default may be asked for before __init__ has made self.wod.
        return (getattr(self, "wod", None) or Wod(config=self.config)).system_users

    @default("disable_user_config")
    def _disable_user_config_default(self):
        # In system-users mode a student owns ~/.jupyter: a jupyter_server_config.py there could
        # serve any page under the hub's origin. JupyterHub then tells the server to skip it.
        return self._system_users()

    @default("env_keep")
    def _env_keep_default(self):
        return super()._env_keep_default() + ["LANGUAGE", "TZ"]

    def warn_same_origin(self) -> None:
        """Once per hub: in system-users mode without ``subdomain_host``, every server shares the hub's origin."""
        global _warned_same_origin
        if _warned_same_origin or not self.wod.system_users or (getattr(self.user, "settings", None) or {}).get("subdomain_host"):
            return
        _warned_same_origin = True
        self.log.warning(
            "c.JupyterHub.subdomain_host is empty in system-users mode: every student's server shares the hub's "
            "web origin, so code a student runs there can act in the browser of whoever opens its pages. "
            "Set c.JupyterHub.subdomain_host (and cookie_host_prefix_enabled) in production."
        )

    async def prepare_seat(self, assignment: dict) -> None:
        """The local runtime's part before the start: the seat's control group."""
        self._procs_files = await asyncio.to_thread(self.prepare_group, assignment)

    # -- the seat's control group ------------------------------------------

    def hierarchy(self) -> cgroups.Hierarchy | None:
        """The host's control groups, or None when ``c.Wod.cgroups`` is off; warns once per hub about what is missing."""
        if not self.wod.cgroups:
            return None
        h = cgroups.shared(self.wod.cgroup_root, self.wod.cgroup_parent)
        key = (self.wod.cgroup_root, self.wod.cgroup_parent)
        if key not in _WARNED:
            _WARNED.add(key)
            problem = h.weigh(self.wod.student_max - self.wod.student_min + 1)
            if problem:
                self.log.warning("The seats' parent group keeps the CPU weight of one process (%s)", problem)
            if h.missing:
                # The full sentence is the service's warning at start; the hub names what it starts without.
                self.log.warning(
                    "Servers start without these per-seat limits: %s (see the warning at start; c.Wod.cgroup_root = %s)",
                    ", ".join(cgroups.WHAT[c] for c in h.missing), self.wod.cgroup_root,
                )
            else:
                self.log.info("Seats are limited through control groups %s under %s", h.version, h.root)
        return h

    def prepare_group(self, assignment: dict) -> list[str] | None:
        """Make the seat's group with its limits (as root, before the server starts); the files the server joins."""
        h = self.hierarchy()
        if h is None or not h.available:
            return None
        group = h.seat(self.user.name)
        try:
            outcome = group.create(self._limits)
        except OSError as e:
            self.log.warning("No control group for %s (%s): its server runs without limits", self.user.name, e)
            return None
        if outcome["failed"]:
            self.log.warning("Limits of %s not all set: %s", self.user.name, outcome["failed"])
        self.log.info("%s runs in control group %s: %s", self.user.name, group.name, self._limits.describe())
        return group.procs_files()

    # -- the process -------------------------------------------------------

    def runs_compiled_scripts(self, workshop: str) -> bool:
        """Whether the seat's workshop has ``compile:`` scripts, whose setuid loaders its server must be able to run."""
        ws = self.seat_workshop(workshop)
        return bool(ws is not None and ws.compile)

    def seat_namespace(self) -> seatns.SeatNamespace | None:
        """The private namespaces the server enters (``private_tmp``), built before the fork; None without."""
        if not self.private_tmp:
            return None
        uid = pwd.getpwnam(self.user.name).pw_uid if self.wod.system_users else os.geteuid()
        runtime = RUNTIME_DIR if self.kernel_transport == "ipc" else None
        # A compiled script's loader is setuid root: the seat's own terminal and kernels
        # must be able to run it, so such a seat keeps setuid (its temporary folders stay nosuid).
        allow = bool(self._assignment) and self.runs_compiled_scripts(self._assignment["workshop"])
        return seatns.build(
            self.private_tmp_size, self.private_tmp_inodes, self.wod.students_root,
            allow_setuid_programs=allow, runtime_dir=runtime, uid=uid,
        )

    def log_path(self) -> str:
        """The seat's log file (the current one; rotated ones end in ``.1``, ``.2`` …)."""
        return os.path.join(self.log_folder, f"{self.user.name}.log")

    def open_output(self) -> int | None:
        """The write end of the pipe into the seat's log (None: no log could be opened; the output is dropped)."""
        try:
            return seatlog.open_seat_log(
                self.log_folder, self.user.name, parse_size(self.log_max_bytes), self.log_backups, parse_size(self.log_rate)
            )
        except OSError as e:
            self.log.warning("No log for %s (%s): its server's output is dropped", self.user.name, e)
            return None

    async def start(self):
        # The server's interpreter with the safe flags, whatever cmd was configured.
        cmd = python_command(self.cmd, self.python_flags)
        self._namespace = await asyncio.to_thread(self.seat_namespace)
        out = await asyncio.to_thread(self.open_output)
        try:
            if self.warm_template_problem(cmd) is None:
                try:
                    return await self.start_warm(cmd, out)
                except warmstart.Unavailable as e:
                    self.log.warning("The warm template is unavailable (%s): the server of %s starts as a new process", e, self.user.name)
            return await self.start_process(cmd, out)
        finally:
            if out is not None:
                os.close(out)

    async def start_process(self, cmd: list[str], out: int | None):
        """Start the server as a new process (``Popen``, then :meth:`make_preexec_fn`), its output on ``out``."""
        configured, configured_cmd = self.popen_kwargs, self.cmd
        self.cmd = without_imports(cmd, self.skip_imports)
        # Never the hub's stdout and stderr: a student could forge its lines and fill its disk.
        target = subprocess.DEVNULL if out is None else out
        self.popen_kwargs = {**configured, "stdin": subprocess.DEVNULL, "stdout": target, "stderr": target}
        try:
            address = await super().start()
            # The hub's own unreaped child: its pid cannot have been reused yet.
            self.pid_start = start_time(self.pid)
            return address
        except subprocess.SubprocessError:
            self.log.error("The server of %s could not start; its log says why: %s", self.user.name, self.log_path())
            raise
        finally:
            self.popen_kwargs, self.cmd = configured, configured_cmd

    def warm_template_problem(self, cmd: list[str]) -> str | None:
        """Why this server cannot start from the warm template (said once per hub); None when it can."""
        if not self.warm_start:
            return "c.WodSpawner.warm_start is off"
        parts = singleuser_options(cmd)
        if parts is None:
            problem = "c.WodSpawner.cmd does not run python -m jupyterhub.singleuser"
        elif not {"-P", "-s"} <= set(parts[0]):
            problem = "c.WodSpawner.python_flags lacks -P or -s (a new process's import path would differ)"
        elif self.shell_cmd or self.popen_kwargs:
            problem = "c.Spawner.shell_cmd or c.LocalProcessSpawner.popen_kwargs is set"
        else:
            return None
        if problem not in _WARM_REASONS:
            _WARM_REASONS.add(problem)
            self.log.info("Servers start as new processes, not from the warm template: %s", problem)
        return problem

    def seat_request(self, cmd: list[str]) -> dict:
        """What the template's child needs to become this seat and run its server (everything Popen would get)."""
        extra = singleuser_options(cmd)[1]
        args = [*extra, *self.get_args()]
        user = None
        if self.wod.system_users:
            entry = pwd.getpwnam(self.user.name)
            user = {"uid": entry.pw_uid, "gid": entry.pw_gid, "groups": os.getgrouplist(self.user.name, entry.pw_gid)}
        return {
            # The command a new process would run: the child runs it instead should the template not fit the seat.
            "argv": [*without_imports(cmd, self.skip_imports), *self.get_args()],
            "args": args,
            "env": self.get_env(),
            "procs_files": self._procs_files or [],
            "namespace": self._namespace.to_json() if self._namespace is not None else None,
            "user": user,
            "umask": current_umask(),
        }

    async def start_warm(self, cmd: list[str], out: int | None):
        """Start the server as a child of the warm template; raises :class:`warmstart.Unavailable` to fall back."""
        if self.port == 0:
            self.port = random_port()
        request = self.seat_request(cmd)
        template = warmstart.shared(cmd[0], singleuser_options(cmd)[0], sorted(self.skip_imports), warmstart.startup_env(request["env"]))
        self.log.info("Spawning %s from the warm template", shlex.join(request["argv"]))
        try:
            pid, started = await asyncio.to_thread(template.spawn, request, out)
        except warmstart.SeatFailed as e:
            self.log.error("The server of %s could not start (%s); its log says why: %s", self.user.name, e, self.log_path())
            raise RuntimeError(f"The server of {self.user.name} could not start: {e}") from None
        self.proc = None
        self.pid, self.pid_start = pid, started
        return (self.ip or "127.0.0.1", self.port)

    # The server's pid alone names any process once the server has ended and been reaped (the template
    # reaps its children at once): poll and stop, which signal it as root, check its start time first.
    pid_start: int | None = None

    def get_state(self):
        state = super().get_state()
        if self.pid and self.pid_start is not None:
            state["pid_start"] = self.pid_start
        return state

    def load_state(self, state):
        super().load_state(state)
        self.pid_start = state.get("pid_start", self.pid_start)

    def clear_state(self):
        super().clear_state()
        self.pid_start = None

    async def _signal(self, sig):
        """Signal the server's process, if ``self.pid`` still names it; False when it is gone (nothing signalled)."""
        if self.pid_start is None:
            return await super()._signal(sig)  # a state saved before start times were kept
        try:
            # A pidfd holds on to the process it was opened for: checked, it is the one signalled.
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return False
        try:
            if start_time(self.pid) != self.pid_start:
                return False
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            return False
        finally:
            os.close(fd)
        return True

    def make_preexec_fn(self, name):
        procs_files = self._procs_files or []
        setuid = set_user_setuid(name, chdir=False) if self.wod.system_users else None
        namespace = self._namespace

        def preexec():
            # Still root here: join the seat's group before anything else runs,
            # so every process the server ever forks is born inside it.
            cgroups.join(procs_files)
            if namespace is not None:
                try:
                    namespace.enter()
                except OSError as e:
                    # Popen says only "Exception occurred in preexec_fn": the reason goes to the seat's log.
                    os.write(2, f"The seat's private namespace could not be made: {e}\n".encode())
                    raise
            if setuid is not None:
                setuid()
                keyrings.join_new_session()
            # A neutral working folder: the home (the server's root_dir) is not on its import path.
            os.chdir("/")

        return preexec

    def get_env(self):
        env = super().get_env()
        # What the seat really gets (a workshop may change the defaults); jupyter-resource-usage shows MEM_LIMIT.
        if self._limits is not None:
            for key, value in (("MEM_LIMIT", self._limits.memory), ("CPU_LIMIT", self._limits.cpu)):
                if value is None:
                    env.pop(key, None)
                else:
                    env[key] = str(value)
        return env

    def user_env(self, env):
        env["USER"] = self.user.name
        env["HOME"] = self.home
        env["SHELL"] = self.shell
        if self.private_tmp and self.kernel_transport == "ipc":
            # Made 0700 by the seat's namespace; a Unix socket's path must stay under 108 bytes.
            env["JUPYTER_RUNTIME_DIR"] = RUNTIME_DIR
        return env

    def get_args(self):
        args = list(super().get_args())
        if not self.wod.system_users and os.geteuid() == 0 and "--allow-root" not in args:
            args.append("--allow-root")
        if self.kernel_transport == "ipc":
            args.append("--KernelManager.transport=ipc")
        return args

