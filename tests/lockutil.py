"""Locks of the login throttle made the throttle's own way, for the tests of lifting them."""

from types import SimpleNamespace

from sqlalchemy import select

from wod_jupyterhub.store.models import Throttle, utcnow

SETTINGS = SimpleNamespace(throttle_failures=2, throttle_ip_failures=3, throttle_window=600, throttle_lockout=300, locked_name_interval=30)


def locked_keys(store) -> set:
    """The throttle keys locked now."""
    with store.session() as s:
        return {k for k, until in s.execute(select(Throttle.key, Throttle.locked_until)) if until and until > utcnow()}


def lock(throttle, name, ip, times=3):
    """``times`` failed logins of ``name`` from ``ip``."""
    for _ in range(times):
        throttle.record_failure(throttle.keys(name, ip))
