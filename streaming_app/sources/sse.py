"""Server-Sent Events read from an HTTP response's body: their data, one list per read.

A model API streams JSON objects as the data of its events. :func:`event_reads` reads
them from the body's bytes as the network gives them: one ``json.loads`` per event, and
every event that arrived in one read as one list, never waiting for more, so that a
source passes on what came at once as one piece. (The SDKs' own decoders, and httpx-sse,
give one event at a time and cannot say where a read ended.) The API's errors are the adapter's: it says which events are errors and what
to raise for them and for a body that stops coming.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from typing import Any

#: The decoded JSON object of one event's data.
Event = dict[str, Any]


def _http_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """The timeouts and transport errors of the HTTP clients the SDKs may use."""
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


async def event_reads(
    body: AsyncIterable[bytes],
    *,
    failure: Callable[[Event], BaseException | None],
    timed_out: Callable[[], BaseException],
    disconnected: Callable[[], BaseException],
    end: bytes | None = None,
) -> AsyncGenerator[list[Event], None]:
    """The events of ``body`` (an HTTP response's bytes, as read from the network), as
    the decoded JSON objects of their data: one list per read (never empty), until an
    event whose data is ``end`` (a sentinel such as ``b"[DONE]"``) or the body's end.

    An event's data is its ``data:`` lines joined; comments, event names and ids are not
    data (the APIs repeat an event's name in its data), and an event whose data is not
    a JSON object is skipped. An event ``failure`` returns an exception for is raised
    as that exception, after the events of its read before it. A timeout of the HTTP
    client (httpx) is raised as what ``timed_out()`` returns, another transport error as
    what ``disconnected()`` returns, each from the client's. Closing the iterator stops
    reading ``body``; closing the response is its opener's.
    """
    buffer = b""
    try:
        async for chunk in body:
            buffer += chunk
            # Events end with a blank line; a partial one waits for the next read.
            *raw_events, buffer = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
            events: list[Event] = []
            for raw in raw_events:
                # Its data lines, joined (comments, event names and ids are not data).
                data = b"\n".join(
                    line[5:].removeprefix(b" ")
                    for line in raw.split(b"\n")
                    if line.startswith(b"data:")
                )
                if not data:
                    continue
                if data == end:
                    if events:
                        yield events
                    return
                event = json.loads(data)
                if not isinstance(event, dict):
                    continue
                error = failure(event)
                if error is not None:
                    if events:
                        yield events
                    raise error
                events.append(event)
            if events:
                yield events
    except _TIMEOUTS as exc:
        raise timed_out() from exc
    except _TRANSPORT as exc:
        raise disconnected() from exc
