"""A JupyterHub as a child process: started in its own process group, stopped as a group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: where ``make deps`` installs configurable-http-proxy
NODE_BIN = REPO / "node_modules" / ".bin"


def free_port() -> int:
    """A loopback port free right now (tests and ``--check`` never use fixed ports)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
