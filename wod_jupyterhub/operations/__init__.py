"""Durable operations: the verbs, journaled in the database from before they start to their end.

The files say the architecture:

- ``engine.py``: the durable queue — submit, claim, leases, recovery,
  heartbeat, start and stop; it knows no verb and runs ``VERBS[op.verb]``;
- ``journal.py``: one run of an operation and its journal; ``Run.step`` is
  the one way a verb does a step;
- ``verbs.py``: ``VERBS``, the table of the verbs (CREATE, CLEANUP,
  RESET, PURGE, PASSWORD), each a function whose docstring lists its steps;
- ``steps.py``: the steps several verbs share (rotate, end-sessions, hooks);
- ``admission.py``: whether a request may be queued (the checks of ``submit``);
- ``holders.py``: who holds a seat once its pending operations ran, the one
  rule the admission, the mail ingress and the class tools ask;
- ``seatwork.py``: the work on a seat outside the database (passwords, hub,
  homes, hooks) and the threads it runs in;
- ``prepare.py``: the idle preparation of free seats, and the warm-up;
- ``views.py``: the JSON views of operations and seats;
- ``settings.py``: ``c.WodOperations``, every setting of the above.

Secrets: the rotated password is sealed (``passwords.Sealer``) in
``Operation.result`` in the very transaction that stores its hash, so a
resumed operation reports the same password that the hash checks.
"""

from .engine import PREPARE, Engine
from .prepare import Preparer, warm_up
from .seatwork import SeatWork
from .settings import WodOperations
from .verbs import VERBS
from .views import Views

__all__ = ["PREPARE", "VERBS", "Engine", "Preparer", "SeatWork", "Views", "WodOperations", "warm_up"]
