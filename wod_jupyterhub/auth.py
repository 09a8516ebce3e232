"""Deprecated: ``wod_jupyterhub.auth`` is now :mod:`wod_jupyterhub.hub.auth`.

Kept so that a ``jupyterhub_config.py`` naming ``wod_jupyterhub.auth.WodAuthenticator`` keeps working;
name the entry point ``"wod"`` or the new path instead. This module will be removed.
"""

import warnings

from .hub.auth import *  # noqa: F403
from .hub.auth import WodAuthenticator  # noqa: F401

warnings.warn("wod_jupyterhub.auth is deprecated: use wod_jupyterhub.hub.auth (or the entry point \"wod\")", DeprecationWarning, stacklevel=2)
