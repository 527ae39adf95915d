"""HTTP: the driving response, a stream's body, and cancelling it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.db import InterfaceError, OperationalError, connections
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views import View

from . import conf
from .exceptions import InvalidOffset, Overloaded, StreamNotPending
from .flush import FlushPolicy
from .hub import text_message, to_json
from .models import Stream
from .permissions import Action, load_stream
from .publish import published_after
from .run import Source, StreamRun, live_runs
from .streams import (
    StreamId,
    aget_stream,
    body_of,
    cancel_stream,
    claim_stream,
    expire_if_stale,
    offset_parameter,
    parse_flag,
)

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
    Overloaded,
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
    if isinstance(exc, Overloaded):
        response = error_response(exc.status_code, str(exc))
        response["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, OperationalError | InterfaceError):
        logger.warning("database unavailable: %s", exc)
        response = error_response(503, "the database is unavailable; try again shortly")
        response["Retry-After"] = str(conf.get("RETRY_AFTER"))
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
    """``then(stream)``, in the request's thread, if the request's user may do
    ``action`` to the stream; raises one of :data:`STREAM_ERRORS` otherwise. What it
    commits is published once it returns."""
    user = await request_user(request)

    def act() -> T:
        return then(expire_if_stale(load_stream(user, stream_id, action)))

    return await published_after(act)()


# Driving -------------------------------------------------------------------------------

# Drives admitted and not yet running: counted with the live runs against
# MAX_LIVE_STREAMS, so that simultaneous drives cannot all slip under the limit.
_claiming = 0


def _admit() -> None:
    """Refuse a drive over this process's limit of live streams (503)."""
    limit = conf.get("MAX_LIVE_STREAMS")
    if limit is not None and len(live_runs()) + _claiming >= int(limit):
        raise Overloaded(
            f"this server is driving its limit of {limit} streams; try again shortly",
            status_code=503,
            retry_after=int(conf.get("RETRY_AFTER")),
        )


def _claim(user: Any, stream_id: StreamId) -> Stream:
    """In the request's thread: the permission, the claim (within the owner's limit of
    live streams). Then the
    thread's connections go back (to the pool) or are closed: a driven stream holds
    none while it streams (its writes share the writers' few)."""
    try:
        stream = load_stream(user, stream_id, "drive")
        limit = conf.get("MAX_LIVE_STREAMS_PER_USER")
        claim_stream(stream.pk, max_live_per_owner=None if limit is None else int(limit))
        return stream
    finally:
        for connection in connections.all(initialized_only=True):
            if not connection.in_atomic_block:
                connection.close()


def part_lines(run: StreamRun, push: Callable[[str], None]) -> Callable[[str], None]:
    """A tap that pushes each piece as a line of JSON: the websocket's text message,
    with the entries of the part map that are new since the last line (the driver
    reads from the start: each entry comes once, with the first text it describes)."""
    offset = sent = 0

    def tap(text: str) -> None:
        nonlocal offset, sent
        message = text_message(offset, text)
        if len(run.parts) > sent:
            message["parts_from"], message["parts"] = sent, run.parts[sent:]
            sent = len(run.parts)
        push(to_json(message) + "\n")
        offset += len(text)

    return tap


def require_asgi(request: HttpRequest) -> None:
    """Refuse to drive a stream outside ASGI (RuntimeError): what every driving
    response checks first."""
    if not isinstance(request, ASGIRequest):
        raise RuntimeError(
            "streaming_app drives streams under ASGI only (daphne, uvicorn): under WSGI "
            "the response would be buffered whole and generation would not outlive it"
        )


# The claim's update goes to the loop's publisher, ahead of the run's: the first token
# waits for the database's claim, not for the channel layer or the signals' receivers.
_aclaim = published_after(_claim, wait=False)


async def aclaim_to_drive(user: Any, stream_id: StreamId) -> Stream:
    """Admit a drive and claim the stream for ``user``: what every driving response
    does before it starts a :class:`~streaming_app.run.StreamRun`. Raises one of
    :data:`STREAM_ERRORS` (:func:`error_for` answers it): 404, 403, 409, 503 over this
    process's ``MAX_LIVE_STREAMS``, 429 over the user's ``MAX_LIVE_STREAMS_PER_USER``
    (the stream stays ``pending`` for the retry). The claimed stream holds none of the
    request's database connections. The claim is published without waiting for the
    channel layer (this process's viewers have it at once; the run's own updates
    follow it), so call it on an event loop that goes on, a server's."""
    global _claiming
    _admit()
    _claiming += 1
    try:
        return await _aclaim(user, stream_id)
    finally:
        _claiming -= 1


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
        if self._hung_up or not piece:
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

    async def __anext__(self) -> bytes:
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
        # Bytes: Django writes them as they are (a str would be encoded per piece,
        # looking the charset up in the Content-Type each time).
        return text.encode()

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
    parts: bool | None = None,
) -> HttpResponseBase:
    """Drive a stream: return the response that streams its text as it is generated.

    ``generate`` is an async iterable of text pieces (an async generator, an ``openai``
    stream mapped to its deltas), or an async callable that receives ``append`` and
    awaits ``append(text)`` for each piece. The stream is claimed first: a second
    driver gets 409, an unknown stream 404, a user the permission policy refuses 403.
    Over this process's ``MAX_LIVE_STREAMS`` the answer is 503, over the user's
    ``MAX_LIVE_STREAMS_PER_USER`` 429, both with ``Retry-After``; the stream stays
    ``pending`` for the retry.

    Generation runs in a task of its own: it goes on to the end if the browser hangs
    up (see ``CANCEL_ON_DISCONNECT``), and the database never holds the response up.
    Once claimed, the stream holds no database connection of the request's. Needs an
    ASGI server (daphne, uvicorn): under WSGI it raises RuntimeError.

    With ``parts`` (by default: the request's ``?parts=1``) the body is the websocket's
    text messages, with the part map, one JSON object per line (NDJSON; see
    docs/protocol.md), for a client that shows reasoning and tool calls apart.
    """
    require_asgi(request)
    user = await request_user(request)
    try:
        stream = await aclaim_to_drive(user, stream_id)
    except STREAM_ERRORS as exc:
        return error_for(exc)

    run = StreamRun(stream.pk, generate, policy=policy)
    feed = DriverFeed(run)
    if parts is None:
        parts = parse_flag(request.GET.get("parts"))
    if parts:
        run.tap = part_lines(run, feed.push)
        content_type = "application/x-ndjson; charset=utf-8"
    else:
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
    require_asgi(request)
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
        offsets = request.GET.getlist("offset")
        try:
            body = await act_on(
                request, stream_id, "read", lambda s: body_of(s, offset_parameter(offsets))
            )
        except STREAM_ERRORS as exc:
            return error_for(exc)
        return JsonResponse(body.as_dict())


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
