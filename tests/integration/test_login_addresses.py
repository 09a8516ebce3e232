"""The login throttle behind the real proxy: the client address is the one the proxy saw.

A real JupyterHub behind its real configurable-http-proxy. Clients connect
from distinct loopback addresses (127.0.0.2, 127.0.0.3 …, all on ``lo``), so
"another address" is a real TCP peer, not a header. The hub trusts only the
proxy's own address (127.0.0.1), as a production hub trusts its proxy.
"""

import re
import time

import httpx
import pytest
from sqlalchemy.exc import IntegrityError

from wod_jupyterhub.passwords import hash_password
from wod_jupyterhub.store.models import Seat, Store

PASSWORD = "owner-pass-Kq7w"


@pytest.fixture(scope="module")
def hub(module_hubs, tmp_path_factory):
    extra = "\n".join(
        [
            "c.WodAuthenticator.throttle_failures = 5",
            "c.WodAuthenticator.throttle_ip_failures = 30",
            "c.WodAuthenticator.trusted_proxies = ['127.0.0.1']",
        ]
    )
    with module_hubs(tmp_path_factory.mktemp("addr"), authenticator_class="wod", extra_config=extra, wod_config={"student_max": 40}) as h:
        store = Store(h.db_url)
        for attempt in range(20):
            try:
                with store.session() as s:
                    for n in (3, 5, 7):
                        s.merge(Seat(number=n, password_hash=hash_password(PASSWORD), state="active", generation=1, workshop="WKSHP-X", customer="c"))
                break
            except IntegrityError:
                # The service, just started, adds the range's seat rows while idle: merge's
                # read found none, its insert met the service's. Read again, then update.
                if attempt == 19:
                    raise
                time.sleep(0.1)
        store.dispose()
        yield h


def client_from(hub, address: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=hub.url.rstrip("/"), transport=transport, timeout=60, follow_redirects=False)


def login(hub, address, name, password, headers=None) -> int:
    with client_from(hub, address) as c:
        page = c.get("/hub/login", headers=headers or {})  # a forger sends its headers on every request
        assert page.status_code == 200
        xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text).group(1)
        r = c.post("/hub/login", data={"username": name, "password": password, "_xsrf": xsrf}, headers=headers or {})
        return r.status_code


def test_spoofed_addresses_do_not_lock_the_owner_out(hub):
    # The guesser rotates X-Real-Ip (which tornado's xheaders prefers) and X-Forwarded-For from one real address.
    for i in range(5):
        spoof = {"X-Real-Ip": f"203.0.113.{i}", "X-Forwarded-For": f"198.51.100.{i}"}
        assert login(hub, "127.0.0.2", "student3", f"guess{i}", spoof) == 403
    # The guesser's real address is the one that failed: its pair is locked, whatever it claims now.
    assert login(hub, "127.0.0.2", "student3", "guess5", {"X-Real-Ip": "192.0.2.200"}) == 429
    # The owner logs in: a lock never refuses the right password.
    assert login(hub, "127.0.0.3", "student3", PASSWORD) == 302


def test_claiming_the_owners_address_does_not_lock_it(hub):
    # The guesser claims to be the owner's address: the proxy's entry, not the claim, is what counts.
    for i in range(6):
        assert login(hub, "127.0.0.4", "student5", f"guess{i}", {"X-Real-Ip": "127.0.0.5", "X-Forwarded-For": "127.0.0.5"}) in (403, 429)
    assert login(hub, "127.0.0.5", "student5", PASSWORD) == 302


def test_a_flood_from_every_loopback_source_with_forged_headers_never_locks_the_owner_out(hub):
    """Wrong tries from 127.1.0.x, each with a forged X-Forwarded-For, must never fail the owner."""
    for i in range(12):
        forged = {"X-Forwarded-For": f"198.51.100.{i}", "X-Real-Ip": f"203.0.113.{i}"}
        assert login(hub, f"127.1.0.{i + 1}", "student7", f"guess{i}", forged) in (403, 429)
    # All of loopback was one address: no count names a forged address or a 127.1.0.x of its own.
    store = Store(hub.db_url)
    try:
        from wod_jupyterhub.store.models import Throttle

        with store.Session() as s:
            keys = {t.key for t in s.query(Throttle) if "student7" in t.key or t.key.startswith("ip:")}
    finally:
        store.dispose()
    assert keys == {"user:student7", "pair:student7@127.0.0.0/8", "ip:127.0.0.0/8"}, keys
    # The owner, on this machine too (the same counted address), logs in while the name is locked.
    assert login(hub, "127.0.0.1", "student7", PASSWORD) == 302
    assert login(hub, "127.1.0.99", "student7", PASSWORD, {"X-Forwarded-For": "198.51.100.99"}) == 302
