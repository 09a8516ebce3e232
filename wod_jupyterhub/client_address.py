"""The address a login comes from: the TCP peer, or what the trusted proxies in front of the hub saw."""

import ipaddress

from .local_peers import is_local_address


def networks(items) -> list:
    """``ip_network`` of each address or CIDR; ValueError naming the first that is neither."""
    out = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an address or a network (CIDR)") from None
    return out


def forwarded_client(peer: str, forwarded_for: str | None, trusted: list) -> str:
    """The client address: ``peer``, or while the hop is a trusted proxy, the entry it appended to X-Forwarded-For.

    Read from the right: each trusted proxy appends the address it was
    reached from, so the first untrusted entry is the one a trusted proxy
    saw; what the client itself wrote further left is never reached. A hop
    that is not an address (a proxy's bug) stops the walk at the last one
    that was.
    """
    address = peer
    hops = [h.strip() for h in (forwarded_for or "").split(",")]
    while is_trusted(address, trusted) and hops:
        hop = hops.pop()
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break
        address = hop
        if is_local_address(hop):
            break  # a client of the proxy on this machine: whatever it wrote further left is its own
    return address



def is_trusted(address: str, trusted: list) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


LOOPBACK = "127.0.0.0/8"


def counted_address(address: str | None) -> str | None:
    """The address a failure counts against: loopback as one, an IPv6 address by its /64, an IPv4 address as it is.

    One IPv6 client usually holds a whole /64 and can pick a new address
    from it for every try; counting each would give it 2**64 first tries.
    """
    if not address:
        return address
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if is_local_address(address):
        # Every process of this machine can bind any 127.x.y.z: all of loopback is one client.
        return LOOPBACK
    if ip.version == 6 and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return address
