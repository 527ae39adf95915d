"""Clients that stop reading, for real: TCP sockets with a tiny receive buffer (set
before connecting, so that the window the server sees is small from the start) that
read only when told to. A websocket over one (``SlowWebsocket``: the websockets
library's sans-I/O protocol, so nothing reads ahead into a buffer of its own), and a
bare HTTP request over one (``stalled_request``)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any
from urllib.parse import urlsplit

#: The receive buffer asked for (Linux doubles it, and keeps a floor of about 2 KiB).
TINY = 2048


async def tiny_socket(host: str, port: int, rcvbuf: int = TINY) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), 10)
    except BaseException:
        sock.close()
        raise
    return sock


class SlowWebsocket:
    """A websocket client on a tiny-buffer socket that reads only inside :meth:`read`
    (or :meth:`fence`): between calls it reads nothing, and the server's writes pile up
    wherever the server keeps them. Keeps the text it was sent, appended as a
    browser's client would (a message must start at the text's end: no gap, no
    overlap)."""

    def __init__(self, sock: socket.socket, protocol: Any) -> None:
        self.sock = sock
        self.protocol = protocol
        self.text = ""
        self.offset = 0
        self.statuses: list[str] = []
        self.messages = 0
        self._fragments: list[bytes] = []

    @classmethod
    async def open(cls, url: str, *, origin: str, rcvbuf: int = TINY) -> SlowWebsocket:
        """Connect and finish the handshake (``url``: ws://host:port/path?query)."""
        from websockets.client import ClientProtocol
        from websockets.http11 import Response
        from websockets.typing import Origin
        from websockets.uri import parse_uri

        parts = urlsplit(url)
        sock = await tiny_socket(parts.hostname or "127.0.0.1", parts.port or 80, rcvbuf)
        protocol = ClientProtocol(parse_uri(url), origin=Origin(origin), max_size=None)
        protocol.send_request(protocol.connect())
        self = cls(sock, protocol)
        if "offset=" in (parts.query or ""):
            self.offset = int(parts.query.split("offset=")[1].split("&")[0])
        await self._flush()
        while True:
            await self._receive_some()
            for event in protocol.events_received():
                if isinstance(event, Response):
                    if event.status_code != 101:
                        sock.close()
                        raise ConnectionError(f"handshake answered {event.status_code}")
                    return self
                self._frame(event)

    @property
    def length(self) -> int:
        """The body offset the text received reaches."""
        return self.offset + len(self.text)

    @property
    def closed(self) -> bool:
        """The server has closed (or the connection has ended)."""
        return self.protocol.state.name in ("CLOSING", "CLOSED")

    @property
    def close_code(self) -> int | None:
        """The code of the server's close frame."""
        received = self.protocol.close_rcvd
        return None if received is None else int(received.code)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        for data in self.protocol.data_to_send():
            if data:
                await loop.sock_sendall(self.sock, data)

    async def _receive_some(self) -> bool:
        """One read from the socket; False at its end."""
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.sock, 65536), 30)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        await self._flush()  # pongs, the close reply
        return bool(data)

    def _frame(self, frame: Any) -> str | None:
        """Take one frame; the payload of a pong, else None."""
        from websockets.frames import Opcode

        if frame.opcode is Opcode.PONG:
            return bytes(frame.data).decode()
        if frame.opcode in (Opcode.TEXT, Opcode.CONT):
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                self._take(json.loads(b"".join(self._fragments)))
                self._fragments = []
        return None

    def _take(self, message: dict[str, Any]) -> None:
        self.messages += 1
        if message["type"] == "text":
            assert message["offset"] == self.length, "a gap or an overlap"
            self.text += message["text"]
        else:
            self.statuses.append(message["status"])

    async def send(self, message: dict[str, Any]) -> None:
        self.protocol.send_text(json.dumps(message).encode())
        await self._flush()

    async def ack(self) -> None:
        await self.send({"type": "ack", "offset": self.length})

    async def fence(self) -> None:
        """Ping, then read until the pong: everything the server had written to the
        connection before it read the ping has arrived then (a websocket is ordered)."""
        payload = f"fence-{id(self)}-{self.messages}"
        self.protocol.send_ping(payload.encode())
        await self._flush()
        while not self.closed:
            if not await self._receive_some():
                break
            if payload in [self._frame(event) for event in self.protocol.events_received()]:
                return
        raise ConnectionError(f"closed ({self.close_code}) before the pong")

    async def read(self, *, acks: bool = False) -> None:
        """Read to the close; with ``acks``, acknowledge what it has first, then after
        every read that brought text."""
        if acks:
            await self.ack()
        while not self.closed:
            known = self.length
            if not await self._receive_some():
                break
            for event in self.protocol.events_received():
                self._frame(event)
            if acks and self.length > known and not self.closed:
                await self.ack()
        self.close()

    def close(self) -> None:
        self.sock.close()


async def stalled_request(
    url: str, head: str, body: bytes = b"", rcvbuf: int = TINY
) -> socket.socket:
    """Send one HTTP/1.1 request (``head``: its request line and headers, without the
    blank line) over a tiny-buffer socket, and read nothing: the caller closes the
    socket when done."""
    parts = urlsplit(url)
    sock = await tiny_socket(parts.hostname or "127.0.0.1", parts.port or 80, rcvbuf)
    request = head.rstrip("\r\n").replace("\n", "\r\n") + "\r\n"
    if body:
        request += f"Content-Length: {len(body)}\r\n"
    await asyncio.get_running_loop().sock_sendall(sock, request.encode() + b"\r\n" + body)
    return sock
