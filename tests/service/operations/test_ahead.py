"""The bounds of the servers started ahead (``c.WodAhead``), without a hub."""

import pytest
from traitlets import TraitError
from traitlets.config import Config

from wod_jupyterhub.service.operations.ahead import WodAhead, opened
from wod_jupyterhub.service.operations.settings import WodOperations


def test_the_budget_over_a_seat_bounds_the_servers_and_max_servers_caps_it():
    assert WodAhead(memory_budget="1G", seat_memory="100M").limit() == 10
    assert WodAhead(memory_budget="1G", seat_memory="100M", max_servers=4).limit() == 4
    assert WodAhead(memory_budget="50M", seat_memory="100M").limit() == 0


@pytest.mark.parametrize(
    "options", [{"memory_budget": "lots"}, {"seat_memory": "0"}, {"at_once": 0}, {"max_servers": -1}, {"unused_minutes": -1}]
)
def test_a_wrong_setting_is_refused_with_its_name(options):
    with pytest.raises(TraitError, match="WodAhead"):
        WodAhead(**options)


def test_starting_ahead_is_on_by_default_only_where_the_budget_holds_a_seat():
    c = Config()
    c.WodAhead.memory_budget = "1G"
    assert WodOperations(config=c).start_server is True
    c.WodAhead.memory_budget = "10M"
    assert WodOperations(config=c).start_server is False
    c.WodOperations.start_server = True  # said explicitly: as said
    assert WodOperations(config=c).start_server is True


def test_a_server_is_opened_once_the_hub_gave_a_browser_a_token_of_it():
    server_token = {"oauth_client": "JupyterHub", "note": "Server at /user/student4/"}
    assert not opened("student4", [server_token])
    assert opened("student4", [server_token, {"oauth_client": "Server at /user/student4/"}])
    assert opened("student4", [{"oauth_client": "Server at /prefix/user/student4/"}])
    assert not opened("student4", [{"oauth_client": "Server at /user/student44/"}])
    assert opened("student4", [{"oauth_client": "jupyterhub-user-student4"}])
