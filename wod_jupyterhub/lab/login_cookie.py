"""The jupyter-server extension ``wod_jupyterhub.lab.login_cookie``: the server's cookie secret, from the hub.

The hub derives a secret for each start of a seat's server and signs the
server's cookie with it at the participant's login (see
``wod_jupyterhub.hub.firstvisit``). This extension makes it the server's
own, and takes it out of the environment its kernels and terminals inherit.
"""

import os

#: the variable the hub hands the secret in (hex); the hub's module names the same
SECRET_VARIABLE = "WOD_SERVER_COOKIE_SECRET"


def _jupyter_server_extension_points():
    return [{"module": "wod_jupyterhub.lab.login_cookie"}]


def _load_jupyter_server_extension(serverapp):
    value = os.environ.pop(SECRET_VARIABLE, "")
    try:
        secret = bytes.fromhex(value)
    except ValueError:
        secret = b""
    if len(secret) < 32:
        # The server keeps its own random secret: a login's cookie is then refused and the browser signs in through the hub.
        serverapp.log.warning("wod: no cookie secret from the hub in $%s; logins go through the OAuth hand-shake", SECRET_VARIABLE)
        return
    serverapp.cookie_secret = secret
    # The web application was made with the server's first secret: its handlers read it from the settings.
    serverapp.web_app.settings["cookie_secret"] = secret
    serverapp.log.info("wod: the server's cookie secret is the one the hub signs logins with")
