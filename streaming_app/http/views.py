"""HTTP: the driving response, a stream's body, and cancelling it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.db import InterfaceError, OperationalError, connections
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.log import log_response
from django.utils.module_loading import import_string
from django.views import View
from django.views import csrf as django_csrf
from django.views.decorators.csrf import csrf_exempt

from .. import admission, conf
from ..drive.flush import FlushPolicy
from ..drive.run import Source, StreamRun, live_runs
from ..errors import GENERIC
from ..exceptions import InvalidOffset, Overloaded, StreamNotPending
from ..fanout.hub import status_message, text_message, to_json
from ..fanout.publish import published_after
from ..models import Status, Stream
from ..permissions import Action, cancels_on_disconnect, load_stream
from ..streams import (
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


def method_not_allowed(request: HttpRequest, allowed: list[str], hint: str = "") -> JsonResponse:
    """405, as JSON, with ``Allow``."""
    response = error_response(405, f"{request.method} is not allowed{hint or ' here'}")
    response["Allow"] = ", ".join(allowed)
    return response


def post_only(request: HttpRequest) -> JsonResponse | None:
    """What every driving response checks before it claims anything: a stream is driven
    by POST (which the CSRF check covers), never by a GET a link or a prefetch makes."""
    if request.method == "POST":
        return None
    return method_not_allowed(request, ["POST"], ": drive by POST")


# CSRF ------------------------------------------------------------------------------------

#: Django's logger of CSRF refusals.
csrf_logger = logging.getLogger("django.security.csrf")


def csrf_error(reason: str) -> JsonResponse:
    """The JSON 403 of a request that failed Django's CSRF check for ``reason``."""
    return error_response(403, f"CSRF verification failed: {reason}")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A ``CSRF_FAILURE_VIEW`` for a project whose drives are fetched: the JSON 403 of
    :func:`csrf_error`, except for a browser's page asking for HTML (``Accept`` has
    ``text/html``: a form posted by a page), which gets Django's own page."""
    if "text/html" in request.headers.get("Accept", ""):
        return django_csrf.csrf_failure(request, reason=reason)
    return csrf_error(reason)


def _refuse_as_json(self: CsrfViewMiddleware, request: HttpRequest, reason: str) -> HttpResponse:
    response = csrf_error(reason)
    log_response(
        "Forbidden (%s): %s",
        reason,
        request.path,
        response=response,
        request=request,
        logger=csrf_logger,
    )
    return response


_json_checks: dict[type[CsrfViewMiddleware], type[CsrfViewMiddleware]] = {}


def _json_check(middleware: type[CsrfViewMiddleware]) -> type[CsrfViewMiddleware]:
    # ``_reject`` is the hook Django's own ``requires_csrf_token`` overrides; everything
    # else (the origin, the referer, the token) is the project's middleware's.
    if middleware not in _json_checks:
        name = f"Json{middleware.__name__}"
        _json_checks[middleware] = type(name, (middleware,), {"_reject": _refuse_as_json})
    return _json_checks[middleware]


def _unchecked(request: HttpRequest) -> HttpResponse:  # the view the check is told of
    return HttpResponse()  # pragma: no cover - never called


def csrf_refusal(request: HttpRequest) -> HttpResponseBase | None:
    """Django's CSRF check of ``request``, as the project's ``CsrfViewMiddleware``
    makes it, refusing with JSON (:func:`csrf_error`) whatever ``CSRF_FAILURE_VIEW``
    says (or with the answer of a project's subclass that refuses in its own way);
    None if it passes, or the project has no such middleware. For a view that is
    ``csrf_exempt`` so that the middleware leaves the check to it; synchronous (with
    ``CSRF_USE_SESSIONS`` it reads the session)."""
    for dotted in settings.MIDDLEWARE:
        middleware = import_string(dotted)
        if isinstance(middleware, type) and issubclass(middleware, CsrfViewMiddleware):
            check = _json_check(middleware)(_unchecked)
            # Any answer is a refusal: the JSON one of _reject, or the project's own.
            refused: HttpResponseBase | None = check.process_view(request, _unchecked, (), {})
            return refused
    return None


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


async def aclaim_to_drive(
    user: Any, stream_id: StreamId, request: HttpRequest | None = None
) -> Stream:
    """Admit a drive and claim the stream for ``user``: what every driving response
    does before it starts a :class:`~streaming_app.drive.run.StreamRun`. Raises one of
    :data:`STREAM_ERRORS` (:func:`error_for` answers it): 429 past a rate or quota of
    the user's or of the address ``request`` came from (``DRIVE_RATES_PER_USER``,
    ``DRIVE_RATES_PER_ADDRESS``, ``DAILY_TOKENS_*``: streaming_app.admission), 404,
    403, 409, 503 over this process's ``MAX_LIVE_STREAMS``, 429 over the user's
    ``MAX_LIVE_STREAMS_PER_USER`` (the stream stays ``pending`` for the retry). A drive
    refused for any of them takes its counts against the rates back. The claimed stream holds
    none of the request's database connections. The claim is published without
    waiting for the channel layer (this process's viewers have it at once; the run's
    own updates follow it), so call it on an event loop that goes on, a server's."""
    global _claiming
    ticket = admission.drive_ticket(user, request)
    await admission.areserve(ticket)
    try:
        _admit()
        _claiming += 1
        try:
            return await _aclaim(user, stream_id)
        finally:
            _claiming -= 1
    except BaseException:
        await admission.arelease(ticket)  # a drive refused for another reason costs nothing
        raise


@dataclass
class Drive:
    """A claimed stream's run, not yet started, and the feed of its driving response:
    what :func:`open_drive` gives every driving response (this module's, the AI SDK's)
    to set its encoding on (``run.tap``) before :meth:`start`."""

    request: HttpRequest
    user: Any
    stream: Stream
    run: StreamRun
    feed: DriverFeed

    def start(self, on_end: Callable[[], None]) -> None:
        """Start the run, ``on_end`` called once it has ended; its tokens then count
        against the daily quotas of the user and the request's address
        (``DAILY_TOKENS_*``)."""
        self.run.start(on_end=on_end)
        admission.charge_when_done(self.run, admission.drive_ticket(self.user, self.request))


async def open_drive(
    request: HttpRequest, stream_id: StreamId, source: Source, policy: FlushPolicy | None
) -> Drive | HttpResponseBase:
    """The opening every driving response shares: a POST under ASGI, its user admitted
    and the stream claimed (:func:`aclaim_to_drive`), its run made with the feed of its
    response. Refused, the answer to send instead (405, or :func:`error_for`'s)."""
    require_asgi(request)
    refused = post_only(request)
    if refused is not None:
        return refused
    user = await request_user(request)
    try:
        stream = await aclaim_to_drive(user, stream_id, request)
    except STREAM_ERRORS as exc:
        return error_for(exc)
    run = StreamRun(stream.pk, source, policy=policy)
    return Drive(request, user, stream, run, DriverFeed(run, user, stream))


class DriverFeed:
    """The driving browser's response body: each piece the moment it is produced.

    A run's tap pushes pieces in; the response reads them out, all that is waiting at
    once, and ends with the last piece given to :meth:`end`. If the browser goes away
    the run is told, and goes on without it, or stops where ``CANCEL_ON_DISCONNECT``
    says so for ``user``, who drives ``stream`` (:func:`cancels_on_disconnect`).
    """

    def __init__(self, run: StreamRun, user: Any = None, stream: Stream | None = None) -> None:
        self._run = run
        self._cancel_on_hang_up = (
            cancels_on_disconnect(user, stream)
            if stream is not None
            else conf.get("CANCEL_ON_DISCONNECT") is True
        )
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._max_backlog = int(conf.get("MAX_PENDING_CHARS"))
        # Until the server asks for the body (the response still on its way out, through
        # the middleware), the driver has not stopped reading: it has not started. The
        # feed then holds what comes, up to the most a stream may hold (no limit: all).
        longest = conf.get("MAX_LENGTH")
        self._max_unread = None if longest is None else max(self._max_backlog, int(longest))
        self._reading = False
        self._backlog = 0
        self._ended = False
        self._eof = False
        self._hung_up = False
        self._last = ""
        # What first() took from the queue, for the response to read.
        self._held: list[str | None] = []

    def push(self, piece: str) -> None:
        if self._hung_up or not piece:
            return
        self._backlog += len(piece)
        bound = self._max_backlog if self._reading else self._max_unread
        if bound is not None and self._backlog > bound:
            logger.warning(
                "the driver of stream %s stopped reading; its response is abandoned, "
                "generation goes on",
                self._run.stream_id,
            )
            self._hang_up()
            self._queue.put_nowait(None)
            return
        self._queue.put_nowait(piece)

    def end(self, last: str = "") -> None:
        """The body ends, with ``last`` (which is not a piece: see :meth:`first`)."""
        if self._ended:
            return
        self._ended = True
        self._last = last
        self._queue.put_nowait(None)

    async def first(self) -> bool:
        """Wait for the first piece, or the end: whether a piece came first (False: the
        run ended before producing one). The response reads it as if nothing had been
        waited for. Cancelled (the browser hung up meanwhile), it hangs up."""
        try:
            piece = await self._queue.get()
        except asyncio.CancelledError:
            self._hang_up()
            raise
        self._held.append(piece)
        # Abandoned meanwhile: the response fails as it would have.
        return piece is not None or self._hung_up

    def __aiter__(self) -> DriverFeed:
        return self

    async def __anext__(self) -> bytes:
        if self._eof:
            raise StopAsyncIteration
        self._reading = True
        if self._held:
            piece = self._held.pop()
        else:
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
            if self._last:
                parts.append(self._last)
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
        if self._cancel_on_hang_up:
            self._run.cancel()


# How a run ended -------------------------------------------------------------------------

#: What a driver is told when a stream ends in a way that carries no message.
ENDED_WITHOUT_MESSAGE: dict[str, str] = {
    Status.ERROR: GENERIC,
    Status.TIMEOUT: "the reply timed out",
    Status.CANCELLED: "the reply was cancelled",
}

#: The HTTP status of a drive whose run ended before its first piece, by how it ended
#: (``done`` is 200 with an empty body; a stream gone from the database, 502).
ENDED_CODES: dict[str, int] = {Status.ERROR: 502, Status.TIMEOUT: 504, Status.CANCELLED: 409}


def _error_of(stream_id: Any) -> str:
    row = Stream.objects.filter(pk=stream_id).values_list("error", flat=True).first()
    return row or ""


_read_error = published_after(_error_of, thread_sensitive=False)


async def run_outcome(run: StreamRun) -> tuple[str, str | None]:
    """How a run ended: its status and, for an error, the public message its stream
    holds (what every other reader of the stream is told). Returns once the status has
    committed, without waiting for the channel layer; cancelling the wait leaves the
    run alone."""
    try:
        status = await asyncio.shield(run.task)
    except asyncio.CancelledError:
        if not run.task.done():
            raise  # this task was cancelled, not the run
        status = run.status or Status.CANCELLED
    except Exception:
        logger.exception("the run of stream %s failed", run.stream_id)
        return Status.ERROR, None
    if status not in (Status.ERROR, Status.TIMEOUT):
        return status, None
    if run.error:
        return status, run.error
    try:
        return status, await _read_error(run.stream_id) or None
    except (OperationalError, InterfaceError) as exc:
        logger.warning("the error of stream %s could not be read: %r", run.stream_id, exc)
        return status, None


# The tasks that end driving responses: referenced until done (the loop keeps weak ones).
_ending: set[asyncio.Task[None]] = set()


def end_with_outcome(
    run: StreamRun, feed: DriverFeed, last: Callable[[str, str | None], str]
) -> Callable[[], None]:
    """An ``on_end`` for ``run`` that ends ``feed`` with ``last(status, error)`` once
    the run's status is known (:func:`run_outcome`), a moment after generation ends."""

    async def end() -> None:
        try:
            status, error = await run_outcome(run)
            feed.end(last(status, error))
        finally:
            feed.end()

    def generation_ended() -> None:
        task = asyncio.get_running_loop().create_task(end())
        _ending.add(task)
        task.add_done_callback(_ending.discard)

    return generation_ended


def status_line(status: str, error: str | None) -> str:
    """The NDJSON drive's last line: the websocket's status message."""
    return to_json(status_message(status, error)) + "\n"


def _driving_headers(response: HttpResponseBase, stream_id: Any) -> HttpResponseBase:
    response["Cache-Control"] = "no-cache, no-transform"
    # nginx and other proxies must not hold the tokens back.
    response["X-Accel-Buffering"] = "no"
    response["X-Stream-Id"] = str(stream_id)
    return response


def ended_response(
    stream_id: Any, status: str, error: str | None, content_type: str
) -> HttpResponseBase:
    """The answer to a drive whose run ended before its first piece: 200 and an empty
    body for ``done``; otherwise ``{"error", "status", "id"}`` with the status code of
    :data:`ENDED_CODES` (502 for ``error``, 504 ``timeout``, 409 ``cancelled``)."""
    if status == Status.DONE:
        return _driving_headers(HttpResponse(b"", content_type=content_type), stream_id)
    message = error or ENDED_WITHOUT_MESSAGE.get(status, GENERIC)
    response = error_response(
        ENDED_CODES.get(status, 502), message, status=status or Status.ERROR, id=str(stream_id)
    )
    return _driving_headers(response, stream_id)


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

    Only a POST drives: anything else is answered 405 (JSON, ``Allow: POST``) before
    anything is claimed. ``generate`` is an async iterable of text pieces (an
    ``openai`` stream mapped to its deltas), or an async callable that receives
    ``append`` and awaits ``append(text)`` for each piece. The stream is claimed
    first: a second driver gets 409, an unknown stream 404, a user the permission
    policy refuses 403. Over this process's ``MAX_LIVE_STREAMS`` the answer is 503,
    over the user's ``MAX_LIVE_STREAMS_PER_USER`` 429, both with ``Retry-After``; the
    stream stays ``pending`` for the retry.

    The response starts with the run's first piece. A run that ends before producing
    one is answered with how it ended (:func:`ended_response`): 502 with the stream's
    public error message for ``error``, 504 for ``timeout``, 409 for ``cancelled``
    (JSON ``{"error", "status", "id"}``), 200 with an empty body for ``done``. Once the
    body has begun it can only end: its last line, with ``parts``, says how.

    Generation runs in a task of its own: it goes on to the end if the browser hangs
    up, before the first piece or after (see ``CANCEL_ON_DISCONNECT``), and the
    database never holds the response up. Once claimed, the stream holds no database
    connection of the request's. Needs an ASGI server (daphne, uvicorn): under WSGI it
    raises RuntimeError.

    With ``parts`` (by default: the request's ``?parts=1``) the body is the websocket's
    text messages, with the part map, one JSON object per line (NDJSON; see
    docs/protocol.md), ending with its status message, for a client that shows
    reasoning and tool calls apart.
    """
    drive = await open_drive(request, stream_id, generate, policy)
    if not isinstance(drive, Drive):
        return drive  # refused
    run, feed, stream = drive.run, drive.feed, drive.stream
    if parts is None:
        parts = parse_flag(request.GET.get("parts"))
    on_end: Callable[[], None]
    if parts:
        run.tap = part_lines(run, feed.push)
        content_type = "application/x-ndjson; charset=utf-8"
        on_end = end_with_outcome(run, feed, status_line)
    else:
        run.tap = feed.push
        on_end = feed.end  # at once: the text has no last line to wait for
    drive.start(on_end)
    if not await feed.first():
        status, error = await run_outcome(run)
        return ended_response(stream.pk, status, error, content_type)
    return _driving_headers(StreamingHttpResponse(feed, content_type=content_type), stream.pk)


def stream_response(
    request: HttpRequest,
    stream_id: StreamId,
    generate: Source,
    **kwargs: Any,
) -> HttpResponseBase:
    """:func:`astream_response` for a synchronous view, served under ASGI. (The view's
    thread waits for the first piece; a browser that hangs up meanwhile is noticed
    once the response is returned.)"""
    require_asgi(request)
    return async_to_sync(astream_response)(request, stream_id, generate, **kwargs)


class JsonView(View):
    """A view whose every answer, errors included, is JSON: its CSRF check too, made
    here rather than by ``CsrfViewMiddleware`` (which answers with
    ``CSRF_FAILURE_VIEW``, HTML by default), as the middleware would make it."""

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Callable[..., HttpResponseBase]:
        # The middleware leaves the check to dispatch().
        return csrf_exempt(super().as_view(**initkwargs))

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        dispatch: Any = super().dispatch
        # A subclass the project exempts as Django says (method_decorator(csrf_exempt,
        # name="dispatch")) is not checked: the exemption is on its dispatch.
        exempt = getattr(type(self).dispatch, "csrf_exempt", False)
        if exempt or request.method in ("GET", "HEAD", "OPTIONS", "TRACE"):
            return dispatch(request, *args, **kwargs)
        if not self.view_is_async:
            return csrf_refusal(request) or dispatch(request, *args, **kwargs)

        async def checked() -> Any:
            refused = await sync_to_async(csrf_refusal)(request)
            return refused or await dispatch(request, *args, **kwargs)

        return checked()

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        allowed = [m.upper() for m in self.http_method_names if hasattr(self, m)]
        response = method_not_allowed(request, allowed)
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
