"""A feed's watchdog: after a silence of ``RESYNC_INTERVAL`` on its stream (a dropped
message, a lost status, a writer that died, or no channel layer at all), or when a
gap shows, one read of the database for all the feed's viewers here: what they
missed, the status, and whether each may still read the stream."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from django.core.exceptions import PermissionDenied

from .. import conf
from ..models import Stream
from . import reads

if TYPE_CHECKING:
    from .feed import Feed

logger = logging.getLogger(__name__)


class Watchdog:
    """The re-syncs of one feed: one at a time, again if a gap showed meanwhile."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self._lock = asyncio.Lock()
        self._again = False
        self._task = feed.hub.spawn(self._watch())

    def stop(self) -> None:
        self._task.cancel()

    async def _watch(self) -> None:
        feed = self.feed
        loop = asyncio.get_running_loop()
        interval = float(conf.get("RESYNC_INTERVAL"))
        while not feed.closed:
            wait = feed.heard + interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            feed.heard = loop.time()
            await self.resync()

    def soon(self) -> None:
        if self._lock.locked():
            # The read under way may have been made before what showed the gap
            # committed: read again when it is done.
            self._again = True
        else:
            self.feed.hub.spawn(self.resync())

    async def resync(self) -> None:
        """Read the stream once for all its viewers here: fill what was missed, learn
        its status, and close the viewers the permission policy now refuses. Again if
        another gap showed while it read. Never raises: a bug ends the feed."""
        with self.feed.contained("a re-sync"):
            async with self._lock:
                while True:
                    self._again = False
                    await self._resync_once()
                    if not self._again or self.feed.closed:
                        return

    async def _resync_once(self) -> None:
        feed = self.feed
        joined = [viewer for viewer in feed.viewers if viewer.joined]
        if feed.end is None or not joined:
            return
        start = feed.end
        try:
            found = await reads.read_for_viewers(
                feed.stream_id, start, {viewer.key: viewer.user for viewer in joined}
            )
        except Exception as exc:
            logger.warning("viewers of stream %s could not re-sync: %r", feed.stream_id, exc)
            return
        if found is None:
            gone = Stream.DoesNotExist("no such stream")
            for viewer in joined:
                viewer.end(gone)
            feed.finish()
            return
        for viewer in joined:
            if not found.allowed[viewer.key]:
                viewer.end(PermissionDenied("you may no longer read this stream"))
                feed.remove(viewer)
        feed.hub.ensure_groups()
        feed.apply(start, found.text, found.status, found.error, found.parts, 0)
