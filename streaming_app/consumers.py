"""The websocket a viewer watches a stream on: ``ws/streams/<id>/[?offset=N][&ack=1]``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .exceptions import InvalidOffset
from .hub import (
    WINDOW_SPENT,
    Hub,
    Viewer,
    close_code,
    hub,
    status_message,
    text_message,
    to_json,
    viewer_key,
)
from .parts import Entry
from .streams import parse_flag, parse_offset, parse_stream_id

logger = logging.getLogger(__name__)


def query_offset(query_string: bytes) -> int:
    """The ``offset`` of a query string; 0 when absent. Raises InvalidOffset."""
    values = parse_qs(query_string.decode("latin-1"), keep_blank_values=True).get("offset", [])
    if len(values) > 1:
        raise InvalidOffset("offset is given more than once")
    return parse_offset(values[0]) if values else 0


class WebsocketFrames:
    """The protocol's messages as websocket text frames."""

    def __init__(self, *, parts: bool = False) -> None:
        self.parts = parts

    def text(self, offset: int, text: str, parts: Sequence[Entry], since: int | None = None) -> str:
        return to_json(text_message(offset, text, parts if self.parts else (), since))

    def status(self, status: str, error: str | None, at: int) -> str:
        return to_json(status_message(status, error))


FRAMES = WebsocketFrames()
FRAMES_WITH_PARTS = WebsocketFrames(parts=True)

# Close codes (docs/protocol.md): 4400 bad request, 4403 forbidden, 4404 unknown stream,
# 4413 a window sent without acknowledgement (come back and resume), 4429 too many
# viewers, 4503 the database is away (come back and resume). Servers may only use 1000
# and 3000-4999; daphne cannot send 1013.
REASONS = {
    4404: "no such stream",
    WINDOW_SPENT: "VIEWER_BUFFER_CHARS sent unacknowledged: resume from your offset",
    4503: "temporarily unavailable, try again",
}


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

    The process's hub (:mod:`streaming_app.hub`) follows the stream for all its viewers
    here, so the consumer has no channel of its own on the layer. A viewer that asked
    for ``?ack=1`` sends acknowledgements, ``{"type": "ack", "offset": N}``, and is
    never sent more than ``VIEWER_BUFFER_CHARS`` past the last; any other frame (and
    an ack from a viewer that did not ask) closes the socket with 4400.
    """

    channel_layer_alias = None
    viewer: Viewer | None = None
    followed: Hub | None = None
    writing: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        # Accept first: daphne answers a close before accept with a bare HTTP 403, and
        # the close codes are how a viewer learns what was wrong.
        await self.accept()
        session = self.scope.get("session")
        user = self.scope.get("user")
        client = self.scope.get("client") or [None]
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        frames = FRAMES_WITH_PARTS if parse_flag((query.get("parts") or [""])[-1]) else FRAMES
        viewer = Viewer(
            user,
            viewer_key(user, session and session.session_key, client[0]),
            frames,
            acks=parse_flag((query.get("ack") or [""])[-1]),
            resumes=True,  # client.js, and any client the protocol describes
        )
        try:
            stream_id = parse_stream_id(self.scope["url_route"]["kwargs"]["stream_id"])
            offset = query_offset(self.scope.get("query_string", b""))
            self.followed = hub()
            await self.followed.watch(viewer, stream_id, offset)
        except Exception as exc:
            code = close_code(exc)
            if code == 4503:
                logger.warning("a viewer was refused for now: %r", exc)
            await self.close(code=code, reason=REASONS.get(code, str(exc))[:120])
            return
        self.viewer = viewer
        self.writing = asyncio.create_task(self.write(viewer))

    async def write(self, viewer: Viewer) -> None:
        """Write the viewer's frames as the hub hands them over, then close."""
        async for frames in viewer.batches():
            for frame in frames:
                await self.send(text_data=frame)
        code = viewer.close_code or 1000
        await self.close(code=code, reason=REASONS.get(code, ""))

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        try:
            if self.viewer is None or not self.viewer.acks:
                raise ValueError("viewers send nothing on this socket without ?ack=1")
            self.viewer.acknowledge(parse_ack(text_data))
        except ValueError as exc:
            await self.close(code=4400, reason=str(exc)[:120])

    async def disconnect(self, code: int) -> None:
        if self.writing is not None:
            self.writing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.writing
        if self.viewer is not None and self.followed is not None:
            self.followed.leave(self.viewer)
