"""A JupyterHub as a child process: started in its own process group, stopped as a group."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: where ``make deps`` installs configurable-http-proxy
NODE_BIN = REPO / "node_modules" / ".bin"


#: ports this process handed out already (each is bound later, by another process)
_HANDED_OUT: set[int] = set()
#: the lowest port :func:`free_port` picks
LOWEST_PORT = 20000


def _ephemeral_low() -> int:
    """The first port of the range the kernel takes outgoing connections' own ports from."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port free right now (tests and ``--check`` never use fixed ports).

    Picked below the kernel's range for outgoing connections: a port from that
    range may be taken by any connection (a health poll) between this answer
    and the bind of the process it is given to. Never the same port twice.
    """
    high = _ephemeral_low()
    for _ in range(200 if high - LOWEST_PORT > 1000 else 0):
        port = random.randrange(LOWEST_PORT, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _HANDED_OUT.add(port)
    return port


def hub_env(extra: dict | None = None) -> dict:
    """This environment, with the proxy and this Python's scripts first on PATH, and ``extra`` on top.

    An inherited ``JUPYTERHUB_API_TOKEN`` (a terminal inside another hub) is
    dropped: it belongs to that hub, not to the one started here.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(NODE_BIN), str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("JUPYTERHUB_API_TOKEN", None)
    env.update(extra or {})
    return env


def start_hub(config, cwd, env: dict, log=None) -> subprocess.Popen:
    """``python -m jupyterhub -f config`` in its own session; ``log`` an open file for its output (None: ours)."""
    return subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(config)],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
        start_new_session=True,
    )


def stop_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the process (a hub stops its proxy, services and servers), then SIGKILL whatever is left of its group."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
