"""Where a seat's server runs: the one seam between the verbs and an engine (this machine, Docker, Kubernetes).

``wipe_seat``, the service's resources view and the checks that run a command
in a seat call a :class:`SeatRuntime`, never an engine: :class:`LocalRuntime`
(the seat's uid, its control group, its processes and what its uid leaves
behind) is the default, here; the container runtimes (``seats/containers.py``,
``seats/kubernetes.py``) end a seat by its engine's label. Homes stay a path
under ``c.Wod.students_root`` whatever the engine (a local disk, or a shared
file system mounted by the service and the engine), so provisioning, staging,
completion and disk use do not change.
"""

from __future__ import annotations

import importlib
import os
import subprocess
from dataclasses import dataclass

from traitlets import Unicode, default
from traitlets.config import LoggingConfigurable

from . import cgroups
from .keyrings import clear_keyrings
from .leftovers import remove_leftovers
from .processes import end_session, kill_uid

#: ``c.Wod.runtime`` → the runtime class, imported when first asked for (the container
#: engines' clients are optional packages)
RUNTIMES = {
    "local": "wod_jupyterhub.seats.runtime:LocalRuntime",
    "docker": "wod_jupyterhub.seats.containers:DockerRuntime",
    "swarm": "wod_jupyterhub.seats.containers:SwarmRuntime",
    "kubernetes": "wod_jupyterhub.seats.kubernetes:KubernetesRuntime",
}


@dataclass
class Ran:
    """What a command run in a seat did (:meth:`SeatRuntime.exec`)."""

    returncode: int | None  # None: killed at its timeout
    stdout: bytes
    stderr: bytes

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


class SeatRuntime(LoggingConfigurable):
    """An engine that runs seats' servers, seen by the verbs: ending a seat, its usage, a command in it.

    The hub's side of the same engine is its spawner (``WodSpawner`` for this
    one; the container spawners of ``hub/``), which puts the seat's limits
    and labels on what it starts. Every method takes the seat's number and
    blocks (the service calls them from a worker thread).
    """

    #: the ``c.Wod.runtime`` value that selects this runtime
    name = "abstract"

    backend = Unicode(
        help="""The ``wod.backend`` label of this backend's seats, on an engine that labels them (several backends
        may share one engine); defaults to ``c.Wod.cgroup_parent``. The hub's spawner uses the same default.""",
    ).tag(config=True)

    @default("backend")
    def _backend_default(self):
        return default_backend(self.wod)

    def __init__(self, wod, **kwargs):
        self.wod = wod
        super().__init__(config=wod.config, **kwargs)

    def uid(self, n: int) -> int | None:
        """The uid seat ``n`` runs as (``uid_base + n`` with ``c.Wod.system_users``), None when it runs as the hub's."""
        return self.wod.uid_base + n if self.wod.system_users else None

    def end(self, n: int, timeout: float = 15.0) -> dict:
        """After the hub's stop: make sure nothing of seat ``n`` runs, killing what does; what was done, for the journal."""
        raise NotImplementedError

    def clear_leftovers(self, n: int) -> dict:
        """Remove what seat ``n`` left outside its home once it has ended (nothing, for an engine that keeps none)."""
        return {}

    def usage(self, n: int) -> dict | None:
        """What seat ``n`` uses now (``memory``, ``memory_peak`` in bytes, ``pids``), or None when the engine cannot say."""
        return None

    def detect(self) -> str | None:
        """One sentence naming what this runtime does not enforce here and why, or None when it enforces everything."""
        return None

    def exec(self, n: int, argv: list[str], timeout: float = 30.0, cwd: str | None = None) -> Ran:
        """Run ``argv`` as seat ``n``, where its server runs (its uid, its limits), with its home as the working folder."""
        raise NotImplementedError(f"The {self.name} runtime cannot run a command in a seat.")


class LocalRuntime(SeatRuntime):
    """Seats as processes of this machine: the seat's uid and its control group (``c.Wod.cgroups``)."""

    name = "local"

    def end(self, n: int, timeout: float = 15.0) -> dict:
        # The seat's control group first: frozen while it is killed, nothing the server started forks away.
        detail = cgroups.end_seat(self.wod, n, timeout)
        uid = self.uid(n)
        if uid is not None:
            # Then the uid: what the student started outside the server (a cron or at job) is not in the group.
            detail["killed"] = kill_uid(uid)
        return detail

    def clear_leftovers(self, n: int) -> dict:
        uid = self.uid(n)
        if uid is None:
            return {}
        detail = remove_leftovers(uid, uid, f"student{n}", self.wod.temp_folders)
        detail["keyrings_cleared"] = clear_keyrings(uid, uid)
        return detail

    def usage(self, n: int) -> dict | None:
        return cgroups.seat_resources(self.wod, n)

    def detect(self) -> str | None:
        h = cgroups.for_wod(self.wod)
        return h.warning() if h is not None else None

    def exec(self, n: int, argv: list[str], timeout: float = 30.0, cwd: str | None = None) -> Ran:
        uid = self.uid(n)
        procs_files = cgroups.seat_procs_files(self.wod, n)
        home = str(self.wod.home(n))

        def preexec():
            # Still root: into the seat's group first, so what the command forks counts against the seat.
            cgroups.join(procs_files)
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)

        env = {"HOME": home, "USER": f"student{n}", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            argv, cwd=cwd or home, env=env, preexec_fn=preexec, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Its own session: what it forked goes with it, in whatever process group, and is gone when this
            # returns; first, as one still alive would hold the output open.
            end_session(proc.pid)
            out, err = proc.communicate()
            return Ran(None, out, err)
        return Ran(proc.returncode, out, err)


def default_backend(wod) -> str:
    """The ``wod.backend`` label of a backend's seats unless configured: its ``c.Wod.cgroup_parent``, as a label value."""
    return wod.cgroup_parent.replace("/", "-")


def runtime_class(name: str) -> type[SeatRuntime]:
    """The class ``c.Wod.runtime`` names (``local``, ``docker``, ``swarm``, ``kubernetes``)."""
    module, _, attr = RUNTIMES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def seat_runtime(wod) -> SeatRuntime:
    """The runtime of ``c.Wod.runtime`` for these settings."""
    return runtime_class(wod.runtime)(wod)
