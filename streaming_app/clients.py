"""Whose a viewer is, for the viewer limits: a user, an anonymous session, a client's
address, or a proxy's address (docs/deployment.md#proxies).

The transports (websocket, SSE, the AI SDK resume) make the keys here from what their
server handed them and give them to the hub, which counts keys and knows nothing of
addresses or headers. A viewer counts against its own key (a user's or a session's,
within ``MAX_VIEWERS_PER_USER``) and against its client's address (within
``MAX_VIEWERS_PER_ADDRESS``): guests minted for free (one per cookie-less visit, in the
example) each have a user's limit, but from one address they share the address's. A
viewer with neither user nor session counts against its address alone.

An address is taken for a client's unless the request carries forwarding headers
(``X-Forwarded-For``, ``X-Real-IP``, ``Forwarded``) that the server did not apply. When
uvicorn or daphne trust a proxy, they replace the client address with one *from* the
header, so an address that is not among the header's is the proxy's own: the server was
not told to trust it. Everyone through such a proxy would be one address, and the
101st reader of a shared link would be refused; its viewers count against
``MAX_VIEWERS_PER_PROXY`` together instead (its ``proxy:`` key, in place of the
``address:`` one), and the first of them logs a warning that names the fix. A client
that talks to the server directly and adds a made-up header of its own is counted as
such a proxy (its own address's ``proxy:`` key): it cannot escape a bound by inventing
addresses, though it may hold ``MAX_VIEWERS_PER_ADDRESS`` + ``MAX_VIEWERS_PER_PROXY``
sockets in all, with and without the header.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from django.http import HttpRequest

from . import conf

logger = logging.getLogger(__name__)

#: The headers a proxy tells a client's address in (lower case).
FORWARDING_HEADERS = ("x-forwarded-for", "x-real-ip", "forwarded")


class ViewerKey(NamedTuple):
    """``key`` identifies whose a viewer is; ``limit`` names the setting that bounds how
    many viewers one key holds open on a process; ``also``, the other keys (and their
    limits) the viewer counts against: its client's address, when ``key`` is not that."""

    key: str
    limit: str
    also: tuple[tuple[str, str], ...] = ()


_warned = False


def viewer_key(
    user: Any, session_key: str | None, address: str | None, forwarding: Mapping[str, str]
) -> ViewerKey:
    """A user, else an anonymous session, each also counted against :func:`address_key`;
    else that key alone. Where the server gives no address (a Unix socket), users and
    sessions count against their own key only: "unknown" is everyone's address.

    ``forwarding`` holds the request's :data:`FORWARDING_HEADERS` (lower-case names,
    repeated headers joined with commas)."""
    where = address_key(address, forwarding)
    also = ((where.key, where.limit),) if address else ()
    if user is not None and getattr(user, "is_authenticated", False):
        return ViewerKey(f"user:{user.pk}", "MAX_VIEWERS_PER_USER", also)
    if session_key:
        return ViewerKey(f"session:{session_key}", "MAX_VIEWERS_PER_USER", also)
    return where


def address_key(address: str | None, forwarding: Mapping[str, str]) -> ViewerKey:
    """The client's address (its :func:`network`), else (forwarding headers the server
    did not apply) the proxy's, which logs a warning the first time."""
    where = network(address) if address else "unknown"
    if not forwarding or _canonical(address or "") in forwarded_addresses(forwarding):
        return ViewerKey(f"address:{where}", "MAX_VIEWERS_PER_ADDRESS")
    _warn(address, sorted(forwarding))
    return ViewerKey(f"proxy:{where}", "MAX_VIEWERS_PER_PROXY")


def network(address: str) -> str:
    """What counts as one client's address: an IPv6 address's /64 (one subscriber's
    network: a client holds 2**64 addresses of it), an IPv4-mapped one's IPv4 address,
    any other address as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if not isinstance(ip, ipaddress.IPv6Address):
        return address
    if ip.ipv4_mapped is not None:  # ::ffff:192.0.2.1 is 192.0.2.1
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


def scope_viewer_key(scope: Mapping[str, Any]) -> ViewerKey:
    """The key of a websocket's viewer, from its ASGI scope (after channels' auth
    middleware, when there is one)."""
    session = scope.get("session")
    forwarding: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers") or ():
        name = raw_name.decode("latin-1").lower()
        if name in FORWARDING_HEADERS:
            value = raw_value.decode("latin-1")
            forwarding[name] = f"{forwarding[name]},{value}" if name in forwarding else value
    client = scope.get("client") or [None]
    return viewer_key(scope.get("user"), session and session.session_key, client[0], forwarding)


def _forwarding(request: HttpRequest) -> dict[str, str]:
    return {name: value for name in FORWARDING_HEADERS if (value := request.headers.get(name))}


def request_viewer_key(request: HttpRequest, user: Any) -> ViewerKey:
    """The key of an HTTP viewer (SSE, the AI SDK resume)."""
    session = getattr(request, "session", None)
    return viewer_key(
        user, session and session.session_key, request.META.get("REMOTE_ADDR"), _forwarding(request)
    )


def request_address_key(request: HttpRequest) -> ViewerKey:
    """The request's client address alone (``address:<ip>``), or its proxy's
    (``proxy:<ip>``: forwarding headers the server did not apply), whoever is logged
    in: what the rate limits per address count (streaming_app.admission)."""
    return viewer_key(None, None, request.META.get("REMOTE_ADDR"), _forwarding(request))


def forwarded_addresses(forwarding: Mapping[str, str]) -> set[str]:
    """Every address the forwarding headers name, as a server would take it from them:
    whole (daphne keeps a port), and its host alone (uvicorn drops the port)."""
    found: set[str] = set()
    for name, value in forwarding.items():
        for element in value.split(","):
            entries: Iterable[str] = [element]
            if name == "forwarded":  # for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"
                pairs = (pair.partition("=") for pair in element.split(";"))
                entries = [v.strip().strip('"') for k, _, v in pairs if k.strip().lower() == "for"]
            for entry in entries:
                entry = entry.strip()
                found.update((_canonical(entry), _canonical(_host(entry))))
    found.discard("")
    return found


def _host(entry: str) -> str:
    """``[v6]:port`` → ``v6``, ``v4:port`` → ``v4``; anything else as it is."""
    if entry.startswith("["):
        return entry[1:].partition("]")[0]
    if entry.count(":") == 1:
        return entry.partition(":")[0]
    return entry


def _canonical(address: str) -> str:
    """One spelling per IP address (IPv6 has many); anything else as it is."""
    try:
        return ipaddress.ip_address(address).compressed
    except ValueError:
        return address


def _warn(address: str | None, headers: list[str]) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    logger.warning(
        "A request from %s carries %s, which the server did not apply: %s is a proxy whose "
        "headers are not trusted, or a client that made them up. The viewers from it "
        "share MAX_VIEWERS_PER_PROXY (%s) on this process. Behind a proxy, tell the server "
        "to trust it: uvicorn --forwarded-allow-ips=<the proxy's address>, daphne "
        "--proxy-headers (docs/deployment.md#proxies). Logged once per process.",
        address or "an unknown address",
        " and ".join(headers),
        address or "it",
        conf.get("MAX_VIEWERS_PER_PROXY"),
    )
