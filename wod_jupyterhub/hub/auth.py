"""``WodAuthenticator``: pooled ``student<N>`` accounts log in with the password the service rotated last."""

import asyncio
import math
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

from jupyterhub.auth import Authenticator
from jupyterhub.handlers.login import LoginHandler
from sqlalchemy.exc import SQLAlchemyError
from tornado import web
from traitlets import Bool, Dict, Float, Integer, List, TraitError, Unicode, default, validate

from ..client_address import forwarded_client, networks
from ..config import Wod, student_number
from ..local_peers import is_local_address, student_peer
from ..passwords import cheap_hash, hash_password, refusal_time, verify_password
from ..store.models import SeatState, Store, utcnow
from . import frameless, internals
from .firstvisit import WodLoginHandler
from .hash_budget import Busy, HashBudget
from .seatspawner import server_token_ids
from .sessions import changed_hands, keep_sweeping, new_cookie_id, revoke_sessions, session_generation
from .throttle import LoginThrottle


def seat_outcome(seat) -> dict:
    """The outcome of the right password for a seat (its row from ``Store.login_facts``)."""
    if seat.state != SeatState.ACTIVE:
        return {"kind": "inactive"}
    return {"kind": "student", "generation": seat.generation}


class WodAuthenticator(Authenticator):
    """Students log in with their current seat password; admins with hashes from the config."""

    throttle_failures = Integer(
        5,
        help="""Failed logins for one user name, or for one name from one client address, within ``throttle_window`` seconds, that lock it.

        Locked, a wrong password is answered with a 429 ("too many failed
        logins", for ``throttle_lockout`` seconds) instead of the form's
        "invalid password", and a name that fails while its name or its
        address is locked stays locked as long. A lock never refuses the
        right password: whoever locked the name (guesses from elsewhere, or
        from the owner's own address, e.g. the same machine) cannot lock
        the owner out. What bounds guessing is the password (a student's
        has ~70 bits) and the hashing budget (``costly_checks``). 0 disables
        both counts.
        """,
    ).tag(config=True)

    throttle_ip_failures = Integer(
        30,
        help="""Failed logins from one client address, within ``throttle_window`` seconds, that lock that address.

        Locked, the address still gets one try per name, and a name that
        fails from it then waits until the address's lock ends. So a room
        behind one NAT address still logs in (only those who mistype after
        the lock wait), and a guesser going through names from one address
        gets one try per name. 0 disables it.
        """,
    ).tag(config=True)

    throttle_window = Integer(
        600,
        help="Seconds over which failed logins are counted for the throttle.",
    ).tag(config=True)

    throttle_lockout = Integer(
        300,
        help="Seconds a name, a client address or a pair of both stays locked once it reached its failure limit.",
    ).tag(config=True)

    costly_checks = Integer(
        1,
        help="""Password checks at an admin's cost (``wod hash-password``: scrypt at 2 ** 15) that run at once.

        Tries at an admin name beyond these wait, at most
        ``costly_checks_waiting`` of them, a try from an address that has
        not failed for the name ahead of the others; more are told the hub
        is busy (429) without a check. So a flood of wrong tries at an
        admin name takes at most this many cores, and the admin's own try
        from elsewhere goes first. Students' passwords, hashed at a far lower
        cost, are not counted here.
        """,
    ).tag(config=True)

    costly_checks_waiting = Integer(
        16,
        help="Tries at an admin name that may wait for one of the ``costly_checks``; more are answered 429 at once.",
    ).tag(config=True)

    @validate("throttle_failures", "throttle_ip_failures", "throttle_window", "throttle_lockout", "costly_checks_waiting")
    def _not_negative(self, proposal):
        if proposal["value"] < 0:
            raise TraitError(f"{proposal['trait'].name} must be 0 or more, not {proposal['value']}")
        return proposal["value"]

    trusted_proxies = List(
        Unicode(),
        ["127.0.0.0/8", "::1"],
        help="""Addresses or networks (CIDR) of the proxies in front of the hub, whose ``X-Forwarded-For`` is believed.

        The client address the throttle counts is the one the nearest
        untrusted hop was seen from: the hub's TCP peer, and while that peer
        is a trusted proxy, the entry it appended to ``X-Forwarded-For``
        (configurable-http-proxy appends the address it saw), read from the
        right. ``X-Real-Ip``, which tornado prefers and any client can send,
        is ignored. The default trusts loopback, where the hub's own proxy
        connects from; add the address of a load balancer in front of the
        proxy. Note that a process on the hub's machine connects from
        loopback too: in system-users mode a loopback peer whose socket is a
        student's is never believed, and an ``X-Forwarded-For`` entry on
        loopback (a client of the proxy on this machine) ends the walk. All
        of 127/8 and ``::1`` counts as one address. Trust only the proxy's
        exact address in production.
        """,
    ).tag(config=True)

    @validate("trusted_proxies")
    def _networks(self, proposal):
        try:
            networks(proposal["value"])
        except ValueError as e:
            raise TraitError(f"trusted_proxies: {e}") from None
        return proposal["value"]

    admin_password_hashes = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="""Password hashes of the admin accounts, ``{name: "scrypt$..."}``.

        Make a hash with ``wod hash-password`` (it never stores the
        password). The names must also be in ``admin_users`` to get admin
        rights; an admin without a hash here cannot log in. Student names are
        refused here: a seat's password comes only from the service.
        """,
    ).tag(config=True)

    @validate("admin_password_hashes")
    def _admin_hashes(self, proposal):
        for name, stored in proposal["value"].items():
            if student_number(name) is not None:
                raise TraitError(f"admin_password_hashes: {name!r} is a student name; students get their password from the service")
            if not stored.startswith("scrypt$") or stored.count("$") != 5:
                raise TraitError(f"admin_password_hashes[{name!r}] is not a hash from `wod hash-password` (scrypt$...)")
        return proposal["value"]

    auth_refresh_age = internals.refresh_age(
        0.001,
        help="""Seconds between two checks of a logged-in user's seat (JupyterHub's option, here in seconds as a float).

        JupyterHub calls ``refresh_user`` when the last check of a user is
        older than this. The default checks on practically every request
        to the hub (one primary-key read): with a whole second, a
        CLEANUP and a CREATE that finish within it would leave the
        previous participant's cookie working until the next check. 0
        disables the checks, and with them the end of old sessions.
        """,
    )

    session_sweep_interval = Float(
        2.0,
        help="""Seconds between two looks for seats that changed hands, to end their sessions ahead of the next login.

        Each look is one read of every seat's generation; the hub users whose
        sessions belong to an earlier participant get a new ``cookie_id`` and
        lose their tokens, all in one commit. Then a class's first logins
        write nothing to the hub's database. A login within this long of its
        seat's CREATE, and every request, still check for themselves. 0 turns
        the looks off.
        """,
    ).tag(config=True)

    @validate("session_sweep_interval")
    def _sweep_interval(self, proposal):
        if proposal["value"] < 0:
            raise TraitError(f"session_sweep_interval must be 0 or more, not {proposal['value']}")
        return proposal["value"]

    @default("auth_refresh_strict")
    def _strict(self):
        # JupyterHub's own option (Authenticator.auth_refresh_strict, 6.1+; not dead code):
        # a token request for a seat that changed hands is refused too, not let through
        # with a warning (JupyterHub's default since 6.1). test_auth checks it.
        return True

    @default("any_allow_config")
    def _allow_config_present(self):
        # check_allowed below is the allow configuration; no "nobody can log in" warning.
        return True

    hub_sqlite_wal = Bool(
        help="""Whether the hub's own database, when it is an SQLite file, commits without waiting for the disk.

        JupyterHub commits on its event loop: a participant's first visit
        (the OAuth hand-shake with their server, the first use of its token)
        writes several times, and in SQLite's default journal each commit
        waits for the disk several times, while every other request of the
        hub waits too. On, the file is put in WAL mode with
        ``synchronous=NORMAL``, as the wod database is: a crash of the hub
        loses nothing; a power failure may lose the last commits, never the
        database (the sessions such a commit ended end again at the next
        request, which compares the seat's generation). Off, the hub's
        connections are left as JupyterHub opens them (a file once in WAL
        mode stays in it, each commit then waiting for the disk once). No
        effect on PostgreSQL or MySQL.
        """,
    ).tag(config=True)

    @default("hub_sqlite_wal")
    def _wal_default(self):
        return True

    hash_threads = Integer(
        help="""Threads that check passwords (scrypt, which runs outside the GIL). Defaults to the number of CPUs.

        The hash is pure CPU work: more threads than cores only makes every
        login of a burst slower, and a pool of its own leaves the hub's
        other threads free while a room logs in at once.
        """,
    ).tag(config=True)

    @default("hash_threads")
    def _cpus(self):
        return os.cpu_count() or 2

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.executor = ThreadPoolExecutor(max(1, self.hash_threads), thread_name_prefix="wod-auth")
        self.wod = Wod(config=self.config)
        exposed = None
        if self.parent is not None:
            exposed = self.wod.check_exposure(getattr(self.parent, "bind_url", "") or "") or self.wod.check_origin(
                getattr(self.parent, "subdomain_host", ""), getattr(self.parent, "cookie_host_prefix_enabled", False)
            )
            frameless.protect(self.parent)
            if internals.hub_db(self.parent) is not None:
                internals.sqlite_without_pings(self.parent)
                if self.hub_sqlite_wal:
                    internals.sqlite_without_waiting_commits(self.parent)
        if exposed:
            # The authenticator is made while the hub starts: this stops it, with the sentence and no traceback.
            self.log.critical(exposed)
            raise SystemExit(1)
        self.store = Store.shared(self.wod.db_url)
        self._trusted = networks(self.trusted_proxies)
        # A refusal checks the password once, at the name's own cost: an unknown name against a
        # dummy at the students' cost. Its answer then waits as long as the costliest check in use
        # takes (sleeping, not hashing), so the time of a refusal tells an admin name from no other,
        # and a flood of refusals costs the hub no admin-cost hashes.
        self._dummy_hash = hash_password(secrets.token_urlsafe(16), self.wod.password_hash_cost, 8, 1)
        # With a margin over the costliest check, so that its own refusals (a thread's hand-off, the
        # database's read and count) are padded too: all refusals then answer at the same time.
        self._refusal_seconds = 1.25 * refusal_time([self._dummy_hash, *self.admin_password_hashes.values()]) + 0.005
        self.budget = HashBudget(self.costly_checks, self.costly_checks_waiting)
        # Reads this authenticator's settings live (tests and the hub may change them after start).
        self.throttle = LoginThrottle(self.store, self)
        self._sweeper = None
        self._swept = {}  # {seat number: generation} as the last sweep saw them
        if self.session_sweep_interval and self.parent is not None:
            try:  # the hub makes its authenticator while its loop runs; a test may make one without
                self._sweeper = asyncio.get_running_loop().create_task(keep_sweeping(self.sweep_sessions, self.session_sweep_interval, self.log))
            except RuntimeError:
                pass
        missing = sorted(set(self.admin_users) - set(self.admin_password_hashes))
        if missing:
            self.log.warning("Admin users without a password hash cannot log in: %s", ", ".join(missing))

    # -- login ----------------------------------------------------------

    async def authenticate(self, handler, data):
        name = (data.get("username") or "").strip().lower()
        password = data.get("password") or ""
        ip = self.client_address(handler) if handler is not None else None
        started = time.perf_counter()
        try:
            outcome, work_ms = await self.checked(name, password, ip)
        except SQLAlchemyError as e:
            self.log.error("Login of %r failed: the wod database is unavailable: %s", name[:32], e.__class__.__name__)
            raise web.HTTPError(503, "Logging in is not possible right now. Please try again in a minute.") from None
        elapsed_ms = (time.perf_counter() - started) * 1000
        kind = outcome["kind"]
        if kind == "busy":
            self.log.warning("Refused login for %r from %s: the costly checks are all taken", name[:32], ip)
            raise web.HTTPError(429, "The hub is busy checking passwords. Please try again in a minute.")
        if kind == "locked":
            self.log.warning("Refused login for %r from %s: throttled for %d s more", name[:32], ip, outcome["seconds"])
            minutes = max(1, math.ceil(outcome["seconds"] / 60))
            raise web.HTTPError(
                429,
                f"Too many failed logins for this name or from this address. Try again in {minutes} minute{'s' if minutes > 1 else ''}.",
            )
        if kind == "bad":
            self.log.warning("Failed login for %r from %s (%.1f ms, %.1f ms of work)", name[:32], ip, elapsed_ms, work_ms)
            return None
        if kind == "inactive":
            self.log.warning("Refused login for %s: no active workshop on this seat", name)
            raise web.HTTPError(
                403,
                f"{name} has no workshop booked at the moment, so it cannot log in. Use the link and password from your latest workshop mail.",
            )
        ended = ""
        if kind == "student" and handler is not None:
            ended = self.begin_session(internals.hub_db(handler), name, outcome["generation"], users=internals.hub_users(handler))
        # The work is the check itself; the rest of the time it waited for a hashing thread.
        self.log.info("Authenticated %s (%.1f ms, %.1f ms of work)%s", name, elapsed_ms, work_ms, f"; {ended}" if ended else "")
        return {"name": name}

    async def checked(self, name: str, password: str, ip: str | None) -> tuple[dict, float]:
        """(outcome, ms of work): the common login decided on the hub's loop, every other in a hashing thread.

        A student's password at a cheap hash cost, nothing throttled, is
        checked where it arrives when the wod database is the local SQLite
        file: its read and the cheap hash cost less than a thread's hand-off,
        which in a burst of logins mostly waits for the GIL the loop holds. On
        PostgreSQL the read waits on the network, which is what the thread is
        for. Everything else (the rest of a refusal, which hashes at every cost
        in use and counts the failure; an admin's costly hash; a throttled
        name or address) runs in a thread.
        """
        started = time.perf_counter()
        work, args = self.check_login, (name, password, ip)
        costly = name in self.admin_password_hashes
        if not self.store.is_postgres or costly:
            keys, rows, seat = await self.read(self.login_facts, name, ip)
            if not costly and not rows and seat is not None and seat.password_hash and cheap_hash(seat.password_hash):
                if verify_password(password, seat.password_hash):
                    return seat_outcome(seat), (time.perf_counter() - started) * 1000
                # Checked once already: the refusal only counts the failure.
                work, args = self.refuse, (keys,)
        inline_ms = (time.perf_counter() - started) * 1000
        loop = asyncio.get_running_loop()
        try:
            if costly:
                pair_failed = any(k.startswith(("pair:", "ip:")) for k in rows)
                outcome, work_ms = await self.budget.run(
                    lambda: loop.run_in_executor(self.executor, self._timed, work, *args), first=not pair_failed
                )
            else:
                outcome, work_ms = await loop.run_in_executor(self.executor, self._timed, work, *args)
        except Busy:
            outcome, work_ms = {"kind": "busy"}, 0.0
        if outcome["kind"] in ("bad", "locked"):
            await asyncio.sleep(self._refusal_seconds - (time.perf_counter() - started))
        return outcome, inline_ms + work_ms

    @staticmethod
    def _timed(work, *args):
        started = time.perf_counter()
        outcome = work(*args)
        return outcome, (time.perf_counter() - started) * 1000

    def login_facts(self, name: str, ip: str | None) -> tuple:
        """(throttle keys, their rows, the seat's row or None) for a login: one short read, nothing held after."""
        keys = self.throttle.keys(name, ip)
        number = None if name in self.admin_password_hashes else self.wod.seat(name)
        return (keys, *self.store.login_facts(keys, number))

    def check_login(self, name: str, password: str, ip: str | None) -> dict:
        """The whole check, blocking (run in a thread): throttle, then the hash, then the bookkeeping.

        Returns ``{"kind": "locked", "seconds"}``, ``{"kind": "bad"}``,
        ``{"kind": "inactive"}``, ``{"kind": "admin"}`` or
        ``{"kind": "student", "generation"}``.
        """
        keys, rows, seat = self.login_facts(name, ip)
        now = utcnow()
        stored = self.admin_password_hashes.get(name) or (seat.password_hash if seat is not None else None)
        # Always hash, even for a name that has no hash; and whatever is locked: a lock never
        # refuses the right password, so nobody can lock its owner out.
        ok = verify_password(password, stored or self._dummy_hash) and stored is not None
        seconds, lock_pair_until = self.throttle.locks(keys, rows, now) if keys else (0, None)
        if not ok:
            self.refuse(keys, lock_pair_until)
            if lock_pair_until is not None:
                seconds = max(seconds, math.ceil((lock_pair_until - now).total_seconds()))
            return {"kind": "locked", "seconds": seconds} if seconds else {"kind": "bad"}
        # A success forgives the typos of this name from this address (and the
        # name's count), not the address's failures for other names.
        # A lock of the name stays: the owner's success must not hand guessers elsewhere a new round.
        forgiven = [k for k, t in rows.items() if k.startswith("pair:") or (k.startswith("user:") and not (t.locked_until and t.locked_until > now))]
        if forgiven:
            self.throttle.forgive(forgiven)
        return {"kind": "admin"} if name in self.admin_password_hashes else seat_outcome(seat)

    def refuse(self, keys: dict, lock_pair_until=None) -> dict:
        """After a wrong password: the failure counted (the answer's wait is ``checked``'s)."""
        self.throttle.record_failure(keys, lock_pair_until)
        return {"kind": "bad"}

    def client_address(self, handler) -> str | None:
        """The address the nearest untrusted hop was seen from (see ``trusted_proxies``)."""
        request = handler.request
        context = getattr(request.connection, "context", None)
        # The TCP peer as tornado saw it, before xheaders=True replaced
        # remote_ip with whatever X-Real-Ip the client sent.
        address = getattr(context, "address", None)
        peer = getattr(context, "_orig_remote_ip", None) or (address[0] if isinstance(address, tuple) else request.remote_ip)
        forwarded = request.headers.get("X-Forwarded-For")
        if forwarded and self.wod.system_users and is_local_address(peer):
            # The proxy and a student's kernel both connect from loopback: only the socket's owner tells them apart.
            sock = getattr(getattr(request.connection, "stream", None), "socket", None)
            try:
                ends = (sock.getsockname(), sock.getpeername()) if sock is not None else (None, None)
            except OSError:
                ends = (None, None)
            if student_peer(self.wod, *ends):
                return peer
        return forwarded_client(peer, forwarded, self._trusted)

    def get_handlers(self, app):
        # The login page, whose logins also sign in to the running server (WodSpawner.login_cookie); then, placed
        # before the hub's own, its logo, which like its static files must not be framed (see frameless).
        pages = [(url, WodLoginHandler if handler is LoginHandler else handler) for url, handler in super().get_handlers(app)]
        return [*pages, *frameless.handlers(app)]

    # -- allow ------------------------------------------------------------

    def check_allowed(self, username, authentication=None):
        # allow_all stays False (JupyterHub 5+): exactly the configured admins
        # and in-range students, whose password and assignment authenticate()
        # has just checked.
        if username in self.admin_users:
            return True
        return self.wod.seat(username) is not None

    def validate_username(self, username):
        return super().validate_username(username) and (
            username in self.admin_users or username in self.admin_password_hashes or student_number(username) is not None
        )

    # -- a server's start ------------------------------------------------

    def pre_spawn_start(self, user, spawner):
        # The participant's first visit checks the server's OAuth secret on the hub's loop:
        # hashed as its own token row is (see internals), that check costs no more than the token's.
        db = internals.user_db(user)
        if internals.client_secret_as_its_token(db, spawner):
            db.commit()

    # -- sessions end when the seat changes hands --------------------------

    def begin_session(self, db, name: str, generation: int, users=None) -> str:
        """Before the hub sets the login cookie: a new generation gets a new ``cookie_id``; what was ended, for the log.

        ``users``: the hub's users in memory (``handler.users``, session ``db``), looked in first: one query less per login.
        """
        orm_user = internals.find_orm_user(db, name, users)
        if orm_user is None or session_generation(internals.cookie_id(orm_user)) == generation:
            return ""  # a user the hub has not seen yet is tagged in add_user
        # Committed now, not left for the hub's own commit after the login: the hub's
        # database session is shared by all requests, and any request that finishes
        # meanwhile rolls back what it finds dirty (BaseHandler.finish). Seen in a burst
        # of first logins: the cookie then carried the old generation, and the
        # participant was logged out on the next request.
        return self.end_sessions(db, orm_user, generation)

    def end_sessions(self, db, orm_user, generation: int, commit: bool = True) -> str:
        """Invalidate every cookie and personal token of ``orm_user``; new sessions carry ``generation``.

        Returns what was ended, for the caller's log line. ``commit=False``:
        the caller commits in the same step of the loop (nothing between can
        roll it back).
        """
        # The hub's own record of the user's running servers (never a token's note, which users write).
        users = internals.hub_users(self.parent)
        keep = server_token_ids(users.get(orm_user.id) if users is not None else None, generation)
        ended = revoke_sessions(db, orm_user, generation, keep)
        if commit:
            db.commit()
        return ended

    async def sweep_sessions(self) -> list[str]:
        """End ahead the sessions of the seats that changed hands (one commit); the names.

        So a class's first logins find their seat's generation already in
        the ``cookie_id`` and write nothing (see :mod:`wod_jupyterhub.hub.sessions`).
        """
        users, db = internals.hub_users(self.parent), internals.hub_db(self.parent)
        if users is None or db is None:
            return []  # not a hub (a test's parent, a tool's)
        generations = await self.read(self.store.generations)
        # Only the seats whose generation moved since the last look (all of them at the first):
        # the hub's users are not walked every few seconds for nothing.
        moved = {n: g for n, g in generations.items() if self._swept.get(n) != g}
        changed = changed_hands(list(users.values()), moved) if moved else []
        # From here to the commit nothing awaits: no other request's rollback can come between.
        for user, generation in changed:
            self.end_sessions(db, internals.orm_user(user), generation, commit=False)
        if changed:
            db.commit()
            self.log.info("Ended ahead the sessions of %d seat(s) that changed hands: %s",
                          len(changed), ", ".join(user.name for user, _ in changed))
        self._swept.update(moved)
        return [user.name for user, _ in changed]

    async def read(self, fn, *args):
        """``fn(*args)``, a short read of the wod database: where it is asked on SQLite, in a thread on PostgreSQL."""
        if self.store.is_postgres:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    async def add_user(self, user):
        super().add_user(user)
        n = student_number(user.name)
        if n is None or session_generation(internals.cookie_id(user)) is not None:
            return
        _, row = await self.read(self.store.login_facts, {}, n)
        internals.set_cookie_id(user, new_cookie_id(row.generation if row is not None else 0))
        db = internals.user_db(user)
        if db is not None:
            db.commit()

    async def refresh_user(self, user, handler=None):
        n = student_number(user.name)
        if n is None:
            return True
        try:
            # Asked on practically every request of a logged-in student: a Core read, on the loop on SQLite (see read).
            _, row = await self.read(self.store.login_facts, {}, n)
        except SQLAlchemyError as e:
            # Fail closed: without the seat's state, no session is known to be current.
            self.log.error("Cannot check the seat of %s: the wod database is unavailable: %s", user.name, e.__class__.__name__)
            return False
        generation = row.generation if row is not None else 0
        if session_generation(internals.cookie_id(user)) != generation:
            ended = self.end_sessions(internals.user_db(user), internals.orm_user(user), generation)
            self.log.info("Logged out %s: the seat changed hands (%s)", user.name, ended)
            return False
        return row is not None and row.state == SeatState.ACTIVE
