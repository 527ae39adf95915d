from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connections, models, router, transaction
from django.db.models import Q
from django.utils import timezone

from .parts import storable

__all__ = [
    "Chunk",
    "DurableProducer",
    "DurableStream",
    "Status",
    "Stream",
    "StreamId",
    "is_finished",
    "parse_stream_id",
    "stale_cutoff",
    "storable",
    "write_transaction",
]


class Status(models.TextChoices):
    PENDING = "pending", "pending"
    STREAMING = "streaming", "streaming"
    DONE = "done", "done"
    ERROR = "error", "error"
    TIMEOUT = "timeout", "timeout"
    CANCELLED = "cancelled", "cancelled"


#: Statuses of a stream that may still change.
LIVE_STATUSES = (Status.PENDING, Status.STREAMING)
#: Statuses that never change again.
TERMINAL_STATUSES = (Status.DONE, Status.ERROR, Status.TIMEOUT, Status.CANCELLED)


def is_finished(status: str) -> bool:
    """Whether ``status`` is terminal: the one definition of "finished"."""
    return status in TERMINAL_STATUSES


def stale_cutoff(timeout: float, now: datetime | None = None) -> datetime:
    """The instant before which a live stream's last activity makes it stale."""
    return (now or timezone.now()) - timedelta(seconds=timeout)


@contextmanager
def write_transaction(using: str | None = None, *, savepoint: bool = True) -> Iterator[None]:
    """``transaction.atomic()`` for the app's transactions, which read before they write.

    SQLite's transactions are DEFERRED unless the project sets ``transaction_mode``: one
    takes the write lock at its first write. One that has read first and finds another
    writer there fails at once with "database is locked", not after the busy
    timeout: the two would wait on each other. So on SQLite the first statement of the
    outermost transaction here is a write that changes nothing: it waits for the lock
    (the busy timeout) before anything is read, as ``BEGIN IMMEDIATE`` would. Other
    databases lock rows (SELECT ... FOR UPDATE) instead.

    ``using``: by default the database the router sends the app's writes to (where the
    rows are), not necessarily ``default``.
    """
    using = using or router.db_for_write(Stream)
    connection = connections[using]
    outermost = not connection.in_atomic_block
    with transaction.atomic(using=using, savepoint=savepoint):
        if (
            outermost
            and connection.vendor == "sqlite"
            and getattr(connection, "transaction_mode", None) not in ("IMMEDIATE", "EXCLUSIVE")
        ):
            with connection.cursor() as cursor:
                table = connection.ops.quote_name(Stream._meta.db_table)
                cursor.execute(f"UPDATE {table} SET id = id WHERE 0")  # noqa: S608
        yield


class StreamQuerySet(models.QuerySet["Stream"]):
    def live(self) -> StreamQuerySet:
        """Streams that may still change: pending or streaming."""
        return self.filter(status__in=LIVE_STATUSES)

    def finished(self) -> StreamQuerySet:
        """Streams with a terminal status."""
        return self.filter(status__in=TERMINAL_STATUSES)

    def stale(
        self, timeout: float, pending_timeout: float | None, *, now: datetime | None = None
    ) -> StreamQuerySet:
        """Live streams past their time: ``streaming`` ones with no activity for
        ``timeout`` seconds (their writer died), ``pending`` ones nobody drove for
        ``pending_timeout`` seconds (None: a pending stream waits for ever, it has no
        writer to die). The one definition of stale (:meth:`Stream.is_stale` applies it
        to a loaded row)."""
        # A stream written over Durable Streams has no writer to die: never stale by
        # its silence; asked to stop, it has no run to stop it: stale at once.
        past = Q(
            status=Status.STREAMING,
            updated_at__lt=stale_cutoff(timeout, now),
            durable__isnull=True,
        ) | Q(status=Status.STREAMING, durable__isnull=False, cancel_requested_at__isnull=False)
        if pending_timeout is not None:
            past |= Q(status=Status.PENDING, updated_at__lt=stale_cutoff(pending_timeout, now))
        return self.live().filter(past)

    def delete(self) -> tuple[int, dict[str, int]]:
        """Delete the streams and their chunks, in one :func:`write_transaction`.

        The streams' rows are locked, and the runs driving the live ones told to stop, by
        the ``pre_delete`` receiver (:mod:`streaming_app.deletion`), as in any deletion
        of streams. This override only opens the transaction before Django reads the rows
        to delete: on SQLite that takes the write lock first, so that no writer commits
        between the read and the deletion, and the deletion, which writes after reading,
        does not fail with "database is locked". Elsewhere it is the deletion's own
        transaction, opened a step earlier.
        """
        with write_transaction(self.db, savepoint=False):
            return super().delete()

    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]


def lock_streams(streams: models.QuerySet[Stream]) -> list[uuid.UUID]:
    """Take the row locks of ``streams`` until the end of the transaction, and return
    their ids (no lock on databases without SELECT ... FOR UPDATE, such as SQLite, which
    lock the whole file)."""
    return list(streams.order_by("pk").select_for_update().values_list("pk", flat=True))


class Stream(models.Model):
    """One body of generated text, persisted in chunks as it is produced."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        # Deleting a user deletes their streams: leaving them ownerless would make
        # them readable by anyone under the default policy.
        on_delete=models.CASCADE,
        related_name="+",
    )
    error = models.TextField(blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    # The part map of a stream whose source sent parts (reasoning, tool calls...):
    # which body offsets belong to which part (streaming_app.parts). Empty for a plain
    # text stream.
    parts = models.JSONField(default=list, blank=True, editable=False)
    # Committed length of the body, in Unicode code points.
    length = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # Last activity: creation, claim, flush or heartbeat. Expiry counts from here (for a
    # pending stream, from its creation: TIMEOUT does not apply, PENDING_TIMEOUT does).
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Set by a cancel while a writer drives the stream; the writer stops its generator,
    # flushes what it has and ends the stream as cancelled.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    objects = StreamQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The expiry scan: active streams by last activity. Finished streams,
            # the great majority, stay out of this index.
            models.Index(
                fields=["updated_at"],
                condition=Q(status__in=LIVE_STATUSES),
                name="streaming_app_active_idx",
            ),
            # Retention: finished streams by age.
            models.Index(
                fields=["finished_at"],
                condition=Q(finished_at__isnull=False),
                name="streaming_app_finished_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status}, {self.length} chars)"

    def delete(
        self, using: str | None = None, keep_parents: bool = False
    ) -> tuple[int, dict[str, int]]:
        """Delete the stream and its chunks, in one :func:`write_transaction` opened
        before Django reads anything (for SQLite: see :meth:`StreamQuerySet.delete`);
        the lock and the stop are :mod:`streaming_app.deletion`'s."""
        using = using or router.db_for_write(type(self), instance=self)
        with write_transaction(using, savepoint=False):
            return super().delete(using=using, keep_parents=keep_parents)

    delete.alters_data = True  # type: ignore[attr-defined]

    @property
    def is_finished(self) -> bool:
        return is_finished(self.status)

    def is_stale(
        self, timeout: float, pending_timeout: float | None, *, now: datetime | None = None
    ) -> bool:
        """Whether this row, as loaded, matches :meth:`StreamQuerySet.stale`."""
        if self.status == Status.STREAMING:
            silent = self.updated_at < stale_cutoff(timeout, now)
            if not silent and self.cancel_requested_at is None:
                return False
            # One written over Durable Streams has no writer to die, nor a run to stop.
            durable = DurableStream.objects.filter(stream=self.pk).exists()
            return (silent and not durable) or (durable and self.cancel_requested_at is not None)
        if self.status == Status.PENDING and pending_timeout is not None:
            return self.updated_at < stale_cutoff(pending_timeout, now)
        return False


#: A stream id as callers pass it: a UUID, or its text (from a URL, a task queue).
StreamId = uuid.UUID | str


def parse_stream_id(value: StreamId) -> uuid.UUID:
    """Return ``value`` as a UUID; a malformed id is an unknown stream
    (``Stream.DoesNotExist``). Every public entry point that takes a stream id turns it
    into a UUID here, so that nothing past it compares a string with a UUID."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise Stream.DoesNotExist(f"no stream {str(value)[:60]!r}") from None


class Chunk(models.Model):
    """A piece of a stream's body, written in one flush.

    Chunk ``seq + 1`` starts where chunk ``seq`` ends: its ``offset`` is the previous
    chunk's ``offset`` plus its length in code points.
    """

    id = models.BigAutoField(primary_key=True)
    stream = models.ForeignKey(Stream, on_delete=models.CASCADE, related_name="chunks")
    seq = models.PositiveIntegerField()
    offset = models.PositiveBigIntegerField()
    text = models.TextField()

    class Meta:
        ordering = ["stream", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["stream", "seq"], name="streaming_app_chunk_seq"),
        ]
        indexes = [
            # Reads from an offset find their first chunk by offset.
            models.Index(fields=["stream", "offset"], name="streaming_app_chunk_offset"),
        ]

    def __str__(self) -> str:
        return f"{self.stream_id}#{self.seq} @{self.offset}"

    @property
    def end(self) -> int:
        return self.offset + len(self.text)


class DurableStream(models.Model):
    """A stream created over the Durable Streams protocol (:mod:`streaming_app.durable`):
    its name in the protocol's URLs, and the protocol's state of it. Its text is its
    :class:`Stream`'s, in the same chunks, followed by the same viewers; it is
    ``streaming`` while open and ``done`` once closed, and never stale (it has no
    writer that could die)."""

    stream = models.OneToOneField(
        Stream, on_delete=models.CASCADE, primary_key=True, related_name="durable"
    )
    #: The last segment(s) of its URL under the mount.
    name = models.CharField(max_length=255, unique=True)
    content_type = models.CharField(max_length=255)
    #: Seconds of idleness after which it expires (``Stream-TTL``), or its absolute
    #: expiry (``Stream-Expires-At``); neither: it lasts.
    ttl = models.PositiveIntegerField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    #: The last read or write that reached the server (a TTL counts from it).
    accessed_at = models.DateTimeField(default=timezone.now)
    #: The last ``Stream-Seq`` of an append ("" before any).
    last_seq = models.CharField(max_length=255, blank=True, default="")
    #: The producer's ``[id, epoch, seq]`` whose append closed it, if one did.
    closed_by = models.JSONField(null=True, blank=True)
    #: A fork's source and where it diverged (its text up to there was copied from
    #: the source's when it was made); a source deleted while forks of it remain is
    #: ``soft_deleted`` (gone to clients, kept until its last fork goes).
    forked_from = models.ForeignKey(
        Stream, null=True, blank=True, on_delete=models.SET_NULL, related_name="forks"
    )
    fork_offset = models.PositiveBigIntegerField(null=True, blank=True)
    fork_sub_offset = models.PositiveBigIntegerField(default=0)
    soft_deleted = models.BooleanField(default=False)

    def __str__(self) -> str:
        return self.name


class DurableProducer(models.Model):
    """An idempotent producer's state on one stream (PROTOCOL.md §5.2.1), written in
    the transaction of the append it accepts."""

    id = models.BigAutoField(primary_key=True)
    durable = models.ForeignKey(DurableStream, on_delete=models.CASCADE, related_name="producers")
    producer = models.CharField(max_length=255)
    epoch = models.PositiveBigIntegerField()
    last_seq = models.PositiveBigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["durable", "producer"], name="streaming_app_durable_producer"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.producer}@{self.epoch}#{self.last_seq}"
