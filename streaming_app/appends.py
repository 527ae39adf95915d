"""Streams written by appends, not by a run: the core of the Durable Streams write path
(PROTOCOL.md §5.1–§5.4), with no HTTP in it.

A stream created by :func:`create` is a :class:`~.models.Stream` like any other, with a
:class:`~.models.DurableStream` beside it for its name and the protocol's state. Each
append is one transaction: the stream's rows are locked, the protocol's checks made
(closure, content type, ``Stream-Seq``, the idempotent producer), the text inserted as
one chunk and the producer's state written with it, and the change published after the
commit, so that its viewers, over any transport, see it as they see a run's flushes
(invariants 1, 3 and 8).

Bytes become the body's text by content type (:func:`decode`): UTF-8 for ``text/*``
and ``application/json`` (whose messages are kept one per line, compact), and for any
other type one code point per byte, so that offsets count bytes and every byte value
but NUL (which PostgreSQL's text cannot hold: it is kept as U+0100) is itself.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, router, transaction
from django.db.models import Max
from django.utils import timezone

from . import conf
from .exceptions import Overloaded
from .fanout.outbox import publish_on_commit
from .fanout.publish import Update
from .models import (
    Chunk,
    DurableProducer,
    DurableStream,
    Status,
    Stream,
    is_finished,
    lock_streams,
    parse_stream_id,
    write_transaction,
)

#: The content type of the app's own streams, as Durable Streams reads them.
TEXT_PLAIN = "text/plain; charset=utf-8"
#: The greatest producer epoch or sequence number (JavaScript's safe integers).
MAX_PRODUCER_NUMBER = 2**53 - 1


class AppendError(Exception):
    """An append, creation or close the protocol refuses: ``kind`` says which, for the
    transport to answer (a 400, 403, 409 or 413)."""

    kind = "bad request"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class BadBody(AppendError):
    """Invalid JSON, an empty JSON array, a NUL in a text stream."""


class Conflict(AppendError):
    """A content type that does not match, a ``Stream-Seq`` that does not grow, a
    creation whose configuration differs from the existing stream's."""

    kind = "conflict"


class Closed(Conflict):
    """An append to a closed stream; ``details["length"]`` is its final length."""


class StaleEpoch(AppendError):
    """A producer's epoch older than the stream's (``details["epoch"]``)."""

    kind = "forbidden"


class SequenceGap(Conflict):
    """A producer's sequence number past the next (``details["expected"]``)."""


class TooLong(AppendError):
    """Past ``MAX_LENGTH``."""

    kind = "too long"


class NotAppendable(AppendError):
    """One of the app's own streams (a run writes it)."""

    kind = "not appendable"


# Content types -------------------------------------------------------------------------


def media_type(content_type: str) -> str:
    """``text/plain`` of ``Text/Plain; charset=utf-8``: what two content types must
    share to match."""
    return content_type.split(";")[0].strip().lower()


def is_json(content_type: str) -> bool:
    return media_type(content_type) == "application/json"


def is_text(content_type: str) -> bool:
    """Whether the stream's bytes are UTF-8 text (``text/*`` without another charset,
    and JSON); other types are bytes."""
    if is_json(content_type):
        return True
    if not media_type(content_type).startswith("text/"):
        return False
    params = dict(part.strip().lower().partition("=")[::2] for part in content_type.split(";")[1:])
    return params.get("charset", "utf-8").strip('"') in ("utf-8", "utf8", "us-ascii")


def json_messages(body: bytes, *, flatten: bool = True) -> list[str]:
    """The messages of a JSON body, compact, one level of array flattened (§9.1)."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
        values = value if flatten and isinstance(value, list) else [value]
        messages = [json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in values]
        for message in messages:
            message.encode()  # a lone surrogate ("\\ud800") is no text a database holds
        return messages
    except (UnicodeError, ValueError) as exc:
        raise BadBody(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadBody("the body's JSON is nested too deeply") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_lines(text: str) -> list[str]:
    """A JSON stream's messages, one a line (``\\n`` alone: a message may hold U+2028,
    which ``str.splitlines`` would split at), each with its line end."""
    return [line + "\n" for line in text.split("\n")[:-1]]


def decode(content_type: str, body: bytes, *, creating: bool = False) -> str:
    """``body`` as the text the stream keeps."""
    if is_json(content_type):
        messages = json_messages(body)
        if not messages and not creating:
            raise BadBody("an empty JSON array appends nothing")
        return "".join(message + "\n" for message in messages)
    if is_text(content_type):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadBody(f"the body is not UTF-8 ({exc}); bytes go in a binary stream") from None
        if "\x00" in text:
            raise BadBody("a text stream cannot hold NUL; bytes go in a binary stream")
        return text
    return body.decode("latin-1").replace("\x00", "\u0100")


def encode(content_type: str, text: str) -> bytes:
    """The bytes of ``text`` read from a stream of ``content_type`` (the inverse of
    :func:`decode`; JSON as one array of the messages)."""
    if is_json(content_type):
        return ("[" + ",".join(line[:-1] for line in json_lines(text)) + "]").encode()
    if is_text(content_type):
        return text.encode()
    return text.replace("\u0100", "\x00").encode("latin-1")


# Streams -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fork:
    """A creation's source (``Stream-Forked-From``, as a name under the same mount) and
    where the fork diverges: ``offset`` (None: the source's tail) and ``sub_offset``
    past it (§4.2: messages of a JSON stream, bytes of any other)."""

    source: str
    offset: int | None = None
    sub_offset: int = 0


@dataclass(frozen=True)
class Config:
    """What a creation sets: compared with the existing stream's on a repeated one.
    ``content_type`` None: a fork's, inherited from its source."""

    content_type: str | None
    ttl: int | None = None
    expires_at: datetime | None = None
    closed: bool = False
    fork: Fork | None = None


@dataclass(frozen=True)
class Found:
    """A stream by its name: the app's row, and its Durable Streams state (None for
    one of the app's own streams, read as ``text/plain``)."""

    stream: Stream
    durable: DurableStream | None

    @property
    def content_type(self) -> str:
        return self.durable.content_type if self.durable else TEXT_PLAIN


class Gone(AppendError):
    """A stream deleted while forks of it remain (§4.2: soft-deleted)."""

    kind = "gone"


def expired(durable: DurableStream, now: datetime | None = None) -> bool:
    now = now or timezone.now()
    if durable.expires_at is not None and durable.expires_at <= now:
        return True
    return durable.ttl is not None and durable.accessed_at + timedelta(seconds=durable.ttl) <= now


def find(name: str, *, touch: bool = False) -> Found:
    """The stream called ``name``: one created over Durable Streams, or else one of the
    app's by its id. One past its TTL or expiry is deleted, and not found. ``touch``:
    a read or write that resets a TTL. Raises ``Stream.DoesNotExist``, and
    :class:`Gone` for a soft-deleted one."""
    durable = DurableStream.objects.select_related("stream").filter(name=name).first()
    if durable is None:
        # One of the app's own by its id (not one created over the protocol: its name
        # is its only URL, soft-deleted or not).
        return Found(Stream.objects.get(pk=parse_stream_id(name), durable__isnull=True), None)
    if durable.soft_deleted:
        raise Gone("the stream was deleted; forks of it remain")
    now = timezone.now()
    if expired(durable, now):
        Stream.objects.filter(pk=durable.stream_id).delete()
        raise Stream.DoesNotExist(f"no stream {name[:60]!r}")
    if touch and durable.ttl is not None:
        DurableStream.objects.filter(pk=durable.pk).update(accessed_at=now)
    return Found(durable.stream, durable)


def _inherited(source: Found, fork: Fork) -> tuple[int, str]:
    """Where a fork of ``source`` diverges, and its sub-offset's text past there (up to
    the source's next data boundary: the end of the append that holds the offset)."""
    stream = source.stream
    offset = stream.length if fork.offset is None else fork.offset
    if offset > stream.length:
        raise BadBody("Stream-Fork-Offset is past the source's tail")
    if not fork.sub_offset:
        return offset, ""
    chunk = (
        Chunk.objects.filter(stream=stream, offset__lte=offset)
        .order_by("-seq")
        .values("offset", "text")
        .first()
    )
    rest = chunk["text"][offset - chunk["offset"] :] if chunk else ""
    content_type, sub = source.content_type, fork.sub_offset
    if is_json(content_type):
        messages = json_lines(rest)
        if sub > len(messages):
            raise BadBody("Stream-Fork-Sub-Offset is past the source's next data boundary")
        return offset, "".join(messages[:sub])
    if is_text(content_type):
        data = rest.encode()
        if sub > len(data):
            raise BadBody("Stream-Fork-Sub-Offset is past the source's next data boundary")
        try:
            return offset, data[:sub].decode()
        except UnicodeDecodeError:
            raise BadBody("Stream-Fork-Sub-Offset splits a character") from None
    if sub > len(rest):
        raise BadBody("Stream-Fork-Sub-Offset is past the source's next data boundary")
    return offset, rest[:sub]


def _copy(source: Stream, stream: Stream, end: int, extra: str) -> None:
    """The source's chunks up to code point ``end`` (and ``extra`` after), as
    ``stream``'s own: same offsets, same boundaries."""
    chunks = []
    for chunk in Chunk.objects.filter(stream=source, offset__lt=end).order_by("seq"):
        chunks.append(chunk.text[: end - chunk.offset])
    if extra:
        chunks.append(extra)
    offset = 0
    rows = []
    for seq, text in enumerate(chunks):
        rows.append(Chunk(stream=stream, seq=seq, offset=offset, text=text))
        offset += len(text)
    Chunk.objects.bulk_create(rows)


def create(
    name: str,
    config: Config,
    body: bytes = b"",
    *,
    owner: Any = None,
    check_source: Callable[[Stream], None] | None = None,
) -> tuple[Found, bool]:
    """Create the stream ``name`` with ``config`` and ``body`` as its first text (after
    what a fork inherits: the source's text up to the fork's offset, copied);
    ``(found, False)`` if it exists with the same configuration (the body is then not
    appended). Raises :class:`Conflict` if it exists otherwise (or was deleted while
    forks of it remain), ``Stream.DoesNotExist`` for a fork's missing source,
    :class:`BadBody`, :class:`TooLong`. ``check_source``: called with a fork's source
    once it is found (a transport's permission check: it raises to refuse)."""
    with write_transaction():
        source, fork = None, config.fork
        if fork is not None:
            try:
                source = find(fork.source)
            except Gone:
                raise Conflict("the source was deleted; it cannot be forked") from None
            if check_source is not None:
                check_source(source.stream)
            if config.content_type is not None and media_type(config.content_type) != media_type(
                source.content_type
            ):
                raise Conflict(f"the source's content type is {source.content_type}")
            # Its bytes are the source's: its content type too, charset and all.
            config = replace(config, content_type=source.content_type)
            # Forking and deleting the source take turns (its row locked): a fork is
            # never made of a source deleted meanwhile.
            if not lock_streams(Stream.objects.filter(pk=source.stream.pk)):
                raise Stream.DoesNotExist(f"no stream {fork.source[:60]!r}")
            if config.ttl is None and config.expires_at is None and source.durable is not None:
                config = replace(
                    config, ttl=source.durable.ttl, expires_at=source.durable.expires_at
                )
        content_type = config.content_type or "application/octet-stream"
        try:
            found = find(name)
        except Gone:
            raise Conflict("a stream deleted while forks of it remain keeps its name") from None
        except Stream.DoesNotExist:
            found = None
        if found is not None:
            if not _same(found, replace(config, content_type=content_type), source):
                raise Conflict("the stream exists with another configuration")
            return found, False
        if owner is not None and not config.closed:
            _within_live_limit(owner)
        text = decode(content_type, body, creating=True) if body else ""
        at, extra = _inherited(source, config.fork) if source and config.fork else (0, "")
        limit = conf.get("MAX_LENGTH")
        if limit is not None and at + len(extra) + len(text) > int(limit):
            raise TooLong(f"the stream would be longer than its limit of {limit} characters")
        try:
            # Two creations of one name at once: the second waits for the first's
            # commit at the unique name, then answers as a repeated creation does.
            with transaction.atomic(using=router.db_for_write(Stream)):
                return _make(name, config, content_type, text, source, at, extra, owner), True
        except IntegrityError:
            found = find(name)
            if not _same(found, replace(config, content_type=content_type), source):
                raise Conflict("the stream exists with another configuration") from None
            return found, False


def _make(
    name: str,
    config: Config,
    content_type: str,
    text: str,
    source: Found | None,
    at: int,
    extra: str,
    owner: Any,
) -> Found:
    """The rows of a new stream (:func:`create`'s)."""
    now = timezone.now()
    stream = Stream.objects.create(
        owner=owner,
        status=Status.DONE if config.closed else Status.STREAMING,
        finished_at=now if config.closed else None,
        length=at + len(extra) + len(text),
    )
    if source:
        _copy(source.stream, stream, at, extra + text)
    elif text:
        Chunk.objects.create(stream=stream, seq=0, offset=0, text=text)
    durable = DurableStream.objects.create(
        stream=stream,
        name=name,
        content_type=content_type,
        ttl=config.ttl,
        expires_at=config.expires_at,
        accessed_at=now,
        forked_from=source.stream if source else None,
        fork_offset=at if source else None,
        fork_sub_offset=config.fork.sub_offset if config.fork else 0,
    )
    return Found(stream, durable)


def _within_live_limit(owner: Any) -> None:
    """An open stream is one of its owner's live streams, as a driven one is: past
    ``MAX_LIVE_STREAMS_PER_USER`` of them, :class:`Overloaded` (429). The owner's row
    is locked while they are counted, as a claim does."""
    limit = conf.get("MAX_LIVE_STREAMS_PER_USER")
    if limit is None:
        return
    list(type(owner).objects.filter(pk=owner.pk).select_for_update().values_list("pk", flat=True))
    live = Stream.objects.live().filter(owner=owner).count()
    if live >= int(limit):
        raise Overloaded(
            f"you hold your limit of {limit} live streams; close one first", status_code=429
        )


def _same(found: Found, config: Config, source: Found | None) -> bool:
    """Whether a repeated creation asks for what ``found`` is (a fork's offset is
    compared only where the request gives one)."""
    durable = found.durable
    fork = config.fork
    same = (
        media_type(found.content_type) == media_type(config.content_type or "")
        and (durable.ttl if durable else None) == config.ttl
        and (durable.expires_at if durable else None) == config.expires_at
        and found.stream.is_finished == config.closed
    )
    if fork is None:
        return same and (durable is None or durable.forked_from_id is None)
    return (
        same
        and durable is not None
        and source is not None
        and durable.forked_from_id == source.stream.pk
        and (fork.offset is None or durable.fork_offset == fork.offset)
        and durable.fork_sub_offset == fork.sub_offset
    )


@dataclass(frozen=True)
class Producer:
    """An idempotent producer's headers (§5.2.1)."""

    id: str
    epoch: int
    seq: int

    def as_list(self) -> list[Any]:
        return [self.id, self.epoch, self.seq]


@dataclass(frozen=True)
class Appended:
    """What an append did: the stream's length and whether it is closed after it;
    ``duplicate``: nothing was written, it had been (a producer's retry, a repeated
    close); ``producer``: the producer's state after it."""

    length: int
    closed: bool
    duplicate: bool = False
    producer: Producer | None = None


def _producer_check(durable: DurableStream, producer: Producer) -> DurableProducer:
    """The producer's row, checked for ``producer``'s request (§5.2.1's validation):
    to be saved with the append, or, when the request is a duplicate of an accepted
    one, as it is (its ``last_seq`` at or past the request's). Raises
    :class:`StaleEpoch`, :class:`SequenceGap`, :class:`BadBody`."""
    state = DurableProducer.objects.filter(durable=durable, producer=producer.id).first()
    if state is None:
        if producer.seq != 0:
            raise SequenceGap("a new producer starts at 0", expected=0, received=producer.seq)
        return DurableProducer(
            durable=durable, producer=producer.id, epoch=producer.epoch, last_seq=-1
        )
    if producer.epoch < state.epoch:
        raise StaleEpoch(f"epoch {producer.epoch} is stale", epoch=state.epoch)
    if producer.epoch > state.epoch:
        if producer.seq != 0:
            raise BadBody(f"a new epoch starts at sequence 0, not {producer.seq}")
        state.epoch, state.last_seq = producer.epoch, -1
        return state
    if producer.seq <= state.last_seq:
        return state  # a duplicate
    if producer.seq != state.last_seq + 1:
        raise SequenceGap(
            f"expected sequence {state.last_seq + 1}",
            expected=state.last_seq + 1,
            received=producer.seq,
        )
    return state


def _locked(name: str, expect: uuid.UUID | None) -> Found:
    """The stream ``name`` created over Durable Streams, its rows locked for a write
    (the stream's, then its DurableStream's: the order a deletion takes them in), and
    read under the lock. ``expect``: the stream a caller has found already (and checked
    its permission on); it is not looked up again. Raises ``Stream.DoesNotExist`` (also
    if the name is not ``expect`` any more, or went while the lock was awaited),
    :class:`Gone`, :class:`NotAppendable`."""
    if expect is None:
        found = find(name)
        if found.durable is None:
            raise NotAppendable("the app's own streams are written and deleted by the app")
        expect = found.stream.pk
    lock_streams(Stream.objects.filter(pk=expect))
    durable = (
        DurableStream.objects.select_for_update()
        .select_related("stream")
        .filter(stream=expect, name=name, soft_deleted=False)
        .first()
    )
    if durable is None:
        raise Stream.DoesNotExist(f"no stream {name[:60]!r}")
    return Found(durable.stream, durable)


def append(
    name: str,
    body: bytes,
    content_type: str | None,
    *,
    close: bool = False,
    seq: str | None = None,
    producer: Producer | None = None,
    expect: uuid.UUID | None = None,
) -> Appended:
    """Append ``body`` to the stream ``name`` (and close it, with ``close``; an empty
    body only closes). ``expect``: the stream the caller's permission was checked on
    (the name may have been deleted and made again since). Raises
    ``Stream.DoesNotExist``, :class:`NotAppendable` and the other
    :class:`AppendError` s, in the protocol's order of precedence."""
    with write_transaction():
        found = _locked(name, expect)  # the append's save resets a TTL
        durable = found.durable
        assert durable is not None
        stream = found.stream
        if is_finished(stream.status):
            if producer is not None and durable.closed_by == producer.as_list():
                return Appended(stream.length, True, duplicate=True, producer=producer)
            if not body and close:
                return Appended(stream.length, True, duplicate=True)
            raise Closed("the stream is closed", length=stream.length)
        if (
            body
            and content_type is not None
            and media_type(content_type) != media_type(durable.content_type)
        ):
            raise Conflict(
                f"the stream's content type is {durable.content_type}, not {content_type}"
            )
        state = None
        if producer is not None:
            state = _producer_check(durable, producer)
            if producer.seq <= state.last_seq:
                # The highest sequence number it has had accepted (§5.2.1).
                done = Producer(producer.id, state.epoch, state.last_seq)
                return Appended(stream.length, False, duplicate=True, producer=done)
        if seq is not None and durable.last_seq and seq <= durable.last_seq:
            raise Conflict(f"Stream-Seq {seq!r} is not past {durable.last_seq!r}")
        text = decode(durable.content_type, body) if body else ""
        limit = conf.get("MAX_LENGTH")
        if limit is not None and stream.length + len(text) > int(limit):
            raise TooLong(f"the stream would be longer than its limit of {limit} characters")
        now = timezone.now()
        offset = stream.length
        if text:
            last = Chunk.objects.filter(stream=stream).aggregate(last=Max("seq"))["last"]
            Chunk.objects.create(
                stream=stream, seq=0 if last is None else last + 1, offset=offset, text=text
            )
        stream.length = offset + len(text)
        stream.updated_at = now
        fields = ["length", "updated_at"]
        if close:
            stream.status, stream.finished_at = Status.DONE, now
            fields += ["status", "finished_at"]
        stream.save(update_fields=fields)
        if state is not None and producer is not None:
            state.last_seq = producer.seq
            state.save()
        changed = ["accessed_at"]
        durable.accessed_at = now
        if seq is not None:
            durable.last_seq = seq
            changed.append("last_seq")
        if close and producer is not None:
            durable.closed_by = producer.as_list()
            changed.append("closed_by")
        durable.save(update_fields=changed)
        publish_on_commit(Update(stream.pk, offset, text, stream.status, None))
        return Appended(stream.length, close, producer=producer)


def delete(name: str, *, expect: uuid.UUID | None = None) -> None:
    """Delete the stream ``name`` created over Durable Streams, its text and its
    producers; its viewers are closed as for any deletion. One that forks still come
    from is soft-deleted instead (gone to clients, its name kept) until the last of
    them goes; then it goes too, and so on up the chain. Raises
    ``Stream.DoesNotExist``, :class:`Gone`, and :class:`NotAppendable` for one of the
    app's own. ``expect``: as :func:`append`'s."""
    with write_transaction():
        found = _locked(name, expect)
        durable = found.durable
        assert durable is not None
        if DurableStream.objects.filter(forked_from=found.stream).exists():
            DurableStream.objects.filter(pk=durable.pk).update(soft_deleted=True)
            return
        source_id = durable.forked_from_id
        Stream.objects.filter(pk=found.stream.pk).delete()
        while source_id is not None:
            source = DurableStream.objects.filter(stream=source_id, soft_deleted=True).first()
            if source is None or DurableStream.objects.filter(forked_from=source_id).exists():
                return
            source_id = source.forked_from_id
            Stream.objects.filter(pk=source.stream_id).delete()
