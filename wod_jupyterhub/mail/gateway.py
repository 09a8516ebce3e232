"""The mail API as the service runs it: the listener and the relay's delivery loop, with their state.

Why in the service process rather than a process of its own beside it: a
verb mail must become the same operation as a REST verb, and the service
holds the engine (its ``submit`` queues and wakes the dispatcher at once,
no polling between processes); the hub already starts, restarts and stops
the service, so the listener lives and dies with it; and one process keeps
one database pool. ``wod mail`` covers the sites that keep postfix.
"""

from __future__ import annotations

import asyncio

from sqlalchemy.exc import SQLAlchemyError

from ..local_peers import readable
from .ingress import Ingress
from .listener import MailListener
from .relay import Relay


class MailGateway:
    def __init__(self, settings, wod, store, submit, log, metrics=None, holding=None):
        self.settings = settings
        self.log = log
        self.relay = Relay(store, settings, log=log, metrics=metrics)
        self.ingress = Ingress(settings, wod, store, self.relay, submit, log=log, metrics=metrics, holding=holding)
        self.listener = MailListener(settings, self.ingress, log=log)
        self.wod = wod
        self._relay_task = None
        self.error = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled and self.settings.port > 0

    async def start(self) -> None:
        if not self.settings.enabled:
            self.log.info("The mail API is off (c.WodMail.sender is empty)")
            return
        system_users = bool(getattr(self.wod, "system_users", False))
        refusal = self.settings.refusal(system_users)
        unreadable = readable() if system_users and self.settings.port > 0 else None
        if refusal is None and unreadable:
            refusal = (
                f"The mail listener does not start: with c.Wod.system_users it refuses students' processes by the "
                f"owner of their socket, and {unreadable}."
            )
        if refusal:
            # The REST API and the relay still run; health says why the listener does not.
            self.error = refusal
            self.log.error(refusal)
        elif self.settings.port > 0:
            try:
                await self.listener.start()
            except OSError as e:
                # The REST API still serves; health says why the mail API does not.
                self.error = f"cannot listen on port {self.settings.port}: {e.strerror or e}"
                self.log.error("Mail listener: %s", self.error)
        self._relay_task = asyncio.ensure_future(self.relay.run())

    async def stop(self) -> None:
        await self.listener.stop()
        if self._relay_task is not None:
            self._relay_task.cancel()
            await asyncio.gather(self._relay_task, return_exceptions=True)

    def health(self) -> dict:
        """The mail API's state for ``api/health`` (reads the database: call from a thread)."""
        if not self.settings.enabled:
            return {"enabled": False}
        address = self.listener.address
        state = {
            "enabled": True,
            "listening": address is not None,
            "port": address[1] if address else self.settings.port,
            "error": self.error,
            "received": dict(self.ingress.received),
            "refused": dict(self.ingress.refused),
            "duplicates": self.ingress.duplicates,
        }
        if not self.settings.relay_enabled:
            state["relay"] = None
            return state
        relay = {
            "smarthost": self.settings.relay,
            "state": "ok" if self.relay.last_error is None else "retrying",
            "last_error": self.relay.last_error,
        }
        try:
            stats = self.relay.stats()
        except SQLAlchemyError as e:  # health reports, never raises
            relay.update(state="unknown", last_error=f"database: {e.__class__.__name__}")
        else:
            oldest = stats.pop("oldest_pending")
            relay.update(stats, oldest_pending=oldest.isoformat(timespec="seconds") + "Z" if oldest else None)
        state["relay"] = relay
        return state
