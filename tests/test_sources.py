"""The openai adapter against an OpenAI-compatible server on loopback, with the real SDK."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import openai
import pytest

from streaming_app.models import Status
from streaming_app.parts import Finish, Part, Reasoning, ToolCall, assemble
from streaming_app.sources.openai import (
    chat_completion_parts,
    chat_completion_text,
    response_parts,
)
from streaming_app.streams import aget_stream_body

from .helpers import run_to_end, stream_row
from .servers import FakeOpenAI, ScriptedOpenAI

pytestmark = pytest.mark.django_db(transaction=True)

PIECES = ["Sure", "!", " Here", " is", " 🍂", " 静か", ".\n", "```py\n", "x = 1\n```"]
MESSAGES = [{"role": "user", "content": "Go"}]


@pytest.fixture
def model() -> Iterator[type[FakeOpenAI]]:
    started: list[FakeOpenAI] = []

    def start(*args, **kwargs) -> FakeOpenAI:
        started.append(FakeOpenAI(*args, **kwargs))
        return started[-1]

    yield start  # type: ignore[misc]
    for server in started:
        server.close()


def client(server: FakeOpenAI) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0)


async def test_the_text_arrives_exactly_and_the_request_is_the_sdks(model):
    server = model(PIECES, delay=0.002)
    async with client(server) as sdk:
        pieces = [p async for p in chat_completion_text(sdk, model="m", messages=MESSAGES)]
    assert "".join(pieces) == "".join(PIECES)
    [request] = server.requests
    assert request["body"] == {"model": "m", "messages": MESSAGES, "stream": True}


@pytest.mark.parametrize(
    ("fake", "raised", "public"),
    [
        (
            {"status": 429},
            openai.RateLimitError,
            "the model is over its rate limit; try again later",
        ),
        (
            {"status": 500},
            openai.InternalServerError,
            "the model answered with an error (HTTP 500)",
        ),
        ({"fail_after": 3}, openai.APIError, "the model reported an error"),
        (
            {"fail_after": 3, "failure": "drop"},
            openai.APIConnectionError,
            "the model could not be reached",
        ),
    ],
)
async def test_the_sdks_errors_are_raised_and_readers_get_plain_words(model, fake, raised, public):
    server = model(PIECES, **fake)
    async with client(server) as sdk:
        with pytest.raises(raised):
            async for _ in chat_completion_text(sdk, model="m", messages=MESSAGES):
                pass
        stream_id, status = await run_to_end(
            chat_completion_text(sdk, model="m", messages=MESSAGES)
        )
    body = await aget_stream_body(stream_id)
    assert (status, body.error) == (Status.ERROR, public)
    assert body.text == "".join(PIECES[: fake.get("fail_after", 0)])
    assert "10.0.0.9" not in (body.error or "")


# Parts: reasoning, text, tool calls and a finish -----------------------------------------

REASONING = ["Let me", " think… 🤔", " about\nParis", " and its time."]
CONTENT = ["I'll look", " both up ", "(静か).\n"]
#: Two tool calls: id, name, and their arguments as the model streams them.
CALLS = [
    ("call_a", "get_weather", ['{"ci', 'ty": "Pa', 'ris", "unit"', ': "°C"}']),
    ("call_b", "get_time", ["{", '"tz": "Europe/', 'Paris"}']),
]
CHAT_USAGE = {
    "prompt_tokens": 31,
    "completion_tokens": 57,
    "total_tokens": 88,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 12},
}
RESPONSE_USAGE = {
    "input_tokens": 31,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 57,
    "output_tokens_details": {"reasoning_tokens": 12},
    "total_tokens": 88,
}
USAGE = {"input_tokens": 31, "output_tokens": 57, "total_tokens": 88, "reasoning_tokens": 12}
#: What every script below says, part by part (as parts.assemble gives it back).
EXPECTED = [
    {"type": "reasoning", "text": "".join(REASONING)},
    {"type": "text", "text": "".join(CONTENT)},
    *(
        {"type": "tool-call", "id": id_, "name": name, "arguments": "".join(arguments)}
        for id_, name, arguments in CALLS
    ),
    {"type": "finish", "reason": "tool-calls", "usage": USAGE},
]


def sse(data: Any, event: str | None = None) -> str:
    return (f"event: {event}\n" if event else "") + f"data: {json.dumps(data)}\n\n"


def chat_chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
    return sse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [choice],
        }
    )


def chat_script(reasoning_key: str = "reasoning_content", usage: bool = True) -> list[str]:
    """A reasoning model's Chat Completions stream, as OpenAI-compatible servers send it:
    the tool calls' ids and names only in their first deltas, then a usage chunk."""
    events = [chat_chunk({"role": "assistant", "content": ""})]
    events += [chat_chunk({reasoning_key: piece, "content": None}) for piece in REASONING]
    events += [chat_chunk({"content": piece}) for piece in CONTENT]
    for index, (id_, name, arguments) in enumerate(CALLS):
        first = {"index": index, "id": id_, "type": "function"}
        events.append(
            chat_chunk({"tool_calls": [{**first, "function": {"name": name, "arguments": ""}}]})
        )
        events += [
            chat_chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            for piece in arguments
        ]
    events.append(chat_chunk({}, finish="tool_calls"))
    if usage:
        events.append(
            sse(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "m",
                    "choices": [],
                    "usage": CHAT_USAGE,
                }
            )
        )
    return [*events, "data: [DONE]\n\n"]


def response_event(kind: str, sequence: int, **fields: Any) -> str:
    return sse({"type": kind, "sequence_number": sequence, **fields}, event=kind)


def response_script(*, argument_deltas: bool = True) -> list[str]:
    """A reasoning model's Responses API stream: a reasoning summary, a message, two
    function calls (their arguments in deltas, or, ``argument_deltas=False``, only whole
    at their end), then ``response.completed`` with the usage."""
    kinds: list[tuple[str, dict[str, Any]]] = []
    response = {"id": "resp_1", "object": "response", "model": "m", "output": []}
    kinds.append(("response.created", {"response": {**response, "status": "in_progress"}}))
    kinds.append(("response.in_progress", {"response": {**response, "status": "in_progress"}}))
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": []}
    kinds.append(("response.output_item.added", {"output_index": 0, "item": reasoning}))
    at = {"item_id": "rs_1", "output_index": 0, "summary_index": 0}
    kinds.append(
        (
            "response.reasoning_summary_part.added",
            {**at, "part": {"type": "summary_text", "text": ""}},
        )
    )
    kinds += [("response.reasoning_summary_text.delta", {**at, "delta": d}) for d in REASONING]
    kinds.append(("response.reasoning_summary_text.done", {**at, "text": "".join(REASONING)}))
    kinds.append(("response.output_item.done", {"output_index": 0, "item": reasoning}))
    message = {"type": "message", "id": "msg_1", "role": "assistant", "content": []}
    kinds.append(("response.output_item.added", {"output_index": 1, "item": message}))
    at = {"item_id": "msg_1", "output_index": 1, "content_index": 0}
    kinds.append(
        ("response.content_part.added", {**at, "part": {"type": "output_text", "text": ""}})
    )
    kinds += [("response.output_text.delta", {**at, "delta": d, "logprobs": []}) for d in CONTENT]
    kinds.append(("response.output_text.done", {**at, "text": "".join(CONTENT)}))
    kinds.append(("response.output_item.done", {"output_index": 1, "item": message}))
    for index, (id_, name, arguments) in enumerate(CALLS, start=2):
        item = {"type": "function_call", "id": f"fc_{index}", "call_id": id_, "name": name}
        added = {**item, "arguments": "", "status": "in_progress"}
        kinds.append(("response.output_item.added", {"output_index": index, "item": added}))
        at = {"item_id": f"fc_{index}", "output_index": index}
        if argument_deltas:
            kinds += [
                ("response.function_call_arguments.delta", {**at, "delta": d}) for d in arguments
            ]
        whole = "".join(arguments)
        kinds.append(("response.function_call_arguments.done", {**at, "arguments": whole}))
        done = {**item, "arguments": whole, "status": "completed"}
        kinds.append(("response.output_item.done", {"output_index": index, "item": done}))
    completed = {**response, "status": "completed", "usage": RESPONSE_USAGE}
    kinds.append(("response.completed", {"response": completed}))
    return [response_event(kind, i, **fields) for i, (kind, fields) in enumerate(kinds)]


def split(events: list[str], how: str) -> list[str]:
    """The body of ``events`` as the network may cut it."""
    body = "".join(events)
    if how == "events":
        return events
    if how == "whole":
        return [body]
    if how == "every 7":
        return [body[i : i + 7] for i in range(0, len(body), 7)]
    if how == "crlf, every 3":  # line ends "\r\n", cut between "\r" and "\n" too
        body = body.replace("\n", "\r\n")
        return [body[i : i + 3] for i in range(0, len(body), 3)]
    assert how == "random"
    rng = random.Random(20240611)
    cuts = sorted(rng.sample(range(1, len(body)), len(events) * 2))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


SPLITS = ["events", "whole", "every 7", "crlf, every 3", "random"]


def collect(parts: Iterable[str | Part]) -> list[dict[str, Any]]:
    """Parts as parts.assemble gives them back: runs of reasoning or of text as one,
    each tool call's deltas as one call (by its id; its first delta names it)."""
    out: list[dict[str, Any]] = []
    calls: dict[str, dict[str, Any]] = {}
    for part in parts:
        if isinstance(part, str | Reasoning):
            kind, text = ("text", part) if isinstance(part, str) else ("reasoning", part.text)
            assert text, "no empty pieces"
            if out and out[-1]["type"] == kind:
                out[-1]["text"] += text
            else:
                out.append({"type": kind, "text": text})
        elif isinstance(part, ToolCall):
            assert part.id, "every delta of a call has its id"
            if part.id not in calls:
                assert part.name, "a call's first delta names it"
                calls[part.id] = {
                    "type": "tool-call",
                    "id": part.id,
                    "name": part.name,
                    "arguments": "",
                }
                out.append(calls[part.id])
            else:
                assert part.name in ("", calls[part.id]["name"])
            calls[part.id]["arguments"] += part.arguments
        else:
            assert isinstance(part, Finish)
            out.append({"type": "finish", "reason": part.reason, "usage": part.usage})
    return out


def ask(source: Callable[..., AsyncIterator[str | Part]], sdk: openai.AsyncOpenAI) -> Any:
    """``source``'s parts of the answer to "Go"."""
    if source is response_parts:
        return source(sdk, model="m", input="Go")
    return source(sdk, model="m", messages=MESSAGES)


async def drain(parts: AsyncIterator[str | Part], into: list[str | Part]) -> None:
    async for part in parts:
        into.append(part)


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedOpenAI]]:
    started: list[ScriptedOpenAI] = []

    def start(chunks: list[str], **kwargs: Any) -> ScriptedOpenAI:
        started.append(ScriptedOpenAI(chunks, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize("reasoning_key", ["reasoning_content", "reasoning"])
async def test_chat_completion_parts_arrive_exactly(scripted, how, reasoning_key):
    events = chat_script(reasoning_key)
    server = scripted(split(events, how), delay=0.001)
    async with client(server) as sdk:
        parts = [p async for p in chat_completion_parts(sdk, model="m", messages=MESSAGES)]
    assert collect(parts) == EXPECTED
    assert isinstance(parts[-1], Finish)
    # Deltas are never split further than the server's events, and never reordered.
    deltas = sum(len(arguments) + 1 for _, _, arguments in CALLS) + len(REASONING) + len(CONTENT)
    assert len(parts) <= deltas + 1
    [request] = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["body"] == {
        "model": "m",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_chat_completion_parts_of_one_read_are_merged(scripted):
    server = scripted(["".join(chat_script())])
    async with client(server) as sdk:
        parts = [p async for p in chat_completion_parts(sdk, model="m", messages=MESSAGES)]
    assert collect(parts) == EXPECTED
    # One piece per part when the whole body came in a read or two.
    assert len(parts) <= len(EXPECTED) + 4, parts


@pytest.mark.parametrize("how", ["events", "whole"])
async def test_chat_tool_calls_interleaved_keep_their_ids(scripted, how):
    """Deltas of two calls in turn (by index; ids only in the first of each)."""
    (id_a, name_a, args_a), (id_b, name_b, args_b) = CALLS
    events = [
        chat_chunk({"tool_calls": [{"index": 0, "id": id_a, "function": {"name": name_a}}]}),
        chat_chunk({"tool_calls": [{"index": 1, "id": id_b, "function": {"name": name_b}}]}),
    ]
    for i in range(max(len(args_a), len(args_b))):
        for index, arguments in ((0, args_a), (1, args_b)):
            if i < len(arguments):
                delta = {"index": index, "function": {"arguments": arguments[i]}}
                events.append(chat_chunk({"tool_calls": [delta]}))
    events += [chat_chunk({}, finish="tool_calls"), "data: [DONE]\n\n"]
    server = scripted(split(events, how), delay=0.001)
    async with client(server) as sdk:
        parts = [p async for p in chat_completion_parts(sdk, model="m", messages=MESSAGES)]
    assert collect(parts) == [
        *EXPECTED[2:4],
        {"type": "finish", "reason": "tool-calls", "usage": {}},
    ]


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool-calls"),
        ("function_call", "tool-calls"),
        ("content_filter", "content-filter"),
        ("something_new", "other"),
        (None, "other"),
    ],
)
async def test_chat_completion_finish_reasons_and_the_callers_stream_options(
    scripted, finish, reason
):
    events = [chat_chunk({"content": "Hi"}), chat_chunk({}, finish=finish), "data: [DONE]\n\n"]
    server = scripted(events)
    async with client(server) as sdk:
        parts = [
            p
            async for p in chat_completion_parts(
                sdk, model="m", messages=MESSAGES, stream_options={"include_usage": False}
            )
        ]
    assert parts == ["Hi", Finish(reason, {})]
    assert server.requests[0]["body"]["stream_options"] == {"include_usage": False}


@pytest.mark.parametrize("how", SPLITS)
async def test_response_parts_arrive_exactly(scripted, how):
    events = response_script()
    server = scripted(split(events, how), delay=0.001)
    async with client(server) as sdk:
        parts = [p async for p in response_parts(sdk, model="m", input="Go")]
    assert collect(parts) == EXPECTED
    assert isinstance(parts[-1], Finish)
    [request] = server.requests
    assert request["path"] == "/v1/responses"
    assert request["body"] == {"model": "m", "input": "Go", "stream": True}


async def test_response_parts_take_arguments_sent_whole(scripted):
    """A server that streams no argument deltas: each call's arguments once, at its end."""
    server = scripted(response_script(argument_deltas=False))
    async with client(server) as sdk:
        parts = [p async for p in response_parts(sdk, model="m", input="Go")]
    assert collect(parts) == EXPECTED


@pytest.mark.parametrize(
    ("details", "reason"),
    [({"reason": "max_output_tokens"}, "length"), ({"reason": "content_filter"}, "content-filter")],
)
async def test_an_incomplete_response_finishes_with_its_reason(scripted, details, reason):
    at = {"item_id": "msg_1", "output_index": 0, "content_index": 0, "logprobs": []}
    usage = {"input_tokens": 5, "output_tokens": 16, "total_tokens": 21}
    events = [
        response_event("response.output_text.delta", 0, delta="Once upon", **at),
        response_event("response.output_text.delta", 1, delta=" a time", **at),
        response_event(
            "response.incomplete",
            2,
            response={"status": "incomplete", "incomplete_details": details, "usage": usage},
        ),
    ]
    server = scripted(events)
    async with client(server) as sdk:
        parts = [p async for p in response_parts(sdk, model="m", input="Go")]
    assert collect(parts) == [
        {"type": "text", "text": "Once upon a time"},
        {"type": "finish", "reason": reason, "usage": usage},
    ]


def chat_error_script() -> tuple[list[str], str]:
    events = chat_script()
    cut = 1 + len(REASONING) + len(CONTENT)  # after the text, before the tool calls
    message = "The model is overloaded"
    return [
        *events[:cut],
        sse({"error": {"message": message, "type": "server_error"}}),
        *events[cut:],
    ], message


def response_error_script(kind: str) -> tuple[list[str], str]:
    events = response_script()
    cut = next(i for i, e in enumerate(events) if "response.output_text.done" in e)
    if kind == "error":
        message = "The server had an error while processing your request."
        error = response_event("error", cut, code="server_error", message=message, param=None)
    else:
        message = "The model failed to finish."
        failed = {"status": "failed", "error": {"code": "server_error", "message": message}}
        error = response_event("response.failed", cut, response=failed)
    return [*events[:cut], error, *events[cut:]], message


@pytest.mark.parametrize("how", ["events", "whole"])
@pytest.mark.parametrize(
    ("source", "script"),
    [
        (chat_completion_parts, chat_error_script),
        (response_parts, lambda: response_error_script("error")),
        (response_parts, lambda: response_error_script("response.failed")),
    ],
    ids=["chat error", "responses error", "responses failed"],
)
async def test_an_error_event_raises_after_the_parts_before_it(scripted, source, script, how):
    events, message = script()
    server = scripted(split(events, how), delay=0.001)
    got: list[str | Part] = []
    async with client(server) as sdk:
        with pytest.raises(openai.APIError) as raised:
            await drain(ask(source, sdk), got)
    assert type(raised.value) is openai.APIError
    assert raised.value.message == message
    assert collect(got) == EXPECTED[:2], "the reasoning and the text, all of it, first"


@pytest.mark.parametrize("source", [chat_completion_parts, response_parts])
@pytest.mark.parametrize(
    ("fake", "raised"),
    [
        ({"status": 429}, openai.RateLimitError),
        ({"status": 500}, openai.InternalServerError),
        ({"fail_after": 4, "failure": "drop"}, openai.APIConnectionError),
        ({"delay": 5}, openai.APITimeoutError),
    ],
)
async def test_parts_raise_the_sdks_errors(scripted, source, fake, raised):
    script = chat_script() if source is chat_completion_parts else response_script()
    server = scripted(script, **fake)
    got: list[str | Part] = []
    sdk = openai.AsyncOpenAI(
        api_key="sk-test", base_url=server.base_url, max_retries=0, timeout=0.5
    )
    async with sdk:
        with pytest.raises(raised):
            await drain(ask(source, sdk), got)
    if "status" in fake:
        assert got == [], "an HTTP error before any part"


@pytest.mark.parametrize("source", [chat_completion_parts, response_parts])
async def test_closing_the_parts_closes_the_connection(scripted, source):
    script = chat_script() if source is chat_completion_parts else response_script()
    server = scripted(script * 20, delay=0.05)  # 20 s of events, if read to the end
    async with client(server) as sdk:
        parts = ask(source, sdk)
        first = await anext(parts)
        assert isinstance(first, Reasoning | str)
        await parts.aclose()
        for _ in range(150):
            if server.disconnects:
                break
            await asyncio.sleep(0.02)
        assert server.disconnects == 1, "the server saw the connection close"


@pytest.mark.parametrize(
    ("source", "script"),
    [(chat_completion_parts, chat_script), (response_parts, response_script)],
    ids=["chat", "responses"],
)
async def test_parts_are_persisted_with_the_stream(scripted, source, script):
    server = scripted(split(script(), "every 7"), delay=0.001)
    async with client(server) as sdk:
        stream_id, status = await run_to_end(ask(source, sdk))
    assert status == Status.DONE
    body = await aget_stream_body(stream_id)
    row = await stream_row(stream_id)
    expected_body = "".join(
        [*REASONING, *CONTENT, *("".join(arguments) for _, _, arguments in CALLS)]
    )
    assert body.text == expected_body
    assert assemble(body.text, row.parts) == EXPECTED
    assert list(body.parts) == row.parts
