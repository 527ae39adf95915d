"""The official clients of the Durable Streams protocol, the Python one
(``durable-streams`` on PyPI) and the TypeScript one (``@durable-streams/client`` from
npm, in Node, pinned in tests/conformance/), follow a reply that the example's chat is
driving, on real servers: from the beginning and from an offset in the middle, over
long-poll and SSE, to the exact text and the stream's close. And the TypeScript
client's idempotent producer writes a stream that a websocket viewer of the app
follows exactly."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from typing import Any

import httpx
import pytest
from durable_streams import astream

from .bundles import node_modules
from .servers import Browser, Daphne, Uvicorn
from .test_conformance import HERE as NODE_CLIENTS
from .test_offsets import ws_messages

pytestmark = [pytest.mark.daphne, pytest.mark.slow]

servers = pytest.mark.parametrize("kind", [Daphne, Uvicorn], ids=["daphne", "uvicorn"])
modes = pytest.mark.parametrize("live", ["long-poll", "sse"])


class Driving:
    """A chat's reply, driven in a thread as a browser would: ``text`` once it ends."""

    def __init__(self, browser: Browser, prompt: str) -> None:
        self.chat = browser.new_chat(prompt)
        self.stream_id = self.chat["stream_id"]
        self.text: str | None = None
        self._thread = threading.Thread(target=self._drive, args=(browser,))
        self._thread.start()

    def _drive(self, browser: Browser) -> None:
        response = browser.drive(self.chat)
        assert response.status_code == 200, response.text
        self.text = response.text

    def join(self) -> str:
        self._thread.join(60)
        assert self.text is not None, "the drive did not end"
        return self.text


async def follow(url: str, offset: str, live: str, driving: Driving, start: int = 0) -> str:
    """The text the client reads from ``offset`` (code point ``start`` of the reply),
    once it has all that the driver got."""
    read: list[str] = []
    more = asyncio.Event()

    async def reading() -> None:
        async with astream(url, offset=offset, live=live, timeout=30) as response:  # type: ignore[arg-type]
            async for piece in response.iter_text():
                read.append(piece)
                more.set()

    task = asyncio.ensure_future(reading())
    try:
        whole = await asyncio.to_thread(driving.join)
        # The client reads on (this client knows no close): stop it once it has it all.
        while len("".join(read)) < len(whole) - start:
            more.clear()
            waiting = asyncio.ensure_future(more.wait())
            await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            if task.done():
                task.result()  # it failed: say how
                break
    finally:
        task.cancel()
    return "".join(read)


def assert_closed(base: str) -> None:
    """The stream's tail is the protocol's EOF: a read there is empty and closed, and
    the stream is done."""
    head = httpx.head(base)
    assert head.headers["Stream-Closed"] == "true"
    end = httpx.get(base, params={"offset": head.headers["Stream-Next-Offset"]})
    assert end.status_code == 200
    assert end.content == b""
    assert end.headers["Stream-Closed"] == "true"
    assert end.headers["Streaming-Status"] == "done"


def drive_on(daphne_factory: Any, kind: type[Daphne], prompt: str) -> tuple[Driving, str]:
    """A reply being driven on a new ``kind`` server, and its Durable Streams URL."""
    server = daphne_factory(kind, DEMO_MODEL_DELAY="0.01", STREAMING_LONG_POLL_TIMEOUT="1")
    driving = Driving(Browser(server.url), prompt)
    return driving, f"{server.url}/v1/stream/{driving.stream_id}"


@servers
@modes
def test_the_client_follows_a_live_reply_from_the_beginning(daphne_factory, kind, live):
    driving, base = drive_on(daphne_factory, kind, "Follow me from the start")
    # It starts while the reply is live (the stream still pending or streaming).
    assert "Stream-Closed" not in httpx.head(base).headers
    text = asyncio.run(asyncio.wait_for(follow(base, "-1", live, driving), 60))
    whole = driving.join()
    assert text == whole
    assert_closed(base)


@servers
@modes
def test_the_client_resumes_a_live_reply_from_the_middle(daphne_factory, kind, live):
    driving, base = drive_on(daphne_factory, kind, "Resume me from the middle")
    # A first reader has part of it: a catch-up read while the reply is being written.
    while True:
        first = httpx.get(base, params={"offset": "-1"})
        assert first.status_code == 200
        assert "Stream-Closed" not in first.headers, "the reply ended before it was read"
        if first.content:
            break
    head = first.content.decode()
    middle = first.headers["Stream-Next-Offset"]
    rest = asyncio.run(asyncio.wait_for(follow(base, middle, live, driving, len(head)), 60))
    whole = driving.join()
    assert head + rest == whole
    assert_closed(base)


def test_readers_need_no_session_nor_csrf(daphne_factory):
    server = daphne_factory(Uvicorn, DEMO_MODEL_DELAY="0")
    browser = Browser(server.url)
    driving = Driving(browser, "Read me without cookies")
    whole = driving.join()
    # A reader with no cookie at all: the example's policy lets anyone with the link read.
    response = httpx.get(f"{server.url}/v1/stream/{driving.stream_id}")
    assert response.status_code == 200
    assert response.text == whole
    assert response.headers["Stream-Closed"] == "true"


def test_the_example_serves_the_protocol_at_v1_stream(daphne_factory) -> Any:
    server = daphne_factory(Uvicorn)
    response = httpx.head(f"{server.url}/v1/stream/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def node(script: str, *args: str, timeout: float = 60) -> dict[str, Any]:
    """``node tests/conformance/<script> args...``: the JSON it prints."""
    node_modules(NODE_CLIENTS)
    done = subprocess.run(
        ["node", script, *args], cwd=NODE_CLIENTS, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@servers
@modes
@pytest.mark.parametrize("where", ["beginning", "middle"])
def test_the_typescript_client_follows_a_live_reply_to_its_close(daphne_factory, kind, live, where):
    driving, base = drive_on(daphne_factory, kind, f"Follow me from the {where}")
    head, offset = "", "-1"
    while where == "middle":  # a first read has part of it, while it is written
        first = httpx.get(base, params={"offset": "-1"})
        assert "Stream-Closed" not in first.headers, "the reply ended before it was read"
        if first.content:
            head, offset = first.content.decode(), first.headers["Stream-Next-Offset"]
            break
    # This client knows a stream's close: it stops there by itself.
    read = node("follow.mjs", base, offset, live)
    whole = driving.join()
    assert head + read["text"] == whole
    assert read["closed"] is True
    assert read["offset"] == httpx.head(base).headers["Stream-Next-Offset"]
    assert_closed(base)


@servers
def test_a_producer_writes_a_stream_that_a_websocket_viewer_follows_exactly(daphne_factory, kind):
    server = daphne_factory(kind, STREAMING_DURABLE_OPEN="1")
    base = f"{server.url}/v1/stream/produced-{kind.name}"
    created = httpx.put(base, headers={"Content-Type": "text/plain"})
    assert created.status_code == 201
    stream_id = created.headers["Streaming-Id"]
    pieces = ["Exactly ", "once, ", "in ", "order: ", "é 🌍 ", "done."]

    async def watch() -> tuple[str, list[str], int | None]:
        from websockets.exceptions import ConnectionClosedOK

        url = server.url.replace("http://", "ws://") + f"/ws/streams/{stream_id}/"
        text, statuses = "", []
        async with await ws_messages(url, server.url) as ws:
            snapshot = json.loads(await ws.recv())
            assert (snapshot["type"], snapshot["text"]) == ("text", "")
            # Live from here: the producer starts once the viewer has its snapshot.
            producing = asyncio.ensure_future(asyncio.to_thread(node, "produce.mjs", base, *pieces))
            try:
                while True:
                    message = json.loads(await ws.recv())
                    if message["type"] == "text":
                        assert message["offset"] == len(text), "overlap or gap"
                        text += message["text"]
                    else:
                        statuses.append(message["status"])
            except ConnectionClosedOK:
                pass
            assert (await producing)["written"] == len(pieces)
            return text, statuses, ws.close_code

    text, statuses, code = asyncio.run(asyncio.wait_for(watch(), 60))
    assert text == "".join(pieces)
    assert statuses[-1] == "done"
    assert code == 1000
    assert httpx.get(base).text == "".join(pieces)
