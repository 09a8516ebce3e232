"""The appliance hooks: ``create-``, ``post-copy-``, ``cleanup-`` and ``reset-<WKSHP>.sh``."""

import asyncio
import ipaddress
import os
import signal
import tempfile
import time
from pathlib import Path

import yaml
from traitlets import Dict, Float, Integer, Unicode
from traitlets.config import LoggingConfigurable

from ..waiting import within
from ..workshops.catalog import load_yaml

KINDS = ("create", "post-copy", "cleanup", "reset")


class HookFailed(Exception):
    """A hook exited non-zero or timed out; ``runs`` holds every run so far, output included."""

    def __init__(self, message: str, runs: list):
        super().__init__(message)
        self.runs = runs

    @property
    def journal(self) -> dict:
        """What the operation's journal keeps of the failed hook step."""
        return {"runs": self.runs}


class WodHooks(LoggingConfigurable):
    """Finds and runs the hooks of a workshop (``c.WodHooks``)."""

    timeout = Float(
        600, help="Seconds a hook may run before it and its children are killed and its operation fails."
    ).tag(config=True)

    max_output = Integer(
        65536,
        help="Bytes of a hook's output kept on the operation (the tail is kept when it is longer).",
    ).tag(config=True)

    appliance_address = Unicode(
        "",
        help="""Default base address of the workshop appliances, handed to hooks as ``WODRTARGET``.

        A mono-appliance workshop gets it as is; a multi-appliance one gets
        base + (N - range min) when it is an IP address.
        """,
    ).tag(config=True)

    appliance_addresses = Dict(
        help="Base appliance address per workshop folder (``{'WKSHP-Docker101': '192.168.10.20'}``), overriding ``appliance_address``.",
    ).tag(config=True)

    def __init__(self, wod, **kwargs):
        super().__init__(**kwargs)
        self.wod = wod

    def find(self, kind: str, workshop: str) -> list[Path]:
        """The executable ``<kind>-<workshop>.sh`` scripts of ``c.Wod.scripts``, in the folders' order."""
        if kind not in KINDS:
            raise ValueError(f"unknown hook kind {kind!r}")
        found = []
        for folder in self.wod.scripts:
            path = Path(folder) / f"{kind}-{workshop}.sh"
            if path.is_file() and os.access(path, os.X_OK):
                found.append(path)
        return found

    def target(self, workshop) -> str:
        """``WODRTARGET`` for student N of ``workshop`` (a catalog Workshop or None): the base address."""
        name = getattr(workshop, "name", None) or ""
        base = self.appliance_addresses.get(name) or self.wod.variables.get(f"IP-{name}") or self.appliance_address
        return str(base or "")

    def target_for(self, workshop, n: int) -> str:
        base = self.target(workshop)
        if base and getattr(workshop, "multi_appliance", False):
            rng = getattr(workshop, "range", None)
            try:
                return str(ipaddress.ip_address(base) + (n - int(rng[0])))
            except (ValueError, TypeError, IndexError):
                return base
        return base

    def environment(self, *, kind, workshop_name, student, customer, challenge, target, vars_file) -> dict:
        """What a hook sees: a few of the service's variables, then STDID, WORKSHOP, CHALLENGE, CUSTOMER, WODRTARGET, WOD_VARS_FILE, WOD_HOOK."""
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "TZ")}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update(
            STDID=str(student if student is not None else ""),
            WORKSHOP=workshop_name or "",
            CHALLENGE="1" if challenge else "0",
            CUSTOMER=str(customer or ""),
            WODRTARGET=target or "",
            WOD_VARS_FILE=str(vars_file or ""),
            WOD_HOOK=kind,
        )
        return env

    async def run(self, kind: str, workshop_name: str, *, student=None, customer=None, challenge=False, workshop=None, vars_file=None) -> list:
        """Run every ``<kind>-<workshop>.sh``; return one record per script ``{script, exit, output, seconds}``.

        Raises :class:`HookFailed` at the first script that fails.
        """
        runs = []
        scripts = self.find(kind, workshop_name)
        if not scripts:
            return runs
        target = self.target_for(workshop, student) if student is not None else self.target(workshop)
        env = self.environment(
            kind=kind, workshop_name=workshop_name, student=student, customer=customer,
            challenge=challenge, target=target, vars_file=vars_file,
        )
        for script in scripts:
            record = await self._run_one(script, env)
            runs.append(record)
            if record["exit"] != 0:
                why = "timed out" if record.get("timed_out") else f"exited with status {record['exit']}"
                tail = record["output"][-2000:].strip()
                raise HookFailed(f"hook {script} {why}" + (f": {tail}" if tail else ""), runs)
        return runs

    async def _run_one(self, script: Path, env: dict) -> dict:
        started = time.monotonic()
        self.log.info("Running hook %s for student %s", script, env.get("STDID"))
        # Output goes to an unlinked file, not a pipe: a child that leaves the
        # group (setsid) and keeps the pipe open would hold a reader waiting
        # for EOF past the timeout, and the seat with it. Waiting on the
        # hook's own exit is bounded by the timeout whatever its children do.
        with tempfile.TemporaryFile(prefix="wod-hook-") as out:
            proc = await asyncio.create_subprocess_exec(
                str(script),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=str(script.parent),
                start_new_session=True,
            )
            timed_out = False
            try:
                await within(proc.wait(), self.timeout)
            except TimeoutError:
                timed_out = True
                self._kill_group(proc.pid)
                await proc.wait()
            except asyncio.CancelledError:
                self._kill_group(proc.pid)
                raise
            text = read_tail(out, self.max_output)
        return {
            "script": str(script),
            "exit": proc.returncode if not timed_out else -1,
            "timed_out": timed_out,
            "output": text,
            "seconds": round(time.monotonic() - started, 3),
        }

    @staticmethod
    def _kill_group(pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def read_tail(f, limit: int) -> str:
    """The last ``limit`` bytes written to ``f`` (a child may still be writing: read what is there)."""
    size = os.fstat(f.fileno()).st_size
    f.seek(max(0, size - limit))
    return f.read(limit).decode("utf-8", "replace")


def new_vars_file() -> str:
    """An empty private file a create hook may fill with YAML variables."""
    fd, path = tempfile.mkstemp(prefix="wod-vars-", suffix=".yml")
    os.close(fd)
    return path


def read_vars_file(path: str) -> dict:
    """The variables a create hook wrote: a YAML mapping, or nothing.

    Anything else is the hook's bug and fails the operation with a sentence.
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {}
    if not text.strip():
        return {}
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        raise ValueError(f"the create hook wrote invalid YAML to WOD_VARS_FILE: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("the create hook must write a YAML mapping of variables to WOD_VARS_FILE")
    return {str(k): v for k, v in data.items()}
