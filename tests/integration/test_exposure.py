"""Single-user mode (every student runs as the hub's account) stays on loopback unless the admin says otherwise."""

import pytest

from wod_jupyterhub.config import Wod


@pytest.mark.parametrize(
    "url,refused",
    [
        ("http://127.0.0.1:8000", False),
        ("http://127.0.0.2:8000", False),
        ("http://localhost:8000", False),
        ("http://[::1]:8000", False),
        ("http://0.0.0.0:8000", True),
        ("http://:8000", True),
        ("http://10.1.2.3:8000", True),
        ("https://wod.example.com", True),
        ("http://[::]:8000", True),
    ],
)
def test_which_addresses_single_user_mode_refuses(url, refused):
    assert bool(Wod().check_exposure(url)) is refused
    assert Wod(single_user_on_network=True).check_exposure(url) is None
    assert Wod(system_users=True).check_exposure(url) is None


def test_the_hub_refuses_to_start_single_user_mode_on_the_network(hubs, tmp_path):
    hub = hubs(tmp_path / "refused", authenticator_class="wod", extra_config="c.JupyterHub.ip = '0.0.0.0'", startup_timeout=60)
    with pytest.raises(RuntimeError, match="exited with 1") as e:
        hub.start()
    assert "single-user mode (c.Wod.system_users = False)" in str(e.value) and "Traceback" not in str(e.value)
    told = hubs(
        tmp_path / "told", authenticator_class="wod", extra_config="c.JupyterHub.ip = '0.0.0.0'\nc.Wod.single_user_on_network = True"
    )
    with told:
        assert "single-user mode" not in told.log_path.read_text()
