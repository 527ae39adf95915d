"""The SQL of a flush, for one stream or for every stream of a tick (run in the
writers' threads: :mod:`streaming_app.drive.threads`).

One call of :func:`write` is one transaction, whatever the number of streams in it:
it locks their rows, decides for each whether its batch may be written (the writer's
claim, its offset, a cancel, someone else's end), advances the streams that may, and
inserts their chunks, three statements in all (four when part maps grew). A batch retried after an ambiguous
failure (a commit whose answer was lost) is recognised by its stream's length and not
written twice.
"""

from __future__ import annotations

import enum
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from django.db import InterfaceError, OperationalError, connection, models
from django.db.models import Case, F, Value, When
from django.utils import timezone

from .. import conf
from ..models import Chunk, Status, Stream, write_transaction
from .flush import Batch

#: Errors after which the same transaction may succeed: the connection, not the data.
RETRYABLE = (OperationalError, InterfaceError)


class Outcome(enum.Enum):
    """What became of one stream's write."""

    #: Written by this transaction.
    COMMITTED = "committed"
    #: Written already, by an earlier attempt whose answer was lost.
    WRITTEN_BEFORE = "written before"
    #: Not written: someone asked the stream to stop (a terminal batch is still taken).
    CANCEL_REQUESTED = "cancel requested"
    #: Not written: the stream has ended (someone else ended it) or was deleted.
    ENDED = "ended"
    #: Not written: someone else holds the stream's row (a deletion); try again.
    BUSY = "busy"
    #: Not written: the stream is live, but the batch does not start where its
    #: committed text ends and is no retry of one that committed (a bug in its writer).
    CONFLICT = "conflict"


@dataclass(frozen=True)
class Write:
    """One stream's part of a transaction: a batch, or a heartbeat (``batch`` None)."""

    stream_id: uuid.UUID
    batch: Batch | None = None


def _decide(row: Mapping[str, Any], batch: Batch | None) -> Outcome:
    streaming = row["status"] == Status.STREAMING
    if batch is None:  # a heartbeat
        if streaming and row["cancel_requested_at"] is None:
            return Outcome.COMMITTED
    elif (
        streaming
        and row["length"] == batch.offset
        and (batch.terminal is not None or row["cancel_requested_at"] is None)
    ):
        return Outcome.COMMITTED
    else:
        expected = batch.terminal[0] if batch.terminal else Status.STREAMING
        if row["length"] == batch.end and row["status"] == expected:
            return Outcome.WRITTEN_BEFORE
        if streaming and row["length"] != batch.offset:
            return Outcome.CONFLICT
    if streaming and row["cancel_requested_at"] is not None:
        return Outcome.CANCEL_REQUESTED
    return Outcome.ENDED


def _case(values: Mapping[uuid.UUID, Any], name: str) -> Case:
    """``name`` set to ``values[pk]`` for each row, left as it is for the others."""
    field = cast("models.Field[Any, Any]", Stream._meta.get_field(name))
    return Case(
        *(When(pk=pk, then=Value(value, output_field=field)) for pk, value in values.items()),
        default=F(name),
        output_field=field,
    )


def write(writes: Sequence[Write]) -> dict[uuid.UUID, Outcome]:
    """Commit ``writes`` (one at most per stream) in one transaction, and say what
    became of each. Finished streams' chunks are merged into one as they end
    (``COMPACT_FINISHED``). Raises what the database raises; nothing is written then."""
    compact = bool(conf.get("COMPACT_FINISHED"))
    ids = [w.stream_id for w in writes]
    now = timezone.now()
    with write_transaction():
        rows = Stream.objects.filter(pk__in=ids)
        if connection.features.has_select_for_update_skip_locked:
            # A row someone else holds (a deletion) is skipped, not waited for: one
            # stream must not hold up the others of the tick.
            rows = rows.select_for_update(skip_locked=True)
        else:
            rows = rows.select_for_update()
        found = {
            row["pk"]: row for row in rows.values("pk", "status", "length", "cancel_requested_at")
        }
        outcomes: dict[uuid.UUID, Outcome] = {}
        if len(found) < len(ids):
            held = set(
                Stream.objects.filter(pk__in=[i for i in ids if i not in found]).values_list(
                    "pk", flat=True
                )
            )
            for pk in ids:
                if pk not in found:
                    outcomes[pk] = Outcome.BUSY if pk in held else Outcome.ENDED
        lengths: dict[uuid.UUID, int] = {}
        maps: dict[uuid.UUID, list[Any]] = {}
        touched: list[uuid.UUID] = []
        ending: dict[uuid.UUID, Batch] = {}
        chunks: dict[uuid.UUID, Chunk] = {}
        for item in writes:
            if item.stream_id not in found:
                continue
            outcome = outcomes[item.stream_id] = _decide(found[item.stream_id], item.batch)
            if outcome is not Outcome.COMMITTED:
                continue
            batch = item.batch
            if batch is None:
                touched.append(item.stream_id)
                continue
            if batch.parts is not None:
                maps[item.stream_id] = list(batch.parts)
            if batch.terminal:
                ending[item.stream_id] = batch
            else:
                lengths[item.stream_id] = batch.end
            if batch.text:
                chunks[item.stream_id] = Chunk(
                    stream_id=item.stream_id, seq=batch.seq, offset=batch.offset, text=batch.text
                )
        if lengths or touched:
            Stream.objects.filter(pk__in=[*lengths, *touched]).update(
                length=_case(lengths, "length"), updated_at=now
            )
        if maps:
            # Streams with parts only, when their map grew: plain streams' flushes stay
            # the statements they were.
            Stream.objects.filter(pk__in=list(maps)).update(parts=_case(maps, "parts"))
        if ending:
            terminals = {pk: b.terminal for pk, b in ending.items() if b.terminal}
            Stream.objects.filter(pk__in=list(ending)).update(
                length=_case({pk: b.end for pk, b in ending.items()}, "length"),
                status=_case({pk: t[0] for pk, t in terminals.items()}, "status"),
                error=_case({pk: t[1] or "" for pk, t in terminals.items()}, "error"),
                finished_at=now,
                updated_at=now,
            )
            if compact:
                _merge_as_they_end(ending, chunks)
        if chunks:
            Chunk.objects.bulk_create(chunks.values())
    return outcomes


def _merge_as_they_end(ending: Mapping[uuid.UUID, Batch], chunks: dict[uuid.UUID, Chunk]) -> None:
    """Replace the chunks of streams that end now, and their last one, with one chunk
    each (seq 0, offset 0): reads of a finished stream fetch one row."""
    earlier: dict[uuid.UUID, list[str]] = defaultdict(list)
    for stream_id, text in (
        Chunk.objects.filter(stream_id__in=list(ending))
        .order_by("stream_id", "seq")
        .values_list("stream_id", "text")
    ):
        earlier[stream_id].append(text)
    merged = [pk for pk, texts in earlier.items() if len(texts) + (pk in chunks) > 1]
    if not merged:
        return
    Chunk.objects.filter(stream_id__in=merged).delete()
    for pk in merged:
        last = chunks[pk].text if pk in chunks else ""
        chunks[pk] = Chunk(stream_id=pk, seq=0, offset=0, text="".join(earlier[pk]) + last)


def end_where_it_is(stream_id: uuid.UUID, terminal: tuple[str, str | None]) -> int | None:
    """End a live stream with ``terminal`` at the length the database has, whatever its
    writer thinks it wrote: for a writer whose own account cannot be trusted (a fault in
    its batch or its bookkeeping). Its committed text stays. Returns the stream's final
    length, or None if it was no longer live. One transaction; raises what the
    database raises."""
    with write_transaction():
        length = (
            Stream.objects.select_for_update()
            .filter(pk=stream_id, status=Status.STREAMING)
            .values_list("length", flat=True)
            .first()
        )
        if length is None:
            return None
        write([Write(stream_id, Batch(seq=0, offset=length, text="", terminal=terminal))])
        return length


class WriteConflict(Exception):
    """A live stream's batch did not start where its committed text ends, and was no
    retry of one that had committed: a bug in its writer (or a second writer of the
    stream). Nothing of it was written."""


class StreamEnded(Exception):
    """The stream stopped being its writer's: someone else ended it, or deleted it."""


class CancelRequested(Exception):
    """Someone asked the stream to stop; its writer may still write its last batch."""


def write_batch(stream_id: uuid.UUID, batch: Batch) -> None:
    """Commit one stream's batch on its own (a writer in a sync context, a test).
    Raises :class:`StreamEnded` or :class:`CancelRequested` if it may not be written,
    :class:`WriteConflict` if it does not start where the stream's text ends, or, for
    a stream that someone else holds, OperationalError (try again)."""
    outcome = write([Write(stream_id, batch)])[stream_id]
    if outcome is Outcome.CANCEL_REQUESTED:
        raise CancelRequested(f"stream {stream_id} was asked to stop")
    if outcome is Outcome.ENDED:
        raise StreamEnded(f"stream {stream_id} has ended or was deleted")
    if outcome is Outcome.BUSY:
        raise OperationalError(f"stream {stream_id} is held by someone else")
    if outcome is Outcome.CONFLICT:
        raise WriteConflict(
            f"stream {stream_id}: a batch at offset {batch.offset} does not start where "
            "its committed text ends"
        )
