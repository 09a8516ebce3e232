"""The working demo configuration of wod-jupyterhub: ``make demo`` runs the hub with it.

One file configures all three parts: the hub (``c.JupyterHub``), the
student login (``c.WodAuthenticator``), the servers (``c.WodSpawner``) and
the ``wod`` service (``c.WodService``, ``c.WodOperations``, ``c.WodHooks``,
``c.WodPortal``), plus
the settings they share (``c.Wod``). The service reads this same file
(``--config``), so keep it free of side effects other than the ones below.

Demo choices, to change for production (each is marked "production:"):
SQLite files beside this file, single-user mode (every server runs as the
hub's own user), the sample workshops bundled in ``share/workshops``, the hub
on http://127.0.0.1:8000 (in system-users mode on https://wod.localhost:8000,
each seat on a host of its own: see $WOD_SUBDOMAIN_HOST below).
"""

import os
import secrets
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Every file the demo writes (databases, homes, keys) goes here; the demo's
# self-check (`python -m wod_jupyterhub.cli.demo --check`) points it at a temporary folder.
STATE = Path(os.environ.get("WOD_STATE_DIR", HERE)).resolve()
# The wod service reads this file too (with the hub's JUPYTERHUB_SERVICE_NAME set).
IN_SERVICE = bool(os.environ.get("JUPYTERHUB_SERVICE_NAME"))

c = get_config()  # noqa: F821 - provided by the config loader

# ---------------------------------------------------------------------------
# The hub itself
# ---------------------------------------------------------------------------

# Where students and the portal reach the hub (the proxy listens here).
# production: the public https URL, e.g. "https://wod.example.com".
c.JupyterHub.bind_url = os.environ.get("WOD_HUB_URL", "http://127.0.0.1:8000")
# The hub's internal API and the proxy's control API; their defaults
# (8081, 8001) unless $WOD_HUB_API_URL / $WOD_PROXY_API_URL say otherwise,
# so that a second hub on this machine (a test) can pick free ports.
if os.environ.get("WOD_HUB_API_URL"):
    c.JupyterHub.hub_bind_url = os.environ["WOD_HUB_API_URL"]
if os.environ.get("WOD_PROXY_API_URL"):
    c.ConfigurableHTTPProxy.api_url = os.environ["WOD_PROXY_API_URL"]

# Every server on a web origin of its own (docs/production.md, "TLS, a real
# domain, subdomains"): `WOD_SYSTEM_USERS=1 make demo` sets these to
# https://wod.localhost:<port> and a certificate it makes once; system-users
# mode does not start without them. production: "https://wod.example.com",
# a wildcard DNS entry and certificate.
if os.environ.get("WOD_SUBDOMAIN_HOST"):
    c.JupyterHub.subdomain_host = os.environ["WOD_SUBDOMAIN_HOST"]
    c.JupyterHub.cookie_host_prefix_enabled = True
if os.environ.get("WOD_SSL_CERT"):
    c.JupyterHub.ssl_cert = os.environ["WOD_SSL_CERT"]
    c.JupyterHub.ssl_key = os.environ["WOD_SSL_KEY"]

# The hub's own database (users, servers, tokens); not the wod database below.
# production: PostgreSQL, like c.Wod.db_url.
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(STATE / "jupyterhub-proxy.pid")

# The login cookie lasts one workshop, not JupyterHub's two weeks. The hub
# checks this age against the signed cookie on every request, and it is also
# the lifetime of the OAuth tokens behind the single-user servers' cookies
# (JupyterHub.oauth_token_expires_in defaults to it). A seat that changes
# hands ends its sessions earlier still (see wod_jupyterhub/hub/auth.py).
WORKSHOP_HOURS = float(os.environ.get("WOD_SESSION_HOURS", "4"))
c.JupyterHub.cookie_max_age_days = WORKSHOP_HOURS / 24
# ... and the browser forgets the cookies then too (tornado's default is 30 days).
c.JupyterHub.tornado_settings = {"cookie_options": {"expires_days": WORKSHOP_HOURS / 24}}

# What people see: the login page names the platform and helps participants
# (wod_jupyterhub/hub/templates/login.html); an admin, who holds no seat, lands
# on the wod dashboard instead of a server that cannot start.
from wod_jupyterhub.hub import pages  # noqa: E402

c.JupyterHub.template_paths = [pages.TEMPLATES]
c.JupyterHub.template_vars = {
    "wod_platform_name": os.environ.get("WOD_PLATFORM_NAME", "Workshops-on-Demand"),
    "wod_login_help": os.environ.get(
        "WOD_LOGIN_HELP",
        "Log in with the student name and password your registration mail gave you. Admins log in as admin.",
    ),
}
c.JupyterHub.default_url = pages.landing_url

# Servers nobody uses are not stopped by the hub: the workshop's CLEANUP does it.
# A server gets this long to come up (a lab server needs ~6 s on a small VM).
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 60

# ---------------------------------------------------------------------------
# Settings every part shares (wod_jupyterhub/config.py documents each one)
# ---------------------------------------------------------------------------

# The database the authenticator, the spawner and the service share.
# production: "postgresql+psycopg://wod:...@db/wod" when several service
# processes or machines share the state.
c.Wod.db_url = os.environ.get("WOD_DB_URL", f"sqlite:///{STATE / 'wod.sqlite'}")

# Student homes: <students_root>/student<N>.  production: e.g. "/home".
c.Wod.students_root = str(STATE / "students")

# Workshops: the samples shipped in share/workshops are the default
# (c.Wod.notebooks); $WOD_NOTEBOOKS (folders separated by ":") points the
# demo elsewhere. production: the public and private notebooks roots,
# e.g. ["/opt/wod-notebooks", "/opt/wod-private/notebooks"].
if os.environ.get("WOD_NOTEBOOKS"):
    c.Wod.notebooks = os.environ["WOD_NOTEBOOKS"].split(os.pathsep)

# Seats this backend serves; each workshop's wod.yml narrows them further.
# $WOD_STUDENT_MIN / $WOD_STUDENT_MAX move the demo's range (and the Linux
# accounts `WOD_SYSTEM_USERS=1 make demo` makes) clear of seats already on the machine.
c.Wod.student_min = int(os.environ.get("WOD_STUDENT_MIN", "1"))
c.Wod.student_max = int(os.environ.get("WOD_STUDENT_MAX", "100"))

# Offset between the portal's student ids and ours (the original's BASESTDID).
c.Wod.base_student_id = 0

# Key sealing the passwords that wait in the database for the portal.
# production: set $WOD_SECRET_KEY or keep this file out of backups.
c.Wod.secret_key_file = str(STATE / "wod_secret.key")

# Single-user mode: servers run as the hub's user, HOME=<students_root>/student<N>.
# Every student can then read the hub's secrets, so the hub refuses to start
# in this mode on an address other than loopback (c.Wod.single_user_on_network).
# production: True, after `wod users create` (as root) made the accounts
# student<N> with uid uid_base + N. `WOD_SYSTEM_USERS=1 make demo` (as root)
# runs the demo so: it makes the accounts of this range and every server
# runs as its student (README, "Security model").
SYSTEM_USERS = os.environ.get("WOD_SYSTEM_USERS", "0").lower() not in ("", "0", "false", "no")
c.Wod.system_users = SYSTEM_USERS
c.Wod.uid_base = 10000
if SYSTEM_USERS:
    # The servers run as student<N>: with a Python every account may execute
    # (`make system-users` builds one in .venv-students; the hub's own may sit under /root).
    c.Spawner.cmd = [os.environ.get("WOD_STUDENT_PYTHON") or sys.executable, "-m", "jupyterhub.singleuser"]
    # Every student passes through the state folder to the homes; none may list it.
    if not IN_SERVICE:
        STATE.chmod(0o711)
    # The hub's database holds its users and token hashes: the hub's alone (SQLite gives its
    # journal files the database's mode). The wod database, the sealing key and the cookie secret
    # are made 0600 by their owners.
    HUB_DB = STATE / "jupyterhub.sqlite"
    if not HUB_DB.exists():
        os.close(os.open(HUB_DB, os.O_WRONLY | os.O_CREAT, 0o600))

# Bytes a seat's home may take; checked at CLEANUP (a kept home over it is erased).
# production: a size, and file-system quotas per uid where the file system has them.
c.Wod.home_size_limit = "2G"

# Global template variables of the workshops.
c.Wod.variables = {
    "BRANDING": "HPE Developer Community",
    "BRANDINGWOD": "Workshops-on-Demand",
    "BRANDINGURL": "https://developer.hpe.com",
    "WODBEFQDN": "127.0.0.1",
    "WODBEEXTFQDN": "127.0.0.1:8000",
    "JPHUB": os.environ.get("WOD_SUBDOMAIN_HOST") or c.JupyterHub.bind_url,
}

# ---------------------------------------------------------------------------
# ldap: true workshops: the directory that learns each rotated seat password
# (wod_jupyterhub/seats/directory.py; README "Writing a workshop"). Off in the demo.
# ---------------------------------------------------------------------------

# c.WodLdap.uri = "ldaps://ldap.example.org:636"  # or ldap://…:389 with start_tls = True
# c.WodLdap.bind_dn = "cn=admin,dc=example,dc=org"
# c.WodLdap.bind_password_file = "/etc/wod/ldap.secret"  # else $WOD_LDAP_PASSWORD; never written here
# c.WodLdap.seat_dn = "uid=student{N},ou=people,dc=example,dc=org"
# c.WodLdap.retry_for = 300  # seconds a CREATE waits for a directory it cannot reach, then fails

# compile: workshops: their scripts, compiled into loaders the students run but cannot read.
# c.Wod.compiled_dir = "/var/lib/wod-jupyterhub/compiled"

# ---------------------------------------------------------------------------
# Login: WodAuthenticator (wod_jupyterhub/hub/auth.py)
# ---------------------------------------------------------------------------

c.JupyterHub.authenticator_class = "wod"

# Guessing is throttled per (user name, client address) pair, per name and
# per address; only a locked pair is refused, so guesses from elsewhere never
# lock a student out. The state lives in c.Wod.db_url, so a hub restart does
# not reset it.
c.WodAuthenticator.throttle_failures = 5  # per name from one address, and per name
c.WodAuthenticator.throttle_ip_failures = 30  # per address (a room shares one NAT address)
c.WodAuthenticator.throttle_window = 600  # seconds over which failures add up
c.WodAuthenticator.throttle_lockout = 300  # seconds a pair, a name or an address stays locked
# The client address is what the hub's proxy saw (its X-Forwarded-For entry);
# production: add the address of a load balancer in front of the proxy.
# c.WodAuthenticator.trusted_proxies = ["127.0.0.0/8", "::1"]

# Admin accounts: names in admin_users, password hashes from
# `wod hash-password` (never the password itself). The demo has one admin,
# "admin", when $WOD_ADMIN_HASH holds its hash.
if os.environ.get("WOD_ADMIN_HASH"):
    c.Authenticator.admin_users = {"admin"}
    c.WodAuthenticator.admin_password_hashes = {"admin": os.environ["WOD_ADMIN_HASH"]}

# How often (seconds) the hub re-checks a logged-in student's seat; a session
# from before the seat changed hands ends at the next check. The default,
# 0.001, checks on practically every request (one primary-key read).
# c.WodAuthenticator.auth_refresh_age = 0.001

# ---------------------------------------------------------------------------
# Servers: WodSpawner (wod_jupyterhub/hub/spawner.py)
# ---------------------------------------------------------------------------

c.JupyterHub.spawner_class = "wod"
# Where the browser lands: the workshop's ReadMeFirst notebook.
c.WodSpawner.start_url = "/lab/tree/{workshop}/{readme}"

# ---------------------------------------------------------------------------
# The wod service: the REST API the portal calls (wod_jupyterhub/service/app.py)
# ---------------------------------------------------------------------------

# The verbs: c.WodOperations (wod_jupyterhub/service/operations/settings.py documents
# each option: workers, threads, lease_seconds, poll_interval, max_recoveries,
# stop_timeout, login_url ...). Each booked seat's server is started ahead,
# after its CREATE, where the memory budget holds it (c.WodAhead
# (wod_jupyterhub/service/operations/ahead.py): memory_budget, seat_memory,
# at_once, max_servers, unused_minutes); $WOD_START_AHEAD=0 turns that off.
if os.environ.get("WOD_START_AHEAD"):
    c.WodOperations.start_server = os.environ["WOD_START_AHEAD"].lower() not in ("0", "false", "no")
# The hooks: c.WodHooks (wod_jupyterhub/service/hooks.py): timeout, appliance addresses.
# c.WodHooks.timeout = 600
# The checks of verified steps (steps: in a workshop's wod.yml): c.WodSteps
# (wod_jupyterhub/service/steps.py). Seconds one check may run before it is killed
# and fails; its address space; how many checks run at once in all.
# c.WodSteps.timeout = 20
# c.WodSteps.memory = 512 * 1024**2
# c.WodSteps.at_once = 4
# The service itself: c.WodService (wod_jupyterhub/service/app.py): shutdown_grace,
# max_body_size, max_wait, warm_up ...

# Free seats are prepared while the service is idle, so that a CREATE does
# little while its caller waits: the pool's hub users are created, what a
# seat's hub user may have left on the hub (a server, tokens) is ended, and
# the workshop's files except the templated ones are copied ahead
# ("staged"), so a CREATE only renders the templates (milliseconds) instead
# of copying the whole workshop. Staging costs the disk of one workshop copy
# per free seat; seats in two workshops' ranges are not staged. A finished
# operation queues its seats at once; a full look at the free seats happens
# every prepare_rescan seconds.
# c.WodOperations.stage_seats = True
# c.WodOperations.prepare_rescan = 60

# The portal's token: $WOD_API_TOKEN, or a fresh one printed at each start
# (production: set WOD_API_TOKEN, so that the portal's copy stays valid).
# The service process reads this file too; it does not need the token.
# Variables only the hub needs; the wod service never gets them.
HUB_ONLY_ENV = {"WOD_API_TOKEN", "WOD_ADMIN_HASH"}
PORTAL_TOKEN = os.environ.get("WOD_API_TOKEN", "")
if not PORTAL_TOKEN and not IN_SERVICE:
    # Not printed: the hub's output is its log. Set WOD_API_TOKEN to give the
    # portal a token; `make demo` does, and prints it on the terminal.
    PORTAL_TOKEN = secrets.token_hex(32)
    print("wod: WOD_API_TOKEN is not set: the portal has a random token nobody knows; set it to call the API", file=sys.stderr)

c.JupyterHub.services = [
    {
        # A managed service: the hub starts it, restarts it, stops it.
        "name": "wod",
        "url": os.environ.get("WOD_SERVICE_URL", "http://127.0.0.1:10101"),
        "command": [sys.executable, "-m", "wod_jupyterhub.service", "--config", str(Path(__file__).resolve())],
        "cwd": str(STATE),
        # The service reads this file again: it needs the same WOD_* settings,
        # not the hub's own secrets (the portal's token, the admins' hashes).
        # It drops the secrets it reads (WOD_SECRET_KEY, WOD_PORTAL_PASSWORD …)
        # from its environment once read: templates render in that process.
        "environment": {k: v for k, v in os.environ.items() if k.startswith("WOD_") and k not in HUB_ONLY_ENV},
        # Admins open its dashboard (/services/wod/) in the browser, logged in
        # by the hub's OAuth: the token the hub hands the service may carry
        # the read scope (to look) and the operate scope (its Unlock buttons),
        # as far as the user's roles grant them (the wod-admins role below does).
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": ["custom:wod:read", "custom:wod:operate"],
    },
    {
        # Not a process: the identity of the registration portal's token.
        "name": "wod-portal",
        "api_token": PORTAL_TOKEN or secrets.token_hex(32),
    },
]

# Callbacks to the registration portal (the original api-db contract, see
# wod_jupyterhub/service/callbacks/portal.py). Off while the URL is empty, as in the demo.
# production: the portal's base URL and the backend's account on it.
c.WodPortal.url = os.environ.get("WOD_PORTAL_URL", "")
c.WodPortal.username = os.environ.get("WOD_PORTAL_USER", "")
# The password comes from $WOD_PORTAL_PASSWORD (WodPortal.password's default),
# so it never has to be written in this file.

# The portal's mail API (see README, "Switching an existing portal to this
# backend"): the portal mails its verbs to <WOD_MAIL_RECIPIENT>@<this host> on
# WOD_MAIL_PORT and its participant mails through the same port. The wod
# service listens there when a sender is set, turns verb mails into the same
# operations as the REST verbs and relays the others to WOD_MAIL_RELAY.
# Off in the demo until WOD_MAIL_SENDER is set.
c.WodMail.sender = os.environ.get("WOD_MAIL_SENDER", "")
c.WodMail.port = int(os.environ.get("WOD_MAIL_PORT", "10025"))
# c.WodMail.recipient defaults to $WOD_MAIL_RECIPIENT, then "wodadmin".
c.WodMail.relay = os.environ.get("WOD_MAIL_RELAY", "")
# production: only the portal may use the port (the sender is easy to forge).
# Unset, only loopback may (the listener binds 127.0.0.1 unless c.WodMail.ip says
# otherwise), and in system-users mode the listener does not start at all.
if os.environ.get("WOD_MAIL_SOURCES"):
    c.WodMail.allowed_sources = os.environ["WOD_MAIL_SOURCES"].split(",")
# c.WodMail.relay_starttls = True
# c.WodMail.relay_username = "wod"   # its password from $WOD_MAIL_RELAY_PASSWORD

# Scopes the service checks on its callers.
c.JupyterHub.custom_scopes = {
    "custom:wod:operate": {"description": "Run CREATE, CLEANUP, RESET and PURGE on workshop seats."},
    "custom:wod:read": {"description": "Read workshop seats, operations and the workshop catalog."},
}

c.JupyterHub.load_roles = [
    {
        # The service manages the student users: creates them, starts and
        # stops their servers, revokes their tokens when a seat changes hands.
        "name": "wod-service",
        "services": ["wod"],
        "scopes": ["admin:users", "admin:servers", "tokens", "read:users"],
    },
    {
        # The portal may call the service's API and nothing else of the hub.
        "name": "wod-portal",
        "services": ["wod-portal"],
        "scopes": ["custom:wod:operate", "custom:wod:read", "access:services!service=wod"],
    },
    {
        # Admins may use the service's API from their own tokens too.
        "name": "wod-admins",
        "users": sorted(c.Authenticator.admin_users) if "admin_users" in c.Authenticator else [],
        "scopes": ["custom:wod:operate", "custom:wod:read", "access:services!service=wod"],
    },
]
