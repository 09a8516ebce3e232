"""``wod config``: every ``c.Wod*`` option with its help, as ``jupyterhub --help-all`` prints JupyterHub's.

The classes are imported by name when asked for, so the command needs no
running hub; each lists the options it declares itself (not those it
inherits from JupyterHub's ``Authenticator`` or ``Spawner``, which
``jupyterhub --help-all`` shows).
"""

import importlib

#: every configurable class of wod-jupyterhub: its ``c.<Name>`` → the module that defines it
CLASSES = {
    "Wod": "wod_jupyterhub.config",
    "WodAuthenticator": "wod_jupyterhub.auth",
    "WodSpawner": "wod_jupyterhub.spawner",
    "WodService": "wod_jupyterhub.service",
    "WodOperations": "wod_jupyterhub.operations.settings",
    "WodHooks": "wod_jupyterhub.hooks",
    "WodPortal": "wod_jupyterhub.portal",
    "WodMail": "wod_jupyterhub.mail.settings",
}


def option_classes(names=None) -> list:
    """The classes named (all when None), in the order of :data:`CLASSES`; unknown names raise KeyError."""
    wanted = list(CLASSES) if not names else list(names)
    return [getattr(importlib.import_module(CLASSES[name]), name) for name in wanted]


def describe(cls) -> str:
    """``cls``'s own options, each ``--Class.name=<Type>``, its default and its help."""
    traits = cls.class_own_traits(config=True)
    title = f"{cls.__name__}({cls.__bases__[0].__name__}) options"
    head = f"{title}\n{'-' * len(title)}"
    doc = (cls.__doc__ or "").strip().splitlines()
    lines = [head] + ([doc[0]] if doc else [])
    for name in sorted(traits):
        lines.append(cls.class_get_trait_help(traits[name]))
    return "\n".join(lines)
