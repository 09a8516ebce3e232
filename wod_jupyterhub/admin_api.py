"""The service's admin endpoints: ``GET api/status`` and the workshop self-test ``api/check``.

``GET api/status[?workshop=]`` (read scope): :func:`overview.overview`
plus, per active seat, whether its server runs (one hub call for all) and
this process's own counters. ``POST api/check`` (operate scope) runs ``wod
check`` in a child process -- notebooks run in kernels of their own, never
in the service -- and keeps its report as a JSON file in
``c.WodService.checks_dir``: ``GET api/checks`` lists them, ``GET
api/checks/{id}`` reads one.
"""

import asyncio
import contextlib
import datetime
import json
import os
import re
import signal
import sys
import uuid
from pathlib import Path

from .errors import BadRequest, Conflict, NotFound, PayloadTooLarge
from .handlers import SCOPE_OPERATE, BaseHandler, json_object
from .overview import overview

CHECK_ID = re.compile(r"^[0-9a-f]{32}$")
#: checks that may run at once: each may start kernels
MAX_RUNNING_CHECKS = 2


async def status(app, workshop: str | None) -> dict:
    """The data of ``wod status`` and of the dashboard."""
    catalog = app.catalog.get()
    if workshop is not None:
        app.catalog.workshop(workshop)  # NotFound for an unknown one
    data = overview(app.store, catalog, app.wod, workshop=workshop)
    data["service"] = {"running": app.engine.running, "prepare_pending": app.preparer.pending}
    held = [seat for seat in data["seats"] if seat["state"] == "active"]
    for seat in data["seats"]:
        seat["server"] = None
    if held and app.hub.configured:
        from .hubapi import HubAPIError

        try:
            # Concurrent look-ups share one GET /users?state=active.
            running = await asyncio.gather(*(app.hub.has_server(f"student{s['student']}") for s in held))
        except HubAPIError as e:
            app.log.warning("Asking the hub which servers run failed: %s", e)
        else:
            for seat, up in zip(held, running):
                seat["server"] = up
    return data


class StatusHandler(BaseHandler):
    async def get(self):
        workshop = self.get_query_argument("workshop", None) or None
        self.send(await status(self.app, workshop))


# ---------------------------------------------------------------------- self-test


class CheckRuns:
    """Self-test runs: a child ``wod check --json`` each, its report kept as ``<checks_dir>/<id>.json``."""

    def __init__(self, folder: str, config_file: str, log):
        self.folder = Path(folder)
        self.config_file = config_file
        self.log = log
        self.running: dict[str, asyncio.Task] = {}

    def _path(self, check_id: str) -> Path:
        return self.folder / f"{check_id}.json"

    def _write(self, record: dict) -> None:
        # The service's alone: a failing cell's rendered source (a seat's variables) may be in a report.
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.folder.stat().st_mode & 0o077:
            self.folder.chmod(0o700)
        tmp = self._path(record["id"]).with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(fd, 0o600)
            f.write(json.dumps(record))
        os.replace(tmp, self._path(record["id"]))

    def start(self, workshop: str | None, execute: bool, timeout: float) -> dict:
        if len(self.running) >= MAX_RUNNING_CHECKS:
            raise Conflict(f"{MAX_RUNNING_CHECKS} checks are running already; try again when one has finished.", code="busy")
        record = {
            "id": uuid.uuid4().hex, "status": "running", "workshop": workshop, "all": workshop is None,
            "execute": execute, "timeout": timeout, "created": _now(), "finished": None, "report": None, "error": None,
        }
        self._write(record)
        self.running[record["id"]] = asyncio.ensure_future(self._run(record))
        return record

    async def _run(self, record: dict) -> None:
        argv = [sys.executable, "-m", "wod_jupyterhub.cli", "check", "--json", "--timeout", str(record["timeout"])]
        argv += ["--all"] if record["all"] else [record["workshop"]]
        if record["execute"]:
            argv.append("--execute")
        if self.config_file and os.path.isfile(self.config_file):
            argv += ["--config", os.path.abspath(self.config_file)]
        proc = None
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True
            )
            out, err = await proc.communicate()
            if proc.returncode in (0, 1):
                record["report"] = json.loads(out)
                record["status"] = "passed" if proc.returncode == 0 else "failed"
            else:
                record["status"] = "error"
                record["error"] = err.decode(errors="replace").strip()[-2000:] or f"wod check exited with {proc.returncode}"
        except asyncio.CancelledError:
            if proc is not None and proc.returncode is None:
                # The check's process group; its kernels (sessions of their own) follow their parent out (JPY_PARENT_PID).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            record.update(status="error", error="the service stopped before the check ended")
            raise
        except Exception as e:  # noqa: BLE001 - kept in the record for the admin, and logged
            self.log.exception("Check %s failed to run", record["id"])
            record.update(status="error", error=f"{e.__class__.__name__}: {e}")
        finally:
            record["finished"] = _now()
            self._write(record)
            self.running.pop(record["id"], None)
            self.log.info("Check %s of %s: %s", record["id"], record["workshop"] or "all workshops", record["status"])

    def get(self, check_id: str) -> dict:
        if not CHECK_ID.match(check_id):
            raise NotFound(f"There is no check {check_id!r}.")
        try:
            return json.loads(self._path(check_id).read_text())
        except FileNotFoundError:
            raise NotFound(f"There is no check {check_id}.") from None

    def list(self, limit: int = 50) -> list[dict]:
        if not self.folder.is_dir():
            return []
        paths = sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[:limit]
        out = []
        for path in paths:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            record.pop("report", None)
            out.append(record)
        return out

    async def stop(self):
        for task in list(self.running.values()):
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class CheckHandler(BaseHandler):
    scopes = (SCOPE_OPERATE,)

    async def post(self):
        if len(self.request.body) > self.app.max_body_size:
            raise PayloadTooLarge(f"The request body is larger than {self.app.max_body_size} bytes.")
        body = json_object(self.request.body)
        unknown = sorted(set(body) - {"workshop", "all", "execute", "timeout"})
        if unknown:
            raise BadRequest(f"Unknown field(s) for a check: {', '.join(unknown)}.", code="bad_field")
        workshop, every = body.get("workshop"), body.get("all", False)
        if not isinstance(every, bool) or not isinstance(body.get("execute", False), bool):
            raise BadRequest("Fields 'all' and 'execute' must be true or false.", code="bad_field")
        if (workshop is None) == (not every):
            raise BadRequest("A check takes either 'workshop' or 'all': true.", code="bad_field")
        if workshop is not None:
            if not isinstance(workshop, str):
                raise BadRequest("Field 'workshop' must be a string.", code="bad_field")
            self.app.catalog.workshop(workshop)  # 400/404 now rather than in the report
        timeout = body.get("timeout", 60)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
            raise BadRequest("Field 'timeout' must be a number of seconds between 0 and 3600.", code="bad_field")
        record = self.app.checks.start(workshop, bool(body.get("execute", False)), float(timeout))
        self.set_header("Location", f"{self.app.prefix}api/checks/{record['id']}")
        self.send(record, 202)


class ChecksHandler(BaseHandler):
    async def get(self):
        self.send({"checks": self.app.checks.list(self.int_argument("limit", 50, low=1, high=500))})


class CheckReportHandler(BaseHandler):
    async def get(self, check_id):
        self.send(self.app.checks.get(check_id))


def routes(prefix: str) -> list:
    p = re.escape(prefix)
    return [
        (rf"{p}api/status", StatusHandler),
        (rf"{p}api/check", CheckHandler),
        (rf"{p}api/checks", ChecksHandler),
        (rf"{p}api/checks/([^/]+)", CheckReportHandler),
    ]
