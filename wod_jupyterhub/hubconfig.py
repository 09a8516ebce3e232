"""The hub's ``jupyterhub_config.py`` read outside the hub: by the ``wod`` command and the service."""

import contextlib
import io
import os

from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

from .errors import BadRequest

CONFIG_FILE = "jupyterhub_config.py"


def find_config(path: str | None = None, cwd: str | None = None) -> str | None:
    """``path`` (which must exist), else ``./jupyterhub_config.py`` when present, else None."""
    if path:
        if not os.path.isfile(path):
            raise BadRequest(f"configuration file {path} does not exist or is not a file")
        return os.path.abspath(path)
    here = os.path.join(cwd or os.getcwd(), CONFIG_FILE)
    return here if os.path.isfile(here) else None


def load_config(path: str | None) -> Config:
    """The traitlets configuration of ``path`` (empty for None), read without its prints."""
    if not path:
        return Config()
    full = os.path.abspath(path)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return PyFileConfigLoader(os.path.basename(full), os.path.dirname(full)).load_config()
    except Exception as e:  # any error in the admin's file is reported, never raised
        raise BadRequest(f"cannot read {path}: {e.__class__.__name__}: {e}") from None


def load_wod(path: str | None = None):
    """``c.Wod`` of the configuration :func:`find_config` picks."""
    from .config import Wod

    return Wod(config=load_config(find_config(path)))


def public_url(config: Config) -> str | None:
    """The hub's public URL as ``config`` sets it (``public_url``, ``subdomain_host``, ``bind_url``, ``ip``/``port``), or None."""
    hub = config.get("JupyterHub", {})
    base = str(hub.get("base_url", "/") or "/")
    if hub.get("public_url"):
        return str(hub["public_url"])
    if hub.get("subdomain_host"):
        # The hub's own host then (each server on a subdomain of it), as JupyterHub takes it.
        host = str(hub["subdomain_host"]).rstrip("/")
        return (host if "://" in host else "https://" + host) + base  # JupyterHub's own default scheme
    if "bind_url" in hub:
        return str(hub["bind_url"])
    if "ip" in hub or "port" in hub:
        return f"http://{hub.get('ip') or '127.0.0.1'}:{hub.get('port', 8000)}{base}"
    return None
