"""A model API's stream read as parts: the reader of its events, what one read merges.

An adapter (:mod:`.openai`) gives :func:`read_parts` the events of a response, a list
per read of the network (:func:`.sse.event_reads`), and a :class:`Reader` of its API's
events; it yields the reasoning, text, tool calls and finish those events say, as
:mod:`streaming_app.parts` objects. :func:`tokens` gives an API's usage under the
AI SDK's names.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from ..parts import Part, Reasoning, ToolCall
from .sse import Event


class Reader:
    """What one API's events say, as parts: :meth:`read` for each event, :meth:`end`
    when the body has ended (cleanly)."""

    def read(self, event: Event) -> list[str | Part]:
        raise NotImplementedError

    def end(self) -> list[str | Part]:
        return []


def _merged(parts: list[str | Part]) -> list[str | Part]:
    """``parts`` with each run of deltas of the same kind (text, reasoning, one tool
    call's arguments) made one, in order."""
    out: list[str | Part] = []
    for part in parts:
        last = out[-1] if out else None
        if isinstance(part, str) and isinstance(last, str):
            out[-1] = last + part
        elif isinstance(part, Reasoning) and isinstance(last, Reasoning):
            out[-1] = Reasoning(last.text + part.text)
        elif isinstance(part, ToolCall) and isinstance(last, ToolCall) and part.id == last.id:
            out[-1] = ToolCall(last.id, last.name or part.name, last.arguments + part.arguments)
        else:
            out.append(part)
    return out


async def read_parts(
    reads: AsyncGenerator[list[Event], None], reader: Reader
) -> AsyncIterator[str | Part]:
    """The parts ``reader`` reads in ``reads`` (a response's events, a list per read of
    the network): those of one read merged, then those of the body's end. Closing the
    iterator closes ``reads``."""
    async with aclosing(reads):
        async for events in reads:
            parts: list[str | Part] = []
            for event in events:
                parts += reader.read(event)
            for part in _merged(parts):
                yield part
    for part in reader.end():
        yield part


def tokens(usage: Any, **names: str) -> dict[str, Any]:
    """``usage``'s counts under the AI SDK's names (``names``: ours → theirs), those it
    has, and ``total_tokens`` when it has no total but has both ``input_tokens`` and
    ``output_tokens``."""
    if not isinstance(usage, dict):
        return {}
    mapped = {
        ours: usage[theirs] for ours, theirs in names.items() if usage.get(theirs) is not None
    }
    inputs, outputs = mapped.get("input_tokens"), mapped.get("output_tokens")
    if "total_tokens" not in mapped and isinstance(inputs, int) and isinstance(outputs, int):
        mapped["total_tokens"] = inputs + outputs
    return mapped
