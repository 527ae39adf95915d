"""Create, claim, read and delete streams: the synchronous core and its async twins.

Nothing here knows about HTTP or websockets. Every change that viewers must learn of is
announced through :data:`streaming_app.signals.stream_committed` from
``transaction.on_commit``, inside the committing code.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.db import transaction
from django.db.models import Case, Exists, OuterRef, Subquery, Value, When
from django.utils import timezone

from . import conf
from .exceptions import InvalidOffset, StreamNotPending
from .models import LIVE_STATUSES, TERMINAL_STATUSES, Chunk, Status, Stream, lock_streams
from .signals import stream_cancel_requested, stream_committed

logger = logging.getLogger(__name__)

StreamId = uuid.UUID | str


@dataclass(frozen=True)
class StreamBody:
    """A stream's committed text from ``offset``, with its status at the same instant."""

    id: uuid.UUID
    status: str
    text: str
    offset: int
    length: int
    error: str | None

    @property
    def is_finished(self) -> bool:
        return self.status not in (Status.PENDING, Status.STREAMING)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["id"] = str(self.id)
        return data


def parse_stream_id(value: StreamId) -> uuid.UUID:
    """Return ``value`` as a UUID; a malformed id is an unknown stream."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise Stream.DoesNotExist(f"no stream {value!r}") from None


def parse_offset(value: Any) -> int:
    """Return a non-negative integer offset from a query string value or an int."""
    if isinstance(value, bool):
        raise InvalidOffset("offset must be an integer")
    if isinstance(value, int):
        offset = value
    else:
        text = str(value).strip()
        # int() would accept "1_000", " +3" and "٣"; an offset is plain ASCII digits.
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            raise InvalidOffset(f"offset must be a non-negative integer, not {str(value)[:40]!r}")
        offset = int(text)
    if offset < 0:
        raise InvalidOffset("offset must not be negative")
    return offset


def announce(
    stream_id: uuid.UUID, *, offset: int, text: str, status: str, error: str | None
) -> None:
    """Send ``stream_committed`` once the current transaction commits (at once outside one)."""

    def send() -> None:
        for receiver, result in stream_committed.send_robust(
            sender=Stream, stream_id=stream_id, offset=offset, text=text, status=status, error=error
        ):
            if isinstance(result, Exception):
                logger.error("stream_committed receiver %r failed", receiver, exc_info=result)

    transaction.on_commit(send, robust=True)


def create_stream(*, owner: Any = None, metadata: dict[str, Any] | None = None) -> Stream:
    """Create a ``pending`` stream and return it. ``owner`` is a user or None."""
    return Stream.objects.create(owner=owner, metadata=metadata or {})


acreate_stream = sync_to_async(create_stream)


def claim_stream(stream_id: StreamId) -> None:
    """Move a stream from ``pending`` to ``streaming``: the one driver's ticket.

    One conditional UPDATE decides, so among any number of concurrent callers, in any
    number of processes, exactly one returns; the others raise
    :class:`~streaming_app.exceptions.StreamNotPending`. An unknown stream raises
    ``Stream.DoesNotExist``.
    """
    pk = parse_stream_id(stream_id)
    now = timezone.now()
    with transaction.atomic():
        claimed = Stream.objects.filter(
            # A pending stream nobody drove within the timeout has timed out.
            pk=pk,
            status=Status.PENDING,
            updated_at__gte=now - timedelta(seconds=timeout()),
        ).update(status=Status.STREAMING, updated_at=now)
        if claimed:
            announce(pk, offset=0, text="", status=Status.STREAMING, error=None)
            return
    raise StreamNotPending(get_stream(pk).status)


aclaim_stream = sync_to_async(claim_stream)


def read_text(stream_id: uuid.UUID, start: int, end: int) -> str:
    """The committed body between code points ``start`` and ``end`` (end <= length)."""
    if start >= end:
        return ""
    first_seq = (
        Chunk.objects.filter(stream_id=stream_id, offset__lte=start)
        .order_by("-seq")
        .values("seq")[:1]
    )
    rows = list(
        Chunk.objects.filter(stream_id=stream_id, seq__gte=Subquery(first_seq), offset__lt=end)
        .order_by("seq")
        .values_list("offset", "text")
    )
    if not rows:
        return ""
    base = rows[0][0]
    return "".join(text for _, text in rows)[start - base : end - base]


def get_stream_body(stream_id: StreamId, offset: int | str = 0) -> StreamBody:
    """Read a stream's committed text from code point ``offset`` on.

    The status and the text are consistent: the text is exactly what had committed
    when the status was read, so a ``done`` body is always the whole body. Raises
    ``Stream.DoesNotExist`` for an unknown or malformed id, and
    :class:`~streaming_app.exceptions.InvalidOffset` for a negative offset or one past
    the end of a finished stream (past the end of a live stream gives empty text).
    """
    return body_of(get_stream(stream_id), offset)


def get_stream(stream_id: StreamId) -> Stream:
    """The stream; one whose writer stopped without a word is first marked as expired.

    Raises ``Stream.DoesNotExist`` for an unknown or malformed id.
    """
    stream = Stream.objects.get(pk=parse_stream_id(stream_id))
    if stream.status in LIVE_STATUSES and stream.updated_at < stale_before():
        expire_stream(stream.pk, stale_before())
        stream.refresh_from_db()
    return stream


def timeout() -> float:
    return float(conf.get("TIMEOUT"))


def stale_before(seconds: float | None = None) -> datetime:
    return timezone.now() - timedelta(seconds=timeout() if seconds is None else seconds)


def expire_stream(stream_id: uuid.UUID, cutoff: datetime) -> str | None:
    """End a live stream whose last activity is before ``cutoff``: ``cancelled`` if a
    cancel was asked of it, else ``timeout``. Returns the new status, or None if the
    stream was not live and stale (any more). Its committed text stays."""
    seconds = round((timezone.now() - cutoff).total_seconds())
    message = f"no activity for {seconds} seconds"
    with transaction.atomic():
        expired = Stream.objects.filter(
            pk=stream_id, status__in=LIVE_STATUSES, updated_at__lt=cutoff
        ).update(
            status=Case(
                When(cancel_requested_at__isnull=False, then=Value(Status.CANCELLED)),
                default=Value(Status.TIMEOUT),
            ),
            error=Case(
                When(cancel_requested_at__isnull=False, then=Value("")),
                default=Value(message),
            ),
            finished_at=timezone.now(),
        )
        if not expired:
            return None
        row = Stream.objects.values("status", "length", "error").get(pk=stream_id)
        if conf.get("COMPACT_FINISHED"):
            compact_stream(stream_id)
        announce(
            stream_id,
            offset=row["length"],
            text="",
            status=row["status"],
            error=row["error"] or None,
        )
        return str(row["status"])


def expire_stale_streams(seconds: float | None = None, *, batch_size: int = 500) -> int:
    """Expire every live stream with no activity for ``seconds`` (default: TIMEOUT).
    Returns how many were expired."""
    cutoff = stale_before(seconds)
    expired = 0
    while True:
        ids = list(
            Stream.objects.active()
            .filter(updated_at__lt=cutoff)
            .values_list("pk", flat=True)[:batch_size]
        )
        expired += sum(1 for pk in ids if expire_stream(pk, cutoff))
        if len(ids) < batch_size:
            return expired


aexpire_stale_streams = sync_to_async(expire_stale_streams)


def cancel_stream(stream_id: StreamId) -> str:
    """Ask a stream to stop. Returns its status after the request.

    A ``pending`` stream is ``cancelled`` at once. For a ``streaming`` one, the writer
    driving it, in whatever process, stops its generator (at once through the channel
    layer, or at its next flush or heartbeat), commits what it has and ends the stream
    as ``cancelled``; until then the status stays ``streaming``. If that writer has
    died, the stream ends ``cancelled`` when it expires. A finished stream is left as
    it is. Raises ``Stream.DoesNotExist``.
    """
    pk = parse_stream_id(stream_id)
    now = timezone.now()
    with transaction.atomic():
        if Stream.objects.filter(pk=pk, status=Status.PENDING).update(
            status=Status.CANCELLED, finished_at=now, updated_at=now
        ):
            announce(pk, offset=0, text="", status=Status.CANCELLED, error=None)
        elif Stream.objects.filter(
            pk=pk, status=Status.STREAMING, cancel_requested_at__isnull=True
        ).update(cancel_requested_at=now):
            transaction.on_commit(
                lambda: stream_cancel_requested.send_robust(sender=Stream, stream_id=pk),
                robust=True,
            )
    return get_stream(pk).status


acancel_stream = sync_to_async(cancel_stream)


def purge_streams(
    older_than: timedelta, statuses: Iterable[str] = TERMINAL_STATUSES, *, batch_size: int = 500
) -> int:
    """Delete finished streams (of ``statuses``) that finished more than ``older_than``
    ago, with their chunks, in batches. Returns how many streams were deleted."""
    statuses = [s for s in statuses if s in TERMINAL_STATUSES]
    cutoff = timezone.now() - older_than
    deleted = 0
    while True:
        ids = list(
            Stream.objects.filter(status__in=statuses, finished_at__lt=cutoff).values_list(
                "pk", flat=True
            )[:batch_size]
        )
        if not ids:
            return deleted
        with transaction.atomic():
            # Chunks first, in one statement, rather than through the collector.
            Chunk.objects.filter(stream_id__in=ids).delete()
            deleted += Stream.objects.filter(pk__in=ids).delete()[1].get("streaming_app.Stream", 0)


def compact_stream(stream_id: StreamId) -> bool:
    """Merge a finished stream's chunks into one, so that reading it fetches one row
    however many flushes wrote it. Offsets and reads are unchanged. Returns whether
    there was more than one chunk to merge; a live or unknown stream is left alone.

    Runs by itself when a stream ends (``COMPACT_FINISHED``); for streams that ended
    otherwise, there is ``python manage.py compact_streams``.
    """
    try:
        pk = parse_stream_id(stream_id)
    except Stream.DoesNotExist:
        return False
    with transaction.atomic():
        # The row lock keeps a deletion or another compaction out until we commit.
        if not lock_streams(Stream.objects.finished().filter(pk=pk)):
            return False
        chunks = Chunk.objects.filter(stream_id=pk)
        texts = list(chunks.order_by("seq").values_list("text", flat=True))
        if len(texts) < 2:
            return False
        chunks.delete()
        Chunk.objects.create(stream_id=pk, seq=0, offset=0, text="".join(texts))
        return True


acompact_stream = sync_to_async(compact_stream)


def compact_finished_streams(*, batch_size: int = 500) -> int:
    """Compact every finished stream that still has more than one chunk. Returns how
    many were compacted."""
    more_than_one = Chunk.objects.filter(stream=OuterRef("pk"), seq=1)
    compacted = 0
    while True:
        ids = list(
            Stream.objects.finished()
            .filter(Exists(more_than_one))
            .order_by()
            .values_list("pk", flat=True)[:batch_size]
        )
        compacted += sum(1 for pk in ids if compact_stream(pk))
        if len(ids) < batch_size:
            return compacted


def body_of(stream: Stream, offset: int | str = 0, *, past_end_ok: bool = False) -> StreamBody:
    """The body of an already loaded ``stream`` from ``offset``, read after the row.

    ``past_end_ok`` gives empty text, not InvalidOffset, past the end of a finished
    stream (for a viewer who waited there for text that never came).
    """
    start = parse_offset(offset)
    if start > stream.length and stream.is_finished and not past_end_ok:
        raise InvalidOffset(
            f"offset {start} is past the end of this {stream.status} stream "
            f"({stream.length} characters)"
        )
    return StreamBody(
        id=stream.id,
        status=stream.status,
        # Chunks past stream.length may have committed since the row was read; the
        # text stops at the row's length so that it agrees with the row's status.
        text=read_text(stream.id, start, stream.length),
        offset=start,
        length=stream.length,
        error=stream.error or None,
    )


aget_stream_body = sync_to_async(get_stream_body)
aget_stream = sync_to_async(get_stream)


def delete_stream(stream_id: StreamId) -> bool:
    """Delete a stream and its chunks. Returns False if there was no such stream.

    A writer still driving the stream notices at its next flush and stops its generator.
    """
    try:
        pk = parse_stream_id(stream_id)
    except Stream.DoesNotExist:
        return False
    deleted, _ = Stream.objects.filter(pk=pk).delete()
    return deleted > 0


adelete_stream = sync_to_async(delete_stream)
