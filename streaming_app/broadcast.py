"""Fan-out: every committed change of a stream goes to its group on the channel layer.

The core announces commits with the ``stream_committed`` signal (from
``transaction.on_commit``); :func:`publish` turns each into one ``group_send``, so
viewers in any process hear only committed text. Channel layers deliver at most once:
the viewers (:mod:`streaming_app.follow`) fill what they miss from the database.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import uuid
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import get_channel_layer

from . import conf

if TYPE_CHECKING:
    from .writer import StreamRun

logger = logging.getLogger(__name__)

#: The group message type; consumers handle it in ``stream_update``.
UPDATE = "stream.update"


def group_name(stream_id: uuid.UUID) -> str:
    """The stream's group: ``streaming_app.stream.<hex>``, within Channels' rules."""
    return f"streaming_app.stream.{stream_id.hex}"


async def group_send(group: str, message: dict[str, Any]) -> None:
    """Send to a group within PUBLISH_TIMEOUT, or log and let it go.

    Nothing depends on delivery: viewers re-sync from the database, and a writer learns
    of a cancel at its next flush or heartbeat.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await asyncio.wait_for(
            layer.group_send(group, message), timeout=float(conf.get("PUBLISH_TIMEOUT"))
        )
    except Exception:
        logger.warning("could not send %s to %s", message["type"], group, exc_info=True)


def publish(
    sender: Any,
    *,
    stream_id: uuid.UUID,
    offset: int,
    text: str,
    status: str,
    error: str | None,
    **kwargs: Any,
) -> None:
    """Receiver of ``stream_committed``: send the change to the stream's group.

    It runs in the committing thread, after the commit, and waits at most
    ``PUBLISH_TIMEOUT`` for the layer, so that publications of one stream stay in
    order and a layer outage slows persistence by no more than that.
    """
    message = {"type": UPDATE, "offset": offset, "text": text, "status": status, "error": error}
    run_bounded(group_send(group_name(stream_id), message))


def run_bounded(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run ``coroutine`` from sync code, waiting for it at most PUBLISH_TIMEOUT (+1 s).

    In a thread that async code handed work to (a writer's, a request's), it runs on
    that event loop, where the layer's connections live. async_to_sync would do the
    same but wait forever if the loop stopped meanwhile (a server shutting down), and
    a thread stuck there keeps the process from exiting.
    """
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    if getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) != os.getpid():
        loop = None  # inherited across a fork: not ours
    if loop is None or loop.is_closed():
        # No event loop above us (a management command): one of our own.
        async def await_it() -> None:
            await coroutine

        async_to_sync(await_it)()
        return
    try:
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    except RuntimeError:  # the loop closed in between
        coroutine.close()
        return
    try:
        future.result(timeout=float(conf.get("PUBLISH_TIMEOUT")) + 1)
    except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
        future.cancel()
        logger.warning("gave up publishing: the event loop did not run it")


#: The message that asks the process driving a stream to stop it.
CANCEL = "stream.cancel"


def control_group(stream_id: uuid.UUID) -> str:
    """Where cancels go: only the process driving the stream listens there."""
    return f"streaming_app.control.{stream_id.hex}"


def request_cancel(sender: Any, *, stream_id: uuid.UUID, **kwargs: Any) -> None:
    """Receiver of ``stream_cancel_requested``: tell the driving process, wherever it is."""
    run_bounded(group_send(control_group(stream_id), {"type": CANCEL}))


def listen_for_cancel(sender: Any, *, run: StreamRun, **kwargs: Any) -> None:
    """Receiver of ``stream_run_started``: stop the run when a cancel arrives for it."""
    layer = get_channel_layer()
    if layer is not None:
        task = asyncio.get_running_loop().create_task(_listen(layer, run))
        _listeners.add(task)
        task.add_done_callback(_listeners.discard)


_listeners: set[asyncio.Task[None]] = set()


async def _listen(layer: Any, run: StreamRun) -> None:
    group = control_group(run.stream_id)
    try:
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
    except Exception:
        logger.warning("cancels of stream %s will wait for its next flush", run.stream_id)
        return
    ended = asyncio.ensure_future(run.wait())
    try:
        while not ended.done():
            receiving = asyncio.ensure_future(layer.receive(channel))
            await asyncio.wait({receiving, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not receiving.done():
                receiving.cancel()
            elif receiving.exception() is None and receiving.result().get("type") == CANCEL:
                run.cancel()
            elif receiving.exception() is not None:
                await asyncio.sleep(1)  # the layer is away; the database still works
    finally:
        with contextlib.suppress(Exception):
            await layer.group_discard(group, channel)
