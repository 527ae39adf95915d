"""The offset rules are the same on every endpoint (docs/protocol.md#offsets): the body,
the websocket and Server-Sent Events, on real servers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from example_project.chat.llm import demo_body

from .servers import Browser, Daphne, Uvicorn

pytestmark = [pytest.mark.daphne, pytest.mark.slow]

servers = pytest.mark.parametrize("kind", [Daphne, Uvicorn], ids=["daphne", "uvicorn"])


def closed_with(kind: type[Daphne], reason: str) -> str:
    """The close reason a viewer sees: daphne 4.2 forwards none (docs/protocol.md)."""
    return "" if kind is Daphne else reason


PROMPT = "Where does the offset go?"


def reply_length() -> int:
    return len(demo_body([{"role": "user", "content": PROMPT}]))


async def ws_messages(url: str, origin: str) -> Any:
    from websockets.asyncio.client import connect
    from websockets.typing import Origin

    return connect(url, origin=Origin(origin), proxy=None, compression=None)


@servers
def test_a_duplicate_offset_is_400_on_every_endpoint(daphne_factory, browser_factory, kind):
    server = daphne_factory(kind)
    browser = browser_factory(server.url)
    chat = browser.new_chat(PROMPT)
    assert browser.drive(chat).status_code == 200
    stream = chat["stream_id"]
    for path in (f"/api/streams/{stream}/", f"/api/streams/{stream}/events/"):
        response = browser.http.get(path, params=[("offset", "0"), ("offset", "3")])
        assert (response.status_code, response.json()) == (
            400,
            {"error": "offset is given more than once"},
        ), path

    async def websocket() -> tuple[int | None, str | None]:
        from websockets.exceptions import ConnectionClosed

        url = server.url.replace("http://", "ws://") + f"/ws/streams/{stream}/?offset=0&offset=3"
        async with await ws_messages(url, server.url) as ws:
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.recv()
            return ws.close_code, ws.close_reason

    assert asyncio.run(websocket()) == (4400, closed_with(kind, "offset is given more than once"))


@servers
def test_a_websocket_viewer_past_the_end_is_refused_when_the_stream_ends_short(
    daphne_factory, browser_factory, kind
):
    server = daphne_factory(kind, DEMO_MODEL_DELAY="0.005")
    browser = browser_factory(server.url)
    chat = browser.new_chat(PROMPT)
    length = reply_length()
    offset = length + 100
    stream = chat["stream_id"]

    async def watch() -> tuple[list[dict[str, Any]], int | None, str | None]:
        url = server.url.replace("http://", "ws://") + f"/ws/streams/{stream}/?offset={offset}"
        messages: list[dict[str, Any]] = []
        async with await ws_messages(url, server.url) as ws:
            # Joined: the snapshot (nothing yet at that offset) and the status.
            messages.append(json.loads(await ws.recv()))
            messages.append(json.loads(await ws.recv()))
            drive = asyncio.create_task(asyncio.to_thread(browser.drive, chat))
            from websockets.exceptions import ConnectionClosed

            try:
                while True:
                    messages.append(json.loads(await ws.recv()))
            except ConnectionClosed:
                pass
            assert (await drive).status_code == 200
            return messages, ws.close_code, ws.close_reason

    messages, code, reason = asyncio.run(watch())
    assert messages[:2] == [
        {"type": "text", "offset": offset, "text": ""},
        {"type": "status", "status": "pending", "error": None},
    ]
    assert "done" not in [m.get("status") for m in messages]
    why = f"the stream ended (done) at {length} characters, before the requested offset {offset}"
    assert (code, reason) == (4400, closed_with(kind, why))
    # The same as a viewer who comes at that offset now.
    assert browser.http.get(f"/api/streams/{stream}/", params={"offset": offset}).json() == {
        "error": why
    }


@servers
def test_an_sse_viewer_past_the_end_is_told_why_and_never_given_an_id_past_it(
    daphne_factory, browser_factory, kind
):
    server = daphne_factory(kind, DEMO_MODEL_DELAY="0.005")
    browser: Browser = browser_factory(server.url)
    chat = browser.new_chat(PROMPT)
    length = reply_length()
    offset = length + 100
    stream = chat["stream_id"]

    async def watch() -> list[str]:
        events: list[str] = []
        async with (
            httpx.AsyncClient(base_url=server.url, cookies=browser.http.cookies, timeout=30) as c,
            c.stream("GET", f"/api/streams/{stream}/events/", params={"offset": offset}) as r,
        ):
            assert r.status_code == 200
            buffer, drive = "", None
            async for chunk in r.aiter_text():
                buffer += chunk
                *blocks, buffer = buffer.split("\n\n")
                events += [b for b in blocks if "event:" in b]
                if drive is None and any('"pending"' in e for e in events):
                    drive = asyncio.create_task(asyncio.to_thread(browser.drive, chat))
            assert drive is not None and (await drive).status_code == 200
        return events

    events = asyncio.run(watch())
    reason = f"the stream ended (done) at {length} characters, before the requested offset {offset}"
    assert events[-1].startswith("event: close\n"), events[-1]
    kind_line, data_line = events[-1].split("\n")  # no id: the last one stands
    assert kind_line == "event: close"
    assert json.loads(data_line.removeprefix("data: ")) == {
        "type": "close",
        "code": 4400,
        "reason": reason,
    }
    assert not any('"done"' in e for e in events)
    ids = [int(line[4:]) for e in events for line in e.split("\n") if line.startswith("id: ")]
    # Ids before the end are where the viewer waited (the stream was live and shorter);
    # none labels the end, and the reconnect an EventSource makes is refused the same.
    assert ids and max(ids) == offset
    again = browser.http.get(
        f"/api/streams/{stream}/events/", headers={"Last-Event-ID": str(offset)}
    )
    assert (again.status_code, again.json()) == (400, {"error": reason})
