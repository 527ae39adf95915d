"""What a driver is told of how its stream ended, and the websocket routes' paths,
against real daphne and uvicorn processes (the example's drive view, a fake OpenAI)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from .servers import Daphne, FakeOpenAI, Uvicorn, closing, ws_watch

pytestmark = [pytest.mark.daphne, pytest.mark.slow]

servers = pytest.mark.parametrize("kind", [Daphne, Uvicorn], ids=["daphne", "uvicorn"])


def model_env(fake: FakeOpenAI) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_MODEL": "test-model",
    }


@servers
def test_a_model_that_refuses_is_a_502_with_its_public_message(
    daphne_factory, browser_factory, kind
):
    fake = FakeOpenAI(["never"], status=400)
    try:
        server = daphne_factory(kind, **model_env(fake))
        browser = browser_factory(server.url)
        chat = browser.new_chat("Hello?")
        response = browser.drive(chat)
        assert response.status_code == 502, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-stream-id"] == chat["stream_id"]
        assert response.json() == {
            "error": "the model answered with an error (HTTP 400)",
            "status": "error",
            "id": chat["stream_id"],
        }
        assert browser.body(chat["stream_id"])["status"] == "error"
    finally:
        fake.close()


@servers
def test_the_ndjson_drive_ends_with_the_streams_status(daphne_factory, browser_factory, kind):
    fake = FakeOpenAI(["Half", " an", " answer"], fail_after=3)
    try:
        server = daphne_factory(kind, **model_env(fake))
        browser = browser_factory(server.url)
        chat = browser.new_chat("Hello?")
        with httpx.Client(base_url=server.url, cookies=browser.http.cookies, timeout=30) as c:
            response = c.post(chat["drive_url"] + "?parts=1", headers=browser.headers())
        assert response.status_code == 200
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert "".join(line.get("text", "") for line in lines) == "Half an answer"
        assert lines[-1] == {
            "type": "status",
            "status": "error",
            "error": "the model reported an error",
        }
    finally:
        fake.close()


class GatedOpenAI(FakeOpenAI):
    """A FakeOpenAI whose first piece waits until the test opens the gate (its loop,
    a thread of its own, waits with it: one request at a time)."""

    def __init__(self, pieces: list[str]) -> None:
        self.gate = threading.Event()
        super().__init__(pieces)

    def events(self, model: str) -> Iterator[str]:
        self.gate.wait(30)
        return super().events(model)


@servers
def test_a_driver_that_hangs_up_before_the_first_piece_does_not_stop_the_reply(
    daphne_factory, browser_factory, kind
):
    fake = GatedOpenAI(["Written ", "all ", "the same."])
    try:
        server = daphne_factory(kind, **model_env(fake))
        browser = browser_factory(server.url)
        chat = browser.new_chat("Hello?")
        url = urlsplit(server.url)
        cookies = "; ".join(f"{k}={v}" for k, v in browser.http.cookies.items())
        with socket.create_connection((url.hostname, url.port), timeout=10) as driver:
            driver.sendall(
                (
                    f"POST {chat['drive_url']} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                    f"Cookie: {cookies}\r\nX-CSRFToken: {browser.headers()['X-CSRFToken']}\r\n"
                    f"Content-Length: 0\r\n\r\n"
                ).encode()
            )
            # Claimed, no piece yet: the server waits for the first one to answer.
            while browser.body(chat["stream_id"])["status"] == "pending":
                pass
            driver.shutdown(socket.SHUT_RDWR)
        fake.gate.set()
        body = browser.wait_finished(chat["stream_id"])
        assert (body["status"], body["text"]) == ("done", "Written all the same.")
        assert "Traceback" not in server.output()  # hanging up was not an error
    finally:
        fake.gate.set()
        fake.close()


@servers
def test_the_websocket_route_takes_the_path_with_or_without_its_slash(
    daphne_factory, browser_factory, kind
):
    server = daphne_factory(kind, DEMO_MODEL_DELAY="0")
    browser = browser_factory(server.url)
    chat = browser.new_chat("Hello?")
    text = browser.drive(chat).text
    browser.wait_finished(chat["stream_id"])

    async def watch(path: str) -> dict[str, Any]:
        from websockets.asyncio.client import connect
        from websockets.typing import Origin

        seen: dict[str, Any] = {"text": "", "statuses": []}
        url = server.url.replace("http://", "ws://") + path
        async with connect(url, origin=Origin(server.url), proxy=None) as ws:
            async for raw in closing(ws):
                message = json.loads(raw)
                if message["type"] == "text":
                    seen["text"] += message["text"]
                else:
                    seen["statuses"].append(message["status"])
        seen["code"] = ws.close_code
        return seen

    without_slash = asyncio.run(watch(f"/ws/streams/{chat['stream_id']}"))
    assert without_slash == {"text": text, "statuses": ["done"], "code": 1000}
    with_slash = asyncio.run(ws_watch(server.url, chat["stream_id"]))
    assert (with_slash["text"], with_slash["statuses"]) == (text, ["done"])
    for malformed in ("/ws/streams/not-a-stream", "/ws/streams/a/b/", "/ws/streams/"):
        assert asyncio.run(watch(malformed))["code"] == 4404, malformed
