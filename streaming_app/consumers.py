"""The websocket a viewer watches a stream on: ``ws/streams/<id>/[?offset=N]``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError

from . import conf
from .broadcast import group_name
from .exceptions import InvalidOffset
from .follow import Follower, Message
from .models import Stream
from .streams import parse_offset, parse_stream_id

logger = logging.getLogger(__name__)

# Close codes (design.md): 4400 bad request, 4403 forbidden, 4404 unknown stream; and
# 4503 when the database or the channel layer is away: try again (as HTTP 503; daphne
# cannot send 1013, servers may only use 1000 and 3000-4999).
TRY_AGAIN = 4503
CLOSE_CODES: list[tuple[type[Exception], int]] = [
    (InvalidOffset, 4400),
    (PermissionDenied, 4403),
    (Stream.DoesNotExist, 4404),
]


def query_offset(query_string: bytes) -> int:
    """The ``offset`` of a query string; 0 when absent. Raises InvalidOffset."""
    values = parse_qs(query_string.decode("latin-1"), keep_blank_values=True).get("offset", [])
    if len(values) > 1:
        raise InvalidOffset("offset is given more than once")
    return parse_offset(values[0]) if values else 0


class LayerFailed(Exception):
    """The channel layer's receive failed (Redis went away, say)."""


class StreamConsumer(AsyncJsonWebsocketConsumer):
    """Sends a viewer the stream's committed text from an offset, then every committed
    delta exactly once and in order, then the terminal status, and closes (1000).

    A delta past what the viewer has, or a silence of ``RESYNC_INTERVAL`` on a live
    stream, is filled from the database. Viewers send nothing: a frame from one closes
    the socket with 4400.
    """

    follower: Follower | None = None
    group: str | None = None
    watchdog: asyncio.Task[None] | None = None

    @property
    def channel_receive(self) -> Any:
        return self._channel_receive

    @channel_receive.setter
    def channel_receive(self, receive: Any) -> None:
        # Channels sets this to the layer's receive; failures of that call are told
        # apart from the consumer's own errors, which stay errors.
        async def guarded() -> Any:
            try:
                return await receive()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise LayerFailed from exc

        self._channel_receive = guarded

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except LayerFailed:
            # The channel layer failed under us (Redis went away, say). Tell the client
            # to come back (4503, try again later) rather than fail the connection: it
            # resumes from its offset and loses nothing.
            logger.warning(
                "a viewer's channel layer failed; closing with %d", TRY_AGAIN, exc_info=True
            )
            if self.watchdog is not None:
                self.watchdog.cancel()
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": TRY_AGAIN})

    async def connect(self) -> None:
        # Accept first: daphne answers a close before accept with a bare HTTP 403, and
        # the close codes below are how a viewer learns what was wrong.
        await self.accept()
        self.lock = asyncio.Lock()
        self.last_heard = asyncio.get_running_loop().time()
        try:
            stream_id = parse_stream_id(self.scope["url_route"]["kwargs"]["stream_id"])
            offset = query_offset(self.scope.get("query_string", b""))
            self.follower = Follower(stream_id, self.scope.get("user"))
            # Join before the snapshot: nothing committed in between is missed.
            group = group_name(stream_id)
            await self.channel_layer.group_add(group, self.channel_name)
            self.group = group
            async with self.lock:
                await self.send_all(await self.follower.start(offset))
        except Exception as exc:
            await self.refuse(exc)
            return
        if not self.follower.finished:
            self.watchdog = asyncio.create_task(self.watch())

    async def stream_update(self, event: Message) -> None:
        """A committed change of the stream, from the channel layer."""
        if self.follower is None or self.follower.finished:
            return
        self.last_heard = asyncio.get_running_loop().time()
        async with self.lock:
            try:
                await self.send_all(await self.follower.update(event))
            except (Stream.DoesNotExist, PermissionDenied) as exc:
                await self.refuse(exc)
            except DatabaseError:
                # Filling a gap failed; the next silence re-reads the database.
                logger.warning("viewer of stream %s could not fill a gap", self.follower.stream_id)

    async def watch(self) -> None:
        """Re-read the stream from the database after each silence."""
        assert self.follower is not None
        loop = asyncio.get_running_loop()
        interval = float(conf.get("RESYNC_INTERVAL"))
        while not self.follower.finished:
            await asyncio.sleep(max(0.0, self.last_heard + interval - loop.time()))
            if loop.time() - self.last_heard < interval:
                continue
            self.last_heard = loop.time()
            async with self.lock:
                try:
                    await self.send_all(await self.follower.resync())
                except (Stream.DoesNotExist, PermissionDenied) as exc:
                    await self.refuse(exc)
                    return
                except Exception:
                    # The database is away: try again after the next silence.
                    logger.warning(
                        "viewer of stream %s could not re-sync",
                        self.follower.stream_id,
                        exc_info=True,
                    )

    async def send_all(self, messages: list[Message]) -> None:
        assert self.follower is not None
        for message in messages:
            await self.send_json(message)
        if self.follower.finished:
            await self.close(code=1000)

    async def refuse(self, exc: Exception) -> None:
        for kind, code in CLOSE_CODES:
            if isinstance(exc, kind):
                reason = "no such stream" if code == 4404 else str(exc)
                await self.close(code=code, reason=reason[:120])
                return
        # The database or the channel layer is away: try again later. A client
        # reconnects and resumes from its offset.
        logger.warning("viewer of a stream refused for now: %r", exc)
        await self.close(code=TRY_AGAIN, reason="temporarily unavailable, try again")

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        await self.close(code=4400, reason="viewers send nothing on this socket")

    async def disconnect(self, code: int) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watchdog
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        # UTF-8 as it is, no spaces: about one byte on the wire per byte of text.
        return json.dumps(content, ensure_ascii=False, separators=(",", ":"))
