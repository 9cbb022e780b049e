"""Which network addresses an import from a URL may connect to: a pure policy, no I/O.

An import fetches whatever URL a client names, from inside the deployment, so the worker must
not become a way into the networks it sits in (SSRF): loopback, private, link-local (where
cloud metadata services answer, 169.254.169.254), multicast, unspecified and reserved addresses
are refused, in IPv4 and IPv6, unless the operator lists them in ASSAY_IMPORT_ALLOWED_NETWORKS.
An IPv6 address that carries an IPv4 one (IPv4-mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96,
6to4 2002::/16) is judged by the IPv4 address it reaches.

The HTTP adapter (services/adapters/http_fetcher.py) resolves a host once, checks every
address with `check_address`, and connects only to an address that passed.
"""

import ipaddress
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_NETWORKS_SETTING = "ASSAY_IMPORT_ALLOWED_NETWORKS"
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """A comma-separated CIDR list ("10.0.0.0/8, 127.0.0.1/32, fd00::/8"); a bare address is
    one host. ValueError naming the entry that is not a network."""
    networks: list[IPNetwork] = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not an IP network in CIDR notation: {exc}") from None
    return tuple(networks)


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one reaches (mapped, NAT64, 6to4), else None."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def check_address(ip: IPAddress, allowed_networks: Sequence[IPNetwork] = ()) -> str | None:
    """None when an import may connect to `ip`, else the reason it may not.

    An address inside one of `allowed_networks` (or whose embedded IPv4 address is) is always
    allowed; otherwise only globally routable unicast addresses are.
    """
    embedded = embedded_ipv4(ip)
    candidates = [ip] if embedded is None else [ip, embedded]
    if any(address in network for address in candidates for network in allowed_networks):
        return None
    subject = embedded or ip
    kind = _special_kind(subject)
    if kind is None:
        return None
    shown = str(ip) if embedded is None else f"{ip} (IPv4 {embedded})"
    return f"{shown} is {kind}"


def _special_kind(ip: IPAddress) -> str | None:
    # Most specific first: 127.0.0.1 and 169.254.169.254 are also "private" to ipaddress.
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:  # e.g. 100.64.0.0/10, the carrier-grade NAT space
        return "not a publicly routable address"
    return None
