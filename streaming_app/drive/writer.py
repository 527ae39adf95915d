"""The process's writers: each live stream's buffer, committed together.

One :class:`Committer` per event loop (per server process) holds a
:class:`StreamWriter` for each stream driven there. It wakes when a stream's flush
falls due (``flush.FlushPolicy``) or its heartbeat does, and commits every write due at
that moment, across streams, in one transaction (``persist.write``); never more often
than once per ``FLUSH_TICK``, so a process's transactions per second stay bounded
however many streams it drives. Then it publishes each stream's committed delta.

Whatever the database does, a writer ends: a batch is retried as it is while the
connection fails; a stream whose writes have not come back for
``DATABASE_OUTAGE_LIMIT`` is stopped (its run ends, its last batch is written when the
database answers); a stream whose write the database refuses is stopped and ended
``error``. A writer beats for its stream only while its run is generating.

The committer is a bulkhead: a fault in one stream's writing (its outcome missing, its
batch wrong, an exception from its writer) is logged with its traceback and ends that
stream ``error`` at the length the database has; the other streams go on. Only a bug
of the committer's own ends every writer of its loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from django.db import OperationalError

from .. import conf
from ..errors import public_message
from ..exceptions import DatabaseOutage, RunStopped, StreamAlreadyRunning, WriteFailed
from ..fanout.publish import Update, publish
from ..loops import PerLoop
from ..models import Status, parse_stream_id
from ..parts import PartMap
from .flush import Batch, Buffer, FlushPolicy, Terminal
from .persist import (
    RETRYABLE,
    CancelRequested,
    Outcome,
    StreamEnded,
    Write,
    WriteConflict,
    end_where_it_is,
    in_writer_thread,
)
from .persist import write as write_in_transaction

logger = logging.getLogger(__name__)

#: A tick's transaction that has not come back for this long is left to its thread,
#: and its writes are tried again in another.
ABANDON_AFTER = 60.0
# A write that takes longer than this, retries included, is logged.
SLOW_WRITE = 1.0

Result = Outcome | BaseException
T = TypeVar("T")


class MissingOutcome(Exception):
    """A transaction committed without saying what became of one stream's write (a
    bug): whether it was written is unknown."""

    def __init__(self, stream_id: uuid.UUID) -> None:
        super().__init__(f"the transaction gave no outcome for stream {stream_id}")


class StreamWriter:
    """One live stream's text on its way to the database, and its fate.

    The run appends pieces (never waiting on the database), waits for room when more
    than ``MAX_PENDING_CHARS`` are uncommitted, and closes the writer with the
    stream's terminal status. The writer tells the run (``on_stop``) when the stream
    must stop: someone else ended it (:class:`~streaming_app.drive.persist.StreamEnded`),
    someone asked it to stop (:class:`~streaming_app.drive.persist.CancelRequested`), the
    database has been away too long (:class:`DatabaseOutage`) or refused a write
    (:class:`WriteFailed`). :attr:`stopped` holds the first such reason.
    """

    def __init__(self, committer: Committer, stream_id: uuid.UUID, policy: FlushPolicy) -> None:
        now = time.monotonic()
        self.stream_id = stream_id
        #: The stream's part map (streaming_app.parts); empty for a plain stream.
        self.parts = PartMap()
        self.buffer = Buffer(policy, now, self.parts.entries)
        self.stopped: BaseException | None = None
        self.closing: Terminal | None = None
        #: Set by a fault in this stream's writing (:meth:`fault`): how it ends.
        self.faulted: Terminal | None = None
        #: The publisher's ticket for the stream's last update (streaming_app.fanout.publish),
        #: once its terminal status has committed.
        self.published: int | None = None
        self.heartbeat = float(conf.get("HEARTBEAT_INTERVAL"))
        self.max_pending = int(conf.get("MAX_PENDING_CHARS"))
        self.outage_limit = float(conf.get("DATABASE_OUTAGE_LIMIT"))
        self.give_up_after = float(conf.get("TIMEOUT"))
        self.last_write = now
        #: When the write now being retried was first attempted.
        self.attempted_at: float | None = None
        self._committer = committer
        self._failed = False
        self._ended_elsewhere = False
        self._room = asyncio.Event()
        self._room.set()
        self._outage = asyncio.Event()
        self._done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._on_stop: list[Callable[[], None]] = []

    # The run's side ------------------------------------------------------------------

    @property
    def length(self) -> int:
        """Characters appended so far (the stream's length once all commit)."""
        return self.buffer.length

    @property
    def ended_elsewhere(self) -> bool:
        """Someone else ended or deleted the stream: its status is theirs."""
        return self._ended_elsewhere

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the stream must stop (see the class docstring)."""
        self._on_stop.append(callback)

    def append(self, text: str) -> None:
        """Add a piece ("" when only the part map grew); never waits. Ignored once
        closing, or after a refused write."""
        if self.closing is not None or self._failed:
            return
        if self.buffer.append(text, time.monotonic()):
            self._committer.wake(self.buffer.due_at())
        if self.buffer.pending > self.max_pending:
            self._room.clear()

    async def wait_for_room(self) -> None:
        if not self._room.is_set():
            await self._room.wait()

    async def close(self, terminal: Terminal) -> bool:
        """Write what is left with the terminal status, and wait for it to commit.

        Returns whether it committed. During a database outage it waits at most
        ``DATABASE_OUTAGE_LIMIT`` more; the write is then left to the committer, which
        makes it when the database answers (or the stream expires).
        """
        if self.closing is None and not self._done.done():
            self.closing = terminal
            self._committer.wake(float("-inf"))
        done = asyncio.shield(self._done)
        while not self._done.done():
            if self._outage.is_set():
                try:
                    return await asyncio.wait_for(done, self.outage_limit)
                except TimeoutError:
                    logger.error(
                        "stream %s: its run ends before its status is written (the "
                        "database is away); it will be written when the database answers",
                        self.stream_id,
                    )
                    return False
            outage = asyncio.ensure_future(self._outage.wait())
            try:
                either: set[asyncio.Future[Any]] = {done, outage}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                outage.cancel()
        return self._done.result()

    # The committer's side ------------------------------------------------------------

    def stop(self, reason: BaseException) -> None:
        if self.stopped is not None:
            return
        self.stopped = reason
        self._room.set()
        for callback in self._on_stop:
            callback()

    def next_event(self, now: float) -> float:
        """When this writer next needs the committer."""
        if self._done.done():
            return float("inf")
        if self.faulted is not None or self.buffer.sealed is not None or self.closing is not None:
            return now
        if self.stopped is not None:
            return float("inf")  # its run is stopping: nothing until it closes
        due = self.buffer.due_at()
        if not self.buffer.has_waiting:
            due = min(due, self.last_write + self.heartbeat)
        return due

    def next_write(self, now: float) -> Write | None:
        if self.faulted is not None or self.next_event(now) > now:
            return None  # a faulted writer's stream is ended apart (Committer._end)
        if self.buffer.sealed is None:
            if self.closing is not None:
                self.buffer.seal(self.closing)
            elif self.buffer.has_waiting:
                self.buffer.seal()
        if self.attempted_at is None:
            self.attempted_at = now
        return Write(self.stream_id, self.buffer.sealed)

    def overdue_since(self, now: float) -> float | None:
        """Since when this writer has had a write that the database did not take."""
        if self._done.done():
            return None
        if self.attempted_at is not None:
            return self.attempted_at
        due = self.next_event(now)
        if due > now:
            return None
        # A full buffer is due at once (-inf): overdue since its oldest text came.
        return max(due, self.buffer.oldest) if self.buffer.has_waiting else due

    def check(self, now: float) -> None:
        """Declare an outage, or give up a last write, as time passes."""
        since = self.overdue_since(now)
        if since is None:
            return
        if not self._outage.is_set() and now - since > self.outage_limit:
            self._outage.set()
            reason = DatabaseOutage(self.outage_limit)
            logger.error("stream %s stops: %s", self.stream_id, reason)
            self.stop(reason)
        elif self._outage.is_set() and now - since > self.give_up_after:
            # Past the timeout the stream is anyone's to expire: stop trying.
            logger.error("gave up writing stream %s; it will expire", self.stream_id)
            self._finish(False)

    def settle(self, write: Write, result: Result, now: float) -> Update | None:
        """Take the outcome of ``write``; return the update to publish, if any."""
        batch = write.batch
        if isinstance(result, BaseException):
            if isinstance(result, RETRYABLE):
                return None  # tried again as it is
            return self._refused(batch, result)
        if result is Outcome.BUSY:
            return None
        if result is Outcome.CONFLICT:
            offset = batch.offset if batch is not None else None
            raise WriteConflict(
                f"stream {self.stream_id}: its batch at offset {offset} does not start where "
                "its committed text ends"
            )
        if self.attempted_at is not None and now - self.attempted_at > SLOW_WRITE:
            logger.warning(
                "a write of stream %s took %.1fs (the database was slow or away)",
                self.stream_id,
                now - self.attempted_at,
            )
        self.attempted_at = None
        if result is Outcome.ENDED:
            self._ended_elsewhere = True
            self.buffer.discard()
            self.stop(StreamEnded(f"stream {self.stream_id} has ended or was deleted"))
            self._finish(False)
            return None
        if result is Outcome.CANCEL_REQUESTED:
            if batch is not None:
                self.buffer.refused()
            self.stop(CancelRequested(f"stream {self.stream_id} was asked to stop"))
            return None
        self.last_write = now
        if batch is None:
            return None  # a heartbeat
        self.buffer.committed(now)
        if self.buffer.pending <= self.max_pending:
            self._room.set()
        if batch.terminal:
            self._finish(True)
        status, error = batch.terminal or (Status.STREAMING, None)
        parts = batch.parts[batch.parts_from :] if batch.parts else ()
        return Update(
            self.stream_id, batch.offset, batch.text, status, error, parts, batch.parts_from
        )

    def fault(self, exc: BaseException) -> None:
        """A fault in this stream's writing (its outcome, its batch, its bookkeeping):
        its own account of what committed cannot be trusted. Its run is stopped, and the
        committer ends the stream ``error`` (a public message) at the length the
        database has."""
        if self._done.done() or self.faulted is not None:
            return
        self.faulted = Terminal(Status.ERROR, public_message(exc))
        self._failed = True
        self.attempted_at = None
        self.stop(RunStopped(self.faulted.error))

    def ended_where_it_was(self, length: int | None) -> Update | None:
        """The faulted stream's end has committed at ``length`` (None: someone else had
        ended it)."""
        assert self.faulted is not None
        self._finish(length is not None)
        if length is None:
            self._ended_elsewhere = True
            return None
        return Update(self.stream_id, length, "", *self.faulted)

    def publish(self, update: Update) -> None:
        """Publish a committed update; the last one's ticket is kept: the run waits
        until it has gone out (StreamRun.wait)."""
        ticket = publish([update])
        if update.finished:
            self.published = ticket

    def _refused(self, batch: Batch | None, exc: BaseException) -> Update | None:
        """The database refused the write, for a reason other than the connection."""
        logger.error("the database refused a write of stream %s", self.stream_id, exc_info=exc)
        self.attempted_at = None
        self._failed = True
        # Nothing after the refused text can be written where it belongs: the stream
        # keeps what committed and ends there.
        self.buffer.discard()
        if batch is not None and batch.terminal and not batch.text:
            self._finish(False)  # even the bare status was refused: expiry ends it
            return None
        reason = WriteFailed()
        if self.closing is not None:
            self.closing = Terminal(Status.ERROR, public_message(reason))
        self.stop(reason)
        return None

    def _finish(self, committed: bool) -> None:
        if not self._done.done():
            self._done.set_result(committed)
        self._room.set()
        self._committer.forget(self)


class Committer:
    """Commits the writes of every live stream of an event loop, one transaction per
    tick. See the module docstring."""

    def __init__(self) -> None:
        self.writers: dict[uuid.UUID, StreamWriter] = {}
        self.tick = float(conf.get("FLUSH_TICK"))
        #: Transactions attempted so far, for monitoring (and bench/capacity.py).
        self.transactions = 0
        self._wake = asyncio.Event()
        self._sleeping_until = float("inf")
        self._last_tick = float("-inf")
        self._retry_at = float("-inf")
        self._backoff = 0.05
        self._task: asyncio.Task[None] | None = None

    def open(self, stream_id: uuid.UUID, policy: FlushPolicy | None = None) -> StreamWriter:
        """A writer for ``stream_id``, claimed by the caller. Raises
        :class:`~streaming_app.exceptions.StreamAlreadyRunning` while another writer of
        the stream is live here."""
        if stream_id in self.writers:
            raise StreamAlreadyRunning(stream_id)
        writer = StreamWriter(self, stream_id, policy or FlushPolicy.from_settings())
        self.writers[stream_id] = writer
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), context=contextvars.Context()
            )
        return writer

    def forget(self, writer: StreamWriter) -> None:
        if self.writers.get(writer.stream_id) is writer:
            del self.writers[writer.stream_id]

    def wake(self, at: float) -> None:
        """A writer needs the committer at ``at`` (monotonic) or before."""
        if at < self._sleeping_until:
            self._wake.set()

    async def _run(self) -> None:
        try:
            while self.writers:
                now = time.monotonic()
                at = min(
                    (self._contained(w, w.next_event, now, now) for w in self._live()),
                    default=now,
                )
                at = max(at, self._last_tick + self.tick, self._retry_at)
                if at > now:
                    await self._sleep(min(at - now, self._watch_interval(now)))
                    continue
                writes = []
                for w in self._live():
                    write = self._contained(w, w.next_write, now, None)
                    if write is not None:
                        writes.append((w, write))
                faulted = [w for w in self._live() if w.faulted is not None]
                if writes or faulted:
                    self._last_tick = now
                if writes:
                    self._settle(writes, await self._attempt(writes))
                for w in faulted:
                    await self._end(w)
        except Exception:
            # A bug, not the database: no writer may wait for ever on a dead committer.
            logger.exception("the committer of streaming_app failed")
            for writer in list(self.writers.values()):
                writer.stop(WriteFailed())
                writer._finish(False)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        self._sleeping_until = time.monotonic() + seconds
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._sleeping_until = float("inf")
        self._check(time.monotonic())

    def _live(self) -> list[StreamWriter]:
        return list(self.writers.values())

    def _contained(
        self, writer: StreamWriter, call: Callable[[float], T], now: float, otherwise: T
    ) -> T:
        """``call(now)``, one of ``writer``'s own steps: if it raises, that is a fault
        of its stream's alone (:meth:`_fault`), and ``otherwise`` stands for its result."""
        try:
            return call(now)
        except Exception as exc:
            self._fault(writer, exc)
            return otherwise

    def _fault(self, writer: StreamWriter, exc: Exception) -> None:
        """A fault in one stream's writing ends that stream, not the others."""
        logger.error(
            "stream %s: a fault in its writing ends it (%r)", writer.stream_id, exc, exc_info=exc
        )
        writer.fault(exc)

    async def _end(self, writer: StreamWriter) -> None:
        """End a faulted writer's stream at the length the database has."""
        assert writer.faulted is not None
        if writer.attempted_at is None:
            writer.attempted_at = time.monotonic()
        try:
            length = await self._in_thread(end_where_it_is, writer.stream_id, writer.faulted)
        except RETRYABLE as exc:
            logger.warning("stream %s could not be ended yet (%s)", writer.stream_id, exc)
            self._retry_at = time.monotonic() + self._backoff
            return  # tried again; past TIMEOUT, StreamWriter.check gives it up
        except TimeoutError:
            return  # left to its thread; tried again
        except Exception:
            logger.exception("stream %s could not be ended; it will expire", writer.stream_id)
            writer._finish(False)
            return
        update = writer.ended_where_it_was(length)
        if update is not None:
            writer.publish(update)

    def _check(self, now: float) -> None:
        for writer in self._live():
            self._contained(writer, writer.check, now, None)

    def _watch_interval(self, now: float) -> float:
        """How long until a writer's outage or give-up is due to be declared."""
        deadlines = []
        for writer in self._live():
            since = self._contained(writer, writer.overdue_since, now, None)
            if since is not None:
                limit = writer.give_up_after if writer.stopped else writer.outage_limit
                deadlines.append(since + limit - now)
        return max(min(deadlines, default=1.0), 0.01)

    async def _attempt(self, writes: Sequence[tuple[StreamWriter, Write]]) -> list[Result]:
        """One transaction for ``writes``; one each if it fails for another reason
        than the connection, so that one stream's bad batch does not fail the others."""
        try:
            outcomes = await self._in_thread(write_in_transaction, [write for _, write in writes])
        except TimeoutError:
            return [TimeoutError()] * len(writes)
        except RETRYABLE as exc:
            logger.warning(
                "a write of %d stream(s) failed (%s); retrying in %.2fs",
                len(writes),
                exc,
                self._backoff,
            )
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, 2.0)
            return [exc] * len(writes)
        except Exception as exc:
            if len(writes) == 1:
                return [exc]
            logger.warning("a write of %d streams failed (%r); one by one now", len(writes), exc)
            return [result for one in writes for result in await self._attempt([one])]
        self._backoff = 0.05
        return [
            outcomes[write.stream_id]
            if write.stream_id in outcomes
            else MissingOutcome(write.stream_id)
            for _, write in writes
        ]

    async def _in_thread(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` in the writers' threads: one transaction. Writers' outages
        are declared meanwhile; TimeoutError if it has not come back after
        ``ABANDON_AFTER`` (it is left to its thread)."""
        self.transactions += 1
        attempt = asyncio.ensure_future(in_writer_thread(func)(*args))
        started = time.monotonic()
        while True:
            now = time.monotonic()
            done, _ = await asyncio.wait({attempt}, timeout=self._watch_interval(now))
            if done:
                return attempt.result()
            now = time.monotonic()
            self._check(now)
            if now - started > ABANDON_AFTER:
                logger.error("a transaction of streaming_app has not come back; trying again")
                raise TimeoutError

    def _settle(
        self, writes: Sequence[tuple[StreamWriter, Write]], results: Sequence[Result]
    ) -> None:
        now = time.monotonic()
        for (writer, write), result in zip(writes, results, strict=True):
            if isinstance(result, TimeoutError):
                result = OperationalError("the database did not answer")
            self._contained(
                writer, functools.partial(self._settle_one, writer, write, result), now, None
            )
        self._check(now)

    @staticmethod
    def _settle_one(writer: StreamWriter, write: Write, result: Result, now: float) -> None:
        if isinstance(result, MissingOutcome):
            raise result  # a bug: what became of the write is unknown
        update = writer.settle(write, result, now)
        if update is not None:
            writer.publish(update)


_committers: PerLoop[Committer] = PerLoop(Committer)


def committer() -> Committer:
    """The running event loop's committer."""
    return _committers.get()


def open_writer(stream_id: uuid.UUID | str, policy: FlushPolicy | None = None) -> StreamWriter:
    """A writer for a claimed stream, on the running event loop's committer. Raises
    :class:`~streaming_app.exceptions.StreamAlreadyRunning` while the stream has a
    writer here already."""
    return committer().open(parse_stream_id(stream_id), policy)
