"""``WodKubeSpawner``: a seat's server as a Kubernetes pod (KubeSpawner), its home a sub-path of one shared volume.

Enable with ``c.JupyterHub.spawner_class = "wod-kubernetes"`` and
``c.Wod.runtime = "kubernetes"`` (the service then ends seats' pods through
the Kubernetes API). Needs ``jupyterhub-kubespawner`` (the ``kubernetes``
extra). Each seat's pod runs as ``uid_base + N`` (user, group and the
volume's group), mounts only ``student<N>`` of the ``ReadWriteMany`` volume
that holds every home (the service mounts the whole of it at
``c.Wod.students_root``), gets the seat's limits, never the service
account's token, and the labels the service finds it by.
"""

from kubespawner import KubeSpawner
from traitlets import Unicode, default, validate

from ..limits import parse_size
from ..seats.kubernetes import seat_labels
from .seatspawner import SeatSpawnerMixin


class WodKubeSpawner(SeatSpawnerMixin, KubeSpawner):
    """KubeSpawner for seats: one pod per seat, as its uid, with its home and its limits."""

    # A pod's uid needs no entry in the hub's /etc/passwd.
    runs_as_account = False

    students_claim = Unicode(
        "wod-students",
        help="""The PersistentVolumeClaim (``ReadWriteMany``) holding every home; each pod mounts its ``student<N>``.""",
    ).tag(config=True)

    memory_request = Unicode(
        "160M",
        help="""Memory the scheduler reserves for each seat (the pod's request; its limit is the seat's ``mem_limit``).

        The default is a busy seat of the sample workshops as ``bench/seat_size.py``
        measures it (a server and a kernel that ran every cell); measure your
        own workshops and set theirs. Never more than the seat's limit.
        """,
    ).tag(config=True)

    cpu_request = Unicode(
        "0.05",
        help="""Cores the scheduler reserves for each seat (its limit is the seat's ``cpu_limit``): a seat uses CPU only while a cell runs.""",
    ).tag(config=True)

    @validate("memory_request")
    def _valid_memory_request(self, proposal):
        try:
            parse_size(proposal["value"])
        except ValueError as e:
            raise ValueError(f"WodKubeSpawner.memory_request: {e}") from None
        return proposal["value"]


    @default("automount_service_account_token")
    def _no_token(self):
        # A student's code must never hold a credential of the cluster.
        return False

    @default("allow_privilege_escalation")
    def _no_escalation(self):
        return False

    async def prepare_seat(self, assignment: dict) -> None:
        n = assignment["student"]
        uid = self.wod.uid_base + n
        self.uid = self.gid = self.fs_gid = uid
        limits = self._limits
        self.mem_limit = limits.memory
        self.cpu_limit = limits.cpu
        if limits.memory is not None:
            self.mem_guarantee = min(parse_size(self.memory_request), limits.memory)
        if limits.cpu is not None:
            self.cpu_guarantee = min(float(self.cpu_request), limits.cpu)
        self.extra_labels = {**self.extra_labels, **seat_labels(n, self.backend)}
        self.volumes = [{"name": "wod-students", "persistentVolumeClaim": {"claimName": self.students_claim}}]
        # Only the seat's own folder of the shared volume, where the hub and the service expect the home.
        self.volume_mounts = [{"name": "wod-students", "mountPath": self.home, "subPath": f"student{n}"}]
        self.working_dir = self.home
        self.environment = {**self.environment, "HOME": self.home, "USER": self.user.name}
