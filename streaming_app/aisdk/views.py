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

import asyncio
import json
import logging
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from .. import conf
from ..clients import request_viewer_key
from ..drive.flush import FlushPolicy
from ..drive.run import Source
from ..errors import GENERIC
from ..fanout.hub import Hub, Viewer, hub
from ..http.sse import leave_soon
from ..http.views import (
    ENDED_WITHOUT_MESSAGE,
    STREAM_ERRORS,
    Drive,
    end_with_outcome,
    error_for,
    open_drive,
    request_user,
)
from ..models import Status, is_finished
from ..parts import FINISH, REASONING, TEXT, TOOL_CALL, TOOL_RESULT, Entry
from ..streams import StreamId, parse_stream_id

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
            message = error or ENDED_WITHOUT_MESSAGE.get(status, GENERIC)
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


def _streaming_response(content: Any, stream_id: Any) -> StreamingHttpResponse:
    response = StreamingHttpResponse(content, content_type=CONTENT_TYPE)
    for name, value in HEADERS.items():
        response[name] = value
    response["X-Stream-Id"] = str(stream_id)
    return response


# Driving ---------------------------------------------------------------------------------


async def aui_message_stream_response(
    request: HttpRequest,
    stream_id: StreamId,
    source: Source,
    *,
    message_id: str | None = None,
    policy: FlushPolicy | None = None,
) -> HttpResponseBase:
    """Drive a stream, answering with its UI message stream: each piece the moment it
    is generated, before it commits.

    The stream is claimed and run as :func:`~streaming_app.http.views.astream_response`
    does, with the same answers before it starts (JSON errors: 405 for anything but
    POST, 404, 403, 409, 503 and 429 with ``Retry-After``); unlike it, the response
    starts at once (with ``start``), and how the stream ended is always its last
    chunk; once it runs, generation goes on if the browser hangs up
    (see ``CANCEL_ON_DISCONNECT``). ``source`` yields ``str`` pieces or the parts of
    :mod:`streaming_app.parts`. ``message_id`` names the assistant message (by
    default the stream's id, which :func:`aresume_response` uses too). The stream ends
    with ``finish``, or with the ``error`` chunk of the stream's public error message
    once it has committed, or ``abort`` if it was cancelled. Needs an ASGI server: under
    WSGI it raises RuntimeError.
    """
    drive = await open_drive(request, stream_id, source, policy)
    if not isinstance(drive, Drive):
        return drive  # refused
    run, feed, stream = drive.run, drive.feed, drive.stream
    encoder = UIMessageEncoder(message_id or str(stream.pk))
    feed.push(encoder.start())
    offset = 0

    def tap(text: str) -> None:
        nonlocal offset
        feed.push(encoder.text(offset, text, run.parts))
        offset += len(text)

    run.tap = tap
    drive.start(end_with_outcome(run, feed, lambda s, e: encoder.status(s, e, run.parts)))
    return _streaming_response(feed, stream.pk)


# Resuming --------------------------------------------------------------------------------


class _Deltas:
    """The hub's frames for one resuming viewer: the deltas themselves, encoded only
    when they are written. (The hub drops the frames of a viewer that stops reading
    and sends them again from where it was; encoding at write time keeps the
    encoder's state what the browser has received.)"""

    parts = True

    def __init__(self) -> None:
        #: The stream's part map, as far as it is known.
        self.known: Sequence[Entry] = ()

    def text(self, offset: int, text: str, parts: Sequence[Entry], since: int | None = None) -> str:
        if len(parts) > len(self.known):
            self.known = parts  # append-only: the longest is the newest
        return f"t{offset}\n{text}"

    def status(self, status: str, error: str | None, at: int) -> str:
        return "s" + json.dumps([status, error])


#: The public message of a viewer the hub closed before the end (close codes of hub.py).
CLOSED = {
    4403: "you may no longer read this reply",
    4404: "the reply was deleted",
    4429: "too many open viewers",
    4503: "the database is unavailable; try again shortly",
}


async def aresume_response(
    request: HttpRequest, stream_id: StreamId | None, *, message_id: str | None = None
) -> HttpResponseBase:
    """useChat's ``GET <api>/<chatId>/stream`` (``resume: true``): the live reply's UI
    message stream, replayed from the database from its start, then followed through
    the hub to its end (wherever it is driven).

    204 when there is no live reply: ``stream_id`` is None, or the stream has ended.
    Otherwise the request's user must be allowed to ``read`` the stream (403, 404 as
    JSON, like every reader) and be within ``MAX_VIEWERS_PER_USER`` and
    ``MAX_VIEWERS_PER_ADDRESS`` (429). The chunks are those of the live drive (with the
    same ``message_id``, by default the stream's id), each part's deltas joined up to
    where the replay catches up. Holds no thread and no database connection while it
    follows the stream.
    """
    if stream_id is None:
        return HttpResponse(status=204)
    user = await request_user(request)
    deltas = _Deltas()
    key = request_viewer_key(request, user)
    viewer = Viewer(user, key.key, deltas, limit=key.limit, also=key.also)
    followed = hub()
    try:
        body = await followed.watch(viewer, parse_stream_id(stream_id), 0)
    except STREAM_ERRORS as exc:
        return error_for(exc)
    if body.is_finished:
        followed.leave(viewer)
        return HttpResponse(status=204)
    encoder = UIMessageEncoder(message_id or str(body.id))
    chunks = _resumed(followed, viewer, deltas, encoder)
    # A response never iterated (the client gone at once) lets the viewer go when the
    # generator is collected.
    weakref.finalize(chunks, leave_soon, asyncio.get_running_loop(), followed, viewer)
    return _streaming_response(chunks, body.id)


async def _resumed(
    followed: Hub, viewer: Viewer, deltas: _Deltas, encoder: UIMessageEncoder
) -> AsyncIterator[str]:
    try:
        yield encoder.start()
        async for frames in viewer.batches(keepalive=float(conf.get("SSE_KEEPALIVE"))):
            if not frames:
                yield KEEPALIVE
                continue
            written = []
            for frame in frames:
                if frame[0] == "t":
                    head, _, text = frame[1:].partition("\n")
                    written.append(encoder.text(int(head), text, deltas.known))
                else:
                    status, error = json.loads(frame[1:])
                    written.append(encoder.status(status, error, deltas.known))
            if any(written):
                yield "".join(written)
        if not encoder.ended:
            # Closed by the hub before the end: refused, deleted, or the database away.
            message = CLOSED.get(viewer.close_code or 0, GENERIC)
            yield encoder.status(Status.ERROR, message)
    finally:
        followed.leave(viewer)
