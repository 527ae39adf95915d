"""Clients that misbehave, against real uvicorn and daphne processes over raw sockets:
whatever a viewer does and whenever (closes before reading, aborts with a TCP reset,
sends frames, goes away during the snapshot or the final close), its
``MAX_VIEWERS_PER_USER`` slot, its ``MAX_VIEWERS_PER_ADDRESS`` slot and the process's
subscription to the stream's group go when it does. After three times the limit of
such connections from one user and from one anonymous address, a well-behaved viewer
from the same user and address is served, and the server has left the stream's group
on Redis (``PUBSUB NUMSUB``).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Origin

from streaming_app.fanout.publish import group_name

from .servers import Browser, Daphne, FakeOpenAI, Uvicorn, e2e_database

pytestmark = [pytest.mark.daphne, pytest.mark.slow, pytest.mark.redis]

LIMIT = 2
#: Misbehaving connections per key: three times the limit.
TIMES = 3 * LIMIT
#: A finished reply long enough that a slow reader is still mid-snapshot (about 1 MB).
LONG = [f"{i:05d} " + "a reply that is long enough to take a while " * 20 for i in range(1000)]
SHORT = ["Short ", "and ", "sweet."]
#: How long a released slot or subscription may take to go (they are gone in
#: milliseconds; a leak never goes).
PATIENCE = 20.0


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    model = FakeOpenAI(SHORT)
    yield model
    model.close()


@pytest.fixture(scope="module", params=[Daphne, Uvicorn], ids=["daphne", "uvicorn"])
def server(request: Any, database_url: str, fake: FakeOpenAI) -> Iterator[Daphne]:
    with e2e_database(database_url) as url:
        process = request.param(
            url,
            REDIS_URL=os.environ["REDIS_URL"],
            E2E_CHANNEL_LAYER="pubsub",
            # A user's viewer counts under its user and its address, an anonymous
            # one's under its address: each of those slots must come back.
            E2E_STREAMING_APP=json.dumps(
                {"MAX_VIEWERS_PER_USER": LIMIT, "MAX_VIEWERS_PER_ADDRESS": LIMIT}
            ),
            OPENAI_API_KEY="test",
            OPENAI_BASE_URL=fake.base_url,
        )
        try:
            yield process
            # What the server logged about the misbehaving clients, for a failing test.
            print(process.output()[-20_000:])
        finally:
            process.stop()


_addresses = itertools.count(10)


@pytest.fixture
def address() -> str:
    """A loopback address of the test's own: an anonymous viewer's key is its address."""
    return f"127.0.0.{next(_addresses)}"


@pytest.fixture
def guest(server: Daphne) -> Iterator[Browser]:
    """A visitor of the example: it becomes a guest user with its first chat."""
    browser = Browser(server.url)
    yield browser
    browser.close()


def finished_reply(browser: Browser, fake: FakeOpenAI, pieces: list[str]) -> dict[str, Any]:
    fake.pieces, fake.delay = pieces, 0.0
    chat = browser.new_chat("Say something")
    assert browser.drive(chat).status_code == 200
    body = browser.wait_finished(chat["stream_id"])
    assert body["status"] == "done" and body["text"] == "".join(pieces)
    return body


def subscribers(stream_id: str) -> int:
    """How many subscribers the stream's group has on Redis (the pub/sub layer's
    channel for it): the server's hub, while it follows the stream."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        [(_, count)] = client.pubsub_numsub(f"asgi__group__{group_name(uuid.UUID(stream_id))}")
        return int(count)
    finally:
        client.close()


def unfollowed(stream_id: str) -> Callable[[], bool]:
    """Whether no process follows the stream (its group has no subscriber)."""
    return lambda: subscribers(stream_id) == 0


def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"after {PATIENCE}s: {what}")
        time.sleep(0.05)


# A websocket client over a raw socket ----------------------------------------------------


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked frame, as a client sends it."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


TEXT, CLOSE = 0x1, 0x8


def close_frame(code: int = 1000) -> bytes:
    return client_frame(CLOSE, struct.pack("!H", code))


class RawClient:
    """One TCP connection to the server from ``address``, driven byte by byte."""

    def __init__(
        self, server: Daphne, address: str, *, cookie: str | None, receive_buffer: int = 0
    ) -> None:
        self.server = server
        self.cookie = cookie
        self.sock = socket.socket()
        if receive_buffer:
            # A reader that cannot take the snapshot at once: the server is still
            # sending it when the client goes.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.bind((address, 0))
        self.sock.settimeout(15)
        self.sock.connect(("127.0.0.1", server.port))
        self.buffer = b""

    def headers(self) -> str:
        lines = f"Host: 127.0.0.1:{self.server.port}\r\nOrigin: {self.server.url}\r\n"
        if self.cookie:
            lines += f"Cookie: {self.cookie}\r\n"
        return lines

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def upgrade(self, path: str, then: bytes = b"") -> None:
        """Ask for a websocket; ``then`` goes in the same write (before any answer)."""
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\n{self.headers()}Upgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.send(request.encode() + then)

    def get(self, path: str) -> None:
        self.send(f"GET {path} HTTP/1.1\r\n{self.headers()}Connection: close\r\n\r\n".encode())

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.buffer += data
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_head(self) -> str:
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            self.buffer += data
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        return head.decode("latin-1")

    def read_frame_head(self) -> tuple[int, int]:
        first, second = self.read(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self.read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self.read(8))
        return first & 0x0F, length

    def read_frame(self) -> tuple[int, bytes]:
        opcode, length = self.read_frame_head()
        return opcode, self.read(length)

    def read_to_close(self) -> list[tuple[int, bytes]]:
        frames = [self.read_frame()]
        while frames[-1][0] != CLOSE:
            frames.append(self.read_frame())
        return frames

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        """Go away with a TCP reset, as a client that crashes or loses its network."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def accepted(client: RawClient) -> None:
    head = client.read_head()
    assert head.startswith("HTTP/1.1 101"), head


def ws_close_before_reading(client: RawClient, path: str) -> None:
    client.upgrade(path, then=close_frame())
    client.close()


def ws_abort_before_reading(client: RawClient, path: str) -> None:
    client.upgrade(path)
    accepted(client)
    client.abort()


def ws_send_a_frame(client: RawClient, path: str) -> None:
    client.upgrade(path, then=client_frame(TEXT, b'{"hello": "server"}'))
    accepted(client)
    frames = client.read_to_close()
    client.send(close_frame())
    client.close()
    assert frames[-1][0] == CLOSE


def mid_snapshot(client: RawClient, path: str) -> None:
    client.upgrade(path)
    accepted(client)
    opcode, length = client.read_frame_head()
    # The client has the beginning of the snapshot, not the rest of it.
    assert (opcode, length > 100_000) == (TEXT, True), client.read(length)
    client.read(1000)


def ws_close_during_the_snapshot(client: RawClient, path: str) -> None:
    mid_snapshot(client, path)
    client.send(close_frame())
    client.close()


def ws_abort_during_the_snapshot(client: RawClient, path: str) -> None:
    mid_snapshot(client, path)
    client.abort()


def ws_send_a_frame_during_the_snapshot(client: RawClient, path: str) -> None:
    mid_snapshot(client, path)
    client.send(client_frame(TEXT, b'{"hello": "server"}'))
    client.read_to_close()
    client.send(close_frame())
    client.close()


def ws_abort_during_the_final_close(client: RawClient, path: str) -> None:
    client.upgrade(path)
    accepted(client)
    frames = client.read_to_close()
    assert json.loads(frames[-2][1])["type"] == "status"
    client.abort()  # instead of answering the server's close


def ws_send_a_frame_during_the_final_close(client: RawClient, path: str) -> None:
    client.upgrade(path)
    accepted(client)
    opcode, payload = client.read_frame()
    while json.loads(payload)["type"] != "status":
        opcode, payload = client.read_frame()
    client.send(client_frame(TEXT, b'{"too": "late"}'))
    client.read_to_close()
    client.send(close_frame())
    client.close()


WEBSOCKET = {
    "close-before-reading": (ws_close_before_reading, SHORT),
    "abort-before-reading": (ws_abort_before_reading, SHORT),
    "send-a-frame": (ws_send_a_frame, SHORT),
    "close-during-the-snapshot": (ws_close_during_the_snapshot, LONG),
    "abort-during-the-snapshot": (ws_abort_during_the_snapshot, LONG),
    "send-a-frame-during-the-snapshot": (ws_send_a_frame_during_the_snapshot, LONG),
    "abort-during-the-final-close": (ws_abort_during_the_final_close, SHORT),
    "send-a-frame-during-the-final-close": (ws_send_a_frame_during_the_final_close, SHORT),
}


def cookie_of(browser: Browser) -> str:
    return f"sessionid={browser.http.cookies['sessionid']}"


def bound_socket(server: Daphne, address: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", server.port))
    return sock


def watch_well(server: Daphne, stream_id: str, address: str, cookie: str | None) -> dict[str, Any]:
    """A well-behaved viewer: reads everything and answers the close. Refused with 4429
    while the slots of the connections before it are still going, it tries again."""
    refusals = 0
    while True:
        headers = {"Cookie": cookie} if cookie else None
        with connect(
            f"ws://127.0.0.1:{server.port}/ws/streams/{stream_id}/",
            sock=bound_socket(server, address),
            origin=Origin(server.url),
            additional_headers=headers,
            max_size=None,
            open_timeout=10,
        ) as ws:
            text, statuses = "", []
            try:
                while True:
                    message = json.loads(ws.recv(timeout=15))
                    if message["type"] == "text":
                        text += message["text"]
                    else:
                        statuses.append(message["status"])
            except ConnectionClosed:
                pass
            code = ws.close_code
        if code != 4429:
            return {"text": text, "statuses": statuses, "code": code, "refusals": refusals}
        refusals += 1
        assert refusals < PATIENCE / 0.05, "the viewer's slots never came back"
        time.sleep(0.05)


@pytest.mark.parametrize("behaviour", list(WEBSOCKET))
def test_a_websocket_viewer_that_misbehaves_gives_its_slot_and_subscription_back(
    server, guest, fake, address, behaviour
):
    misbehave, pieces = WEBSOCKET[behaviour]
    bad = finished_reply(guest, fake, pieces)
    good = finished_reply(guest, fake, SHORT)
    path = f"/ws/streams/{bad['id']}/"
    for cookie, source in [(cookie_of(guest), "127.0.0.1"), (None, address)]:
        for _ in range(TIMES):
            client = RawClient(server, source, cookie=cookie, receive_buffer=4096)
            try:
                misbehave(client, path)
            finally:
                client.close()
        served = watch_well(server, good["id"], source, cookie)
        assert (served["text"], served["statuses"], served["code"]) == (
            good["text"],
            ["done"],
            1000,
        ), f"a well-behaved viewer ({'user' if cookie else 'anonymous'}) was not served"
    eventually(unfollowed(bad["id"]), "the server still follows the stream")


# Server-Sent Events ------------------------------------------------------------------


def http_client(server: Daphne, address: str, cookie: str | None) -> httpx.Client:
    return httpx.Client(
        base_url=server.url,
        headers={"Cookie": cookie} if cookie else None,
        transport=httpx.HTTPTransport(local_address=address),
        timeout=15,
    )


def read_well(server: Daphne, path: str, address: str, cookie: str | None) -> tuple[str, int]:
    """A well-behaved reader of an event stream, to its end: its body, and how often it
    was refused (429) while the slots of the connections before it were still going."""
    with http_client(server, address, cookie) as http:
        for refusals in itertools.count():
            with http.stream("GET", path) as response:
                if response.status_code != 429:
                    assert response.status_code == 200, response.read()
                    return response.read().decode(), refusals
            assert refusals < PATIENCE / 0.05, "the viewer's slots never came back"
            time.sleep(0.05)
    raise AssertionError("unreachable")


def events_of(body: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[6:])
        for block in body.split("\n\n")
        for line in block.split("\n")
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def http_abort_before_the_first_byte(client: RawClient, path: str) -> None:
    client.get(path)
    client.abort()


def http_close_before_reading(client: RawClient, path: str) -> None:
    client.get(path)
    client.close()


def http_abort_mid_response(client: RawClient, path: str) -> None:
    client.get(path)
    head = client.read_head()
    assert head.startswith("HTTP/1.1 200"), head
    assert client.read(1000)
    client.abort()


EVENTS = {
    "abort-before-the-first-byte": http_abort_before_the_first_byte,
    "close-before-reading": http_close_before_reading,
    "abort-mid-response": http_abort_mid_response,
}


@pytest.mark.parametrize("behaviour", list(EVENTS))
def test_an_event_stream_reader_that_goes_away_gives_its_slot_and_subscription_back(
    server, guest, fake, address, behaviour
):
    misbehave = EVENTS[behaviour]
    bad = finished_reply(guest, fake, LONG)
    good = finished_reply(guest, fake, SHORT)
    for cookie, source in [(cookie_of(guest), "127.0.0.1"), (None, address)]:
        for _ in range(TIMES):
            client = RawClient(server, source, cookie=cookie, receive_buffer=4096)
            try:
                misbehave(client, f"/api/streams/{bad['id']}/events/")
            finally:
                client.close()
        body, _ = read_well(server, f"/api/streams/{good['id']}/events/", source, cookie)
        events = events_of(body)
        assert "".join(e["text"] for e in events if e["type"] == "text") == good["text"]
        assert [e["status"] for e in events if e["type"] == "status"] == ["done"]
    eventually(unfollowed(bad["id"]), "the server still follows the stream")


# The AI SDK's resume -----------------------------------------------------------------


def http_abort_after_the_start(client: RawClient, path: str) -> None:
    client.get(path)
    head = client.read_head()
    assert head.startswith("HTTP/1.1 200"), head
    while b'"type":"start"' not in client.buffer:
        client.buffer += client.sock.recv(65536)
    client.abort()


def http_close_after_the_start(client: RawClient, path: str) -> None:
    client.get(path)
    head = client.read_head()
    assert head.startswith("HTTP/1.1 200"), head
    while b'"type":"start"' not in client.buffer:
        client.buffer += client.sock.recv(65536)
    client.close()


RESUMES = {
    "abort-before-the-first-byte": http_abort_before_the_first_byte,
    "close-before-reading": http_close_before_reading,
    "abort-after-the-start": http_abort_after_the_start,
    "close-after-the-start": http_close_after_the_start,
}


class LiveReply:
    """A reply being generated, slowly, until its owner cancels it."""

    def __init__(self, browser: Browser, fake: FakeOpenAI) -> None:
        self.browser = browser
        fake.pieces, fake.delay = [f"{i} " for i in range(5000)], 0.02
        self.chat = browser.new_chat("Take your time")
        self.stream_id = self.chat["stream_id"]
        self.thread = threading.Thread(target=browser.drive, args=(self.chat,), daemon=True)
        self.thread.start()
        eventually(lambda: browser.body(self.stream_id)["length"] > 0, "the reply never started")

    @property
    def resume_path(self) -> str:
        return f"/api/ai/chat/{self.chat['id']}/stream"

    def cancel(self) -> dict[str, Any]:
        response = self.browser.http.post(
            f"/api/streams/{self.stream_id}/cancel/", headers=self.browser.headers()
        )
        assert response.status_code == 200, response.text
        self.thread.join(30)
        return self.browser.wait_finished(self.stream_id)


def resume_well(
    server: Daphne, reply: LiveReply, address: str, cookie: str | None
) -> list[dict[str, Any]]:
    """useChat's resume of a live reply, read to its end: the reply is cancelled once
    the reader has its start."""
    with http_client(server, address, cookie) as http:
        for refusals in itertools.count():
            with http.stream("GET", reply.resume_path) as response:
                if response.status_code == 200:
                    chunks = response.iter_text()
                    body = next(chunks)
                    assert '"type":"start"' in body
                    reply.cancel()
                    return events_of(body + "".join(chunks))
                assert response.status_code == 429, response.read()
            assert refusals < PATIENCE / 0.05, "the viewer's slots never came back"
            time.sleep(0.05)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("behaviour", list(RESUMES))
def test_a_resuming_reader_that_goes_away_gives_its_slot_and_subscription_back(
    server, fake, address, behaviour
):
    misbehave = RESUMES[behaviour]
    for anonymous in (False, True):
        browser = Browser(server.url)
        try:
            bad, good = LiveReply(browser, fake), LiveReply(browser, fake)
            cookie, source = (None, address) if anonymous else (cookie_of(browser), "127.0.0.1")
            for _ in range(TIMES):
                client = RawClient(server, source, cookie=cookie)
                try:
                    misbehave(client, bad.resume_path)
                finally:
                    client.close()
            events = resume_well(server, good, source, cookie)
            body = browser.body(good.stream_id)
            assert body["status"] == "cancelled"
            text = "".join(e["delta"] for e in events if e["type"] == "text-delta")
            assert text == body["text"] and events[-1] == {"type": "abort", "reason": "cancelled"}
            # While the reply is live, nothing of this server watches it any more.
            eventually(unfollowed(bad.stream_id), "the server still follows the stream")
            bad.cancel()
        finally:
            browser.close()


# What the close says -------------------------------------------------------------------


def ws_close(server: Daphne, path: str) -> tuple[int | None, str | None]:
    """Open a websocket on ``path`` and read it to its close: the code and reason."""
    with connect(
        f"ws://127.0.0.1:{server.port}{path}", origin=Origin(server.url), open_timeout=10
    ) as ws:
        try:
            while True:
                ws.recv(timeout=15)
        except ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason


def test_a_close_reason_is_cut_to_the_bytes_a_close_frame_holds(server, guest, fake):
    """An offset of 60 CJK characters is refused with 4400 and a reason of at most 123
    bytes of UTF-8 (uvicorn sends the reason; daphne sends none)."""
    reply = finished_reply(guest, fake, SHORT)
    code, reason = ws_close(server, f"/ws/streams/{reply['id']}/?offset={'漢' * 60}")
    assert code == 4400
    assert reason is not None and len(reason.encode()) <= 123
    if isinstance(server, Uvicorn):
        assert reason.startswith("offset must be a non-negative integer, not '漢漢")


@pytest.mark.parametrize("kind", [Daphne, Uvicorn], ids=["daphne", "uvicorn"])
def test_a_bug_while_a_viewer_connects_closes_1011_and_is_logged_with_its_traceback(
    daphne_factory, kind
):
    buggy = daphne_factory(
        kind,
        E2E_STREAMING_APP=json.dumps(
            {"PERMISSION_POLICY": "tests.faults.reading_is_broken", "MAX_VIEWERS_PER_USER": 1}
        ),
    )
    browser = Browser(buggy.url)
    try:
        chat = browser.new_chat("Anyone there?")
    finally:
        browser.close()
    # More than the limit: the refused viewers' slots are given back too.
    for _ in range(3):
        code, _reason = ws_close(buggy, f"/ws/streams/{chat['stream_id']}/")
        assert code == 1011
    log = buggy.output()
    assert f"a viewer of stream {chat['stream_id']} failed" in log
    assert "Traceback" in log and "AttributeError: a bug in the project's permission policy" in log
