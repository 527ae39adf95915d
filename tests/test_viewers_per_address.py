"""Guests minted from one address share ``MAX_VIEWERS_PER_ADDRESS``, against real uvicorn
and daphne processes, over websockets, Server-Sent Events and the AI SDK's resume.

The example mints a logged-in guest for every cookie-less chat, and each guest has
``MAX_VIEWERS_PER_USER`` of its own: before the address counted, three guests held three
times the user's limit from one client, and a share-link reader without a session was
bounded by the user's limit for its whole address. Here, with ``MAX_VIEWERS_PER_USER`` 3
and ``MAX_VIEWERS_PER_ADDRESS`` 5, on one live reply:

- two guests from 127.0.0.1 hold 3 + 2 viewers; then the second guest's third, a third
  guest's first and a session-less visitor's are refused (close 4429 / HTTP 429 with
  Retry-After) naming ``MAX_VIEWERS_PER_ADDRESS``, and the first guest's fourth naming
  ``MAX_VIEWERS_PER_USER``;
- meanwhile a guest and a session-less visitor from 127.0.0.2 are served, and read the
  reply to its end;
- once the viewers from 127.0.0.1 have closed, the same 3 + 2 are served again (their
  users' and their address's places came back) and the sixth is refused again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from .servers import Browser, Daphne, FakeOpenAI, Uvicorn, sse_messages
from .test_client_faults import LiveReply

pytestmark = [pytest.mark.daphne, pytest.mark.slow]

PER_USER, PER_ADDRESS = 3, 5
LIMITS = {"MAX_VIEWERS_PER_USER": PER_USER, "MAX_VIEWERS_PER_ADDRESS": PER_ADDRESS}
HERE, ELSEWHERE = "127.0.0.1", "127.0.0.2"
#: How long a closed viewer's places may take to come back (milliseconds, in fact; a
#: leak never comes back).
PATIENCE = 20.0


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    model = FakeOpenAI(["Hello "])
    yield model
    model.close()


@pytest.fixture(scope="module", params=[Daphne, Uvicorn], ids=["daphne", "uvicorn"])
def server(request: Any, e2e_db: str, fake: FakeOpenAI) -> Iterator[Daphne]:
    process = request.param(
        e2e_db,
        E2E_STREAMING_APP=json.dumps(LIMITS),
        OPENAI_API_KEY="test",
        OPENAI_BASE_URL=fake.base_url,
    )
    yield process
    process.stop()


def live_reply(server: Daphne, fake: FakeOpenAI) -> LiveReply:
    """A reply being generated, slowly, by a guest of its own (its author)."""
    return LiveReply(Browser(server.url), fake)


def finish(reply: LiveReply) -> dict[str, Any]:
    """Cancel the reply; its body once it has ended."""
    try:
        return reply.cancel()
    finally:
        reply.browser.close()


def guest(server: Daphne) -> str:
    """A new guest of the example (minted by its first chat): its session cookie."""
    browser = Browser(server.url)
    try:
        browser.new_chat("Hi")
        return f"sessionid={browser.http.cookies['sessionid']}"
    finally:
        browser.close()


@dataclass
class Opened:
    """One viewer: served, or refused with ``code`` (4429 or 429) and ``reason``."""

    served: bool
    code: int | None = None
    reason: str = ""
    retry_after: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    #: What to read it from: its websocket, or its response's messages.
    read: Any = None
    closing: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)


class Transport:
    name = ""

    async def open(
        self, server: Daphne, reply: LiveReply, address: str, cookie: str | None
    ) -> Opened:
        raise NotImplementedError

    async def read_to_end(self, opened: Opened) -> list[dict[str, Any]]:
        raise NotImplementedError


class Websocket(Transport):
    name = "websocket"

    async def open(
        self, server: Daphne, reply: LiveReply, address: str, cookie: str | None
    ) -> Opened:
        opened = Opened(served=False)
        ws: ClientConnection = await opened.closing.enter_async_context(
            connect(
                server.url.replace("http://", "ws://") + f"/ws/streams/{reply.stream_id}/",
                origin=Origin(server.url),
                additional_headers={"Cookie": cookie} if cookie else None,
                local_addr=(address, 0),
                proxy=None,
                open_timeout=10,
                max_size=None,
            )
        )
        opened.closing.push_async_callback(ws.close)
        try:
            # The snapshot of a reply with text, or the close of a refusal.
            opened.messages.append(json.loads(await asyncio.wait_for(ws.recv(), 15)))
            opened.served = True
        except ConnectionClosed:
            opened.code, opened.reason = ws.close_code, ws.close_reason or ""
        opened.read = ws
        return opened

    async def read_to_end(self, opened: Opened) -> list[dict[str, Any]]:
        ws: ClientConnection = opened.read
        with contextlib.suppress(ConnectionClosed):
            while True:
                opened.messages.append(json.loads(await ws.recv()))
        opened.code = ws.close_code
        return opened.messages


class EventStream(Transport):
    """Server-Sent Events (``path`` of the reply) read as ``sse_messages`` does."""

    name = "events"

    def path(self, reply: LiveReply) -> str:
        return f"/api/streams/{reply.stream_id}/events/"

    async def open(
        self, server: Daphne, reply: LiveReply, address: str, cookie: str | None
    ) -> Opened:
        opened = Opened(served=False)
        http = await opened.closing.enter_async_context(
            httpx.AsyncClient(
                base_url=server.url,
                headers={"Cookie": cookie} if cookie else None,
                transport=httpx.AsyncHTTPTransport(local_address=address),
                timeout=30,
            )
        )
        response = await opened.closing.enter_async_context(http.stream("GET", self.path(reply)))
        if response.status_code != 200:
            await response.aread()
            opened.code, opened.retry_after = (
                response.status_code,
                response.headers.get("Retry-After"),
            )
            opened.reason = response.json()["error"]
            return opened
        opened.served = True
        opened.read = self.messages(response)
        return opened

    async def messages(self, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        async for message in sse_messages(response.aiter_text()):
            yield message

    async def read_to_end(self, opened: Opened) -> list[dict[str, Any]]:
        async for message in opened.read:
            opened.messages.append(message)
        return opened.messages


class Resume(EventStream):
    """useChat's resume (``resume: true``) of the chat's live reply."""

    name = "resume"

    def path(self, reply: LiveReply) -> str:
        return reply.resume_path

    async def messages(self, response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        async for chunk in response.aiter_text():
            for block in chunk.split("\n\n"):
                for line in block.split("\n"):
                    if line.startswith("data: ") and line != "data: [DONE]":
                        yield json.loads(line[6:])


TRANSPORTS = {t.name: t for t in (Websocket(), EventStream(), Resume())}


def text_of(transport: Transport, messages: list[dict[str, Any]]) -> str:
    if isinstance(transport, Resume):
        return "".join(m["delta"] for m in messages if m["type"] == "text-delta")
    text = ""
    for message in messages:
        if message["type"] == "text":
            assert message["offset"] <= len(text), "a gap"
            text = text[: message["offset"]] + message["text"]
    return text


def assert_refused(server: Daphne, transport: Transport, opened: Opened, limit: str) -> None:
    assert not opened.served, f"served past {limit}"
    if isinstance(transport, Websocket):
        assert opened.code == 4429, (opened.code, opened.reason)
        if isinstance(server, Uvicorn):  # (daphne sends no close reason)
            assert limit in opened.reason, opened.reason
    else:
        assert (opened.code, opened.retry_after) == (429, "5"), opened
        assert limit in opened.reason, opened.reason


async def open_served(
    server: Daphne, transport: Transport, reply: LiveReply, address: str, cookie: str | None
) -> Opened:
    """A viewer that must be served: refused while the places of viewers that have
    just closed are still held, it tries again."""
    deadline = time.monotonic() + PATIENCE
    while True:
        opened = await transport.open(server, reply, address, cookie)
        if opened.served:
            return opened
        await opened.closing.aclose()
        assert opened.code in (4429, 429), (opened.code, opened.reason)
        assert time.monotonic() < deadline, f"the places never came back: {opened.reason}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("name", list(TRANSPORTS))
async def test_guests_from_one_address_share_its_limit_and_others_are_served(server, fake, name):
    transport = TRANSPORTS[name]
    reply = await asyncio.to_thread(live_reply, server, fake)
    first, second, third, there = [await asyncio.to_thread(guest, server) for _ in range(4)]
    held: list[Opened] = []
    try:
        # Two guests fill the address: 3 (the first's own limit) + 2.
        for cookie in [first] * PER_USER + [second] * (PER_ADDRESS - PER_USER):
            held.append(await transport.open(server, reply, HERE, cookie))
            assert held[-1].served, held[-1]
        # Past it: the second guest (within its own limit), a new guest, a visitor
        # without a session; the first guest past its own.
        past: list[tuple[str | None, str]] = [
            (second, "MAX_VIEWERS_PER_ADDRESS"),
            (third, "MAX_VIEWERS_PER_ADDRESS"),
            (None, "MAX_VIEWERS_PER_ADDRESS"),
            (first, "MAX_VIEWERS_PER_USER"),
        ]
        for past_cookie, limit in past:
            refused = await transport.open(server, reply, HERE, past_cookie)
            await refused.closing.aclose()
            assert_refused(server, transport, refused, limit)

        # Meanwhile, another address is served: a guest and a visitor without a session.
        others = [await transport.open(server, reply, ELSEWHERE, c) for c in (there, None)]
        assert all(o.served for o in others), others
        reading = [asyncio.create_task(transport.read_to_end(o)) for o in others]

        # The viewers from 127.0.0.1 go: every place they held comes back.
        for opened in held:
            await opened.closing.aclose()
        held = [
            await open_served(server, transport, reply, HERE, cookie)
            for cookie in [first] * PER_USER + [second] * (PER_ADDRESS - PER_USER)
        ]
        refused = await transport.open(server, reply, HERE, third)
        await refused.closing.aclose()
        assert_refused(server, transport, refused, "MAX_VIEWERS_PER_ADDRESS")

        # The others read the reply to its end.
        body = await asyncio.to_thread(finish, reply)
        assert body["status"] == "cancelled" and body["text"]
        for messages in await asyncio.wait_for(asyncio.gather(*reading), 30):
            assert text_of(transport, messages) == body["text"]
            if isinstance(transport, Resume):
                assert messages[-1] == {"type": "abort", "reason": "cancelled"}
            else:
                assert messages[-1]["type"] == "status"
                assert messages[-1]["status"] == "cancelled"
        for opened in others:
            await opened.closing.aclose()
    finally:
        for opened in held:
            await opened.closing.aclose()
        if reply.thread.is_alive():
            await asyncio.to_thread(finish, reply)


@pytest.mark.parametrize("name", list(TRANSPORTS))
async def test_visitors_without_a_session_share_their_address_limit_not_a_users(server, fake, name):
    """Share-link readers without a session, all from one address (one office's NAT):
    ``MAX_VIEWERS_PER_ADDRESS`` of them are served, more than a user's limit (the old
    code served ``MAX_VIEWERS_PER_USER``), and the next is refused naming the address's."""
    transport = TRANSPORTS[name]
    reply = await asyncio.to_thread(live_reply, server, fake)
    held: list[Opened] = []
    try:
        for _ in range(PER_ADDRESS):
            held.append(await transport.open(server, reply, "127.0.0.3", None))
            assert held[-1].served, f"viewer {len(held)} refused: {held[-1].reason}"
        refused = await transport.open(server, reply, "127.0.0.3", None)
        await refused.closing.aclose()
        assert_refused(server, transport, refused, "MAX_VIEWERS_PER_ADDRESS")
    finally:
        for opened in held:
            await opened.closing.aclose()
        await asyncio.to_thread(finish, reply)
