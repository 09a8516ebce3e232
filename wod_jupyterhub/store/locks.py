"""The login throttle's locks: lifting them on a name or an address (``wod unlock``, ``api/unlock``), a lock's key in words."""

from sqlalchemy import delete, or_, select

from ..client_address import counted_address
from .models import Throttle, utcnow


def describe_key(key: str) -> str:
    """A throttle key in words: ``pair:student3@10.0.0.1`` → ``student3 from 10.0.0.1``."""
    kind, _, rest = key.partition(":")
    if kind == "pair":
        name, _, address = rest.rpartition("@")
        return f"{name} from {address or 'an unknown address'}"
    if kind == "user":
        return f"{rest} (the name, from every address)"
    if kind == "ip":
        return f"address {rest} (every name)"
    return key


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
