"""Who the client is: the peer, or what a trusted proxy says in X-Forwarded-For.

X-Forwarded-For is only believed from the proxies the config names
(`server.trusted_proxies`): anyone else could write any address into it. Read from
the right, as each proxy appends the address it received the request from: the
first address that is not a trusted proxy is the client. Engine-free (both engines
and the span code call it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAddress:
    """Resolves a request's client address against a fixed set of trusted proxies."""

    __slots__ = ("_trusted",)

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self._trusted: tuple[Network, ...] = tuple(
            ipaddress.ip_network(p, strict=False) for p in trusted_proxies
        )

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]"))
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def resolve(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address: `peer`, unless `peer` is a trusted proxy that says who."""
        if not forwarded_for or not self._trusted or peer is None or not self._is_trusted(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop[:64]  # a client can write anything left of the first proxy
        return hops[0][:64] if hops else peer


def peer_of(transport: object) -> str | None:
    """The remote IP of an asyncio transport (None for a Unix socket or a gone one)."""
    get = getattr(transport, "get_extra_info", None)
    peername = get("peername") if get is not None else None
    if isinstance(peername, tuple) and peername:
        return str(peername[0])
    return None
