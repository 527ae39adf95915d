"""The viewers' protocol (docs/protocol.md) as the websocket and Server-Sent Events
speak it: the hub's events as JSON messages, and why a viewer was closed as a close
code and reason."""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import PermissionDenied

from .exceptions import InvalidOffset, Overloaded, WindowSpent
from .fanout.events import Event, SharedEncoding, Status
from .fanout.viewer import OUTAGES
from .models import Stream

Message = dict[str, Any]


def message(event: Event) -> Message:
    """The protocol's message of ``event``: ``text`` (with ``parts_from`` and
    ``parts`` when it carries entries of the part map) or ``status``."""
    if isinstance(event, Status):
        return {"type": "status", "status": event.status, "error": event.error}
    text: Message = {"type": "text", "offset": event.offset, "text": event.text}
    if event.entries:
        text["parts_from"] = event.parts_from
        text["parts"] = list(event.entries)
    return text


def to_json(value: Message) -> str:
    # UTF-8 as it is, no spaces: about one byte on the wire per byte of text.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class JsonMessages(SharedEncoding):
    """The protocol's messages as JSON text, one per event (a websocket's frames)."""

    def encode(self, event: Event) -> str:
        return to_json(message(event))


# Close codes: 4400 bad request, 4403 forbidden, 4404 unknown stream, 4413 a window sent
# without acknowledgement (come back and resume), 4429 too many viewers, 4503 the
# database or the channel layer is away (come back and resume), 1011 a bug (logged with
# its traceback). Servers may only use 1000 and 3000-4999.
NORMAL = 1000
INTERNAL_ERROR = 1011

REASONS = {
    4404: "no such stream",
    4413: str(WindowSpent()),
    4503: "temporarily unavailable, try again",
    INTERNAL_ERROR: "internal error",
}


def close_code(exc: BaseException | None) -> int:
    """The close code that tells a viewer why it was closed (``exc``: None if it
    was not refused)."""
    if exc is None:
        return NORMAL
    if isinstance(exc, Overloaded):
        return 4000 + exc.status_code  # 4429, 4503
    if isinstance(exc, InvalidOffset):
        return 4400
    if isinstance(exc, PermissionDenied):
        return 4403
    if isinstance(exc, Stream.DoesNotExist):
        return 4404
    if isinstance(exc, WindowSpent):
        return 4413
    if isinstance(exc, OUTAGES):
        return 4503  # come back and resume
    return INTERNAL_ERROR  # a bug


def close_reason(exc: BaseException | None) -> str:
    """The reason to give with :func:`close_code` when a viewer is refused as it
    connects: the code's own, or the refusal's message (which limit, which end)."""
    if exc is None:
        return ""
    return REASONS.get(close_code(exc), str(exc))


def closed_reason(exc: BaseException | None) -> str:
    """The reason to give when the hub closes a viewer it had admitted: the code's
    own (none for 4403), or, for a stream that ended short of the viewer's offset, the
    words a new viewer at that offset would get."""
    if isinstance(exc, InvalidOffset):
        return str(exc)
    return REASONS.get(close_code(exc), "")
