"""What the hub hands a viewer: committed text and statuses as typed events, and how a
transport tells the hub what they cost it.

The hub knows no wire format. It queues :class:`Text` and :class:`Status` events for
each viewer; the viewer's transport encodes them (JSON on a websocket, Server-Sent
Events, the AI SDK's chunks). An :class:`Encoding` that depends on the event alone
(:class:`SharedEncoding`) encodes each event once, for every viewer it is handed to;
one with state of its own (the AI SDK's) encodes each event as it writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..parts import Entry, around, reach


@dataclass(eq=False, slots=True)
class Text:
    """Committed text from code point ``offset``; for a part-aware viewer, the entries
    of the stream's part map (:mod:`streaming_app.parts`) that this text needs, the
    first of them number ``parts_from``."""

    offset: int
    text: str
    parts_from: int = 0
    entries: Sequence[Entry] = ()
    #: Its frame in each :class:`SharedEncoding` it went through (encoded once).
    frames: dict[SharedEncoding, str] = field(default_factory=dict, repr=False)

    @property
    def end(self) -> int:
        return self.offset + len(self.text)


@dataclass(eq=False, slots=True)
class Status:
    """The stream's status, handed to a viewer that has its text up to ``at``."""

    status: str
    error: str | None
    at: int
    frames: dict[SharedEncoding, str] = field(default_factory=dict, repr=False)


Event = Text | Status


def text_event(
    offset: int, text: str, parts: Sequence[Entry] = (), since: int | None = None
) -> Text:
    """A :class:`Text` event; with ``parts`` (for a part-aware viewer of a stream with
    parts), the entries of the map that this text needs: those from entry ``since`` on,
    for a viewer that has the ones before; without ``since`` (a snapshot, a catch-up),
    from the entry whose span holds ``offset``."""
    if not parts:
        return Text(offset, text)
    end = offset + len(text)
    if since is None:
        first, entries = around(parts, offset, end)
    else:
        first, entries = since, list(parts[since : reach(parts, end)])
    return Text(offset, text, first, entries) if entries else Text(offset, text)


class Encoding(Protocol):
    """How a transport writes events: whether its viewers hear of the part map, and
    what an event costs against a viewer's ``VIEWER_BUFFER_CHARS``."""

    #: Whether its viewers hear of the part map (streaming_app.parts).
    parts: bool

    def size(self, event: Event) -> int:
        """The characters ``event`` takes on the wire, or close to it."""
        ...


class SharedEncoding:
    """An encoding whose frame depends on the event alone: each event is encoded once
    (:meth:`frame`), and the frame is shared by every viewer it is handed to. A bug in
    :meth:`encode` is met when the hub hands the event over, and closes that viewer."""

    def __init__(self, *, parts: bool = False) -> None:
        self.parts = parts

    def encode(self, event: Event) -> str:
        raise NotImplementedError

    def frame(self, event: Event) -> str:
        """``event`` encoded, once for all its viewers."""
        frame = event.frames.get(self)
        if frame is None:
            frame = event.frames[self] = self.encode(event)
        return frame

    def size(self, event: Event) -> int:
        return len(self.frame(event))
