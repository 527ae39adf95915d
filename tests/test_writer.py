"""The writer against a real database: exactness, ordering, errors, the flush policy."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming_app import astream_response
from streaming_app.drive.flush import FlushPolicy
from streaming_app.drive.run import StreamRun
from streaming_app.models import Status
from streaming_app.streams import (
    aclaim_stream,
    acreate_stream,
    aget_stream_body,
    compact_stream,
    get_stream_body,
)

from .faults import Hang, Statements, database_refuses
from .helpers import (
    assert_chunks_consistent,
    chunks_of,
    committed_events,
    drive_request,
    owned_stream,
    paced,
    run_to_end,
    stream_row,
    wait_finished,
)
from .test_lifecycle import Fed

pytestmark = pytest.mark.django_db(transaction=True)

# For tests of where the writer cuts chunks: finished streams are merged otherwise.
KEEP_CHUNKS = override_settings(STREAMING_APP={"COMPACT_FINISHED": False})

# Code points of 1, 2, 3 and 4 UTF-8 bytes, combining marks, ZWJ emoji sequences, CJK.
SPECIAL = [
    "a",
    "é",
    "e\u0301",
    "\u0308",
    "€",
    "中",
    "文",
    "😀",
    "👩🏽‍💻",
    "🇫🇷",
    "\n",
    ". ",
    "。",
    "\u200d",
]
pieces_strategy = st.lists(
    st.one_of(
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
        st.lists(st.sampled_from(SPECIAL), max_size=6).map("".join),
    ),
    max_size=50,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    pieces=pieces_strategy,
    max_chars=st.integers(min_value=1, max_value=40),
    min_interval=st.sampled_from([0.0, 60.0]),
    probes=st.lists(st.integers(min_value=0, max_value=600), max_size=5),
)
def test_chunks_concatenate_to_exactly_the_input(pieces, max_chars, min_interval, probes):
    expected = "".join(pieces)
    tapped: list[str] = []
    policy = FlushPolicy(min_interval=min_interval, max_interval=60.0, max_chars=max_chars)

    async def scenario():
        stream_id, status = await run_to_end(paced(pieces), policy=policy, tap=tapped.append)
        return stream_id, status, await chunks_of(stream_id)

    # The chunks as the writer wrote them, then merged into one.
    with override_settings(STREAMING_APP={"COMPACT_FINISHED": False}):
        stream_id, status, chunks = asyncio.run(scenario())
    assert status == Status.DONE
    assert "".join(tapped) == expected, "the driver got exactly the input"
    assert assert_chunks_consistent(chunks) == expected, "the chunks are exactly the input"
    body = get_stream_body(stream_id)
    assert (body.status, body.text, body.length) == (Status.DONE, expected, len(expected))
    # A read from any offset gives exactly the rest: chunk edges, either side, and more.
    offsets = {0, len(expected), *(p for p in probes if p <= len(expected))}
    for _, offset, text in chunks:
        offsets.update({offset, offset + 1, offset + len(text) - 1})
    in_range = sorted(o for o in offsets if 0 <= o <= len(expected))
    for compacted in (False, True):
        if compacted:
            assert compact_stream(stream_id) == (len(chunks) > 1)
            assert len(asyncio.run(chunks_of(stream_id))) == min(len(chunks), 1)
        for offset in in_range:
            rest = get_stream_body(stream_id, offset)
            assert rest.text == expected[offset:], (offset, compacted)
            assert rest.offset == offset


async def test_a_stream_that_ends_is_merged_into_one_chunk():
    pieces = [f"Line {i}.\n" for i in range(40)]
    policy = FlushPolicy(min_interval=0.0, max_interval=60.0, max_chars=30)
    stream_id, status = await run_to_end(paced(pieces), policy=policy)
    assert status == Status.DONE
    assert await chunks_of(stream_id) == [(0, 0, "".join(pieces))]
    body = await aget_stream_body(stream_id, 7)
    assert (body.status, body.text) == (Status.DONE, "".join(pieces)[7:])


async def test_a_raising_generator_ends_the_stream_as_error_keeping_its_text(caplog):
    async def source():
        yield "The model said this. "
        await asyncio.sleep(0)
        yield "And then"
        raise ConnectionResetError("the model's connection dropped at 10.0.0.7")

    tapped: list[str] = []
    stream_id, status = await run_to_end(source(), tap=tapped.append)
    assert status == Status.ERROR
    body = await aget_stream_body(stream_id)
    assert body.status == Status.ERROR
    # Readers get a public message; the exception, with its host name, goes to the log.
    assert body.error == "generation failed"
    assert "10.0.0.7" in caplog.text
    assert body.text == "The model said this. And then"
    assert "".join(tapped) == body.text


async def test_append_callable_source_as_in_the_convex_component():
    async def generate(append):
        await append("Hi there! ")
        await append("How are you? ")
        await append("Pretend I'm an AI or something!")

    stream_id, status = await run_to_end(generate)
    body = await aget_stream_body(stream_id)
    assert (status, body.text) == (
        Status.DONE,
        "Hi there! How are you? Pretend I'm an AI or something!",
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            lambda: paced(["ok ", b"bytes"]),
            "TypeError: a stream's pieces must be str, not bytes",
        ),
        (lambda: 42, "TypeError: a stream's source must be an async iterable or an async callable"),
        (
            lambda: lambda append: None,
            "TypeError: a stream's source callable must return an awaitable",
        ),
    ],
)
async def test_a_source_of_the_wrong_kind_is_an_error_with_a_clear_message_in_the_log(
    source, message, caplog
):
    stream_id, status = await run_to_end(source())
    body = await aget_stream_body(stream_id)
    assert (status, body.error) == (Status.ERROR, "generation failed")
    assert message in caplog.text


async def test_nul_and_lone_surrogates_become_replacement_characters_everywhere():
    tapped: list[str] = []
    stream_id, _ = await run_to_end(paced(["a\x00b", "\ud800c"]), tap=tapped.append)
    body = await aget_stream_body(stream_id)
    assert body.text == "".join(tapped) == "a\ufffdb\ufffdc"
    assert body.length == 5


@KEEP_CHUNKS
async def test_a_long_run_without_punctuation_is_flushed_by_the_interval():
    """No sentence end, never MAX_BUFFER_CHARS: only the interval rule can flush, and
    the model goes on until something has committed."""
    policy = FlushPolicy(min_interval=0.05, max_interval=0.2, max_chars=10_000)
    flushed = asyncio.Event()

    async def source():
        for _ in range(3000):  # 30 s at most
            if flushed.is_set():
                break
            yield "word "
            await asyncio.sleep(0.01)
        yield "last"

    with committed_events(on_text=flushed.set):
        stream_id, status = await run_to_end(source(), policy=policy)
    assert flushed.is_set(), "nothing was flushed while the model went on"
    chunks = await chunks_of(stream_id)
    assert len(chunks) >= 2 and chunks[0][2].startswith("word word")
    assert assert_chunks_consistent(chunks).endswith("word last")


@KEEP_CHUNKS
async def test_a_long_run_without_punctuation_is_flushed_by_size():
    policy = FlushPolicy(min_interval=60, max_interval=60, max_chars=100)
    stream_id, _ = await run_to_end(paced(["x" * 7] * 100, 0.005), policy=policy)
    chunks = await chunks_of(stream_id)
    assert assert_chunks_consistent(chunks) == "x" * 700
    # Persisted in pieces of about 100 characters long before the end, not in one.
    assert len(chunks) >= 4, [len(text) for _, _, text in chunks]


@KEEP_CHUNKS
async def test_a_sentence_end_flushes_before_the_maximum_interval():
    """A minute-long maximum interval: the model waits for its sentence to commit, which
    only the boundary rule can do in time."""
    policy = FlushPolicy(min_interval=0.05, max_interval=60.0, max_chars=10_000)
    flushed = asyncio.Event()

    async def source():
        yield "A whole sentence."
        await asyncio.wait_for(flushed.wait(), 10)
        yield " More"

    with committed_events(on_text=flushed.set):
        stream_id, status = await run_to_end(source(), policy=policy)
    assert status == Status.DONE
    assert [text for _, _, text in await chunks_of(stream_id)] == ["A whole sentence.", " More"]


async def test_the_driver_is_not_held_up_by_a_database_that_does_not_answer():
    """Every piece reaches the driving response while the first flush is still held by
    the database: the driver never waits for persistence."""
    stream, owner = await owned_stream()
    pieces = [f"Piece {i}. " for i in range(40)]
    policy = FlushPolicy(min_interval=0.0, max_interval=0.05, max_chars=4096)

    async def model():
        yield pieces[0]
        # ...until the database holds the first flush.
        assert await asyncio.to_thread(hang.entered.wait, 10)
        for piece in pieces[1:]:
            yield piece
            await asyncio.sleep(0)

    with Hang() as hang:
        response = await astream_response(drive_request(owner), stream.pk, model(), policy=policy)
        received = ""
        async for part in response:  # type: ignore[attr-defined]
            received += part.decode()
        assert hang.entered.is_set() and not hang.released.is_set(), (
            "the driver had everything while the first flush was held"
        )
        assert received == "".join(pieces)
        assert (await stream_row(stream.pk)).length == 0, "nothing had committed yet"
        hang.release()
        finished = await wait_finished(stream.pk, within=30)
    assert finished.status == Status.DONE and finished.length == len(received)


@override_settings(STREAMING_APP={"HEARTBEAT_INTERVAL": 0.05, "TIMEOUT": 1.0})
async def test_a_silent_generator_keeps_its_stream_fresh():
    """While the model says nothing, its stream's last activity moves on: the model
    waits, silent, until it has seen it move twice."""
    from streaming_app.streams import aclaim_stream, acreate_stream

    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    beats: list[object] = []

    async def model():
        yield "Thinking"
        seen = (await stream_row(stream.pk)).updated_at
        async with asyncio.timeout(10):
            while len(beats) < 2:
                await asyncio.sleep(0.01)
                now = (await stream_row(stream.pk)).updated_at
                if now != seen:
                    beats.append(now)
                    seen = now
        yield " done."

    run = StreamRun(stream.pk, model())
    run.start()
    assert await run.wait() == Status.DONE
    assert len(beats) == 2
    assert (await aget_stream_body(stream.pk)).text == "Thinking done."


async def test_deleting_a_stream_mid_run_stops_its_generator():
    from streaming_app.streams import aclaim_stream, acreate_stream, adelete_stream

    closed = asyncio.Event()

    async def source():
        try:
            while True:
                yield "more. "
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    run = StreamRun(stream.pk, source(), policy=FlushPolicy(0.05, 0.1, 4096))
    run.start()
    await asyncio.sleep(0.2)
    assert await adelete_stream(stream.pk)
    status = await asyncio.wait_for(run.wait(), timeout=5)
    assert status == ""  # no stream any more
    assert closed.is_set(), "the generator went on after the stream was deleted"


@override_settings(STREAMING_APP={"MAX_PENDING_CHARS": 100, "COMPACT_FINISHED": False})
async def test_past_max_pending_chars_the_generator_waits_for_the_database():
    """While the database holds the first flush, the model may run ahead by at most
    MAX_PENDING_CHARS (a stream's memory is bounded); it resumes when the flush returns."""
    from streaming_app.streams import aclaim_stream, acreate_stream

    produced: list[str] = []

    async def model():
        for i in range(100):
            produced.append(f"{i:09d} ")
            yield produced[-1]
            await asyncio.sleep(0)

    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    with Hang() as hang:
        run = StreamRun(stream.pk, model(), policy=FlushPolicy(0, 0.02, 50))
        run.start()
        assert await asyncio.to_thread(hang.entered.wait, 10)
        for _ in range(1000):  # every chance to run on
            await asyncio.sleep(0)
        held = len(produced)
        for _ in range(1000):
            await asyncio.sleep(0)
        assert len(produced) == held, "the model went on while the database held"
        hang.release()
        assert await asyncio.wait_for(run.wait(), 10) == Status.DONE
    held_back = len((await chunks_of(stream.pk))[0][2])  # the flush the database held
    # Ahead of the database: the flush it held, MAX_PENDING_CHARS more, and one piece.
    assert held * 10 <= held_back + 100 + 10
    assert (await aget_stream_body(stream.pk)).text == "".join(produced)
    assert len(produced) == 100


# The process's committer: one transaction per tick ---------------------------------


async def fed_runs(count: int, policy: FlushPolicy) -> list[tuple[uuid.UUID, Fed, StreamRun]]:
    runs = []
    for _ in range(count):
        stream = await acreate_stream()
        await aclaim_stream(stream.pk)
        source = Fed()
        run = StreamRun(stream.pk, source, policy=policy)
        run.start()
        runs.append((stream.pk, source, run))
    return runs


@KEEP_CHUNKS
async def test_flushes_due_together_across_streams_share_one_transaction():
    runs = await fed_runs(10, FlushPolicy(min_interval=0, max_interval=0.05, max_chars=4096))
    with Statements() as statements:
        for i, (_, source, _) in enumerate(runs):
            source.feed(f"Stream {i} says hello.")  # due at the same moment
        for _, source, _ in runs:
            source.end()
        statuses = await asyncio.wait_for(asyncio.gather(*(run.wait() for _, _, run in runs)), 10)
    assert statuses == [Status.DONE] * 10
    inserts = statements.inserts_into("streaming_app_chunk")
    chunks = sum([len(await chunks_of(stream_id)) for stream_id, _, _ in runs])
    assert chunks == 10
    assert len(inserts) < chunks, "every stream's flush had a transaction of its own"
    assert len(inserts) == 1, "the ten flushes due at once were one INSERT"


@KEEP_CHUNKS
async def test_a_batch_the_database_refuses_fails_its_stream_and_not_the_others_of_its_tick(caplog):
    runs = await fed_runs(3, FlushPolicy(min_interval=0, max_interval=0.05, max_chars=4096))
    async with database_refuses(
        "streaming_app_chunk", event="INSERT", when="NEW.text LIKE '%poison%'", message="poisoned"
    ):
        for (_, source, _), text in zip(
            runs, ["Fine. ", "A poison pill. ", "Also fine. "], strict=True
        ):
            source.feed(text)  # due at the same moment: one tick
        bad = runs[1]
        assert await asyncio.wait_for(bad[2].wait(), 10) == Status.ERROR
        for _, source, _ in (runs[0], runs[2]):
            source.feed("Still going.")
            source.end()
        good = await asyncio.gather(runs[0][2].wait(), runs[2][2].wait())
    assert "one by one now" in caplog.text, "the three were not in one transaction"
    assert "poisoned" in caplog.text
    assert good == [Status.DONE, Status.DONE]
    assert bad[1].closed, "the refused stream's model was stopped"
    body = await aget_stream_body(bad[0])
    assert (body.status, body.error, body.text) == (
        Status.ERROR,
        "the reply could not be saved",
        "",
    )
    for (stream_id, _, _), text in ((runs[0], "Fine. "), (runs[2], "Also fine. ")):
        assert (await aget_stream_body(stream_id)).text == text + "Still going."
