"""Whose a viewer is (streaming_app.clients): what a server that applied a proxy's
header leaves in the client address, and what one that did not leaves.

The addresses below are what uvicorn (ProxyHeadersMiddleware: the host of an entry,
right to left) and daphne (parse_x_forwarded_for: the first entry, whole) put in the
scope when they believe the header; the real servers behind nginx are in test_proxy.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from streaming_app.clients import ViewerKey, forwarded_addresses, network, viewer_key

USER = "MAX_VIEWERS_PER_USER"
ADDRESS = "MAX_VIEWERS_PER_ADDRESS"
PROXY = "MAX_VIEWERS_PER_PROXY"


@pytest.mark.parametrize(
    ("address", "forwarding"),
    [
        ("192.0.2.7", {}),
        # uvicorn believed it: the host of an entry (the port dropped).
        ("192.0.2.7", {"x-forwarded-for": "10.0.0.1, 192.0.2.7:5123"}),
        # daphne believed it: the first entry, port and all.
        ("192.0.2.7:5123", {"x-forwarded-for": "192.0.2.7:5123, 10.0.0.1"}),
        # daphne --proxy-headers-host X-Real-IP.
        ("192.0.2.7", {"x-real-ip": "192.0.2.7", "x-forwarded-for": "10.0.0.1"}),
        # RFC 7239, quoted IPv6 with a port; another spelling of the same address.
        ("2001:db8::1", {"forwarded": 'for="[2001:DB8:0::1]:4711";proto=https, for=10.0.0.1'}),
    ],
)
def test_an_address_the_server_took_from_the_header_is_a_clients(address, forwarding):
    expected = ViewerKey(f"address:{network(address)}", ADDRESS)
    assert viewer_key(None, None, address, forwarding) == expected


@pytest.mark.parametrize(
    "forwarding",
    [
        {"x-forwarded-for": "192.0.2.7"},
        {"x-forwarded-for": ""},
        {"x-real-ip": "192.0.2.7"},
        {"forwarded": "for=192.0.2.7;proto=http"},
        {"forwarded": "proto=http"},
    ],
)
def test_an_address_with_headers_the_server_did_not_apply_is_a_proxys(forwarding):
    assert viewer_key(None, None, "10.0.0.1", forwarding) == ViewerKey("proxy:10.0.0.1", PROXY)


def test_users_and_sessions_are_themselves_and_count_against_their_address_too():
    user = SimpleNamespace(is_authenticated=True, pk=7)
    address = (("address:192.0.2.7", ADDRESS),)
    assert viewer_key(user, "abc", "192.0.2.7", {}) == ViewerKey("user:7", USER, address)
    assert viewer_key(None, "abc", "192.0.2.7", {}) == ViewerKey("session:abc", USER, address)
    # The address the server took from a proxy's header is the client's.
    forwarding = {"x-forwarded-for": "192.0.2.7"}
    assert viewer_key(None, "abc", "192.0.2.7", forwarding).also == address


def test_users_and_sessions_through_a_proxy_not_believed_count_against_the_proxy():
    user = SimpleNamespace(is_authenticated=True, pk=7)
    forwarding = {"x-forwarded-for": "192.0.2.7"}
    proxy = (("proxy:10.0.0.1", PROXY),)
    assert viewer_key(user, "abc", "10.0.0.1", forwarding) == ViewerKey("user:7", USER, proxy)
    assert viewer_key(None, "abc", "10.0.0.1", forwarding) == ViewerKey("session:abc", USER, proxy)


def test_without_an_address_users_and_sessions_count_against_their_own_key_alone():
    """A server on a Unix socket gives no client address: "unknown" would be everyone's,
    and one address's limit would bound every logged-in viewer of the process."""
    user = SimpleNamespace(is_authenticated=True, pk=7)
    assert viewer_key(user, None, None, {}) == ViewerKey("user:7", USER)
    assert viewer_key(None, "abc", None, {}) == ViewerKey("session:abc", USER)
    assert viewer_key(None, None, None, {}) == ViewerKey("address:unknown", ADDRESS)


def test_the_addresses_a_forwarded_header_names():
    assert forwarded_addresses(
        {"forwarded": 'for=192.0.2.60;proto=http;by=203.0.113.43, For="[::1]:80"'}
    ) == {"192.0.2.60", "::1", "[::1]:80"}


def test_an_ipv6_client_is_its_64_network_for_the_viewer_limits_as_for_the_rates():
    """One subscriber holds 2**64 addresses of its network: sockets from any of them
    share one address's MAX_VIEWERS_PER_ADDRESS (the rates count the same key)."""
    keys = {
        viewer_key(None, None, address, {}).key
        for address in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:DB8:1:2:0::2")
    }
    assert keys == {"address:2001:db8:1:2::/64"}
    assert viewer_key(None, None, "2001:db8:1:3::1", {}).key == "address:2001:db8:1:3::/64"
    # A user elsewhere in the network counts against the network too.
    user = SimpleNamespace(pk=7, is_authenticated=True)
    assert viewer_key(user, None, "2001:db8:1:2::77", {}).also == (
        ("address:2001:db8:1:2::/64", ADDRESS),
    )
    # An IPv4-mapped address is its IPv4 address; IPv4 stays as it is.
    assert viewer_key(None, None, "::ffff:192.0.2.1", {}).key == "address:192.0.2.1"
    assert viewer_key(None, None, "192.0.2.1", {}).key == "address:192.0.2.1"
