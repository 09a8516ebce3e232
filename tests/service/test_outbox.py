"""The mechanics any durable outbox shares (wod_jupyterhub/service/outbox.py): back-off and whether a claim stands.

The queue itself runs against real databases in tests/service/callbacks/test_portal.py and
tests/service/mail/test_mail.py.
"""

import datetime

from wod_jupyterhub.leases import make_owner
from wod_jupyterhub.service.outbox import backoff, lease_held


def test_backoff_doubles_up_to_the_ceiling_with_jitter():
    for attempts, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (10, 60.0), (10_000, 60.0)):
        waits = [backoff(attempts, 1.0, 60.0) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits), (attempts, min(waits), max(waits))
        assert len(set(waits)) > 1  # jitter: two services never retry in step


def test_a_claim_stands_until_it_expires_or_its_holder_is_gone():
    now = datetime.datetime(2026, 1, 1, 12, 0)
    later = now + datetime.timedelta(seconds=30)
    mine = make_owner()
    assert lease_held(mine, later, now)
    assert not lease_held(mine, now, now) and not lease_held(mine, None, now)
    host, pid, start, tag = mine.split(":")
    assert not lease_held(f"{host}:{pid}:{int(start) + 1}:{tag}", later, now)  # this pid, another process: gone
    assert lease_held(f"elsewhere:{pid}:{start}:{tag}", later, now)  # another host's: trusted until the lease ends
