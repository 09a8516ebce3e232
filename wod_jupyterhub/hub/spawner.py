"""``WodSpawner``: each student's server runs in its seat's home and opens the workshop's ReadMeFirst."""

import asyncio
import os
import pwd
import subprocess
import sys
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner, set_user_setuid
from jupyterhub.utils import maybe_future, url_path_join
from tornado import web
from traitlets import Bool, CaselessStrEnum, Integer, List, TraitError, Unicode, default, validate

from ..config import Wod, student_number
from ..errors import WodError
from ..limits import Limits, limits_from_meta, parse_size
from ..seats import cgroups, completion, completion_worker, keyrings, seatlog, seatns
from ..store.models import Completion, Store
from ..workshops.catalog import find_workshop, load_catalog, parse_workshop_name
from . import internals

# (cgroup_root, cgroup_parent) whose missing parts this hub process already warned about
_WARNED: set = set()


def server_token_ids(user, generation: int) -> set:
    """Ids of the API tokens the hub issued to ``user``'s servers that run for seat ``generation``.

    ``user``: the hub's ``User`` (None: no server of it in this hub). The
    ``WodAuthenticator`` keeps these tokens, and no other, when it ends a
    user's sessions: recognised by what the hub itself knows, never by a
    token's note (users write their own: a personal token noted "Server
    at …" must end with the session like any other). A ``WodSpawner``
    records the id of its token and the generation it was started for in
    its state (kept across hub restarts); only a server started for the
    current generation keeps its token, so a server left from a previous
    participant loses its access to the hub too.
    """
    keep = set()
    for spawner in internals.spawners(user):
        token_id = getattr(spawner, "server_token_id", None)
        if token_id is not None and spawner.active and getattr(spawner, "seat_generation", None) == generation:
            keep.add(token_id)
    return keep


#: the name of the ``wod`` service among the hub's services
SERVICE_NAME = "wod"
#: the server extension of the session bar's routes, enabled in every seat's server that knows the service
SESSION_EXTENSION = "wod_jupyterhub.lab.extension"

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


def workshop_folder(workshop: str) -> str:
    """The folder a booked workshop lives in: a ``CHLG-<Name>`` request renders into ``WKSHP-<Name>``."""
    return parse_workshop_name(workshop)[0]


# The same-origin warning is logged once per hub process, at the first spawn.
_warned_same_origin = False


class WodSpawner(LocalProcessSpawner):
    """Local process spawner that knows about seats, homes and workshops."""

    start_url = Unicode(
        "/lab/tree/{workshop}/{readme}",
        help="""Where a student's browser lands when the server starts.

        ``{workshop}`` is the workshop folder (``WKSHP-<Name>``, also for a
        challenge) and ``{readme}`` is ``c.Wod.readme_notebook``.
        """,
    ).tag(config=True)

    shell = Unicode("/bin/bash", help="SHELL given to the student's terminals in single-user mode.").tag(config=True)

    service_url = Unicode(
        help="""The ``wod`` service's internal URL, ending in ``/``, that a seat's server reaches it at.

        Given to the server as ``$WOD_SERVICE_URL``; the server's session bar
        routes (the ``wod_jupyterhub.lab.extension`` server extension, enabled with it)
        forward the participant's JupyterLab to the service's ``api/seat``
        there, with the server's own token. Defaults to the ``url`` of the
        hub's service named ``wod`` (``c.JupyterHub.services``) and its
        prefix (``http://127.0.0.1:10101/services/wod/``). Empty: no session bar.
        """,
    ).tag(config=True)

    @default("service_url")
    def _service_url_default(self):
        hub = self.config.JupyterHub
        for service in hub.get("services", None) or []:
            if service.get("name") == SERVICE_NAME and service.get("url"):
                return service["url"].rstrip("/") + url_path_join(hub.get("base_url", None) or "/", "services", SERVICE_NAME) + "/"
        return ""

    pids_limit = Integer(
        512,
        allow_none=True,
        help="""Most processes (and threads) a seat may run at once: its server, kernels, terminals and all they fork.

        A fork bomb stops there instead of exhausting the machine's pids. A
        Jupyter server with a kernel uses about 30 (threads count); the
        default leaves room for a workshop's own tools. None for no limit.
        Enforced through the seat's control group (``c.Wod.cgroups``); a
        workshop may ask for more in its ``wod.yml`` (``limits: {processes: N}``).
        """,
    ).tag(config=True)

    @validate("pids_limit")
    def _valid_pids_limit(self, proposal):
        return self._checked_limit("pids", proposal["value"])

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

    # JupyterHub's own limits get defaults that share a 2-core class machine fairly.
    @default("mem_limit")
    def _mem_limit_default(self):
        return 2 * 1024**3

    @default("cpu_limit")
    def _cpu_limit_default(self):
        return 1.0

    @validate("mem_limit")
    def _valid_mem_limit(self, proposal):
        return self._checked_limit("memory", proposal["value"])

    @validate("cpu_limit")
    def _valid_cpu_limit(self, proposal):
        return self._checked_limit("cpu", proposal["value"])

    @staticmethod
    def _checked_limit(field, value):
        if value is not None:
            try:
                Limits(**{field: value})
            except ValueError as e:
                raise TraitError(f"WodSpawner: {e}") from None
        return value

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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.wod = Wod(config=self.config)
        self._assignment = None
        # The id (not the secret) of the API token the hub issued to this server: WodAuthenticator keeps
        # that token, and no other, when it ends the user's sessions (a note says nothing: users write them).
        self.server_token_id = None
        # The seat's cgroup.procs files the server joins before it execs (None: no group).
        self._procs_files = None
        self._limits = None
        self._workshop = None  # (folder, catalog entry) of this start's seat
        self._namespace = None
        # Set at the stop: True when the server was started ahead and no browser ever reached it.
        self._never_opened = False

    @property
    def store(self) -> Store:
        # One engine per hub process, shared with the authenticator.
        return Store.shared(self.wod.db_url)

    @property
    def number(self):
        return student_number(self.user.name)

    @property
    def home(self) -> str:
        return str(self.wod.home(self.number))

    # -- before the start ------------------------------------------------

    def load_assignment(self) -> dict:
        """The seat's current assignment, or a clear refusal."""
        n = self.wod.seat(self.user.name)
        if n is None:
            raise web.HTTPError(403, f"{self.user.name} is not a workshop seat of this hub, so it has no server here.")
        row = self.store.student(n)
        if row is None or not row.active or not row.workshop:
            raise web.HTTPError(403, f"{self.user.name} has no workshop booked at the moment, so its server cannot start.")
        if not os.path.isdir(self.home):
            raise web.HTTPError(
                409,
                f"The home of {self.user.name} is missing ({self.home}); the workshop was not provisioned."
                " Ask the organizers to book the seat again.",
            )
        if self.wod.system_users:
            self.check_account(n)
        return {"student": n, "customer": row.customer, "workshop": row.workshop, "generation": row.generation}

    def check_account(self, n: int) -> None:
        """In system-users mode the Linux account must exist with the expected uid."""
        name, uid = self.user.name, self.wod.uid_base + n
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise web.HTTPError(409, f"The Linux account {name} does not exist; an admin must run `wod users create` (as root).") from None
        if entry.pw_uid != uid:
            raise web.HTTPError(409, f"The Linux account {name} has uid {entry.pw_uid}, not {uid} (uid_base + {n}); fix the account or c.Wod.uid_base.")

    def apply_assignment(self, assignment: dict) -> None:
        folder = workshop_folder(assignment["workshop"])
        self.notebook_dir = self.home
        self.default_url = self.start_url.format(workshop=folder, readme=self.wod.readme_notebook)

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

    async def run_pre_spawn_hook(self):
        self.warn_same_origin()
        self._workshop = None  # the catalog may have changed since the last start
        self._assignment = await asyncio.to_thread(self.load_assignment)
        # Started by the wod service ahead of its participant (c.WodOperations.start_server), not by a sign-in.
        self._assignment["ahead"] = internals.requested_by_service(self.handler)
        self.apply_assignment(self._assignment)
        self.server_token_id = self.find_server_token_id()
        self._procs_files = await asyncio.to_thread(self.prepare_group, self._assignment)
        return await maybe_future(super().run_pre_spawn_hook())

    # -- the seat's control group ------------------------------------------

    def seat_workshop(self, workshop: str):
        """The catalog's entry of the seat's workshop (None when it is gone), looked up once per start."""
        folder = workshop_folder(workshop)
        if self._workshop is None or self._workshop[0] != folder:
            self._workshop = (folder, find_workshop(self.wod.notebooks, folder, self.wod.prefer_private, self.wod.readme_notebook))
        return self._workshop[1]

    def seat_limits(self, workshop: str) -> Limits:
        """``c.Wod.workshop_limits`` over the workshop's ``wod.yml`` ``limits:`` over this spawner's defaults."""
        limits = Limits(memory=self.mem_limit or None, cpu=self.cpu_limit or None, pids=self.pids_limit)
        folder = workshop_folder(workshop)
        ws = self.seat_workshop(workshop)
        if ws is not None:
            limits = ws.limits.over(limits)
        if folder in self.wod.workshop_limits:
            limits = limits_from_meta(self.wod.workshop_limits[folder])[0].over(limits)
        return limits

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
        self._limits = self.seat_limits(assignment["workshop"])
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
        # The server's interpreter with the safe flags, whatever cmd was configured (idempotent).
        self.cmd = without_imports(python_command(self.cmd, self.python_flags), self.skip_imports)
        self._namespace = await asyncio.to_thread(self.seat_namespace)
        out = await asyncio.to_thread(self.open_output)
        configured = self.popen_kwargs
        # Never the hub's stdout and stderr: a student could forge its lines and fill its disk.
        target = subprocess.DEVNULL if out is None else out
        self.popen_kwargs = {**configured, "stdin": subprocess.DEVNULL, "stdout": target, "stderr": target}
        try:
            return await super().start()
        except subprocess.SubprocessError:
            self.log.error("The server of %s could not start; its log says why: %s", self.user.name, self.log_path())
            raise
        finally:
            self.popen_kwargs = configured
            if out is not None:
                os.close(out)

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
        if self.service_url:
            env["WOD_SERVICE_URL"] = self.service_url
        return env

    def get_args(self):
        args = list(super().get_args())
        if not self.wod.system_users and os.geteuid() == 0 and "--allow-root" not in args:
            args.append("--allow-root")
        if self.kernel_transport == "ipc":
            args.append("--KernelManager.transport=ipc")
        if self.service_url:
            args.append(f"--ServerApp.jpserver_extensions={SESSION_EXTENSION}=True")
        return args

    # The assignment a server was started for outlives a hub restart, so the
    # snapshot at its stop names the participant who used it.
    def get_state(self):
        state = super().get_state()
        if self._assignment:
            state["wod_assignment"] = self._assignment
        if self.server_token_id is not None:
            state["wod_server_token"] = self.server_token_id
        return state

    def load_state(self, state):
        super().load_state(state)
        self._assignment = state.get("wod_assignment") or self._assignment
        self.server_token_id = state.get("wod_server_token", self.server_token_id)

    def find_server_token_id(self):
        """The database id of ``self.api_token``, the token the hub made for this server start."""
        return internals.token_id(internals.user_db(self.user), self.api_token)

    @property
    def seat_generation(self) -> int | None:
        """The generation of the seat this server was started for; None when it runs for none."""
        return (self._assignment or {}).get("generation")

    # -- after the stop -----------------------------------------------------

    def snapshot(self, assignment: dict) -> dict | None:
        """Record the completion ratio of the workshop folder as it is now (a progress snapshot)."""
        folder = os.path.join(self.home, workshop_folder(assignment["workshop"]))
        if not os.path.isdir(folder):
            self.log.info("No completion snapshot for %s: %s is gone", self.user.name, folder)
            return None
        try:
            workshop = load_catalog(self.wod.notebooks, prefer_private=self.wod.prefer_private).get(assignment["workshop"])
        except WodError:
            self.log.info("No completion snapshot for %s: workshop %s is gone", self.user.name, assignment["workshop"])
            return None
        # In a worker process (bounded memory and time), never in the hub: json.loads
        # of a student's notebook in a thread stalled the hub's event loop.
        ratio = completion_worker.measure(folder, notebooks=completion.provisioned_notebooks(workshop), **self.wod.completion_limits())
        with self.store.session() as s:
            s.add(
                Completion(
                    student=assignment["student"],
                    customer=assignment["customer"],
                    workshop=assignment["workshop"],
                    kind="snapshot",
                    ratio=ratio["ratio"],
                    executed=ratio["executed"],
                    total=ratio["total"],
                    detail=ratio,
                )
            )
        self.log.info("Completion snapshot for %s: %d%% (%d/%d cells)", self.user.name, ratio["ratio"], ratio["executed"], ratio["total"])
        return ratio

    async def stop(self, now=False):
        # Asked now: right after, the hub deletes the server's OAuth client with the tokens that tell.
        try:
            self._never_opened = bool((self._assignment or {}).get("ahead")) and not internals.has_oauth_token(
                self.user, self.oauth_client_id
            )
        except Exception:  # never in the way of a stop: the snapshot is taken as for any server
            self.log.exception("Could not tell whether the server of %s was opened", self.user.name)
        return await super().stop(now=now)

    async def run_post_stop_hook(self):
        assignment = self._assignment
        if assignment is not None and self._never_opened:
            # A server started ahead that its participant never opened says nothing of their progress.
            self.log.info("No completion snapshot for %s: its server was started ahead and never opened", self.user.name)
        elif assignment is not None:
            try:
                await asyncio.to_thread(self.snapshot, assignment)
            except Exception:  # a snapshot must never keep a server from stopping
                self.log.exception("Completion snapshot failed for %s", self.user.name)
        # Not in clear_state: poll() clears the state before this hook runs.
        self._assignment = None
        self.server_token_id = None
        self._never_opened = False
        return await maybe_future(super().run_post_stop_hook())
