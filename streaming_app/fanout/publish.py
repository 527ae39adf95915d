"""Publishing: every committed change of a stream, after its commit, to this process's
hub at once and to every other process through the channel layer; and the control
messages (cancel a run, re-check viewers' permissions).

The writers publish once a flush has committed, through their event loop's
:class:`Publisher`: this process's hub has each update at once, the channel layer and
the signals' receivers get them in order from the publisher's task, so that neither a
writer nor a drive's first token waits for them; sync code that commits publishes
through :mod:`.outbox`. No update is ever published before its commit; every call to
the layer is bounded (:func:`layer_call`), and channel layers deliver at most once:
viewers fill what they miss from the database.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypeVar

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from .. import conf
from ..loops import PerLoop
from ..models import Stream, StreamId, is_finished, parse_stream_id
from ..signals import stream_committed, stream_finished

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
    """What publishing needs of the process's hub (:mod:`streaming_app.fanout.hub`)."""

    origin: str

    def deliver(self, message: Message) -> None: ...


_local_hubs: PerLoop[LocalHub] = PerLoop()


def set_local_hub(loop: asyncio.AbstractEventLoop, hub: LocalHub) -> None:
    """Hand the messages published on ``loop`` to ``hub`` at once. The hub ignores the
    same messages when the channel layer brings them back (same ``origin``)."""
    _local_hubs.set(hub, loop)


def _deliver_locally(message: Message) -> Message:
    """Give ``message`` to this event loop's hub; return it as the layer should carry it."""
    hub = _local_hubs.peek()
    if hub is None:
        return message
    try:
        hub.deliver(message)
    except Exception:  # (the hub's own catches all) the committer must not stop for it
        logger.exception("local delivery of %s failed", message["type"])
    return {**message, "origin": hub.origin}


async def layer_call(call: Awaitable[R]) -> R:
    """Await one call to the channel layer (a send, a join, a leave, a new channel) for
    at most ``PUBLISH_TIMEOUT``: a layer that accepts and never answers fails like one
    that refuses, with ``TimeoutError``. A call that timed out may still take effect
    when the layer answers."""
    return await asyncio.wait_for(call, timeout=float(conf.get("PUBLISH_TIMEOUT")))


async def group_send(group: str, message: Message) -> bool:
    """Send to a group within PUBLISH_TIMEOUT; log and let it go otherwise. Nothing
    depends on delivery: viewers fill gaps from the database, and a writer learns of a
    cancel at its next flush or heartbeat. True if the layer took it."""
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        await layer_call(layer.group_send(group, message))
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


#: An item on its way to the channel layer: its group, the message as the layer carries
#: it (delivered to this process's hub already), and the update whose signals follow.
_Outgoing = tuple[str, Message, Update | None]


def _outgoing(item: Update | Message) -> _Outgoing:
    """Deliver ``item`` to this event loop's hub at once; return it as it goes on."""
    if isinstance(item, Update):
        return group_name(item.stream_id), _deliver_locally(item.message()), item
    message = {key: value for key, value in item.items() if key != "group"}
    return item["group"], _deliver_locally(message), None


async def _send(outgoing: _Outgoing, *, to_layer: bool = True) -> None:
    group, message, update = outgoing
    if to_layer:
        await group_send(group, message)
    if update is not None:
        await _signal(update)


class Publisher:
    """An event loop's publications on their way out, in the order they were put, so
    that neither the writers nor a drive's first token wait for the channel layer or
    for the signals' receivers. One task sends them to the layer; another, behind it,
    runs their signals' receivers in the same order: a receiver that is slow, or never
    returns, holds up the receivers after it (and :meth:`sent`), never fan-out. While
    more than ``MAX_QUEUED`` wait for the layer (it is away), updates are not sent to
    it (viewers fill the gap from the database); the signals still are."""

    MAX_QUEUED = 10_000

    def __init__(self) -> None:
        self._queue: deque[_Outgoing] = deque()
        #: Items sent to the layer (or given up), whose receivers are still to run.
        self._signals: deque[Update | None] = deque()
        self._task: asyncio.Task[None] | None = None
        self._signalling: asyncio.Task[None] | None = None
        #: Items put so far, and items sent (or given up) with their signals fired.
        self._put = 0
        self._done = 0
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}

    def put(self, items: Iterable[Update | Message]) -> int:
        """Deliver ``items`` to this process's hub at once and queue them for the layer;
        return a ticket for :meth:`sent`."""
        for item in items:
            self._queue.append(_outgoing(item))
            self._put += 1
        if self._queue and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(
                self._send_queued(), context=contextvars.Context()
            )
        return self._put

    async def sent(self, ticket: int) -> None:
        """Wait until every item put up to ``ticket`` (what :meth:`put` returned) has
        gone to the layer, or been given up after ``PUBLISH_TIMEOUT``, and its
        signals' receivers have run. Items put later are not waited for."""
        if ticket <= self._done:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(ticket, []).append(waiter)
        await waiter

    async def drain(self) -> None:
        """Wait until everything put so far has been sent."""
        await self.sent(self._put)

    async def _send_queued(self) -> None:
        skipped = 0
        while self._queue:
            group, message, update = self._queue.popleft()
            if len(self._queue) < self.MAX_QUEUED:
                try:
                    await group_send(group, message)
                except Exception:  # a bug: the publications behind it still go
                    logger.exception("publishing %.200r failed", message)
            else:
                skipped += 1
            self._signals.append(update)
            if self._signalling is None or self._signalling.done():
                self._signalling = asyncio.get_running_loop().create_task(
                    self._signal_queued(), context=contextvars.Context()
                )
        if skipped:
            logger.warning("%d updates were not sent to the channel layer", skipped)

    async def _signal_queued(self) -> None:
        while self._signals:
            update = self._signals.popleft()
            if update is not None:
                try:
                    await _signal(update)
                except Exception:  # a bug: the signals behind it still go
                    logger.exception("the signals of %r failed", update)
            self._done += 1
            for waiter in self._waiters.pop(self._done, ()):
                if not waiter.done():
                    waiter.set_result(None)


_publishers: PerLoop[Publisher] = PerLoop(Publisher)


def publisher() -> Publisher:
    return _publishers.get()


def publish(items: Iterable[Update | Message]) -> int:
    """Publish committed updates (and control messages), in order, from the event
    loop, without waiting: this process's viewers get them at once, other processes
    through the channel layer, from the loop's :class:`Publisher`. Returns a ticket:
    ``await published(ticket)`` waits until they have gone out."""
    return publisher().put(items)


async def published(ticket: int) -> None:
    """Wait until what :func:`publish` gave ``ticket`` for has been sent to the layer
    (or given up after ``PUBLISH_TIMEOUT``) and its signals' receivers have run: for
    code whose event loop may end next (a worker's ``asyncio.run``)."""
    await publisher().sent(ticket)


async def publish_now(items: Iterable[Update | Message]) -> None:
    """Publish committed updates and control messages and wait until the layer took
    them (or gave up), ahead of the publisher's queue: for code that must know they
    have gone out (a cancel, sync code)."""
    for item in items:
        await _send(_outgoing(item))


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
