"""The writer against a real database: exactness, ordering, errors, the flush policy."""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming_app.models import Status
from streaming_app.streams import aget_stream_body, compact_stream, get_stream_body
from streaming_app.writer import FlushPolicy

from .helpers import (
    assert_chunks_consistent,
    chunks_of,
    committed_events,
    drive_in_process,
    paced,
    run_to_end,
    slow_queries,
    stream_row,
    thinking,
    wait_finished,
)

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


async def test_a_raising_generator_ends_the_stream_as_error_keeping_its_text():
    async def source():
        yield "The model said this. "
        await asyncio.sleep(0)
        yield "And then"
        raise ConnectionResetError("the model's connection dropped")

    tapped: list[str] = []
    stream_id, status = await run_to_end(source(), tap=tapped.append)
    assert status == Status.ERROR
    body = await aget_stream_body(stream_id)
    assert body.status == Status.ERROR
    assert body.error == "ConnectionResetError: the model's connection dropped"
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
            lambda: paced(["ok ", b"bytes"]),  # type: ignore[list-item]
            "TypeError: a stream's pieces must be str, not bytes",
        ),
        (lambda: 42, "TypeError: a stream's source must be an async iterable or an async callable"),
        (
            lambda: lambda append: None,
            "TypeError: a stream's source callable must return an awaitable",
        ),
    ],
)
async def test_a_source_of_the_wrong_kind_is_an_error_with_a_clear_message(source, message):
    stream_id, status = await run_to_end(source())
    body = await aget_stream_body(stream_id)
    assert status == Status.ERROR
    assert (body.error or "").startswith(message)


async def test_nul_and_lone_surrogates_become_replacement_characters_everywhere():
    tapped: list[str] = []
    stream_id, _ = await run_to_end(paced(["a\x00b", "\ud800c"]), tap=tapped.append)
    body = await aget_stream_body(stream_id)
    assert body.text == "".join(tapped) == "a\ufffdb\ufffdc"
    assert body.length == 5


async def test_a_long_run_without_punctuation_is_flushed_by_the_interval():
    policy = FlushPolicy(min_interval=0.05, max_interval=0.2, max_chars=10_000)
    with committed_events() as events:
        start = time.monotonic()
        stream_id, _ = await run_to_end(paced(["word "] * 60, 0.01), policy=policy)
    texts = [e for e in events if e["stream_id"] == stream_id and e["text"]]
    # 0.6 s of text with no sentence end: flushed every 0.2 s or so, not only at the end.
    assert len(texts) >= 3, [e["text"] for e in texts]
    first_flush = texts[0]["at"] - start
    assert first_flush < 0.45, f"the first flush came {first_flush:.2f}s in"


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
    policy = FlushPolicy(min_interval=0.05, max_interval=5.0, max_chars=10_000)

    async def source():
        yield "A whole sentence."
        await asyncio.sleep(0.5)
        yield " More"

    with committed_events() as events:
        start = time.monotonic()
        stream_id, _ = await run_to_end(source(), policy=policy)
    first = next(e for e in events if e["stream_id"] == stream_id and e["text"])
    assert first["text"] == "A whole sentence."
    assert first["at"] - start < 0.4
    assert (await chunks_of(stream_id))[-1][2] == " More"


def llm_like_pieces(count: int, seed: int = 7) -> list[str]:
    """Token-sized pieces of prose with sentence ends, list items and a code block."""
    rng = random.Random(seed)
    words = [
        "the",
        "stream",
        "of",
        "tokens",
        "arrives",
        "while",
        "every",
        "viewer",
        "waits",
        "for",
        "text",
        "to",
        "commit",
    ]
    pieces: list[str] = []
    while len(pieces) < count:
        kind = rng.random()
        if kind < 0.7:
            sentence = [" " + rng.choice(words) for _ in range(rng.randint(6, 18))]
            sentence[-1] += "."
            pieces.extend(sentence)
        elif kind < 0.85:
            pieces.extend(["\n", "-", " item", " " + rng.choice(words), "\n"])
        else:
            pieces.extend(
                ["\n```", "py\n"]
                + [f" x{i} = {i}" for i in range(rng.randint(5, 30))]
                + ["\n```\n"]
            )
    return pieces[:count]


@pytest.mark.slow
async def test_transactions_for_1000_pieces_at_100_per_second_are_bounded():
    """The default policy at 100 pieces/s: at most ~4 transactions/s, lag about 0.5 s."""
    pieces = llm_like_pieces(1000)
    produced: list[tuple[int, float]] = []  # (end offset, time)

    async def source():
        end = 0
        start = time.monotonic()
        for i, piece in enumerate(pieces):
            # 100 pieces/s on a schedule, so that slow turns do not stretch the run.
            await asyncio.sleep(max(0.0, start + i / 100 - time.monotonic()))
            end += len(piece)
            produced.append((end, time.monotonic()))
            yield piece

    with committed_events() as events:
        started = time.monotonic()
        stream_id, status = await run_to_end(source())
        elapsed = time.monotonic() - started
    commits = [
        e for e in events if e["stream_id"] == stream_id and (e["text"] or e["status"] == "done")
    ]
    transactions = len(commits)
    # Lag of each piece: from its production to the commit that contained it.
    lags = []
    for end, at in produced:
        commit = next(e for e in commits if e["offset"] + len(e["text"]) >= end)
        lags.append(commit["at"] - at)
    lags.sort()
    p50, p95 = statistics.median(lags), lags[int(len(lags) * 0.95)]
    print(
        f"\n1000 pieces in {elapsed:.1f}s: {transactions} transactions "
        f"({transactions / elapsed:.2f}/s); lag p50 {p50 * 1000:.0f} ms, "
        f"p95 {p95 * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms"
    )
    assert status == Status.DONE
    assert assert_chunks_consistent(await chunks_of(stream_id)) == "".join(pieces)
    assert transactions <= 4 * elapsed + 2, "more than about 4 transactions per second"
    assert transactions >= elapsed, "flushes this rare would make viewers lag"
    assert p95 <= 0.75, "viewers would lag more than about half a second"


async def test_the_driver_is_not_held_up_by_a_slow_database():
    """Every piece reaches the driving response at once while each flush takes 0.4 s."""
    from streaming_app.streams import acreate_stream

    stream = await acreate_stream()
    produced: dict[int, float] = {}
    pieces = [f"Piece {i}. " for i in range(40)]

    async def source():
        for i, piece in enumerate(pieces):
            await asyncio.sleep(0.02)
            produced[i] = time.monotonic()
            yield piece

    policy = FlushPolicy(min_interval=0.0, max_interval=0.05, max_chars=4096)
    with slow_queries(0.4):
        parts = await drive_in_process(stream.pk, source(), policy=policy)
        driver_done = time.monotonic()
        committed_when_driver_done = (await stream_row(stream.pk)).length
        finished = await wait_finished(stream.pk, within=30)
    # Each piece's delay from production to the driver.
    ends = list(itertools.accumulate(len(piece) for piece in pieces))
    received, late = "", []
    for at, text in parts:
        received += text
        late += [
            at - produced[i]
            for i, end in enumerate(ends)
            if len(received) - len(text) < end <= len(received)
        ]
    assert received == "".join(pieces)
    assert len(late) == len(pieces)
    print(f"\ndriver lateness with 0.4 s flushes: max {max(late) * 1000:.1f} ms")
    assert max(late) < 0.15, f"a piece reached the driver {max(late):.3f}s late"
    assert committed_when_driver_done < len(received), "the database was not slow after all"
    assert finished.status == Status.DONE and finished.length == len(received)
    assert time.monotonic() - driver_done > 0.3, "persistence caught up suspiciously fast"


@override_settings(STREAMING_APP={"DATABASE_OUTAGE_LIMIT": 0.5})
async def test_a_flush_that_hangs_past_the_outage_limit_stops_generation():
    """A pooled connection is waited for, not refused: a flush that has not come back
    within DATABASE_OUTAGE_LIMIT counts as an outage while it is still waiting."""
    produced: list[float] = []

    async def endless():
        while True:
            produced.append(time.monotonic())
            yield "More words. "
            await asyncio.sleep(0.01)

    policy = FlushPolicy(min_interval=0.0, max_interval=0.05, max_chars=4096)
    with slow_queries(2.0):
        started = time.monotonic()
        stream_id, status = await run_to_end(endless(), policy=policy)
    stopped = produced[-1] - started
    assert stopped < 1.5, f"generation went on {stopped:.2f}s into a 2 s flush"
    assert status == Status.ERROR
    body = await aget_stream_body(stream_id)
    assert body.error == "the database was unreachable for more than 0.5 seconds"
    assert body.text == "More words. " * len(produced), "what was generated is all there"


@override_settings(STREAMING_APP={"HEARTBEAT_INTERVAL": 0.1, "TIMEOUT": 1.0})
async def test_a_silent_generator_keeps_its_stream_fresh():
    from streaming_app.streams import aclaim_stream, acreate_stream
    from streaming_app.writer import StreamRun

    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    run = StreamRun(stream.pk, thinking("Thinking", 0.6, " done."))
    run.start()
    await asyncio.sleep(0.1)
    first = (await stream_row(stream.pk)).updated_at
    await asyncio.sleep(0.4)
    later = (await stream_row(stream.pk)).updated_at
    assert (later - first).total_seconds() >= 0.2, "no heartbeat while the model was silent"
    assert await run.wait() == Status.DONE


async def test_deleting_a_stream_mid_run_stops_its_generator():
    from streaming_app.streams import aclaim_stream, acreate_stream, adelete_stream
    from streaming_app.writer import StreamRun

    produced = 0

    async def source():
        nonlocal produced
        while True:
            produced += 1
            yield "more. "
            await asyncio.sleep(0.01)

    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    run = StreamRun(stream.pk, source(), policy=FlushPolicy(0.05, 0.1, 4096))
    run.start()
    await asyncio.sleep(0.2)
    assert await adelete_stream(stream.pk)
    status = await asyncio.wait_for(run.wait(), timeout=5)
    assert status == ""  # no stream any more
    count = produced
    await asyncio.sleep(0.1)
    assert produced == count, "the generator went on after the stream was deleted"
