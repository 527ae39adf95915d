"""Parts (reasoning, text, tool calls, a finish) in one stream: persisted in order and
exactly once, read back per part from any offset, and followed live per part by a
part-aware viewer. Plain text streams are untouched (tested everywhere else)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming_app import astream_response
from streaming_app.drive.flush import FlushPolicy
from streaming_app.fanout.feed import Feed
from streaming_app.fanout.hub import Hub
from streaming_app.fanout.viewer import Viewer
from streaming_app.models import Stream
from streaming_app.parts import (
    Finish,
    Part,
    PartMap,
    Reasoning,
    Text,
    ToolCall,
    ToolResult,
    around,
    assemble,
    merge,
)
from streaming_app.streams import StreamBody, aclaim_stream, acreate_stream, get_stream_body
from streaming_app.websocket.consumers import FRAMES_WITH_PARTS

from .helpers import (
    assert_chunks_consistent,
    chunks_of,
    drive_request,
    owned_stream,
    paced,
    run_to_end,
    wait_finished,
)
from .test_fanout import viewer

pytestmark = pytest.mark.django_db(transaction=True)

# Small batches: a part's text is split across many chunks and flushes.
SMALL = FlushPolicy(min_interval=0.0, max_interval=0.005, max_chars=7)


def reference(pieces: list[str | Part]) -> list[dict[str, Any]]:
    """What the parts of ``pieces`` are, computed without the part map: consecutive
    deltas of one kind are one part; a tool call's deltas are one part by id, wherever
    they come; a result joins its call."""
    parts: list[dict[str, Any]] = []
    calls: dict[str, dict[str, Any]] = {}
    last: tuple[str, str | None] | None = None
    for piece in pieces:
        if isinstance(piece, str):
            piece = Text(piece)
        if isinstance(piece, (Text, Reasoning)):
            if not piece.text:
                continue
            kind = "text" if isinstance(piece, Text) else "reasoning"
            if last != (kind, None):
                parts.append({"type": kind, "text": ""})
                last = (kind, None)
            parts[-1]["text"] += piece.text
        elif isinstance(piece, ToolCall):
            if piece.id not in calls:
                calls[piece.id] = {"type": "tool-call", "id": piece.id, "name": piece.name}
                calls[piece.id]["arguments"] = ""
                parts.append(calls[piece.id])
            calls[piece.id]["arguments"] += piece.arguments
            last = ("tool-call", piece.id)
        elif isinstance(piece, ToolResult):
            if piece.id not in calls:
                calls[piece.id] = {"type": "tool-call", "id": piece.id, "name": "", "arguments": ""}
                parts.append(calls[piece.id])
            calls[piece.id]["result"] = piece.result
            last = None
        else:
            assert isinstance(piece, Finish)
            parts.append({"type": "finish", "reason": piece.reason, "usage": piece.usage})
            last = None
    return parts


words = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6)
call_ids = st.sampled_from(["call_a", "call_b", "call_c"])
pieces = st.lists(
    st.one_of(
        words,
        words.map(Text),
        words.map(Reasoning),
        st.builds(ToolCall, call_ids, st.just(""), words),
        st.builds(ToolResult, call_ids, st.one_of(st.none(), st.integers(), words)),
    ),
    max_size=25,
).map(lambda items: [*items, Finish("stop", {"output_tokens": len(items)})])


def named(items: list[str | Part]) -> list[str | Part]:
    """Name each call at its first delta, as models do."""
    seen: set[str] = set()
    out: list[str | Part] = []
    for item in items:
        if isinstance(item, ToolCall) and item.id not in seen:
            item = ToolCall(item.id, f"tool_{item.id[-1]}", item.arguments)
        if isinstance(item, (ToolCall, ToolResult)):
            seen.add(item.id)
        out.append(item)
    return out


def split_read(text: str, entries: list[dict[str, Any]], at: int) -> list[dict[str, Any]]:
    """The parts as a reader has them who read up to ``at``, then resumed from there."""
    first = assemble(text[:at], entries[: sum(1 for e in entries if e["at"] <= at)], 0)
    rest = assemble(text[at:], entries, at)
    by_key: dict[Any, dict[str, Any]] = {}
    for part in first:
        by_key[_key(part, by_key)] = part
    joined = []
    seen: dict[Any, dict[str, Any]] = {}
    for part in rest:
        key = _key(part, seen)
        seen[key] = part
        before = by_key.get(key)
        if before is None:
            joined.append(part)
            continue
        merged = dict(part)
        for name in ("text", "arguments"):
            if name in part:
                merged[name] = before.get(name, "") + part[name]
        joined.append(merged)
    return joined


def _key(part: dict[str, Any], seen: dict[Any, Any]) -> Any:
    if part["type"] == "tool-call":
        return ("call", part["id"])
    count = sum(1 for key in seen if key[0] == part["type"])
    return (part["type"], count)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(items=pieces.map(named), data=st.data())
def test_any_interleaving_persists_and_reads_back_exactly_per_part(items, data):
    stream_id, status = asyncio.run(_drive(items))
    assert status == "done"
    stream = Stream.objects.get(pk=stream_id)
    body = get_stream_body(stream_id)
    text = assert_chunks_consistent(asyncio.run(chunks_of(stream_id)))
    assert text == body.text and stream.length == len(text)
    expected = reference(items)
    assert assemble(body.text, list(body.parts)) == expected
    # Resumed from any offset, by a reader who had the parts up to there: exact.
    at = data.draw(st.integers(0, len(text)), label="resume at")
    resumed = get_stream_body(stream_id, at)
    assert resumed.text == text[at:]
    assert split_read(text, list(resumed.parts), at) == expected


async def _drive(items: list[str | Part]) -> tuple[uuid.UUID, str]:
    return await run_to_end(paced(items), policy=SMALL)


def test_plain_text_stays_a_plain_stream():
    part_map = PartMap()
    assert part_map.add("Hello ", 0) == "Hello "
    assert part_map.add(Text("world"), 6) == "world"
    assert part_map.entries == []
    # A reasoning part later makes the text so far the first text part.
    assert part_map.add(Reasoning("hmm"), 11) == "hmm"
    assert part_map.entries == [{"at": 0, "type": "text"}, {"at": 11, "type": "reasoning"}]


def test_part_values_are_made_storable_and_refused_when_not_json():
    part_map = PartMap()
    part_map.add(ToolResult("c", {"a\x00": ["\ud800", 1.5]}), 0)
    assert part_map.entries[-1]["result"] == {"a\ufffd": ["\ufffd", 1.5]}
    with pytest.raises(TypeError, match="must be JSON"):
        part_map.add(ToolResult("c", object()), 0)
    with pytest.raises(TypeError, match="must be str, not bytes"):
        part_map.add(b"x", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs an id"):
        part_map.add(ToolCall("", "f", "{}"), 0)


def test_around_and_merge_give_a_reader_what_it_needs():
    entries = [
        {"at": 0, "type": "reasoning"},
        {"at": 5, "type": "tool-call", "id": "c", "name": "f"},
        {"at": 9, "type": "tool-result", "id": "c", "result": 1},
        {"at": 9, "type": "text"},
        {"at": 20, "type": "finish", "reason": "stop", "usage": {}},
    ]
    assert around(entries, 0, 3) == (0, entries[:1])
    assert around(entries, 3, 7) == (0, entries[:2])
    assert around(entries, 9, 12) == (1, entries[1:4])
    assert around(entries, 12, 20) == (3, entries[3:])
    known = entries[:2]
    assert not merge(known, 3, entries[3:])  # a gap
    assert merge(known, 1, entries[1:4]) and known == entries[:4]


async def test_a_part_aware_viewer_follows_every_part_live_and_a_plain_one_the_body():
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    part_aware = await viewer(stream.pk, "parts=1")
    plain = await viewer(stream.pk)
    gate = asyncio.Event()
    args_seen = asyncio.Event()
    result_seen = asyncio.Event()

    async def source():
        yield Reasoning("Think")
        yield Reasoning("ing.")
        await gate.wait()
        yield ToolCall("call_1", "weather", '{"city":')
        yield ToolCall("call_1", "", '"Oslo"}')
        await args_seen.wait()
        yield ToolResult("call_1", {"temp": -3})
        # The result commits on its own, with no text: the viewer hears of it first.
        await result_seen.wait()
        yield "It is "
        yield "cold."
        yield Finish("stop", {"output_tokens": 9})

    from streaming_app.drive.run import StreamRun

    run = StreamRun(stream.pk, source(), policy=SMALL)
    run.start()
    first = json.loads(await part_aware.receive_from(5))  # the snapshot
    assert first["type"] == "text"
    gate.set()
    messages = [first]
    while not "".join(m.get("text", "") for m in messages).endswith('"Oslo"}'):
        messages.append(json.loads(await part_aware.receive_from(5)))
    args_seen.set()
    while not any(entry["type"] == "tool-result" for m in messages for entry in m.get("parts", ())):
        messages.append(json.loads(await part_aware.receive_from(5)))
    assert messages[-1]["text"] == "", "the result came alone"
    result_seen.set()
    assert await run.wait() == "done"
    messages += await _until_closed(part_aware)
    plain_messages = await _until_closed(plain)

    text, entries = "", list[dict[str, Any]]()
    for message in messages:
        if message["type"] != "text":
            continue
        assert message["offset"] == len(text), "exact, in order"
        text += message["text"]
        if "parts" in message:
            assert merge(entries, message["parts_from"], message["parts"]), "no gap"
    body = await sync_to_async(get_stream_body)(stream.pk)
    assert text == body.text == 'Thinking.{"city":"Oslo"}It is cold.'
    assert entries == list(body.parts)
    assert assemble(text, entries) == [
        {"type": "reasoning", "text": "Thinking."},
        {
            "type": "tool-call",
            "id": "call_1",
            "name": "weather",
            "arguments": '{"city":"Oslo"}',
            "result": {"temp": -3},
        },
        {"type": "text", "text": "It is cold."},
        {"type": "finish", "reason": "stop", "usage": {"output_tokens": 9}},
    ]
    assert all("parts" not in m for m in plain_messages), "a plain viewer hears no map"
    plain_text = "".join(m["text"] for m in plain_messages if m["type"] == "text")
    assert plain_text == body.text


async def _until_closed(communicator) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while True:
        output = await communicator.receive_output(10)
        if output["type"] == "websocket.close":
            return messages
        messages.append(json.loads(output["text"]))


async def test_a_part_aware_driver_gets_every_piece_with_its_part_as_ndjson():
    stream, owner = await owned_stream()
    request = drive_request(owner, "/drive/?parts=1")
    pieces: list[str | Part] = [
        "Plain first. ",
        Reasoning("Now think."),
        ToolCall("c", "f", "{}"),
        ToolResult("c", [1, 2]),
        "Done.",
        Finish("stop", {}),
    ]
    response = await astream_response(request, stream.pk, paced(pieces), policy=SMALL)
    assert response["Content-Type"] == "application/x-ndjson; charset=utf-8"
    raw = b"".join([chunk async for chunk in response])  # type: ignore[attr-defined]
    text, entries = "", list[dict[str, Any]]()
    *lines, last = raw.decode().splitlines()
    assert json.loads(last) == {"type": "status", "status": "done", "error": None}
    for line in lines:
        message = json.loads(line)
        assert message["type"] == "text" and message["offset"] == len(text)
        text += message["text"]
        if "parts" in message:
            assert merge(entries, message["parts_from"], message["parts"])
    await wait_finished(stream.pk)
    body = await sync_to_async(get_stream_body)(stream.pk)
    assert text == body.text and entries == list(body.parts)
    assert [p["type"] for p in assemble(text, entries)] == [
        "text",
        "reasoning",
        "tool-call",
        "text",
        "finish",
    ]
    assert assemble(text, entries)[0] == {"type": "text", "text": "Plain first. "}


def test_a_call_named_after_its_first_delta_gets_its_name():
    part_map = PartMap()
    part_map.add(ToolCall("c", "", '{"a"'), 0)
    part_map.add(ToolCall("c", "lookup", ":1}"), 4)
    part_map.add(ToolCall("c", "lookup", ""), 7)
    assert [e.get("name") for e in part_map.entries] == ["", "lookup"]
    assert assemble('{"a":1}', part_map.entries) == [
        {"type": "tool-call", "id": "c", "name": "lookup", "arguments": '{"a":1}'}
    ]


# The hub and part-aware viewers, at the edges ----------------------------------------

CALL = {"at": 0, "type": "tool-call", "id": "c1", "name": "get"}
RESULT = {"at": 2, "type": "tool-result", "id": "c1", "result": {"t": 1}}
FIN = {"at": 2, "type": "finish", "reason": "stop", "usage": {}}


def feed_with_viewer() -> tuple[Feed, Viewer]:
    """A feed (no channel layer) and a part-aware viewer that has read '{}' of a call."""
    stream_id = uuid.uuid4()
    followed = Hub(None)
    feed = followed.feeds[stream_id] = Feed(followed, stream_id)
    viewer = part_aware_viewer(feed)
    feed.admit(viewer, StreamBody(stream_id, "streaming", "{}", 0, 2, None, (CALL,)))
    written(viewer)
    return feed, viewer


def part_aware_viewer(feed: Feed) -> Viewer:
    viewer = Viewer(None, uuid.uuid4().hex, FRAMES_WITH_PARTS)
    viewer.feed = feed
    feed.viewers.add(viewer)
    return viewer


def written(viewer: Viewer) -> list[dict[str, Any]]:
    """The frames queued for ``viewer``, as its transport writes them."""
    frames = [json.loads(FRAMES_WITH_PARTS.frame(event)) for event, _, _, _ in viewer._queue]
    viewer._queue.clear()
    viewer._chars = 0
    viewer._written = (viewer.sent, viewer.status)
    return frames


def entries_heard(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The map of a viewer that had the call's entry, after ``frames``."""
    known: list[dict[str, Any]] = [CALL]
    for frame in frames:
        if "parts" in frame:
            assert merge(known, frame["parts_from"], frame["parts"]), "a gap"
    return known


async def test_entries_a_newer_snapshot_taught_the_feed_still_reach_every_viewer():
    feed, first = feed_with_viewer()
    # A second viewer's snapshot was read after the result and the finish committed,
    # before their delta reached this process.
    second = part_aware_viewer(feed)
    feed.admit(second, StreamBody(feed.stream_id, "streaming", "", 2, 2, None, (CALL, RESULT, FIN)))
    feed.apply(2, "", "streaming", None, [RESULT, FIN], 1)
    feed.apply(2, "", "done", None)
    frames = written(first)
    assert entries_heard(frames)[1:] == [RESULT, FIN]
    assert frames[-1] == {"type": "status", "status": "done", "error": None}


async def test_entry_only_frames_carry_each_entry_once_and_survive_a_viewer_cut_loose():
    feed, viewer = feed_with_viewer()
    results = [
        {"at": 2, "type": "tool-result", "id": f"c{i}", "result": "r" * 150_000} for i in range(4)
    ]
    feed.apply(2, "", "streaming", None, results[:1], 1)
    assert len(json.dumps(written(viewer))) < 160_000, "one result, once"
    # Three more before the viewer reads: past VIEWER_BUFFER_CHARS behind the first.
    for i in (1, 2, 3):
        feed.apply(2, "", "streaming", None, results[i : i + 1], 1 + i)
    assert viewer.behind, "the test needs the viewer cut loose"
    feed.apply(2, "", "done", None)
    await feed.catch_up(viewer)
    frames = written(viewer)
    heard = {e["id"] for e in entries_heard(frames) if e["type"] == "tool-result"}
    assert {"c1", "c2", "c3"} <= heard, "the entries dropped with its frames came again"
    assert frames[-1]["status"] == "done"
