"""``WodDockerSpawner`` and ``WodSwarmSpawner``: a seat's server in a container of its own, as its uid, with its limits.

Enable with ``c.JupyterHub.spawner_class = "wod-docker"`` and
``c.Wod.runtime = "docker"`` (``"wod-swarm"`` and ``"swarm"`` on a Docker Swarm) (the service then removes a seat's container at
CLEANUP, RESET and PURGE and checks none is left). Needs ``dockerspawner``
(the ``docker`` extra) and an image with the students' Python
(``make seat-image``). Each seat's container runs as ``uid_base + N``, with
the seat's memory, CPU and process limits, no capabilities and no new
privileges, in a network namespace of its own (the machine's loopback
services are out of its reach), with only its own home mounted, at the
path the hub and the service know it by, and the labels the service finds
it by.
"""

from dockerspawner import DockerSpawner, SwarmSpawner
from traitlets import default

from ..seats.kubernetes import seat_labels
from .seatspawner import SeatSpawnerMixin
from .spawner import python_command


class ContainerSeatMixin(SeatSpawnerMixin):
    """What a seat's container is on any Docker engine, a plain one or a Swarm: before ``DockerSpawner`` or ``SwarmSpawner``."""

    # A container's uid needs no entry in the hub's /etc/passwd.
    runs_as_account = False

    @default("prefix")
    def _prefix_default(self):
        return f"wod-{self.backend}"

    @default("image")
    def _image_default(self):
        return "wod-seat:local"

    @default("remove")
    def _remove_default(self):
        # A stopped seat leaves no container: the next start is a fresh one, and CLEANUP finds nothing left.
        return True

    @default("use_internal_ip")
    def _internal_ip_default(self):
        return True

    def prepare_container(self, assignment: dict) -> tuple[int, dict]:
        """The parts every engine's container of the seat shares; its uid and labels, for the engine's own spec."""
        n = assignment["student"]
        limits = self._limits
        self.mem_limit = limits.memory
        self.cpu_limit = limits.cpu
        # The server's Python with the flags that keep a student's home off its import path.
        self.cmd = python_command(self.cmd, ["-P", "-s"]) if self.cmd else self.cmd
        # Only the seat's home, at the path the hub and the service know it by.
        self.volumes = {self.home: {"bind": self.home, "mode": "rw"}}
        self.environment = {**self.environment, "HOME": self.home, "USER": self.user.name}
        return self.wod.uid_base + n, seat_labels(n, self.backend)


class WodDockerSpawner(ContainerSeatMixin, DockerSpawner):
    """DockerSpawner for seats: one container per seat, as its uid, with its home and its limits."""

    @default("pull_policy")
    def _pull_policy_default(self):
        # The image is built and imported on the engine's machine (make seat-image): no registry to pull from.
        return "never"

    async def prepare_seat(self, assignment: dict) -> None:
        uid, labels = self.prepare_container(assignment)
        limits = self._limits
        self.extra_create_kwargs = {
            **self.extra_create_kwargs,
            "user": f"{uid}:{uid}",
            "working_dir": self.home,
            "labels": {**self.extra_create_kwargs.get("labels", {}), **labels},
        }
        host = {
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            # The seat's PID 1 reaps what its student double-forks, and takes it along when removed.
            "init": True,
        }
        if limits.pids is not None:
            host["pids_limit"] = limits.pids
        if limits.memory is not None:
            # Memory and swap together: swap cannot lift the memory limit.
            host["memswap_limit"] = limits.memory
        self.extra_host_config = {**self.extra_host_config, **host}


class WodSwarmSpawner(ContainerSeatMixin, SwarmSpawner):
    """SwarmSpawner for seats: one Swarm service per seat, its one task's container as the seat's uid, with its limits.

    The service's network (``network_name``, default ``wod-seats``) is a
    bridge of swarm scope (``--driver bridge --scope swarm --config-from``
    a config-only network of each node's subnet): every node has its own, each seat a network
    namespace of its own on it, and the hub reaches the task's container at
    its address there (routed to the nodes' bridges). ``extra_placement_spec``
    (``{"constraints": ["node.labels.wod==seats"]}``) keeps seats on the
    nodes meant for them, all of which mount the homes' shared file system
    at ``c.Wod.students_root``.
    """

    @default("network_name")
    def _network_default(self):
        return "wod-seats"

    async def prepare_seat(self, assignment: dict) -> None:
        uid, labels = self.prepare_container(assignment)
        limits = self._limits
        self.extra_create_kwargs = {**self.extra_create_kwargs, "labels": labels}
        # The task's container carries the labels too: the runtime finds it on its node.
        self.extra_container_spec = {
            **self.extra_container_spec,
            "user": f"{uid}:{uid}", "workdir": self.home, "labels": labels, "init": True, "cap_drop": ["ALL"],
        }
        resources = {"Limits": {}}
        if limits.memory is not None:
            resources["Limits"]["MemoryBytes"] = limits.memory
        if limits.cpu is not None:
            resources["Limits"]["NanoCPUs"] = int(limits.cpu * 1e9)
        if limits.pids is not None:
            resources["Limits"]["Pids"] = limits.pids
        self.extra_task_spec = {**self.extra_task_spec, "resources": resources}

    async def get_ip_and_port(self):
        """The address of the service's task container on the seats' network (not the service's name: the hub is no task)."""
        found = await self.docker("containers", filters={"label": [f"com.docker.swarm.service.name={self.service_name}"]})
        for summary in found:
            info = await self.docker("inspect_container", summary["Id"])
            network = info["NetworkSettings"]["Networks"].get(self.network_name)
            if network and network.get("IPAddress"):
                return network["IPAddress"], self.port
        raise RuntimeError(f"The service {self.service_name} has no container with an address on {self.network_name}")
