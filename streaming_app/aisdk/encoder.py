"""The AI SDK's UI message stream: a stream for ``useChat`` (``ai`` v5 and later).

The AI SDK's ``useChat`` (``@ai-sdk/react``, with ``DefaultChatTransport``) reads a
reply as Server-Sent Events, one JSON *chunk* per event (``data: {...}``), ending with
``data: [DONE]``, and the header ``x-vercel-ai-ui-message-stream: v1``. A stream's
body and part map (:mod:`streaming_app.parts`) become those chunks:

- ``start`` (``messageId``), then ``start-step`` / ``finish-step`` around each step of
  the model (a step ends at a ``finish`` entry, or when the model goes on after a
  tool's result);
- a ``text`` or ``reasoning`` part as ``text-start`` / ``text-delta`` / ``text-end``
  (``reasoning-…``), its ``id`` the index of its map entry (``text-3``), so that a
  replay names every part as the live reply did; a plain stream is one text part,
  ``text-0``;
- a tool call as ``tool-input-start`` (``toolCallId``, ``toolName``),
  ``tool-input-delta`` (``inputTextDelta``), and ``tool-input-available`` (``input``,
  its arguments parsed) once its arguments end, or ``tool-input-error`` if they are
  not JSON; its result as ``tool-output-available`` (``output``);
- the end: ``finish`` (``finishReason`` as the AI SDK names them, and
  ``messageMetadata: {"usage": ...}`` when the model reported its usage), ``error``
  (``errorText``: the stream's public error message) for ``error`` and ``timeout``, or
  ``abort`` for ``cancelled``.

Two responses speak it: :func:`aui_message_stream_response` drives a stream, sending
each piece the moment it is generated (before it commits), and
:func:`aresume_response` answers useChat's ``GET <api>/<chatId>/stream`` (``resume:
true``): the reply replayed from the database from its start, then followed to its end
through the hub, from any process.

Checked against the ``uiMessageChunkSchema`` of ``ai`` 5.0.277, 6.0.326 and 7.0.173:
every chunk and field sent here is in all three, and ``finishReason`` keeps to the
values all three accept. A resume replays the reply from its start, which
``DefaultChatTransport`` expects since ``ai`` 6 (``resumeStreamIsReplay``: the replay
replaces the message); with ``ai`` 5 a page must resume only when it does not hold the
reply yet (as after a reload), or the replay is appended to it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ended_message
from ..models import Status, is_finished
from ..parts import FINISH, REASONING, TEXT, TOOL_CALL, TOOL_RESULT, Entry

logger = logging.getLogger(__name__)

Chunk = dict[str, Any]

#: The headers of a UI message stream (the AI SDK's ``UI_MESSAGE_STREAM_HEADERS``).
HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
    "x-vercel-ai-ui-message-stream": "v1",
}
CONTENT_TYPE = "text/event-stream; charset=utf-8"
DONE = "data: [DONE]\n\n"
KEEPALIVE = ": keep-alive\n\n"

#: The finish reasons every AI SDK since v5 accepts; any other is ``other``.
FINISH_REASONS = frozenset({"stop", "length", "content-filter", "tool-calls", "error", "other"})


def sse_chunk(chunk: Chunk) -> str:
    """One chunk as a Server-Sent Event (JSON escapes every line break, so one line)."""
    return "data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")) + "\n\n"


@dataclass
class _Call:
    """A tool call as the encoder has sent it."""

    name: str
    started: bool = False
    # Arguments that arrived before the call had a name (held back: the AI SDK names a
    # call in its first chunk), and all of them, to parse at the end.
    held: str = ""
    arguments: str = ""
    available: bool = False


class UIMessageEncoder:
    """A stream's deltas (body offset, text, part map) and its end, as UI message chunks.

    Feed it the body in order, each delta with the part map as far as it is known
    (:meth:`text`), then the terminal status (:meth:`status`); each returns the
    Server-Sent Events to write ("" when there are none). The chunks depend only on the
    body, the map and the status, never on how the body was cut into deltas: a reply
    replayed from the database in one delta gives the chunks of the live reply, with
    the deltas of each part joined.

    Text that overlaps what was already encoded is skipped; a gap raises ValueError.
    After a terminal status the encoder is :attr:`ended` and returns "".
    """

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        #: The body offset the chunks so far reach.
        self.offset = 0
        self.ended = False
        self._started = False
        self._next = 0  # the next map entry to take
        self._open: tuple[str, str] | None = None  # (kind, part id or call id)
        self._calls: dict[str, _Call] = {}
        self._step = False
        self._step_had_results = False
        self._finish: Entry | None = None

    # The public interface ----------------------------------------------------------

    def start(self) -> str:
        """The ``start`` chunk, if it was not sent yet (every other method sends it
        first, too)."""
        return self._encode(self._start_chunks())

    def text(self, offset: int, text: str, parts: Sequence[Entry] = ()) -> str:
        """Body text from ``offset``; ``parts``: the stream's part map as far as it is
        known (entries past the text wait for it; an empty ``text`` sends what the map
        says at the offset reached, such as a tool's result)."""
        return self._encode(self._text_chunks(offset, text, parts))

    def status(self, status: str, error: str | None, parts: Sequence[Entry] = ()) -> str:
        """The stream's status: the chunks that end the message once it is terminal
        ("" for ``pending`` and ``streaming``), then ``[DONE]``. ``error`` is the
        stream's public error message."""
        if self.ended or not is_finished(status):
            return ""
        chunks = self._text_chunks(self.offset, "", parts)
        self._close(chunks)
        if status == Status.DONE:
            if self._step:
                chunks.append({"type": "finish-step"})
            chunks.append(self._finish_chunk())
        elif status == Status.CANCELLED:
            chunks.append({"type": "abort", "reason": "cancelled"})
        else:
            message = error or ended_message(status)
            chunks.append({"type": "error", "errorText": message})
        self.ended = True
        return self._encode(chunks) + DONE

    # Chunks ------------------------------------------------------------------------

    def _encode(self, chunks: list[Chunk]) -> str:
        return "".join(sse_chunk(chunk) for chunk in chunks)

    def _start_chunks(self) -> list[Chunk]:
        if self._started:
            return []
        self._started = True
        return [{"type": "start", "messageId": self.message_id}]

    def _text_chunks(self, offset: int, text: str, parts: Sequence[Entry]) -> list[Chunk]:
        if self.ended:
            return []
        chunks = self._start_chunks()
        if offset > self.offset:
            raise ValueError(f"text from offset {offset}: the encoder reached {self.offset}")
        text = text[self.offset - offset :]
        start = self.offset
        end = start + len(text)
        at = start
        while True:
            # Each entry is taken where its text begins: before that text, after the
            # text before it (a result or finish right at the end is taken too).
            while self._next < len(parts) and int(parts[self._next]["at"]) <= at:
                self._enter(self._next, parts[self._next], chunks)
                self._next += 1
            if at >= end:
                break
            until = int(parts[self._next]["at"]) if self._next < len(parts) else end
            until = min(until, end)
            self._delta(text[at - start : until - start], chunks)
            at = until
        self.offset = end
        return chunks

    def _enter(self, index: int, entry: Entry, chunks: list[Chunk]) -> None:
        kind = entry.get("type")
        if kind in (TEXT, REASONING):
            part_id = f"{kind}-{index}"
            if self._open == (kind, part_id):
                return  # a plain stream's text, which became the first text part
            self._close(chunks)
            self._step_for(chunks)
            chunks.append({"type": f"{kind}-start", "id": part_id})
            self._open = (kind, part_id)
        elif kind == TOOL_CALL:
            call_id = str(entry.get("id", ""))
            name = str(entry.get("name") or "")
            call = self._calls.get(call_id)
            if self._open != (TOOL_CALL, call_id):
                self._close(chunks)
                self._step_for(chunks)
                if call is None:
                    call = self._calls[call_id] = _Call(name)
                call.available = False  # its arguments go on
                self._open = (TOOL_CALL, call_id)
            assert call is not None
            if name and not call.name:
                call.name = name  # named after its first delta
            if call.name and not call.started:
                self._start_call(call_id, call, chunks)
        elif kind == TOOL_RESULT:
            call_id = str(entry.get("id", ""))
            self._close(chunks)
            self._step_for(chunks)
            call = self._calls.setdefault(call_id, _Call(""))
            self._make_available(call_id, call, chunks)
            chunks.append(
                {
                    "type": "tool-output-available",
                    "toolCallId": call_id,
                    "output": entry.get("result"),
                }
            )
            self._step_had_results = True
        elif kind == FINISH:
            self._close(chunks)
            if self._step:
                chunks.append({"type": "finish-step"})
            self._step = False
            self._step_had_results = False
            self._finish = entry
        else:
            # An entry of a kind this encoder does not know: its text is not sent.
            self._close(chunks)
            self._open = ("", "")

    def _delta(self, text: str, chunks: list[Chunk]) -> None:
        if self._open is None:
            # A plain stream (or, defensively, text the map gives no part).
            part_id = f"{TEXT}-{max(self._next - 1, 0)}"
            self._step_for(chunks)
            chunks.append({"type": "text-start", "id": part_id})
            self._open = (TEXT, part_id)
        kind, key = self._open
        if kind in (TEXT, REASONING):
            chunks.append({"type": f"{kind}-delta", "id": key, "delta": text})
        elif kind == TOOL_CALL:
            call = self._calls[key]
            call.arguments += text
            if call.started:
                chunks.append(
                    {"type": "tool-input-delta", "toolCallId": key, "inputTextDelta": text}
                )
            else:
                call.held += text

    def _close(self, chunks: list[Chunk]) -> None:
        """End the part that is open: its text is complete."""
        if self._open is None:
            return
        kind, key = self._open
        self._open = None
        if kind in (TEXT, REASONING):
            chunks.append({"type": f"{kind}-end", "id": key})
        elif kind == TOOL_CALL:
            self._make_available(key, self._calls[key], chunks)

    def _step_for(self, chunks: list[Chunk]) -> None:
        """Open a step for what comes next: a new one after a tool's result (the model
        was called again with it)."""
        if self._step and self._step_had_results:
            chunks.append({"type": "finish-step"})
            self._step = False
        if not self._step:
            chunks.append({"type": "start-step"})
            self._step = True
            self._step_had_results = False

    def _start_call(self, call_id: str, call: _Call, chunks: list[Chunk]) -> None:
        call.started = True
        chunks.append({"type": "tool-input-start", "toolCallId": call_id, "toolName": call.name})
        if call.held:
            chunks.append(
                {"type": "tool-input-delta", "toolCallId": call_id, "inputTextDelta": call.held}
            )
            call.held = ""

    def _make_available(self, call_id: str, call: _Call, chunks: list[Chunk]) -> None:
        if call.available:
            return
        if call.arguments and not call.started:
            self._start_call(call_id, call, chunks)
        call.available = True
        try:
            arguments = json.loads(call.arguments) if call.arguments.strip() else {}
        except ValueError:
            chunks.append(
                {
                    "type": "tool-input-error",
                    "toolCallId": call_id,
                    "toolName": call.name,
                    "input": call.arguments,
                    "errorText": "the tool call's arguments are not valid JSON",
                }
            )
            return
        chunks.append(
            {
                "type": "tool-input-available",
                "toolCallId": call_id,
                "toolName": call.name,
                "input": arguments,
            }
        )

    def _finish_chunk(self) -> Chunk:
        entry = self._finish or {}
        reason = str(entry.get("reason") or "stop")
        chunk: Chunk = {
            "type": "finish",
            "finishReason": reason if reason in FINISH_REASONS else "other",
        }
        if entry.get("usage"):
            chunk["messageMetadata"] = {"usage": entry["usage"]}
        return chunk
