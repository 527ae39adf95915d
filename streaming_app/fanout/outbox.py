"""Publishing from sync code, after the commit: what a cancel, an expiry or a claim
commits is published from ``transaction.on_commit``. Called from an async twin
(:func:`published_after`), the twin publishes once the sync part returns (and waits
until it has gone out, or queues it on the loop's publisher); called from plain sync
code, ``async_to_sync`` does it there."""

from __future__ import annotations

import contextvars
import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from asgiref.sync import async_to_sync, sync_to_async
from django.db import transaction

from ..drive.threads import closing_connections
from .publish import CANCEL, Message, Update, control_group, publish, publish_now

P = ParamSpec("P")
R = TypeVar("R")


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
    func: Callable[P, R], *, thread_sensitive: bool = True, wait: bool = True
) -> Callable[P, Awaitable[R]]:
    """The async twin of a sync operation: run as channels' ``database_sync_to_async``
    does (closing the connections it used: :func:`~streaming_app.drive.threads.closing_connections`),
    then publish what it committed from the caller's task. ``thread_sensitive=False``
    runs it in any thread, for work that shares nothing with the caller's thread.

    The twin returns once what it committed has gone to the channel layer (or been
    given up after ``PUBLISH_TIMEOUT``) and the signals' receivers have run, as code
    whose event loop may end next needs. With ``wait=False`` it hands that to the
    loop's :class:`Publisher` and returns at once (this process's hub has it already),
    ordered before anything published on the loop afterwards: for a server's loop,
    which goes on, and a caller that must not wait for the layer (a drive's claim)."""
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
            if outbox.items and wait:
                await publish_now(outbox.items)
            elif outbox.items:
                publish(outbox.items)

    return twin


def cancel_on_commit(stream_id: uuid.UUID) -> None:
    """From sync code: once the transaction commits, tell the process driving the
    stream, wherever it is, to stop it."""
    publish_on_commit({"type": CANCEL, "stream": stream_id.hex, "group": control_group(stream_id)})
