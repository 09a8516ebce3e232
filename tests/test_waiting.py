"""Waits a shutdown can always interrupt (wod_jupyterhub/waiting.py), on a real event loop."""

import asyncio
import time

import pytest

from wod_jupyterhub.waiting import nap, settle, within


async def test_nap_returns_at_once_when_the_event_is_set_meanwhile():
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, event.set)
    t0 = time.monotonic()
    assert await nap(event, 30) is True
    assert time.monotonic() - t0 < 5


async def test_nap_times_out_without_the_event_and_leaves_no_task():
    event = asyncio.Event()
    before = len(asyncio.all_tasks())
    assert await nap(event, 0.05) is False
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before


async def test_within_gives_the_result_or_cancels_on_timeout():
    assert await within(asyncio.sleep(0, result=7), 5) == 7
    cancelled = asyncio.Event()

    async def slow():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        await within(slow(), 0.05)
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_settle_cancels_and_reports_what_would_not_end():
    async def slow_to_end():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)  # cleans up for longer than settle waits
            raise

    quick = asyncio.ensure_future(asyncio.sleep(30))
    slow = asyncio.ensure_future(slow_to_end())
    await asyncio.sleep(0)
    assert await settle([quick, slow, None], 0.1) == {slow}
    assert quick.cancelled() and not slow.done()
    await asyncio.wait({slow}, timeout=5)
    assert slow.cancelled()
    assert await settle([], 0.1) == set()
