"""``SeatSpawnerMixin``: what every engine's spawner of a seat does, whichever engine runs the server.

The mixin goes before an engine's spawner (``LocalProcessSpawner`` for the
local runtime's ``WodSpawner``; ``DockerSpawner``, ``SwarmSpawner`` and
``KubeSpawner`` in ``hub/containers.py`` and ``hub/kubernetes.py``): the
assignment check before the start, the start URL, the seat's limits, the id
of the server's API token and the completion snapshot at the stop. The engine
puts the limits on what it starts; the verbs end the seat through the same
engine's runtime (``seats/runtime.py``).
"""

import asyncio
import os
import pwd
import secrets

from jupyterhub.utils import maybe_future, url_path_join
from tornado import web
from traitlets import Bool, Integer, TraitError, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from ..config import Wod, student_number
from ..errors import WodError
from ..lab import login_cookie as login_cookie_extension
from ..limits import Limits, limits_from_meta
from ..seats import completion, completion_worker
from ..seats.runtime import default_backend
from ..store.models import Completion, Store
from ..workshops.catalog import find_workshop, load_catalog, parse_workshop_name
from . import firstvisit, internals


def server_token_ids(user, generation: int) -> set:
    """Ids of the API tokens the hub issued to ``user``'s servers that run for seat ``generation``.

    ``user``: the hub's ``User`` (None: no server of it in this hub). The
    ``WodAuthenticator`` keeps these tokens, and no other, when it ends a
    user's sessions: recognised by what the hub itself knows, never by a
    token's note (users write their own: a personal token noted "Server
    at …" must end with the session like any other). A ``WodSpawner``
    records the id of its token and the generation it was started for in
    its state (kept across hub restarts); only a server started for the
    current generation keeps its token, so a server left from a previous
    participant loses its access to the hub too.
    """
    keep = set()
    for spawner in internals.spawners(user):
        token_id = getattr(spawner, "server_token_id", None)
        if token_id is not None and spawner.active and getattr(spawner, "seat_generation", None) == generation:
            keep.add(token_id)
    return keep


#: the name of the ``wod`` service among the hub's services
SERVICE_NAME = "wod"
#: the server extension of the session bar's routes, enabled in every seat's server that knows the service
SESSION_EXTENSION = "wod_jupyterhub.lab.extension"


def workshop_folder(workshop: str) -> str:
    """The folder a booked workshop lives in: a ``CHLG-<Name>`` request renders into ``WKSHP-<Name>``."""
    return parse_workshop_name(workshop)[0]


class SeatSpawnerMixin(LoggingConfigurable):
    """A seat's server on any engine: put before the engine's spawner class (``class S(SeatSpawnerMixin, Engine)``)."""

    start_url = Unicode(
        "/lab/tree/{workshop}/{readme}",
        help="""Where a student's browser lands when the server starts.

        ``{workshop}`` is the workshop folder (``WKSHP-<Name>``, also for a
        challenge) and ``{readme}`` is ``c.Wod.readme_notebook``.
        """,
    ).tag(config=True)

    service_url = Unicode(
        help="""The ``wod`` service's internal URL, ending in ``/``, that a seat's server reaches it at.

        Given to the server as ``$WOD_SERVICE_URL``; the server's session bar
        routes (the ``wod_jupyterhub.lab.extension`` server extension, enabled with it)
        forward the participant's JupyterLab to the service's ``api/seat``
        there, with the server's own token. Defaults to the ``url`` of the
        hub's service named ``wod`` (``c.JupyterHub.services``) and its
        prefix (``http://127.0.0.1:10101/services/wod/``): reachable from a
        local seat; a container's or pod's seat needs an address its network
        reaches. Empty: no session bar.
        """,
    ).tag(config=True)

    @default("service_url")
    def _service_url_default(self):
        hub = self.config.JupyterHub
        for service in hub.get("services", None) or []:
            if service.get("name") == SERVICE_NAME and service.get("url"):
                return service["url"].rstrip("/") + url_path_join(hub.get("base_url", None) or "/", "services", SERVICE_NAME) + "/"
        return ""

    login_cookie = Bool(
        True,
        help="""Whether a participant's login also signs them in to their running server.

        Then the login's answer carries the server's own cookie, and the
        browser's first visit to the server skips the OAuth hand-shake with
        the hub (three requests to the hub and three through the proxy per
        participant: what a room arriving at once waits for). The server
        gets a cookie secret of its own for each start, derived from the
        hub's, in its environment; its ``wod_jupyterhub.lab.login_cookie``
        extension takes it. Not on subdomains (``c.JupyterHub.subdomain_host``)
        or with ``c.JupyterHub.cookie_host_prefix_enabled``: there the
        hand-shake runs as without it. A server started before a change of
        this option keeps what it was started with.
        """,
    ).tag(config=True)

    pids_limit = Integer(
        512,
        allow_none=True,
        help="""Most processes (and threads) a seat may run at once: its server, kernels, terminals and all they fork.

        A fork bomb stops there instead of exhausting the machine's pids. A
        Jupyter server with a kernel uses about 30 (threads count); the
        default leaves room for a workshop's own tools. None for no limit.
        Enforced by the seat's runtime (here: its control group, ``c.Wod.cgroups``;
        a container's pids limit); a workshop may ask for more in its ``wod.yml``
        (``limits: {processes: N}``).
        """,
    ).tag(config=True)

    @validate("pids_limit")
    def _valid_pids_limit(self, proposal):
        return self._checked_limit("pids", proposal["value"])

    # JupyterHub's own limits get defaults that share a 2-core class machine fairly.
    @default("mem_limit")
    def _mem_limit_default(self):
        return 2 * 1024**3

    @default("cpu_limit")
    def _cpu_limit_default(self):
        return 1.0

    @validate("mem_limit")
    def _valid_mem_limit(self, proposal):
        return self._checked_limit("memory", proposal["value"])

    @validate("cpu_limit")
    def _valid_cpu_limit(self, proposal):
        return self._checked_limit("cpu", proposal["value"])

    @staticmethod
    def _checked_limit(field, value):
        if value is not None:
            try:
                Limits(**{field: value})
            except ValueError as e:
                raise TraitError(f"WodSpawner: {e}") from None
        return value

    #: whether the server runs as the Linux account ``student<N>`` of the hub's machine (checked before the start)
    runs_as_account = True

    backend = Unicode(
        help="""The ``wod.backend`` label of the seats' containers or pods, on an engine that labels them;
        defaults to ``c.Wod.cgroup_parent``, as the service's runtime (``seats/runtime.py``).""",
    ).tag(config=True)

    @default("backend")
    def _backend_default(self):
        # An engine's spawner may ask (its names) before __init__ has made self.wod.
        return default_backend(getattr(self, "wod", None) or Wod(config=self.config))

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.wod = Wod(config=self.config)
        self._assignment = None
        # The id (not the secret) of the API token the hub issued to this server: WodAuthenticator keeps
        # that token, and no other, when it ends the user's sessions (a note says nothing: users write them).
        self.server_token_id = None
        # The start (server_token_id) whose server took a cookie secret from the hub (login_cookie).
        self._login_cookie_start = None
        # Drawn at each such start: the hub's SQLite gives a later start's token the id of a deleted one.
        self._login_cookie_salt = None
        # The seat's limits (seat_limits), set at each start.
        self._limits = None
        self._workshop = None  # (folder, catalog entry) of this start's seat
        # Set at the stop: True when the server was started ahead and no browser ever reached it.
        self._never_opened = False

    @property
    def store(self) -> Store:
        # One engine per hub process, shared with the authenticator.
        return Store.shared(self.wod.db_url)

    @property
    def number(self):
        return student_number(self.user.name)

    @property
    def home(self) -> str:
        return str(self.wod.home(self.number))

    # -- before the start ------------------------------------------------

    def load_assignment(self) -> dict:
        """The seat's current assignment, or a clear refusal."""
        n = self.wod.seat(self.user.name)
        if n is None:
            raise web.HTTPError(403, f"{self.user.name} is not a workshop seat of this hub, so it has no server here.")
        row = self.store.student(n)
        if row is None or not row.active or not row.workshop:
            raise web.HTTPError(403, f"{self.user.name} has no workshop booked at the moment, so its server cannot start.")
        if not os.path.isdir(self.home):
            raise web.HTTPError(
                409,
                f"The home of {self.user.name} is missing ({self.home}); the workshop was not provisioned."
                " Ask the organizers to book the seat again.",
            )
        if self.wod.system_users and self.runs_as_account:
            self.check_account(n)
        return {"student": n, "customer": row.customer, "workshop": row.workshop, "generation": row.generation}

    def check_account(self, n: int) -> None:
        """In system-users mode the Linux account must exist with the expected uid."""
        name, uid = self.user.name, self.wod.uid_base + n
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise web.HTTPError(409, f"The Linux account {name} does not exist; an admin must run `wod users create` (as root).") from None
        if entry.pw_uid != uid:
            raise web.HTTPError(409, f"The Linux account {name} has uid {entry.pw_uid}, not {uid} (uid_base + {n}); fix the account or c.Wod.uid_base.")

    def apply_assignment(self, assignment: dict) -> None:
        folder = workshop_folder(assignment["workshop"])
        self.notebook_dir = self.home
        self.default_url = self.start_url.format(workshop=folder, readme=self.wod.readme_notebook)

    def warn_same_origin(self) -> None:
        """Once per hub, before the first start: whatever this engine wants an admin to know about the seats' origin."""

    async def claim_seat(self) -> dict:
        """Before the start: the seat's assignment checked and applied, its token's id and limits known."""
        self.warn_same_origin()
        self._workshop = None  # the catalog may have changed since the last start
        self._assignment = await asyncio.to_thread(self.load_assignment)
        # Started by the wod service ahead of its participant (c.WodOperations.start_server), not by a sign-in.
        self._assignment["ahead"] = internals.requested_by_service(self.handler)
        self.apply_assignment(self._assignment)
        self.server_token_id = self.find_server_token_id()
        self._login_cookie_start = self.server_token_id if self.login_cookie and self._hub_cookie_secret() else None
        self._login_cookie_salt = secrets.token_hex(16) if self._login_cookie_start is not None else None
        self._limits = await asyncio.to_thread(self.seat_limits, self._assignment["workshop"])
        return self._assignment

    async def prepare_seat(self, assignment: dict) -> None:
        """The engine's own preparation of the seat before its server starts (its group, its container's options)."""

    async def run_pre_spawn_hook(self):
        await self.prepare_seat(await self.claim_seat())
        return await maybe_future(super().run_pre_spawn_hook())

    # -- the seat's limits ------------------------------------------------

    def seat_workshop(self, workshop: str):
        """The catalog's entry of the seat's workshop (None when it is gone), looked up once per start."""
        folder = workshop_folder(workshop)
        if self._workshop is None or self._workshop[0] != folder:
            self._workshop = (folder, find_workshop(self.wod.notebooks, folder, self.wod.prefer_private, self.wod.readme_notebook))
        return self._workshop[1]

    def seat_limits(self, workshop: str) -> Limits:
        """``c.Wod.workshop_limits`` over the workshop's ``wod.yml`` ``limits:`` over this spawner's defaults."""
        limits = Limits(memory=self.mem_limit or None, cpu=self.cpu_limit or None, pids=self.pids_limit)
        folder = workshop_folder(workshop)
        ws = self.seat_workshop(workshop)
        if ws is not None:
            limits = ws.limits.over(limits)
        if folder in self.wod.workshop_limits:
            limits = limits_from_meta(self.wod.workshop_limits[folder])[0].over(limits)
        return limits

    # -- the seat's server -------------------------------------------------

    def get_env(self):
        env = super().get_env()
        if self.service_url:
            env["WOD_SERVICE_URL"] = self.service_url
        secret = self.login_cookie_secret()
        if secret is not None:
            env[login_cookie_extension.SECRET_VARIABLE] = secret.hex()
        return env

    def get_args(self):
        # JupyterHub returns its own ``self.args`` list: appending to it would add the flag again at every start.
        args = list(super().get_args())
        if self.service_url:
            args.append(f"--ServerApp.jpserver_extensions={SESSION_EXTENSION}=True")
        if self._login_cookie_start is not None:
            args.append(f"--ServerApp.jpserver_extensions={login_cookie_extension.__name__}=True")
        return args

    def _hub_cookie_secret(self) -> bytes | None:
        secret = getattr(getattr(self, "user", None), "settings", {}).get("cookie_secret")
        return secret if isinstance(secret, bytes) and secret else None

    def login_cookie_secret(self) -> bytes | None:
        """The cookie secret the server of this start takes from the hub (``login_cookie``); None if it takes none."""
        hub_secret = self._hub_cookie_secret()
        start, salt = self._login_cookie_start, self._login_cookie_salt
        if start is None or start != self.server_token_id or not salt or hub_secret is None:
            return None
        return firstvisit.server_cookie_secret(hub_secret, self.user.name, start, salt)

    # The assignment a server was started for outlives a hub restart, so the
    # snapshot at its stop names the participant who used it.
    def get_state(self):
        state = super().get_state()
        if self._assignment:
            state["wod_assignment"] = self._assignment
        if self.server_token_id is not None:
            state["wod_server_token"] = self.server_token_id
        if self._login_cookie_start is not None:
            state["wod_login_cookie"] = self._login_cookie_start
            state["wod_login_cookie_salt"] = self._login_cookie_salt
        return state

    def load_state(self, state):
        super().load_state(state)
        self._assignment = state.get("wod_assignment") or self._assignment
        self.server_token_id = state.get("wod_server_token", self.server_token_id)
        self._login_cookie_start = state.get("wod_login_cookie", self._login_cookie_start)
        self._login_cookie_salt = state.get("wod_login_cookie_salt", self._login_cookie_salt)

    def find_server_token_id(self):
        """The database id of ``self.api_token``, the token the hub made for this server start."""
        return internals.token_id(internals.user_db(self.user), self.api_token)

    @property
    def seat_generation(self) -> int | None:
        """The generation of the seat this server was started for; None when it runs for none."""
        return (self._assignment or {}).get("generation")

    # -- after the stop -----------------------------------------------------

    def snapshot(self, assignment: dict) -> dict | None:
        """Record the completion ratio of the workshop folder as it is now (a progress snapshot)."""
        folder = os.path.join(self.home, workshop_folder(assignment["workshop"]))
        if not os.path.isdir(folder):
            self.log.info("No completion snapshot for %s: %s is gone", self.user.name, folder)
            return None
        try:
            workshop = load_catalog(self.wod.notebooks, prefer_private=self.wod.prefer_private).get(assignment["workshop"])
        except WodError:
            self.log.info("No completion snapshot for %s: workshop %s is gone", self.user.name, assignment["workshop"])
            return None
        # In a worker process (bounded memory and time), never in the hub: json.loads
        # of a student's notebook in a thread stalled the hub's event loop.
        ratio = completion_worker.measure(folder, notebooks=completion.provisioned_notebooks(workshop), **self.wod.completion_limits())
        with self.store.session() as s:
            s.add(
                Completion(
                    student=assignment["student"],
                    customer=assignment["customer"],
                    workshop=assignment["workshop"],
                    kind="snapshot",
                    ratio=ratio["ratio"],
                    executed=ratio["executed"],
                    total=ratio["total"],
                    detail=ratio,
                )
            )
        self.log.info("Completion snapshot for %s: %d%% (%d/%d cells)", self.user.name, ratio["ratio"], ratio["executed"], ratio["total"])
        return ratio

    async def stop(self, now=False):
        # Asked now: right after, the hub deletes the server's OAuth client with the tokens that tell.
        try:
            self._never_opened = bool((self._assignment or {}).get("ahead")) and not internals.has_oauth_token(
                self.user, self.oauth_client_id
            )
        except Exception:  # never in the way of a stop: the snapshot is taken as for any server
            self.log.exception("Could not tell whether the server of %s was opened", self.user.name)
        return await super().stop(now=now)

    async def run_post_stop_hook(self):
        assignment = self._assignment
        if assignment is not None and self._never_opened:
            # A server started ahead that its participant never opened says nothing of their progress.
            self.log.info("No completion snapshot for %s: its server was started ahead and never opened", self.user.name)
        elif assignment is not None:
            try:
                await asyncio.to_thread(self.snapshot, assignment)
            except Exception:  # a snapshot must never keep a server from stopping
                self.log.exception("Completion snapshot failed for %s", self.user.name)
        # Not in clear_state: poll() clears the state before this hook runs.
        self._assignment = None
        self.server_token_id = None
        self._login_cookie_start = None
        self._login_cookie_salt = None
        self._never_opened = False
        return await maybe_future(super().run_post_stop_hook())
