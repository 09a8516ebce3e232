"""Waiting that a shutdown can always interrupt."""

import asyncio


async def nap(event: asyncio.Event, timeout: float) -> bool:
    """Sleep until ``event`` is set or ``timeout`` seconds pass; True if it was set."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return event.is_set()


async def within(awaitable, timeout: float):
    """The result of ``awaitable``, or TimeoutError after ``timeout`` seconds (it is cancelled then)."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        raise TimeoutError
    return task.result()


async def settle(tasks, timeout: float) -> set:
    """Cancel ``tasks`` and give them ``timeout`` seconds to end; the ones that did not."""
    tasks = {t for t in tasks if t is not None}
    for t in tasks:
        t.cancel()
    if not tasks:
        return set()
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    return pending
