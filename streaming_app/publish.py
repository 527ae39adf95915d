"""Publishing: every committed change of a stream, after its commit, to this process's
hub at once and to every other process through the channel layer; and the control
messages (cancel a run, re-check viewers' permissions).

The writers publish from their own task once a flush has committed. Sync code that
commits (a cancel, an expiry) publishes from ``transaction.on_commit``: called from an
async twin (:func:`published_after`), the twin publishes from its own task once the
sync part returns; called from plain sync code, ``async_to_sync`` does it there. No
update is ever published before its commit, and channel layers deliver at most once:
viewers fill what they miss from the database.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar

from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction

from . import conf
from .models import Stream, StreamId, is_finished, parse_stream_id
from .persist import closing_connections
from .signals import stream_committed, stream_finished

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Group message types.
UPDATE = "stream.update"
CANCEL = "stream.cancel"
RECHECK = "stream.recheck"

Message = dict[str, Any]


def group_name(stream_id: uuid.UUID) -> str:
    """The stream's group, that its viewers' processes join: ``streaming_app.stream.<hex>``."""
    return f"streaming_app.stream.{stream_id.hex}"


def control_group(stream_id: uuid.UUID) -> str:
    """Where a stream's cancels go: only the process driving it listens there."""
    return f"streaming_app.control.{stream_id.hex}"


@dataclass(frozen=True)
class Update:
    """A committed change of a stream: ``text`` starting at code point ``offset``
    (possibly empty), and the stream's status after it."""

    stream_id: uuid.UUID
    offset: int
    text: str
    status: str
    error: str | None
    #: Entries of the stream's part map that committed with this change, the first
    #: being entry number ``parts_from`` (streaming_app.parts).
    parts: tuple[dict[str, Any], ...] = ()
    parts_from: int = 0
    #: Resolved by the publisher once the update has gone out: the channel layer took
    #: it (or it gave up after PUBLISH_TIMEOUT) and its signals were sent. Set on the
    #: updates someone waits for (a run's last: :meth:`StreamRun.wait`).
    sent: asyncio.Future[None] | None = field(default=None, compare=False, repr=False)

    @property
    def finished(self) -> bool:
        return is_finished(self.status)

    def message(self) -> Message:
        message = {
            "type": UPDATE,
            "stream": self.stream_id.hex,
            "offset": self.offset,
            "text": self.text,
            "status": self.status,
            "error": self.error,
        }
        if self.parts:
            message["parts"] = list(self.parts)
            message["parts_from"] = self.parts_from
        return message


class LocalHub(Protocol):
    """What publishing needs of the process's hub (:mod:`streaming_app.hub`)."""

    origin: str

    def deliver(self, message: Message) -> None: ...


_local_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LocalHub] = (
    weakref.WeakKeyDictionary()
)


def set_local_hub(loop: asyncio.AbstractEventLoop, hub: LocalHub) -> None:
    """Hand the messages published on ``loop`` to ``hub`` at once. The hub ignores the
    same messages when the channel layer brings them back (same ``origin``)."""
    _local_hubs[loop] = hub


def _deliver_locally(message: Message) -> Message:
    """Give ``message`` to this event loop's hub; return it as the layer should carry it."""
    hub = _local_hubs.get(asyncio.get_running_loop())
    if hub is None:
        return message
    try:
        hub.deliver(message)
    except Exception:  # (the hub's own catches all) the committer must not stop for it
        logger.exception("local delivery of %s failed", message["type"])
    return {**message, "origin": hub.origin}


async def group_send(group: str, message: Message) -> bool:
    """Send to a group within PUBLISH_TIMEOUT; log and let it go otherwise. Nothing
    depends on delivery: viewers fill gaps from the database, and a writer learns of a
    cancel at its next flush or heartbeat. True if the layer took it."""
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        await asyncio.wait_for(
            layer.group_send(group, message), timeout=float(conf.get("PUBLISH_TIMEOUT"))
        )
    except Exception as exc:
        logger.warning("could not send %s to %s: %r", message["type"], group, exc)
        return False
    return True


async def _signal(update: Update) -> None:
    fields = {
        "stream_id": update.stream_id,
        "offset": update.offset,
        "text": update.text,
        "status": update.status,
        "error": update.error,
        "parts": list(update.parts),
    }
    for signal in (stream_committed, stream_finished) if update.finished else (stream_committed,):
        if signal.has_listeners(Stream):
            for receiver, result in await signal.asend_robust(sender=Stream, **fields):
                if isinstance(result, Exception):
                    logger.error("%r failed", receiver, exc_info=result)


class Publisher:
    """An event loop's updates on their way to the channel layer, in commit order, so
    that the writers never wait for the layer. While more than ``MAX_QUEUED`` wait (the
    layer is away), updates are not sent to it (viewers fill the gap from the
    database); the signals still are."""

    MAX_QUEUED = 10_000

    def __init__(self) -> None:
        self._queue: deque[tuple[Update, Message]] = deque()
        self._task: asyncio.Task[None] | None = None

    def put(self, updates: Iterable[Update]) -> None:
        for update in updates:
            self._queue.append((update, _deliver_locally(update.message())))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._send(), context=contextvars.Context()
            )

    async def _send(self) -> None:
        skipped = 0
        while self._queue:
            update, message = self._queue.popleft()
            try:
                if len(self._queue) < self.MAX_QUEUED:
                    await group_send(group_name(update.stream_id), message)
                else:
                    skipped += 1
                await _signal(update)
            finally:
                if update.sent is not None and not update.sent.done():
                    update.sent.set_result(None)
        if skipped:
            logger.warning("%d updates were not sent to the channel layer", skipped)

    async def drain(self) -> None:
        """Wait until everything put so far has been sent."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)


_publishers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Publisher] = (
    weakref.WeakKeyDictionary()
)


def publisher() -> Publisher:
    loop = asyncio.get_running_loop()
    if loop not in _publishers:
        _publishers[loop] = Publisher()
    return _publishers[loop]


def publish(updates: Iterable[Update]) -> None:
    """Publish committed updates, in order, from the event loop: this process's viewers
    get them at once, other processes through the channel layer."""
    publisher().put(updates)


async def publish_now(items: Iterable[Update | Message]) -> None:
    """Publish committed updates and control messages and wait until the layer took
    them (or gave up): for code whose event loop may end right after."""
    for item in items:
        if isinstance(item, Update):
            await group_send(group_name(item.stream_id), _deliver_locally(item.message()))
            await _signal(item)
        else:
            message = {key: value for key, value in item.items() if key != "group"}
            await group_send(item["group"], _deliver_locally(message))


@dataclass
class _Outbox:
    items: list[Update | Message] = field(default_factory=list)
    open: bool = True


_outbox: contextvars.ContextVar[_Outbox | None] = contextvars.ContextVar(
    "streaming_app_outbox", default=None
)


def _publish_from_sync(item: Update | Message) -> None:
    outbox = _outbox.get()
    if outbox is not None and outbox.open:
        outbox.items.append(item)
    else:
        async_to_sync(publish_now)([item])


def publish_on_commit(item: Update | Message) -> None:
    """From sync code: publish ``item`` once the current transaction commits (at once
    outside one)."""
    transaction.on_commit(functools.partial(_publish_from_sync, item), robust=True)


def published_after(
    func: Callable[P, R], *, thread_sensitive: bool = True
) -> Callable[P, Awaitable[R]]:
    """The async twin of a sync operation: run as channels' ``database_sync_to_async``
    does (closing the connections it used: :func:`~streaming_app.persist.closing_connections`),
    then publish what it committed from the caller's task. ``thread_sensitive=False`` runs it in any thread, for work that
    shares nothing with the caller's thread."""
    call = sync_to_async(closing_connections(func), thread_sensitive=thread_sensitive)

    @functools.wraps(func)
    async def twin(*args: P.args, **kwargs: P.kwargs) -> R:
        outbox = _Outbox()
        token = _outbox.set(outbox)
        try:
            return await call(*args, **kwargs)
        finally:
            _outbox.reset(token)
            outbox.open = False
            if outbox.items:
                await publish_now(outbox.items)

    return twin


def cancel_on_commit(stream_id: uuid.UUID) -> None:
    """From sync code: once the transaction commits, tell the process driving the
    stream, wherever it is, to stop it."""
    publish_on_commit({"type": CANCEL, "stream": stream_id.hex, "group": control_group(stream_id)})


def recheck_message(stream_id: uuid.UUID) -> Message:
    return {"type": RECHECK, "stream": stream_id.hex, "group": group_name(stream_id)}


async def adisconnect_viewers(stream_id: StreamId) -> None:
    """Re-check the permission of every viewer of the stream, in every process (through
    the channel layer), and disconnect those the policy now refuses: websocket close
    4403, Server-Sent Events end. Call it after a change that may take a stream away
    from some of its readers. Viewers are also re-checked at every re-sync. Raises
    ``Stream.DoesNotExist`` for a malformed id."""
    await publish_now([recheck_message(parse_stream_id(stream_id))])


def disconnect_viewers(stream_id: StreamId) -> None:
    """:func:`adisconnect_viewers` from sync code."""
    async_to_sync(adisconnect_viewers)(stream_id)
