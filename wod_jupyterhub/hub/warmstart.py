"""The hub's side of the warm template (``seats/template.py``): started on first use, again if it died; asked for seats."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import wod_jupyterhub

from ..procfs import start_time

#: how long the template may take to import the server's code (once) before it counts as unavailable
READY_TIMEOUT = 120
#: how long a forked child may take to answer (its pid, then whether it became the seat)
ANSWER_TIMEOUT = 60
#: after a template failed to start, seconds during which servers start the usual way without trying again
RETRY_AFTER = 60
#: the template's last argument, blanks: each child writes its seat's command line there (``/proc/<pid>/cmdline``)
#: when the kernel does not let it point that elsewhere
ROOM = " " * 2048

# Loads this package from the hub's own folder, whatever the seats' Python has installed: the hub and
# its template always speak the same protocol. Only the package's folder is searched, not sys.path.
BOOT = (
    "import importlib.machinery as m, importlib.util as u, sys; "
    "s = m.PathFinder.find_spec('wod_jupyterhub', [{root!r}]); p = u.module_from_spec(s); "
    "sys.modules['wod_jupyterhub'] = p; s.loader.exec_module(p); "
    "from wod_jupyterhub.seats import template; template.main()"
)


class Unavailable(Exception):
    """The template could not be started or does not answer: the server starts the usual way."""


class SeatFailed(Exception):
    """The child could not become the seat (the reason is in the seat's log, as with ``Popen``)."""


def startup_env(env: dict) -> dict:
    """What of a seat's environment the template starts with: what its interpreter reads when it starts."""
    return {k: v for k, v in env.items() if k.startswith(("PYTHON", "LC_")) or k in ("LANG", "LANGUAGE", "PATH", "TZ")}


class Template:
    """One template process for one interpreter, its flags, the modules it goes without and its start environment."""

    def __init__(self, python: str, flags: list[str], skip: list[str], env: dict):
        self.key = (python, tuple(flags), tuple(skip), tuple(sorted(env.items())))
        self.python, self.flags, self.skip, self.env = python, list(flags), list(skip), dict(env)
        self.proc: subprocess.Popen | None = None
        self.channel: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed: tuple[float, str] | None = None  # (when, why) the last start failed

    def command(self, fd: int) -> list[str]:
        """The template's command line, its channel on descriptor ``fd``."""
        root = str(Path(wod_jupyterhub.__file__).resolve().parent.parent)
        return [self.python, *self.flags, "-c", BOOT.format(root=root), str(fd), ",".join(self.skip), ROOM]

    def alive(self) -> bool:
        """Whether the template runs (and has been reaped, if not)."""
        return self.proc is not None and self.proc.poll() is None

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                self.command(theirs.fileno()), pass_fds=[theirs.fileno()], env=self.env, cwd="/",
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
            )
        except OSError as e:
            ours.close()
            raise Unavailable(f"{self.python} could not run: {e}") from None
        finally:
            theirs.close()
        ours.settimeout(READY_TIMEOUT)
        try:
            ready = ours.recv(4096)
        except OSError as e:
            ready = f"{e}".encode()
        if ready.startswith(b"refused: "):
            ours.close()
            self.stop()
            raise Unavailable(f"it {ready.decode(errors='replace')}")
        if ready != b"ready":
            ours.close()
            self.stop()
            raise Unavailable(f"it ended while importing the server's code (exit {self.proc.returncode}; see the hub's log)")
        ours.settimeout(None)
        self.channel = ours

    def stop(self) -> None:
        """End the template (its children, the seats' servers, keep running)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _connection(self) -> socket.socket:
        """A socket whose other end a fresh child of the template holds (the template started if need be)."""
        with self._lock:
            if not self.alive():
                self.stop()
                if self._failed and time.monotonic() - self._failed[0] < RETRY_AFTER:
                    raise Unavailable(self._failed[1])
                try:
                    self._start()
                except Unavailable as e:
                    self._failed = (time.monotonic(), str(e))
                    raise
                self._failed = None
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                socket.send_fds(self.channel, [b"s"], [theirs.fileno()])
            except OSError as e:
                ours.close()
                self.stop()
                raise Unavailable(f"it does not answer ({e})") from None
            finally:
                theirs.close()
            return ours

    def spawn(self, request: dict, output: int | None) -> tuple[int, int]:
        """Have a child become the seat that ``request`` describes, its output on ``output`` (blocking).

        Returns its pid and that pid's :func:`start_time`, read while the
        child is still the template's and has run nothing of the seat's.

        Raises :class:`Unavailable` before a child holds the request, :class:`SeatFailed` after.
        """
        conn = self._connection()
        with conn:
            conn.settimeout(ANSWER_TIMEOUT)
            pid = started = None
            try:
                socket.send_fds(conn, [json.dumps(request).encode()], [output] if output is not None else [])
                pid = _answer(conn)["pid"]
                started = start_time(pid)
                answer = _answer(conn)
            except (OSError, ValueError, KeyError) as e:
                if pid is None:
                    raise Unavailable(f"its child did not answer ({e or 'closed'})") from None
                _kill(pid, started)
                raise SeatFailed(f"the server's process {pid} did not answer ({e or 'closed'})") from None
            if "error" in answer:
                raise SeatFailed(answer["error"])
            if started is None:
                raise SeatFailed(f"the server's process {pid} ended at once")
            return pid, started


def _answer(conn: socket.socket) -> dict:
    data = conn.recv(65536)
    if not data:
        raise ValueError("")
    return json.loads(data)


def _kill(pid: int, started: int | None) -> None:
    # Only the process that answered: the template reaps it at once, and its pid may name another one since.
    if started is None or start_time(pid) != started:
        return
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


_templates: dict = {}
_templates_lock = threading.Lock()


def shared(python: str, flags: list[str], skip: list[str], env: dict) -> Template:
    """The hub's template for this interpreter, flags, skipped modules and start environment (made, not started)."""
    template = Template(python, flags, skip, env)
    with _templates_lock:
        return _templates.setdefault(template.key, template)
