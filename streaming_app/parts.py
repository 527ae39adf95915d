"""Parts: reasoning, text, tool calls and a finish, in one persisted stream.

A stream's body stays one text, in code points, committed and fanned out as before.
A stream whose source yields only text (``str``) is a plain stream: nothing here
touches it. A source may also yield the part objects below; then the stream keeps a
*part map* (``Stream.parts``) beside its body: an append-only list of entries, each
saying that from body offset ``at`` on the text belongs to a new span of a part::

    [{"at": 0, "type": "reasoning"},
     {"at": 42, "type": "tool-call", "id": "call_1", "name": "get_weather"},
     {"at": 61, "type": "tool-result", "id": "call_1", "result": {"temp": 21}},
     {"at": 61, "type": "text"},
     {"at": 118, "type": "finish", "reason": "stop", "usage": {...}}]

A span runs from its entry's ``at`` to the next entry's (or the end of the body). A
``reasoning`` or ``text`` entry opens a new part; a ``tool-call`` entry opens the call
``id`` or goes on with it (its text is the call's arguments, JSON text as the model
streams it); ``tool-result`` and ``finish`` hold no text. The map is written in the
same transaction as the text it describes, so every committed body offset has its part:
a reader resumes every part exactly by resuming the body (docs/protocol.md).
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

Entry = dict[str, Any]

# What neither a database nor UTF-8 can hold: NUL (PostgreSQL text) and lone surrogates.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """``text`` with NUL and lone surrogates replaced by U+FFFD, keeping its length, so
    that every database (and UTF-8) can hold it and offsets agree everywhere. (Here,
    without Django, so that sources can import this module before settings.)"""
    if _UNSTORABLE.search(text) is None:  # nearly always: no copy
        return text
    return _UNSTORABLE.sub("\ufffd", text)


TEXT = "text"
REASONING = "reasoning"
TOOL_CALL = "tool-call"
TOOL_RESULT = "tool-result"
FINISH = "finish"

#: Entry types whose span holds text.
WITH_TEXT = (TEXT, REASONING, TOOL_CALL)


@dataclass(frozen=True)
class Text:
    """A delta of the answer's text (the same as yielding the ``str``)."""

    text: str


@dataclass(frozen=True)
class Reasoning:
    """A delta of the model's reasoning (or its summary)."""

    text: str


@dataclass(frozen=True)
class ToolCall:
    """A delta of a tool call's arguments (JSON text, as the model streams it). The
    first delta of a call names it; later ones may leave ``name`` empty."""

    id: str
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True)
class ToolResult:
    """The result of tool call ``id`` (any JSON value)."""

    id: str
    result: Any = None


@dataclass(frozen=True)
class Finish:
    """Why the model stopped (``stop``, ``length``, ``tool-calls``...) and the tokens it
    used (``{"input_tokens": .., "output_tokens": .., ...}``)."""

    reason: str = "stop"
    usage: dict[str, Any] = field(default_factory=dict)


Part = Text | Reasoning | ToolCall | ToolResult | Finish


def clean(value: Any) -> Any:
    """``value`` as JSON every database holds: NUL and lone surrogates replaced (as in
    the text), anything that is not JSON refused with a clear TypeError."""
    try:
        data = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"a part's value must be JSON: {exc}") from None

    def scrub(item: Any) -> Any:
        if isinstance(item, str):
            return storable(item)
        if isinstance(item, list):
            return [scrub(x) for x in item]
        if isinstance(item, dict):
            return {storable(k): scrub(v) for k, v in item.items()}
        return item

    return scrub(data)


class PartMap:
    """A writer's part map as pieces arrive: which entry each piece needs, if any.

    :meth:`add` takes a part (or a ``str``) and the body length before its text, and
    returns the text to append to the body ("" for a part without text). Entries are
    only ever appended; :attr:`entries` is the whole map.
    """

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        # The span now open: its type and (for a tool call) id; None after a result.
        self._open: tuple[str, str | None] | None = None
        self._names: dict[str, str] = {}
        # Calls with an entry that names them (a server may name a call after its
        # first delta: a new entry then names it).
        self._named: set[str] = set()

    def add(self, part: str | Part, at: int) -> str:
        if isinstance(part, str):
            part = Text(part)
        if isinstance(part, (Text, Reasoning)):
            kind = TEXT if isinstance(part, Text) else REASONING
            text = storable(str(part.text))
            if not text:
                return ""
            if kind == TEXT and not self.entries:
                return text  # a plain stream, so far
            if self._open != (kind, None):
                self._start({"at": at, "type": kind}, at)
                self._open = (kind, None)
            return text
        if isinstance(part, ToolCall):
            call_id = storable(str(part.id))
            if not call_id:
                raise ValueError("a tool call needs an id")
            name = self._names.get(call_id) or storable(str(part.name or ""))
            self._names[call_id] = name
            if self._open != (TOOL_CALL, call_id) or (name and call_id not in self._named):
                self._start({"at": at, "type": TOOL_CALL, "id": call_id, "name": name}, at)
                self._open = (TOOL_CALL, call_id)
                if name:
                    self._named.add(call_id)
            return storable(str(part.arguments or ""))
        if isinstance(part, ToolResult):
            call_id = storable(str(part.id))
            self._start(
                {"at": at, "type": TOOL_RESULT, "id": call_id, "result": clean(part.result)}, at
            )
        elif isinstance(part, Finish):
            self._start(
                {
                    "at": at,
                    "type": FINISH,
                    "reason": storable(str(part.reason)),
                    "usage": clean(part.usage or {}),
                },
                at,
            )
        else:
            raise TypeError(
                f"a stream's pieces must be str, not {type(part).__name__} "
                "(or parts from streaming_app.parts)"
            )
        self._open = None
        return ""

    def _start(self, entry: Entry, at: int) -> None:
        if not self.entries and at > 0:
            # The text so far was a plain stream's: it becomes the first text part.
            self.entries.append({"at": 0, "type": TEXT})
        self.entries.append(entry)


# Reading ---------------------------------------------------------------------------------


@dataclass
class Span:
    """Text of the body between ``start`` and ``end`` that belongs to ``entry``'s part."""

    index: int
    entry: Entry
    start: int
    end: int


def spans(entries: Sequence[Entry], start: int, end: int) -> Iterator[Span]:
    """The spans of ``entries`` that overlap body offsets [start, end), in order; for a
    plain stream (no entries), one text span."""
    if not entries:
        if end > start:
            yield Span(-1, {"at": 0, "type": TEXT}, start, end)
        return
    for index, entry in enumerate(entries):
        span_start = int(entry["at"])
        span_end = int(entries[index + 1]["at"]) if index + 1 < len(entries) else end
        lo, hi = max(span_start, start), min(span_end, end)
        if entry["type"] in WITH_TEXT and lo < hi:
            yield Span(index, entry, lo, hi)


def part_key(entries: Sequence[Entry], index: int) -> str:
    """The part an entry belongs to: a tool call's id, else the entry's own index."""
    entry = entries[index]
    if entry["type"] in (TOOL_CALL, TOOL_RESULT):
        return f"call:{entry['id']}"
    return f"{entry['type']}:{index}"


def assemble(text: str, entries: Sequence[Entry], offset: int = 0) -> list[dict[str, Any]]:
    """The parts of a body (``text`` from body ``offset``) as a list of dicts, in the
    order they started: ``{"type": "reasoning"|"text", "text": ...}``, ``{"type":
    "tool-call", "id", "name", "arguments", "result"?}``, ``{"type": "finish",
    "reason", "usage"}``. Text before ``offset`` is not there (a part that began
    earlier holds only its text from ``offset``)."""
    end = offset + len(text)
    parts: dict[str, dict[str, Any]] = {}
    if not entries:
        return [{"type": TEXT, "text": text}] if text else []
    for index, entry in enumerate(entries):
        key = part_key(entries, index)
        kind = entry["type"]
        if kind == TOOL_RESULT:
            call = parts.setdefault(
                key, {"type": TOOL_CALL, "id": entry["id"], "name": "", "arguments": ""}
            )
            call["result"] = entry.get("result")
        elif kind == FINISH:
            parts[f"finish:{index}"] = {
                "type": FINISH,
                "reason": entry.get("reason"),
                "usage": entry.get("usage") or {},
            }
        elif kind == TOOL_CALL:
            call = parts.setdefault(
                key, {"type": TOOL_CALL, "id": entry["id"], "name": "", "arguments": ""}
            )
            call["name"] = call["name"] or entry.get("name", "")
        else:
            parts.setdefault(key, {"type": kind, "text": ""})
    for span in spans(entries, offset, end):
        part = parts[part_key(entries, span.index)]
        field_name = "arguments" if span.entry["type"] == TOOL_CALL else "text"
        part[field_name] += text[span.start - offset : span.end - offset]
    return list(parts.values())


def around(entries: Sequence[Entry], start: int, end: int) -> tuple[int, list[Entry]]:
    """What a reader of body offsets [start, end] needs of the map, as (index of the
    first, entries): from the last entry before ``start`` (the part ``start`` is in)
    to the last at or before ``end`` (a result or finish right at the end included).
    Readers merge them by index: sending one twice is harmless."""
    if not entries:
        return 0, []
    ats = [int(entry["at"]) for entry in entries]
    first = max(bisect_left(ats, start) - 1, 0)
    return first, list(entries[first : bisect_right(ats, end)])


def reach(entries: Sequence[Entry], end: int) -> int:
    """How many entries start at or before body offset ``end``."""
    return bisect_right([int(entry["at"]) for entry in entries], end)


def merge(known: list[Entry], first: int, entries: Iterable[Entry]) -> bool:
    """Put ``entries`` (the first being entry number ``first``) into ``known``; False
    if there is a gap (entries before ``first`` are missing)."""
    if first > len(known):
        return False
    for index, entry in enumerate(entries, start=first):
        if index >= len(known):
            known.append(entry)
    return True
