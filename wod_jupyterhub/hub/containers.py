"""``WodDockerSpawner``: a seat's server in a container of its own (DockerSpawner), as its uid, with its limits.

Enable with ``c.JupyterHub.spawner_class = "wod-docker"`` and
``c.Wod.runtime = "docker"`` (the service then removes a seat's container at
CLEANUP, RESET and PURGE and checks none is left). Needs ``dockerspawner``
(the ``docker`` extra) and an image with the students' Python
(``make seat-image``). Each seat's container runs as ``uid_base + N``, with
the seat's memory, CPU and process limits, no capabilities and no new
privileges, in a network namespace of its own (the machine's loopback
services are out of its reach), with only its own home mounted, at the
path the hub and the service know it by, and the labels the service finds
it by.
"""

from dockerspawner import DockerSpawner
from traitlets import default

from ..seats.kubernetes import seat_labels
from .seatspawner import SeatSpawnerMixin
from .spawner import python_command


class WodDockerSpawner(SeatSpawnerMixin, DockerSpawner):
    """DockerSpawner for seats: one container per seat, as its uid, with its home and its limits."""

    # A container's uid needs no entry in the hub's /etc/passwd.
    runs_as_account = False


    @default("prefix")
    def _prefix_default(self):
        return f"wod-{self.backend}"

    @default("image")
    def _image_default(self):
        return "wod-seat:local"

    @default("pull_policy")
    def _pull_policy_default(self):
        # The image is built and imported on the engine's machine (make seat-image): no registry to pull from.
        return "never"

    @default("remove")
    def _remove_default(self):
        # A stopped seat leaves no container: the next start is a fresh one, and CLEANUP finds nothing left.
        return True

    @default("use_internal_ip")
    def _internal_ip_default(self):
        return True

    async def prepare_seat(self, assignment: dict) -> None:
        n = assignment["student"]
        uid = self.wod.uid_base + n
        limits = self._limits
        self.mem_limit = limits.memory
        self.cpu_limit = limits.cpu
        # The server's Python with the flags that keep a student's home off its import path.
        self.cmd = python_command(self.cmd, ["-P", "-s"]) if self.cmd else self.cmd
        # Only the seat's home, at the path the hub and the service know it by.
        self.volumes = {self.home: {"bind": self.home, "mode": "rw"}}
        self.extra_create_kwargs = {
            **self.extra_create_kwargs,
            "user": f"{uid}:{uid}",
            "working_dir": self.home,
            "labels": {**self.extra_create_kwargs.get("labels", {}), **seat_labels(n, self.backend)},
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
        self.environment = {**self.environment, "HOME": self.home, "USER": self.user.name}
