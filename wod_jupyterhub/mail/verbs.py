"""The engine's ``submit`` for a process that only queues (``wod mail``): the service's dispatcher runs what it queues."""

from __future__ import annotations


def engine_submit(config, wod, store, log):
    """(submit, close): the same admission checks and durable queueing as the service's REST verbs."""
    from ..operations import Operations

    ops = Operations(wod, store, None, None, None, None, None, config=config, log=log)

    def close():
        for pool in (ops.pool, ops.hash_pool, ops.stage_pool):
            pool.shutdown(wait=False)

    return ops.submit, close
