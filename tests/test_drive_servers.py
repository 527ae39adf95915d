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

from .servers import Browser, Daphne, FakeOpenAI, Uvicorn, closing, ws_watch
from .slow import stalled_request
from .test_slow_readers import TCP_WMEM, long_reply, start

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

    def events(self, model: str, max_tokens: int | None = None) -> Iterator[str]:
        self.gate.wait(30)
        return super().events(model, max_tokens)


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


# A driver that stops reading ---------------------------------------------------------

#: The log line of an abandoned drive (streaming_app.http.body.DriverBody.push).
STOPPED_READING = "stopped reading; its response is abandoned, generation goes on"
#: MAX_PENDING_CHARS for these tests: well over what the model's client reads at once
#: (64 KiB), which the run pushes to the driver in one turn of the event loop, a driver
#: reading or not.
PENDING = 200_000


class HeldOpenAI(FakeOpenAI):
    """A FakeOpenAI that sends the first piece, then holds the rest until the test opens
    the gate."""

    def __init__(self, pieces: list[str]) -> None:
        self.gate = threading.Event()
        super().__init__(pieces)

    async def before_event(self, index: int) -> None:
        if index == 1:
            await asyncio.to_thread(self.gate.wait, 60)


async def a_drive_that_stops_reading(
    server: Daphne, browser: Browser, fake: HeldOpenAI
) -> tuple[socket.socket, dict[str, Any], bytes]:
    """POST a new chat's drive over a tiny-buffer socket, read until its first piece has
    come, then let the model go on: from then on the driver reads nothing. Returns the
    socket, the chat and what was read."""
    chat = browser.new_chat("Tell me everything")
    url = urlsplit(server.url)
    cookies = "; ".join(f"{k}={v}" for k, v in browser.http.cookies.items())
    sock = await stalled_request(
        server.url,
        f"POST {chat['drive_url']} HTTP/1.1\nHost: {url.netloc}\nCookie: {cookies}\n"
        f"X-CSRFToken: {browser.headers()['X-CSRFToken']}\nContent-Length: 0",
    )
    loop = asyncio.get_running_loop()
    received = b""
    while b"0000000:" not in received.partition(b"\r\n\r\n")[2]:
        data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 30)
        assert data, f"the drive ended before its first piece: {received!r}"
        received += data
    fake.gate.set()
    return sock, chat, received


def chunked(received: bytes) -> tuple[str, str, bool]:
    """A response so far: its head, its body's text, and whether that body has ended
    (the chunked encoding's last chunk)."""
    head, _, rest = received.partition(b"\r\n\r\n")
    body = b""
    while b"\r\n" in rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return head.decode(), body.decode(), rest == b"\r\n"
        if len(rest) < size + 2:
            break  # inside a chunk
        body, rest = body + rest[:size], rest[size + 2 :]
    return head.decode(), body.decode(errors="replace"), False


async def read_to_the_end(sock: socket.socket, received: bytes) -> tuple[str, str, bool]:
    """Read the rest of the response, to its last chunk or the connection's end (a cut
    response): its head, its body's text, and whether that body ended. The socket's
    receive buffer is made large first: through the window of a tiny one the kernel may
    send what it holds a segment per persist timer (about 5 KB a second), and what the
    server wrote for a stalled driver can be megabytes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    loop = asyncio.get_running_loop()
    while not (response := chunked(received))[2]:
        data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 30)
        if not data:
            break
        received += data
    return response


async def stall_a_drive_through_its_reply(
    factories: tuple[Any, Any], kind: type[Daphne], fake: HeldOpenAI, *, abandoned: bool
) -> tuple[Daphne, str, str, bool]:
    """Start ``kind``, drive a reply with a driver that stops reading after the first
    piece, wait (when ``abandoned``) for the server to say it abandoned the drive, then
    for the stream to end ``done`` with all the reply, and only then read the driver's
    response to its end. The server, and the response's head, text and whether it
    ended."""
    daphne_factory, browser_factory = factories
    server = start(daphne_factory, kind, fake, MAX_PENDING_CHARS=PENDING)
    browser = browser_factory(server.url)
    sock, chat, received = await a_drive_that_stops_reading(server, browser, fake)
    with sock:
        deadline = asyncio.get_running_loop().time() + 120
        while abandoned and STOPPED_READING not in server.output():
            assert asyncio.get_running_loop().time() < deadline, "never abandoned"
            await asyncio.sleep(0.05)
        body = await asyncio.to_thread(browser.wait_finished, chat["stream_id"], 120)
        assert (body["status"], body["text"]) == ("done", "".join(fake.pieces))
        return server, *await read_to_the_end(sock, received)


async def test_under_uvicorn_a_driver_that_stops_reading_is_abandoned_and_its_response_cut(
    daphne_factory, browser_factory
):
    """A driver that reads its first piece, then nothing, while a reply far longer than
    ``MAX_PENDING_CHARS`` and every kernel buffer is generated: the server abandons it
    (and says so), the stream ends ``done`` with all the text, and when the driver
    reads again its response ends cut (no last chunk): it cannot take the part it had
    for the whole."""
    most = int((await asyncio.to_thread(TCP_WMEM.read_text)).split()[2])
    fake = HeldOpenAI(long_reply(most + 2_000_000))
    reply = "".join(fake.pieces)
    try:
        _, head, text, ended = await stall_a_drive_through_its_reply(
            (daphne_factory, browser_factory), Uvicorn, fake, abandoned=True
        )
        assert head.startswith("HTTP/1.1 200") and "transfer-encoding: chunked" in head.lower()
        assert not ended, "an abandoned drive ended as if it were whole"
        assert fake.pieces[0] in text and reply.startswith(text) and len(text) < len(reply)
    finally:
        fake.gate.set()
        fake.close()


async def test_under_daphne_a_driver_that_stops_reading_is_sent_the_whole_reply(
    daphne_factory, browser_factory
):
    """Under daphne the server's writes never wait for the client, so the drive cannot
    be bounded (docs/deployment.md): a driver that stops reading is not abandoned,
    however far the reply passes ``MAX_PENDING_CHARS``; the stream ends ``done`` and
    when the driver reads again it gets the whole reply, ending cleanly."""
    fake = HeldOpenAI(long_reply(10 * PENDING))
    try:
        server, head, text, ended = await stall_a_drive_through_its_reply(
            (daphne_factory, browser_factory), Daphne, fake, abandoned=False
        )
        assert head.startswith("HTTP/1.1 200")
        assert (ended, text == "".join(fake.pieces)) == (True, True)
        assert STOPPED_READING not in server.output()
    finally:
        fake.gate.set()
        fake.close()
