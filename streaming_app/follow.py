"""What one viewer has been sent, and what to send it next: shared by the websocket
consumer and the SSE view.

A viewer first gets everything committed from the offset it asked for, then the
status, then each committed delta exactly once and in order. A delta that starts past
what the viewer has (a group message was dropped) is filled from the database, and so
is a silence: channel layers deliver at most once, the database is the truth.
"""

from __future__ import annotations

import uuid
from typing import Any

from channels.db import database_sync_to_async

from .permissions import load_stream
from .streams import StreamBody, body_of

Message = dict[str, Any]


def read_for(user: Any, stream_id: uuid.UUID | str, offset: int | str, resync: bool) -> StreamBody:
    return body_of(load_stream(user, stream_id, "read"), offset, past_end_ok=resync)


aread_for = database_sync_to_async(read_for)


def text_message(offset: int, text: str) -> Message:
    return {"type": "text", "offset": offset, "text": text}


class Follower:
    """One viewer's position in one stream.

    Each method returns the messages to send, in order; the transport sends them before
    it calls the next method. Reads raise ``Stream.DoesNotExist``, ``PermissionDenied``
    or (``start`` only) ``InvalidOffset``.
    """

    def __init__(self, stream_id: uuid.UUID, user: Any) -> None:
        self.stream_id = stream_id
        self.user = user
        self.sent = 0
        self.status: str | None = None

    @property
    def finished(self) -> bool:
        return self.status is not None and self.status not in ("pending", "streaming")

    async def start(self, offset: int | str) -> list[Message]:
        """The snapshot: committed text from ``offset`` (possibly empty), then the status.

        Join the stream's group *before* calling this, so that nothing that commits
        between the snapshot and the first delta is missed.
        """
        body = await aread_for(self.user, self.stream_id, offset, False)
        self.sent = body.offset + len(body.text)
        return [text_message(body.offset, body.text), *self._status(body.status, body.error)]

    async def resync(self) -> list[Message]:
        """Whatever committed since the last message, read from the database."""
        body = await aread_for(self.user, self.stream_id, self.sent, True)
        return self._text(body.offset, body.text) + self._status(body.status, body.error)

    async def update(self, event: Message) -> list[Message]:
        """A group message: the part of its text the viewer lacks, and its status."""
        if int(event["offset"]) > self.sent:
            return await self.resync()  # a gap: a message was dropped
        return self._text(int(event["offset"]), str(event["text"])) + self._status(
            str(event["status"]), event.get("error")
        )

    def _text(self, offset: int, text: str) -> list[Message]:
        end = offset + len(text)
        if end <= self.sent:
            return []
        message = text_message(self.sent, text[self.sent - offset :])
        self.sent = end
        return [message]

    def _status(self, status: str, error: str | None) -> list[Message]:
        if status == self.status:
            return []
        self.status = status
        return [{"type": "status", "status": status, "error": error}]
