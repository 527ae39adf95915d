"""Whatever fails inside a run, the stream ends (design.md, invariants 9 and 12)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import pytest
from django.test import override_settings

from streaming_app.drive.flush import FlushPolicy
from streaming_app.drive.run import StreamRun
from streaming_app.models import Status
from streaming_app.streams import aclaim_stream, acreate_stream, aget_stream_body

from .faults import HEARTBEAT, Hang, database_refuses
from .helpers import run_to_end, stream_row, wait_finished

pytestmark = pytest.mark.django_db(transaction=True)

QUICK = FlushPolicy(min_interval=0.0, max_interval=0.05, max_chars=4096)


async def started(source, **kwargs) -> tuple[uuid.UUID, StreamRun, asyncio.Task]:
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    run = StreamRun(stream.pk, source, **kwargs)
    return stream.pk, run, run.start()


async def committed(stream_id, length: int, within: float = 10) -> None:
    """Wait until ``length`` characters of the stream have committed."""
    async with asyncio.timeout(within):
        while True:
            if (await stream_row(stream_id)).length >= length:
                return
            await asyncio.sleep(0.01)


@override_settings(STREAMING_APP={"HEARTBEAT_INTERVAL": 0.05, "MAX_PENDING_CHARS": 100})
async def test_a_heartbeat_the_database_refuses_ends_the_stream_as_error(caplog):
    """The writer's heartbeat fails with an error that is not a lost connection: the
    run stops its generator, keeps what committed, and ends the stream `error`. (Before,
    the writer's task died, the generator went on, and past MAX_PENDING_CHARS it
    waited for room for ever.)"""
    closed = asyncio.Event()
    refused = asyncio.Event()

    async def model():
        try:
            yield "Thinking. "
            with contextlib.suppress(TimeoutError):
                # Silent until a heartbeat has been refused (the run stops us here)...
                await asyncio.wait_for(refused.wait(), 5)
            for _ in range(100):  # ...or, if it does not, ten times MAX_PENDING_CHARS
                yield "0123456789"
        finally:
            closed.set()

    class Refusals(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "heartbeat refused" in str(record.exc_info and record.exc_info[1]):
                refused.set()

    watcher = Refusals()
    logging.getLogger("streaming_app").addHandler(watcher)
    try:
        async with database_refuses(
            "streaming_app_stream", when=HEARTBEAT, message="heartbeat refused"
        ):
            stream_id, run, _ = await started(model(), policy=QUICK)
            status = await asyncio.wait_for(run.wait(), 10)
    finally:
        logging.getLogger("streaming_app").removeHandler(watcher)
    assert refused.is_set(), "the fault did not hit a heartbeat"
    assert closed.is_set(), "the generator was not stopped"
    assert status == Status.ERROR
    body = await aget_stream_body(stream_id)
    assert (body.status, body.error) == (Status.ERROR, "the reply could not be saved")
    assert body.text.startswith("Thinking. ")


@override_settings(STREAMING_APP={"HEARTBEAT_INTERVAL": 0.05})
async def test_cancelling_the_run_task_ends_the_stream_as_cancelled():
    never = asyncio.Event()

    async def model():
        yield "Some text. "
        await never.wait()

    stream_id, run, task = await started(model(), policy=QUICK)
    await committed(stream_id, len("Some text. "))
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    stream = await wait_finished(stream_id, within=5)
    assert (stream.status, stream.length) == (Status.CANCELLED, len("Some text. "))
    # Nothing beats for a run that stopped: three heartbeat intervals, no activity.
    await asyncio.sleep(0.3)
    assert (await stream_row(stream_id)).updated_at == stream.updated_at


async def test_a_source_that_raises_cancelled_error_ends_the_stream_as_cancelled():
    async def model():
        yield "Half. "
        raise asyncio.CancelledError

    stream_id, status = await asyncio.wait_for(run_to_end(model(), policy=QUICK), 10)
    body = await aget_stream_body(stream_id)
    assert (status, body.status, body.text) == (Status.CANCELLED, Status.CANCELLED, "Half. ")


def raw_message(exc: BaseException) -> str:
    """An ERROR_MESSAGE that passes the exception's own words on."""
    return f"{exc} " * 200


@pytest.mark.parametrize("words", ["bad\x00byte", "lone \ud800 surrogate"])
@pytest.mark.parametrize("error_message", [None, "tests.test_run_failures.raw_message"])
async def test_an_error_message_the_database_cannot_hold_still_ends_the_stream(
    words, error_message
):
    async def model():
        yield "Kept text. "
        raise ValueError(words)

    settings = {"ERROR_MESSAGE": error_message} if error_message else {}
    with override_settings(STREAMING_APP=settings):
        stream_id, status = await asyncio.wait_for(run_to_end(model(), policy=QUICK), 10)
    body = await aget_stream_body(stream_id)
    assert (status, body.status, body.text) == (Status.ERROR, Status.ERROR, "Kept text. ")
    if error_message is None:
        assert body.error == "generation failed"
    else:
        cleaned = words.replace("\x00", "\ufffd").replace("\ud800", "\ufffd")
        assert body.error is not None and body.error.startswith(f"{cleaned} {cleaned} ")
        assert len(body.error) <= 500


@override_settings(STREAMING_APP={"DATABASE_OUTAGE_LIMIT": 0.3})
async def test_a_database_call_that_never_returns_does_not_pin_the_run():
    produced: list[str] = []

    async def model():
        while True:
            produced.append("More words. ")
            yield "More words. "
            await asyncio.sleep(0.01)

    with Hang() as hang:
        stream_id, run, _ = await started(model(), policy=QUICK)
        status = await asyncio.wait_for(run.wait(), 10)
        assert hang.entered.is_set() and not hang.released.is_set(), (
            "the run ended while a flush was still held by the database"
        )
        assert status == Status.ERROR
        hang.release()
        # The database answers: the stream is ended, with everything generated.
        stream = await wait_finished(stream_id, within=10)
    body = await aget_stream_body(stream_id)
    assert (stream.status, body.text) == (Status.ERROR, "".join(produced))
    assert body.error == "the database was unreachable for more than 0.3 seconds"
