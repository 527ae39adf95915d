"""The text of an ``openai`` Chat Completions stream, without a model object per chunk.

The SDK makes the request: authentication, base URL, retries, timeouts, and an HTTP
error raised as its ``APIStatusError`` before any text. The body, Server-Sent Events,
is read here: one ``json.loads`` per event instead of a pydantic model per chunk, and
what arrived in one read of the network goes on as one piece (never waiting for more),
which is most of a passthrough's cost per token (docs/benchmarks.md).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import AsyncIterator
from typing import Any

import openai


def _http_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """The timeouts and transport errors of the HTTP clients the SDK may use."""
    timeouts: list[type[BaseException]] = []
    transport: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        timeouts.append(module.TimeoutException)
        transport.append(module.TransportError)
    return tuple(timeouts), tuple(transport)


_TIMEOUTS, _TRANSPORT = _http_errors()


def _content(event: bytes, request: Any) -> str:
    """The text of one event's data (choice 0's delta), or raise its error."""
    data = json.loads(event)
    if not isinstance(data, dict):
        return ""
    if data.get("error"):
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else None
        raise openai.APIError(
            str(message or "An error occurred during streaming"), request=request, body=error
        )
    for choice in data.get("choices") or ():
        if choice.get("index", 0) == 0:
            return str((choice.get("delta") or {}).get("content") or "")
    return ""


async def chat_completion_text(client: openai.AsyncOpenAI, **create: Any) -> AsyncIterator[str]:
    """The text of a streamed Chat Completion, as it arrives.

    ``create`` are the keyword arguments of ``client.chat.completions.create``
    (``model``, ``messages``, ...); ``stream=True`` is added. Raises the SDK's errors:
    ``APIStatusError`` (and its kinds) for an HTTP error, ``APIError`` for an error
    event in the stream, ``APITimeoutError`` and ``APIConnectionError`` when the body
    stops coming. Closing the iterator (a cancelled stream) closes the connection.
    """
    context = client.chat.completions.with_streaming_response.create(stream=True, **create)
    async with context as response:
        buffer = b""
        try:
            async for chunk in response.iter_bytes():
                buffer += chunk
                # Events end with a blank line; a partial one waits for the next read.
                *events, buffer = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
                pieces: list[str] = []
                for event in events:
                    # Its data lines, joined (comments, event names and ids are not text).
                    data = b"\n".join(
                        line[5:].removeprefix(b" ")
                        for line in event.split(b"\n")
                        if line.startswith(b"data:")
                    )
                    if not data:
                        continue
                    if data == b"[DONE]":
                        if pieces:
                            yield "".join(pieces)
                        return
                    pieces.append(_content(data, response.http_response.request))
                text = "".join(pieces)
                if text:
                    yield text
        except _TIMEOUTS as exc:
            raise openai.APITimeoutError(request=response.http_response.request) from exc
        except _TRANSPORT as exc:
            raise openai.APIConnectionError(request=response.http_response.request) from exc
