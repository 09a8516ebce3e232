"""The hub's configuration read outside the hub: the public URL the service builds login links from."""

import pytest
from traitlets.config import Config

from wod_jupyterhub.hubconfig import public_url


@pytest.mark.parametrize(
    "settings,url",
    [
        ({"public_url": "https://wod.example.com/", "subdomain_host": "https://other.example.com"}, "https://wod.example.com/"),
        ({"subdomain_host": "https://wod.example.com"}, "https://wod.example.com/"),
        ({"subdomain_host": "wod.example.com", "base_url": "/jh/"}, "https://wod.example.com/jh/"),
        ({"subdomain_host": "http://wod.localhost:8000/"}, "http://wod.localhost:8000/"),
        ({"bind_url": "http://127.0.0.1:8000/"}, "http://127.0.0.1:8000/"),
        ({"port": 8001}, "http://127.0.0.1:8001/"),
        ({}, None),
    ],
)
def test_the_public_url_is_the_hubs_own_host_with_subdomains(settings, url):
    config = Config()
    for key, value in settings.items():
        setattr(config.JupyterHub, key, value)
    assert public_url(config) == url
