"""Clients that stop reading, for real (design.md, invariants 11 and 13): TCP clients
with a tiny receive buffer (tests/slow.py) against real uvicorn and daphne processes.

Under uvicorn a websocket's ``send()`` waits for a client that stopped reading, so the
hub sees it and cuts it loose; under daphne (Twisted) it never waits, and only the
acknowledgements of the protocol (``?ack=1``, docs/protocol.md) bound what a stalled
viewer costs. What every test here checks is what the client itself could see: what
reached it before a websocket ping's pong (a fence: the connection is ordered), and
its text at the end against the database's."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from .servers import Browser, Daphne, FakeOpenAI, Uvicorn, ws_watch
from .slow import SlowWebsocket

pytestmark = [pytest.mark.daphne, pytest.mark.slow]

servers = pytest.mark.parametrize("kind", [Daphne, Uvicorn], ids=["daphne", "uvicorn"])

WINDOW = 20_000
TCP_WMEM = Path("/proc/sys/net/ipv4/tcp_wmem")
#: The log line of a viewer cut loose (streaming_app.fanout.viewer.Viewer._cut_loose).
CUT_LOOSE = "is not reading; it will catch up"


def long_reply(characters: int) -> list[str]:
    """A reply of ``characters`` in pieces of 1,000, numbered so that any gap, overlap
    or reordering shows in the text."""
    return [f"{i:07d}:" + "x" * 991 + "\n" for i in range(characters // 1000)]


def start(factory: Any, kind: type[Daphne], fake: FakeOpenAI, **streaming_app: Any) -> Daphne:
    settings = {
        "MAX_LENGTH": 10_000_000,
        "MAX_VIEWERS_PER_USER": None,
        "MAX_VIEWERS_PER_ADDRESS": None,
        **streaming_app,
    }
    return factory(
        kind,
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=fake.base_url,
        OPENAI_MODEL="test",
        # Replies of megabytes, a piece a token: past the example's output cap.
        CHAT_MAX_OUTPUT_TOKENS="1000000",
        E2E_STREAMING_APP=json.dumps(settings),
    )


async def acking_reader(url: str, origin: str) -> dict[str, Any]:
    reader = await SlowWebsocket.open(f"{url}&ack=1", origin=origin)
    await reader.read(acks=True)
    return {"text": reader.text, "statuses": reader.statuses}


async def stall_through_a_drive(
    server: Daphne, browser: Browser, query: str, *, reader_acks: bool = False
) -> tuple[SlowWebsocket, str, dict[str, Any], str]:
    """Open a stalled websocket viewer of a new chat's reply (with ``query``) and a
    reading one (that acknowledges, with ``reader_acks``), then drive the reply to its
    end. Returns the stalled viewer, the driven text, the reader's result and the
    stream's id: once the reader has had the terminal status, the hub has handed the
    stalled viewer all it ever will before it reads again."""
    chat = browser.new_chat("Tell me everything")
    url = server.url.replace("http://", "ws://") + f"/ws/streams/{chat['stream_id']}/?offset=0"
    stalled = await SlowWebsocket.open(url + query, origin=server.url)
    reader = asyncio.create_task(
        acking_reader(url, server.url) if reader_acks else ws_watch(server.url, chat["stream_id"])
    )
    driven = await asyncio.to_thread(browser.drive, chat)
    assert driven.status_code == 200
    read = await asyncio.wait_for(reader, 60)
    return stalled, driven.text, read, chat["stream_id"]


@servers
async def test_a_stalled_viewer_that_acknowledges_is_sent_one_window_then_catches_up_exactly(
    daphne_factory, browser_factory, kind
):
    """A viewer on ``?ack=1`` that stops reading (and acknowledging) while a reply ten
    windows long is generated: nothing past ``VIEWER_BUFFER_CHARS`` reaches it, on
    either server, and the others are not held up; when it reads and acknowledges
    again it ends with exactly the database's text."""
    fake = FakeOpenAI(long_reply(10 * WINDOW))
    try:
        server = start(daphne_factory, kind, fake, VIEWER_BUFFER_CHARS=WINDOW)
        browser = browser_factory(server.url)
        stalled, driven, read, stream_id = await stall_through_a_drive(server, browser, "&ack=1")
        assert read["text"] == driven and read["statuses"][-1] == "done", "a reader held up"
        await stalled.fence()
        assert 0 < stalled.length <= WINDOW, f"{stalled.length} characters sent unacknowledged"
        assert "done" not in stalled.statuses, "the end before the text"
        assert CUT_LOOSE in server.output(), "the stalled viewer was never cut loose"
        await stalled.read(acks=True)
        body = browser.wait_finished(stream_id)
        assert stalled.text == body["text"] == driven
        assert (stalled.statuses[-1], stalled.close_code) == ("done", 1000)
    finally:
        fake.close()


async def test_under_uvicorn_a_stalled_viewer_that_does_not_acknowledge_is_cut_loose_and_catches_up(
    daphne_factory, browser_factory
):
    """An old client (no acks) that stops reading, under uvicorn, whose ``send()``
    waits for it: the hub cuts it loose once its frames pass ``VIEWER_BUFFER_CHARS``
    (the reply is far longer than every buffer on the way), the reader beside it is
    not held up, and when it reads again it catches up exactly."""
    # Longer than the most the server's kernel may buffer for the socket, and more.
    most = int((await asyncio.to_thread(TCP_WMEM.read_text)).split()[2])
    fake = FakeOpenAI(long_reply(most + 2_000_000))
    try:
        server = start(daphne_factory, Uvicorn, fake, VIEWER_BUFFER_CHARS=WINDOW)
        browser = browser_factory(server.url)
        stalled, driven, read, stream_id = await stall_through_a_drive(server, browser, "")
        assert read["text"] == driven and read["statuses"][-1] == "done", "a reader held up"
        # (The hub logs it as it cuts the viewer loose, while it hands a delta to its
        # viewers: before the reader's status.)
        assert CUT_LOOSE in server.output(), "the stalled viewer was never cut loose"
        await stalled.read()
        assert stalled.text == browser.wait_finished(stream_id)["text"] == driven
        assert (stalled.statuses[-1], stalled.close_code) == ("done", 1000)
    finally:
        fake.close()


async def test_under_daphne_a_viewer_held_to_a_window_gets_one_window_a_connection_and_resumes(
    daphne_factory, browser_factory
):
    """``LIMIT_UNACKED_VIEWERS``: an old client (no acks) that stops reading, under
    daphne, is sent no more than ``VIEWER_BUFFER_CHARS`` on its connection, then told
    4413; coming back from its offset, as client.js does after any close but 1000,
    4400, 4403 and 4404, it ends with exactly the database's text."""
    fake = FakeOpenAI(long_reply(5 * WINDOW))
    try:
        server = start(
            daphne_factory, Daphne, fake, VIEWER_BUFFER_CHARS=WINDOW, LIMIT_UNACKED_VIEWERS=True
        )
        browser = browser_factory(server.url)
        stalled, driven, read, stream_id = await stall_through_a_drive(
            server, browser, "", reader_acks=True
        )
        assert read["text"] == driven and read["statuses"][-1] == "done", "a reader held up"
        # All the server ever wrote to the stalled connection (it was told 4413 then).
        # daphne (autobahn) waits 1 s for the answer to its close, then resets the
        # connection, and what the client had not read is gone: on a loaded machine the
        # drive may take longer than that. The client then resumes from what it has, as
        # it does after a 4413.
        try:
            await stalled.read()
        except ConnectionResetError:
            reset = True
        else:
            reset = False
            assert stalled.close_code == 4413
        assert stalled.length <= WINDOW, f"{stalled.length} characters sent unacknowledged"
        assert reset or stalled.length > 0
        text, connections = stalled.text, 1
        base = server.url.replace("http://", "ws://") + f"/ws/streams/{stream_id}/"
        while True:
            again = await SlowWebsocket.open(f"{base}?offset={len(text)}", origin=server.url)
            await again.read()
            text, connections = text + again.text, connections + 1
            assert len(again.text) <= WINDOW
            if again.close_code != 4413:
                break
        assert (again.close_code, again.statuses[-1]) == (1000, "done")
        assert text == browser.wait_finished(stream_id)["text"] == driven
        # One window a connection: the reply is five windows long.
        assert connections == (6 if reset else 5)
    finally:
        fake.close()
