"""The ``wod`` service: the REST API the portal calls, as a JupyterHub managed service."""

import asyncio
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import Bool, Float, Integer, TraitError, Unicode, default, validate
from traitlets.config import Application

from .. import __version__
from ..config import Wod
from ..seats.diskuse import DiskWatch
from ..waiting import settle, within
from .callbacks.portal import WodPortal
from .handlers import (
    OPENAPI,
    VERB_FIELDS,
    HealthHandler,
    MetricsHandler,
    NotFoundHandler,
    OpenAPIHandler,
    OperationHandler,
    OperationsHandler,
    StudentHandler,
    VerbHandler,
    WorkshopHandler,
    WorkshopsHandler,
)
from .hooks import WodHooks
from .mail.settings import WodMail
from .operations import WodOperations
from .operations.ahead import WodAhead
from .steps import WodSteps

# ---------------------------------------------------------------------- application


class WodService(Application):
    """The wod service: REST API, durable operations, portal callbacks."""

    name = "wod-service"
    description = """The `wod` service: the REST API the portal calls, as a JupyterHub managed service.

    The hub starts it from its `c.JupyterHub.services` entry::

        python -m wod_jupyterhub.service --config jupyterhub_config.py

    It reads the same `jupyterhub_config.py` as the hub (`c.Wod.*` shared
    settings, `c.WodService.*` its own, `c.WodOperations.*` the verbs,
    `c.WodHooks.*` the hooks, `c.WodPortal.*` the callbacks),
    listens on `$JUPYTERHUB_SERVICE_URL` and serves under
    `$JUPYTERHUB_SERVICE_PREFIX` (`/services/wod/`). Callers authenticate with
    a JupyterHub API token; the token's owner needs the custom scope
    `custom:wod:operate` for the verbs and `custom:wod:read` (or operate)
    for reads.
    """
    version = __version__
    classes = [Wod, WodHooks, WodOperations, WodAhead, WodPortal, WodMail, WodSteps]
    aliases = {
        "config": "WodService.config_file",
        "f": "WodService.config_file",
        "url": "WodService.url",
        "log-level": "Application.log_level",
    }

    @default("log_level")
    def _log_level_default(self):
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
    disk_interval = Float(
        300, help="Seconds between two sizings of the homes of the seats in use (done while no operation runs; see c.Wod.home_size_limit)."
    ).tag(config=True)

    @validate("disk_interval")
    def _positive_interval(self, proposal):
        if proposal["value"] <= 0:
            raise TraitError(f"disk_interval must be more than 0 seconds, not {proposal['value']}")
        return proposal["value"]
    checks_dir = Unicode(
        "wod_checks",
        help="Folder (relative to the service's working folder) keeping the reports of POST api/check, one JSON file each.",
    ).tag(config=True)
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

        from ..passwords import Sealer
        from ..store.models import Store
        from ..workshops.catalog import CatalogCache
        from ..workshops.templating import default_renderer
        from .callbacks.portal import PortalCallbacks
        from .hubclient import HubAPI
        from .metrics import Metrics
        from .operations import Engine, Preparer, SeatWork, Views
        from .operations.ahead import Ahead
        from .steps import StepChecks

        self.store = Store(self.wod.db_url)
        self.sealer = Sealer.from_settings(self.wod)
        self.portal = WodPortal(parent=self, log=self.log)
        self.outbox = PortalCallbacks(self.store, self.sealer, self.portal, self.wod, log=self.log)
        self.hub = HubAPI(log=self.log)
        self.hub_auth = HubAuth(cache_max_age=60)
        self.metrics = Metrics()
        settings = WodOperations(parent=self)
        self.catalog = CatalogCache(self.wod, ttl=settings.catalog_ttl)
        from ..seats.directory import Directory, WodLdap

        ldap = WodLdap(parent=self)
        try:
            self.directory = Directory(ldap)  # reads its bind password now: the secrets leave the environment below
        except TraitError as e:
            print(f"wod service: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        os.environ.pop(ldap.bind_password_env, None)
        self.work = SeatWork(
            self.wod, settings, catalog=self.catalog, hub=self.hub, hooks=WodHooks(self.wod, parent=self, log=self.log),
            renderer=default_renderer(self.wod),
            sealer=self.sealer, outbox=self.outbox, hostname=self.hostname, log=self.log, on_ahead_cpu=self.metrics.ahead_cpu,
            directory=self.directory, ahead=Ahead(WodAhead(parent=self), self.hub, log=self.log),
        )
        self.steps = StepChecks(
            WodSteps(parent=self), self.wod, self.store, self.catalog, self.work.renderer, hostname=self.hostname, log=self.log
        )
        self.work.steps = self.steps  # CLEANUP checks the steps not verified yet
        self.engine = Engine(settings, self.store, self.work, log=self.log)
        self.engine.on_end(self.metrics.operation_ended)
        self.preparer = Preparer(settings, self.store, self.work, self.engine, log=self.log)
        self.views = Views(self.wod, self.store, self.sealer, catalog=self.catalog)
        from .expiry import Expiry
        from .liveview import LiveView
        from .progress import Progress

        self.progress = Progress(self.wod, self.catalog, self.log)
        self.live = LiveView(self)
        self.expiry = Expiry(self.wod, self.store, self.engine, self.log)
        from .mail.gateway import MailGateway

        # In this process, beside the engine: see mail/gateway.py for why.
        self.mail = MailGateway(
            WodMail(parent=self), self.wod, self.store, self.engine.submit, self.log, metrics=self.metrics,
            holding=self.engine.holding,
        )
        self.disk = DiskWatch(lambda n: str(self.wod.home(n)), self.wod.home_size_bytes, self.disk_interval, log=self.log)
        self.openapi = OPENAPI
        from .admin import CheckRuns
        from .dashboard import make_oauth

        self.checks = CheckRuns(self.checks_dir, self.config_file, self.log)
        self.hub_oauth = make_oauth()
        # Workshop templates render in this process: once the secrets are read
        # (the sealing key, the portal's password), the environment a template
        # escape could print holds none of them.
        _ = self.portal.password
        drop_secrets(os.environ)

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
        from . import admin as admin_api
        from . import dashboard, liveview, seatapi, unlock_api
        from . import steps as steps_api

        routes += admin_api.routes(self.prefix) + dashboard.routes(self.prefix) + unlock_api.routes(self.prefix)
        routes += seatapi.routes(self.prefix) + liveview.routes(self.prefix) + steps_api.routes(self.prefix)
        return web.Application(
            routes, default_handler_class=NotFoundHandler, wod_service=self, log_function=self._log_request,
            # Signs the dashboard's OAuth cookies; a restart only sends browsers through the hub's OAuth again.
            cookie_secret=os.urandom(32),
        )

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
        if self.hub.configured and self.work.settings.start_server:
            self.work.ahead.start()
        background = [asyncio.ensure_future(self.outbox.run())]
        await self.mail.start()
        background.append(asyncio.ensure_future(self.disk.run(self.views.held_seats, lambda: self.engine.idle)))
        background += [asyncio.ensure_future(self.expiry.run()), asyncio.ensure_future(self.live.run())]
        if self.warm_up:
            background.append(asyncio.ensure_future(self._warm_up()))
        if self.hub.configured:
            background.append(asyncio.ensure_future(self._load_users()))
        self._check_cgroups()
        self.log.info("wod service %s listening on %s%s (database %s)", __version__, self.url.rstrip("/"), self.prefix, _safe_url(self.wod.db_url))
        await self._stopping.wait()
        self.log.info("Stopping: no new requests; running operations get %.0f s to finish", self.shutdown_grace)
        # Each part below is bounded (at most grace + 4 s in all); whatever still hangs (a bug),
        # the process ends in time.
        watchdog = threading.Timer(self.shutdown_grace + 4.5, self._stop_now)
        watchdog.daemon = True
        watchdog.start()
        server.stop()
        try:
            # No new mail either; a relay in the middle of a send is left to its thread (sent or retried later).
            await within(self.mail.stop(), 0.5)
        except TimeoutError:
            self.log.warning("The mail listener did not stop within 0.5 s")
        self.expiry.stop()
        self.live.stop()
        await self.preparer.stop()
        await self.work.ahead.stop()
        await self.engine.stop(self.shutdown_grace)
        await within(self.checks.stop(), 0.5)
        self.steps.close()
        if await settle(background, timeout=0.5):
            self.log.warning("Some background work did not stop when cancelled")
        for close in (self.outbox.close, self.hub.close):
            try:
                await within(close(), 0.5)
            except Exception as e:  # closing connections: nothing left to do about it
                self.log.warning("Closing %s failed: %s", close.__qualname__, e or e.__class__.__name__)
        self.store.dispose()
        self.log.info("Stopped")

    def _stop_now(self):
        self.log.error("Still not stopped %.1f s after the signal: exiting now", self.shutdown_grace + 4.5)
        os._exit(1)

    def _check_cgroups(self):
        """The one warning at start naming what control groups do not enforce here (the hub reads the same c.Wod)."""
        from ..seats import cgroups

        h = cgroups.for_wod(self.wod)
        if h is not None and h.missing:
            kills = "" if h.available else " CLEANUP, RESET and PURGE end a seat's processes by its uid only."
            self.log.warning("%s%s", h.warning(), kills)

    async def _load_users(self):
        from .hubclient import HubAPIError

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


#: Environment variables the service reads once at start and then drops (see ``WodService.build``).
SECRET_ENV = ("WOD_SECRET_KEY", "WOD_PORTAL_PASSWORD", "WOD_API_TOKEN", "WOD_ADMIN_HASH", "WOD_DB_URL", "WOD_LDAP_PASSWORD")


def drop_secrets(environ) -> list:
    """Remove the secret variables from ``environ``; return the names removed."""
    return [name for name in SECRET_ENV if environ.pop(name, None) is not None]


def _safe_url(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def main(argv=None):
    """Run the service with ``argv`` (the command line by default) until it is stopped."""
    app = WodService()
    app.initialize(argv)
    app.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
