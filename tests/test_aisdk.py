"""The AI SDK's UI message stream (streaming_app.aisdk.responses): the encoder's chunks, the live
drive and the resume from the database giving the same message, the example's useChat
endpoints, and the real ``useChat`` of ``@ai-sdk/react`` in Chromium against daphne.

``ai`` and ``@ai-sdk/react`` come from the npm registry, pinned in
tests/browser/package.json and its lock file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import AsyncClient, AsyncRequestFactory, override_settings
from django.urls import include, path
from hypothesis import given, settings
from hypothesis import strategies as st

from example_project import urls as example_urls
from example_project.chat.llm import demo_answer
from example_project.chat.models import Chat
from streaming_app.aisdk import (
    UIMessageEncoder,
    aresume_response,
    aui_message_stream_response,
)
from streaming_app.drive.flush import FlushPolicy
from streaming_app.models import Status
from streaming_app.parts import Finish, Part, PartMap, Reasoning, ToolCall, ToolResult, assemble
from streaming_app.streams import acreate_stream, get_stream_body

from .bundles import HERE, bundle, node_modules
from .bundles import serve_page as serve_test_page
from .helpers import as_user, drive_request, owned_stream, stream_row, wait_finished

# The example's URLs with the AI SDK's routes, as example_project/urls.py includes them.
urlpatterns = [
    path("api/ai/", include("example_project.chat.ai_urls")),
    *example_urls.urlpatterns,
]

FAST = FlushPolicy(min_interval=0.0, max_interval=0.02, max_chars=4096)


# Reading a UI message stream ---------------------------------------------------------------


def chunks_of(sse: str) -> list[Any]:
    """The chunks of a UI message stream (``"[DONE]"`` as it is); keep-alive comments
    are left out. Fails on anything that is not ``data:`` events."""
    chunks: list[Any] = []
    for event in sse.split("\n\n"):
        if not event or event.startswith(":"):
            continue
        assert event.startswith("data: ") and "\n" not in event, event
        data = event[len("data: ") :]
        chunks.append(data if data == "[DONE]" else json.loads(data))
    return chunks


DELTAS = {"text-delta": "delta", "reasoning-delta": "delta", "tool-input-delta": "inputTextDelta"}


def joined(chunks: list[Any]) -> list[Any]:
    """``chunks`` with each run of deltas of one part joined into one."""
    out: list[Any] = []
    for chunk in chunks:
        field = DELTAS.get(chunk["type"]) if isinstance(chunk, dict) else None
        previous = out[-1] if out else None
        if (
            field is not None
            and isinstance(previous, dict)
            and previous["type"] == chunk["type"]
            and previous.get("id", previous.get("toolCallId"))
            == chunk.get("id", chunk.get("toolCallId"))
        ):
            out[-1] = {**previous, field: previous[field] + chunk[field]}
        else:
            out.append(dict(chunk) if isinstance(chunk, dict) else chunk)
    return out


def message_of(chunks: list[Any]) -> list[dict[str, Any]]:
    """The parts of the message the chunks build, as useChat builds them (text and
    reasoning by id, tool calls by toolCallId: ``raw`` their streamed input, ``input``
    as made available), without step markers."""
    parts: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        kind = chunk["type"]
        if kind in ("text-start", "reasoning-start"):
            by_id[chunk["id"]] = {"type": kind.split("-")[0], "text": ""}
            parts.append(by_id[chunk["id"]])
        elif kind in ("text-delta", "reasoning-delta"):
            by_id[chunk["id"]]["text"] += chunk["delta"]
        elif kind == "tool-input-start":
            by_id[chunk["toolCallId"]] = {"type": "tool", "name": chunk["toolName"], "raw": ""}
            parts.append(by_id[chunk["toolCallId"]])
        elif kind == "tool-input-delta":
            by_id[chunk["toolCallId"]]["raw"] += chunk["inputTextDelta"]
        elif kind == "tool-input-available":
            if chunk["toolCallId"] not in by_id:  # a result of a call never streamed
                by_id[chunk["toolCallId"]] = {"type": "tool", "name": chunk["toolName"]}
                parts.append(by_id[chunk["toolCallId"]])
            by_id[chunk["toolCallId"]]["input"] = chunk["input"]
        elif kind == "tool-output-available":
            by_id[chunk["toolCallId"]]["output"] = chunk["output"]
    return parts


def encode_live(pieces: list[str | Part], status: str = Status.DONE, error: str | None = None):
    """Encode ``pieces`` as the drive does: each piece's text with the map as it grew."""
    part_map = PartMap()
    encoder = UIMessageEncoder("m1")
    body, out = "", encoder.start()
    for piece in pieces:
        text = part_map.add(piece, len(body))
        out += encoder.text(len(body), text, part_map.entries)
        body += text
    out += encoder.status(status, error, part_map.entries)
    return chunks_of(out), body, part_map.entries


# The encoder ------------------------------------------------------------------------------


def test_a_plain_stream_is_one_text_part_from_start_to_finish():
    chunks, _, entries = encode_live(["Hel", "lo, ", "wörld 😀"])
    assert entries == []
    assert chunks == [
        {"type": "start", "messageId": "m1"},
        {"type": "start-step"},
        {"type": "text-start", "id": "text-0"},
        {"type": "text-delta", "id": "text-0", "delta": "Hel"},
        {"type": "text-delta", "id": "text-0", "delta": "lo, "},
        {"type": "text-delta", "id": "text-0", "delta": "wörld 😀"},
        {"type": "text-end", "id": "text-0"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
        "[DONE]",
    ]


def test_reasoning_and_text_are_separate_parts_named_by_their_map_entries():
    chunks, _, _ = encode_live(
        [Reasoning("Let me "), Reasoning("think."), "The answer", " is 42.", Finish("stop")]
    )
    assert joined(chunks) == [
        {"type": "start", "messageId": "m1"},
        {"type": "start-step"},
        {"type": "reasoning-start", "id": "reasoning-0"},
        {"type": "reasoning-delta", "id": "reasoning-0", "delta": "Let me think."},
        {"type": "reasoning-end", "id": "reasoning-0"},
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "The answer is 42."},
        {"type": "text-end", "id": "text-1"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"},
        "[DONE]",
    ]


def test_a_tool_call_streams_its_input_then_its_result_and_the_answer_is_a_new_step():
    usage = {"input_tokens": 12, "output_tokens": 30}
    chunks, _, _ = encode_live(
        [
            "Checking. ",
            ToolCall("call_1", "", '{"city": '),  # named after its first delta
            ToolCall("call_1", "get_weather", '"Paris"}'),
            ToolResult("call_1", {"temp": 21}),
            "It is 21°C.",
            Finish("stop", usage),
        ]
    )
    assert joined(chunks) == [
        {"type": "start", "messageId": "m1"},
        {"type": "start-step"},
        {"type": "text-start", "id": "text-0"},
        {"type": "text-delta", "id": "text-0", "delta": "Checking. "},
        {"type": "text-end", "id": "text-0"},
        {"type": "tool-input-start", "toolCallId": "call_1", "toolName": "get_weather"},
        {"type": "tool-input-delta", "toolCallId": "call_1", "inputTextDelta": '{"city": "Paris"}'},
        {
            "type": "tool-input-available",
            "toolCallId": "call_1",
            "toolName": "get_weather",
            "input": {"city": "Paris"},
        },
        {"type": "tool-output-available", "toolCallId": "call_1", "output": {"temp": 21}},
        {"type": "finish-step"},
        {"type": "start-step"},
        {"type": "text-start", "id": "text-4"},
        {"type": "text-delta", "id": "text-4", "delta": "It is 21°C."},
        {"type": "text-end", "id": "text-4"},
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop", "messageMetadata": {"usage": usage}},
        "[DONE]",
    ]


def test_a_call_left_for_the_client_ends_the_step_with_its_input_or_its_input_error():
    chunks, _, _ = encode_live(
        [
            ToolCall("a", "search", '{"q": "x"}'),
            ToolCall("b", "broken", '{"q": '),
            Finish("tool_calls_unknown_to_the_sdk"),
        ]
    )
    assert [c["type"] for c in joined(chunks) if isinstance(c, dict)] == [
        "start",
        "start-step",
        "tool-input-start",
        "tool-input-delta",
        "tool-input-available",
        "tool-input-start",
        "tool-input-delta",
        "tool-input-error",
        "finish-step",
        "finish",
    ]
    error = next(c for c in chunks if isinstance(c, dict) and c["type"] == "tool-input-error")
    assert (error["toolCallId"], error["toolName"], error["input"]) == ("b", "broken", '{"q": ')
    # A reason the AI SDK does not know would fail its schema: it is "other".
    assert chunks[-2] == {"type": "finish", "finishReason": "other"}


@pytest.mark.parametrize(
    ("status", "error", "last"),
    [
        (
            "error",
            "the model could not be reached",
            {"type": "error", "errorText": "the model could not be reached"},
        ),
        ("error", None, {"type": "error", "errorText": "generation failed"}),
        (
            "timeout",
            "no activity for 60 seconds",
            {"type": "error", "errorText": "no activity for 60 seconds"},
        ),
        ("cancelled", None, {"type": "abort", "reason": "cancelled"}),
    ],
)
def test_a_stream_that_does_not_finish_ends_with_an_error_or_an_abort(status, error, last):
    chunks, _, _ = encode_live(["Half an ans"], status, error)
    assert chunks[-4:] == [
        {"type": "text-delta", "id": "text-0", "delta": "Half an ans"},
        {"type": "text-end", "id": "text-0"},
        last,
        "[DONE]",
    ]


def test_an_ended_encoder_says_nothing_more_and_statuses_before_the_end_say_nothing():
    encoder = UIMessageEncoder("m")
    assert encoder.status("streaming", None) == encoder.status("pending", None) == ""
    assert chunks_of(encoder.status("done", None)) == [
        {"type": "start", "messageId": "m"},
        {"type": "finish", "finishReason": "stop"},
        "[DONE]",
    ]
    assert encoder.ended
    assert encoder.text(0, "late", []) == ""
    assert encoder.status("error", "late") == ""


def test_text_sent_again_is_skipped_and_a_gap_is_refused():
    encoder = UIMessageEncoder("m")
    encoder.text(0, "Hello", [])
    assert [c["delta"] for c in chunks_of(encoder.text(3, "lo, world", [])) if "delta" in c] == [
        ", world"
    ]
    assert encoder.text(2, "llo", []) == ""
    with pytest.raises(ValueError, match="offset 13"):
        encoder.text(13, "!", [])


pieces_strategy = st.lists(
    st.one_of(
        st.text(min_size=1, max_size=6),
        st.builds(Reasoning, st.text(min_size=1, max_size=6)),
        st.builds(
            ToolCall, st.sampled_from(["c1", "c2"]), st.sampled_from(["", "f"]), st.just('{"k": 1}')
        ),
        st.builds(ToolResult, st.sampled_from(["c1", "c2"]), st.integers()),
        st.builds(Finish, st.sampled_from(["stop", "length", "tool-calls"])),
    ),
    max_size=14,
)


@settings(max_examples=150, deadline=None)
@given(pieces=pieces_strategy, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_the_chunks_do_not_depend_on_how_the_body_is_cut(pieces, cuts):
    """The live drive (piece by piece), a replay from the database (the whole body at
    once) and a viewer that hears committed deltas cut anywhere, each with the map as
    far as that text, give the same chunks once each part's deltas are joined."""
    live, body, entries = encode_live(pieces)

    replay = UIMessageEncoder("m1")
    replayed = chunks_of(replay.text(0, body, entries) + replay.status("done", None, entries))

    followed = UIMessageEncoder("m1")
    out = ""
    bounds = sorted({0, len(body), *(c for c in cuts if c <= len(body))})
    for start, end in zip(bounds, bounds[1:], strict=False):
        known = [e for e in entries if e["at"] <= end]
        out += followed.text(start, body[start:end], known)
    out += followed.status("done", None, entries)

    assert joined(replayed) == joined(live)
    assert joined(chunks_of(out)) == joined(live)
    texts = [p for p in message_of(live) if p["type"] != "tool"]
    assert texts == [
        {"type": p["type"], "text": p["text"]}
        for p in assemble(body, entries)
        if p["type"] in ("text", "reasoning")
    ]


# The real AI SDK reads the chunks ---------------------------------------------------------

READ_WITH_THE_SDK = """
import { parseJsonEventStream, readUIMessageStream, uiMessageChunkSchema } from "ai";
const input = [];
for await (const data of process.stdin) input.push(data);
const chunks = parseJsonEventStream({
  stream: new Response(Buffer.concat(input)).body,
  schema: uiMessageChunkSchema,
}).pipeThrough(new TransformStream({
  transform(result, controller) {
    if (!result.success) throw result.error;
    controller.enqueue(result.value);
  },
}));
let message = null;
let error = null;
for await (const snapshot of readUIMessageStream({ stream: chunks, onError: (e) => { error = e.message; } })) {
  message = snapshot;
}
console.log(JSON.stringify({ message, error }));
"""


@pytest.fixture(scope="session", name="node_modules")
def node_modules_fixture() -> Path:
    return node_modules()


def read_with_the_sdk(sse: str) -> dict[str, Any]:
    done = subprocess.run(
        ["node", "--input-type=module", "-e", READ_WITH_THE_SDK],
        cwd=HERE,
        input=sse.encode(),
        capture_output=True,
        check=True,
        timeout=60,
    )
    return dict(json.loads(done.stdout))


def test_the_ai_sdk_reads_every_kind_of_chunk_into_the_message(node_modules):
    """Every chunk passes the SDK's own schema (uiMessageChunkSchema), and its message
    has the parts in order: reasoning, text, the tool call with input and output."""
    usage = {"input_tokens": 3, "output_tokens": 9}
    pieces: list[str | Part] = [
        Reasoning("Think."),
        "Look: ",
        ToolCall("call_1", "get_weather", '{"city": "Paris"}'),
        ToolResult("call_1", {"temp": 21}),
        "21°C 🎉",
        Finish("stop", usage),
    ]
    part_map, encoder, body = PartMap(), UIMessageEncoder("reply-1"), ""
    sse = encoder.start()
    for piece in pieces:
        text = part_map.add(piece, len(body))
        sse += encoder.text(len(body), text, part_map.entries)
        body += text
    sse += encoder.status("done", None, part_map.entries)

    read = read_with_the_sdk(sse)
    assert read["error"] is None
    message = read["message"]
    assert (message["id"], message["metadata"]) == ("reply-1", {"usage": usage})
    parts = [p for p in message["parts"] if p["type"] != "step-start"]
    assert [(p["type"], p.get("text"), p.get("state")) for p in parts] == [
        ("reasoning", "Think.", "done"),
        ("text", "Look: ", "done"),
        ("tool-get_weather", None, "output-available"),
        ("text", "21°C 🎉", "done"),
    ]
    assert (parts[2]["input"], parts[2]["output"]) == ({"city": "Paris"}, {"temp": 21})
    assert [p["type"] for p in message["parts"]].count("step-start") == 2

    failed = UIMessageEncoder("reply-2")
    read = read_with_the_sdk(
        failed.text(0, "Half", []) + failed.status("error", "the model could not be reached")
    )
    assert read["error"] == "the model could not be reached"
    assert read["message"]["parts"][-1]["text"] == "Half"


# Driving and resuming, in process ---------------------------------------------------------


class Gate:
    """A source the test lets go piece by piece: ``None`` ends it, an exception is raised."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    async def __aiter__(self):
        while (piece := await self.queue.get()) is not None:
            if isinstance(piece, BaseException):
                raise piece
            yield piece

    def feed(self, *pieces: Any) -> None:
        for piece in pieces:
            self.queue.put_nowait(piece)


async def read_body(response: Any) -> str:
    return b"".join([part async for part in response]).decode()


async def committed(stream_id: uuid.UUID, length: int, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while (await stream_row(stream_id)).length < length:
        assert time.monotonic() < deadline, f"{length} characters never committed"
        await asyncio.sleep(0.01)


async def drive(stream_id: uuid.UUID, source: Any, user: Any, **kwargs: Any) -> Any:
    """Drive as ``user`` (the stream's owner, under the default policy)."""
    request = drive_request(user, "/api/ai/chat")
    return await aui_message_stream_response(request, stream_id, source, policy=FAST, **kwargs)


async def resume(stream_id: uuid.UUID | None, user: Any = None) -> Any:
    """Resume as ``user``, or as an anonymous visitor."""
    request = as_user(AsyncRequestFactory().get("/api/ai/chat/x/stream"), user)
    return await aresume_response(request, stream_id)


PIECES: list[str | Part] = [
    Reasoning("The user "),
    Reasoning("greets me."),
    "Héllo ",
    ToolCall("call_1", "lookup", '{"who": '),
    ToolCall("call_1", "", '"you"}'),
    ToolResult("call_1", {"name": "Ada"}),
    "Ada! 😀👩🏽‍💻 ",
    "How are you?",
    Finish("stop", {"output_tokens": 7}),
]


@pytest.mark.django_db(transaction=True)
async def test_a_resume_mid_reply_gives_the_message_of_the_live_drive():
    stream, owner = await owned_stream()
    source = Gate()
    response = await drive(stream.pk, source, owner)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response["x-vercel-ai-ui-message-stream"] == "v1"
    assert response["X-Accel-Buffering"] == "no"
    live = asyncio.create_task(read_body(response))

    source.feed(*PIECES[:5])
    await committed(stream.pk, len("The user greets me.Héllo "))
    resumed = await resume(stream.pk, owner)
    assert resumed.status_code == 200
    assert resumed["x-vercel-ai-ui-message-stream"] == "v1"
    following = asyncio.create_task(read_body(resumed))
    await asyncio.sleep(0.1)
    source.feed(*PIECES[5:], None)

    live_chunks, resumed_chunks = chunks_of(await live), chunks_of(await following)
    assert joined(resumed_chunks) == joined(live_chunks)
    assert live_chunks[0] == {"type": "start", "messageId": str(stream.pk)}
    assert live_chunks[-2:] == [
        {
            "type": "finish",
            "finishReason": "stop",
            "messageMetadata": {"usage": {"output_tokens": 7}},
        },
        "[DONE]",
    ]
    body = await sync_to_async(get_stream_body)(stream.pk)
    assert body.status == Status.DONE
    assert message_of(live_chunks) == [
        {"type": "reasoning", "text": "The user greets me."},
        {"type": "text", "text": "Héllo "},
        {
            "type": "tool",
            "name": "lookup",
            "raw": '{"who": "you"}',
            "input": {"who": "you"},
            "output": {"name": "Ada"},
        },
        {"type": "text", "text": "Ada! 😀👩🏽‍💻 How are you?"},
    ]
    assert [p.get("text") for p in assemble(body.text, body.parts) if "text" in p] == [
        "The user greets me.",
        "Héllo ",
        "Ada! 😀👩🏽‍💻 How are you?",
    ]
    # Once it has ended there is nothing to resume.
    assert (await resume(stream.pk, owner)).status_code == 204


@pytest.mark.django_db(transaction=True)
@override_settings(STREAMING_APP={"VIEWER_BUFFER_CHARS": 64, "SSE_KEEPALIVE": 60})
async def test_a_resuming_reader_that_falls_behind_catches_up_exactly(caplog):
    """The hub drops the frames of a viewer that stops reading and sends them again
    from where it was: the chunks stay exactly those of the drive."""
    caplog.set_level(logging.INFO, logger="streaming_app.fanout.viewer")
    stream, owner = await owned_stream()
    source = Gate()
    live = asyncio.create_task(read_body(await drive(stream.pk, source, owner)))
    source.feed(Reasoning("Hmm. "), "First words. ")
    await committed(stream.pk, 18)
    resumed = (await resume(stream.pk, owner)).__aiter__()
    read = [(await resumed.__anext__()).decode()]
    words = [f"word{i} " for i in range(200)]
    # In three flushes (each waited for), so that frames pile up behind the one the
    # reader has not taken, whatever the flush policy would have batched: past
    # VIEWER_BUFFER_CHARS the reader is cut loose.
    source.feed(*words[:100])
    await committed(stream.pk, 18 + len("".join(words[:100])))
    source.feed(ToolCall("c", "f", "{}"), ToolResult("c", 1))
    await committed(stream.pk, 18 + len("".join(words[:100])) + 2)
    source.feed(*words[100:])
    await committed(stream.pk, 18 + len("".join(words)) + 2)
    source.feed(None)
    read += [part.decode() async for part in resumed]
    assert "is not reading; it will catch up" in caplog.text, "never cut loose: proves nothing"
    assert joined(chunks_of("".join(read))) == joined(chunks_of(await live))


@pytest.mark.django_db(transaction=True)
async def test_a_failing_source_ends_both_streams_with_the_public_error():
    stream, owner = await owned_stream()
    source = Gate()
    live = asyncio.create_task(read_body(await drive(stream.pk, source, owner)))
    source.feed("Partial ")
    await committed(stream.pk, 8)
    following = asyncio.create_task(read_body(await resume(stream.pk, owner)))
    await asyncio.sleep(0.1)
    source.feed(RuntimeError("secret host 10.0.0.9 refused"))
    for chunks in (chunks_of(await live), chunks_of(await following)):
        assert chunks[-3:] == [
            {"type": "text-end", "id": "text-0"},
            {"type": "error", "errorText": "generation failed"},
            "[DONE]",
        ]
    assert (await wait_finished(stream.pk)).status == Status.ERROR


@pytest.mark.django_db(transaction=True)
async def test_a_second_drive_and_unknown_streams_are_json_errors():
    stream, owner = await owned_stream()
    source = Gate()
    first = asyncio.create_task(read_body(await drive(stream.pk, source, owner)))
    again = await drive(stream.pk, Gate(), owner)
    assert (again.status_code, json.loads(again.content)["status"]) == (409, "streaming")
    source.feed("ok", None)
    await first
    missing = await drive(uuid.uuid4(), Gate(), owner)
    assert missing.status_code == 404
    assert (await resume(uuid.uuid4())).status_code == 404
    assert (await resume(None)).status_code == 204


@pytest.mark.django_db(transaction=True)
@override_settings(STREAMING_APP={"PERMISSION_POLICY": "streaming_app.permissions.owner_policy"})
async def test_a_resume_follows_the_read_permission():
    owner = await sync_to_async(get_user_model().objects.create_user)("owner")
    stream = await acreate_stream(owner=owner)
    refused = await resume(stream.pk)
    assert refused.status_code == 403
    assert json.loads(refused.content) == {"error": "you may not read this stream"}


# The example's useChat endpoints ----------------------------------------------------------


@pytest.fixture
def ai_routes(settings: Any) -> None:
    settings.ROOT_URLCONF = __name__


def user_message(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "role": "user",
        "parts": [{"type": "text", "text": text}],
        **extra,
    }


def chat_body(chat_id: Any, *messages: dict[str, Any], **extra: Any) -> str:
    return json.dumps(
        {"id": str(chat_id), "messages": list(messages), "trigger": "submit-message", **extra}
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("body", "code", "error"),
    [
        ("not json", 400, "the body is not valid JSON"),
        ("[]", 400, "the body must be a JSON object"),
        (chat_body("chat-1", user_message("Hi")), 400, '"id" must be a UUID'),
        (json.dumps({"messages": [user_message("Hi")]}), 400, '"id" must be a UUID'),
        (chat_body(uuid.uuid4()), 400, '"messages" must be a non-empty list'),
        (chat_body(uuid.uuid4(), {"role": "assistant", "parts": []}), 400, "the user's"),
        (chat_body(uuid.uuid4(), {"role": "user", "parts": "Hi"}), 400, "a list of parts"),
        (chat_body(uuid.uuid4(), user_message("   ")), 400, "no text"),
        (chat_body(uuid.uuid4(), user_message("a\x00b")), 400, "NUL"),
        (chat_body(uuid.uuid4(), user_message("a\ud800b")), 400, "lone surrogate"),
        ("[" * 100_000, 400, "the body is not valid JSON"),
        (chat_body(uuid.uuid4(), user_message("x" * 32_001)), 413, "limited to 32000"),
        (
            chat_body(uuid.uuid4(), user_message("Hi"), trigger="regenerate-message"),
            400,
            "not supported",
        ),
    ],
)
async def test_the_chat_endpoint_refuses_bodies_use_chat_would_not_send(
    ai_routes, body, code, error
):
    response = await AsyncClient().post("/api/ai/chat", body, content_type="application/json")
    assert response.status_code == code, response.content
    assert error in response.json()["error"]
    assert not await Chat.objects.aexists()


@pytest.mark.django_db(transaction=True)
async def test_the_chat_endpoint_answers_with_the_demo_model_and_keeps_the_chat(ai_routes):
    client, chat_id = AsyncClient(), uuid.uuid4()
    response = await client.post(
        "/api/ai/chat", chat_body(chat_id, user_message("Hi!")), content_type="application/json"
    )
    assert response.status_code == 200, response.content
    assert response["x-vercel-ai-ui-message-stream"] == "v1"
    chunks = chunks_of(await read_body(response))
    assert chunks[-1] == "[DONE]" and chunks[-2]["type"] == "finish"
    answer = "".join(p["text"] for p in message_of(chunks) if p["type"] == "text")
    assert answer == demo_answer([{"role": "user", "content": "Hi!"}])
    chat = await Chat.objects.aget(pk=chat_id)
    stream = await wait_finished(uuid.UUID(response["X-Stream-Id"]))
    assert (stream.status, stream.owner_id) == (Status.DONE, chat.owner_id)
    # Nothing is live: there is nothing to resume; an unknown chat has nothing either.
    assert (await client.get(f"/api/ai/chat/{chat_id}/stream")).status_code == 204
    assert (await client.get(f"/api/ai/chat/{uuid.uuid4()}/stream")).status_code == 204
    assert (await client.get("/api/ai/chat/nope/stream")).status_code == 400

    # The next message goes on with the conversation the server keeps.
    follow = await client.post(
        "/api/ai/chat",
        chat_body(chat_id, user_message("Hi!"), user_message("Again")),
        content_type="application/json",
    )
    assert "(message 2 of this chat)" in "".join(
        c["delta"]
        for c in chunks_of(await read_body(follow))
        if c != "[DONE]" and c["type"] == "text-delta"
    )
    # Someone else may not write to it.
    stranger = await AsyncClient().post(
        "/api/ai/chat",
        chat_body(chat_id, user_message("Mine now")),
        content_type="application/json",
    )
    assert stranger.status_code == 403
    assert "not yours" in stranger.json()["error"]


@pytest.mark.django_db(transaction=True)
@override_settings(DEMO_MODEL_DELAY=0.01)
async def test_one_reply_at_a_time_and_a_live_reply_resumes(ai_routes):
    client, chat_id = AsyncClient(), uuid.uuid4()
    first = await client.post(
        "/api/ai/chat", chat_body(chat_id, user_message("Go")), content_type="application/json"
    )
    assert first.status_code == 200
    reading = asyncio.create_task(read_body(first))
    second = await client.post(
        "/api/ai/chat", chat_body(chat_id, user_message("And")), content_type="application/json"
    )
    assert second.status_code == 409
    resumed = await AsyncClient().get(f"/api/ai/chat/{chat_id}/stream")  # anyone with the link
    assert resumed.status_code == 200
    assert joined(chunks_of(await read_body(resumed))) == joined(chunks_of(await reading))


# useChat in Chromium ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def aisdk_page(node_modules: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The test page's bundle (React, @ai-sdk/react, ai), as JavaScript."""
    return bundle("aisdk-page.jsx", tmp_path_factory.mktemp("aisdk") / "page.js")


def serve_page(context: Any, script: str) -> None:
    serve_test_page(context, "aisdk-test", "useChat", script)


def reply(page: Any) -> dict[str, Any]:
    """The page's useChat state: its status, error, and the assistant's parts (text and
    reasoning, as useChat has them)."""
    chat = page.evaluate("window.__chat")
    replies = [m for m in chat["messages"] if m["role"] == "assistant"]
    parts = replies[-1]["parts"] if replies else []
    return {
        "status": chat["status"],
        "error": chat["error"],
        "parts": [(p["type"], p["text"]) for p in parts if p["type"] in ("text", "reasoning")],
    }


def text_of(state: dict[str, Any]) -> str:
    return "".join(text for kind, text in state["parts"] if kind == "text")


@pytest.mark.daphne
@pytest.mark.slow
@pytest.mark.browser
def test_use_chat_streams_a_reply_resumes_it_after_a_reload_and_in_a_second_browser(
    daphne_factory, chromium, aisdk_page, browser_factory
):
    server = daphne_factory(DEMO_MODEL_DELAY="0.04")
    prompt = "Tell me about streaming"
    expected = demo_answer([{"role": "user", "content": prompt}])
    chat_id = str(uuid.uuid4())
    api = browser_factory(server.url)
    routed = api.http.get(f"/api/ai/chat/{chat_id}/stream").status_code
    assert routed == 204, 'example_project/urls.py needs path("api/ai/", include(...ai_urls))'

    owner = chromium.new_context(base_url=server.url)
    serve_page(owner, aisdk_page)
    page = owner.new_page()
    page.goto("/")  # the CSRF cookie
    page.goto(f"/aisdk-test/?chat={chat_id}")
    page.wait_for_function("window.__chat && window.__chat.status === 'ready'")
    page.evaluate("(text) => { window.__send(text); }", prompt)  # not awaiting the reply
    page.wait_for_function(
        "window.__chat.status === 'streaming' && window.__chat.messages.at(-1).role === 'assistant'"
        " && window.__chat.messages.at(-1).parts.some((p) => p.type === 'text' && p.text.length > 30)",
        timeout=20_000,
    )
    first = reply(page)
    assert first["status"] == "streaming" and first["error"] is None
    assert expected.startswith(text_of(first)) and len(text_of(first)) < len(expected)
    page.wait_for_function(
        f"window.__chat.messages.at(-1).parts.some((p) => p.type === 'text' && p.text.length > {len(text_of(first)) + 20})"
    )
    grown = reply(page)
    assert grown["status"] == "streaming" and len(text_of(grown)) > len(text_of(first))
    assert expected.startswith(text_of(grown))
    seen = page.evaluate("window.__seen")
    lengths = [
        sum(n for kind, n in s["parts"] if kind == "text")
        for s in seen
        if s["status"] == "streaming"
    ]
    assert len(set(lengths)) > 5, "the text did not grow piece by piece while streaming"
    assert lengths == sorted(lengths)

    # A second browser opens the chat mid-reply: it resumes the reply.
    viewer = chromium.new_context(base_url=server.url)
    serve_page(viewer, aisdk_page)
    watching = viewer.new_page()
    watching.goto(f"/aisdk-test/?chat={chat_id}")

    # The owner reloads mid-reply: useChat resumes it from the server.
    page.reload()
    page.wait_for_function(
        "window.__chat && window.__chat.messages.some((m) => m.role === 'assistant')",
        timeout=20_000,
    )
    resumed = reply(page)
    assert resumed["status"] == "streaming", "the reply ended before the reload: make it slower"
    if os.environ.get("AISDK_SCREENSHOT"):  # docs/img/aisdk-resumed.png
        page.wait_for_function(
            f"window.__chat.messages.at(-1).parts.some((p) => p.type === 'text' && p.text.length > {len(expected) // 2})"
        )
        page.screenshot(path=os.environ["AISDK_SCREENSHOT"], full_page=True)
    for browser_page in (page, watching):
        browser_page.wait_for_function(
            "window.__chat.status === 'ready' && window.__chat.messages.length > 0", timeout=30_000
        )
    stream_id = api.http.get(f"/api/chats/{chat_id}/").json()["messages"][-1]["stream_id"]
    body = api.body(stream_id)
    assert body["status"] == "done"
    database = [
        (p["type"], p["text"]) for p in assemble(body["text"], body.get("parts", ())) if "text" in p
    ]
    finals = [reply(page), reply(watching)]
    for final in finals:
        assert final["error"] is None
        assert final["parts"] == database, "doubled or missing characters"
        assert text_of(final) == expected
    assert page.locator(".text").last.text_content() == expected
    assert watching.locator(".text").last.text_content() == expected

    reasoning_shown = [page.locator(".reasoning").count(), watching.locator(".reasoning").count()]

    # Reloaded after the end: nothing to resume (204), and no error.
    page.reload()
    page.wait_for_function("window.__chat && window.__chat.status === 'ready'")
    assert page.evaluate("window.__chat") == {
        "id": chat_id,
        "status": "ready",
        "error": None,
        "messages": [],
    }

    # Reasoning and text arrive as separate parts (the demo model reasons first).
    for final in finals:
        assert [kind for kind, _ in final["parts"]] == ["reasoning", "text"]
    assert reasoning_shown == [1, 1]
