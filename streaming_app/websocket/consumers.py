"""The websocket a viewer watches a stream on: ``ws/streams/<id>/[?offset=N][&ack=1]``."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from ..clients import scope_viewer_key
from ..fanout.hub import Hub, follow
from ..fanout.viewer import Viewer, log_refusal
from ..protocol import (
    INTERNAL_ERROR,
    REASONS,
    JsonMessages,
    close_code,
    close_reason,
    closed_reason,
)
from ..streams import offset_parameter, parse_flag, parse_offset

logger = logging.getLogger(__name__)


def query_offset(query_string: bytes) -> int:
    """The ``offset`` of a query string; 0 when absent. Raises InvalidOffset."""
    values = parse_qs(query_string.decode("latin-1"), keep_blank_values=True).get("offset", [])
    return parse_offset(offset_parameter(values))


#: The protocol's messages as text frames, one per event (close codes: protocol.py;
#: daphne, of the 1000s, lets an application send only 1000: see StreamConsumer.close).
FRAMES = JsonMessages()
FRAMES_WITH_PARTS = JsonMessages(parts=True)

#: The most bytes of UTF-8 a close frame's reason may hold (RFC 6455, 5.5).
MAX_REASON_BYTES = 123


def cut_reason(text: str) -> str:
    """``text`` cut to a close frame's reason: at most 123 bytes of UTF-8, between
    characters."""
    return text.encode()[:MAX_REASON_BYTES].decode("utf-8", "ignore")


class ViewerFailed(Exception):
    """A bug ended a viewer's socket, on a server that sends no 1011 of an
    application's own (daphne): the server closes with 1011 for an application that
    raises."""


def parse_ack(text_data: str | None) -> int:
    """The offset of an acknowledgement, ``{"type": "ack", "offset": N}``. Raises
    ValueError with what is wrong."""
    try:
        message = json.loads(text_data or "")
    except ValueError:
        raise ValueError("viewers send only acks as JSON text frames") from None
    if not isinstance(message, dict) or message.get("type") != "ack":
        raise ValueError('viewers send only {"type": "ack", "offset": N}')
    offset = message.get("offset")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError("an ack's offset must be a non-negative integer")
    return offset


class StreamConsumer(AsyncJsonWebsocketConsumer):
    """Sends a viewer the stream's committed text from an offset, then every committed
    delta exactly once and in order, then the terminal status, and closes (1000).

    The process's hub (:mod:`streaming_app.fanout.hub`) follows the stream for all its viewers
    here, so the consumer has no channel of its own on the layer. A viewer that asked
    for ``?ack=1`` sends acknowledgements, ``{"type": "ack", "offset": N}``, and is
    never sent more than ``VIEWER_BUFFER_CHARS`` past the last; any other frame (and
    an ack from a viewer that did not ask) closes the socket with 4400.

    The socket is closed once, ever: after a close has gone out, or the client's
    disconnect has come in, nothing more is sent. The viewer's slot with the hub is
    given back however the consumer ends: the client's disconnect, an error, a cancel.
    """

    channel_layer_alias = None
    viewer: Viewer | None = None
    followed: Hub | None = None
    writing: asyncio.Task[None] | None = None
    #: A close has gone out or the client's disconnect has come in: nothing more is sent.
    closed = False
    #: A bug is to close the socket with 1011, which the server sends when the
    #: consumer raises (see :meth:`close`).
    failed = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One frame at a time, and none after the close.
        self._sending = asyncio.Lock()
        self._task: asyncio.Task[Any] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self._task = asyncio.current_task()

        async def receive_and_see() -> Any:
            # The client's disconnect counts from when the server hands it over (uvicorn
            # refuses a send from then on), not from when it is dispatched.
            message = await receive()
            if message.get("type") == "websocket.disconnect":
                self.closed = True
            return message

        try:
            await super().__call__(scope, receive_and_see, send)
        except asyncio.CancelledError:
            if not self.failed:
                raise
            raise ViewerFailed("a bug ended this viewer's socket (logged above)") from None
        finally:
            self.release()

    async def connect(self) -> None:
        # Accept first: daphne answers a close before accept with a bare HTTP 403, and
        # the close codes are how a viewer learns what was wrong.
        await self.accept()
        user = self.scope.get("user")
        key = scope_viewer_key(self.scope)
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        frames = FRAMES_WITH_PARTS if parse_flag((query.get("parts") or [""])[-1]) else FRAMES
        stream_id = self.scope["url_route"]["kwargs"]["stream_id"]
        try:
            offset = query_offset(self.scope.get("query_string", b""))
            # Released by release(), whatever happens from here on.
            self.followed, self.viewer, _ = await follow(
                user,
                key,
                frames,
                stream_id,
                offset,
                acks=parse_flag((query.get("ack") or [""])[-1]),
                resumes=True,  # client.js, and any client the protocol describes
            )
        except Exception as exc:
            log_refusal(exc, stream_id)
            await self.close(code=close_code(exc), reason=close_reason(exc))
            return
        self.writing = asyncio.create_task(self.write(self.viewer, frames))

    async def write(self, viewer: Viewer, frames: JsonMessages) -> None:
        """Write the viewer's events as the hub hands them over, then close."""
        try:
            async for events in viewer.batches():
                for event in events:
                    await self.send(text_data=frames.frame(event))
                    if self.closed:
                        return
            refused = viewer.refused
            await self.close(code=close_code(refused), reason=closed_reason(refused))
        except OSError:
            pass  # the client has gone (uvicorn's ClientDisconnected): nothing to close
        except Exception:
            logger.exception("the viewer of stream %s failed", viewer.stream_id)
            await self.close(code=INTERNAL_ERROR, reason=REASONS[INTERNAL_ERROR])

    async def send(
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
    ) -> None:
        async with self._sending:
            if self.closed:
                return
            await super().send(text_data, bytes_data)
        if close:
            await self.close()

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close the socket, once: a second close, or a close after the client's
        disconnect, is not sent (uvicorn raises on it)."""
        if self.closed:
            return
        self.closed = True
        async with self._sending:
            try:
                await super().close(code, cut_reason(reason) if reason else None)
            except OSError:
                pass  # the client has gone
            except Exception:
                if code != INTERNAL_ERROR:
                    raise
                # daphne lets an application close with 1000 and 3000-4999 only, and
                # closes with 1011 for one that raises: the consumer raises.
                self.failed = True
                if asyncio.current_task() is self._task:
                    raise ViewerFailed("a bug ended this viewer's socket (logged above)") from None
                if self._task is not None:
                    self._task.cancel()

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        try:
            if self.viewer is None or not self.viewer.acks:
                raise ValueError("viewers send nothing on this socket without ?ack=1")
            self.viewer.acknowledge(parse_ack(text_data))
        except ValueError as exc:
            await self.close(code=4400, reason=str(exc))

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self.closed = True  # the client has gone: nothing more is sent
        await super().websocket_disconnect(message)

    async def disconnect(self, code: int) -> None:
        self.release()

    def release(self) -> None:
        """Give the viewer's slot back and stop writing to it (at once, and again
        harmlessly)."""
        if self.writing is not None and self.writing is not asyncio.current_task():
            self.writing.cancel()
        viewer, self.viewer = self.viewer, None
        if viewer is not None and self.followed is not None:
            self.followed.leave(viewer)
