"""Behind a real reverse proxy: nginx, configured with the block docs/deployment.md gives,
in front of real uvicorn and daphne processes, with 200 anonymous readers of one shared
link, each from its own loopback address.

nginx connects to the server from an address of its own (127.0.0.250, ``proxy_bind``),
as a proxy on another host would: uvicorn's default (believe 127.0.0.1 only) does not
cover it, so "without the flags" means what it means in production.

What the design promises (docs/deployment.md, "Proxies"):

- with the flags the docs give, every reader counts as itself: all 200 are served,
  while MAX_VIEWERS_PER_USER and MAX_VIEWERS_PER_ADDRESS are 2 and MAX_VIEWERS_PER_PROXY 50;
- without them, the readers (whose address is then nginx's) count together against
  MAX_VIEWERS_PER_PROXY: exactly 50 are served, and the server logs one warning that
  names the fix (the old code served MAX_VIEWERS_PER_USER of them: 2);
- a client that reaches the server directly and varies a made-up X-Forwarded-For stays
  within MAX_VIEWERS_PER_PROXY (daphne with --proxy-headers believes anyone: it is the
  documented exception, kept reachable only from the proxy); one that sends it through
  nginx counts as its real address, within MAX_VIEWERS_PER_ADDRESS.

The readers watch a pending stream, so that each one, once it has its snapshot, holds
its place until the test drives the stream: every reader is open (or refused) at once,
whatever the scheduling, and then every served one gets the whole text, the final
status and a clean end.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from .conftest import require
from .servers import (
    NGINX,
    Daphne,
    Nginx,
    Uvicorn,
    closing,
    replace_once,
    sse_messages,
)

pytestmark = [pytest.mark.daphne, pytest.mark.slow]

PROXY_ADDRESS = "127.0.0.250"
READERS = 200
SSE_READERS = 20  # of the 200
LIMITS = {"MAX_VIEWERS_PER_USER": 2, "MAX_VIEWERS_PER_ADDRESS": 2, "MAX_VIEWERS_PER_PROXY": 50}
DIRECT_SPOOFS = 60  # connections of one direct client, each with another made-up address
PROXIED_SPOOFS = 5  # the same through nginx
WARNING = "A request from "  # what the app logs when a forwarding header was not applied

# The flags docs/deployment.md gives each server.
FLAGS = {
    Daphne: ["--proxy-headers"],
    Uvicorn: ["--proxy-headers", f"--forwarded-allow-ips={PROXY_ADDRESS}"],
}


class ProxyNginx(Nginx):
    """nginx with the block of docs/deployment.md's "Proxies", as another host seen
    from the server."""

    def adapt(self, block: str) -> str:
        # The only line the docs do not have: nginx as another host, seen from the server.
        return replace_once(
            block, "location / {", f"location / {{\n        proxy_bind {PROXY_ADDRESS};"
        )


def loopback_sources_work() -> bool:
    try:
        with socket.socket() as s:
            s.bind((PROXY_ADDRESS, 0))
        return True
    except OSError:
        return False


@pytest.fixture
def nginx_factory() -> Iterator[Any]:
    require(
        os.path.exists(NGINX),
        f"needs nginx at {NGINX} (apt-get install nginx, or set NGINX)",
    )
    require(loopback_sources_work(), "needs the whole of 127.0.0.0/8 on loopback (Linux)")
    started: list[Nginx] = []

    def start(upstream_port: int) -> Nginx:
        proxy = ProxyNginx(upstream_port)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@dataclass
class Reading:
    """What one reader saw: ``code`` is the websocket's close code or the HTTP status.
    ``ready`` is set once the snapshot and status are here (True), or the reader ended
    before them (False)."""

    ready: asyncio.Future[bool]
    text: str = ""
    statuses: list[str] = field(default_factory=list)
    code: int | None = None

    def add(self, message: dict[str, Any]) -> None:
        if message["type"] == "text":
            assert message["offset"] == len(self.text), "overlap or gap"
            self.text += message["text"]
        else:
            self.statuses.append(message["status"])
            if not self.ready.done():
                self.ready.set_result(True)

    def end(self) -> None:
        if not self.ready.done():
            self.ready.set_result(False)


async def ws_read(
    base_url: str,
    stream_id: str,
    address: str,
    ready: asyncio.Future[bool],
    headers: dict[str, str] | None = None,
) -> Reading:
    """Watch over a websocket from ``address``."""
    from websockets.asyncio.client import connect
    from websockets.typing import Origin

    reading = Reading(ready)
    url = base_url.replace("http://", "ws://") + f"/ws/streams/{stream_id}/"
    try:
        async with connect(
            url,
            origin=Origin(base_url),
            proxy=None,
            compression=None,
            open_timeout=20,
            additional_headers=headers,
            local_addr=(address, 0),
        ) as ws:
            async for raw in closing(ws):
                reading.add(json.loads(raw))
            reading.code = ws.close_code
    finally:
        reading.end()
    return reading


async def sse_read(
    base_url: str, stream_id: str, address: str, ready: asyncio.Future[bool]
) -> Reading:
    """The same over Server-Sent Events; ``code`` is the HTTP status."""
    reading = Reading(ready)
    transport = httpx.AsyncHTTPTransport(local_address=address)
    try:
        async with (
            httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60) as http,
            http.stream("GET", f"/api/streams/{stream_id}/events/") as response,
        ):
            reading.code = response.status_code
            async for message in sse_messages(response.aiter_text()):
                reading.add(message)
    finally:
        reading.end()
    return reading


def served(reading: Reading, text: str, *, websocket: bool) -> bool:
    """The whole text, from the pending status to the final one, and a clean end."""
    clean = reading.code == (1000 if websocket else 200)
    return (
        reading.text == text
        and reading.statuses[:1] == ["pending"]
        and clean
        and (reading.statuses[-1:] == ["done"])
    )


def refused(reading: Reading, *, websocket: bool) -> bool:
    return reading.code == (4429 if websocket else 429) and not reading.statuses


@pytest.mark.parametrize("configured", [True, False], ids=["with-flags", "without-flags"])
@pytest.mark.parametrize("kind", [Daphne, Uvicorn], ids=["daphne", "uvicorn"])
async def test_anonymous_readers_behind_nginx_are_counted_as_themselves(
    nginx_factory, daphne_factory, browser_factory, kind, configured
):
    server = daphne_factory(
        kind,
        options=FLAGS[kind] if configured else [],
        E2E_STREAMING_APP=json.dumps(LIMITS),
        DEMO_MODEL_DELAY="0.002",
    )
    proxy = nginx_factory(server.port)
    # The chat's author goes through nginx like everyone else; its readers are strangers.
    author = browser_factory(proxy.url)
    chat = await asyncio.to_thread(author.new_chat, "Tell the readers a story")
    stream_id = chat["stream_id"]

    loop = asyncio.get_running_loop()
    readers, spoofers, proxied, ready = [], [], [], []
    for i in range(READERS):
        ready.append(loop.create_future())
        address = f"127.0.0.{i + 2}"  # 127.0.0.2 … 127.0.0.201
        read = sse_read if i < SSE_READERS else ws_read
        readers.append(asyncio.create_task(read(proxy.url, stream_id, address, ready[-1])))
    for i in range(DIRECT_SPOOFS):  # straight to the server, a new made-up address each time
        ready.append(loop.create_future())
        fake = {"X-Forwarded-For": f"10.9.{i // 250}.{i % 250 + 1}"}
        spoofers.append(
            asyncio.create_task(ws_read(server.url, stream_id, "127.0.0.210", ready[-1], fake))
        )
    for i in range(PROXIED_SPOOFS):  # the same through nginx
        ready.append(loop.create_future())
        fake = {"X-Forwarded-For": f"10.8.0.{i + 1}"}
        proxied.append(
            asyncio.create_task(ws_read(proxy.url, stream_id, "127.0.0.211", ready[-1], fake))
        )
    # Every connection is open with its snapshot, or refused, before the stream starts.
    await asyncio.wait_for(asyncio.gather(*ready), 60)

    response = await asyncio.to_thread(author.drive, chat)
    assert response.status_code == 200, response.text
    text = response.text
    assert text
    done = await asyncio.wait_for(asyncio.gather(*readers, *spoofers, *proxied), 60)
    readings, spoofed, proxied_spoofed = (
        done[:READERS],
        done[READERS : READERS + DIRECT_SPOOFS],
        done[READERS + DIRECT_SPOOFS :],
    )
    websocket = [i >= SSE_READERS for i in range(READERS)]
    ok = [served(r, text, websocket=ws) for r, ws in zip(readings, websocket, strict=True)]
    no = [refused(r, websocket=ws) for r, ws in zip(readings, websocket, strict=True)]
    assert all(a or b for a, b in zip(ok, no, strict=True)), [
        r for r, a, b in zip(readings, ok, no, strict=True) if not (a or b)
    ][:3]
    # Records of the example's console handler (daphne's root handler repeats them).
    warnings = sum(line.startswith(WARNING) for line in server.output().splitlines())
    if configured:
        # Each reader is itself: all 200 served, over both transports.
        assert sum(ok) == READERS, f"{READERS - sum(ok)} refused; nginx: {proxy.errors()[-2000:]}"
        assert all(ok[:SSE_READERS])
    # Through nginx, a made-up X-Forwarded-For is replaced by the client's real address:
    # with the flags it is that address, within MAX_VIEWERS_PER_ADDRESS; without, nginx's.
    through = sum(served(r, text, websocket=True) for r in proxied_spoofed)
    assert all(
        served(r, text, websocket=True) or refused(r, websocket=True) for r in proxied_spoofed
    )
    if configured:
        assert through == LIMITS["MAX_VIEWERS_PER_ADDRESS"]
    else:
        # Everyone through a proxy the server does not believe shares MAX_VIEWERS_PER_PROXY
        # (the old code: MAX_VIEWERS_PER_USER, 2 of them).
        assert sum(ok) + through == LIMITS["MAX_VIEWERS_PER_PROXY"], (sum(ok), through)
    # Straight to the server, a client that varies a made-up header stays bounded, ...
    direct = sum(served(r, text, websocket=True) for r in spoofed)
    assert all(served(r, text, websocket=True) or refused(r, websocket=True) for r in spoofed)
    if kind is Daphne and configured:
        # ... except where the server believes every peer (daphne --proxy-headers: the
        # docs say to keep it reachable from the proxy only): each connection is its
        # made-up address.
        assert direct == DIRECT_SPOOFS
        assert warnings == 0
    else:
        assert direct == LIMITS["MAX_VIEWERS_PER_PROXY"]
        # The app says so once per process, naming the fix.
        assert warnings == 1, warnings
        assert "--forwarded-allow-ips" in server.output()
