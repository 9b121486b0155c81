"""The client's address behind a reverse proxy (nginx, a load balancer).

Behind a proxy every request comes from the proxy's address: usage, logs and the per-address
login limit would all see one client. A request from a configured trusted proxy is therefore
given the address its ``X-Forwarded-For`` names: the right-most entry that is not itself a
trusted proxy (entries further left are whatever the client chose to send, so they are never
believed). A request from anywhere else keeps its own address, whatever headers it carries.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_address(remote: str | None, forwarded_for: str | None,
                   trusted: Iterable[Network]) -> str | None:
    """The address to believe for a request from ``remote`` with this header."""
    trusted = tuple(trusted)

    def is_trusted(text: str | None) -> bool:
        address = _address(text) if text else None
        return address is not None and any(address in network for network in trusted)

    if not forwarded_for or not is_trusted(remote):
        return remote
    for hop in reversed(forwarded_for.split(",")):
        if not is_trusted(hop):
            address = _address(hop)
            return str(address) if address is not None else remote  # garbage: the proxy's
    return remote  # every hop was a proxy of ours


def forwarded_middleware(proxies: Iterable[str]):
    trusted = tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)

    @web.middleware
    async def middleware(request: web.Request, handler):
        remote = client_address(request.remote, request.headers.get("X-Forwarded-For"),
                                trusted)
        # Never None here: client_address gives None only for a request without an address.
        if remote is not None and remote != request.remote:
            request = request.clone(remote=remote)
        return await handler(request)

    return middleware
