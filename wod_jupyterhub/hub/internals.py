"""What the hub parts use of JupyterHub beyond its documented extension points, in one place."""

from jupyterhub import orm, roles, scopes

# The hub's own handlers of its static files and logo, which hub/frameless.py extends (re-exported).
from jupyterhub.handlers.static import CacheControlStaticFilesHandler, LogoHandler  # noqa: F401
from jupyterhub.utils import compare_token, hash_token, new_token
from sqlalchemy import event, select
from sqlalchemy.orm import object_session
from sqlalchemy.orm.exc import UnmappedInstanceError
from traitlets import Float

#: the JupyterHub versions these internals are known for (setup.cfg requires the same)
JUPYTERHUB_VERSIONS = ">=5,<7"


def hub_users(app) -> dict | None:
    """The hub's users in memory (``{orm id: User}``), from its application or a request handler; None outside a hub."""
    users = getattr(app, "users", None)
    return users if isinstance(users, dict) else None


def hub_db(app):
    """The hub's database session (shared by all its requests), from its application or a request handler; None outside a hub."""
    return getattr(app, "db", None)


def _no_waiting_commits(dbapi_conn, _record=None) -> bool:
    cur = dbapi_conn.cursor()
    try:
        mode = cur.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()
    return mode == "wal"


def sqlite_without_waiting_commits(app) -> bool:
    """The hub's own database, when it is an SQLite file, in WAL mode with ``synchronous=NORMAL``; whether it is.

    The hub commits on its event loop; in its default journal each commit
    waits for the disk several times. Set on the connection the hub holds
    now and on every one its engine opens later (JupyterHub's engine, made
    in ``init_db``).
    """
    db = hub_db(app)
    engine = db.get_bind() if db is not None else None
    if engine is None or engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return False
    if not event.contains(engine, "connect", _no_waiting_commits):
        event.listen(engine, "connect", _no_waiting_commits)
    # Outside a transaction: SQLite changes the journal mode only there.
    db.commit()
    wal = _no_waiting_commits(db.connection().connection.dbapi_connection)
    db.commit()
    return wal


def sqlite_without_pings(app) -> bool:
    """No ``SELECT 1`` before each use of the hub's SQLite connection; whether there was one to drop.

    JupyterHub pings every connection its engine hands out, to find one a
    database server dropped; a file has no server to drop it, and the ping
    is one more statement per transaction (several per request), on the
    hub's one thread. Other databases keep it.
    """
    db = hub_db(app)
    engine = db.get_bind() if db is not None else None
    if engine is None or engine.dialect.name != "sqlite":
        return False
    pings = [fn for fn in engine.dispatch.engine_connect
             if getattr(fn, "__module__", "") == orm.__name__ and getattr(fn, "__name__", "").startswith("ping_connection")]
    for fn in pings:
        event.remove(engine, "engine_connect", fn)
    return bool(pings)


def user_db(user):
    """The hub database session a hub ``User`` (or its ORM row) belongs to."""
    db = getattr(user, "db", None)
    if db is None:
        try:
            db = object_session(orm_user(user))
        except UnmappedInstanceError:  # not a hub user (a test's stand-in)
            return None
    return db


def orm_user(user):
    """The ORM row of a hub ``User`` (itself if it is one)."""
    return getattr(user, "orm_user", user)


def find_orm_user(db, name: str, users: dict | None = None):
    """The ORM row of hub user ``name``: from ``users`` in memory if there, else one query; None if the hub has none."""
    row = next((u.orm_user for u in (users.values() if users is not None else ()) if u.name == name), None)
    return row if row is not None else orm.User.find(db, name)


def cookie_id(user) -> str | None:
    """The ``cookie_id`` a hub user's login cookie carries: a new one invalidates every cookie issued before."""
    return orm_user(user).cookie_id


def set_cookie_id(user, value: str) -> None:
    """Give a hub user a new ``cookie_id`` (not committed)."""
    orm_user(user).cookie_id = value


def random_token() -> str:
    """A fresh random token as JupyterHub draws them (for a ``cookie_id``)."""
    return new_token()


def revoke_tokens(db, user, keep=()) -> int:
    """Delete a hub user's API tokens but those whose ids are in ``keep`` (not committed); how many."""
    row = orm_user(user)
    # The ids first, in a plain select: the service has normally revoked the previous
    # holder's tokens already, and loading the ORM collection cost a login more than this.
    with db.no_autoflush:
        stale = set(db.scalars(select(orm.APIToken.id).where(orm.APIToken.user_id == row.id))) - set(keep)
    for token in [t for t in row.api_tokens if t.id in stale] if stale else []:
        db.delete(token)
    return len(stale)


def token_id(db, token: str) -> int | None:
    """The database id of an API token the hub issued (a server's ``api_token``); None if unknown."""
    row = orm.APIToken.find(db, token) if db is not None and token else None
    return row.id if row is not None else None


def client_secret_as_its_token(db, spawner) -> bool:
    """Store a server's OAuth client secret hashed as the hub stored the same secret as the server's API token; whether it did.

    JupyterHub gives a server's OAuth client the server's API token as its
    secret, and hashes it there with the rounds of a secret a person chose,
    though it hashes the same token in its token table with the one round
    of the tokens it generates. Each browser's first visit to the server
    checks that secret on the hub's event loop. Stored as the token row has
    it, the secret is no weaker than it already is in the database. Only
    when the secret is the server's token and its row is hashed with fewer
    rounds; not committed.
    """
    client = getattr(getattr(spawner, "orm_spawner", None), "oauth_client", None)
    token = getattr(spawner, "api_token", "")
    row = orm.APIToken.find(db, token) if db is not None and token else None
    if client is None or row is None or not client.secret:
        return False
    algorithm, rounds, _ = row.hashed.split(":", 2)
    if int(rounds) >= int(client.secret.split(":")[1]) or not compare_token(client.secret, token):
        return False
    client.secret = hash_token(token, rounds=int(rounds), algorithm=algorithm)
    return True


def spawners(user) -> list:
    """The spawners of a hub ``User`` (None: no user of this hub), one per named server."""
    return list(getattr(user, "spawners", {}).values())


def refresh_age(default: float, help: str) -> Float:
    """``Authenticator.auth_refresh_age`` as a Float: JupyterHub declares an Integer of seconds.

    The hub only compares it with a difference of ``time.monotonic()`` readings, so a fraction of a
    second works; the test of this module checks both facts on the installed JupyterHub.
    """
    return Float(default, help=help).tag(config=True)


def has_oauth_token(user, client_id: str) -> bool:
    """Whether a hub user holds a token of OAuth client ``client_id`` (a browser of theirs logged in to that server)."""
    db = user_db(user)
    if db is None:
        return False
    row = orm_user(user)
    query = select(orm.APIToken.id).where(orm.APIToken.user_id == row.id, orm.APIToken.client_id == client_id).limit(1)
    return db.scalar(query) is not None


def requested_by_service(handler) -> bool:
    """Whether the request behind a spawn (``Spawner.handler``) came from a service's token, not from a user."""
    user = getattr(handler, "current_user", None) if handler is not None else None
    return getattr(user, "kind", None) == "service"


def oauth_client_of(spawner):
    """The ORM row of a server's OAuth client; None before its first start."""
    return getattr(getattr(spawner, "orm_spawner", None), "oauth_client", None)


def oauth_token_for_server(db, user, spawner, session_id: str | None, expires_in: int | None) -> str:
    """A new OAuth access token of ``spawner``'s client for ``user``: what the hand-shake of the user's first visit gives.

    The scopes are the ones JupyterHub's ``authorize`` grants a client that
    asks for none (its allowed scopes, with identifying the user and
    accessing the server), intersected with the user's own; the token
    belongs to the browser's hub session (``session_id``), so logging out
    ends it as it ends the hand-shake's. Committed (JupyterHub's
    ``APIToken.new`` commits). Raises ``PermissionError`` when the user may
    not access the server.
    """
    row, client = orm_user(user), oauth_client_of(spawner)
    if client is None or client.spawner is None or client.spawner.user_id != row.id:
        raise PermissionError(f"{row.name} may not access the server of OAuth client {getattr(client, 'identifier', None)}")
    requested = set(client.allowed_scopes)
    if "inherit" not in requested:
        requested |= scopes.identify_scopes() | scopes.access_scopes(client)
    held = roles.roles_to_scopes(roles.get_roles_for(row)) | {"inherit", *scopes.identify_scopes(), *scopes.access_scopes(client)}
    granted, _ = scopes._resolve_requested_scopes(requested, held, user=row, client=client, db=db)
    return orm.APIToken.new(user=row, oauth_client=client, scopes=granted, session_id=session_id, expires_in=expires_in)


def oauth_token_expires_in(handler) -> int:
    """Seconds an OAuth token of this hub lives (``c.JupyterHub.oauth_token_expires_in``; its default, the login cookie's age)."""
    value = getattr(getattr(handler.authenticator, "parent", None), "oauth_token_expires_in", None)
    return int(value) if value else int(handler.settings["cookie_max_age_days"] * 24 * 3600)


def session_id(handler) -> str | None:
    """The browser's hub session id (the one its login just set, or the one it sent)."""
    return handler.get_session_cookie()


def set_plain_cookie(handler, name: str, value: str, path: str) -> None:
    """Set a cookie as the hub sets its own (httponly, secure over HTTPS, ``c.JupyterHub.cookie_options``), its value as given."""
    handler._set_cookie(name, value, encrypted=False, path=path)
