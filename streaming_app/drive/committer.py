"""The process's committer: every live stream's writes of an event loop, committed
together.

One :class:`Committer` per event loop (per server process) holds a
:class:`~streaming_app.drive.writer.StreamWriter` for each stream driven there. It wakes
when a stream's flush falls due (``flush.FlushPolicy``) or its heartbeat does, and
commits every write due at that moment, across streams, in one transaction
(``persist.write``); never more often than once per ``FLUSH_TICK``, so a process's
transactions per second stay bounded however many streams it drives. Then it publishes
each stream's committed delta.

A transaction that fails on the connection is retried, with a backoff, for every
stream in it; one that fails otherwise is tried again one stream at a time, so that one
stream's bad batch does not fail the others.

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
from ..exceptions import StreamAlreadyRunning, WriteFailed
from ..loops import PerLoop
from ..models import parse_stream_id
from .flush import FlushPolicy
from .persist import RETRYABLE, Write, end_where_it_is
from .persist import write as write_in_transaction
from .threads import in_writer_thread
from .writer import Result, StreamWriter

logger = logging.getLogger(__name__)

#: A tick's transaction that has not come back for this long is left to its thread,
#: and its writes are tried again in another.
ABANDON_AFTER = 60.0

T = TypeVar("T")


class MissingOutcome(Exception):
    """A transaction committed without saying what became of one stream's write (a
    bug): whether it was written is unknown."""

    def __init__(self, stream_id: uuid.UUID) -> None:
        super().__init__(f"the transaction gave no outcome for stream {stream_id}")


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
