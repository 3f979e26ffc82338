"""Which addresses a webhook may reach.

A webhook's URL is chosen by whoever holds an admin token (or writes the
file); without a rule the relay would POST to its own network on their
behalf: cloud metadata at 169.254.169.254, an admin port on loopback, a
database on 10.x. So by default an address is refused when it is loopback,
private (10/8, 172.16/12, 192.168/16, fc00::/7), carrier-grade NAT
(100.64/10), link-local (169.254/16, fe80::/10), reserved or not globally
routable, judged for IPv6 forms that carry an IPv4 address by that address
(``core.network``). ``events.allow_private_targets`` lifts that, and
``events.allowed_networks`` lifts it for those networks only (an app at
10.0.0.5). Unspecified (0.0.0.0, ::) and multicast addresses are never a
webhook's, whatever the settings.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from relay.core.network import IpAddress, parse_ip, restricted_kind

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_NEVER = ("unspecified", "multicast")


def refusal(
    address: IpAddress, allow_private: bool, allowed_networks: Sequence[IpNetwork] = ()
) -> str | None:
    """None when a webhook may connect to ``address``, else why not (a sentence's end)."""
    kind = restricted_kind(address)
    if kind is None:
        return None
    if kind in _NEVER:
        article = "an" if kind[0] in "aeiou" else "a"
        return f"{address} is {article} {kind} address, never a webhook's"
    if allow_private or _within(address, allowed_networks):
        return None
    return (
        f"{address} is a {kind} address; webhooks reach public addresses only "
        "(events.allowed_networks or events.allow_private_targets in the config file allow others)"
    )


def literal_refusal(
    host: str, allow_private: bool, allowed_networks: Sequence[IpNetwork] = ()
) -> str | None:
    """For a URL's host that is an IP address: ``refusal`` of it; None for a name."""
    address = parse_ip(host.strip("[]"))
    return refusal(address, allow_private, allowed_networks) if address is not None else None


def _within(address: IpAddress, networks: Sequence[IpNetwork]) -> bool:
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return any(a in n for a in (address, mapped) if a is not None for n in networks)
