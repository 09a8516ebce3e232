"""A participant's login that also signs them in to their running server: the first visit skips the OAuth hand-shake.

Without it, a browser's first request to its server goes to the hub's
``authorize``, back to the server's ``oauth_callback``, which asks the hub
for a token and for its user, then to the page: three requests to the hub
and three more through the proxy, each on the hub's one event loop. A room
whose servers were started ahead pays that for every participant at once.

With it, the login's answer carries the server's own cookie: an OAuth token
of the server's client, made as ``authorize`` would make it (the same
scopes, the browser's hub session), signed with the server's cookie secret.
That secret is derived from the hub's cookie secret, the user and the
server's start, with a salt drawn at each start (a new start, a new secret,
even where the hub numbers its token as an earlier start's: what an earlier
server held counts for nothing), and handed to the server in its environment, which its
``wod_jupyterhub.lab.login_cookie`` extension takes as the server's own. A
server that did not take it (another image, an older package) finds the
cookie's signature wrong and sends the browser through the hand-shake as
before.
"""

import asyncio
import hashlib
import hmac

from jupyterhub.handlers.login import LoginHandler
from sqlalchemy.exc import SQLAlchemyError
from tornado.web import create_signed_value

from . import internals


def server_cookie_secret(hub_secret: bytes, name: str, start: int, salt: str) -> bytes:
    """The cookie secret of ``name``'s server for its start ``start`` (its API token's id) and that start's random ``salt``."""
    return hmac.new(hub_secret, f"wod server cookie\0{name}\0{start}\0{salt}".encode(), hashlib.sha256).digest()


def server_cookie(spawner, secret: bytes, token: str) -> tuple[str, str, str]:
    """(name, value, path) of the cookie by which ``spawner``'s server knows the holder of ``token``, as its own login sets it."""
    name = spawner.oauth_client_id
    return name, create_signed_value(secret, name, token).decode(), spawner.server.base_url


def sign_in_to_server(handler, user) -> bool:
    """After a login: the server's cookie added to the answer, when the user's default server is running and takes one."""
    spawner = user.spawners.get("")
    secret = spawner.login_cookie_secret() if spawner is not None and hasattr(spawner, "login_cookie_secret") else None
    # On subdomains or with __Host- cookies a server's cookie is not one the hub's answer may set.
    if secret is None or not spawner.ready or handler.subdomain_host or handler.settings.get("cookie_host_prefix_enabled"):
        return False
    try:
        token = internals.oauth_token_for_server(
            handler.db, user, spawner, internals.session_id(handler), internals.oauth_token_expires_in(handler),
        )
    except PermissionError as e:
        handler.log.warning("No server cookie at the login of %s: %s", user.name, e)
        return False
    except SQLAlchemyError as e:
        # The login stands: the first visit goes through the hand-shake. Only the error's kind is logged:
        # its text carries the statement's parameters (the token's hash, the browser's session id).
        handler.db.rollback()
        handler.log.error("No server cookie at the login of %s: the hub database failed (%s)", user.name, e.__class__.__name__)
        return False
    internals.set_plain_cookie(handler, *server_cookie(spawner, secret, token))
    return True


#: one login at a time does its work on the hub's thread after its password was checked
_TURNS = asyncio.Semaphore(1)


class WodLoginHandler(LoginHandler):
    """JupyterHub's login page; a login also signs the participant in to their running server (see this module).

    After its password is checked, a login's work on the hub's one thread
    (its user, its cookies, the server's token, with no wait between them)
    starts only in its turn: a room's logins then run one per
    turn of the event loop, and a request that arrives meanwhile (a
    participant already working, the admin's pages) is answered between two
    of them instead of after all. The password checks and a refusal's wait
    take no turn.
    """

    async def auth_to_user(self, authenticated, user=None):
        async with _TURNS:
            return await super().auth_to_user(authenticated, user)

    async def login_user(self, data=None):
        user = await super().login_user(data)
        if user is not None:
            sign_in_to_server(self, user)
        return user
