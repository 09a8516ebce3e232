"""The ``wod`` service: the REST API the portal calls, as a JupyterHub managed service.

The hub starts it from its ``c.JupyterHub.services`` entry::

    python -m wod_jupyterhub.service --config jupyterhub_config.py

It reads the same ``jupyterhub_config.py`` as the hub (``c.Wod.*`` shared
settings, ``c.WodService.*`` its own, ``c.WodOperations.*`` the verbs,
``c.WodHooks.*`` the hooks, ``c.WodPortal.*`` the callbacks),
listens on ``$JUPYTERHUB_SERVICE_URL`` and serves under
``$JUPYTERHUB_SERVICE_PREFIX`` (``/services/wod/``). Callers authenticate with
a JupyterHub API token; the token's owner needs the custom scope
``custom:wod:operate`` for the verbs and ``custom:wod:read`` (or operate)
for reads.
"""

import signal
import sys


def _exit_while_starting(_signum, _frame):
    raise SystemExit(0)


if __name__ == "__main__":
    # Until the event loop takes SIGTERM and SIGINT over (WodService.run), a stop request ends the
    # process at once and quietly: nothing runs yet that must stop in order. Set before the imports,
    # which take seconds on a busy machine (hence the E402 exemptions below).
    for _sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(_sig, _exit_while_starting)

import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from tornado import web  # noqa: E402
from tornado.httpserver import HTTPServer  # noqa: E402
from traitlets import Bool, Float, Integer, Unicode, default, validate  # noqa: E402
from traitlets.config import Application  # noqa: E402

from . import __version__  # noqa: E402
from .config import Wod  # noqa: E402
from .errors import BadRequest, Forbidden, NotFound, PayloadTooLarge, Unauthorized, WodError  # noqa: E402
from .hooks import WodHooks  # noqa: E402
from .operations import WodOperations  # noqa: E402
from .portal import WodPortal  # noqa: E402
from .store import Status  # noqa: E402
from .waiting import settle, within  # noqa: E402

SCOPE_OPERATE = "custom:wod:operate"
SCOPE_READ = "custom:wod:read"
OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.json"
OP_ID = re.compile(r"^[0-9a-f]{32}$")


# ---------------------------------------------------------------------- handlers


class BaseHandler(web.RequestHandler):
    #: scopes any one of which lets a caller in; None: no token needed
    scopes: tuple | None = (SCOPE_READ, SCOPE_OPERATE)

    @property
    def app(self) -> "WodService":
        return self.settings["wod_service"]

    @property
    def engine(self):
        return self.app.engine

    @property
    def views(self):
        return self.app.views

    def set_default_headers(self):
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    async def prepare(self):
        await self.authenticate()

    async def authenticate(self):
        self.caller = None
        if self.scopes is None:
            return
        model = await self.app.hub_auth.get_user(self, sync=False)
        if not model:
            raise Unauthorized("A JupyterHub API token is required (header 'Authorization: token <token>').")
        granted = set(model.get("scopes") or [])
        if not granted.intersection(self.scopes):
            who = model.get("name") or "the caller"
            raise Forbidden(f"The token of {who} lacks the scope {self.scopes[0]} this call needs.")
        self.caller = model

    @property
    def can_operate(self) -> bool:
        return bool(self.caller) and SCOPE_OPERATE in set(self.caller.get("scopes") or [])

    def send(self, data, status=200):
        self.set_status(status)
        self.finish(json.dumps(data))

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, WodError):
            self.set_status(exc.status)
            body = exc.to_json()
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message % exc.args if exc.log_message and exc.args else exc.log_message
            body = {"error": _code(status_code), "message": message or self._reason}
        elif status_code >= 500:
            body = {"error": "internal", "message": "The service failed unexpectedly; the admin finds the cause in its log."}
        else:
            body = {"error": _code(status_code), "message": self._reason}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def log_exception(self, typ, value, tb):
        if isinstance(value, WodError):
            self.app.log.info("%s %s → %s %s", self.request.method, self.request.path, value.status, value.message)
            return
        super().log_exception(typ, value, tb)

    def int_argument(self, name, default=None, low=None, high=None):
        raw = self.get_query_argument(name, None)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise BadRequest(f"Query parameter {name} must be a whole number, not {raw!r}.") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise BadRequest(f"Query parameter {name} must be between {low} and {high}, not {value}.")
        return value


def _code(status: int) -> str:
    return {
        400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
        409: "conflict", 413: "payload_too_large", 422: "unprocessable",
    }.get(status, "internal" if status >= 500 else "error")


_INT = (int,)
_STR = (str,)
_TYPES = {"integer": _INT, "string": _STR, "array": (list,)}
MAX_TEXT = 255


def verb_fields(openapi: dict) -> dict:
    """The body fields each verb takes, read from the OpenAPI document: verb → {name: (types, required)}."""
    fields = {}
    for verb in ("CREATE", "CLEANUP", "RESET", "PURGE"):
        schema = openapi["components"]["schemas"][f"{verb.capitalize()}Request"]
        required = set(schema.get("required", ()))
        fields[verb] = {name: (_TYPES[p["type"]], name in required) for name, p in schema["properties"].items()}
    return fields


OPENAPI = json.loads(OPENAPI_FILE.read_text())
VERB_FIELDS = verb_fields(OPENAPI)


@web.stream_request_body
class VerbHandler(BaseHandler):
    scopes = (SCOPE_OPERATE,)

    def initialize(self, verb):
        self.verb = verb
        self._chunks = []
        self._size = 0

    async def prepare(self):
        limit = self.app.max_body_size
        length = self.request.headers.get("Content-Length")
        self._too_large = False
        if length and length.isdigit() and int(length) > limit:
            self._too_large = True
        # The caller is identified once the body is in: answering before it is read
        # (a 401, a 413) would make tornado drop the connection under the client.

    def data_received(self, chunk):
        self._size += len(chunk)
        if self._size > self.app.max_body_size:
            self._too_large = True
            self._chunks = []
        elif not self._too_large:
            self._chunks.append(chunk)

    def parse(self) -> dict:
        if self._too_large:
            raise PayloadTooLarge(f"The request body is larger than {self.app.max_body_size} bytes.")
        raw = b"".join(self._chunks)
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"The request body is not valid JSON: {e}.", code="bad_json") from None
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.", code="bad_json")
        fields = VERB_FIELDS[self.verb]
        unknown = sorted(set(body) - set(fields))
        if unknown:
            raise BadRequest(f"Unknown field(s) for {self.verb}: {', '.join(unknown)}.", code="bad_field")
        for name, (types, required) in fields.items():
            value = body.get(name)
            if value is None:
                if required:
                    raise BadRequest(f"Field {name!r} is required for {self.verb}.", code="missing_field")
                continue
            if not isinstance(value, types) or isinstance(value, bool):
                kind = "a whole number" if types is _INT else "a string" if types is _STR else "a list"
                raise BadRequest(f"Field {name!r} must be {kind}, not {json.dumps(value)[:40]}.", code="bad_field")
            if types is _STR and (len(value) > MAX_TEXT or not value.strip()):
                raise BadRequest(f"Field {name!r} must be a non-empty string of at most {MAX_TEXT} characters.", code="bad_field")
        return body

    async def post(self):
        await self.authenticate()
        body = self.parse()
        wait = self.get_query_argument("wait", None)
        if wait is not None:
            try:
                wait = float(wait)
            except ValueError:
                raise BadRequest(f"Query parameter wait must be a number of seconds, not {wait!r}.") from None
            if not 0 <= wait <= self.app.max_wait:
                raise BadRequest(f"Query parameter wait must be between 0 and {self.app.max_wait} seconds.")
        first, last = body.get("student"), None
        if self.verb == "RESET":
            if (first is None) == (body.get("students") is None):
                raise BadRequest("RESET takes either 'student' or 'students': [min, max].", code="bad_field")
            if body.get("students") is not None:
                pair = body["students"]
                if len(pair) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair):
                    raise BadRequest("Field 'students' must be [min, max], two whole numbers.", code="bad_field")
                first, last = pair
                if last == first:
                    last = None
        # The engine runs the verb: VERBS[verb] in operations/verbs.py.
        op = await self.engine.submit(
            self.verb, first, last, customer=body.get("customer"), email=body.get("email"), workshop=body.get("workshop")
        )
        self.app.metrics.request(self.verb)
        if wait:
            op = await self.engine.wait(op.id, wait, op)
            if op.status in Status.FINISHED:
                return self.send(self.views.operation_json(op, reveal=self.can_operate), 200)
        self.set_header("Location", f"{self.app.prefix}api/operations/{op.id}")
        self.send(self.views.operation_json(op, reveal=self.can_operate), 202)


class OperationHandler(BaseHandler):
    async def get(self, op_id):
        if not OP_ID.match(op_id):
            raise NotFound(f"There is no operation {op_id!r}.")
        self.send(self.views.operation_json(self.views.operation(op_id), reveal=self.can_operate))


class OperationsHandler(BaseHandler):
    async def get(self):
        student = self.int_argument("student", low=0, high=10**9)
        limit = self.int_argument("limit", 100, low=1, high=1000)
        status = self.get_query_argument("status", None) or None
        if status and status not in Status.ALL:
            raise BadRequest(f"Query parameter status must be queued, running, succeeded or failed, not {status!r}.")
        verb = (self.get_query_argument("verb", None) or "").upper() or None
        if verb and verb not in VERB_FIELDS:
            raise BadRequest(f"Query parameter verb must be CREATE, CLEANUP, RESET or PURGE, not {verb!r}.")
        ops = self.views.operations(student=student, status=status, verb=verb, limit=limit)
        self.send({"operations": [self.views.operation_json(op, reveal=self.can_operate) for op in ops]})


class StudentHandler(BaseHandler):
    async def get(self, number):
        n = int(number)
        data = self.views.student_json(n)
        data["server"] = None
        hub = self.app.hub
        if hub.configured:
            from .hubapi import HubAPIError

            try:
                model = await hub.user(f"student{n}")
            except HubAPIError as e:
                self.app.log.warning("Reading student%s from the hub failed: %s", n, e)
            else:
                server = ((model or {}).get("servers") or {}).get("", None)
                data["server"] = {
                    "exists": model is not None,
                    "running": bool(server and server.get("ready")),
                    "pending": (model or {}).get("pending"),
                    "url": server.get("url") if server else None,
                }
        self.send(data)


class WorkshopsHandler(BaseHandler):
    async def get(self):
        self.send({"workshops": self.app.catalog.get().to_json()})


class WorkshopHandler(BaseHandler):
    async def get(self, name):
        ws, _, _ = self.app.catalog.workshop(name)
        self.send(ws.to_json())


class OpenAPIHandler(BaseHandler):
    scopes = None

    async def get(self):
        self.send(self.app.openapi)


class HealthHandler(BaseHandler):
    scopes = None

    async def get(self):
        from sqlalchemy import text

        try:
            with self.app.store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            database = "ok"
        except Exception as e:  # noqa: BLE001 - health reports, never raises
            database = f"error: {e.__class__.__name__}"
        self.send(
            {
                "status": "ok" if database == "ok" else "degraded",
                "version": __version__,
                "database": database,
                "running": self.engine.running,
                "warm": self.app.warm or not self.app.warm_up,
                "prepare_pending": self.app.preparer.pending,
            },
            200 if database == "ok" else 503,
        )


class MetricsHandler(BaseHandler):
    def set_default_headers(self):
        self.set_header("Cache-Control", "no-store")

    async def get(self):
        app = self.app
        body = app.metrics.render(store=app.store, running=self.engine.running, outbox=app.outbox if app.portal.enabled else None)
        self.set_header("Content-Type", app.metrics.content_type)
        self.finish(body)


class NotFoundHandler(BaseHandler):
    scopes = None

    def prepare(self):
        raise NotFound(f"No such endpoint: {self.request.method} {self.request.path}.")


# ---------------------------------------------------------------------- application


class WodService(Application):
    """The wod service: REST API, durable operations, portal callbacks."""

    name = "wod-service"
    description = __doc__
    version = __version__
    classes = [Wod, WodHooks, WodOperations, WodPortal]
    aliases = {
        "config": "WodService.config_file",
        "f": "WodService.config_file",
        "url": "WodService.url",
        "log-level": "Application.log_level",
    }

    @default("log_level")
    def _log_level_default(self):
        import logging

        return logging.INFO

    @default("log_format")
    def _log_format_default(self):
        return "[%(levelname)1.1s %(asctime)s.%(msecs).03d wod] %(message)s"

    @default("log_datefmt")
    def _log_datefmt_default(self):
        return "%Y-%m-%d %H:%M:%S"

    config_file = Unicode(
        "jupyterhub_config.py",
        help="The hub's configuration file; the service reads c.Wod, c.WodService, c.WodOperations, c.WodHooks and c.WodPortal from it.",
    ).tag(config=True)

    url = Unicode(
        help="Where the service listens; defaults to $JUPYTERHUB_SERVICE_URL (set by the hub for a managed service).",
    ).tag(config=True)

    @default("url")
    def _url_default(self):
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    prefix = Unicode(
        help="URL prefix the service serves under; defaults to $JUPYTERHUB_SERVICE_PREFIX, then /services/wod/.",
    ).tag(config=True)

    @default("prefix")
    def _prefix_default(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/wod/")

    @validate("prefix")
    def _slashes(self, proposal):
        return "/" + proposal["value"].strip("/") + "/" if proposal["value"].strip("/") else "/"

    max_body_size = Integer(1024 * 1024, help="Largest request body in bytes; a larger one gets 413.").tag(config=True)
    max_wait = Float(300, help="Longest ?wait=SECONDS a caller may ask for.").tag(config=True)
    shutdown_grace = Float(
        10,
        help="""Seconds running operations get to finish at shutdown; the rest resume at the next start.

        The service exits within this + 5 s of SIGTERM or SIGINT, whatever it is doing.
        """,
    ).tag(config=True)
    warm_up = Bool(True, help="Compile the templates of the active workshops at start-up, in the background.").tag(config=True)
    warm = False

    hostname = Unicode(
        help="The hub's name for the templates (Ansible's inventory_hostname); defaults to this host's name.",
    ).tag(config=True)

    @default("hostname")
    def _hostname_default(self):
        return socket.gethostname()

    def initialize(self, argv=None):
        super().initialize(argv)
        path = Path(self.config_file)
        if self.config_file and path.is_file():
            self.load_config_file(path.name, path=str(path.parent.absolute()))
            # The command line wins over the file.
            if self.cli_config:
                self.update_config(self.cli_config)
        elif "config_file" in self.config.get("WodService", {}) or (argv and any("config" in a for a in argv)):
            print(f"wod service: configuration file {self.config_file} does not exist", file=sys.stderr)
            raise SystemExit(2)
        renamed = renamed_settings(self.config)
        if renamed:
            print(f"wod service: {self.config_file}: " + "; ".join(renamed), file=sys.stderr)
            raise SystemExit(2)
        self.wod = Wod(config=self.config)

    # ---- building the parts

    def build(self):
        from jupyterhub.services.auth import HubAuth

        from .catalog import CatalogCache
        from .hubapi import HubAPI
        from .metrics import Metrics
        from .operations import Engine, Preparer, SeatWork, Views
        from .passwords import Sealer
        from .portal import Outbox
        from .store import Store
        from .templating import Renderer

        self.store = Store(self.wod.db_url)
        self.sealer = Sealer.from_settings(self.wod)
        self.portal = WodPortal(parent=self, log=self.log)
        self.outbox = Outbox(self.store, self.sealer, self.portal, self.wod, log=self.log)
        self.hub = HubAPI(log=self.log)
        self.hub_auth = HubAuth(cache_max_age=60)
        self.metrics = Metrics()
        settings = WodOperations(parent=self)
        self.catalog = CatalogCache(self.wod, ttl=settings.catalog_ttl)
        self.work = SeatWork(
            self.wod, settings, catalog=self.catalog, hub=self.hub, hooks=WodHooks(self.wod, parent=self, log=self.log),
            renderer=Renderer(strict_undefined=self.wod.strict_undefined, clear_outputs=self.wod.clear_outputs),
            sealer=self.sealer, outbox=self.outbox, hostname=self.hostname, log=self.log,
        )
        self.engine = Engine(settings, self.store, self.work, log=self.log)
        self.engine.on_end(self.metrics.operation_ended)
        self.preparer = Preparer(settings, self.store, self.work, self.engine, log=self.log)
        self.views = Views(self.wod, self.store, self.sealer)
        self.openapi = OPENAPI

    def make_app(self) -> web.Application:
        p = re.escape(self.prefix)
        routes = [(rf"{p}api/{verb.lower()}", VerbHandler, {"verb": verb}) for verb in VERB_FIELDS]
        routes += [
            (rf"{p}api/operations/([^/]+)", OperationHandler),
            (rf"{p}api/operations", OperationsHandler),
            (rf"{p}api/students/([0-9]{{1,9}})", StudentHandler),
            (rf"{p}api/workshops/([^/]+)", WorkshopHandler),
            (rf"{p}api/workshops", WorkshopsHandler),
            (rf"{p}api/openapi\.json", OpenAPIHandler),
            (rf"{p}api/health", HealthHandler),
            (rf"{p}metrics", MetricsHandler),
        ]
        return web.Application(routes, default_handler_class=NotFoundHandler, wod_service=self, log_function=self._log_request)

    def _log_request(self, handler):
        status = handler.get_status()
        level = self.log.info if status < 400 else self.log.warning if status < 500 else self.log.error
        if handler.request.path.endswith(("/api/health", "/metrics")) and status < 400:
            level = self.log.debug
        level("%d %s %s %.1fms", status, handler.request.method, handler.request.uri, 1000 * handler.request.request_time())

    # ---- running

    async def run(self):
        self._stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        self.build()
        parts = urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        # Bodies up to 64× the limit are read and dropped (so the caller gets a JSON 413);
        # beyond that tornado just closes the connection.
        server = HTTPServer(self.make_app(), max_body_size=max(self.max_body_size * 64, 64 * 1024 * 1024), xheaders=True)
        server.listen(port, host)
        self.engine.start()
        self.preparer.start()
        background = [asyncio.ensure_future(self.outbox.run())]
        if self.warm_up:
            background.append(asyncio.ensure_future(self._warm_up()))
        if self.hub.configured:
            background.append(asyncio.ensure_future(self._load_users()))
        self.log.info("wod service %s listening on %s%s (database %s)", __version__, self.url.rstrip("/"), self.prefix, _safe_url(self.wod.db_url))
        await self._stopping.wait()
        self.log.info("Stopping: no new requests; running operations get %.0f s to finish", self.shutdown_grace)
        # Whatever hangs below (a thread stuck in a system call, a bug), the process ends in time.
        watchdog = threading.Timer(self.shutdown_grace + 4, self._stop_now)
        watchdog.daemon = True
        watchdog.start()
        server.stop()
        await self.preparer.stop()
        await self.engine.stop(self.shutdown_grace)
        if await settle(background, timeout=1):
            self.log.warning("Some background work did not stop when cancelled")
        for close in (self.outbox.close, self.hub.close):
            try:
                await within(close(), 1)
            except Exception as e:  # noqa: BLE001 - closing connections: nothing left to do about it
                self.log.warning("Closing %s failed: %s", close.__qualname__, e or e.__class__.__name__)
        self.store.dispose()
        self.log.info("Stopped")

    def _stop_now(self):
        self.log.error("Still not stopped %.0f s after the signal: exiting now", self.shutdown_grace + 4)
        os._exit(1)

    async def _load_users(self):
        from .hubapi import HubAPIError

        try:
            self.log.info("The hub has %d users", await self.hub.load_users())
        except HubAPIError as e:
            self.log.warning("Listing the hub's users failed (%s); CREATE will ask the hub user by user", e)

    async def _warm_up(self):
        started = time.monotonic()
        try:
            from .operations import warm_up

            n = await self.work.blocking(warm_up, self.work)
        except Exception:
            self.log.exception("Compiling the workshop templates ahead failed; CREATEs compile them as they go")
        else:
            self.log.info("Compiled %d workshop templates in %.1f s", n, time.monotonic() - started)
        self.warm = True

    def start(self):
        asyncio.run(self.run())
        busy = [t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
        if busy:
            # Blocking work cancelled at the asyncio level (a provisioning, a staging, the template
            # warm-up) may run on in its thread; Python would wait for it at exit. Leave it as a crash
            # would: every step survives that, and the next start redoes what was not journaled.
            self.log.info("Leaving %d busy threads: %s", len(busy), ", ".join(sorted(busy)))
            logging.shutdown()
            os._exit(0)


#: settings that moved: (section, name or None for the whole section) → where they live now
RENAMED = {
    ("Operations", None): "c.WodOperations",
    ("Hooks", None): "c.WodHooks",
    **{("WodService", k): f"c.WodOperations.{k}" for k in ("workers", "threads", "lease_seconds", "poll_interval", "start_server", "login_url")},
    ("WodService", "hook_timeout"): "c.WodHooks.timeout",
}


def renamed_settings(config) -> list[str]:
    """A sentence per setting of ``config`` written under a name that moved (empty: none)."""
    found = []
    for (section, name), now in RENAMED.items():
        if section not in config:
            continue
        names = [name] if name else sorted(config[section])
        for n in names:
            if n in config[section]:
                found.append(f"c.{section}.{n} is now {now if name else f'{now}.{n}'}")
    return found


def _safe_url(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def main(argv=None):
    app = WodService()
    app.initialize(argv)
    app.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
