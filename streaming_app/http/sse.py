"""Server-Sent Events: ``GET <prefix>/<id>/events/``, the websocket's messages for
clients without websockets. A viewer of the process's hub, like a websocket."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Sequence

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from .. import conf
from ..clients import request_viewer_key
from ..fanout.hub import Hub, Viewer, hub, status_message, text_message, to_json
from ..parts import Entry
from ..streams import offset_parameter, parse_flag, parse_stream_id
from .views import STREAM_ERRORS, JsonView, error_for, request_user


def sse_event(kind: str, event_id: int | None, data: str) -> str:
    """One event; ``id`` is the offset after it, so that ``Last-Event-ID`` resumes
    (None: no id, the last one stands)."""
    label = "" if event_id is None else f"id: {event_id}\n"
    return f"event: {kind}\n{label}data: {data}\n\n"


def close_event(code: int, reason: str) -> str:
    """What a websocket viewer would learn from its close frame, as the last event of
    a response that ends short of a terminal status: the same code and reason
    (docs/protocol.md), and no ``id``."""
    return sse_event("close", None, to_json({"type": "close", "code": code, "reason": reason}))


class EventFrames:
    """The protocol's messages as Server-Sent Events."""

    def __init__(self, *, parts: bool = False) -> None:
        self.parts = parts

    def text(self, offset: int, text: str, parts: Sequence[Entry], since: int | None = None) -> str:
        return sse_event(
            "text",
            offset + len(text),
            to_json(text_message(offset, text, parts if self.parts else (), since)),
        )

    def status(self, status: str, error: str | None, at: int) -> str:
        return sse_event("status", at, to_json(status_message(status, error)))


EVENTS = EventFrames()
EVENTS_WITH_PARTS = EventFrames(parts=True)


def leave_soon(loop: asyncio.AbstractEventLoop, followed: Hub, viewer: Viewer) -> None:
    """Let ``viewer`` go from ``followed`` on ``loop``, from any thread (a response
    collected without having been iterated)."""
    with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to leave
        loop.call_soon_threadsafe(followed.leave, viewer)


class StreamEventsView(JsonView):
    """``GET /api/streams/<id>/events/``: the websocket's messages as Server-Sent Events.

    Resumable exactly with ``Last-Event-ID`` (or ``?offset=N``); a keep-alive comment
    every ``SSE_KEEPALIVE`` seconds; ends after a terminal status. Holds no thread and
    no database connection while it follows the stream.
    """

    async def get(self, request: HttpRequest, stream_id: str) -> HttpResponseBase:
        user = await request_user(request)
        resuming = "Last-Event-ID" in request.headers
        key = request_viewer_key(request, user)
        viewer = Viewer(
            user,
            key.key,
            EVENTS_WITH_PARTS if parse_flag(request.GET.get("parts")) else EVENTS,
            limit=key.limit,
            also=key.also,
            resumes=True,  # an EventSource comes back with Last-Event-ID
        )
        followed = hub()
        try:
            offset = request.headers.get("Last-Event-ID") or offset_parameter(
                request.GET.getlist("offset")
            )
            body = await followed.watch(viewer, parse_stream_id(stream_id), offset)
        except STREAM_ERRORS as exc:
            return error_for(exc)
        if body.is_finished and resuming and not body.text:
            # An EventSource reconnecting after the end: 204 tells it to stop.
            followed.leave(viewer)
            return HttpResponse(status=204)
        events = self.events(followed, viewer)
        # Should the response never be iterated (the client gone before its first byte),
        # its generator's `finally` would not run: the viewer is let go when it is.
        weakref.finalize(events, leave_soon, asyncio.get_running_loop(), followed, viewer)
        response = StreamingHttpResponse(events, content_type="text/event-stream; charset=utf-8")
        response["Cache-Control"] = "no-cache, no-transform"
        response["X-Accel-Buffering"] = "no"
        return response

    @staticmethod
    async def events(followed: Hub, viewer: Viewer) -> AsyncIterator[str]:
        prefix = "retry: 1000\n\n"
        try:
            async for frames in viewer.batches(keepalive=float(conf.get("SSE_KEEPALIVE"))):
                yield prefix + ("".join(frames) if frames else ": keep-alive\n\n")
                prefix = ""
            if viewer.close_reason is not None and viewer.close_code is not None:
                yield prefix + close_event(viewer.close_code, viewer.close_reason)
        finally:
            followed.leave(viewer)
