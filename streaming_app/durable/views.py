"""The Durable Streams read path over the app's streams (PROTOCOL.md §5.5–§5.8, §10,
§12.7; docs/protocol.md#durable-streams).

Every stream of the app is a Durable Streams stream of content type
``text/plain; charset=utf-8`` at ``<mount>/<id>``: ``HEAD`` for its metadata, ``GET``
for a catch-up read from an offset, ``live=long-poll`` to wait for what comes next,
``live=sse`` to follow it. Reads go through ``PERMISSION_POLICY`` like every reader's;
live reads are viewers of the process's hub, counted against the same limits as a
websocket's. Every terminal status reads as *closed*; which one it was is said by the
``Streaming-Status`` header (and ``Streaming-Error``, percent-encoded), or, over SSE,
by the last control event's ``streamingStatus`` and ``streamingError``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from .. import conf
from ..exceptions import InvalidOffset
from ..fanout.events import Event, SharedEncoding, Status, Text
from ..fanout.viewer import Viewer
from ..http.following import Following, afollow
from ..http.responses import STREAM_ERRORS, act_on, error_for, error_response
from ..models import Stream, is_finished
from ..permissions import has_permission
from ..streams import StreamBody, body_of
from .offsets import NOW, Start, cursor, parse_start, token

CONTENT_TYPE = "text/plain; charset=utf-8"
#: What a cacheable read may be kept for (§10.1).
CACHEABLE = "max-age=60, stale-while-revalidate=300"
#: The headers a cross-origin script may send, and read back (the reference server's).
ALLOW_HEADERS = (
    "Content-Type, Authorization, Stream-Seq, Stream-TTL, Stream-Expires-At, Stream-Closed, "
    "Producer-Id, Producer-Epoch, Producer-Seq, If-None-Match"
)
EXPOSE_HEADERS = (
    "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, Streaming-Status, "
    "Streaming-Error, Producer-Epoch, Producer-Seq, Producer-Expected-Seq, "
    "Producer-Received-Seq, ETag, Content-Type, Location"
)
READ_METHODS = ["GET", "HEAD", "OPTIONS"]


class Nothing(SharedEncoding):
    """A live reader's encoding in the hub: its events are written as they are read
    (a long-poll's one body, an SSE response's events), so what waits for it is
    counted as text."""

    def encode(self, event: Event) -> str:
        return event.text if isinstance(event, Text) else ""


EVENTS = Nothing()


def with_protocol_headers(response: HttpResponseBase) -> HttpResponseBase:
    """The headers every answer carries: §12.7's, and CORS for scripts of any origin
    (which send no cookies with ``*``: a cross-origin read is an anonymous one)."""
    response["X-Content-Type-Options"] = "nosniff"
    response["Cross-Origin-Resource-Policy"] = "cross-origin"
    response["Access-Control-Allow-Origin"] = "*"
    response["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    return response


def status_headers(response: HttpResponseBase, status: str, error: str | None) -> None:
    """The app's status of the stream, and its public error message, percent-encoded
    (a header is Latin-1): the extension that says how a closed stream ended."""
    response["Streaming-Status"] = status
    if error:
        response["Streaming-Error"] = quote(error, safe=" ")


def publicly_readable(stream: Stream) -> bool:
    """Whether anyone may read ``stream`` (a shared cache may then keep it)."""
    return has_permission(AnonymousUser(), stream, "read")


def read(stream: Stream, start: Start) -> tuple[StreamBody, bool]:
    """The committed body from ``start`` (the tail for ``now``), and whether a shared
    cache may keep it."""
    offset = stream.length if start.offset is None else start.offset
    return body_of(stream, offset), publicly_readable(stream)


def position_headers(
    response: HttpResponseBase, body: StreamBody, end: int, *, at_tail: bool
) -> None:
    """Where the reader is after this response (``end``), and, once it has all of a
    finished stream, that it is closed."""
    response["Stream-Next-Offset"] = token(end)
    if at_tail:
        response["Stream-Up-To-Date"] = "true"
        if body.is_finished and end >= body.length:
            response["Stream-Closed"] = "true"
    status_headers(response, body.status, body.error)


def data_response(
    request: HttpRequest, body: StreamBody, start: Start, text: str, public: bool
) -> HttpResponseBase:
    """A 200 with ``text`` from ``body.offset`` (or a 304, for a client that has it)."""
    end = body.offset + len(text)
    closed = body.is_finished and end >= body.length
    etag = f'"{body.id}:{start.given}:{token(end)}{":c" if closed else ""}"'
    if start.at_tail:
        response: HttpResponseBase = HttpResponse(b"", content_type=CONTENT_TYPE)
        response["Cache-Control"] = "no-store"  # the tail moves; no ETag (§8)
    else:
        if request.headers.get("If-None-Match") == etag:
            response = HttpResponse(status=304)
        else:
            response = HttpResponse(text.encode(), content_type=CONTENT_TYPE)
        response["ETag"] = etag
        # An empty answer at the tail of a live stream is stale with its next token.
        response["Cache-Control"] = (
            f"{'public' if public else 'private'}, {CACHEABLE}" if text or closed else "no-store"
        )
    position_headers(response, body, end, at_tail=end >= body.length)
    return response


def refused(exc: BaseException | None) -> HttpResponseBase:
    """The answer to a live read whose viewer was refused or closed before it had
    anything (the stream deleted, a read failed)."""
    if isinstance(exc, STREAM_ERRORS):
        return error_for(exc)
    return error_response(503, "the stream could not be followed; try again")


@method_decorator(csrf_exempt, name="dispatch")
class DurableStreamView(View):
    """``<mount>/<id>``: one of the app's streams, read as a Durable Stream."""

    http_method_names = ["get", "head", "options", "put", "post", "delete"]

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        handler: Any = super().dispatch

        async def answer() -> HttpResponseBase:
            return with_protocol_headers(await handler(request, *args, **kwargs))

        return answer()

    def options(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        # A CORS preflight. (Django leaves ``options`` out of its check that a view's
        # handlers are all async, and expects it to answer as the view does.)
        response = HttpResponse(status=204)
        response["Allow"] = ", ".join(READ_METHODS)
        response["Access-Control-Allow-Methods"] = ", ".join(READ_METHODS)
        response["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response["Access-Control-Max-Age"] = "86400"

        async def answer() -> HttpResponse:
            return response

        return answer()

    async def put(self, request: HttpRequest, stream_id: str) -> HttpResponseBase:
        return self.read_only(request)

    post = delete = put

    @staticmethod
    def read_only(request: HttpRequest) -> HttpResponseBase:
        # §5.2: 405 where appends (and creation, deletion) are not supported.
        response = error_response(
            405, f"{request.method} is not allowed: the app's streams are written by the app"
        )
        response["Allow"] = ", ".join(READ_METHODS)
        return response

    async def head(self, request: HttpRequest, stream_id: str) -> HttpResponseBase:
        try:
            body, _ = await act_on(
                request, stream_id, "read", lambda stream: read(stream, Start(None, NOW))
            )
        except STREAM_ERRORS as exc:
            return error_for(exc)
        response = HttpResponse(content_type=CONTENT_TYPE)
        response["Cache-Control"] = "no-store"  # §5.5
        position_headers(response, body, body.length, at_tail=False)
        if body.is_finished:
            response["Stream-Closed"] = "true"
        return response

    async def get(self, request: HttpRequest, stream_id: str) -> HttpResponseBase:
        live = request.GET.get("live")
        try:
            if live not in (None, "long-poll", "sse"):
                raise InvalidOffset(f"live must be long-poll or sse, not {live[:40]!r}")
            if live and "offset" not in request.GET:
                raise InvalidOffset(f"live={live} needs an offset")
            start = parse_start(request.GET.getlist("offset"))
            body, public = await act_on(
                request, stream_id, "read", lambda stream: read(stream, start)
            )
        except STREAM_ERRORS as exc:
            return error_for(exc)
        if live is None or (live == "long-poll" and (body.text or body.is_finished)):
            # What is there, at once: a catch-up, a long-poll that has something (or
            # the end) to give.
            response = data_response(request, body, start, body.text, public)
            if live is not None:
                if response.get("Stream-Closed") != "true":
                    response["Stream-Cursor"] = cursor(request.GET.get("cursor"))
                if not body.text:
                    response.status_code = 204
            return response
        following = await afollow(request, stream_id, EVENTS, body.offset, resumes=live == "sse")
        if isinstance(following, HttpResponseBase):
            return following  # refused: the viewer limits, the database away
        if live == "sse":
            return self.sse(request, following)
        return await self.long_poll(request, following, start, public)

    async def long_poll(
        self, request: HttpRequest, following: Following, start: Start, public: bool
    ) -> HttpResponseBase:
        """Wait up to ``LONG_POLL_TIMEOUT`` for text past the reader's offset, or the
        end; 204 with the tail if neither comes."""
        viewer, body = following.viewer, following.body
        text, status, error = "", body.status, body.error
        try:
            async with asyncio.timeout(float(conf.get("LONG_POLL_TIMEOUT"))):
                async for batch in viewer.batches():
                    for event in batch:
                        if isinstance(event, Text):
                            text += event.text[body.offset + len(text) - event.offset :]
                        elif isinstance(event, Status):
                            status, error = event.status, event.error
                    if text or is_finished(status):
                        break
        except TimeoutError:
            pass
        finally:
            following.leave()
        if viewer.refused is not None and not text:
            return refused(viewer.refused)
        now = StreamBody(
            body.id, status, text, body.offset, body.offset + len(text), error, body.parts
        )
        response = data_response(request, now, start, text, public)
        if not text:
            response.status_code = 204
            response["Cache-Control"] = "no-store"  # §10.1: a 204 is not for caching
            del response["ETag"]
        if response.get("Stream-Closed") != "true":
            response["Stream-Cursor"] = cursor(request.GET.get("cursor"))
        return response

    def sse(self, request: HttpRequest, following: Following) -> HttpResponseBase:
        response = following.response(
            sse_events(following.viewer, following.body, request.GET.get("cursor")),
            "text/event-stream",
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response


def sse_data(text: str) -> str:
    """One ``data`` event: each line after ``data: `` (a client strips one space after
    the colon, so a line that starts with one keeps it). SSE ends a line at CR, LF or
    CRLF alike: a CR reads back as a line feed (docs/protocol.md#durable-streams)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "event: data\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


def sse_control(fields: dict[str, Any]) -> str:
    return f"event: control\ndata: {json.dumps(fields, separators=(',', ':'))}\n\n"


async def sse_events(viewer: Viewer, body: StreamBody, echoed: str | None) -> AsyncIterator[str]:
    """The stream as ``data`` and ``control`` events from the viewer's offset, until
    it is closed, or for ``SSE_MAX_AGE`` seconds (§10.2: the client reconnects from its
    last ``streamNextOffset``, and a CDN can collapse the new requests)."""
    end, status, error = body.offset, body.status, body.error
    keepalive = float(conf.get("SSE_KEEPALIVE"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + float(conf.get("SSE_MAX_AGE"))
    batches = viewer.batches(keepalive=min(keepalive, float(conf.get("SSE_MAX_AGE"))))
    async for batch in batches:
        if not batch:
            if loop.time() >= deadline:
                return
            yield ": keep-alive\n\n"
            continue
        out = []
        for event in batch:
            if isinstance(event, Text):
                fresh = event.text[end - event.offset :]
                if fresh:
                    out.append(sse_data(fresh))
                    end += len(fresh)
            else:
                status, error = event.status, event.error
        control: dict[str, Any] = {"streamNextOffset": token(end)}
        if is_finished(status):
            control.update(streamClosed=True, upToDate=True, streamingStatus=status)
            if error:
                control["streamingError"] = error
        else:
            control.update(streamCursor=cursor(echoed), upToDate=True)
        yield "".join(out) + sse_control(control)
        if is_finished(status) or loop.time() >= deadline:
            return
