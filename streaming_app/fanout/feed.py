"""One stream's viewers in this process: its subscription, its deltas, its watchdog.

A feed hears each committed delta of its stream once (from the channel layer, or at
once from a writer of this process) and hands it to each caught-up viewer as one
event, shared by all of them: no database read, no permission check and no thread per
viewer per delta. New viewers are admitted with a snapshot read after the feed
subscribed; viewers cut loose catch up from the feed's recent text (its tail) or the
database. Its watchdog reads the database after a silence of ``RESYNC_INTERVAL`` (a
dropped message, a lost status, a writer that died, or no channel layer at all),
checks its viewers' permissions again, and serves all of them from that one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from ..models import is_finished
from ..parts import Entry, merge, reach
from ..streams import StreamBody
from . import reads
from .events import Status, Text, text_event
from .viewer import Viewer, ended_short, log_refusal, rank
from .watchdog import Watchdog

if TYPE_CHECKING:
    from .hub import Hub

logger = logging.getLogger(__name__)


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
        self.watchdog = Watchdog(self)

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
        with self.contained("a delta"):
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
        if rank(status) > rank(self.status):
            self.status, self.error = status, error
            shared = Status(status, error, self.end)
            for viewer in list(self.viewers):
                if viewer.joined and not viewer.behind and rank(viewer.status) < rank(status):
                    if ended_short(viewer, status, self.end):
                        continue
                    with self._alone(viewer):
                        if viewer.sent == self.end:
                            viewer.offer(shared, status=status)
                        else:
                            viewer.offer(Status(status, error, viewer.sent), status=status)
            if is_finished(status):
                self.finish()

    def _offer_text(self, start: int, end: int, text: str) -> None:
        """Hand the viewers caught up to ``start`` or beyond the text up to ``end``
        (and a part-aware one the entries of the map it lacks, up to ``end``)."""
        shared: dict[int | None, Text] = {}
        upto = reach(self.parts, end)
        for viewer in list(self.viewers):
            if not viewer.joined or viewer.behind or not start <= viewer.sent < end:
                continue
            with self._alone(viewer):
                aware = viewer.encoding.parts
                since = viewer.parts_sent if aware else None
                if viewer.sent == start:
                    if since not in shared:
                        shared[since] = self._text(viewer, start, text, self.parts, since)
                    viewer.offer(shared[since], sent=end)
                else:
                    rest = text[viewer.sent - start :]
                    viewer.offer(self._text(viewer, viewer.sent, rest, self.parts, since), sent=end)
                if aware and not viewer.behind:  # (behind: cut loose by it)
                    viewer.parts_sent = max(viewer.parts_sent, upto)

    def _offer_entries(self) -> None:
        """Hand each part-aware viewer at the end the entries of the map that it lacks
        and that carry no text of their own (a tool's result, the finish), as an
        empty text."""
        assert self.end is not None
        upto = reach(self.parts, self.end)
        shared: dict[int, Text] = {}
        for viewer in list(self.viewers):
            if (
                viewer.joined
                and not viewer.behind
                and viewer.encoding.parts
                and viewer.sent == self.end
                and viewer.parts_sent < upto
            ):
                with self._alone(viewer):
                    since = viewer.parts_sent
                    if since not in shared:
                        shared[since] = text_event(self.end, "", self.parts, since)
                    viewer.offer(shared[since])
                    if not viewer.behind:
                        viewer.parts_sent = upto

    @staticmethod
    def _text(
        viewer: Viewer, offset: int, text: str, parts: Sequence[Entry], since: int | None = None
    ) -> Text:
        """Text for ``viewer``: with the entries it needs of ``parts`` if it is
        part-aware (see :func:`~.events.text_event`)."""
        return text_event(offset, text, parts if viewer.encoding.parts else (), since)

    def _hand_over(self, viewer: Viewer, offset: int, text: str, parts: Sequence[Entry]) -> None:
        """Hand ``viewer`` a read's text from ``offset``: a snapshot, or a catch-up
        from the database or the tail (with the entries of ``parts`` around it)."""
        viewer.offer(self._text(viewer, offset, text, parts), sent=offset + len(text))
        if viewer.encoding.parts and not viewer.behind:
            viewer.parts_sent = max(viewer.parts_sent, reach(parts, viewer.sent))

    @staticmethod
    def _status_news(viewer: Viewer, status: str | None, error: str | None) -> None:
        """Hand ``viewer`` the status, if it is news to it."""
        if status is not None and rank(status) > rank(viewer.status):
            viewer.offer(Status(status, error, viewer.sent), status=status)

    def _learn_parts(self, parts: Sequence[Entry]) -> None:
        """A read's whole part map: the feed's, if it knows less."""
        if len(parts) > len(self.parts):
            self.parts = list(parts)

    def admit(self, viewer: Viewer, body: StreamBody) -> None:
        """A viewer whose snapshot ``body`` was read after the feed subscribed: send it
        the snapshot, then whatever the feed has heard since. Never raises: a fault in
        the viewer's encoder closes that viewer, one of the feed ends the feed."""
        with self.contained("admitting a viewer"):
            self._admit(viewer, body)

    def _admit(self, viewer: Viewer, body: StreamBody) -> None:
        viewer.begin(body.offset)
        whole = self._hand_body(viewer, body)
        if whole is None:
            return
        viewer.joined = True
        if is_finished(body.status):
            if whole:
                viewer.end()
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
            self._hand_over(viewer, body.offset, body.text, body.parts)
            whole = viewer.sent >= body.length
            if whole or not is_finished(body.status):
                self._status_news(viewer, body.status, body.error)
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
                and viewer.encoding.parts
                and viewer.parts_sent < reach(self.parts, self.end)
            ):
                at = viewer.sent - self._tail_start
                text = self._tail[at : stop - self._tail_start]
                self._hand_over(viewer, viewer.sent, text, self.parts)
            if viewer.sent < self.end:
                viewer.behind = True  # at its window's end: the rest when it acknowledges
                return True
            self._status_news(viewer, self.status, self.error)
            if is_finished(self.status or ""):
                viewer.end()
        return True

    async def catch_up(self, viewer: Viewer) -> None:
        """Bring a viewer that was cut loose (or joined late) up to what has committed.
        Never raises (it runs in the viewer's transport): see :meth:`admit`."""
        with self.contained("a catch-up"):
            await self._catch_up(viewer)

    async def _catch_up(self, viewer: Viewer) -> None:
        viewer.behind = False
        if self.end is not None and self._catch_up_from_tail(viewer):
            return
        viewer.behind = True  # deltas pass it by while it reads
        try:
            body = await reads.read_snapshot(
                viewer.user, self.stream_id, viewer.sent, True, viewer.room()
            )
        except Exception as exc:
            log_refusal(exc, self.stream_id)
            viewer.end(exc)
            return
        viewer.behind = False
        whole = self._hand_body(viewer, body)
        if whole is None:
            return
        if not whole:
            viewer.behind = True  # at its window's end: the rest when it acknowledges
            return
        if is_finished(body.status):
            viewer.end()
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
        """A fault in ``viewer``'s encoder or queue closes that viewer (refused with
        the fault), alone: the feed's other viewers go on."""
        try:
            yield
        except Exception as exc:
            logger.exception("a viewer of stream %s failed; it is closed", self.stream_id)
            viewer.end(exc)
            self.remove(viewer)

    @contextlib.contextmanager
    def contained(self, what: str) -> Iterator[None]:
        """A bug in this feed ends it (:meth:`fail`) rather than its caller: the
        committer, the layer's receiver, a viewer's transport, the watchdog."""
        try:
            yield
        except Exception:
            self.fail(what)

    def fail(self, what: str) -> None:
        """``what`` failed in this feed (a bug; called while handling it). What the
        feed knows can no longer be trusted: rather than re-read into it, its viewers
        here are closed (refused with the fault) and resume from their offsets, from the
        database, with a new feed; this one stops. No other stream's viewers are
        touched."""
        viewers, self.viewers = self.viewers, set()
        logger.exception(
            "%s failed in the feed of stream %s; its %d viewers here are closed",
            what,
            self.stream_id,
            len(viewers),
        )
        fault = sys.exception() or RuntimeError(f"{what} failed")
        for viewer in viewers:
            viewer.end(fault)
        self.finish()

    # The watchdog ----------------------------------------------------------------------

    def resync_soon(self) -> None:
        """Read the stream for its viewers here soon: a gap showed, or a re-check was
        asked for (:class:`~.watchdog.Watchdog`)."""
        self.watchdog.soon()

    # Membership ------------------------------------------------------------------------

    def remove(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        if not self.viewers:
            self.finish()

    def finish(self) -> None:
        """Stop following the stream: unsubscribe, stop the watchdog. Viewers still
        attached drain (and catch up) on their own."""
        if self.closed:
            return
        self.closed = True
        for viewer in list(self.viewers):
            viewer.end()
        self.watchdog.stop()
        if self.hub.feeds.get(self.stream_id) is self:
            del self.hub.feeds[self.stream_id]
        self.hub.ensure_groups()
