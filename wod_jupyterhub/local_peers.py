"""Who is at the other end of a TCP connection made from this machine: the uid of its socket.

A connection from loopback (or from one of this machine's own addresses)
comes from a process on this machine, and in system-users mode that may be
a student's kernel. Its address tells nothing; its socket does: the kernel
lists every TCP socket of this network namespace in ``/proc/net/tcp`` and
``/proc/net/tcp6`` with the uid that made it. The client's socket is the
one whose local end is the server's peer and whose remote end is the
server's own end. A client on another machine has no such line.

Core module: imports nothing of the hub or the service.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def _hex4(ip: ipaddress.IPv4Address) -> str:
    # The kernel prints each 32-bit word of an address in host byte order.
    return "%08X" % struct.unpack("=I", ip.packed)[0]


def _hex6(ip: ipaddress.IPv6Address) -> str:
    return "".join("%08X" % word for word in struct.unpack("=4I", ip.packed))


def _forms(address: str) -> list[tuple[str, str]]:
    """(table, hex) for each way the kernel may list ``address``: IPv4 in tcp, IPv6 (or v4-mapped) in tcp6."""
    ip = plain_ip(address)
    if ip is None:
        raise ValueError(address)
    if ip.version == 4:
        mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
        return [(TABLES[0], _hex4(ip)), (TABLES[1], _hex6(mapped))]
    return [(TABLES[1], _hex6(ip))]


def peer_uid(server: tuple, client: tuple, tables: tuple = TABLES) -> int | None:
    """The uid of the socket at the client end of the connection ``client`` → ``server``, or None.

    ``server``: the accepted socket's own address (``getsockname()``);
    ``client``: its peer (``getpeername()``). None when no socket of this
    machine has that pair of ends: a client on another machine, or one
    that already closed. Raises OSError when the tables cannot be read.
    """
    try:
        servers = dict(_forms(server[0]))
        clients = _forms(client[0])
    except ValueError:
        return None
    for table, client_hex in clients:
        server_hex = servers.get(table)
        if server_hex is None:
            continue
        # Each line: "sl local rem st queues timer retransmits uid ...", ends written as HEX:PORT.
        needle = f" {client_hex}:{client[1]:04X} {server_hex}:{server[1]:04X} ".encode()
        with open(tables[TABLES.index(table)], "rb") as f:
            text = f.read()
        at = text.find(needle)
        if at >= 0:
            line = text[at : text.find(b"\n", at)]
            return int(line.split()[6])
    return None


def connection_uid(sock: socket.socket) -> int | None:
    """:func:`peer_uid` of an accepted socket; None when it is closed or not TCP."""
    try:
        return peer_uid(sock.getsockname(), sock.getpeername())
    except (OSError, ValueError, IndexError):
        return None


def plain_ip(address: str):
    """``address`` as an ``ip_address``, a v4-mapped IPv6 one as IPv4, without a zone; None if it is none."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip


def is_local_address(address: str) -> bool:
    """Whether ``address`` is loopback (IPv4's whole 127/8, ``::1``, or v4-mapped loopback)."""
    ip = plain_ip(address)
    return ip is not None and ip.is_loopback


def student_peer(wod, server: tuple | None, client: tuple | None) -> str | None:
    """Why a connection must be refused as a student's (a sentence for the log), or None.

    Only in system-users mode (otherwise every student runs as the hub's
    own user and nothing here can tell them apart): a client whose socket
    belongs to a seat's uid (``uid_base + N`` for a seat N of this
    backend), or a loopback client whose socket cannot be found (it closed
    before it was looked at: refused, not guessed).
    """
    if not getattr(wod, "system_users", False) or server is None or client is None:
        return None
    try:
        uid = peer_uid(server, client)
    except OSError as e:
        return f"the owner of a connection from {client[0]} cannot be read ({e.strerror or e})"
    if uid is None:
        return f"no socket of this machine is the client {client[0]}:{client[1]}" if is_local_address(client[0]) else None
    if wod.in_range(uid - wod.uid_base):
        return f"the client {client[0]}:{client[1]} is a process of student{uid - wod.uid_base} (uid {uid})"
    return None


def readable() -> str | None:
    """Why the socket tables cannot be read here, or None (a start-up check)."""
    try:
        with open(TABLES[0], "rb") as f:
            f.read(1)
    except OSError as e:
        return f"{TABLES[0]} cannot be read ({e.strerror or e})"
    return None
