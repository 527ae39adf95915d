"""A driven stream's lifecycle, top to bottom: start, generate, flush, end.

A :class:`StreamRun` runs a claimed stream's source in a task of its own. Every piece
goes at once to an optional *tap* (the driving HTTP response) and to the stream's
writer (:mod:`streaming_app.drive.writer`), whose text the process's committer
(:mod:`streaming_app.drive.committer`) commits beside the generation, never in front of it. Whatever happens (the source raises or is cancelled, the writer fails,
the database goes away, the run's own task is cancelled, however often, its ``on_end``
raises), the run ends its stream with a terminal status, keeps every piece the database
accepts, and stops its writer's heartbeat (design.md, invariant 9). A stream has one run
at a time in a process.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

from .. import conf
from ..errors import public_message
from ..exceptions import LimitExceeded, RunStopped, StreamAlreadyRunning
from ..fanout.publish import published
from ..models import Status, Stream, StreamId, parse_stream_id, storable
from ..parts import Entry, Part
from ..signals import stream_run_started
from .committer import open_writer
from .flush import FlushPolicy, Terminal
from .persist import CancelRequested
from .threads import in_writer_thread
from .writer import StreamWriter

logger = logging.getLogger(__name__)

Append = Callable[[str | Part], Awaitable[None]]
#: What a stream's text comes from: an async iterable of text pieces (an ``openai``
#: stream mapped to its deltas, an async generator), or an async callable that receives
#: ``append`` and awaits it once per piece, as in the Convex component. Pieces are
#: ``str``, or parts (reasoning, tool calls, a finish) from :mod:`streaming_app.parts`.
Source = AsyncIterable[str | Part] | Callable[[Append], Awaitable[Any]]
#: Called with each piece's text as it is appended ("" when only the part map grew:
#: the run's :attr:`StreamRun.parts` says what).
Tap = Callable[[str], None]

# Runs are referenced here until they end: the event loop keeps only weak references
# to tasks, and a run must outlive the request that started it.
_running: dict[asyncio.Task[str], StreamRun] = {}
# The process's runs by stream, on every event loop (so: under a lock): a stream has one.
_by_stream: dict[uuid.UUID, StreamRun] = {}
_by_stream_lock = threading.Lock()


def live_runs() -> list[StreamRun]:
    """The runs of this process that have not ended, on any event loop."""
    return list(_running.values())


class StreamRun:
    """Drive one claimed stream from ``source`` to a terminal status.

    The run is a task of its own, started with an empty context so that it owes
    nothing to the request that started it (its thread, its connections): it goes on
    when the request ends, unless :meth:`cancel` is called. ``user_key`` says whose it
    is, for ``MAX_LIVE_STREAMS_PER_USER``.

    ``stream_id`` is a UUID or its text; a malformed one raises ``Stream.DoesNotExist``
    here.
    """

    def __init__(
        self,
        stream_id: StreamId,
        source: Source,
        *,
        tap: Tap | None = None,
        policy: FlushPolicy | None = None,
    ) -> None:
        self.stream_id = parse_stream_id(stream_id)
        self.source = source
        self.tap = tap
        self.policy = policy
        #: The terminal status, once the run has ended, and its public error message
        #: (for ``error``; None when someone else ended the stream: read the row).
        self.status: str | None = None
        self.error: str | None = None
        #: The stream's part map as its source goes (streaming_app.parts): entries
        #: are only appended, each before its text reaches the tap.
        self.parts: list[Entry] = []
        #: The characters generated, once generation has ended.
        self.length = 0
        self._reason: BaseException | None = None
        self._generation: asyncio.Task[None] | None = None
        self._task: asyncio.Task[str] | None = None
        self._on_end: Callable[[], None] | None = None
        # The publisher's ticket for the stream's last update, once the run has ended it.
        self._published: int | None = None

    def start(self, *, on_end: Callable[[], None] | None = None) -> asyncio.Task[str]:
        """Start the run; ``on_end`` is called once generation has ended, before the
        last flush commits (the driver need not wait for the database); if it raises,
        that is logged and the run ends all the same. Cancelling the returned task stops
        the run as :meth:`cancel` does, however often it is cancelled.

        Raises :class:`~streaming_app.exceptions.StreamAlreadyRunning` if another run
        of the stream is live in this process (on any event loop)."""
        if self._task is not None:
            raise RuntimeError(f"the run of stream {self.stream_id} was started already")
        loop = asyncio.get_running_loop()
        with _by_stream_lock:
            if self.stream_id in _by_stream:
                raise StreamAlreadyRunning(self.stream_id)
            _by_stream[self.stream_id] = self
        self._on_end = on_end
        task = loop.create_task(self._main(), context=contextvars.Context())
        _running[task] = self
        task.add_done_callback(self._ended)
        self._task = task
        stream_run_started.send_robust(sender=StreamRun, run=self)
        return task

    def _ended(self, task: asyncio.Task[str]) -> None:
        _running.pop(task, None)
        with _by_stream_lock:
            if _by_stream.get(self.stream_id) is self:
                del _by_stream[self.stream_id]

    @property
    def task(self) -> asyncio.Task[str]:
        assert self._task is not None, "the run was not started"
        return self._task

    async def wait(self) -> str:
        """Wait for the run to end; its terminal status.

        It returns once the end has gone out too: the channel layer took the stream's
        last update (or gave up after ``PUBLISH_TIMEOUT``) and the ``stream_finished``
        receivers of this process have run, so that a worker may return from
        ``asyncio.run()`` at once. That wait is bounded by ``TIMEOUT`` (logged past it).
        The run's :attr:`task` ends earlier, once the status has committed. Under a
        database outage the status may be committed later, when the database answers
        (or the stream expires); nothing more is waited for then."""
        try:
            return await asyncio.shield(self.task)
        finally:
            if self.task.done():
                await self._gone_out()

    async def _gone_out(self) -> None:
        if self._published is None:
            return
        limit = float(conf.get("TIMEOUT"))
        try:
            await asyncio.wait_for(published(self._published), limit)
        except TimeoutError:
            logger.warning(
                "stream %s: its last update had not gone out after %g seconds",
                self.stream_id,
                limit,
            )

    def detach_tap(self) -> None:
        """Stop feeding the tap (the driver hung up); generation goes on."""
        self.tap = None

    def cancel(self) -> None:
        """Stop generation; what was produced is kept and the stream ends ``cancelled``."""
        self.stop(CancelRequested(f"stream {self.stream_id}: the run was cancelled"))

    def stop(self, reason: BaseException) -> None:
        """Stop generation for ``reason`` (the first reason given is the one kept)."""
        if self._reason is None:
            self._reason = reason
        if self._generation is not None:
            self._generation.cancel()

    # The lifecycle ---------------------------------------------------------------------

    async def _main(self) -> str:
        writer = open_writer(self.stream_id, self.policy)
        # From here on the writer is closed whatever happens: however often this task
        # is cancelled (each cancel is taken in, and given back at the end), whatever
        # on_end does, whatever bug there is in between.
        interrupted = False
        try:
            interrupted = await self._generate_to_end(writer)
            terminal = self._terminal(writer)
        except Exception as exc:
            logger.exception("the run of stream %s failed", self.stream_id)
            if self._generation is not None:
                self._generation.cancel()
            terminal = Terminal(Status.ERROR, public_message(exc))
        self.length = writer.length
        if self._on_end is not None:
            try:
                self._on_end()
            except Exception:
                logger.exception("on_end of the run of stream %s raised", self.stream_id)
        closing = asyncio.ensure_future(writer.close(terminal))
        interrupted = await _through_cancels(closing) or interrupted
        committed = closing.result()
        if writer.faulted is not None:
            terminal = writer.faulted  # a fault in its writing ended it so
        self._published = writer.published
        self.status, self.error = terminal.status, terminal.error
        if writer.ended_elsewhere:
            self.error = None
            reading = asyncio.ensure_future(in_writer_thread(_status_of)(self.stream_id))
            interrupted = await _through_cancels(reading) or interrupted
            self.status = reading.result() or ""
        elif not committed:
            logger.warning("stream %s ended %s, not yet written", self.stream_id, self.status)
        if interrupted:
            raise asyncio.CancelledError
        return self.status

    async def _generate_to_end(self, writer: StreamWriter) -> bool:
        """Run the source to its end (or until the run is stopped); whether this task
        was cancelled meanwhile."""
        self.parts = writer.parts.entries
        writer.on_stop(lambda: self.stop(writer.stopped or RunStopped()))
        loop = asyncio.get_running_loop()
        limit = conf.get("MAX_DURATION")
        timer = (
            loop.call_later(
                float(limit),
                self.stop,
                LimitExceeded(f"the reply went on for more than {float(limit):g} seconds"),
            )
            if limit is not None
            else None
        )
        try:
            self._generation = loop.create_task(self._generate(writer))
            if self._reason is not None:
                self._generation.cancel()
            # A cancel of this task stops generating; the stream ends cancelled, then
            # the cancellation goes on.
            return await _through_cancels(self._generation, on_cancel=self.cancel)
        finally:
            if timer is not None:
                timer.cancel()

    def _terminal(self, writer: StreamWriter) -> Terminal:
        """How the stream ends, from how generation ended and why it was stopped."""
        generation = self._generation
        assert generation is not None and generation.done()
        reason = self._reason
        if isinstance(reason, RunStopped):  # the database, a limit: the app's words
            return Terminal(Status.ERROR, public_message(reason))
        if reason is not None or generation.cancelled():
            return Terminal(Status.CANCELLED)
        exc = generation.exception()
        if exc is not None:
            logger.warning("the source of stream %s raised", self.stream_id, exc_info=exc)
            return Terminal(Status.ERROR, public_message(exc))
        return Terminal(Status.DONE)

    async def _generate(self, writer: StreamWriter) -> None:
        limit = conf.get("MAX_LENGTH")
        max_length = None if limit is None else int(limit)

        entries = writer.parts.entries

        async def append(piece: str | Part) -> None:
            if type(piece) is str and not entries:
                text = storable(piece)  # a plain stream: the hot path
                grew = False
            else:
                known = len(entries)
                text = writer.parts.add(piece, writer.length)
                grew = len(entries) > known
            if not text and not grew:
                return
            over = max_length is not None and writer.length + len(text) > max_length
            if over:
                assert max_length is not None
                text = text[: max_length - writer.length]
            if text or grew:
                if self.tap is not None:
                    self.tap(text)
                writer.append(text)
            if over:
                self.stop(LimitExceeded(f"the reply reached its limit of {max_length} characters"))
                await asyncio.sleep(0)  # the cancellation lands here
            await writer.wait_for_room()

        source = self.source
        if isinstance(source, AsyncIterable):
            await _drain(source, append)
            return
        if not callable(source):
            raise TypeError("a stream's source must be an async iterable or an async callable")
        result = source(append)
        if isinstance(result, AsyncIterable):
            await _drain(result, append)
        elif inspect.isawaitable(result):
            await result
        else:
            raise TypeError(
                "a stream's source callable must return an awaitable or an async iterable"
            )


async def _through_cancels(
    future: asyncio.Future[Any], *, on_cancel: Callable[[], None] | None = None
) -> bool:
    """Wait for ``future`` however often the waiting task is cancelled (calling
    ``on_cancel`` each time); whether it was."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            cancelled = True
            if on_cancel is not None:
                on_cancel()
    return cancelled


async def _drain(pieces: AsyncIterable[Any], append: Append) -> None:
    iterator = aiter(pieces)
    try:
        async for piece in iterator:
            await append(piece)
    finally:
        # Closed now, not whenever it is collected: a cancelled model stream must hang
        # up on the model at once (it bills by the token).
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def _status_of(stream_id: uuid.UUID) -> str | None:
    return Stream.objects.filter(pk=stream_id).values_list("status", flat=True).first()
