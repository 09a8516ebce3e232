"""Deprecated: ``wod_jupyterhub.spawner`` is now :mod:`wod_jupyterhub.hub.spawner`.

Kept so that a ``jupyterhub_config.py`` naming ``wod_jupyterhub.spawner.WodSpawner`` keeps working;
name the entry point ``"wod"`` or the new path instead. This module will be removed.
"""

import warnings

from .hub.spawner import *  # noqa: F403
from .hub.spawner import WodSpawner  # noqa: F401

warnings.warn("wod_jupyterhub.spawner is deprecated: use wod_jupyterhub.hub.spawner (or the entry point \"wod\")", DeprecationWarning, stacklevel=2)
