"""Each seat's output (its server's and kernels' stdout and stderr) in a log file of its own, rotated and capped."""

from __future__ import annotations

import logging
import os
import select
import threading
import time

log = logging.getLogger("wod.seatlog")

CHUNK = 65536


class RotatingFile:
    """``path``, rotated into ``path.1`` … ``path.<backups>`` once it would pass ``max_bytes``."""

    def __init__(self, path: str, max_bytes: int, backups: int):
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.fd = None
        self.size = 0

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size

    def _rotate(self) -> None:
        self.close()
        for i in range(self.backups - 1, 0, -1):
            try:
                os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
            except FileNotFoundError:
                pass
        if self.backups:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)

    def write(self, data: bytes) -> None:
        """Append ``data``, rotating the file whenever it reaches its size."""
        while data:
            if self.fd is None:
                self._open()
            room = self.max_bytes - self.size
            if room <= 0:
                self._rotate()
                continue
            part, data = data[:room], data[room:]
            os.write(self.fd, part)
            self.size += len(part)

    def close(self) -> None:
        """Close the current file (the next write opens it again)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Source:
    def __init__(self, fd: int, out: RotatingFile, rate: int):
        self.fd, self.out, self.rate = fd, out, rate
        self.budget = float(rate)
        self.stamp = time.monotonic()

    def refill(self, now: float) -> None:
        self.budget = min(float(self.rate), self.budget + (now - self.stamp) * self.rate)
        self.stamp = now


class Pump:
    """One thread copying every seat's pipe into its rotating log; :meth:`add` a pipe, it ends with the pipe."""

    def __init__(self):
        self._poll = select.epoll()
        self._sources: dict[int, _Source] = {}
        self._lock = threading.Lock()
        self._thread = None

    def add(self, fd: int, path: str, max_bytes: int, backups: int, rate: int) -> None:
        """Copy the pipe ``fd`` (its read end; the pump closes it) into ``path``, rotated, at most ``rate`` bytes a second."""
        os.set_blocking(fd, False)
        with self._lock:
            self._sources[fd] = _Source(fd, RotatingFile(path, max_bytes, backups), rate)
            self._poll.register(fd, select.EPOLLIN | select.EPOLLHUP)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wod-seat-logs", daemon=True)
                self._thread.start()

    def _drop(self, src: _Source) -> None:
        with self._lock:
            self._sources.pop(src.fd, None)
        try:
            self._poll.unregister(src.fd)
        except (OSError, ValueError):
            pass
        os.close(src.fd)
        src.out.close()

    def _run(self) -> None:
        resting: list[_Source] = []  # over their rate: not polled until their budget refills
        while True:
            events = self._poll.poll(0.25 if resting else None)
            now = time.monotonic()
            for src in list(resting):
                src.refill(now)
                if src.budget >= CHUNK or src.budget >= src.rate:
                    resting.remove(src)
                    self._poll.register(src.fd, select.EPOLLIN | select.EPOLLHUP)
            for fd, _ in events:
                src = self._sources.get(fd)
                if src is None:
                    continue
                src.refill(now)
                try:
                    data = os.read(fd, int(min(CHUNK, max(1, src.budget))))
                except BlockingIOError:
                    continue
                except OSError as e:
                    log.warning("a seat's output pipe failed (%s); its log ends here", e)
                    self._drop(src)
                    continue
                if not data:  # every writer is gone: the seat's server and all it started
                    self._drop(src)
                    continue
                src.budget -= len(data)
                try:
                    src.out.write(data)
                except OSError as e:
                    log.warning("could not write %s: %s", src.out.path, e)
                if src.budget < 1:
                    self._poll.unregister(fd)
                    resting.append(src)


_pump: Pump | None = None
_pump_lock = threading.Lock()


def shared_pump() -> Pump:
    """The hub process's one pump (made at the first seat's start)."""
    global _pump
    with _pump_lock:
        if _pump is None:
            _pump = Pump()
        return _pump


def open_seat_log(folder: str, name: str, max_bytes: int, backups: int, rate: int) -> int:
    """A pipe whose write end (returned) becomes a seat's stdout and stderr; its read end goes to the pump.

    The caller passes the write end to the server and then closes it.
    """
    os.makedirs(folder, 0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    r, w = os.pipe2(os.O_CLOEXEC)
    shared_pump().add(r, os.path.join(folder, f"{name}.log"), max_bytes, backups, rate)
    return w
