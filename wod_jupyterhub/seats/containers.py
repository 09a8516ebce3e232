"""Seats as containers: ending a seat's container (Docker) or service (Docker Swarm), found by its labels.

The hub's side is ``WodDockerSpawner`` and ``WodSwarmSpawner``
(``hub/containers.py``): one container, or one Swarm service, per seat,
labelled with :func:`seats.kubernetes.seat_labels`. A container has its own
process, network, IPC and mount namespaces: when it is removed, every
process it held is gone with it (a daemon the student double-forked
included), and it leaves no temporary file, IPC object or keyring outside;
so the service only removes it and checks that none is left. Needs the
``docker`` package (the ``docker`` extra).
"""

from __future__ import annotations

import functools
import os
import time

from traitlets import Float, Unicode, default

from .kubernetes import SeatStillRuns, seat_labels
from .runtime import Ran, SeatRuntime


def _docker():
    try:
        import docker
    except ImportError:  # the optional extra
        raise SeatStillRuns(
            "The docker runtime needs the docker package: pip install 'wod-jupyterhub[docker]'."
        ) from None
    return docker


@functools.lru_cache(maxsize=4)
def _client(host: str, timeout: int):
    # One client (and its connection pool) per engine and process: a runtime is made per wipe.
    return _docker().DockerClient(base_url=host, timeout=timeout)


class DockerRuntime(SeatRuntime):
    """Seats as containers of one Docker engine (``c.DockerRuntime``)."""

    name = "docker"

    docker_host = Unicode(
        help="""The Docker engine's address (``unix:///var/run/docker.sock``, ``tcp://…``); defaults to ``$DOCKER_HOST``, then the local socket.

        The hub's ``WodDockerSpawner`` must use the same engine (``$DOCKER_HOST`` or ``c.DockerSpawner.client_kwargs``).
        """,
    ).tag(config=True)

    @default("docker_host")
    def _docker_host_default(self):
        return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


    request_timeout = Float(30.0, help="Seconds one call to the Docker engine may take.").tag(config=True)

    @property
    def client(self):
        return _client(self.docker_host, int(self.request_timeout))

    def filters(self, n: int) -> dict:
        return {"label": [f"{k}={v}" for k, v in seat_labels(n, self.backend).items()]}

    def containers(self, n: int) -> list:
        """Seat ``n``'s containers, running or not."""
        return self.client.containers.list(all=True, filters=self.filters(n))

    def remove(self, n: int, containers: list, removed: set) -> None:
        """Kill and remove seat ``n``'s ``containers`` (a frozen one too), adding each one gone to ``removed``."""
        docker = _docker()
        for container in containers:
            try:
                # SIGKILL and removal in one: the hub has already stopped the server.
                container.remove(force=True)
                removed.add(container.id)
            except docker.errors.NotFound:
                removed.add(container.id)
            except docker.errors.APIError as e:
                # "removal already in progress": the next pass sees whether it is gone.
                self.log.info("Removing %s of student%s: %s", container.name, n, e.explanation or e)

    def end(self, n: int, timeout: float = 15.0) -> dict:
        removed: set = set()
        deadline = time.monotonic() + timeout
        while True:
            found = self.containers(n)
            if not found:
                return {"containers_removed": len(removed)}
            if time.monotonic() > deadline:
                names = ", ".join(c.name for c in found)
                raise SeatStillRuns(f"The container(s) {names} of student{n} are still there {timeout:g} s after their removal.")
            self.remove(n, found, removed)
            time.sleep(0.1)

    def usage(self, n: int) -> dict | None:
        for container in self.containers(n):
            if container.status != "running":
                continue
            stats = container.stats(stream=False, one_shot=True)
            memory = stats.get("memory_stats", {})
            return {
                "memory": memory.get("usage"),
                "memory_peak": memory.get("max_usage"),
                "pids": stats.get("pids_stats", {}).get("current"),
            }
        return None

    def detect(self) -> str | None:
        info = self.client.info()
        missing = [what for key, what in (("MemoryLimit", "memory"), ("CpuCfsQuota", "CPU"), ("PidsLimit", "processes"))
                   if not info.get(key)]
        if not missing:
            return None
        return f"The Docker engine at {self.docker_host} does not enforce these per-seat limits: {', '.join(missing)}."

    def exec(self, n: int, argv: list[str], timeout: float = 30.0, cwd: str | None = None) -> Ran:
        running = [c for c in self.containers(n) if c.status == "running"]
        if not running:
            raise SeatStillRuns(f"student{n} has no running container to run a command in.")
        uid = self.wod.uid_base + n
        # The engine has no timeout of its own for an exec: coreutils' timeout, in the container, ends it (124).
        wrapped = ["timeout", "-k", "2", f"{timeout:g}", *argv]
        code, (out, err) = running[0].exec_run(wrapped, user=f"{uid}:{uid}", workdir=cwd or str(self.wod.home(n)), demux=True)
        return Ran(None if code == 124 else code, out or b"", err or b"")


class SwarmRuntime(DockerRuntime):
    """Seats as services of a Docker Swarm (``c.SwarmRuntime``): the service is removed, then its tasks' containers checked gone.

    Run the wod service on a manager node; every node that runs seats mounts
    the shared file system of the homes at ``c.Wod.students_root``. A
    service's containers run on whichever node Swarm placed them, so what is
    checked here is the service and its tasks, as the managers see them; a
    task's container on this node is also killed and removed here, so a
    frozen one does not outwait its grace period.
    """

    name = "swarm"

    def services(self, n: int) -> list:
        return self.client.services.list(filters=self.filters(n))

    def end(self, n: int, timeout: float = 15.0) -> dict:
        docker = _docker()
        removed = 0
        for service in self.services(n):
            try:
                service.remove()
                removed += 1
            except docker.errors.NotFound:
                pass
        deadline = time.monotonic() + timeout
        killed: set = set()
        while True:
            # A removed service's tasks stop on their nodes a moment later, each within its grace period, which a
            # frozen container outwaits; on this node their containers carry the seat's labels too (the spawner
            # puts them on the container spec), and are killed and removed here rather than waited for.
            services, containers = self.services(n), self.containers(n)
            if not services and not containers:
                return {"services_removed": removed, "containers_removed": len(killed)}
            if time.monotonic() > deadline:
                left = [s.name for s in services] + [c.name for c in containers]
                raise SeatStillRuns(f"{', '.join(left)} of student{n} still there {timeout:g} s after the service's removal.")
            self.remove(n, containers, killed)
            time.sleep(0.2)
