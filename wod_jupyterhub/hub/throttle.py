"""Failed logins, counted in the shared database (a hub restart forgets nothing)."""

import datetime
import math
import time

from sqlalchemy import case, delete, or_, update
from sqlalchemy.exc import IntegrityError, OperationalError

from ..client_address import counted_address
from ..store.models import Throttle, utcnow


class LoginThrottle:
    """The login throttle's bookkeeping; ``settings`` holds its limits (the authenticator's traits, read live)."""

    def __init__(self, store, settings):
        self.store = store
        self.settings = settings
        self._last_sweep = 0.0

    def forgive(self, keys: list) -> None:
        """Forget the counts of ``keys`` (a success forgives the typos of its pair and name)."""
        self.retry(lambda s: s.execute(delete(Throttle).where(Throttle.key.in_(keys))))

    def keys(self, name: str, ip: str | None) -> dict:
        """``{key: failure limit}`` for the keys a login counts against; a limit of 0 is left out."""
        keys = {}
        name = name[:200]
        ip = counted_address(ip)
        if self.settings.throttle_failures or (ip and self.settings.throttle_ip_failures):
            # With throttle_failures = 0 the pair is still counted (the address
            # lock needs to know which names failed from it), never locked by itself.
            keys[f"pair:{name}@{(ip or '')[:49]}"] = self.settings.throttle_failures or 2**31 - 1  # fits the key's 255
        if self.settings.throttle_failures:
            keys[f"user:{name}"] = self.settings.throttle_failures
        if ip and self.settings.throttle_ip_failures:
            keys[f"ip:{ip}"] = self.settings.throttle_ip_failures
        return keys

    @staticmethod
    def locks(keys: dict, rows: dict, now) -> tuple:
        """(seconds the pair is locked for or 0, end of the name's or the address's lock or None).

        A pair (name, address) that fails during a lock of its name or its
        address is locked until that lock ends. No lock refuses the right
        password, so a room behind one NAT address keeps logging in, and
        guesses from anywhere never lock the owner out.
        """
        pair = next(k for k in keys if k.startswith("pair:"))
        until = {k: t.locked_until for k, t in rows.items() if t.locked_until and t.locked_until > now}
        seconds = math.ceil((until[pair] - now).total_seconds()) if pair in until else 0
        others = [v for k, v in until.items() if k != pair]
        return seconds, max(others) if others else None

    def record_failure(self, keys: dict, lock_pair_until=None) -> None:
        """Count a failure on every key; a failure while the name or the address is locked locks the pair as long."""

        def count(s):
            now = utcnow()
            cutoff = now - datetime.timedelta(seconds=self.settings.throttle_window)
            for key, limit in keys.items():
                # Writes only, no read first: SQLite cannot turn a reader into
                # a writer once another login committed in between.
                expired = Throttle.window_start < cutoff
                changed = s.execute(
                    update(Throttle)
                    .where(Throttle.key == key)
                    .values(
                        failures=case((expired, 1), else_=Throttle.failures + 1),
                        window_start=case((expired, now), else_=Throttle.window_start),
                    )
                ).rowcount
                if not changed:
                    s.add(Throttle(key=key, failures=1, window_start=now))
                    s.flush()
                # Reaching the limit locks and starts a fresh count for after the lockout.
                s.execute(
                    update(Throttle)
                    .where(Throttle.key == key, Throttle.failures >= limit)
                    .values(locked_until=now + datetime.timedelta(seconds=self.settings.throttle_lockout), failures=0, window_start=now)
                )
            if lock_pair_until is not None:
                pair = next(k for k in keys if k.startswith("pair:"))
                s.execute(
                    update(Throttle)
                    .where(Throttle.key == pair, or_(Throttle.locked_until.is_(None), Throttle.locked_until < lock_pair_until))
                    .values(locked_until=lock_pair_until)
                )
            if time.monotonic() - self._last_sweep > 60:
                self._last_sweep = time.monotonic()
                s.execute(
                    delete(Throttle).where(
                        Throttle.window_start < cutoff, or_(Throttle.locked_until.is_(None), Throttle.locked_until < now)
                    )
                )

        if keys:
            self.retry(count)

    def retry(self, work, attempts: int = 5) -> None:
        """Run ``work(session)`` in a transaction; two first failures at once may both insert a row."""
        for attempt in range(attempts):
            try:
                with self.store.session() as s:
                    work(s)
                return
            except (IntegrityError, OperationalError):
                if attempt == attempts - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
