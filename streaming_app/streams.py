"""Operations on streams: create, claim, read, cancel, delete, expire, purge, compact.

The synchronous core and its async twins (``a…``), which run it as channels'
``database_sync_to_async`` does and publish what it committed from the caller's task.
Nothing here knows about HTTP or websockets. Every change that viewers must learn of is
published after its commit (:func:`streaming_app.fanout.outbox.publish_on_commit`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import (
    Case,
    Count,
    Exists,
    F,
    IntegerField,
    OuterRef,
    Q,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Cast, Coalesce, Substr
from django.db.models.lookups import LessThan
from django.utils import timezone

from . import conf
from .exceptions import InvalidOffset, Overloaded, StreamNotPending
from .fanout.outbox import cancel_on_commit, publish_on_commit, published_after
from .fanout.publish import Update
from .models import (
    TERMINAL_STATUSES,
    Chunk,
    Status,
    Stream,
    StreamId,
    StreamQuerySet,
    is_finished,
    lock_streams,
    parse_stream_id,  # re-exported: the transports take it from here
    write_transaction,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamBody:
    """A stream's committed text from ``offset``, with its status at the same instant."""

    id: uuid.UUID
    status: str
    text: str
    offset: int
    length: int
    error: str | None
    #: The stream's whole part map (streaming_app.parts); empty for a plain stream.
    parts: tuple[dict[str, Any], ...] = ()

    @property
    def is_finished(self) -> bool:
        return is_finished(self.status)

    def as_dict(self) -> dict[str, Any]:
        """The body endpoint's JSON; ``parts`` only for a stream that has some."""
        data = asdict(self)
        data["id"] = str(self.id)
        if self.parts:
            data["parts"] = list(self.parts)
        else:
            del data["parts"]
        return data


def parse_flag(value: str | None) -> bool:
    """A yes/no query parameter (``?parts=1``): ``1`` or ``true`` is yes."""
    return (value or "").lower() in ("1", "true")


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


def offset_parameter(values: Sequence[str]) -> str:
    """The one ``offset`` of a request's query (all its values, in order), not yet
    parsed: ``"0"`` when absent. Raises InvalidOffset when it is given more than once,
    on every endpoint alike (docs/protocol.md#offsets)."""
    if len(values) > 1:
        raise InvalidOffset("offset is given more than once")
    return values[0] if values else "0"


def ended_before(status: str, length: int, offset: int) -> str:
    """Why a viewer waiting at ``offset`` past a live stream's end is refused when the
    stream ends shorter (websocket close 4400, docs/protocol.md#offsets)."""
    return (
        f"the stream ended ({status}) at {length} characters, before the requested offset {offset}"
    )


def timeout() -> float:
    return float(conf.get("TIMEOUT"))


def pending_timeout() -> float | None:
    """``PENDING_TIMEOUT``: how long a stream nobody drives stays ``pending`` (None: for
    ever)."""
    seconds = conf.get("PENDING_TIMEOUT")
    return None if seconds is None else float(seconds)


def stale_streams(seconds: float | None = None, *, now: datetime | None = None) -> StreamQuerySet:
    """The streams to expire: streaming ones silent for ``seconds`` (default
    ``TIMEOUT``), pending ones older than ``PENDING_TIMEOUT``."""
    return Stream.objects.stale(
        timeout() if seconds is None else seconds, pending_timeout(), now=now
    )


# Create and claim ----------------------------------------------------------------------


def create_stream(*, owner: Any = None, metadata: dict[str, Any] | None = None) -> Stream:
    """Create a ``pending`` stream and return it. ``owner`` is a user or None; a user
    who is not signed in (``AnonymousUser``, a view's ``request.user`` for a visitor)
    counts as None: the stream has no owner."""
    if owner is not None and not owner.is_authenticated:
        owner = None
    return Stream.objects.create(owner=owner, metadata=metadata or {})


acreate_stream = published_after(create_stream)


def claim_stream(stream_id: StreamId, *, max_live_per_owner: int | None = None) -> None:
    """Move a stream from ``pending`` to ``streaming``: the one driver's ticket.

    One conditional UPDATE decides, so among any number of concurrent callers, in any
    number of processes, exactly one returns; the others raise
    :class:`~streaming_app.exceptions.StreamNotPending`. An unknown stream raises
    ``Stream.DoesNotExist``. With ``max_live_per_owner``, a stream whose owner already
    has that many streams live is not claimed (``Overloaded``, 429: try again later);
    the owner's row is locked while the UPDATE counts them, so simultaneous claims
    cannot slip past the limit.
    Whoever claims a stream must drive it to its end: with
    :class:`~streaming_app.drive.run.StreamRun` (from a view, a task or a worker), or it
    times out.
    """
    pk = parse_stream_id(stream_id)
    now = timezone.now()
    # A pending stream nobody drove within PENDING_TIMEOUT (if set) has timed out.
    claimable = Stream.objects.filter(pk=pk, status=Status.PENDING).exclude(
        pk__in=stale_streams(now=now).filter(pk=pk).values("pk")
    )
    if max_live_per_owner is not None:
        owners_live = (
            Stream.objects.filter(owner=OuterRef("owner"), status=Status.STREAMING)
            .exclude(pk__in=stale_streams(now=now).values("pk"))
            .order_by()
            .values("owner")
            .annotate(live=Count("pk"))
            .values("live")
        )
        claimable = claimable.filter(
            Q(owner__isnull=True)
            | Q(LessThan(Coalesce(Subquery(owners_live), 0), max_live_per_owner))
        )
    with write_transaction():
        if max_live_per_owner is not None:
            # Claims of one owner's streams take turns (other owners' do not wait).
            owner = Stream.objects.filter(pk=pk).values("owner_id")[:1]
            list(
                get_user_model()
                .objects.filter(pk=Subquery(owner))
                .select_for_update()
                .values_list("pk", flat=True)
            )
        if claimable.update(status=Status.STREAMING, updated_at=now):
            publish_on_commit(Update(pk, 0, "", Status.STREAMING, None))
            return
    stream = expire_if_stale(get_stream(pk))
    if stream.status == Status.PENDING and max_live_per_owner is not None:
        raise Overloaded(
            f"you are driving your limit of {max_live_per_owner} streams; try again when one ends",
            status_code=429,
        )
    raise StreamNotPending(stream.status)


aclaim_stream = published_after(claim_stream)


# Read ----------------------------------------------------------------------------------


def get_stream(stream_id: StreamId) -> Stream:
    """The stream, as it is in the database. Raises ``Stream.DoesNotExist`` for an
    unknown or malformed id."""
    return Stream.objects.get(pk=parse_stream_id(stream_id))


aget_stream = published_after(get_stream)


def expire_if_stale(stream: Stream) -> Stream:
    """``stream``, ended first if it is stale (its writer died, or nobody drove it
    within ``PENDING_TIMEOUT``): what a read of a stream does before it answers."""
    if stream.is_stale(timeout(), pending_timeout()):
        expire_stream(stream.pk)
        stream.refresh_from_db()
    return stream


def read_text(stream_id: StreamId, start: int, end: int) -> str:
    """The committed body between code points ``start`` and ``end`` (end <= length)."""
    stream_id = parse_stream_id(stream_id)
    if start >= end:
        return ""
    first_seq = (
        Chunk.objects.filter(stream_id=stream_id, offset__lte=start)
        .order_by("-seq")
        .values("seq")[:1]
    )
    # Only the characters wanted leave the database (SUBSTR counts code points on
    # PostgreSQL and SQLite alike): a window of a merged chunk of megabytes costs the
    # window. Each chunk from where it holds ``start`` (its first character, for every
    # chunk after the first), at most ``end - start`` of it.
    span = min(end - start, 2**31 - 1)
    within = Case(
        When(offset__lt=start, then=Cast(Value(start + 1) - F("offset"), IntegerField())),
        default=Value(1),
    )
    pieces = (
        Chunk.objects.filter(stream_id=stream_id, seq__gte=Subquery(first_seq), offset__lt=end)
        .order_by("seq")
        .annotate(piece=Substr("text", within, Value(span)))
        .values_list("piece", flat=True)
    )
    return "".join(pieces)[: end - start]


def body_of(
    stream: Stream, offset: int | str = 0, *, past_end_ok: bool = False, limit: int | None = None
) -> StreamBody:
    """The body of an already loaded ``stream`` from ``offset``, read after the row.

    ``past_end_ok`` gives empty text, not InvalidOffset, past the end of a finished
    stream (for a viewer who waited there for text that never came). ``limit``: at
    most that many characters of text (``offset + len(text)`` may then be short of
    ``length``).
    """
    start = parse_offset(offset)
    if start > stream.length and stream.is_finished and not past_end_ok:
        raise InvalidOffset(ended_before(stream.status, stream.length, start))
    return StreamBody(
        id=stream.id,
        status=stream.status,
        # Chunks past stream.length may have committed since the row was read; the
        # text stops at the row's length so that it agrees with the row's status.
        text=read_text(
            stream.id, start, stream.length if limit is None else min(stream.length, start + limit)
        ),
        offset=start,
        length=stream.length,
        error=stream.error or None,
        parts=tuple(stream.parts or ()),
    )


def get_stream_body(stream_id: StreamId, offset: int | str = 0) -> StreamBody:
    """Read a stream's committed text from code point ``offset`` on.

    The status and the text are consistent: the text is exactly what had committed
    when the status was read, so a ``done`` body is always the whole body. A stale
    stream is ended first (``timeout``). Raises ``Stream.DoesNotExist`` for an unknown
    or malformed id, and :class:`~streaming_app.exceptions.InvalidOffset` for a
    negative offset or one past the end of a finished stream (past the end of a live
    stream gives empty text).
    """
    return body_of(expire_if_stale(get_stream(stream_id)), offset)


aget_stream_body = published_after(get_stream_body)


# End -----------------------------------------------------------------------------------


def expire_stream(stream_id: StreamId, seconds: float | None = None) -> str | None:
    """End a stream that is stale: ``streaming`` with no activity for ``seconds``
    (default ``TIMEOUT``), or ``pending`` for longer than ``PENDING_TIMEOUT`` (if set).
    It becomes ``cancelled`` if a cancel was asked of it, else ``timeout``. Returns the
    new status, or None if the stream was not stale. Its committed text stays. Raises
    ``Stream.DoesNotExist`` for a malformed id."""
    stream_id = parse_stream_id(stream_id)
    seconds = timeout() if seconds is None else seconds
    waited = pending_timeout()
    now = timezone.now()
    with write_transaction():
        expired = (
            stale_streams(seconds, now=now)
            .filter(pk=stream_id)
            .update(
                status=Case(
                    When(cancel_requested_at__isnull=False, then=Value(Status.CANCELLED)),
                    default=Value(Status.TIMEOUT),
                ),
                error=Case(
                    When(cancel_requested_at__isnull=False, then=Value("")),
                    When(
                        status=Status.PENDING,
                        then=Value(f"not driven within {round(waited or 0)} seconds"),
                    ),
                    default=Value(f"no activity for {round(seconds)} seconds"),
                ),
                finished_at=now,
            )
        )
        if not expired:
            return None
        row = Stream.objects.values("status", "length", "error").get(pk=stream_id)
        if conf.get("COMPACT_FINISHED"):
            compact_stream(stream_id)
        publish_on_commit(Update(stream_id, row["length"], "", row["status"], row["error"] or None))
        return str(row["status"])


def expire_stale_streams(seconds: float | None = None, *, batch_size: int = 500) -> int:
    """Expire every streaming stream with no activity for ``seconds`` (default:
    TIMEOUT), and every pending one older than ``PENDING_TIMEOUT`` (if set). Returns
    how many were expired."""
    seconds = timeout() if seconds is None else seconds
    now = timezone.now()
    expired = 0
    while True:
        ids = list(stale_streams(seconds, now=now).values_list("pk", flat=True)[:batch_size])
        expired += sum(1 for pk in ids if expire_stream(pk, seconds))
        if len(ids) < batch_size:
            return expired


aexpire_stale_streams = published_after(expire_stale_streams)


def cancel_stream(stream_id: StreamId) -> str:
    """Ask a stream to stop. Returns its status after the request.

    A ``pending`` stream is ``cancelled`` at once. For a ``streaming`` one, the run
    driving it, in whatever process, stops its generator (at once through the channel
    layer, or at its next flush or heartbeat), commits what it has and ends the stream
    as ``cancelled``; until then the status stays ``streaming``. If that run has died,
    the stream ends ``cancelled`` when it expires. One written over Durable Streams
    (no run writes it) ends ``cancelled`` at once. A finished stream is left as it is.
    Raises ``Stream.DoesNotExist``.
    """
    pk = parse_stream_id(stream_id)
    now = timezone.now()
    with write_transaction():
        if Stream.objects.filter(pk=pk, status=Status.PENDING).update(
            status=Status.CANCELLED, finished_at=now, updated_at=now
        ):
            publish_on_commit(Update(pk, 0, "", Status.CANCELLED, None))
        elif Stream.objects.filter(
            pk=pk, status=Status.STREAMING, cancel_requested_at__isnull=True
        ).update(cancel_requested_at=now):
            cancel_on_commit(pk)
    return expire_if_stale(get_stream(pk)).status


acancel_stream = published_after(cancel_stream)


# Delete, purge, compact ----------------------------------------------------------------


def delete_stream(stream_id: StreamId) -> bool:
    """Delete a stream and its chunks. Returns False if there was no such stream.

    The run driving a live stream, wherever it is, is told to stop at once (as by
    any deletion of streams: see ``StreamQuerySet.delete``).
    """
    try:
        pk = parse_stream_id(stream_id)
    except Stream.DoesNotExist:
        return False
    deleted, _ = Stream.objects.filter(pk=pk).delete()
    return deleted > 0


adelete_stream = published_after(delete_stream)


def purge_streams(
    older_than: timedelta, statuses: Iterable[str] = TERMINAL_STATUSES, *, batch_size: int = 500
) -> int:
    """Delete finished streams (of ``statuses``) that finished more than ``older_than``
    ago, with their chunks, in batches. Returns how many streams were deleted."""
    statuses = [s for s in statuses if is_finished(s)]
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
        with write_transaction():
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
    with write_transaction():
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


acompact_stream = published_after(compact_stream)


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
