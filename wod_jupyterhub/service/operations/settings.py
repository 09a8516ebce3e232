"""``c.WodOperations``: every setting of the operations, declared once (the service creates it with ``parent=``)."""

import os

from traitlets import Bool, Float, Integer, TraitError, Unicode, default, validate
from traitlets.config import Configurable

from ...hubconfig import public_url


class WodOperations(Configurable):
    """How the service runs the verbs: concurrency, leases, recovery, the idle preparation of free seats."""

    workers = Integer(32, help="Operations this process runs at once (each on its own students).").tag(config=True)

    threads = Integer(
        4, help="Threads for blocking work: provisioning, erasing, completion (password hashing has two of its own)."
    ).tag(config=True)

    lease_seconds = Float(
        60, help="A student's lock lease; a service process that stops renewing it loses it after this long."
    ).tag(config=True)

    poll_interval = Float(
        1.0, help="Seconds between looks at the database for work other processes queued or left behind by a crash."
    ).tag(config=True)

    max_recoveries = Integer(
        3, help="An operation taken over after a crash this many times fails instead of resuming again."
    ).tag(config=True)

    @validate("workers", "threads", "max_recoveries")
    def _at_least_one(self, proposal):
        if proposal["value"] < 1:
            raise TraitError(f"WodOperations.{proposal['trait'].name} must be 1 or more, not {proposal['value']}")
        return proposal["value"]

    @validate("lease_seconds", "poll_interval", "catalog_ttl", "stop_timeout", "prepare_rescan")
    def _positive_seconds(self, proposal):
        if proposal["value"] <= 0:
            raise TraitError(f"WodOperations.{proposal['trait'].name} must be more than 0 seconds, not {proposal['value']}")
        return proposal["value"]

    catalog_ttl = Float(5.0, help="Seconds the workshop catalog is cached before wod.yml files are read again.").tag(config=True)

    stop_timeout = Float(60, help="Seconds to wait for a student's server to stop.").tag(config=True)

    start_server = Bool(
        help="""Start the participant's server ahead, after CREATE, so that the first sign-in lands in a running lab.

        The starts wait their turn (``c.WodAhead``: how many at once, within
        a memory budget; a server nobody opened is stopped after a while).
        Defaults to True when ``c.WodAhead.memory_budget`` holds at least one
        seat.
        """,
    ).tag(config=True)

    @default("start_server")
    def _start_server_default(self):
        from .ahead import WodAhead

        return WodAhead(config=self.config).limit() >= 1

    login_url = Unicode(
        help="""Login URL a finished CREATE reports; ``{user}`` and ``{student}`` are replaced.

        Always absolute: a portal mails it. Defaults to the hub's public URL
        (``c.JupyterHub.public_url``, else ``subdomain_host``, else ``bind_url``, else ``ip``/``port``
        of the configuration the service reads) + ``hub/login``.
        """,
    ).tag(config=True)

    @default("login_url")
    def _login_url_default(self):
        public = os.environ.get("JUPYTERHUB_PUBLIC_HUB_URL")
        if public:
            return public.rstrip("/") + "/login"
        hub = public_url(self.config) or "http://127.0.0.1:8000" + os.environ.get("JUPYTERHUB_BASE_URL", "/")
        return hub.rstrip("/") + "/hub/login"

    stage_seats = Bool(
        True,
        help="""Copy ahead, for every free seat, the files of its workshop that a CREATE does not render.

        A CREATE then renders only the templated files and swaps the seat in: a
        few ms instead of the time it takes to copy the whole workshop (its
        pictures and data files). Staging runs in one thread, only while this
        process has no operation to run, so it never slows a burst. It takes
        the disk of one more copy of the workshop per free seat. Seats in the
        range of two active workshops are not staged.
        """,
    ).tag(config=True)

    prepare_rescan = Float(
        60,
        help="""Seconds between looks at every free seat of the active workshops, to prepare it while idle.

        Each look also creates, in one call, the hub users of the seats that
        have none yet (the pool's accounts). Preparing a free seat: end what
        its hub user may have left on the hub (a server, tokens) unless
        already known ended, and stage its files (stage_seats). A finished
        operation queues its seats at once.
        """,
    ).tag(config=True)
