"""The engine's ``submit`` for a process that only queues (``wod mail``): the service's dispatcher runs what it queues."""

from __future__ import annotations


def engine_submit(config, wod, store, log):
    """(submit, holding, close): the same admission checks and durable queueing as the service's REST verbs.

    The engine is not started here: the operation row it writes is found by
    the dispatcher of the service process(es) sharing the database.
    """
    from ..catalog import CatalogCache
    from ..operations import Engine, SeatWork, WodOperations

    settings = WodOperations(config=config)
    work = SeatWork(
        wod, settings, catalog=CatalogCache(wod, ttl=settings.catalog_ttl), hub=None, hooks=None, renderer=None,
        sealer=None, outbox=None, log=log,
    )  # fmt: skip
    engine = Engine(settings, store, work, log=log)
    return engine.submit, engine.holding, work.close
