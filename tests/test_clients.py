"""Whose a viewer is (streaming_app.clients): what a server that applied a proxy's
header leaves in the client address, and what one that did not leaves.

The addresses below are what uvicorn (ProxyHeadersMiddleware: the host of an entry,
right to left) and daphne (parse_x_forwarded_for: the first entry, whole) put in the
scope when they believe the header; the real servers behind nginx are in test_proxy.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from streaming_app.clients import ViewerKey, forwarded_addresses, viewer_key

USER = "MAX_VIEWERS_PER_USER"
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
    assert viewer_key(None, None, address, forwarding) == ViewerKey(f"address:{address}", USER)


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


def test_users_and_sessions_are_themselves_whatever_the_headers_say():
    user = SimpleNamespace(is_authenticated=True, pk=7)
    forwarding = {"x-forwarded-for": "192.0.2.7"}
    assert viewer_key(user, "abc", "10.0.0.1", forwarding) == ViewerKey("user:7", USER)
    assert viewer_key(None, "abc", "10.0.0.1", forwarding) == ViewerKey("session:abc", USER)


def test_the_addresses_a_forwarded_header_names():
    assert forwarded_addresses(
        {"forwarded": 'for=192.0.2.60;proto=http;by=203.0.113.43, For="[::1]:80"'}
    ) == {"192.0.2.60", "::1", "[::1]:80"}
