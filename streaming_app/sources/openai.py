"""``openai`` streams, read without a model object per chunk.

The SDK makes the request: authentication, base URL, retries, timeouts, and an HTTP
error raised as its ``APIStatusError`` before any text. The body, Server-Sent Events,
is read by :mod:`.sse`: one ``json.loads`` per event instead of a pydantic model per
chunk, and what arrived in one read of the network goes on as one piece (never waiting
for more), which is most of a passthrough's cost per token (docs/benchmarks.md).

:func:`chat_completion_text` gives a Chat Completion's text alone (a plain stream);
:func:`chat_completion_parts` and :func:`response_parts` give its reasoning, text, tool
calls and finish as :mod:`streaming_app.parts` objects, from Chat Completions and from
the Responses API.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import openai

from ..parts import Finish, Part, Reasoning, ToolCall
from .readers import Reader, read_parts, tokens
from .sse import Event, event_reads

#: An event's error as (message, body), or None for an event that is not one.
Failure = Callable[[Event], tuple[str, Any] | None]

_STREAM_ERROR = "An error occurred during streaming"


async def _event_reads(
    create: Callable[[], Any], failure: Failure
) -> AsyncGenerator[list[Event], None]:
    """The events of a streamed response (``create()``, the SDK's
    ``with_streaming_response.create(...)``, made when they are first read): a list per
    read of the network, until ``[DONE]`` or the body's end (:func:`.sse.event_reads`).

    An event ``failure`` calls an error is raised as ``openai.APIError``, after the
    events before it; timeouts and transport errors as ``APITimeoutError`` and
    ``APIConnectionError``. Closing the iterator closes the connection.
    """
    async with create() as response:
        request = response.http_response.request

        def error(event: Event) -> BaseException | None:
            found = failure(event)
            if found is None:
                return None
            return openai.APIError(found[0], request=request, body=found[1])

        reads = event_reads(
            response.iter_bytes(),
            failure=error,
            timed_out=lambda: openai.APITimeoutError(request=request),
            disconnected=lambda: openai.APIConnectionError(request=request),
            end=b"[DONE]",
        )
        async with aclosing(reads):
            async for events in reads:
                yield events


def _message(error: Any) -> str:
    message = error.get("message") if isinstance(error, dict) else None
    return str(message or _STREAM_ERROR)


def _chat_failure(event: Event) -> tuple[str, Any] | None:
    """A Chat Completions error event: ``{"error": {"message": ...}}``."""
    error = event.get("error")
    if not error:
        return None
    return _message(error), error


def _choice(event: Event) -> dict[str, Any] | None:
    """Choice 0 of a Chat Completions chunk (the one that is streamed)."""
    for choice in event.get("choices") or ():
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None


def _content(event: Event) -> str:
    """The text of one chunk (choice 0's delta)."""
    choice = _choice(event)
    if choice is None:
        return ""
    return str((choice.get("delta") or {}).get("content") or "")


async def chat_completion_text(client: openai.AsyncOpenAI, **create: Any) -> AsyncIterator[str]:
    """The text of a streamed Chat Completion, as it arrives.

    ``create`` are the keyword arguments of ``client.chat.completions.create``
    (``model``, ``messages``, ...); ``stream=True`` is added. Raises the SDK's errors:
    ``APIStatusError`` (and its kinds) for an HTTP error, ``APIError`` for an error
    event in the stream, ``APITimeoutError`` and ``APIConnectionError`` when the body
    stops coming. Closing the iterator (a cancelled stream) closes the connection.
    """
    reads = _event_reads(
        lambda: client.chat.completions.with_streaming_response.create(stream=True, **create),
        _chat_failure,
    )
    async with aclosing(reads):
        async for events in reads:
            text = "".join([_content(event) for event in events])
            if text:
                yield text


# Parts -----------------------------------------------------------------------------------


def _tokens(usage: Any, **names: str) -> dict[str, Any]:
    """``usage``'s counts under the AI SDK's names (:func:`.readers.tokens`), and
    ``reasoning_tokens`` from its output details when it has them."""
    mapped = tokens(usage, **names)
    if not isinstance(usage, dict):
        return mapped
    for details in ("completion_tokens_details", "output_tokens_details"):
        found = usage.get(details)
        if isinstance(found, dict) and found.get("reasoning_tokens") is not None:
            mapped["reasoning_tokens"] = found["reasoning_tokens"]
    return mapped


_CHAT_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "function_call": "tool-calls",
    "content_filter": "content-filter",
}


class _ChatReader(Reader):
    def __init__(self) -> None:
        self.calls: dict[Any, str] = {}  # a tool call's index → its id
        self.reason: str | None = None
        self.usage: dict[str, Any] = {}

    def read(self, event: Event) -> list[str | Part]:
        if event.get("usage"):  # the last chunk's (with empty choices)
            self.usage = _tokens(
                event["usage"],
                input_tokens="prompt_tokens",
                output_tokens="completion_tokens",
                total_tokens="total_tokens",
            )
        choice = _choice(event)
        if choice is None:
            return []
        if choice.get("finish_reason"):
            self.reason = str(choice["finish_reason"])
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return []
        parts: list[str | Part] = []
        # OpenAI-compatible servers name it reasoning_content (DeepSeek) or reasoning
        # (OpenRouter, vLLM); one that sends both sends the same text twice.
        thought = delta.get("reasoning_content") or delta.get("reasoning")
        if thought and isinstance(thought, str):
            parts.append(Reasoning(thought))
        content = delta.get("content")
        if content and isinstance(content, str):
            parts.append(content)
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            index = call.get("index", 0)
            if call.get("id"):  # a call's first delta (a new id at an index: a new call)
                self.calls[index] = str(call["id"])
            call_id = self.calls.setdefault(index, f"call_{index}")
            function = call.get("function") or {}
            name = str(function.get("name") or "")
            arguments = str(function.get("arguments") or "")
            if name or arguments or call.get("id"):
                parts.append(ToolCall(call_id, name, arguments))
        return parts

    def end(self) -> list[str | Part]:
        return [Finish(_CHAT_REASONS.get(self.reason or "", "other"), self.usage)]


def chat_completion_parts(client: openai.AsyncOpenAI, **create: Any) -> AsyncIterator[str | Part]:
    """A streamed Chat Completion's reasoning, text, tool calls and finish, as they arrive.

    ``create`` are the keyword arguments of ``client.chat.completions.create``;
    ``stream=True`` is added, and ``stream_options={"include_usage": True}`` unless
    given. Yields :class:`~streaming_app.parts.Reasoning` for ``delta.reasoning_content``
    (or ``delta.reasoning``, as OpenRouter and vLLM send it), ``str`` for
    ``delta.content``, :class:`~streaming_app.parts.ToolCall` for ``delta.tool_calls``
    (each with its call's id; a call's first with its name), and at the end one
    :class:`~streaming_app.parts.Finish`: the finish reason as the AI SDK names it
    (``stop``, ``length``, ``tool-calls``, ``content-filter``, ``other``) and the usage
    as ``input_tokens``, ``output_tokens``, ``total_tokens`` (and ``reasoning_tokens``).
    Deltas of one kind that arrived in one read of the network come as one, in order.
    Raises as :func:`chat_completion_text` does; closing the iterator closes the
    connection.
    """
    create.setdefault("stream_options", {"include_usage": True})
    return read_parts(
        _event_reads(
            lambda: client.chat.completions.with_streaming_response.create(stream=True, **create),
            _chat_failure,
        ),
        _ChatReader(),
    )


def _responses_failure(event: Event) -> tuple[str, Any] | None:
    """A Responses API error: an ``error`` event, ``response.failed``, or an event with
    an ``error`` (as the SDK raises them)."""
    kind = event.get("type")
    if kind == "error":
        error = event["error"] if isinstance(event.get("error"), dict) else event
        return _message(error), error
    if kind == "response.failed":
        response = event.get("response")
        error = response.get("error") if isinstance(response, dict) else None
        return _message(error), error
    return _chat_failure(event)


_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content-filter"}


class _ResponseReader(Reader):
    def __init__(self) -> None:
        # A function call item's id, and its output index, → its call id.
        self.calls: dict[tuple[str, Any], str] = {}
        self.sent: dict[str, int] = {}  # a call id → the length of its arguments so far

    def call(self, event: Event, item_id: Any) -> str | None:
        return self.calls.get(("item", item_id)) or self.calls.get(
            ("output", event.get("output_index"))
        )

    def arguments(self, call_id: str, arguments: str, *, whole: bool) -> list[str | Part]:
        """A call's arguments delta, or (``whole``) what its whole arguments have more
        than its deltas gave (for a server that sends no deltas)."""
        sent = self.sent.get(call_id, 0)
        if whole:
            arguments = arguments[sent:]
        self.sent[call_id] = sent + len(arguments)
        return [ToolCall(call_id, "", arguments)] if arguments else []

    def read(self, event: Event) -> list[str | Part]:
        kind = event.get("type")
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            return [Reasoning(str(event["delta"]))] if event.get("delta") else []
        if kind == "response.output_text.delta":
            return [str(event["delta"])] if event.get("delta") else []
        item = event.get("item")
        is_call = isinstance(item, dict) and item.get("type") == "function_call"
        if kind == "response.output_item.added" and isinstance(item, dict) and is_call:
            call_id = str(item.get("call_id") or item.get("id") or "")
            call_id = call_id or f"call_{event.get('output_index', len(self.calls))}"
            if item.get("id"):
                self.calls["item", item["id"]] = call_id
            if event.get("output_index") is not None:
                self.calls["output", event["output_index"]] = call_id
            arguments = str(item.get("arguments") or "")
            self.sent[call_id] = len(arguments)
            return [ToolCall(call_id, str(item.get("name") or ""), arguments)]
        if kind == "response.function_call_arguments.delta":
            found = self.call(event, event.get("item_id"))
            if found is not None:
                return self.arguments(found, str(event.get("delta") or ""), whole=False)
        elif kind == "response.function_call_arguments.done":
            found = self.call(event, event.get("item_id"))
            if found is not None:
                return self.arguments(found, str(event.get("arguments") or ""), whole=True)
        elif kind == "response.output_item.done" and isinstance(item, dict) and is_call:
            found = self.call(event, item.get("id"))
            if found is not None:
                return self.arguments(found, str(item.get("arguments") or ""), whole=True)
        elif kind in ("response.completed", "response.incomplete"):
            response = event.get("response")
            response = response if isinstance(response, dict) else {}
            called = "tool-calls" if self.calls else None
            if kind == "response.completed":
                reason = called or "stop"
            else:
                details = response.get("incomplete_details")
                why = details.get("reason") if isinstance(details, dict) else None
                reason = _INCOMPLETE_REASONS.get(str(why), called or "other")
            usage = _tokens(
                response.get("usage"),
                input_tokens="input_tokens",
                output_tokens="output_tokens",
                total_tokens="total_tokens",
            )
            return [Finish(reason, usage)]
        return []


def response_parts(client: openai.AsyncOpenAI, **create: Any) -> AsyncIterator[str | Part]:
    """A streamed Responses API response's reasoning, text, tool calls and finish.

    ``create`` are the keyword arguments of ``client.responses.create`` (``model``,
    ``input``, ...); ``stream=True`` is added. Yields
    :class:`~streaming_app.parts.Reasoning` for reasoning summary (and reasoning text)
    deltas, ``str`` for output text deltas, :class:`~streaming_app.parts.ToolCall` for
    function calls (their ``call_id`` and name when the item is added, then their
    arguments' deltas), and one :class:`~streaming_app.parts.Finish` on
    ``response.completed`` (``stop``, or ``tool-calls`` after a function call) or
    ``response.incomplete`` (``length`` for ``max_output_tokens``), with the usage as
    ``input_tokens``, ``output_tokens``, ``total_tokens`` (and ``reasoning_tokens``).
    Deltas of one kind that arrived in one read of the network come as one, in order.
    An ``error`` or ``response.failed`` event raises ``openai.APIError`` with its
    message; otherwise raises as :func:`chat_completion_text` does, and closing the
    iterator closes the connection.
    """
    return read_parts(
        _event_reads(
            lambda: client.responses.with_streaming_response.create(stream=True, **create),
            _responses_failure,
        ),
        _ResponseReader(),
    )
