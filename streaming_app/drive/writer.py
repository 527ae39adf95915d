"""One live stream's writer: its text on its way to the database, and its fate.

The run appends pieces to its :class:`StreamWriter` (never waiting on the database); the
process's committer (:mod:`streaming_app.drive.committer`) takes each writer's due
batch or heartbeat into its tick's transaction and hands the outcome back to the writer
(:meth:`StreamWriter.settle`), which says what to publish and when its stream must stop.

Whatever the database does, a writer ends: a batch is retried as it is while the
connection fails; a stream whose writes have not come back for
``DATABASE_OUTAGE_LIMIT`` is stopped (its run ends, its last batch is written when the
database answers); a stream whose write the database refuses is stopped and ended
``error``. A writer beats for its stream only while its run is generating.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import conf
from ..errors import public_message
from ..exceptions import DatabaseOutage, RunStopped, WriteFailed
from ..fanout.publish import Update, publish
from ..models import Status
from ..parts import PartMap
from .flush import Batch, Buffer, FlushPolicy, Terminal
from .persist import RETRYABLE, CancelRequested, Outcome, StreamEnded, Write, WriteConflict

if TYPE_CHECKING:
    from .committer import Committer

logger = logging.getLogger(__name__)

# A write that takes longer than this, retries included, is logged.
SLOW_WRITE = 1.0

#: What became of a write: its outcome, or what its transaction raised.
Result = Outcome | BaseException


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
