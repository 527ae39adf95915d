"""One viewer of one stream in this process: where it is, what waits to be written to
it, and its window (how far past what it acknowledged it may be handed text)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError

from .. import conf
from ..exceptions import InvalidOffset, Overloaded, WindowSpent
from ..models import Status, Stream, is_finished
from ..streams import ended_before
from .events import Encoding, Event

if TYPE_CHECKING:
    from .feed import Feed

logger = logging.getLogger(__name__)


def _layer_outages() -> tuple[type[BaseException], ...]:
    """What the channel layer raises when its server is away: refused or dropped
    connections and timeouts (OSError), and redis-py's own, when it is installed."""
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:
        return (OSError,)
    return (OSError, RedisConnectionError, RedisTimeoutError)


#: The outside world being away, not a bug: the database, or the channel layer's server.
OUTAGES: tuple[type[BaseException], ...] = (OperationalError, InterfaceError, *_layer_outages())


#: Why a viewer may be refused that is no fault of the app's (logged without a traceback).
REFUSALS: tuple[type[BaseException], ...] = (
    Overloaded,
    InvalidOffset,
    PermissionDenied,
    Stream.DoesNotExist,
)


def log_refusal(exc: BaseException, stream_id: object) -> None:
    """Log why a viewer of ``stream_id`` was refused, where ``exc`` is handled: an
    outage as a warning, a bug with its traceback, a refusal (load, offset, permission,
    no such stream) not at all: its transport tells the viewer."""
    if isinstance(exc, OUTAGES):
        logger.warning("a viewer of stream %s was refused for now: %r", stream_id, exc)
    elif not isinstance(exc, REFUSALS):
        logger.exception("a viewer of stream %s failed", stream_id)


def rank(status: str | None) -> int:
    """Statuses only move forward: pending, streaming, then a terminal one."""
    if status is None:
        return -1
    return 2 if is_finished(status) else int(status == Status.STREAMING)


class Viewer:
    """One viewer of one stream: where it is, and the events waiting to be written to it.

    ``key`` identifies whose it is (a user, an anonymous session, an address: the
    transport says, see :mod:`streaming_app.clients`); ``limit`` names the setting that
    bounds how many viewers one key holds open on the process; ``also`` gives other
    ``(key, limit)`` pairs it counts against besides (its client's address). It holds a
    place under each of them from :meth:`Hub.watch` to :meth:`Hub.leave`, or under none
    if it is refused. The transport iterates
    :meth:`batches` and writes each event in its :class:`~.events.Encoding`; when the
    iteration ends it closes, normally, or as :attr:`refused` says.

    A viewer that ``acks`` has a window of ``VIEWER_BUFFER_CHARS``: it is never
    handed text more than that past the offset it last acknowledged
    (:meth:`acknowledge`); past it, it is cut loose and catches up once it
    acknowledges again. That bounds what it costs even where the transport's writes
    never wait for the client. One whose client ``resumes`` by itself on a new
    connection (a websocket client, an ``EventSource``) has the same window under
    ``LIMIT_UNACKED_VIEWERS``, without acknowledging: once it has had it, the
    iteration ends, refused with :class:`~streaming_app.exceptions.WindowSpent`.
    """

    def __init__(
        self,
        user: Any,
        key: str,
        encoding: Encoding,
        *,
        limit: str = "MAX_VIEWERS_PER_USER",
        also: Sequence[tuple[str, str]] = (),
        acks: bool = False,
        resumes: bool = False,
    ) -> None:
        self.user = user
        self.key = key
        self.limit = limit
        #: Every key it counts against, once each, with the setting that bounds it.
        self.counted: dict[str, str] = {}
        for name, setting in ((key, limit), *also):
            self.counted.setdefault(name, setting)
        self.encoding = encoding
        limited = acks or (resumes and bool(conf.get("LIMIT_UNACKED_VIEWERS")))
        #: Characters it may be handed past :attr:`acked`; None: no bound.
        self.window: int | None = int(conf.get("VIEWER_BUFFER_CHARS")) if limited else None
        self.acks = acks
        #: The offset the viewer says it has shown (its window starts there).
        self.acked = 0
        #: Offset the viewer's text reaches, and status, once the queued events are written.
        self.sent = 0
        self.status: str | None = None
        self.joined = False
        self.behind = False
        #: Entries of the part map handed to a part-aware viewer (its events' ``entries``).
        self.parts_sent = 0
        #: It is to be closed: once the queued events are written, or at once if refused.
        self.ended = False
        #: Why it was closed before the end, at once (its transport says how).
        self.refused: BaseException | None = None
        self.feed: Feed | None = None
        self._queue: deque[tuple[Event, int, int, str | None]] = deque()
        self._chars = 0
        self._limit = int(conf.get("VIEWER_BUFFER_CHARS"))
        # What the events already handed to the transport reach.
        self._written: tuple[int, str | None] = (0, None)
        self._ready = asyncio.Event()

    def offer(self, event: Event, *, sent: int | None = None, status: str | None = None) -> None:
        """Queue ``event``; after it the viewer has text up to ``sent`` and ``status``.
        Raises what the viewer's encoding raises (a bug: the feed closes the viewer)."""
        if self.behind or self.refused is not None:
            return
        if sent is not None:
            if self.window is not None and sent > self.acked + self.window:
                self._cut_loose()  # past its window: the rest when it acknowledges
                return
            self.sent = sent
        if status is not None:
            self.status = status
        # The events waiting behind the first (which may be a large catch-up) are bounded.
        size = self.encoding.size(event)
        if self._queue and self._chars - self._queue[0][1] + size > self._limit:
            self._cut_loose()
            return
        self._queue.append((event, size, self.sent, self.status))
        self._chars += size
        self._ready.set()

    def begin(self, offset: int) -> None:
        """The viewer starts at ``offset``: where it resumes if it is cut loose at once."""
        self.sent = self.acked = offset
        self._written = (offset, None)

    def reach(self, end: int) -> int:
        """How far towards ``end`` the viewer may be handed text: its window's end."""
        return end if self.window is None else min(end, self.acked + self.window)

    def room(self) -> int | None:
        """Characters of text it may be handed now; None: no bound."""
        return None if self.window is None else self.acked + self.window - self.sent

    def may_catch_up(self) -> bool:
        """Whether a viewer that is behind may be handed more now: once half its
        window is free (fewer, larger reads for one that is far behind), or any of it
        for one that never acknowledges."""
        if self.window is None:
            return True
        return self.acked + self.window - self.sent >= (
            max(1, self.window // 2) if self.acks else 1
        )

    def acknowledge(self, offset: int) -> None:
        """The viewer has shown the text up to ``offset``: its window moves there.

        Raises ValueError for a viewer without a window that it acknowledges, or an
        offset past the text it was handed. An older offset than the last changes
        nothing."""
        if self.window is None or not self.acks:
            raise ValueError("this viewer does not acknowledge")
        if offset > self._written[0]:
            raise ValueError(f"offset {offset} is past the text sent ({self._written[0]})")
        if offset > self.acked:
            self.acked = offset
            self._ready.set()

    def _cut_loose(self) -> None:
        """The viewer stopped reading: drop what waits for it; it catches up later."""
        logger.info("a viewer of stream %s is not reading; it will catch up", self.stream_id)
        self._queue.clear()
        self._chars = 0
        self.sent, self.status = self._written
        # What the dropped events held comes again with the catch-up (from the entry
        # whose span holds where it resumes).
        self.parts_sent = 0
        self.behind = True
        self._ready.set()

    @property
    def stream_id(self) -> uuid.UUID | None:
        return self.feed.stream_id if self.feed else None

    def end(self, refused: BaseException | None = None) -> None:
        """Close once the queued events are written, or at once if ``refused`` (why:
        the stream ended short of the viewer's offset, its permission went, the stream
        was deleted, a read failed, a bug)."""
        if self.ended:
            return
        self.ended = True
        if refused is not None:
            self.refused = refused
            self._queue.clear()
            self.behind = False
        self._ready.set()

    async def batches(self, keepalive: float | None = None) -> AsyncIterator[list[Event]]:
        """The events to write, in order, as they come; an empty list after
        ``keepalive`` seconds of silence. Ends when the viewer is to be closed."""
        while True:
            if self._queue:
                events = [event for event, _, _, _ in self._queue]
                _, _, sent, status = self._queue[-1]
                self._queue.clear()
                self._chars = 0
                self._written = (sent, status)
                yield events
                continue
            if self.refused is not None:
                return  # refused or failed (perhaps while it caught up): at once
            if self.behind and self.feed is not None:
                if self.may_catch_up():
                    await self.feed.catch_up(self)
                    continue
                if not self.acks:
                    self.ended, self.refused = True, WindowSpent()
                    return
                # Its window is full: it waits for an acknowledgement (even after the
                # stream has ended: it has not had the end yet).
            elif self.ended:
                return
            self._ready.clear()
            if keepalive is None:
                await self._ready.wait()
            else:
                try:
                    await asyncio.wait_for(self._ready.wait(), keepalive)
                except TimeoutError:
                    yield []


def ended_short(viewer: Viewer, status: str, end: int) -> bool:
    """Refuse ``viewer`` if it waits past ``end``, where the stream has ended with
    ``status``, as a new viewer at its offset would be (docs/protocol.md#offsets): never
    a terminal status at an offset the body does not reach."""
    if not is_finished(status) or viewer.sent <= end:
        return False
    viewer.end(InvalidOffset(ended_before(status, end, viewer.sent)))
    return True
