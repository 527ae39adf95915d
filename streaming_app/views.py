"""HTTP: the driving response, and a stream's body."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views import View

from . import conf
from .broadcast import group_name
from .exceptions import InvalidOffset, StreamNotPending
from .follow import Follower, Message
from .models import Stream
from .permissions import Action, load_stream
from .streams import (
    StreamId,
    aget_stream,
    body_of,
    cancel_stream,
    claim_stream,
    parse_stream_id,
)
from .writer import FlushPolicy, Source, StreamRun

logger = logging.getLogger(__name__)

T = TypeVar("T")


def error_response(code: int, message: str, **extra: Any) -> JsonResponse:
    """A JSON error: ``{"error": message, ...extra}`` with HTTP status ``code``."""
    return JsonResponse({"error": message, **extra}, status=code)


#: What reading, driving or cancelling a stream may raise, each answered by
#: :func:`error_for`; the last two are the database being away.
STREAM_ERRORS = (
    Stream.DoesNotExist,
    PermissionDenied,
    InvalidOffset,
    StreamNotPending,
    OperationalError,
    InterfaceError,
)


def error_for(exc: Exception) -> JsonResponse:
    """The HTTP answer to one of :data:`STREAM_ERRORS`."""
    if isinstance(exc, Stream.DoesNotExist):
        return error_response(404, "no such stream")
    if isinstance(exc, PermissionDenied):
        return error_response(403, str(exc))
    if isinstance(exc, StreamNotPending):
        return error_response(409, str(exc), status=exc.status)
    if isinstance(exc, OperationalError | InterfaceError):
        logger.warning("database unavailable: %s", exc)
        response = error_response(503, "the database is unavailable; try again shortly")
        response["Retry-After"] = "2"
        return response
    return error_response(400, str(exc))


async def request_user(request: HttpRequest) -> Any:
    """The request's user, or None where the project has no authentication."""
    if hasattr(request, "auser"):
        return await request.auser()
    return None


async def act_on(
    request: HttpRequest, stream_id: StreamId, action: Action, then: Callable[[Stream], T]
) -> T:
    """``then(stream)``, in a thread, if the request's user may do ``action`` to the
    stream; raises one of :data:`STREAM_ERRORS` otherwise."""
    user = await request_user(request)

    def act() -> T:
        return then(load_stream(user, stream_id, action))

    return await sync_to_async(act)()


class DriverFeed:
    """The driving browser's response body: each piece the moment it is produced.

    A run's tap pushes pieces in; the response reads them out, all that is waiting at
    once. If the browser goes away the run is told, and goes on without it (or stops,
    with ``CANCEL_ON_DISCONNECT``).
    """

    def __init__(self, run: StreamRun) -> None:
        self._run = run
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._max_backlog = int(conf.get("MAX_PENDING_CHARS"))
        self._backlog = 0
        self._ended = False
        self._eof = False
        self._hung_up = False

    def push(self, piece: str) -> None:
        if self._hung_up:
            return
        self._backlog += len(piece)
        if self._backlog > self._max_backlog:
            logger.warning(
                "the driver of stream %s stopped reading; its response is abandoned, "
                "generation goes on",
                self._run.stream_id,
            )
            self._hang_up()
            self._queue.put_nowait(None)
            return
        self._queue.put_nowait(piece)

    def end(self) -> None:
        self._ended = True
        self._queue.put_nowait(None)

    def __aiter__(self) -> DriverFeed:
        return self

    async def __anext__(self) -> str:
        if self._eof:
            raise StopAsyncIteration
        try:
            piece = await self._queue.get()
        except asyncio.CancelledError:
            self._hang_up()
            raise
        parts: list[str] = []
        while piece is not None:
            parts.append(piece)
            if self._queue.empty():
                break
            piece = self._queue.get_nowait()
        if piece is None:
            self._eof = True
            if self._hung_up:
                # Abandoned, not finished: fail the response rather than end it
                # cleanly, so the browser does not take a part for the whole.
                raise ConnectionAbortedError("the driving browser stopped reading")
            if not parts:
                raise StopAsyncIteration
        text = "".join(parts)
        self._backlog -= len(text)
        return text

    def close(self) -> None:
        """Called by Django when the response is over, from any thread."""
        # RuntimeError: the loop has closed, so nothing is running any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._hang_up)

    def _hang_up(self) -> None:
        if self._ended or self._hung_up:
            return
        self._hung_up = True
        self._run.detach_tap()
        if conf.get("CANCEL_ON_DISCONNECT"):
            self._run.cancel()


async def astream_response(
    request: HttpRequest,
    stream_id: StreamId,
    generate: Source,
    *,
    content_type: str = "text/plain; charset=utf-8",
    policy: FlushPolicy | None = None,
) -> HttpResponseBase:
    """Drive a stream: return the response that streams its text as it is generated.

    ``generate`` is an async iterable of text pieces (an async generator, an ``openai``
    stream mapped to its deltas), or an async callable that receives ``append`` and
    awaits ``append(text)`` for each piece. The stream is claimed first: a second
    driver gets 409, an unknown stream 404, a user the permission policy refuses 403.

    Generation runs in a task of its own: it goes on to the end if the browser hangs
    up (see ``CANCEL_ON_DISCONNECT``), and the database never holds the response up.
    Needs an ASGI server (daphne, uvicorn).
    """

    def claim(stream: Stream) -> Stream:
        claim_stream(stream.pk)
        return stream

    try:
        stream = await act_on(request, stream_id, "drive", claim)
    except STREAM_ERRORS as exc:
        return error_for(exc)

    run = StreamRun(stream.pk, generate, policy=policy)
    feed = DriverFeed(run)
    run.tap = feed.push
    run.start(on_end=feed.end)
    response = StreamingHttpResponse(feed, content_type=content_type)
    response["Cache-Control"] = "no-cache, no-transform"
    # nginx and other proxies must not hold the tokens back.
    response["X-Accel-Buffering"] = "no"
    response["X-Stream-Id"] = str(stream.pk)
    return response


def stream_response(
    request: HttpRequest,
    stream_id: StreamId,
    generate: Source,
    **kwargs: Any,
) -> HttpResponseBase:
    """:func:`astream_response` for a synchronous view, served under ASGI."""
    if not isinstance(request, ASGIRequest):
        raise RuntimeError(
            "streaming_app drives streams under ASGI only (daphne, uvicorn): under WSGI "
            "the response would be buffered whole and generation would not outlive it"
        )
    return async_to_sync(astream_response)(request, stream_id, generate, **kwargs)


class JsonView(View):
    """A view whose every answer, errors included, is JSON."""

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        response = error_response(405, f"{request.method} is not allowed here")
        response["Allow"] = ", ".join(m.upper() for m in self.http_method_names if hasattr(self, m))
        if self.view_is_async:

            async def answer() -> HttpResponse:
                return response

            return answer()
        return response


class StreamBodyView(JsonView):
    """``GET /api/streams/<id>/[?offset=N]``: the committed body from an offset."""

    async def get(self, request: HttpRequest, stream_id: str) -> HttpResponse:
        offset = request.GET.get("offset", "0")
        try:
            body = await act_on(request, stream_id, "read", lambda s: body_of(s, offset))
        except STREAM_ERRORS as exc:
            return error_for(exc)
        return JsonResponse(body.as_dict())


def sse_event(message: Message, event_id: int) -> str:
    """One Server-Sent Event; ``id`` is the offset after it, for ``Last-Event-ID``."""
    data = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    return f"event: {message['type']}\nid: {event_id}\ndata: {data}\n\n"


class StreamEventsView(JsonView):
    """``GET /api/streams/<id>/events/``: the websocket's messages as Server-Sent Events.

    Resumable exactly with ``Last-Event-ID`` (or ``?offset=N``); a keep-alive comment
    every ``SSE_KEEPALIVE`` seconds; ends after a terminal status.
    """

    async def get(self, request: HttpRequest, stream_id: str) -> HttpResponseBase:
        user = await request_user(request)
        offset = request.headers.get("Last-Event-ID") or request.GET.get("offset", "0")
        layer = get_channel_layer()
        try:
            follower = Follower(parse_stream_id(stream_id), user)
        except STREAM_ERRORS as exc:
            return error_for(exc)
        group = group_name(follower.stream_id)
        channel = await layer.new_channel()
        # Join before the snapshot: nothing committed in between is missed.
        await layer.group_add(group, channel)
        try:
            first = await follower.start(offset)
        except STREAM_ERRORS as exc:
            await layer.group_discard(group, channel)
            return error_for(exc)
        if follower.finished:
            await layer.group_discard(group, channel)
            if "Last-Event-ID" in request.headers and not first[0]["text"]:
                # An EventSource reconnecting after the end: 204 tells it to stop.
                return HttpResponse(status=204)
        response = StreamingHttpResponse(
            self.events(follower, first, layer, group, channel),
            content_type="text/event-stream; charset=utf-8",
        )
        response["Cache-Control"] = "no-cache, no-transform"
        response["X-Accel-Buffering"] = "no"
        return response

    async def events(
        self, follower: Follower, first: list[Message], layer: Any, group: str, channel: str
    ) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        resync_every = float(conf.get("RESYNC_INTERVAL"))
        keepalive_every = float(conf.get("SSE_KEEPALIVE"))
        joined = not follower.finished  # else get() has left the group already
        try:
            yield "retry: 1000\n\n" + self.format(follower, first)
            heard = said = loop.time()
            while not follower.finished:
                now = loop.time()
                try:
                    wait = min(heard + resync_every, said + keepalive_every) - now
                    event = await asyncio.wait_for(layer.receive(channel), timeout=max(wait, 0))
                except TimeoutError:
                    event = None
                now = loop.time()
                if event is not None:
                    heard = now
                    messages = await follower.update(event)
                elif now >= heard + resync_every:
                    heard = now
                    messages = await follower.resync()
                else:
                    messages = []
                if messages:
                    said = now
                    yield self.format(follower, messages)
                elif now >= said + keepalive_every:
                    said = now
                    yield ": keep-alive\n\n"
        finally:
            if joined:
                await layer.group_discard(group, channel)

    @staticmethod
    def format(follower: Follower, messages: list[Message]) -> str:
        parts = []
        for message in messages:
            if message["type"] == "text":
                event_id = message["offset"] + len(message["text"])
            else:
                event_id = follower.sent
            parts.append(sse_event(message, event_id))
        return "".join(parts)


class StreamCancelView(JsonView):
    """``POST /api/streams/<id>/cancel/``: stop a stream; for whom the policy allows
    ``cancel`` (by default its owner). Answers with the status once the stream has
    ended, or after ``CANCEL_WAIT`` seconds if its writer is still stopping."""

    async def post(self, request: HttpRequest, stream_id: str) -> HttpResponseBase:
        def cancel(stream: Stream) -> Stream:
            cancel_stream(stream.pk)
            return stream

        try:
            stream = await act_on(request, stream_id, "cancel", cancel)
            deadline = asyncio.get_running_loop().time() + float(conf.get("CANCEL_WAIT"))
            while True:
                stream = await aget_stream(stream.pk)
                if stream.is_finished or asyncio.get_running_loop().time() >= deadline:
                    break
                await asyncio.sleep(0.05)
        except STREAM_ERRORS as exc:
            return error_for(exc)
        return JsonResponse(
            {
                "id": str(stream.pk),
                "status": stream.status,
                "error": stream.error or None,
                "length": stream.length,
            }
        )
