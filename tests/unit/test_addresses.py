"""The address policy of imports (schemas/domain/addresses.py): pure, no connection is made."""

import ipaddress

import pytest
from pydantic import ValidationError

from schemas.domain.addresses import check_address, embedded_ipv4, parse_networks
from schemas.settings import Settings

REFUSED = {
    # IPv4
    "127.0.0.1": "a loopback address",
    "127.0.0.2": "a loopback address",
    "10.1.2.3": "a private address",
    "172.16.5.4": "a private address",
    "192.168.1.1": "a private address",
    "169.254.169.254": "a link-local address",  # cloud metadata
    "169.254.0.1": "a link-local address",
    "224.0.0.1": "a multicast address",
    "239.255.255.250": "a multicast address",
    "0.0.0.0": "the unspecified address",
    "240.0.0.1": "a reserved address",
    "100.64.0.1": "not a publicly routable address",  # carrier-grade NAT
    # IPv6
    "::1": "a loopback address",
    "::": "the unspecified address",
    "fe80::1": "a link-local address",
    "fd00::1": "a private address",
    "fc00::1": "a private address",
    "ff02::1": "a multicast address",
    "::127.0.0.1": "a reserved address",  # IPv4-compatible, deprecated
    # IPv6 carrying an IPv4 address: judged by the IPv4 one
    "::ffff:127.0.0.1": "a loopback address",
    "::ffff:169.254.169.254": "a link-local address",
    "::ffff:10.0.0.1": "a private address",
    "64:ff9b::7f00:1": "a loopback address",  # NAT64 of 127.0.0.1
    "2002:a9fe:a9fe::": "a link-local address",  # 6to4 of 169.254.169.254
}
PUBLIC = [
    "93.184.215.14",
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "2a00:1450:4001:82a::200e",
    "::ffff:8.8.8.8",  # mapped public
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
]


@pytest.mark.parametrize(("address", "kind"), REFUSED.items())
def test_non_public_addresses_are_refused_with_their_kind(address: str, kind: str) -> None:
    ip = ipaddress.ip_address(address)
    reason = check_address(ip)
    assert reason is not None and reason.startswith(str(ip)), reason
    assert kind in reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert check_address(ipaddress.ip_address(address)) is None


def test_mapped_addresses_name_the_ipv4_address_they_reach() -> None:
    mapped = ipaddress.ip_address("::ffff:127.0.0.1")
    assert check_address(mapped) == f"{mapped} (IPv4 127.0.0.1) is a loopback address"
    assert embedded_ipv4(ipaddress.ip_address("::ffff:10.0.0.1")) == ipaddress.ip_address(
        "10.0.0.1"
    )
    assert embedded_ipv4(ipaddress.ip_address("2606:4700:4700::1111")) is None
    assert embedded_ipv4(ipaddress.ip_address("10.0.0.1")) is None


def test_allowed_networks_let_exactly_their_addresses_through() -> None:
    allowed = parse_networks("127.0.0.1/32, 10.0.0.0/8,fd00:1234::/32")
    passes = ["127.0.0.1", "::ffff:127.0.0.1", "10.200.3.4", "::ffff:10.0.0.1", "fd00:1234::5"]
    for address in passes:
        assert check_address(ipaddress.ip_address(address), allowed) is None, address
    still_refused = ["127.0.0.2", "::1", "169.254.169.254", "192.168.0.1", "fd00:1235::1"]
    for address in still_refused:
        assert check_address(ipaddress.ip_address(address), allowed) is not None, address


def test_the_allowed_networks_setting_is_parsed_and_checked_at_start() -> None:
    assert parse_networks("") == ()
    assert parse_networks(" , ") == ()
    assert parse_networks("127.0.0.1") == (ipaddress.ip_network("127.0.0.1/32"),)
    settings = Settings(_env_file=None, import_allowed_networks="127.0.0.1/32, ::1/128")
    assert settings.allowed_import_networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert Settings(_env_file=None).allowed_import_networks == ()
    with pytest.raises(ValidationError, match=r"'10\.0\.0\.0/33' is not an IP network"):
        Settings(_env_file=None, import_allowed_networks="127.0.0.1/32,10.0.0.0/33")
