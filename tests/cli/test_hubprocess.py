"""The harness's ports: free, each handed out once, outside the range outgoing connections take theirs from."""

import socket

from wod_jupyterhub.cli import hubprocess


def test_free_ports_are_distinct_bindable_and_below_the_outgoing_range():
    low = hubprocess._ephemeral_low()
    ports = [hubprocess.free_port() for _ in range(40)]
    assert len(set(ports)) == len(ports)
    if low - hubprocess.LOWEST_PORT > 1000:
        assert all(hubprocess.LOWEST_PORT <= p < low for p in ports), (low, ports)
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # still free: nothing took it
