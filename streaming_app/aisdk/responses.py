"""The AI SDK's UI message stream over HTTP: :func:`aui_message_stream_response`
drives a stream, sending each piece the moment it is generated (before it commits),
and :func:`aresume_response` answers useChat's ``GET <api>/<chatId>/stream``
(``resume: true``): the reply replayed from the database from its start, then
followed to its end through the hub, from any process. The chunks are
:mod:`.encoder`'s."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from .. import conf
from ..drive.flush import FlushPolicy
from ..drive.run import Source
from ..errors import GENERIC
from ..exceptions import Overloaded
from ..fanout.events import Event, Text
from ..fanout.viewer import OUTAGES, Viewer
from ..http.drive import Drive, end_with_outcome, open_drive
from ..http.following import afollow
from ..models import Status, Stream
from ..parts import Entry, merge
from ..streams import StreamId
from .encoder import CONTENT_TYPE, HEADERS, KEEPALIVE, UIMessageEncoder

logger = logging.getLogger(__name__)


def _with_headers(response: StreamingHttpResponse, stream_id: Any) -> StreamingHttpResponse:
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
    run, body, stream = drive.run, drive.body, drive.stream
    encoder = UIMessageEncoder(message_id or str(stream.pk))
    body.push(encoder.start())
    offset = 0

    def tap(text: str) -> None:
        nonlocal offset
        body.push(encoder.text(offset, text, run.parts))
        offset += len(text)

    run.tap = tap
    drive.start(end_with_outcome(run, body, lambda s, e: encoder.status(s, e, run.parts)))
    return _with_headers(StreamingHttpResponse(body, content_type=CONTENT_TYPE), stream.pk)


# Resuming --------------------------------------------------------------------------------


class ResumeEncoding:
    """A resuming viewer's encoding: its events are encoded as they are written, by
    its own :class:`UIMessageEncoder` (whose state must be what the browser has
    received: the hub drops the events of a viewer that stops reading and hands it the
    text again from where it was). An event costs its text."""

    parts = True

    def size(self, event: Event) -> int:
        return len(event.text) if isinstance(event, Text) else 0


RESUMING = ResumeEncoding()


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
    following = await afollow(request, stream_id, RESUMING, 0)
    if isinstance(following, HttpResponseBase):
        return following  # refused
    body = following.body
    if body.is_finished:
        following.leave()
        return HttpResponse(status=204)
    encoder = UIMessageEncoder(message_id or str(body.id))
    response = following.response(_resumed(following.viewer, encoder), CONTENT_TYPE)
    return _with_headers(response, body.id)


def _closed_message(refused: BaseException | None) -> str:
    """What a resuming browser is told of a viewer the hub closed before the end."""
    if isinstance(refused, PermissionDenied):
        return "you may no longer read this reply"
    if isinstance(refused, Stream.DoesNotExist):
        return "the reply was deleted"
    if isinstance(refused, Overloaded):
        return "too many open viewers"
    if isinstance(refused, OUTAGES):
        return "the database is unavailable; try again shortly"
    return GENERIC


async def _resumed(viewer: Viewer, encoder: UIMessageEncoder) -> AsyncIterator[str]:
    known: list[Entry] = []  # the stream's part map, as far as the events told
    yield encoder.start()
    try:
        async for events in viewer.batches(keepalive=float(conf.get("SSE_KEEPALIVE"))):
            if not events:
                yield KEEPALIVE
                continue
            written = []
            for event in events:
                if isinstance(event, Text):
                    if not merge(known, event.parts_from, event.entries):
                        raise ValueError("a gap in the part map")
                    written.append(encoder.text(event.offset, event.text, known))
                else:
                    written.append(encoder.status(event.status, event.error, known))
            if any(written):
                yield "".join(written)
    except Exception:
        # A bug in this reply's encoding ends this reply alone (the stream goes on).
        logger.exception("the resumed reply of stream %s failed", viewer.stream_id)
        yield encoder.status(Status.ERROR, GENERIC)
        return
    if not encoder.ended:
        # Closed by the hub before the end: refused, deleted, or the database away.
        yield encoder.status(Status.ERROR, _closed_message(viewer.refused))
