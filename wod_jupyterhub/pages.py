"""What people see of the hub: the branded login page and where a login lands.

Both are JupyterHub settings an admin puts in ``jupyterhub_config.py``::

    from wod_jupyterhub import pages
    c.JupyterHub.template_paths = [pages.TEMPLATES]
    c.JupyterHub.template_vars = {"wod_platform_name": "…", "wod_login_help": "…"}
    c.JupyterHub.default_url = pages.landing_url

The login page (``templates/hub/login.html``) shows the platform's name
and a help text above JupyterHub's own form; both have defaults.
"""

from pathlib import Path

from jupyterhub.utils import url_path_join

from .config import student_number

#: the folder to put in ``c.JupyterHub.template_paths``
TEMPLATES = str(Path(__file__).resolve().parent / "templates" / "hub")


def landing_url(handler) -> str:
    """Where a login lands: a seat's workshop as usual; an admin who holds no seat, the dashboard.

    A seat spawns its server (JupyterHub's default, the empty string); an
    account that is no seat (an admin) has no server to spawn, so it goes to
    the wod dashboard instead of a spawn error; anyone else to the hub's home.
    """
    user = handler.current_user
    if user is None or student_number(user.name) is not None:
        return ""
    if user.admin:
        return url_path_join(handler.base_url, "services/wod/")
    return url_path_join(handler.hub.base_url, "home")
