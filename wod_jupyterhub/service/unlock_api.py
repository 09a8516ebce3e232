"""Unlocking a login over HTTP: ``POST api/unlock`` (a token) and ``dashboard/unlock`` (the dashboard's button).

Both take ``{"name": ...}`` and/or ``{"address": ...}`` (the fields of
``UnlockRequest`` in ``openapi.json``), need the operate scope, call
:func:`unlock.unlock` -- what ``wod unlock`` runs -- and log who lifted
which locks.
"""

import ipaddress
import re

from ..errors import BadRequest, Forbidden
from ..store.locks import unlock
from .dashboard import Browser
from .handlers import OPENAPI, SCOPE_OPERATE, BaseHandler, parse_body, request_fields

UNLOCK_FIELDS = request_fields(OPENAPI, "UnlockRequest")


def unlock_request(app, raw: bytes, caller: dict) -> dict:
    """Lift the locks a request body names; the answer: who, and the locks lifted in words."""
    body = parse_body(raw, UNLOCK_FIELDS, "an unlock")
    name, address = body.get("name"), body.get("address")
    if not (name or address):
        raise BadRequest("An unlock takes a 'name' (student<N> or an admin) or an 'address', or both.", code="missing_field")
    if address is not None:
        try:
            ipaddress.ip_network(address, strict=False)
        except ValueError:
            raise BadRequest(f"Field 'address' must be an IP address (or an IPv6 /64), not {address[:60]!r}.", code="bad_field") from None
    lifted = unlock(app.store, name, address)
    who = " and ".join(x for x in (name, address and f"address {address}") if x)
    app.log.info("%s unlocked %s: %s", caller.get("name") or "a token", who, "; ".join(lifted) or "nothing was locked")
    return {"name": name, "address": address, "unlocked": lifted}


class UnlockHandler(BaseHandler):
    scopes = (SCOPE_OPERATE,)

    async def post(self):
        self.send(unlock_request(self.app, self.request.body, self.caller))


class DashboardUnlockHandler(Browser):
    redirect_to_login = False

    async def post(self):
        if SCOPE_OPERATE not in set(self.caller.get("scopes") or []):
            raise Forbidden(f"{self.caller.get('name')} may look at the dashboard but not unlock: that needs the scope {SCOPE_OPERATE}.")
        self.send(unlock_request(self.app, self.request.body, self.caller))


def routes(prefix: str) -> list:
    p = re.escape(prefix)
    return [(rf"{p}api/unlock", UnlockHandler), (rf"{p}dashboard/unlock", DashboardUnlockHandler)]
