"""How many costly password checks run at once, and who waits first: a flood of wrong tries cannot take the hub's CPU.

An admin's password is hashed at 2 ** 15 (~100 ms of a core): a guesser
sending wrong tries at an admin name as fast as the hub answers would keep
every core busy, and the admin's own login would wait behind them. Those
checks run here: ``slots`` at a time, at most ``waiting`` queued behind
them (the next is told the hub is busy, without a hash), and a try from an
address that has not failed for the name goes before those that have (the
owner before the guesser who locked the name).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class Busy(Exception):
    """Every slot is taken and the queue is full: the try is answered without a check."""


class HashBudget:
    def __init__(self, slots: int = 1, waiting: int = 16):
        self.slots = max(1, slots)
        self.waiting = max(0, waiting)
        self.running = 0
        self._queue: list = []  # (rank, order, future): rank 0 first
        self._order = itertools.count()

    async def run(self, work, *, first: bool):
        """``await work()`` in a slot; ``first``: ahead of the queued tries that are not. Busy when full."""
        if self.running >= self.slots:
            if len(self._queue) >= self.waiting:
                if first and self._drop_last_behind():
                    pass  # a try that has failed before gives its place to this one
                else:
                    raise Busy()
            future = asyncio.get_running_loop().create_future()
            heapq.heappush(self._queue, (0 if first else 1, next(self._order), future))
            try:
                await future  # a slot handed over by the one that ended (running stays counted)
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._hand_over()  # handed a slot, then cancelled before it used it
                raise
        else:
            self.running += 1
        try:
            return await work()
        finally:
            self._hand_over()

    def _hand_over(self):
        while self._queue:
            _, _, future = heapq.heappop(self._queue)
            if not future.done():
                future.set_result(None)
                return
        self.running -= 1

    def _drop_last_behind(self) -> bool:
        """Refuse the last-queued try of those that are not first, to make room; False if there is none."""
        behind = [entry for entry in self._queue if entry[0] == 1 and not entry[2].done()]
        if not behind:
            return False
        last = max(behind, key=lambda entry: entry[1])
        self._queue.remove(last)
        heapq.heapify(self._queue)
        last[2].set_exception(Busy())
        return True
