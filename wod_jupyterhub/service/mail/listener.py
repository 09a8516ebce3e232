"""A lenient SMTP listener on asyncio: the portal's bytes whatever their timing, and standard clients."""

from __future__ import annotations

import asyncio
import logging

from ...local_peers import student_peer
from ...waiting import nap, within
from .ingress import Envelope
from .message import path_address

MAX_LINE = 2048
PREGREET_WAIT = 0.05
PREGREET_IDLE = 0.2
MAX_BAD = 10
# Stop reading from a client while this much waits unprocessed.
_HIGH_WATER = 256 * 1024


class _Session(asyncio.Protocol):
    def __init__(self, listener: "MailListener"):
        self.listener = listener
        self.ingress = listener.ingress
        self.settings = listener.settings
        self.log = listener.log
        self.buffer = bytearray()
        self.event = asyncio.Event()
        self.eof = False
        self.gone = False
        self.paused = False
        self.transport = None
        self.peer = None
        self.student = None
        self.task = None
        self.too_large = None
        # A client that talks before the greeting (the portal) reads nothing but the greeting and
        # hangs up: it gets the greeting once its input has been read (a message's end, or a
        # pause), and no other reply. Any byte it has not read when it hangs up makes its system
        # answer with a reset, and a reset drops whatever we have not read yet.
        self.quiet = False
        self.greeted = False
        # Above a whole message's worth, so that a long line is judged (kept or refused as too
        # large) before reading stops; bounded all the same.
        self.high_water = max(_HIGH_WATER, self.settings.max_message_size + 2 * MAX_LINE)

    # -------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        # Looked up now, while the client's socket surely exists: a seat's process is refused even from loopback.
        self.student = student_peer(self.ingress.wod, transport.get_extra_info("sockname"), peer if isinstance(peer, tuple) else None)
        self.task = asyncio.ensure_future(self.run())
        self.listener.sessions.add(self)

    def data_received(self, data):
        self.buffer += data
        self.event.set()
        if len(self.buffer) > self.high_water and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self):
        self.eof = True
        self.event.set()
        return True  # keep our side open: the replies may still be wanted

    def connection_lost(self, exc):
        self.eof = self.gone = True
        self.event.set()

    # -------------------------------------------------------------- I/O

    def greet(self) -> None:
        if not self.greeted:
            self.greeted, quiet, self.quiet = True, self.quiet, False
            self.reply(220, f"{self.settings.hostname} ESMTP wod")
            self.quiet = quiet

    def reply(self, code, text: str = "") -> None:
        if self.gone or self.quiet or self.transport.is_closing():
            return  # a client that does not read replies: the dialog goes on without an audience
        self.greeted = True  # a refusal may stand for the greeting
        lines = text.split("\n") if isinstance(text, str) else list(text)
        out = "".join(f"{code}-{line}\r\n" for line in lines[:-1]) + f"{code} {lines[-1]}\r\n"
        try:
            self.transport.write(out.encode("utf-8", "replace"))
        except (OSError, RuntimeError):
            self.gone = True

    async def readline(self, limit: int) -> tuple[bytes | None, bool]:
        """(line without its end, complete); (chunk, False) when a line grows past ``limit``; (None, _) at the end."""
        while True:
            i = self.buffer.find(b"\n")
            if i >= 0:
                line = bytes(self.buffer[:i])
                del self.buffer[: i + 1]
                self._resume()
                return (line[:-1] if line.endswith(b"\r") else line), True
            if len(self.buffer) > limit:
                chunk = bytes(self.buffer)
                self.buffer.clear()
                self._resume()
                return chunk, False
            if self.eof:
                if self.buffer:  # a last line without its newline
                    line = bytes(self.buffer).rstrip(b"\r")
                    self.buffer.clear()
                    return line, True
                return None, True
            self.event.clear()
            if not self.greeted:
                # Greet once the client pauses: it has said all it had to say before it.
                if not await nap(self.event, PREGREET_IDLE):
                    self.greet()
                continue
            await self.event.wait()

    def _resume(self):
        if self.paused and len(self.buffer) < self.high_water // 2 and not self.gone:
            self.paused = False
            self.transport.resume_reading()

    # -------------------------------------------------------------- the dialog

    async def run(self):
        try:
            if len(self.listener.sessions) > self.settings.max_connections:
                self.ingress.refuse("busy", 421, "4.7.0 Too many connections; try again later.", f"client {self.peer}")
                self.reply(421, "4.7.0 Too many connections; try again later.")
                return
            await within(self.dialog(), self.settings.timeout)
        except TimeoutError:
            self.ingress.refuse(
                "timeout", 421, f"4.4.2 Connection from {self.peer} did not finish within {self.settings.timeout:g} s; closed.",
            )  # fmt: skip
            self.reply(421, "4.4.2 Timeout; closing.")
        except asyncio.CancelledError:
            self.reply(421, "4.3.2 Shutting down.")
            raise
        except Exception:  # one connection's bug must not stop the listener
            self.log.exception("Mail connection from %s failed", self.peer)
            self.reply(451, "4.3.0 Local error.")
        finally:
            self.greet()
            self.listener.sessions.discard(self)
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

    async def dialog(self):
        refused = self.ingress.check_source(self.peer, self.student)
        if refused is not None:
            self.reply(refused.code, refused.text)
            return
        hostname = self.settings.hostname
        # A moment for a client that writes before the greeting (postfix's postscreen waits
        # seconds for the same reason); a standard client only waits that much longer for it.
        await nap(self.event, PREGREET_WAIT)
        if self.buffer:
            self.quiet = True
        else:
            self.greet()
        env = Envelope(peer=self.peer)
        bad = 0
        while True:
            line, complete = await self.readline(MAX_LINE)
            if line is None:
                return
            if not complete:
                self.ingress.refuse("syntax", 500, "5.5.2 Line too long; closing.", f"client {self.peer}")
                self.reply(500, "5.5.2 Line too long; closing.")
                return
            text = line.decode("utf-8", "replace").strip()
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            if verb in ("HELO", "EHLO"):
                env = Envelope(peer=self.peer)
                if verb == "EHLO":
                    self.reply(250, f"{hostname}\nSIZE {self.settings.max_message_size}\n8BITMIME\nPIPELINING")
                else:
                    self.reply(250, hostname)
            elif verb == "MAIL" and text[:10].upper() == "MAIL FROM:":
                if env.sender is not None:
                    self.reply(503, "5.5.1 Sender already given.")
                    continue
                sender = path_address(text[10:])
                answer = self.ingress.check_sender(env, sender)
                if answer.ok:
                    env.sender = sender
                self.reply(answer.code, answer.text)
            elif verb == "RCPT" and text[:8].upper() == "RCPT TO:":
                if env.sender is None:
                    self.reply(503, "5.5.1 Need an accepted MAIL FROM first.")
                    continue
                recipient = path_address(text[8:])
                answer = self.ingress.check_recipient(env, recipient)
                if answer.ok:
                    env.recipients.append(recipient)
                self.reply(answer.code, answer.text)
            elif verb == "DATA" and not arg:
                if not env.recipients:
                    # A pipelining client sends its message anyway: read it and drop it, never take it for commands.
                    self.reply(554, "5.5.1 No valid recipients.")
                    if await self.read_data(None) is None:
                        return
                    env = Envelope(peer=self.peer)
                    continue
                self.reply(354, "End data with <CR><LF>.<CR><LF>")
                data = await self.read_data(env)
                if data is False:
                    answer = self.too_large
                elif data is None:
                    self.ingress.refuse(
                        "incomplete", 451, f"4.4.2 The message from {env.sender} never ended (no '.' line); dropped.",
                        f"client {self.peer}",
                    )  # fmt: skip
                    return
                else:
                    answer = await self.ingress.deliver(env, data)
                self.reply(answer.code, answer.text)
                self.greet()  # a client that wrote it all before the greeting has it now
                env = Envelope(peer=self.peer)
            elif verb == "RSET":
                env = Envelope(peer=self.peer)
                self.reply(250, "2.0.0 Ok")
            elif verb == "NOOP":
                self.reply(250, "2.0.0 Ok")
            elif verb == "QUIT":
                self.reply(221, "2.0.0 Bye")
                return
            elif verb == "VRFY":
                self.reply(252, "2.5.0 Cannot verify")
            else:
                bad += 1
                if bad >= MAX_BAD:
                    self.ingress.refuse("syntax", 421, "4.7.0 Too many bad commands; closing.", f"client {self.peer}")
                    self.reply(421, "4.7.0 Too many bad commands; closing.")
                    return
                self.reply(502 if verb in ("STARTTLS", "AUTH", "BDAT", "ETRN", "TURN") else 500, "5.5.2 Command not recognized.")

    async def read_data(self, env):
        """The message up to its ``.`` line, unstuffed; None if the client left first.

        False once it grows past ``max_message_size``: refused (and counted)
        at once, whether or not the client stays to send its end; the rest
        is read and dropped. ``env`` None: drop it all, count nothing.
        """
        limit = self.settings.max_message_size
        lines, size, too_large = [], 0, False
        while True:
            line, complete = await self.readline(limit + MAX_LINE)
            if line is None:
                return False if too_large else None
            if complete and line == b".":
                return False if too_large else b"\n".join(lines) + b"\n"
            size += len(line) + 1
            if too_large:
                continue
            if size > limit or not complete:
                too_large, lines = True, []
                if env is not None:
                    self.too_large = self.ingress.refuse(
                        "too_large", 552, f"5.3.4 Message larger than {limit} bytes; refused.",
                        f"from {env.sender} client {self.peer}",
                    )  # fmt: skip
            else:
                lines.append(line[1:] if line.startswith(b".") else line)


class MailListener:
    """The listening socket; one :class:`_Session` per connection."""

    def __init__(self, settings, ingress, log=None):
        self.settings = settings
        self.ingress = ingress
        self.log = log or logging.getLogger("wod.mail")
        self.sessions: set[_Session] = set()
        self.server = None

    @property
    def address(self) -> tuple[str, int] | None:
        """The (host, port) the listener is bound to, once started."""
        if self.server is None or not self.server.sockets:
            return None
        return self.server.sockets[0].getsockname()[:2]

    async def start(self, port: int | None = None):
        """Listen on ``c.WodMail.ip`` and ``port`` (default ``c.WodMail.port``; 0: any free one)."""
        port = self.settings.port if port is None else port
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Session(self), self.settings.ip or None, port, reuse_address=True)
        host, bound = self.address
        self.log.info(
            "Mail listener on %s:%d: verb mails to %s@…, participant mails %s; only from %s",
            self.settings.ip or "*", bound, self.settings.recipient,
            f"relayed to {self.settings.relay}" if self.settings.relay_enabled else "refused (no c.WodMail.relay)",
            self.settings.sender,
        )  # fmt: skip
        return self

    async def stop(self):
        """Stop listening and close the sessions."""
        if self.server is None:
            return
        self.server.close()
        tasks = [s.task for s in list(self.sessions) if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.server.wait_closed()
        self.server = None
