"""The driving browser's response body: each piece the moment it is produced, and
what happens when the browser stops reading or hangs up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, TypeVar

from .. import conf
from ..drive.run import StreamRun
from ..models import Stream
from ..permissions import cancels_on_disconnect

logger = logging.getLogger(__name__)

T = TypeVar("T")


class DriverBody:
    """The driving browser's response body: each piece the moment it is produced.

    A run's tap pushes pieces in; the response reads them out, all that is waiting at
    once, and ends with the last piece given to :meth:`end`. If the browser goes away
    the run is told, and goes on without it, or stops where ``CANCEL_ON_DISCONNECT``
    says so for ``user``, who drives ``stream`` (:func:`cancels_on_disconnect`).
    """

    def __init__(self, run: StreamRun, user: Any = None, stream: Stream | None = None) -> None:
        self._run = run
        self._cancel_on_hang_up = (
            cancels_on_disconnect(user, stream)
            if stream is not None
            else conf.get("CANCEL_ON_DISCONNECT") is True
        )
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._max_backlog = int(conf.get("MAX_PENDING_CHARS"))
        # Until the server asks for the body (the response still on its way out, through
        # the middleware), the driver has not stopped reading: it has not started. The
        # feed then holds what comes, up to the most a stream may hold (no limit: all).
        longest = conf.get("MAX_LENGTH")
        self._max_unread = None if longest is None else max(self._max_backlog, int(longest))
        self._reading = False
        self._backlog = 0
        self._ended = False
        self._eof = False
        self._hung_up = False
        self._last = ""
        # What first() took from the queue, for the response to read.
        self._held: list[str | None] = []

    def push(self, piece: str) -> None:
        if self._hung_up or not piece:
            return
        self._backlog += len(piece)
        bound = self._max_backlog if self._reading else self._max_unread
        if bound is not None and self._backlog > bound:
            logger.warning(
                "the driver of stream %s stopped reading; its response is abandoned, "
                "generation goes on",
                self._run.stream_id,
            )
            self._hang_up()
            self._queue.put_nowait(None)
            return
        self._queue.put_nowait(piece)

    def end(self, last: str = "") -> None:
        """The body ends, with ``last`` (which is not a piece: see :meth:`first`)."""
        if self._ended:
            return
        self._ended = True
        self._last = last
        self._queue.put_nowait(None)

    async def first(self) -> bool:
        """Wait for the first piece, or the end: whether a piece came first (False: the
        run ended before producing one). The response reads it as if nothing had been
        waited for. Cancelled (the browser hung up meanwhile), it hangs up."""
        try:
            piece = await self._queue.get()
        except asyncio.CancelledError:
            self._hang_up()
            raise
        self._held.append(piece)
        # Abandoned meanwhile: the response fails as it would have.
        return piece is not None or self._hung_up

    def __aiter__(self) -> DriverBody:
        return self

    async def __anext__(self) -> bytes:
        if self._eof:
            raise StopAsyncIteration
        self._reading = True
        if self._held:
            piece = self._held.pop()
        else:
            try:
                piece = await self._queue.get()
            except asyncio.CancelledError:
                self._hang_up()
                raise
        parts: list[str] = []
        while piece is not None:
            parts.append(piece)
            if self._queue.empty():
                break
            piece = self._queue.get_nowait()
        if piece is None:
            self._eof = True
            if self._hung_up:
                # Abandoned, not finished: fail the response rather than end it
                # cleanly, so the browser does not take a part for the whole.
                raise ConnectionAbortedError("the driving browser stopped reading")
            if self._last:
                parts.append(self._last)
            if not parts:
                raise StopAsyncIteration
        text = "".join(parts)
        self._backlog -= len(text)
        # Bytes: Django writes them as they are (a str would be encoded per piece,
        # looking the charset up in the Content-Type each time).
        return text.encode()

    def close(self) -> None:
        """Called by Django when the response is over, from any thread."""
        # RuntimeError: the loop has closed, so nothing is running any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._hang_up)

    def _hang_up(self) -> None:
        if self._ended or self._hung_up:
            return
        self._hung_up = True
        self._run.detach_tap()
        if self._cancel_on_hang_up:
            self._run.cancel()
