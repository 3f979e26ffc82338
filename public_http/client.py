"""Who is asking: the client's address, believed from X-Forwarded-For only behind a trusted proxy.

The peer's address is the client's unless the peer is one of
``http.trusted_proxies``; then X-Forwarded-For is read from the right, each
trusted proxy skipped, and the first address that is not one is the client
(the left-most entries are whatever the client wrote, so they are never
believed). A header that is not a list of addresses is ignored, and the
last proxy is taken as the client: a rate limit then counts the proxy, which
fails closed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from relay.config_section import IpNetwork

MAX_FORWARDED_ENTRIES = 32  # beyond it the header is not read at all


def client_ip(peer: str, forwarded_for: str | None, trusted: Sequence[IpNetwork]) -> str:
    if not trusted or forwarded_for is None or not _is_trusted(peer, trusted):
        return peer
    entries = forwarded_for.split(",", MAX_FORWARDED_ENTRIES + 1)
    if len(entries) > MAX_FORWARDED_ENTRIES:
        return peer
    for entry in reversed(entries):
        try:
            address = ipaddress.ip_address(entry.strip())
        except ValueError:
            return peer
        if not any(address in network for network in trusted):
            return str(address)
    return peer


def _is_trusted(peer: str, trusted: Sequence[IpNetwork]) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in trusted)
