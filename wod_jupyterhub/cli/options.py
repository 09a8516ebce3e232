"""``wod config``: every ``c.Wod*`` option with its help, as ``jupyterhub --help-all`` prints JupyterHub's."""

import importlib

#: every configurable class of wod-jupyterhub: its ``c.<Name>`` → the module that defines it
CLASSES = {
    "Wod": "wod_jupyterhub.config",
    "WodAuthenticator": "wod_jupyterhub.hub.auth",
    "WodSpawner": "wod_jupyterhub.hub.spawner",
    "WodService": "wod_jupyterhub.service.app",
    "WodOperations": "wod_jupyterhub.service.operations.settings",
    "WodAhead": "wod_jupyterhub.service.operations.ahead",
    "WodHooks": "wod_jupyterhub.service.hooks",
    "WodPortal": "wod_jupyterhub.service.callbacks.portal",
    "WodMail": "wod_jupyterhub.service.mail.settings",
    "WodSteps": "wod_jupyterhub.service.steps",
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
