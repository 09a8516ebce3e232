"""Lifting the login throttle's locks on a name or an address, for an admin (``wod unlock``).

A locked-out participant need not wait out ``throttle_lockout``: the admin
forgets the counts and locks the throttle keeps for that name (every
address it failed from) or for that address (every name it failed for).

Core module: imports nothing of the hub or the service.
"""

from sqlalchemy import delete, or_, select

from .client_address import counted_address
from .store import Throttle, utcnow
from .tables import describe_key


def _conditions(name: str | None, address: str | None) -> list:
    conditions = []
    if name:
        name = name[:200]
        conditions += [Throttle.key == f"user:{name}", Throttle.key == f"try:{name}", Throttle.key.like(f"pair:{_escape(name)}@%", escape="\\")]
    if address:
        ip = counted_address(address) or address
        conditions += [Throttle.key == f"ip:{ip}", Throttle.key.like(f"pair:%@{_escape(ip[:49])}", escape="\\")]
    return conditions


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def unlock(store, name: str | None = None, address: str | None = None) -> list[str]:
    """Forget the throttle's rows of ``name`` and/or ``address``; the keys that were locked, in words."""
    conditions = _conditions(name, address)
    if not conditions:
        return []
    now = utcnow()
    with store.session() as s:
        rows = s.execute(select(Throttle.key, Throttle.locked_until).where(or_(*conditions))).all()
        s.execute(delete(Throttle).where(or_(*conditions)))
    return [describe_key(key) for key, until in rows if until and until > now and not key.startswith("try:")]


def target(key: str) -> dict:
    """What lifts the lock of a throttle key: ``{"name": ...}`` for a name's keys, ``{"address": ...}`` for an address's."""
    kind, _, rest = key.partition(":")
    if kind == "ip":
        return {"address": rest}
    if kind == "pair":
        return {"name": rest.rpartition("@")[0]}
    return {"name": rest}
