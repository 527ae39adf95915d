"""The database reads of a stream's viewers: a new viewer's snapshot, and the one read
a feed makes for all its viewers here (a re-sync).

They run in any thread (they are independent), closing their connections; what an
expiry on the way commits goes out from the loop's publisher, so that no viewer waits
for the channel layer. Callers reach them as ``reads.read_snapshot`` (tests replace
them there).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from ..models import Stream
from ..parts import Entry
from ..permissions import has_permission, load_stream
from ..streams import StreamBody, body_of, expire_if_stale, get_stream, read_text
from .outbox import published_after


@dataclass(frozen=True)
class Resync:
    """What one read found for all of a stream's viewers here."""

    status: str
    error: str | None
    length: int
    text: str
    #: Whether each viewer's user may still read the stream, by viewer key.
    allowed: dict[str, bool]
    parts: tuple[Entry, ...] = ()


def _read_for_viewers(stream_id: uuid.UUID, start: int, users: dict[str, Any]) -> Resync | None:
    """One read of a stream for all its viewers here: what committed from ``start``,
    its status, and whether each user may still read it. None if it is gone."""
    try:
        stream = expire_if_stale(get_stream(stream_id))
    except Stream.DoesNotExist:
        return None
    return Resync(
        status=stream.status,
        error=stream.error or None,
        length=stream.length,
        text=read_text(stream_id, start, max(start, stream.length)),
        allowed={key: has_permission(user, stream, "read") for key, user in users.items()},
        parts=tuple(stream.parts or ()),
    )


def _read_snapshot(
    user: Any, stream_id: uuid.UUID, offset: int | str, past_end_ok: bool, limit: int | None
) -> StreamBody:
    """A new viewer's first read: its permission, then what committed from ``offset``
    (``limit`` characters of it at the most)."""
    return body_of(
        expire_if_stale(load_stream(user, stream_id, "read")),
        offset,
        past_end_ok=past_end_ok,
        limit=limit,
    )


read_for_viewers = published_after(_read_for_viewers, thread_sensitive=False, wait=False)
read_snapshot = published_after(_read_snapshot, thread_sensitive=False, wait=False)
