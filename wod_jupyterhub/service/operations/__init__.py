"""Durable operations: the verbs, journaled in the database from before they start to their end."""

from .engine import PREPARE, Engine
from .prepare import Preparer, warm_up
from .seatwork import SeatWork
from .settings import WodOperations
from .verbs import VERBS
from .views import Views

__all__ = ["PREPARE", "VERBS", "Engine", "Preparer", "SeatWork", "Views", "WodOperations", "warm_up"]
