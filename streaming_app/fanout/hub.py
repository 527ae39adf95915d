"""Per process: one subscription and one watchdog per stream, however many viewers.

The hub of an event loop (a server process) joins a stream's group on the channel
layer when the stream's first local viewer arrives, and leaves it with the last. Each
committed delta it hears, from the layer or at once from a writer of this process, is
encoded once and handed to each caught-up viewer as one write: no database read, no
permission check and no thread per viewer per delta. One watchdog per stream reads the
database after a silence of ``RESYNC_INTERVAL`` (a dropped message, a lost status, a
writer that died, or no channel layer at all), checks its viewers' permissions again,
and serves all of them from that one read. A viewer that stops reading is cut loose:
its frames are dropped past ``VIEWER_BUFFER_CHARS``, and it catches up (from the
stream's recent text, or the database) when it reads again. A viewer with a window
(one that acknowledges what it has shown: websockets with ``?ack=1``) is handed at most
``VIEWER_BUFFER_CHARS`` past what it acknowledged, whether or not the server's
``send()`` waits for the client (daphne's never does); one held to a window that does
not acknowledge is let go once it has had a window, to come back on a new connection.

Transports (websocket, Server-Sent Events) register :class:`Viewer` objects and write
the frames the hub hands them; the hub knows no transport. It also brings cancels to
the runs of this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from channels.layers import BaseChannelLayer, get_channel_layer
from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError

from .. import conf
from ..drive.run import StreamRun
from ..exceptions import InvalidOffset, Overloaded
from ..loops import PerLoop
from ..models import Status, Stream, is_finished
from ..parts import Entry, around, merge, reach
from ..permissions import has_permission, load_stream
from ..streams import StreamBody, body_of, ended_before, expire_if_stale, get_stream, read_text
from .publish import (
    CANCEL,
    RECHECK,
    UPDATE,
    Message,
    control_group,
    group_name,
    layer_call,
    set_local_hub,
)
from .publish import published_after as _published_after

logger = logging.getLogger(__name__)

# The protocol's messages (docs/protocol.md) --------------------------------------------


def text_message(
    offset: int, text: str, parts: Sequence[Entry] = (), since: int | None = None
) -> Message:
    """A text message; with ``parts`` (a part-aware viewer of a stream with parts),
    the entries of the part map that this text needs (``parts_from``: the first's
    number): those from entry ``since`` on, for a viewer that has the ones before;
    without ``since`` (a snapshot, a catch-up), from the entry whose span holds
    ``offset``."""
    message: Message = {"type": "text", "offset": offset, "text": text}
    if parts:
        end = offset + len(text)
        if since is None:
            first, entries = around(parts, offset, end)
        else:
            first, entries = since, list(parts[since : reach(parts, end)])
        if entries:
            message["parts_from"] = first
            message["parts"] = entries
    return message


def status_message(status: str, error: str | None) -> Message:
    return {"type": "status", "status": status, "error": error}


def to_json(message: Message) -> str:
    # UTF-8 as it is, no spaces: about one byte on the wire per byte of text.
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


class Frames(Protocol):
    """How a transport puts the protocol's messages on its wire."""

    #: Whether its viewers hear of the part map (streaming_app.parts).
    parts: bool

    def text(self, offset: int, text: str, parts: Sequence[Entry], since: int | None = None) -> str:
        """A text message: ``text`` starts at code point ``offset``; ``parts`` is the
        stream's part map as far as it is known (streaming_app.parts), for the
        transports that carry it, and ``since`` the number of its entries the viewer
        has (None: a snapshot or catch-up; see :func:`text_message`)."""
        ...

    def status(self, status: str, error: str | None, at: int) -> str:
        """A status message, sent when the viewer has the text up to ``at``."""
        ...


def _rank(status: str | None) -> int:
    """Statuses only move forward: pending, streaming, then a terminal one."""
    if status is None:
        return -1
    return 2 if is_finished(status) else int(status == Status.STREAMING)


# Viewers -------------------------------------------------------------------------------

#: The close code of a viewer held to a window that it does not acknowledge, once it
#: has had it: come back on a new connection and resume from your offset.
WINDOW_SPENT = 4413


class Viewer:
    """One viewer of one stream: where it is, and the frames waiting to be written to it.

    ``key`` identifies whose it is (a user, an anonymous session, an address: the
    transport says, see :mod:`streaming_app.clients`); ``limit`` names the setting that
    bounds how many viewers one key holds open on the process; ``also`` gives other
    ``(key, limit)`` pairs it counts against besides (its client's address). It holds a
    place under each of them from :meth:`Hub.watch` to :meth:`Hub.leave`, or under none
    if it is refused. The transport iterates
    :meth:`batches` and writes each frame; when the iteration ends it closes with
    :attr:`close_code`.

    A viewer that ``acks`` has a window of ``VIEWER_BUFFER_CHARS``: it is never
    handed text more than that past the offset it last acknowledged
    (:meth:`acknowledge`); past it, it is cut loose and catches up once it
    acknowledges again. That bounds what it costs even where the transport's writes
    never wait for the client. One whose client ``resumes`` by itself on a new
    connection (a websocket client, an ``EventSource``) has the same window under
    ``LIMIT_UNACKED_VIEWERS``, without acknowledging: once it has had it, the
    iteration ends with :data:`WINDOW_SPENT`.
    """

    def __init__(
        self,
        user: Any,
        key: str,
        frames: Frames,
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
        self.frames = frames
        limited = acks or (resumes and bool(conf.get("LIMIT_UNACKED_VIEWERS")))
        #: Characters it may be handed past :attr:`acked`; None: no bound.
        self.window: int | None = int(conf.get("VIEWER_BUFFER_CHARS")) if limited else None
        self.acks = acks
        #: The offset the viewer says it has shown (its window starts there).
        self.acked = 0
        #: Offset the viewer's text reaches, and status, once the queued frames are written.
        self.sent = 0
        self.status: str | None = None
        self.joined = False
        self.behind = False
        #: Entries of the part map handed to a part-aware viewer (its frames' ``parts``).
        self.parts_sent = 0
        self.close_code: int | None = None
        #: Why, for a refusal whose reason is its own (None: the code's usual one).
        self.close_reason: str | None = None
        self.feed: Feed | None = None
        self._queue: deque[tuple[str, int, str | None]] = deque()
        self._chars = 0
        self._limit = int(conf.get("VIEWER_BUFFER_CHARS"))
        # What the frames already handed to the transport reach.
        self._written: tuple[int, str | None] = (0, None)
        self._ready = asyncio.Event()

    def offer(self, frame: str, *, sent: int | None = None, status: str | None = None) -> None:
        """Queue ``frame``; after it the viewer has text up to ``sent`` and ``status``."""
        if self.behind or self.close_code is not None and self.close_code != 1000:
            return
        if sent is not None:
            if self.window is not None and sent > self.acked + self.window:
                self._cut_loose()  # past its window: the rest when it acknowledges
                return
            self.sent = sent
        if status is not None:
            self.status = status
        # The frames waiting behind the first (which may be a large catch-up) are bounded.
        if self._queue and self._chars - len(self._queue[0][0]) + len(frame) > self._limit:
            self._cut_loose()
            return
        self._queue.append((frame, self.sent, self.status))
        self._chars += len(frame)
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
        # What the dropped frames held comes again with the catch-up (from the entry
        # whose span holds where it resumes).
        self.parts_sent = 0
        self.behind = True
        self._ready.set()

    @property
    def stream_id(self) -> uuid.UUID | None:
        return self.feed.stream_id if self.feed else None

    def end(self, code: int, reason: str | None = None) -> None:
        """Close once the queued frames are written (1000), or at once (a refusal)."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        if code != 1000:
            self._queue.clear()
            self.behind = False
        self._ready.set()

    async def batches(self, keepalive: float | None = None) -> AsyncIterator[list[str]]:
        """The frames to write, in order, as they come; an empty list after
        ``keepalive`` seconds of silence. Ends when the viewer is to be closed."""
        while True:
            if self._queue:
                frames = [frame for frame, _, _ in self._queue]
                _, sent, status = self._queue[-1]
                self._queue.clear()
                self._chars = 0
                self._written = (sent, status)
                yield frames
                continue
            if self.close_code is not None and self.close_code != 1000:
                return  # refused or failed (perhaps while it caught up): at once
            if self.behind and self.feed is not None:
                if self.may_catch_up():
                    await self.feed.catch_up(self)
                    continue
                if not self.acks:
                    self.close_code = WINDOW_SPENT
                    return
                # Its window is full: it waits for an acknowledgement (even after the
                # stream has ended: it has not had the end yet).
            elif self.close_code is not None:
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
    ``status``: 4400, as a new viewer at its offset would be (docs/protocol.md#offsets),
    never a terminal status at an offset the body does not reach."""
    if not is_finished(status) or viewer.sent <= end:
        return False
    viewer.end(4400, ended_before(status, end, viewer.sent))
    return True


# One stream's viewers in this process ---------------------------------------------------


@dataclass(frozen=True)
class _Resync:
    status: str
    error: str | None
    length: int
    text: str
    allowed: dict[str, bool]
    parts: tuple[Entry, ...] = ()


def _read_for_viewers(stream_id: uuid.UUID, start: int, users: dict[str, Any]) -> _Resync | None:
    """One read of a stream for all its viewers here: what committed from ``start``,
    its status, and whether each user may still read it. None if it is gone."""
    try:
        stream = expire_if_stale(get_stream(stream_id))
    except Stream.DoesNotExist:
        return None
    return _Resync(
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


# Reads for viewers run in any thread (they are independent), closing their connections;
# what an expiry on the way commits goes out from the loop's publisher, so that no
# viewer waits for the channel layer.
read_for_viewers = _published_after(_read_for_viewers, thread_sensitive=False, wait=False)
read_snapshot = _published_after(_read_snapshot, thread_sensitive=False, wait=False)


class Feed:
    """One stream's local viewers, its subscription and its watchdog."""

    #: Committed text kept to catch viewers up without the database, in characters.
    TAIL_CHARS = 65_536

    def __init__(self, hub: Hub, stream_id: uuid.UUID) -> None:
        self.hub = hub
        self.stream_id = stream_id
        self.viewers: set[Viewer] = set()
        #: What the feed knows has committed: text up to ``end``, and the status.
        self.end: int | None = None
        self.status: str | None = None
        self.error: str | None = None
        self.closed = False
        self.heard = asyncio.get_running_loop().time()
        self.subscribed = asyncio.get_running_loop().create_future()
        #: The stream's part map as far as the feed knows (streaming_app.parts).
        self.parts: list[Entry] = []
        self._tail = ""
        self._tail_start = 0
        self._early: list[tuple[int, str, str, str | None, Sequence[Entry], int]] = []
        self._resync_lock = asyncio.Lock()
        self._resync_again = False
        self._watchdog = hub.spawn(self._watch())

    # Deltas ----------------------------------------------------------------------------

    def apply(
        self,
        offset: int,
        text: str,
        status: str,
        error: str | None,
        parts: Sequence[Entry] = (),
        parts_from: int = 0,
    ) -> None:
        """A committed delta: ``text`` from ``offset``, the entries of the part map
        from number ``parts_from`` that came with it, then ``status``. Never raises
        (it runs in the committer's task): a bug here ends this feed (:meth:`fail`)."""
        with self._contained("a delta"):
            self._apply(offset, text, status, error, parts, parts_from)

    def _apply(
        self,
        offset: int,
        text: str,
        status: str,
        error: str | None,
        parts: Sequence[Entry],
        parts_from: int,
    ) -> None:
        self.heard = asyncio.get_running_loop().time()
        if self.end is None:
            self._early.append((offset, text, status, error, parts, parts_from))
            return
        if offset > self.end or not merge(self.parts, parts_from, parts):
            self.resync_soon()  # a message was dropped: the gap is in the database
            return
        end = offset + len(text)
        if end > self.end:
            start, self.end = self.end, end
            self._tail += text[start - offset :]
            if len(self._tail) > self.TAIL_CHARS:
                cut = len(self._tail) - self.TAIL_CHARS
                self._tail, self._tail_start = self._tail[cut:], self._tail_start + cut
            self._offer_text(start, end, text[start - offset :])
        if self.parts:
            self._offer_entries()
        if _rank(status) > _rank(self.status):
            self.status, self.error = status, error
            shared: dict[int, str] = {}
            for viewer in list(self.viewers):
                if viewer.joined and not viewer.behind and _rank(viewer.status) < _rank(status):
                    if ended_short(viewer, status, self.end):
                        continue
                    with self._alone(viewer):
                        frames = id(viewer.frames)
                        if viewer.sent != self.end:
                            frame = viewer.frames.status(status, error, viewer.sent)
                        elif frames in shared:
                            frame = shared[frames]
                        else:
                            frame = shared[frames] = viewer.frames.status(status, error, self.end)
                        viewer.offer(frame, status=status)
            if is_finished(status):
                self._finish()

    def _offer_text(self, start: int, end: int, text: str) -> None:
        """Hand the viewers caught up to ``start`` or beyond the text up to ``end``
        (and a part-aware one the entries of the map it lacks, up to ``end``)."""
        shared: dict[tuple[int, int], str] = {}
        upto = reach(self.parts, end)
        for viewer in list(self.viewers):
            if not viewer.joined or viewer.behind or not start <= viewer.sent < end:
                continue
            with self._alone(viewer):
                since = viewer.parts_sent if viewer.frames.parts else 0
                if viewer.sent == start:
                    key = (id(viewer.frames), since)
                    if key not in shared:
                        shared[key] = viewer.frames.text(start, text, self.parts, since)
                    viewer.offer(shared[key], sent=end)
                else:
                    rest = text[viewer.sent - start :]
                    viewer.offer(viewer.frames.text(viewer.sent, rest, self.parts, since), sent=end)
                if viewer.frames.parts and not viewer.behind:  # (behind: cut loose by it)
                    viewer.parts_sent = max(viewer.parts_sent, upto)

    def _offer_entries(self) -> None:
        """Hand each part-aware viewer at the end the entries of the map that it lacks
        and that carry no text of their own (a tool's result, the finish), as an
        empty text."""
        assert self.end is not None
        upto = reach(self.parts, self.end)
        shared: dict[tuple[int, int], str] = {}
        for viewer in list(self.viewers):
            if (
                viewer.joined
                and not viewer.behind
                and viewer.frames.parts
                and viewer.sent == self.end
                and viewer.parts_sent < upto
            ):
                with self._alone(viewer):
                    key = (id(viewer.frames), viewer.parts_sent)
                    if key not in shared:
                        shared[key] = viewer.frames.text(
                            self.end, "", self.parts, viewer.parts_sent
                        )
                    viewer.offer(shared[key])
                    if not viewer.behind:
                        viewer.parts_sent = upto

    def _snapshot_sent(self, viewer: Viewer, parts: Sequence[Entry]) -> None:
        """A part-aware viewer was handed a snapshot or catch-up up to ``viewer.sent``."""
        if viewer.frames.parts and not viewer.behind:
            viewer.parts_sent = max(viewer.parts_sent, reach(parts, viewer.sent))

    def _learn_parts(self, parts: Sequence[Entry]) -> None:
        """A read's whole part map: the feed's, if it knows less."""
        if len(parts) > len(self.parts):
            self.parts = list(parts)

    def admit(self, viewer: Viewer, body: StreamBody) -> None:
        """A viewer whose snapshot ``body`` was read after the feed subscribed: send it
        the snapshot, then whatever the feed has heard since. Never raises: a fault in
        the viewer's encoder closes that viewer (1011), one of the feed ends the feed."""
        with self._contained("admitting a viewer"):
            self._admit(viewer, body)

    def _admit(self, viewer: Viewer, body: StreamBody) -> None:
        viewer.begin(body.offset)
        whole = self._hand_body(viewer, body)
        if whole is None:
            return
        viewer.joined = True
        if is_finished(body.status):
            if whole:
                viewer.end(1000)
            else:
                viewer.behind = True
            return
        if self.end is None:
            # The first snapshot is where the feed starts.
            self.end = body.length
            if whole and body.offset <= body.length:
                self._tail, self._tail_start = body.text, body.offset
            else:
                self._tail, self._tail_start = "", body.length
            self.status, self.error = body.status, body.error
            viewer.behind = not whole
            early, self._early = self._early, []
            for delta in early:
                self.apply(*delta)
        elif not self._catch_up_from_tail(viewer):
            viewer.behind = True  # older than the feed remembers: from the database

    def _hand_body(self, viewer: Viewer, body: StreamBody) -> bool | None:
        """Hand ``viewer`` what a read of the database gave it: the text, and the status
        if it is news to the viewer. A viewer with a window may have been read only its
        window's worth: a live status still goes, a terminal one waits for the rest
        (handed when it acknowledges). True if it has the whole body, False if only a
        window of it, None if the viewer failed (it is closed)."""
        self._learn_parts(body.parts)
        if ended_short(viewer, body.status, body.length):
            return None
        with self._alone(viewer):
            viewer.offer(
                viewer.frames.text(body.offset, body.text, body.parts),
                sent=body.offset + len(body.text),
            )
            self._snapshot_sent(viewer, body.parts)
            whole = viewer.sent >= body.length
            if (whole or not is_finished(body.status)) and _rank(body.status) > _rank(
                viewer.status
            ):
                viewer.offer(
                    viewer.frames.status(body.status, body.error, viewer.sent), status=body.status
                )
            return whole
        return None

    def _catch_up_from_tail(self, viewer: Viewer) -> bool:
        """Bring ``viewer`` up to ``end`` from the tail; False if it is older than the
        tail (only the database has what it lacks)."""
        assert self.end is not None
        if viewer.sent < self._tail_start:
            return False
        if ended_short(viewer, self.status or "", self.end):
            return True
        with self._alone(viewer):
            stop = viewer.reach(self.end)
            if viewer.sent < stop or (
                stop == self.end
                and viewer.frames.parts
                and viewer.parts_sent < reach(self.parts, self.end)
            ):
                at = viewer.sent - self._tail_start
                viewer.offer(
                    viewer.frames.text(
                        viewer.sent, self._tail[at : stop - self._tail_start], self.parts
                    ),
                    sent=stop,
                )
                self._snapshot_sent(viewer, self.parts)
            if viewer.sent < self.end:
                viewer.behind = True  # at its window's end: the rest when it acknowledges
                return True
            if self.status is not None and _rank(self.status) > _rank(viewer.status):
                viewer.offer(
                    viewer.frames.status(self.status, self.error, viewer.sent), status=self.status
                )
            if is_finished(self.status or ""):
                viewer.end(1000)
        return True

    async def catch_up(self, viewer: Viewer) -> None:
        """Bring a viewer that was cut loose (or joined late) up to what has committed.
        Never raises (it runs in the viewer's transport): see :meth:`admit`."""
        with self._contained("a catch-up"):
            await self._catch_up(viewer)

    async def _catch_up(self, viewer: Viewer) -> None:
        viewer.behind = False
        if self.end is not None and self._catch_up_from_tail(viewer):
            return
        viewer.behind = True  # deltas pass it by while it reads
        try:
            body = await read_snapshot(
                viewer.user, self.stream_id, viewer.sent, True, viewer.room()
            )
        except Exception as exc:
            viewer.end(refusal(exc, self.stream_id))
            return
        viewer.behind = False
        whole = self._hand_body(viewer, body)
        if whole is None:
            return
        if not whole:
            viewer.behind = True  # at its window's end: the rest when it acknowledges
            return
        if is_finished(body.status):
            viewer.end(1000)
        elif (
            self.end is not None
            and viewer.sent <= self.end
            and not self._catch_up_from_tail(viewer)
        ):
            # (At the end, the tail brings the status the feed heard while the
            # database was read.) The feed moved on past its tail meanwhile: what the
            # viewer lacks is in the database again (left so, the viewer would be
            # passed by every delta and end with text missing).
            viewer.behind = True

    # Faults ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _alone(self, viewer: Viewer) -> Iterator[None]:
        """A fault in ``viewer``'s encoder or queue closes that viewer (1011), alone:
        the feed's other viewers go on."""
        try:
            yield
        except Exception:
            logger.exception("a viewer of stream %s failed; it is closed (1011)", self.stream_id)
            viewer.end(1011)
            self.remove(viewer)

    @contextlib.contextmanager
    def _contained(self, what: str) -> Iterator[None]:
        """A bug in this feed ends it (:meth:`fail`) rather than its caller: the
        committer, the layer's receiver, a viewer's transport, the watchdog."""
        try:
            yield
        except Exception:
            self.fail(what)

    def fail(self, what: str) -> None:
        """``what`` failed in this feed (a bug; called while handling it). What the
        feed knows can no longer be trusted: rather than re-read into it, its viewers
        here are closed (1011) and resume from their offsets, from the database, with a
        new feed; this one stops. No other stream's viewers are touched."""
        viewers, self.viewers = self.viewers, set()
        logger.exception(
            "%s failed in the feed of stream %s; its %d viewers here are closed (1011)",
            what,
            self.stream_id,
            len(viewers),
        )
        for viewer in viewers:
            viewer.end(1011)
        self._finish()

    # The watchdog ----------------------------------------------------------------------

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        interval = float(conf.get("RESYNC_INTERVAL"))
        while not self.closed:
            wait = self.heard + interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self.heard = loop.time()
            await self.resync()

    def resync_soon(self) -> None:
        if self._resync_lock.locked():
            # The read under way may have been made before what showed the gap
            # committed: read again when it is done.
            self._resync_again = True
        else:
            self.hub.spawn(self.resync())

    async def resync(self) -> None:
        """Read the stream once for all its viewers here: fill what was missed, learn
        its status, and close the viewers the permission policy now refuses. Again if
        another gap showed while it read. Never raises: a bug ends the feed."""
        with self._contained("a re-sync"):
            async with self._resync_lock:
                while True:
                    self._resync_again = False
                    await self._resync_once()
                    if not self._resync_again or self.closed:
                        return

    async def _resync_once(self) -> None:
        joined = [viewer for viewer in self.viewers if viewer.joined]
        if self.end is None or not joined:
            return
        start = self.end
        try:
            found = await read_for_viewers(
                self.stream_id, start, {viewer.key: viewer.user for viewer in joined}
            )
        except Exception as exc:
            logger.warning("viewers of stream %s could not re-sync: %r", self.stream_id, exc)
            return
        if found is None:
            for viewer in joined:
                viewer.end(4404)
            self._finish()
            return
        for viewer in joined:
            if not found.allowed[viewer.key]:
                viewer.end(4403)
                self.remove(viewer)
        self.hub.ensure_groups()
        self.apply(start, found.text, found.status, found.error, found.parts, 0)

    # Membership ------------------------------------------------------------------------

    def remove(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        if not self.viewers:
            self._finish()

    def _finish(self) -> None:
        """Stop following the stream: unsubscribe, stop the watchdog. Viewers still
        attached drain (and catch up) on their own."""
        if self.closed:
            return
        self.closed = True
        for viewer in list(self.viewers):
            viewer.end(1000)
        self._watchdog.cancel()
        if self.hub.feeds.get(self.stream_id) is self:
            del self.hub.feeds[self.stream_id]
        self.hub.ensure_groups()


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


def close_code(exc: BaseException) -> int:
    """The websocket close code that tells a viewer why it was refused."""
    if isinstance(exc, Overloaded):
        return exc.close_code
    if isinstance(exc, InvalidOffset):
        return 4400
    if isinstance(exc, PermissionDenied):
        return 4403
    if isinstance(exc, Stream.DoesNotExist):
        return 4404
    if isinstance(exc, OUTAGES):
        return 4503  # come back and resume
    return 1011  # a bug


def refusal(exc: BaseException, stream_id: object) -> int:
    """:func:`close_code` for a viewer of ``stream_id`` refused by ``exc``, logged: an
    outage as a warning, a bug with its traceback. Call it where ``exc`` is handled."""
    code = close_code(exc)
    if code == 1011:
        logger.exception("a viewer of stream %s failed", stream_id)
    elif code == 4503:
        logger.warning("a viewer of stream %s was refused for now: %r", stream_id, exc)
    return code


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"not an offset: {value!r}")
    return value


def _delta(message: Message) -> tuple[int, str, str, str | None, list[Entry], int]:
    """An update message's delta, as :meth:`Feed.apply` takes it. Raises KeyError,
    ValueError or TypeError for a malformed one (from another process, or a bug)."""
    text, status, error = message["text"], message["status"], message.get("error")
    parts = message.get("parts") or []
    if not (
        isinstance(text, str)
        and isinstance(status, str)
        and (error is None or isinstance(error, str))
        and isinstance(parts, list | tuple)
        and all(isinstance(entry, dict) and isinstance(entry.get("at"), int) for entry in parts)
    ):
        raise TypeError("a field of the wrong type")
    return (
        _count(message["offset"]),
        text,
        status,
        error,
        list(parts),
        _count(message.get("parts_from") or 0),
    )


# The hub ---------------------------------------------------------------------------------


class Hub:
    """An event loop's feeds, its one channel on the layer, and its runs' cancels."""

    #: Joins and leaves under way at once: enough that one slow call holds up none of
    #: the others, few enough that a burst of new feeds does not open as many
    #: connections to the layer's server.
    MEMBERSHIP_CALLS = 8

    def __init__(self, layer: BaseChannelLayer | None) -> None:
        self.layer = layer
        self.origin = uuid.uuid4().hex
        self.feeds: dict[uuid.UUID, Feed] = {}
        self.runs: dict[uuid.UUID, StreamRun] = {}
        self.viewers = Counter[str]()
        self._channel: str | None = None
        self._opening: asyncio.Task[str] | None = None
        #: Groups the layer may have this hub's channel in (a join was tried and no
        #: leave has succeeded since), and among them those whose last call failed or
        #: timed out (it may have happened anyway): they are joined again, then left
        #: if they are not wanted.
        self._joined: set[str] = set()
        self._unsure: set[str] = set()
        #: The task bringing each group to what is wanted: one per group at a time, so
        #: that one slow join holds up no other.
        self._syncing: dict[str, asyncio.Task[None]] = {}
        self._calls = asyncio.Semaphore(self.MEMBERSHIP_CALLS)
        self._retry: asyncio.TimerHandle | None = None
        self._failing = False
        self._receiver: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task of the hub's own, owing nothing to the request or consumer that
        caused it (an empty context: no request thread, no connection). One that
        fails is logged with its traceback."""
        task = asyncio.get_running_loop().create_task(coroutine, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        """A task of the hub ended; one that failed (a bug) is logged, not lost."""
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("a task of the hub failed: %r", task, exc_info=exc)

    # Viewers ---------------------------------------------------------------------------

    async def watch(
        self, viewer: Viewer, stream_id: uuid.UUID, offset: int | str, *, past_end_ok: bool = False
    ) -> StreamBody:
        """Register ``viewer`` and read its snapshot; it then gets every committed delta.

        Raises ``Stream.DoesNotExist``, ``PermissionDenied``, ``InvalidOffset``,
        :class:`~streaming_app.exceptions.Overloaded` (too many viewers for one of its keys),
        or a database error; the viewer is not registered then.
        """
        for key, setting in viewer.counted.items():
            limit = conf.get(setting)
            if limit is not None and self.viewers[key] >= int(limit):
                raise Overloaded(
                    f"too many open viewers: {setting} is {limit} on this process",
                    status_code=429,
                )
        feed = self.feeds.get(stream_id)
        if feed is None:
            feed = self.feeds[stream_id] = Feed(self, stream_id)
            self.ensure_groups()
        feed.viewers.add(viewer)
        viewer.feed = feed
        self.viewers.update(viewer.counted.keys())
        try:
            # Subscribed before the snapshot is read: nothing that commits in between
            # is missed (what is heard twice is dropped). A layer that does not answer
            # holds the viewer up for PUBLISH_TIMEOUT at the most: it then follows
            # from the database (its feed's re-syncs) until the join is done.
            await asyncio.wait([feed.subscribed], timeout=float(conf.get("PUBLISH_TIMEOUT")))
            body = await read_snapshot(viewer.user, stream_id, offset, past_end_ok, viewer.window)
        except BaseException:
            self.leave(viewer)
            raise
        feed.admit(viewer, body)
        return body

    def leave(self, viewer: Viewer) -> None:
        """The viewer's transport has closed."""
        if viewer.feed is None:
            return
        feed, viewer.feed = viewer.feed, None
        if viewer in feed.viewers:
            feed.remove(viewer)
        for key in viewer.counted:
            self.viewers[key] -= 1
            if self.viewers[key] <= 0:
                del self.viewers[key]

    # Runs ------------------------------------------------------------------------------

    def track_run(self, run: StreamRun) -> None:
        """Bring cancels to ``run``, from this process at once and others through the
        layer, until it ends."""
        self.runs[run.stream_id] = run

        def ended(_: asyncio.Task[str]) -> None:
            if self.runs.get(run.stream_id) is run:
                del self.runs[run.stream_id]
            self.ensure_groups()

        run.task.add_done_callback(ended)
        self.ensure_groups()

    # Messages --------------------------------------------------------------------------

    def deliver(self, message: Message) -> None:
        """A message published in this process, or heard from the layer. Never raises
        (it runs in the committer's task, or the layer's receiver): a malformed message
        is logged and ignored, and a fault stays with the stream it is about."""
        try:
            stream_id = uuid.UUID(hex=str(message["stream"]))
            kind = message["type"]
            delta = _delta(message) if kind == UPDATE else None
        except (KeyError, ValueError, TypeError):
            logger.warning("ignored a malformed message: %.200r", message)
            return
        try:
            feed = self.feeds.get(stream_id)
            if kind == UPDATE and feed is not None:
                assert delta is not None
                feed.apply(*delta)
            elif kind == CANCEL:
                run = self.runs.get(stream_id)
                if run is not None:
                    run.cancel()
            elif kind == RECHECK and feed is not None:
                feed.resync_soon()
        except Exception:  # a bug, in this stream's feed or run: the others go on
            logger.exception("a %s message of stream %s failed", kind, stream_id)

    async def _receive(self) -> None:
        # No bound here: a receive waits for messages by nature, and a layer that does
        # not answer looks like silence, which the feeds' watchdogs cover.
        assert self.layer is not None and self._channel is not None
        failures = 0
        while True:
            try:
                message = await self.layer.receive(self._channel)
            except Exception as exc:
                failures += 1
                if failures == 1:
                    logger.warning("the channel layer failed (%r); viewers poll meanwhile", exc)
                await asyncio.sleep(min(0.5 * failures, 5.0))
                # Memberships may have gone with the layer's server: join again.
                self._unsure |= self._joined
                self.ensure_groups()
                continue
            failures = 0
            if not isinstance(message, dict) or message.get("origin") != self.origin:
                self.deliver(message)  # (else delivered already)

    # Group memberships ------------------------------------------------------------------

    def _wanted(self) -> set[str]:
        """The groups to be in: the open feeds', the runs'. An id that cannot be named
        (a bug elsewhere) is logged and left out; the others are still wanted."""
        wanted: set[str] = set()
        named = [(group_name, pk) for pk, feed in self.feeds.items() if not feed.closed]
        for name, pk in [*named, *((control_group, pk) for pk in self.runs)]:
            try:
                wanted.add(name(uuid.UUID(str(pk))))
            except ValueError:
                logger.exception("stream %r cannot be followed on the channel layer", pk)
        return wanted

    def ensure_groups(self) -> None:
        """Join and leave the layer's groups to match the feeds and runs (in tasks).
        Each call to the layer is bounded (``PUBLISH_TIMEOUT``); what failed is tried
        again after ``RESYNC_INTERVAL``, and at the feeds' re-syncs."""
        self.spawn(self._sync_groups())

    async def _sync_groups(self) -> None:
        try:
            wanted = self._wanted()
        except Exception:
            logger.exception("could not tell which groups to join")
            return
        if self.layer is None:
            self._subscribed(wanted)
            return
        for group in (wanted ^ self._joined) | self._unsure:
            if group not in self._syncing:
                self._syncing[group] = self.spawn(self._sync_group(group))
        # Feeds whose group is joined already, or being left (it is joined again after).
        self._subscribed(wanted - set(self._syncing))

    async def _sync_group(self, group: str) -> None:
        assert self.layer is not None
        try:
            while True:
                wanted = self._wants(group)
                if group in self._unsure or (wanted and group not in self._joined):
                    # Counted as joined before the call: if it times out it may have
                    # happened all the same, and must be left if the group is unwanted.
                    self._joined.add(group)
                    self._unsure.add(group)
                    try:
                        channel = await self._channel_name()
                        async with self._calls:
                            await layer_call(self.layer.group_add(group, channel))
                    finally:
                        self._subscribed({group})
                    self._unsure.discard(group)
                elif not wanted and group in self._joined:
                    self._unsure.add(group)
                    channel = await self._channel_name()
                    async with self._calls:
                        await layer_call(self.layer.group_discard(group, channel))
                    self._unsure.discard(group)
                    self._joined.discard(group)
                else:
                    break
        except Exception as exc:
            # The layer is away: viewers poll the database, cancels wait for the
            # writer's next flush.
            if not self._failing:
                self._failing = True
                logger.warning("could not join or leave a channel layer group: %r", exc)
            self._retry_later()
        else:
            if self._failing and not self._unsure:
                self._failing = False
                logger.info("the channel layer answers again; its groups are joined")
        finally:
            del self._syncing[group]

    async def _channel_name(self) -> str:
        """The hub's channel on the layer, made once (every waiting join shares the
        one bounded call)."""
        if self._channel is not None:
            return self._channel
        if self._opening is None or self._opening.done():
            self._opening = self.spawn(self._open_channel())
        return await asyncio.shield(self._opening)

    async def _open_channel(self) -> str:
        assert self.layer is not None
        channel = await layer_call(self.layer.new_channel())
        self._channel = channel
        self._receiver = self.spawn(self._receive())
        return channel

    def _retry_later(self) -> None:
        if self._retry is None:

            def retry() -> None:
                self._retry = None
                self.ensure_groups()

            loop = asyncio.get_running_loop()
            self._retry = loop.call_later(float(conf.get("RESYNC_INTERVAL")), retry)

    def _feed_of(self, group: str) -> Feed | None:
        """The feed that wants ``group``, one of :meth:`_wanted`'s names."""
        pk = uuid.UUID(hex=group.rpartition(".")[2])
        feed = self.feeds.get(pk)
        return feed if feed is not None and group == group_name(pk) else None

    def _wants(self, group: str) -> bool:
        feed = self._feed_of(group)
        if feed is not None:
            return not feed.closed
        pk = uuid.UUID(hex=group.rpartition(".")[2])
        return group == control_group(pk) and pk in self.runs

    def _subscribed(self, groups: set[str]) -> None:
        """The joins of these groups have been tried: their feeds' viewers go on."""
        for group in groups:
            feed = self._feed_of(group)
            if feed is not None and not feed.subscribed.done():
                feed.subscribed.set_result(None)


_hubs: PerLoop[Hub] = PerLoop()


def hub() -> Hub:
    """The running event loop's hub (one per server process)."""
    loop = asyncio.get_running_loop()
    layer = get_channel_layer()
    current = _hubs.peek()
    if current is None or current.layer is not layer:
        # A new hub for a new layer (settings changed, in tests): the old one serves
        # the viewers it has.
        current = Hub(layer)
        _hubs.set(current)
        set_local_hub(loop, current)
    return current


def track_run(sender: Any, *, run: StreamRun, **kwargs: Any) -> None:
    """Receiver of ``stream_run_started``."""
    hub().track_run(run)
