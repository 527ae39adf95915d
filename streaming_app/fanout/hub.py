"""Per process: one subscription and one watchdog per stream, however many viewers.

The hub of an event loop (a server process) keeps a :class:`~.feed.Feed` per followed
stream: it joins the stream's group on the channel layer when the stream's first local
viewer arrives, and leaves it with the last; it hands each message it hears (from the
layer, or at once from a writer of this process) to the stream's feed. It also brings
cancels to the runs of this process.

Transports (websocket, Server-Sent Events, the AI SDK's resume) register
:class:`~.viewer.Viewer` objects with :meth:`Hub.watch` and write the events the hub
hands them, in their own encoding: the hub knows no transport and no wire format.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from channels.layers import BaseChannelLayer, get_channel_layer

from .. import conf
from ..clients import ViewerKey
from ..drive.run import StreamRun
from ..exceptions import Overloaded
from ..loops import PerLoop
from ..parts import Entry
from ..streams import StreamBody, StreamId, parse_stream_id
from . import reads
from .events import Encoding
from .feed import Feed
from .groups import Groups
from .publish import (
    CANCEL,
    RECHECK,
    UPDATE,
    Message,
    control_group,
    group_name,
    set_local_hub,
)
from .viewer import Viewer

logger = logging.getLogger(__name__)


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

    def __init__(self, layer: BaseChannelLayer | None) -> None:
        self.layer = layer
        self.origin = uuid.uuid4().hex
        self.feeds: dict[uuid.UUID, Feed] = {}
        self.runs: dict[uuid.UUID, StreamRun] = {}
        self.viewers = Counter[str]()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.groups = Groups(self)

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
            body = await reads.read_snapshot(
                viewer.user, stream_id, offset, past_end_ok, viewer.window
            )
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

    # Group memberships ------------------------------------------------------------------

    def wanted(self) -> set[str]:
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
        self.spawn(self.groups.sync())

    def _feed_of(self, group: str) -> Feed | None:
        """The feed that wants ``group``, one of :meth:`_wanted`'s names."""
        pk = uuid.UUID(hex=group.rpartition(".")[2])
        feed = self.feeds.get(pk)
        return feed if feed is not None and group == group_name(pk) else None

    def wants(self, group: str) -> bool:
        feed = self._feed_of(group)
        if feed is not None:
            return not feed.closed
        pk = uuid.UUID(hex=group.rpartition(".")[2])
        return group == control_group(pk) and pk in self.runs

    def subscribed(self, groups: set[str]) -> None:
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


async def follow(
    user: Any,
    key: ViewerKey,
    encoding: Encoding,
    stream_id: StreamId,
    offset: int | str,
    *,
    acks: bool = False,
    resumes: bool = False,
) -> tuple[Hub, Viewer, StreamBody]:
    """A new viewer of ``stream_id`` from ``offset``, for ``user`` under ``key`` (see
    :mod:`streaming_app.clients`), registered with this process's hub: what every
    transport does to follow a stream (see :class:`~.viewer.Viewer` for ``acks`` and
    ``resumes``). Returns the hub (which the viewer is to leave), the viewer (whose
    events are to be written) and its snapshot. Raises what :meth:`Hub.watch` raises;
    the viewer is not registered then."""
    viewer = Viewer(
        user, key.key, encoding, limit=key.limit, also=key.also, acks=acks, resumes=resumes
    )
    followed = hub()
    body = await followed.watch(viewer, parse_stream_id(stream_id), offset)
    return followed, viewer, body
