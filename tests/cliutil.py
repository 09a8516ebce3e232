"""The ``wod`` command as an admin runs it, in a child process, against a test hub's public URL."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "wod"
#: the command line of ``wod``: the installed script, else the module
WOD = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "wod_jupyterhub.cli"]


def wod(hub, *args, token="portal", cwd=None, env=None, url=True):
    """Run ``wod ARGS`` against ``hub`` with its portal token (or ``token``); the finished process."""
    token = {"portal": hub.portal_token, "noscope": hub.noscope_token}.get(token, token)
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("WOD_URL", None)
    full_env.pop("WOD_API_TOKEN", None)
    argv = list(WOD) + [str(a) for a in args]
    if url:
        argv += ["--url", hub.url]
    if token:
        argv += ["--token", token]
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd or hub.root, env={**full_env, **(env or {})}, timeout=180)


def run_json(hub, *args, expect=0):
    """Run ``wod ARGS --json``, check its exit status is ``expect`` without a traceback; (parsed output, process)."""
    r = wod(hub, *args, "--json")
    assert r.returncode == expect, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout), r


def run_wod(*args, input=None, cwd=None, cmd=None):
    """Run ``wod ARGS`` (or ``cmd ARGS``) with this checkout first on the path; the finished process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        (cmd or WOD) + [str(a) for a in args], input=input, capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )
