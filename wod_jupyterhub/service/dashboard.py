"""The admins' dashboard at ``/services/wod/``: one HTML page that refreshes itself from ``dashboard/data``."""

import asyncio
import html
import re
from pathlib import Path

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated, UserNotAllowed

from ..errors import Forbidden, Unauthorized
from ..store.locks import describe_key, target
from .admin import status
from .handlers import SCOPE_OPERATE, SCOPE_READ, BaseHandler

PAGE = Path(__file__).resolve().parent / "templates" / "dashboard.html"


def make_oauth():
    """The service's OAuth client of the hub (configured by the hub's environment for a managed service)."""
    from jupyterhub.services.auth import HubOAuth

    return HubOAuth(access_scopes={SCOPE_READ, SCOPE_OPERATE}, cache_max_age=60)


class Browser(HubOAuthenticated, BaseHandler):
    """A handler for browsers: the hub's OAuth cookie, scopes checked like a token's."""

    @property
    def hub_auth(self):
        return self.app.hub_oauth

    @hub_auth.setter
    def hub_auth(self, value):  # HubAuthenticated's API; ours comes from the app
        pass

    #: where an anonymous browser goes: the hub's login (pages) or a 401 (data)
    redirect_to_login = True

    async def prepare(self):
        self.caller = None
        self.refuse_students()
        model = await self.hub_auth.get_user(self, sync=False)
        if not model:
            if self.redirect_to_login and self.request.method == "GET":
                self.redirect(self.get_login_url())
                return
            raise Unauthorized("Log in to the hub first.")
        try:
            self.caller = self.check_hub_user(model)
        except UserNotAllowed:
            raise Forbidden(
                f"{model.get('name') or 'This account'} may not see the wod dashboard: it needs the scope {SCOPE_READ}."
            ) from None
        if not self.caller:
            raise Forbidden(f"{model.get('name') or 'This account'} may not see the wod dashboard.")


class DashboardHandler(Browser):
    def set_default_headers(self):
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "DENY")

    async def get(self):
        # The data calls are cookie-authenticated fetches: the hub's OAuth wants the XSRF token with them.
        token = self.xsrf_token
        token = token.decode() if isinstance(token, bytes) else token
        self.finish(PAGE.read_text(encoding="utf-8").replace("__XSRF_TOKEN__", html.escape(token, quote=True)))


class DashboardDataHandler(Browser):
    redirect_to_login = False

    async def get(self):
        data = await status(self.app, self.get_query_argument("workshop", None) or None)
        for lock in data["locked_logins"]:
            # in words, and what the row's Unlock button sends to dashboard/unlock
            lock.update(who=describe_key(lock["key"]), unlock=target(lock["key"]))
        data["can_operate"] = SCOPE_OPERATE in set(self.caller.get("scopes") or [])
        steps = self.app.steps
        # Verified steps per step and per seat: a few queries, off the event loop.
        data["steps"] = await asyncio.get_running_loop().run_in_executor(steps.pool, steps.summary, None)
        self.send(data)


class OAuthCallbackHandler(HubOAuthCallbackHandler):
    @property
    def hub_auth(self):
        return self.settings["wod_service"].hub_oauth

    @hub_auth.setter
    def hub_auth(self, value):
        pass


def routes(prefix: str) -> list:
    """The dashboard's Tornado routes under ``prefix``: the page, its data and the OAuth callback."""
    p = re.escape(prefix)
    return [
        (rf"{p}", DashboardHandler),
        (rf"{p}dashboard/data", DashboardDataHandler),
        (rf"{p}oauth_callback", OAuthCallbackHandler),
    ]
