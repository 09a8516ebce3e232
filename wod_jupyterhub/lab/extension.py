"""The jupyter-server extension ``wod_jupyterhub.lab.extension``: the session bar's routes in a seat's server."""

from .handlers import setup_handlers


def _jupyter_server_extension_points():
    return [{"module": "wod_jupyterhub.lab.extension"}]


def _load_jupyter_server_extension(serverapp):
    setup_handlers(serverapp.web_app)
    serverapp.log.info("wod: the session bar's routes are served under %swod/", serverapp.base_url)
