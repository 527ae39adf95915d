"""A fault in one stream's writing ends that stream, never the others of its process
(design.md, invariant 13): the committer is a bulkhead. And stream ids are accepted as
``uuid.UUID`` or ``str`` wherever one is passed."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from django.test import override_settings

from streaming_app import streams
from streaming_app.drive import committer, writer
from streaming_app.drive.flush import FlushPolicy
from streaming_app.drive.persist import Write
from streaming_app.drive.run import StreamRun
from streaming_app.fanout import outbox, publish
from streaming_app.models import Status, Stream
from streaming_app.streams import aclaim_stream, acreate_stream, aget_stream_body

from .helpers import Bystanders, assert_chunks_consistent, chunks_of, stream_row

pytestmark = pytest.mark.django_db(transaction=True)

aexpire_stream = outbox.published_after(streams.expire_stream)
QUICK = FlushPolicy(min_interval=0.0, max_interval=0.02, max_chars=4096)
FIRST = "Committed before the fault. "


class Faulty:
    """A stream whose source produces FIRST, waits until the test has armed a fault
    (:attr:`go_on`), then goes on producing until its run stops it."""

    def __init__(self) -> None:
        self.go_on = asyncio.Event()
        self.produced: list[str] = []
        self.stream_id: uuid.UUID | None = None
        self.run: StreamRun | None = None

    async def source(self) -> AsyncIterator[str]:
        self.produced.append(FIRST)
        yield FIRST
        await self.go_on.wait()
        for k in range(2000):
            await asyncio.sleep(0.005)
            piece = f"After {k}. "
            self.produced.append(piece)
            yield piece

    async def start(self, as_id: Callable[[uuid.UUID], Any] = lambda pk: pk) -> None:
        stream = await acreate_stream()
        await aclaim_stream(stream.pk)
        self.stream_id = stream.pk
        self.run = StreamRun(as_id(stream.pk), self.source(), policy=QUICK)
        self.run.start()
        async with asyncio.timeout(10):
            while True:  # FIRST has committed
                if (await stream_row(stream.pk)).length >= len(FIRST):
                    break
                await asyncio.sleep(0.01)

    async def ended_in_error(self, caplog: pytest.LogCaptureFixture, hit: str) -> None:
        """It ended ``error`` with a public message, its committed text kept (a prefix
        of what it produced, FIRST at least), its row not left streaming, and the fault
        logged with its traceback."""
        assert self.run is not None and self.stream_id is not None
        status = await asyncio.wait_for(self.run.wait(), 10)
        body = await aget_stream_body(self.stream_id)
        text = assert_chunks_consistent(await chunks_of(self.stream_id))
        assert (status, self.run.error) == (Status.ERROR, "generation failed")
        assert (body.status, body.error) == (Status.ERROR, "generation failed")
        assert body.text == text and text.startswith(FIRST)
        assert "".join(self.produced).startswith(text)
        logged = [r for r in caplog.records if r.exc_info and hit in str(r.exc_info[1])]
        assert logged, f"the fault ({hit}) was not logged with its traceback"
        assert str(self.stream_id) in logged[0].getMessage()


async def test_an_exception_from_one_writers_settle_ends_that_stream_only(monkeypatch, caplog):
    """Before, the committer's catch-all ended every writer of the loop: the ten
    bystanders ended `error` with part of their text."""
    caplog.set_level(logging.ERROR, "streaming_app")
    bystanders, faulty = Bystanders(policy=QUICK), Faulty()
    await bystanders.start()
    await faulty.start()
    hits: list[Any] = []
    settle = writer.StreamWriter.settle

    def faulty_settle(self: writer.StreamWriter, *args: Any) -> Any:
        if self.stream_id == faulty.stream_id:
            hits.append(args)
            bystanders.resume.set()
            raise RuntimeError("injected: settle failed")
        return settle(self, *args)

    monkeypatch.setattr(writer.StreamWriter, "settle", faulty_settle)
    faulty.go_on.set()
    await bystanders.finish()
    assert hits, "the fault did not hit"
    await faulty.ended_in_error(caplog, "injected: settle failed")


async def test_a_missing_outcome_ends_that_stream_only(monkeypatch, caplog):
    """The transaction commits but says nothing of one stream (a bug in persist):
    before, a KeyError in the committer ended every writer of the loop."""
    caplog.set_level(logging.ERROR, "streaming_app")
    bystanders, faulty = Bystanders(policy=QUICK), Faulty()
    await bystanders.start()
    await faulty.start()
    dropped: list[Any] = []
    write = committer.write_in_transaction

    def forgetful(writes: list[Write]) -> dict[uuid.UUID, Any]:
        outcomes = write(writes)
        if faulty.stream_id in outcomes and not dropped:
            dropped.append(outcomes.pop(faulty.stream_id))
            bystanders.resume.set()
        return outcomes

    monkeypatch.setattr(committer, "write_in_transaction", forgetful)
    faulty.go_on.set()
    await bystanders.finish()
    assert dropped, "the fault did not hit"
    await faulty.ended_in_error(caplog, "no outcome")


async def test_a_batch_that_does_not_start_where_the_stream_ends_ends_that_stream(
    monkeypatch, caplog
):
    """A bug in one stream's batch: its offset is off by one. Before, the writer took
    the database's refusal for someone else's end, stopped beating and left the row
    `streaming` (until it expired)."""
    caplog.set_level(logging.ERROR, "streaming_app")
    bystanders, faulty = Bystanders(policy=QUICK), Faulty()
    await bystanders.start()
    await faulty.start()
    shifted: list[Any] = []
    next_write = writer.StreamWriter.next_write

    def off_by_one(self: writer.StreamWriter, now: float) -> Write | None:
        write = next_write(self, now)
        ours = self.stream_id == faulty.stream_id
        if ours and write and write.batch and write.batch.text and not shifted:
            shifted.append(write.batch)
            bystanders.resume.set()
            batch = dataclasses.replace(write.batch, offset=write.batch.offset + 1)
            return Write(write.stream_id, batch)
        return write

    monkeypatch.setattr(writer.StreamWriter, "next_write", off_by_one)
    faulty.go_on.set()
    await bystanders.finish()
    assert shifted, "the fault did not hit"
    await faulty.ended_in_error(caplog, "does not start where")


async def test_a_run_given_its_stream_id_as_a_string_runs_beside_the_others():
    """`StreamRun("<uuid>", source)`, as a worker that got the id from a queue would
    write it. Before, persist.write did not match the id, and the KeyError that
    followed in the committer ended every stream of the loop `error`."""
    bystanders, other = Bystanders(policy=QUICK), Faulty()
    await bystanders.start()
    await other.start(as_id=str)
    assert other.run is not None
    assert other.run.stream_id == other.stream_id  # normalised at the boundary
    other.go_on.set()
    bystanders.resume.set()
    await bystanders.finish()
    other.run.cancel()
    status = await asyncio.wait_for(other.run.wait(), 10)
    body = await aget_stream_body(str(other.stream_id))
    assert (status, body.status) == (Status.CANCELLED, Status.CANCELLED)
    assert body.text.startswith(FIRST) and "".join(other.produced).startswith(body.text)


async def test_a_malformed_stream_id_is_refused_when_the_run_is_made():
    async def source() -> AsyncIterator[str]:
        yield "never"

    with pytest.raises(Stream.DoesNotExist, match="no stream 'not-a-uuid'"):
        StreamRun("not-a-uuid", source())


@override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}})
async def test_every_public_operation_takes_a_string_id_and_refuses_a_malformed_one():
    stream = await acreate_stream()
    sid = str(stream.pk)
    await streams.aclaim_stream(sid)
    assert (await streams.aget_stream_body(sid)).status == Status.STREAMING
    assert await aexpire_stream(sid, 0) == Status.TIMEOUT
    assert await streams.acancel_stream(sid) == Status.TIMEOUT
    assert await streams.acompact_stream(sid) is False
    await publish.adisconnect_viewers(sid)
    assert await streams.adelete_stream(sid) is True

    for operation in (
        streams.aclaim_stream,
        streams.aget_stream_body,
        streams.acancel_stream,
        aexpire_stream,
        publish.adisconnect_viewers,
    ):
        with pytest.raises(Stream.DoesNotExist, match="no stream 'nope'"):
            await operation("nope")
    assert await streams.adelete_stream("nope") is False
    assert await streams.acompact_stream("nope") is False
