"""A Docker engine of the tests' own: ``dockerd`` in a network and mount namespace of its own.

The machine's network is left alone: dockerd (its bridge, its routes, its
mounts) lives in a namespace made by ``unshare --net --mount --fork``, with
its own ``--data-root`` (kept in ``.cache/dockerd``, so the seats' image is
imported once) and its own socket. A veth pair joins that namespace to this
one: the hub, its proxy and the wod service stay here and reach the seats'
containers through it (a route to the engine's bridge), and the containers
reach the hub at :data:`HOST_IP` (not its loopback: a container's loopback
is its own). The image is ``make seat-image``'s root file system
(``share/docker/seat-rootfs.sh``), imported with ``docker import``.

One engine serves a whole test session (the ``docker_engine`` fixture):
the Docker seats' tests use it as it is, the Swarm seats' tests make it a
one-node swarm for their module (:meth:`Dockerd.init_swarm`) and leave it
after. :func:`seat_hub` is a real hub whose seats run on it.

Without root, dockerd or that root file system the tests skip with the
reason; under CI they fail instead.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.seatutil import UID_BASE

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache"
ROOTFS = CACHE / "wod-seat-rootfs.tar"
IMAGE = "wod-seat:local"
#: the host's end of the veth pair (the address containers reach the hub at) and the namespace's end
HOST_IP, NS_IP = "10.212.0.1", "10.212.0.2"
HOST_IF, NS_IF = "wodrt0", "wodrt1"
#: the engine's bridge: its containers' addresses, routed from here through the veth pair
BRIDGE, BRIDGE_NET = "10.213.0.1/24", "10.213.0.0/24"
#: a swarm's seats' network (a bridge of swarm scope on its one node), routed the same way
SWARM_NETWORK, SWARM_NET = "wod-seats", "10.214.0.0/24"
#: the hub's spawner and the service's runtime class of each container runtime
CLASSES = {"docker": ("wod-docker", "WodDockerSpawner", "DockerRuntime"), "swarm": ("wod-swarm", "WodSwarmSpawner", "SwarmRuntime")}


def missing() -> str | None:
    """Why this machine cannot run the tests' own dockerd, or None."""
    if os.geteuid() != 0:
        return "a Docker engine of the tests' own needs root (network and mount namespaces)"
    for tool in ("dockerd", "containerd", "unshare", "ip"):
        if not shutil.which(tool):
            return f"{tool} is not installed (make docker-tools, as root)"
    if not ROOTFS.is_file():
        return f"the seats' image is not built ({ROOTFS}; make seat-image, as root)"
    return None


def require_docker():
    """Skip with the reason when the engine cannot run here; under CI, fail."""
    reason = missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def student_python() -> str:
    """The students' Python, at the path ``make seat-image`` copied it to in the image."""
    return os.environ.get("WOD_STUDENT_PYTHON") or str(REPO / ".venv-students" / "bin" / "python")


def hub_config(engine: "Dockerd", runtime: str = "docker") -> list[str]:
    """The lines of a test hub's configuration whose seats run on ``engine``, as containers (``docker``) or Swarm services (``swarm``)."""
    _name, spawner, service_runtime = CLASSES[runtime]
    lines = [
        # The hub's API where the containers reach it (their loopback is their own).
        "c.JupyterHub.hub_ip = '0.0.0.0'",
        f"c.JupyterHub.hub_connect_ip = {HOST_IP!r}",
        f"c.DockerSpawner.client_kwargs = {{'base_url': {engine.host!r}}}",
        f"c.{service_runtime}.docker_host = {engine.host!r}",
        f"c.{spawner}.image = {IMAGE!r}",
        f"c.{spawner}.cmd = [{student_python()!r}, '-m', 'jupyterhub.singleuser']",
    ]
    if runtime == "swarm":
        lines.append(f"c.{spawner}.network_name = {SWARM_NETWORK!r}")
    return lines


@contextlib.contextmanager
def seat_hub(make, root: Path, engine: "Dockerd | None", runtime: str, seats: tuple[int, int], *,
             limits: tuple[int, float, int] | None = None, extra=()):
    """A real hub (``make``: ``module_hubs`` or ``RealHub``) whose seats run on ``runtime``, its workshops in ``root/notebooks``.

    ``runtime``: ``local`` (processes of this machine, single-user mode), or
    ``docker`` / ``swarm`` on ``engine`` (each seat as ``UID_BASE + N``);
    ``limits``: the seats' memory (bytes), CPU and process limits. The homes
    are in a folder of their own that their uids can reach (not pytest's
    0700 one), removed after; the hub's ``students_root`` says where.
    """
    students = Path(tempfile.mkdtemp(prefix=f"wod-{runtime}-students-"))
    students.chmod(0o711)
    wod = {"student_min": seats[0], "student_max": seats[1], "students_root": str(students)}
    lines = ["c.WodAuthenticator.throttle_ip_failures = 0"]
    spawner_class = "wod"
    if runtime != "local":
        spawner_class, spawner, _service_runtime = CLASSES[runtime]
        # The engine enforces the limits; homes belong to the seats' uids, which need no account.
        wod.update(system_users=True, cgroups=False, uid_base=UID_BASE, runtime=runtime)
        lines += hub_config(engine, runtime)
        if limits:
            memory, cpu, pids = limits
            lines += [f"c.{spawner}.mem_limit = {memory}", f"c.{spawner}.cpu_limit = {cpu}", f"c.{spawner}.pids_limit = {pids}"]
    try:
        with make(root, notebooks=[root / "notebooks"], authenticator_class="wod", spawner_class=spawner_class,
                  wod_config=wod, extra_config="\n".join([*lines, *extra]), startup_timeout=120) as hub:
            hub.students_root = students
            yield hub
    finally:
        subprocess.run(["rm", "-rf", str(students)], check=False)


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class Dockerd:
    """One dockerd in its own namespaces, with the seats' image; ``host`` is its socket's URL."""

    def __init__(self):
        self.swarm = False
        self.run_dir = Path(tempfile.mkdtemp(prefix="wodd-"))
        self.socket = self.run_dir / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.log_path = self.run_dir / "dockerd.log"
        self.proc = None

    def docker(self, *args, check=True, timeout=120) -> subprocess.CompletedProcess:
        """The docker command on this engine."""
        return subprocess.run(["docker", "-H", self.host, *args], check=check, capture_output=True, text=True, timeout=timeout)

    def start(self) -> "Dockerd":
        _ip("link", "del", HOST_IF, check=False)  # a crashed run's
        data = CACHE / "dockerd"
        data.mkdir(parents=True, exist_ok=True)
        # Inside: loopback up (with a second address: some daemons' getaddrinfo wants a non-127.0.0.1 one),
        # the veth's end once it arrives, then dockerd, without touching any firewall (there is none to share).
        script = f"""set -e
ip link set lo up
ip addr add 127.0.0.2/8 dev lo
while ! ip link show {NS_IF} >/dev/null 2>&1; do sleep 0.02; done
ip addr add {NS_IP}/30 dev {NS_IF}
ip link set {NS_IF} up
exec dockerd --data-root {data} --exec-root {self.run_dir}/exec --pidfile {self.run_dir}/dockerd.pid \
  -H {self.host} --bip {BRIDGE} --iptables=false --ip-masq=false --userland-proxy=false \
  --cgroup-parent wod-test-docker
"""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--mount", "--fork", "sh", "-c", script],
            stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            self._wire()
            self._wait()
            self._image()
            # A crashed run's swarm lives on in the kept data root.
            self.leave_swarm()
        except BaseException:
            self.stop()
            raise
        return self

    def init_swarm(self):
        """Make this engine a one-node swarm, with the seats' network (a bridge of swarm scope) routed from here."""
        self.docker("swarm", "init", "--advertise-addr", "127.0.0.1")
        self.swarm = True
        # A bridge of swarm scope takes its subnet from a node's config-only network of the same settings: made
        # once, kept in the data root (the engine holds on to it as in use after the swarm is left).
        if self.docker("network", "inspect", f"{SWARM_NETWORK}-config", check=False).returncode != 0:
            self.docker("network", "create", "--config-only", "--subnet", SWARM_NET, f"{SWARM_NETWORK}-config")
        self.docker("network", "create", "--driver", "bridge", "--scope", "swarm", "--config-from", f"{SWARM_NETWORK}-config",
                    SWARM_NETWORK)
        _ip("route", "replace", SWARM_NET, "via", NS_IP)

    def leave_swarm(self):
        """Back to a plain engine: no service, no swarm, none of its containers, no route to them."""
        if self.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip() != "inactive":
            services = self.docker("service", "ls", "-q", check=False).stdout.split()
            if services:
                self.docker("service", "rm", *services, check=False)
            self.docker("swarm", "leave", "--force", check=False)
        left = self.containers("label=com.docker.swarm.service.id")
        if left:
            self.docker("rm", "-f", *left, check=False)
        _ip("route", "del", SWARM_NET, check=False)
        self.swarm = False

    def _wire(self):
        mine = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{self.proc.pid}/ns/net") == mine:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"unshare did not make a network namespace:\n{self.log()}")
            time.sleep(0.01)
        _ip("link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF, "netns", str(self.proc.pid))
        _ip("addr", "add", f"{HOST_IP}/30", "dev", HOST_IF)
        _ip("link", "set", HOST_IF, "up")
        _ip("route", "add", BRIDGE_NET, "via", NS_IP)

    def _wait(self, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists() and self.docker("version", check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer in {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def _image(self):
        if self.docker("image", "inspect", IMAGE, check=False).returncode != 0:
            self.docker("import", str(ROOTFS), IMAGE, timeout=600)

    def log(self, n=40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def containers(self, *filters) -> list[str]:
        args = [a for f in filters for a in ("--filter", f)]
        return self.docker("ps", "-aq", *args).stdout.split()

    def stop(self):
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                # No container outlives the engine (their shims would): removed first, then dockerd ends cleanly.
                if self.swarm:
                    self.leave_swarm()
                left = self.docker("ps", "-aq", check=False).stdout.split()
                if left:
                    self.docker("rm", "-f", *left, check=False)
                pid = int((self.run_dir / "dockerd.pid").read_text())
                os.kill(pid, signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
        except (OSError, ValueError, subprocess.SubprocessError):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        finally:
            self._log.close()
            _ip("link", "del", HOST_IF, check=False)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.proc = None
