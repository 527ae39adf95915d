"""Driving a stream over HTTP: admission, the claim, the run, and the response that
streams each piece as it is generated (text, or NDJSON with the part map); the AI
SDK's drive (:mod:`streaming_app.aisdk`) is built on the same opening."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from django.core.handlers.asgi import ASGIRequest
from django.db import InterfaceError, OperationalError, connections
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from .. import admission, conf
from ..drive.flush import FlushPolicy
from ..drive.run import Source, StreamRun, live_runs
from ..errors import ended_message
from ..exceptions import Overloaded
from ..fanout.events import Status as StatusEvent
from ..fanout.events import Text
from ..fanout.outbox import published_after
from ..models import Status, Stream
from ..permissions import load_stream
from ..protocol import message, to_json
from ..streams import (
    StreamId,
    claim_stream,
    parse_flag,
)
from .body import DriverBody
from .responses import STREAM_ERRORS, error_for, error_response, post_only, request_user

logger = logging.getLogger(__name__)

T = TypeVar("T")

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
        event = Text(offset, text)
        if len(run.parts) > sent:
            event.parts_from, event.entries = sent, run.parts[sent:]
            sent = len(run.parts)
        push(to_json(message(event)) + "\n")
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
    """A claimed stream's run, not yet started, and the body of its driving response:
    what :func:`open_drive` gives every driving response (this module's, the AI SDK's)
    to set its encoding on (``run.tap``) before :meth:`start`."""

    request: HttpRequest
    user: Any
    stream: Stream
    run: StreamRun
    body: DriverBody

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
    and the stream claimed (:func:`aclaim_to_drive`), its run made with the body of its
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
    return Drive(request, user, stream, run, DriverBody(run, user, stream))


# How a run ended -------------------------------------------------------------------------


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
    run: StreamRun, body: DriverBody, last: Callable[[str, str | None], str]
) -> Callable[[], None]:
    """An ``on_end`` for ``run`` that ends ``body`` with ``last(status, error)`` once
    the run's status is known (:func:`run_outcome`), a moment after generation ends."""

    async def end() -> None:
        try:
            status, error = await run_outcome(run)
            body.end(last(status, error))
        finally:
            body.end()

    def generation_ended() -> None:
        task = asyncio.get_running_loop().create_task(end())
        _ending.add(task)
        task.add_done_callback(_ending.discard)

    return generation_ended


def status_line(status: str, error: str | None) -> str:
    """The NDJSON drive's last line: the websocket's status message."""
    return to_json(message(StatusEvent(status, error, 0))) + "\n"


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
    message = error or ended_message(status)
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
    run, body, stream = drive.run, drive.body, drive.stream
    if parts is None:
        parts = parse_flag(request.GET.get("parts"))
    on_end: Callable[[], None]
    if parts:
        run.tap = part_lines(run, body.push)
        content_type = "application/x-ndjson; charset=utf-8"
        on_end = end_with_outcome(run, body, status_line)
    else:
        run.tap = body.push
        on_end = body.end  # at once: the text has no last line to wait for
    drive.start(on_end)
    if not await body.first():
        status, error = await run_outcome(run)
        return ended_response(stream.pk, status, error, content_type)
    return _driving_headers(StreamingHttpResponse(body, content_type=content_type), stream.pk)


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
