"""The per-stream writer: buffer, flush policy, lifecycle. No HTTP, no websockets.

A :class:`StreamRun` runs a claimed stream's generator in a task of its own. Every piece
goes at once to an optional *tap* (the driving HTTP response) and into a
:class:`StreamWriter`, whose own task flushes the buffer to the database in order, one
transaction per flush, beside the generator and never in front of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    transaction,
)
from django.utils import timezone

from . import conf
from .models import Chunk, Status, Stream
from .signals import stream_run_started
from .streams import announce, compact_stream

logger = logging.getLogger(__name__)

Append = Callable[[str], Awaitable[None]]
#: What a stream's text comes from: an async iterable of text pieces (an ``openai``
#: stream mapped to its deltas, an async generator), or an async callable that receives
#: ``append`` and awaits it once per piece, as in the Convex component.
Source = AsyncIterable[str] | Callable[[Append], Awaitable[Any]]
Tap = Callable[[str], None]

# A sentence or a line ends the buffer: terminal punctuation (Latin, CJK, ellipsis),
# optionally closed by quotes or brackets, then optional whitespace; or a newline.
_BOUNDARY = re.compile(
    r"(?:[.!?\u2026\u3002\uff01\uff1f][\"')\]\u00bb\u201d\u2019]*[ \t]*|\n\s*)\Z"
)
# What neither a database nor UTF-8 can hold: NUL (Postgres text) and lone surrogates.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def ends_at_boundary(text: str) -> bool:
    return _BOUNDARY.search(text) is not None


def clean_piece(piece: object) -> str:
    """Check that a piece is text and make it storable, keeping its length.

    NUL and lone surrogates become U+FFFD, for the driver and the database alike, so
    offsets agree everywhere.
    """
    if not isinstance(piece, str):
        raise TypeError(f"a stream's pieces must be str, not {type(piece).__name__}")
    return _UNSTORABLE.sub("\ufffd", piece)


@dataclass(frozen=True)
class FlushPolicy:
    """When a writer flushes its buffer. See ``docs/flush-policy.md``."""

    min_interval: float
    max_interval: float
    max_chars: int

    @classmethod
    def from_settings(cls) -> FlushPolicy:
        return cls(
            min_interval=float(conf.get("MIN_FLUSH_INTERVAL")),
            max_interval=float(conf.get("MAX_FLUSH_INTERVAL")),
            max_chars=int(conf.get("MAX_BUFFER_CHARS")),
        )

    def due_at(
        self, *, buffered: int, at_boundary: bool, oldest: float, last_flush: float
    ) -> float:
        """The monotonic time at which a non-empty buffer is due to be flushed."""
        if buffered >= self.max_chars:
            return float("-inf")
        deadline = oldest + self.max_interval
        if at_boundary:
            deadline = min(deadline, last_flush + self.min_interval)
        return deadline


@dataclass(frozen=True)
class Batch:
    """Text sealed for one flush; retried as it is until it commits."""

    seq: int
    offset: int
    text: str
    # (status, error) when this flush also ends the stream.
    terminal: tuple[str, str | None] | None = None

    @property
    def end(self) -> int:
        return self.offset + len(self.text)


class StreamEnded(Exception):
    """The stream stopped being ours: deleted, cancelled or expired by someone else."""


class CancelRequested(Exception):
    """Someone asked the stream to stop: the writer may still write its last batch."""


def _refused(stream_id: uuid.UUID, row: Mapping[str, Any] | None) -> Exception:
    """Why a writer's conditional UPDATE of a stream matched no row."""
    if row is not None and row["status"] == Status.STREAMING and row["cancel_requested_at"]:
        return CancelRequested(f"stream {stream_id} was asked to stop")
    return StreamEnded(f"stream {stream_id} is {row['status'] if row else 'deleted'}")


def write_batch(stream_id: uuid.UUID, batch: Batch) -> None:
    """Commit one batch: advance the stream, insert its chunk, announce on commit.

    Safe to retry after an ambiguous failure (a commit whose answer was lost): a batch
    that already committed is recognised by the stream's length and announced again.
    Raises :class:`StreamEnded` if the stream is no longer ``streaming``, and
    :class:`CancelRequested` (for a batch that does not end the stream) if it was asked
    to stop.
    """
    now = timezone.now()
    fields: dict[str, Any] = {"length": batch.end, "updated_at": now}
    if batch.terminal:
        status, error = batch.terminal
        fields.update(status=status, error=error or "", finished_at=now)
    with transaction.atomic():
        # The UPDATE comes first: it takes the stream's row lock, and its condition
        # makes "terminal is final" and "one writer" hold inside the database.
        live = Stream.objects.filter(pk=stream_id, status=Status.STREAMING, length=batch.offset)
        if not batch.terminal:
            live = live.filter(cancel_requested_at__isnull=True)
        advanced = live.update(**fields)
        if advanced:
            if batch.text:
                Chunk.objects.create(
                    stream_id=stream_id, seq=batch.seq, offset=batch.offset, text=batch.text
                )
        else:
            row = (
                Stream.objects.filter(pk=stream_id)
                .values("status", "length", "cancel_requested_at")
                .first()
            )
            expected = batch.terminal[0] if batch.terminal else Status.STREAMING
            if row is None or row["length"] != batch.end or row["status"] != expected:
                raise _refused(stream_id, row)
            # Already committed by an earlier attempt: announce it again below.
        announce(
            stream_id,
            offset=batch.offset,
            text=batch.text,
            status=batch.terminal[0] if batch.terminal else Status.STREAMING,
            error=batch.terminal[1] if batch.terminal else None,
        )


def touch_stream(stream_id: uuid.UUID) -> None:
    """The heartbeat of a live but silent writer. Raises StreamEnded if the stream is not
    ours any more, CancelRequested if it was asked to stop."""
    if not Stream.objects.filter(
        pk=stream_id, status=Status.STREAMING, cancel_requested_at__isnull=True
    ).update(updated_at=timezone.now()):
        row = (
            Stream.objects.filter(pk=stream_id)
            .values("status", "length", "cancel_requested_at")
            .first()
        )
        raise _refused(stream_id, row)


_executor: ThreadPoolExecutor | None = None


def _writer_executor() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(
            max_workers=int(conf.get("WRITER_THREADS")), thread_name_prefix="streaming_app"
        )
    return _executor


async def run_db(func: Callable[..., Any], *args: Any) -> Any:
    """Run database work in the writers' threads, closing connections as Django would.

    Writers run outside any request, so they manage connections as channels'
    ``database_sync_to_async`` does: obsolete or broken ones are closed before and
    after each call, honouring ``CONN_MAX_AGE``.
    """

    def call() -> Any:
        close_old_connections()
        try:
            return func(*args)
        finally:
            close_old_connections()

    return await sync_to_async(call, thread_sensitive=False, executor=_writer_executor())()


_RETRYABLE = (OperationalError, InterfaceError)
# A flush that takes longer than this, retries included, is logged.
SLOW_FLUSH = 1.0


class StreamWriter:
    """Buffers one stream's pieces and flushes them in order from a task of its own.

    ``append`` never waits on the database. ``wait_for_room`` waits only when more than
    ``MAX_PENDING_CHARS`` are not yet committed, which bounds a stream's memory.

    The writer tells its owner (``on_stop``) when the stream must stop: someone else
    ended it (``ended`` is set), someone asked it to stop (``cancel_requested``), or
    the database has been away for ``DATABASE_OUTAGE_LIMIT`` (``outage`` is set). In
    the last two cases it still writes what it has when closed.
    """

    def __init__(self, stream_id: uuid.UUID, *, policy: FlushPolicy | None = None) -> None:
        self.stream_id = stream_id
        self.policy = policy or FlushPolicy.from_settings()
        self.heartbeat = float(conf.get("HEARTBEAT_INTERVAL"))
        self.max_pending = int(conf.get("MAX_PENDING_CHARS"))
        self.outage_limit = float(conf.get("DATABASE_OUTAGE_LIMIT"))
        self.give_up_after = float(conf.get("TIMEOUT"))
        self.flushes = 0
        self.ended: StreamEnded | None = None
        self.cancel_requested = False
        self.outage: str | None = None
        self._pieces: list[str] = []
        self._buffered = 0
        self._oldest = 0.0
        self._at_boundary = False
        self._seq = 0
        self._offset = 0
        # A batch refused because of a cancel: written with the rest when closing.
        self._unwritten: Batch | None = None
        self._in_flight = 0
        self._last_flush = time.monotonic()
        self._last_write = self._last_flush
        self._closing: tuple[str, str | None] | None = None
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._on_stop: list[Callable[[], None]] = []

    @property
    def pending(self) -> int:
        """Characters appended but not yet committed."""
        return self._buffered + self._in_flight

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the stream must stop (see the class docstring)."""
        self._on_stop.append(callback)

    def append(self, text: str) -> None:
        if not text or self._closing:
            return
        if not self._pieces:
            self._oldest = time.monotonic()
            self._wake.set()
        self._pieces.append(text)
        self._buffered += len(text)
        at_boundary = ends_at_boundary(text)
        if (at_boundary and not self._at_boundary) or self._buffered >= self.policy.max_chars:
            self._wake.set()
        self._at_boundary = at_boundary
        if self.pending > self.max_pending:
            self._room.clear()

    async def wait_for_room(self) -> None:
        await self._room.wait()

    async def close(self, status: str, error: str | None = None) -> None:
        """Flush what is left together with the terminal status, and wait for it."""
        if self._closing is None:
            self._closing = (status, error)
        self._wake.set()
        if self._task is not None:
            await asyncio.shield(self._task)

    def _seal(self, terminal: tuple[str, str | None] | None) -> Batch:
        text = "".join(self._pieces)
        self._pieces.clear()
        self._buffered = 0
        self._at_boundary = False
        if self._unwritten is not None:
            # Never committed (the database said so): it may take more text.
            batch = Batch(
                seq=self._unwritten.seq,
                offset=self._unwritten.offset,
                text=self._unwritten.text + text,
                terminal=terminal,
            )
            self._unwritten = None
        else:
            batch = Batch(seq=self._seq, offset=self._offset, text=text, terminal=terminal)
        self._seq = batch.seq + (1 if batch.text else 0)
        self._offset = batch.end
        self._in_flight = len(batch.text)
        return batch

    def _stop(self) -> None:
        self._room.set()
        for callback in self._on_stop:
            callback()

    async def _run(self) -> None:
        try:
            while True:
                now = time.monotonic()
                if self._closing is not None:
                    await self._write(self._seal(self._closing))
                    return
                due = beat = float("inf")
                if not (self.cancel_requested or self.outage):
                    if self._pieces:
                        due = self.policy.due_at(
                            buffered=self._buffered,
                            at_boundary=self._at_boundary,
                            oldest=self._oldest,
                            last_flush=self._last_flush,
                        )
                        if due <= now:
                            batch = self._seal(None)
                            try:
                                await self._write(batch)
                            except CancelRequested:
                                self._unwritten = batch
                                self._in_flight = 0
                                self.cancel_requested = True
                                self._stop()
                            continue
                    beat = self._last_write + self.heartbeat
                    if beat <= now:
                        await self._touch()
                        continue
                self._wake.clear()
                wait = min(due, beat) - now
                with contextlib.suppress(TimeoutError):
                    # Stopped (cancel, outage): nothing to do until close() wakes us.
                    await asyncio.wait_for(
                        self._wake.wait(), None if wait == float("inf") else wait
                    )
        except StreamEnded as exc:
            self.ended = exc
            self._stop()

    def _database_away(self) -> None:
        if self.outage:
            return
        self.outage = f"the database was unreachable for more than {self.outage_limit:g} seconds"
        logger.error("stream %s stops: %s", self.stream_id, self.outage)
        self._stop()

    async def _touch(self) -> None:
        try:
            await run_db(touch_stream, self.stream_id)
        except CancelRequested:
            self.cancel_requested = True
            self._stop()
        except _RETRYABLE:
            logger.warning("heartbeat of stream %s failed; will retry", self.stream_id)
        self._last_write = time.monotonic()

    async def _write(self, batch: Batch) -> None:
        """Write one batch, retrying connection errors with backoff, as it is.

        The outage clock starts with the batch's first attempt, not its first failure:
        with a connection pool, an attempt waits for a connection instead of failing.
        """
        delay, since = 0.05, time.monotonic()
        while True:
            attempt = asyncio.ensure_future(run_db(write_batch, self.stream_id, batch))
            try:
                if not self.outage:
                    limit = since + self.outage_limit - time.monotonic()
                    done, _ = await asyncio.wait({attempt}, timeout=max(limit, 0.0))
                    if not done:
                        self._database_away()
                await attempt
                if (took := time.monotonic() - since) > SLOW_FLUSH:
                    logger.warning(
                        "flush %d of stream %s took %.1fs (the database was slow or away)",
                        batch.seq,
                        self.stream_id,
                        took,
                    )
                break
            except (StreamEnded, CancelRequested):
                raise
            except _RETRYABLE as exc:
                now = time.monotonic()
                if batch.terminal and now - since > self.give_up_after:
                    # Past the timeout the stream is anyone's to expire: stop trying.
                    logger.error("gave up ending stream %s: %s", self.stream_id, exc)
                    raise StreamEnded(f"stream {self.stream_id} could not be ended") from exc
                if now - since > self.outage_limit:
                    self._database_away()
                logger.warning(
                    "flush %d of stream %s failed (%s); retrying in %.2fs",
                    batch.seq,
                    self.stream_id,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except DatabaseError:
                logger.exception(
                    "flush %d of stream %s cannot be written", batch.seq, self.stream_id
                )
                raise StreamEnded(f"stream {self.stream_id} cannot be written") from None
        self.flushes += 1
        self._last_flush = self._last_write = time.monotonic()
        self._in_flight = 0
        if self.pending <= self.max_pending:
            self._room.set()


# Runs are referenced here until they end: the event loop keeps only weak references
# to tasks, and a run must outlive the request that started it.
_running: set[asyncio.Task[Any]] = set()


class StreamRun:
    """Drive one claimed stream from ``source`` to a terminal status.

    The run is a task of its own, started with an empty context so that it owes
    nothing to the request that started it (its thread, its connections): it goes on
    when the request ends, unless :meth:`cancel` is called.
    """

    def __init__(
        self,
        stream_id: uuid.UUID,
        source: Source,
        *,
        tap: Tap | None = None,
        policy: FlushPolicy | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.source = source
        self.tap = tap
        self.policy = policy
        self.status: str | None = None
        self._cancelled = False
        self._generation: asyncio.Task[None] | None = None
        self._task: asyncio.Task[str] | None = None
        self._end_tap: Callable[[], None] | None = None

    def start(self, *, on_end: Callable[[], None] | None = None) -> asyncio.Task[str]:
        """Start the run; ``on_end`` is called once generation has ended, before the
        last flush commits (the driver need not wait for the database)."""
        self._end_tap = on_end
        task = asyncio.get_running_loop().create_task(self._main(), context=contextvars.Context())
        _running.add(task)
        task.add_done_callback(_running.discard)
        self._task = task
        stream_run_started.send_robust(sender=StreamRun, run=self)
        return task

    async def wait(self) -> str:
        """Wait for the stream's terminal status, committed."""
        assert self._task is not None, "the run was not started"
        return await asyncio.shield(self._task)

    def detach_tap(self) -> None:
        """Stop feeding the tap (the driver hung up); generation goes on."""
        self.tap = None

    def cancel(self) -> None:
        """Stop generation; what was produced is kept and the stream ends ``cancelled``."""
        self._cancelled = True
        if self._generation is not None:
            self._generation.cancel()

    async def _main(self) -> str:
        writer = StreamWriter(self.stream_id, policy=self.policy)
        writer.start()
        writer.on_stop(self._stop_generation)
        self._generation = asyncio.get_running_loop().create_task(self._generate(writer))
        if self._cancelled:
            self._generation.cancel()
        status, error = Status.DONE, None
        try:
            await self._generation
        except asyncio.CancelledError:
            if not (self._cancelled or writer.ended or writer.cancel_requested or writer.outage):
                raise
            status = Status.CANCELLED
        except Exception as exc:
            logger.warning("generator of stream %s raised", self.stream_id, exc_info=True)
            status, error = Status.ERROR, f"{type(exc).__name__}: {exc}"
        finally:
            if self._end_tap is not None:
                self._end_tap()
        if writer.outage:
            status, error = Status.ERROR, writer.outage
        await writer.close(status, error)
        if writer.ended is not None:
            # Someone else ended the stream; its status is theirs.
            self.status = await run_db(
                lambda: (
                    Stream.objects.filter(pk=self.stream_id)
                    .values_list("status", flat=True)
                    .first()
                )
            )
        else:
            self.status = status
            if conf.get("COMPACT_FINISHED"):
                await self._compact()
        return self.status or ""

    async def _compact(self) -> None:
        # Viewers have had the status already; merging the chunks only spares later
        # reads some rows, so a failure here is logged, never the stream's.
        try:
            await run_db(compact_stream, self.stream_id)
        except Exception:
            logger.warning("could not compact stream %s", self.stream_id, exc_info=True)

    def _stop_generation(self) -> None:
        if self._generation is not None:
            self._generation.cancel()

    async def _generate(self, writer: StreamWriter) -> None:
        async def append(piece: str) -> None:
            text = clean_piece(piece)
            if not text:
                return
            if self.tap is not None:
                self.tap(text)
            writer.append(text)
            await writer.wait_for_room()

        source = self.source
        if isinstance(source, AsyncIterable):
            await self._drain(source, append)
            return
        if not callable(source):
            raise TypeError("a stream's source must be an async iterable or an async callable")
        result = source(append)
        if isinstance(result, AsyncIterable):
            await self._drain(result, append)
        elif inspect.isawaitable(result):
            await result
        else:
            raise TypeError(
                "a stream's source callable must return an awaitable or an async iterable"
            )

    @staticmethod
    async def _drain(pieces: AsyncIterable[Any], append: Append) -> None:
        try:
            async for piece in pieces:
                await append(piece)
        finally:
            # Closed now, not whenever it is collected: a cancelled model stream must
            # hang up on the model at once (it bills by the token).
            aclose = getattr(pieces, "aclose", None)
            if aclose is not None:
                await aclose()
