"""What people see of the hub: the branded login page and where a login lands."""

from pathlib import Path

from jupyterhub.utils import url_path_join

from ..config import student_number

#: the managed service whose pages are the dashboard
DASHBOARD_SERVICE = "wod"

#: the folder to put in ``c.JupyterHub.template_paths``
TEMPLATES = str(Path(__file__).resolve().parent / "templates")


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
        service = handler.services.get(DASHBOARD_SERVICE)
        if service is not None and service.host:
            # On a subdomain of its own with c.JupyterHub.subdomain_host (Service.href drops the port).
            return service.host + service.prefix
        return url_path_join(handler.base_url, f"services/{DASHBOARD_SERVICE}/")
    return url_path_join(handler.hub.base_url, "home")
