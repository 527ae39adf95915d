"""Server-Sent Events: ``GET <prefix>/<id>/events/``, the websocket's messages for
clients without websockets. A viewer of the process's hub, like a websocket."""

from __future__ import annotations

from collections.abc import AsyncIterator

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from .. import conf
from ..exceptions import InvalidOffset
from ..fanout.events import Event, Status
from ..fanout.viewer import Viewer
from ..protocol import JsonMessages, close_code, to_json
from ..streams import offset_parameter, parse_flag
from .following import afollow
from .jsonview import JsonView


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


class EventFrames(JsonMessages):
    """The protocol's messages as Server-Sent Events, each with its ``id``: the offset
    the viewer has after it."""

    def encode(self, event: Event) -> str:
        if isinstance(event, Status):
            return sse_event("status", event.at, super().encode(event))
        return sse_event("text", event.end, super().encode(event))


EVENTS = EventFrames()
EVENTS_WITH_PARTS = EventFrames(parts=True)


class StreamEventsView(JsonView):
    """``GET /api/streams/<id>/events/``: the websocket's messages as Server-Sent Events.

    Resumable exactly with ``Last-Event-ID`` (or ``?offset=N``); a keep-alive comment
    every ``SSE_KEEPALIVE`` seconds; ends after a terminal status. Holds no thread and
    no database connection while it follows the stream.
    """

    async def get(self, request: HttpRequest, stream_id: str) -> HttpResponseBase:
        resuming = "Last-Event-ID" in request.headers

        def offset() -> str:
            return request.headers.get("Last-Event-ID") or offset_parameter(
                request.GET.getlist("offset")
            )

        events = EVENTS_WITH_PARTS if parse_flag(request.GET.get("parts")) else EVENTS
        # An EventSource comes back with Last-Event-ID: its window needs no acks.
        following = await afollow(request, stream_id, events, offset, resumes=True)
        if isinstance(following, HttpResponseBase):
            return following  # refused
        if following.body.is_finished and resuming and not following.body.text:
            # An EventSource reconnecting after the end: 204 tells it to stop.
            following.leave()
            return HttpResponse(status=204)
        response = following.response(
            self.events(following.viewer, events), "text/event-stream; charset=utf-8"
        )
        response["Cache-Control"] = "no-cache, no-transform"
        response["X-Accel-Buffering"] = "no"
        return response

    @staticmethod
    async def events(viewer: Viewer, events: EventFrames) -> AsyncIterator[str]:
        prefix = "retry: 1000\n\n"
        keepalive = float(conf.get("SSE_KEEPALIVE"))
        async for batch in viewer.batches(keepalive=keepalive):
            yield prefix + ("".join(map(events.frame, batch)) if batch else ": keep-alive\n\n")
            prefix = ""
        if isinstance(viewer.refused, InvalidOffset):
            # The stream ended short of the viewer's offset (docs/protocol.md#offsets).
            yield prefix + close_event(close_code(viewer.refused), str(viewer.refused))
