"""The server's half of a login that signs in to it: its cookie secret from the hub (``wod_jupyterhub.lab.login_cookie``).

The whole path, a real hub, its login and the participant's server, is in tests/integration/test_login_cookie.py.
"""

import logging
import os
from types import SimpleNamespace

import pytest
from tornado.web import decode_signed_value

from wod_jupyterhub.hub import firstvisit
from wod_jupyterhub.lab import login_cookie


def server(secret=b"own random secret"):
    """What the extension touches of a jupyter-server ``ServerApp``: its secret, its web application's settings, its log."""
    return SimpleNamespace(cookie_secret=secret, web_app=SimpleNamespace(settings={"cookie_secret": secret}), log=logging.getLogger("test"))


def test_the_server_takes_the_hubs_secret_and_leaves_none_to_its_kernels(monkeypatch):
    secret = firstvisit.server_cookie_secret(b"h" * 32, "student3", 12, "a-start")
    monkeypatch.setenv(login_cookie.SECRET_VARIABLE, secret.hex())
    app = server()
    login_cookie._load_jupyter_server_extension(app)
    assert app.cookie_secret == secret == app.web_app.settings["cookie_secret"]
    assert login_cookie.SECRET_VARIABLE not in os.environ
    # The cookie the hub's login sets is one this server reads: the token, under the server's cookie name.
    spawner = SimpleNamespace(oauth_client_id="jupyterhub-user-student3", server=SimpleNamespace(base_url="/user/student3/"))
    name, value, path = firstvisit.server_cookie(spawner, secret, "the-token")
    assert (name, path) == ("jupyterhub-user-student3", "/user/student3/")
    assert decode_signed_value(app.web_app.settings["cookie_secret"], name, value) == b"the-token"
    assert decode_signed_value(b"own random secret", name, value) is None
    assert decode_signed_value(secret, "jupyterhub-user-student4", value) is None


@pytest.mark.parametrize("value", [None, "", "not hex", "ab" * 8])
def test_without_a_usable_secret_the_server_keeps_its_own_and_says_so(monkeypatch, caplog, value):
    if value is None:
        monkeypatch.delenv(login_cookie.SECRET_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(login_cookie.SECRET_VARIABLE, value)
    app = server()
    with caplog.at_level(logging.WARNING):
        login_cookie._load_jupyter_server_extension(app)
    assert app.cookie_secret == b"own random secret" == app.web_app.settings["cookie_secret"]
    assert login_cookie.SECRET_VARIABLE not in os.environ
    assert "OAuth hand-shake" in caplog.text


async def test_logins_do_their_work_after_the_password_one_at_a_time_and_a_failure_gives_its_turn_back(monkeypatch):
    # JupyterHub's own auth_to_user needs a running hub (tests/integration/test_start_ahead.py logs in through it);
    # here it is replaced by one that takes its time, or fails, to watch the turns alone.
    import asyncio

    from jupyterhub.handlers.login import LoginHandler

    inside, most = 0, 0

    async def slow(self, authenticated, user=None):
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await asyncio.sleep(0.01)
        inside -= 1
        if authenticated == "fails":
            raise RuntimeError("the hub could not make the user")
        return authenticated

    monkeypatch.setattr(LoginHandler, "auth_to_user", slow)
    handler = object.__new__(firstvisit.WodLoginHandler)
    results = await asyncio.gather(*(handler.auth_to_user(name) for name in ["a", "fails", "b", "c"]), return_exceptions=True)
    assert results[0] == "a" and isinstance(results[1], RuntimeError) and results[2:] == ["b", "c"]
    assert most == 1  # never two at once
    assert await asyncio.wait_for(handler.auth_to_user("d"), 1) == "d"  # the failed one gave its turn back
