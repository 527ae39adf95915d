"""The Durable Streams protocol over the app's streams (PROTOCOL.md §5, §8–§10, §12.7;
docs/protocol.md#durable-streams).

``<mount>/<name>`` is a stream created over the protocol (``PUT``), or one of the app's
by its id, read as ``text/plain; charset=utf-8``. ``HEAD`` for its metadata, ``GET`` for
a catch-up read from an offset, ``live=long-poll`` to wait for what comes next,
``live=sse`` to follow it; ``POST`` appends (and closes), ``DELETE`` deletes. Reads go
through ``PERMISSION_POLICY`` like every reader's; writes need its ``create``,
``append`` and ``delete``. Live reads are viewers of the process's hub, counted against
the same limits as a websocket's. Every terminal status reads as *closed*; which one it
was is said by the ``Streaming-Status`` header (and ``Streaming-Error``,
percent-encoded), or, over SSE, by the last control event's ``streamingStatus`` and
``streamingError``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from asgiref.sync import sync_to_async
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.utils.dateparse import parse_datetime
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from .. import appends, conf
from ..appends import AppendError, Config, Fork, Found, Producer
from ..exceptions import InvalidOffset
from ..fanout.events import Event, SharedEncoding, Status, Text
from ..fanout.outbox import published_after
from ..fanout.viewer import Viewer
from ..http.following import Following, afollow
from ..http.jsonview import csrf_refusal
from ..http.responses import STREAM_ERRORS, error_for, error_response, request_user
from ..models import Stream, is_finished
from ..permissions import DURABLE_WRITES, Action, has_permission, refusal
from ..streams import StreamBody, body_of, expire_if_stale
from .offsets import Start, cursor, parse_start, token

T = TypeVar("T")

#: What a cacheable read may be kept for (§10.1).
CACHEABLE = "max-age=60, stale-while-revalidate=300"
#: The headers a cross-origin script may send, and read back (the reference server's).
ALLOW_HEADERS = (
    "Content-Type, Authorization, Stream-Seq, Stream-TTL, Stream-Expires-At, Stream-Closed, "
    "Producer-Id, Producer-Epoch, Producer-Seq, Stream-Forked-From, Stream-Fork-Offset, "
    "Stream-Fork-Sub-Offset, If-None-Match"
)
EXPOSE_HEADERS = (
    "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, Streaming-Id, "
    "Streaming-Status, Streaming-Error, Stream-TTL, Stream-Expires-At, Stream-SSE-Data-Encoding, "
    "Producer-Epoch, Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq, ETag, "
    "Content-Type, Location"
)
#: The longest name a stream may have (DurableStream.name), and other stored headers.
MAX_NAME = 255
#: The longest Stream-TTL (DurableStream.ttl: a positive integer column).
MAX_TTL = 2**31 - 1
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]
_TTL = re.compile(r"0|[1-9][0-9]{0,9}")
_INTEGER = re.compile(r"0|[1-9][0-9]{0,15}")


class Nothing(SharedEncoding):
    """A live reader's encoding in the hub: its events are written as they are read
    (a long-poll's one body, an SSE response's events), so what waits for it is
    counted as text."""

    def encode(self, event: Event) -> str:
        return event.text if isinstance(event, Text) else ""


EVENTS = Nothing()


class BadRequest(Exception):
    """A request the protocol answers with 400: what was wrong."""


def with_protocol_headers(response: HttpResponseBase) -> HttpResponseBase:
    """The headers every answer carries: §12.7's, and CORS for scripts of any origin
    (which send no cookies with ``*``: a cross-origin request is an anonymous one)."""
    response["X-Content-Type-Options"] = "nosniff"
    response["Cross-Origin-Resource-Policy"] = "cross-origin"
    response["Access-Control-Allow-Origin"] = "*"
    response["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    return response


def is_true(value: str | None) -> bool:
    """``Stream-Closed``: present only as ``true``, in any case (§4.1)."""
    return (value or "").lower() == "true"


@dataclass(frozen=True)
class Read:
    """A stream as a read found it: its committed body from the read's offset, its
    content type, and whether a shared cache may keep it."""

    body: StreamBody
    content_type: str
    public: bool

    def data(self, text: str) -> bytes:
        return appends.encode(self.content_type, text)


def publicly_readable(stream: Stream) -> bool:
    """Whether anyone may read ``stream`` (a shared cache may then keep it)."""
    return has_permission(AnonymousUser(), stream, "read")


async def on_stream(
    request: HttpRequest, name: str, action: Action, then: Callable[[Found], T], *, touch: bool
) -> T:
    """``then(found)``, in a thread, for the stream ``name`` if the request's user may do
    ``action`` to it; raises one of :data:`STREAM_ERRORS` or an
    :class:`~streaming_app.appends.AppendError` otherwise. What it commits is published
    once it returns."""
    user = await request_user(request)

    def act() -> T:
        found = appends.find(name, touch=touch)
        if action in DURABLE_WRITES and found.durable is None:
            # One of the app's own: the method is not this resource's (§5.2), whoever asks.
            raise appends.NotAppendable("the app's own streams are written by the app")
        stream = expire_if_stale(found.stream)
        if not has_permission(user, stream, action):
            raise PermissionDenied(refusal(stream, action))
        return then(replace(found, stream=stream))

    return await published_after(act)()


def status_headers(response: HttpResponseBase, status: str, error: str | None) -> None:
    """The app's status of the stream, and its public error message, percent-encoded
    (a header is Latin-1): the extension that says how a closed stream ended."""
    response["Streaming-Status"] = status
    if error:
        response["Streaming-Error"] = quote(error, safe=" ")


def position_headers(response: HttpResponseBase, body: StreamBody, end: int) -> None:
    """Where the reader is after this response (``end``), and, once it has all of a
    finished stream, that it is closed."""
    response["Stream-Next-Offset"] = token(end)
    response["Streaming-Id"] = str(body.id)
    if end >= body.length:
        response["Stream-Up-To-Date"] = "true"
        if body.is_finished:
            response["Stream-Closed"] = "true"
    status_headers(response, body.status, body.error)


def data_response(request: HttpRequest, read: Read, start: Start, text: str) -> HttpResponseBase:
    """A 200 with ``text`` from ``read.body.offset`` (or a 304, for a client that has
    it)."""
    body = read.body
    end = body.offset + len(text)
    closed = body.is_finished and end >= body.length
    etag = f'"{body.id}:{start.given}:{token(end)}{":c" if closed else ""}"'
    response: HttpResponseBase
    if start.at_tail:
        response = HttpResponse(read.data(""), content_type=read.content_type)
        response["Cache-Control"] = "no-store"  # the tail moves; no ETag (§8)
    else:
        if request.headers.get("If-None-Match") == etag:
            response = HttpResponse(status=304)
        else:
            response = HttpResponse(read.data(text), content_type=read.content_type)
        response["ETag"] = etag
        # An empty answer at the tail of a live stream is stale with its next append.
        response["Cache-Control"] = (
            f"{'public' if read.public else 'private'}, {CACHEABLE}"
            if text or closed
            else "no-store"
        )
    position_headers(response, body, end)
    return response


def no_content(response: HttpResponseBase) -> None:
    """A long-poll that has no text to give: 204. One that timed out is not for caching
    (§10.1: the next append makes it wrong); the close of a stream is for ever (terminal
    is final), so a cache may keep it like any read that reached the end: a thousand
    readers of a live stream behind a CDN do not each come to the server for it."""
    response.status_code = 204
    if isinstance(response, HttpResponse):
        response.content = b""  # not even a JSON stream's []: a 204 has no body
    del response["ETag"]
    if response.get("Stream-Closed") != "true":
        response["Cache-Control"] = "no-store"


def refused(exc: BaseException | None) -> HttpResponseBase:
    """The answer to a live read whose viewer was refused or closed before it had
    anything (the stream deleted, a read failed)."""
    if isinstance(exc, STREAM_ERRORS):
        return error_for(exc)
    return error_response(503, "the stream could not be followed; try again")


def append_refused(exc: AppendError) -> HttpResponseBase:
    """The protocol's answer to a refused write (§5.1, §5.2, §5.2.1)."""
    if isinstance(exc, appends.NotAppendable):
        response = error_response(405, str(exc))
        response["Allow"] = "GET, HEAD, OPTIONS"
        return response
    code = {"bad request": 400, "conflict": 409, "forbidden": 403, "too long": 413, "gone": 410}[
        exc.kind
    ]
    response = error_response(code, str(exc))
    if isinstance(exc, appends.Closed):
        response["Stream-Closed"] = "true"
        response["Stream-Next-Offset"] = token(exc.details["length"])
    elif isinstance(exc, appends.StaleEpoch):
        response["Producer-Epoch"] = str(exc.details["epoch"])
    elif isinstance(exc, appends.SequenceGap):
        response["Producer-Expected-Seq"] = str(exc.details["expected"])
        response["Producer-Received-Seq"] = str(exc.details["received"])
    return response


def producer_of(request: HttpRequest) -> Producer | None:
    """The idempotent producer's headers, all three or none (§5.2.1)."""
    given = [header(request, h) for h in ("Producer-Id", "Producer-Epoch", "Producer-Seq")]
    if all(value is None for value in given):
        return None
    producer, epoch, seq = given
    if producer is None or epoch is None or seq is None:
        raise BadRequest("Producer-Id, Producer-Epoch and Producer-Seq go together")
    if not producer:
        raise BadRequest("Producer-Id must not be empty")
    numbers = []
    for name, value in (("Producer-Epoch", epoch), ("Producer-Seq", seq)):
        if not _INTEGER.fullmatch(value) or int(value) > appends.MAX_PRODUCER_NUMBER:
            raise BadRequest(f"{name} must be an integer from 0 to 2^53-1, not {value[:40]!r}")
        numbers.append(int(value))
    return Producer(producer, numbers[0], numbers[1])


def config_of(request: HttpRequest) -> Config:
    """A creation's configuration from its headers (§5.1)."""
    ttl_header = request.headers.get("Stream-TTL")
    expires_header = request.headers.get("Stream-Expires-At")
    if ttl_header is not None and expires_header is not None:
        raise BadRequest("give Stream-TTL or Stream-Expires-At, not both")
    ttl = None
    if ttl_header is not None:
        if not _TTL.fullmatch(ttl_header):
            raise BadRequest(f"Stream-TTL must be whole seconds, not {ttl_header[:40]!r}")
        ttl = int(ttl_header)
        if ttl > MAX_TTL:
            raise BadRequest(f"Stream-TTL must be at most {MAX_TTL} seconds")
    expires_at = None
    if expires_header is not None:
        try:
            expires_at = parse_datetime(expires_header)
        except ValueError:
            expires_at = None
        try:
            # A time the database holds, in UTC as it keeps it.
            usable = expires_at is not None and 1 < expires_at.astimezone(UTC).year < 9999
        except (OverflowError, ValueError):
            usable = False
        if expires_at is None or expires_at.tzinfo is None or not usable:
            raise BadRequest(
                f"Stream-Expires-At must be an RFC 3339 time, not {expires_header[:40]!r}"
            )
    fork = fork_of(request)
    content_type = header(request, "Content-Type")
    return Config(
        # A fork without one inherits its source's.
        content_type or (None if fork else "application/octet-stream"),
        ttl,
        expires_at,
        is_true(request.headers.get("Stream-Closed")),
        fork,
    )


def fork_of(request: HttpRequest) -> Fork | None:
    """A creation's fork headers (§4.2): the source as a name under this mount."""
    source = header(request, "Stream-Forked-From")
    if source is not None:
        source = unquote(source)  # a path, as the client's URL spelled it
        if "\x00" in source:
            raise BadRequest("Stream-Forked-From must not hold NUL")
    offset = request.headers.get("Stream-Fork-Offset")
    sub = request.headers.get("Stream-Fork-Sub-Offset")
    if source is None:
        if offset is not None or sub is not None:
            raise BadRequest(
                "Stream-Fork-Offset and Stream-Fork-Sub-Offset need Stream-Forked-From"
            )
        return None
    name = request.resolver_match.kwargs["name"] if request.resolver_match else ""
    mount = request.path[: len(request.path) - len(name)]
    if not source.startswith(mount) or len(source) == len(mount):
        raise Stream.DoesNotExist(f"no stream {source[:60]!r} under {mount}")
    at = None
    if offset is not None:
        try:
            at = parse_start([offset]).offset
        except InvalidOffset as exc:
            raise BadRequest(f"Stream-Fork-Offset: {exc}") from None
    if sub is not None and not _INTEGER.fullmatch(sub):
        raise BadRequest(f"Stream-Fork-Sub-Offset must be a whole number, not {sub[:40]!r}")
    return Fork(source[len(mount) :], at, int(sub or 0))


def request_body(request: HttpRequest) -> bytes:
    """The request's body, at most ``MAX_APPEND_BYTES``; raises RequestDataTooBig."""
    limit = int(conf.get("MAX_APPEND_BYTES"))
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise RequestDataTooBig(f"the body is larger than {limit} bytes")
    # Read no more than the limit (a chunked body declares no length).
    body = request.read(limit + 1)
    if len(body) > limit:
        raise RequestDataTooBig(f"the body is larger than {limit} bytes")
    return body


def header(request: HttpRequest, name: str) -> str | None:
    """A header that is stored (a content type, a ``Stream-Seq``, a producer's id):
    at most 255 characters, no NUL, or 400."""
    value = request.headers.get(name)
    if value is not None and (len(value) > MAX_NAME or "\x00" in value):
        raise BadRequest(f"{name} must be at most {MAX_NAME} characters, without NUL")
    return value


@method_decorator(csrf_exempt, name="dispatch")
class DurableStreamView(View):
    """``<mount>/<name>``: a stream, as a Durable Stream."""

    http_method_names = ["get", "head", "options", "put", "post", "delete"]

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        handler: Any = super().dispatch

        async def answer() -> HttpResponseBase:
            name = kwargs.get("name", "")
            if len(name) > MAX_NAME or "\x00" in name:
                return with_protocol_headers(
                    error_response(
                        400, f"a stream's name is at most {MAX_NAME} characters, without NUL"
                    )
                )
            if request.method in ("PUT", "POST", "DELETE") and request.COOKIES:
                # A write that carries cookies may be a page's, with its session: it
                # passes Django's CSRF check. One without (the protocol's clients, a
                # server) has no ambient credentials to abuse.
                refused_csrf = await sync_to_async(csrf_refusal)(request)
                if refused_csrf is not None:
                    return with_protocol_headers(refused_csrf)
            try:
                response = await handler(request, *args, **kwargs)
            except BadRequest as exc:
                response = error_response(400, str(exc))
            except RequestDataTooBig as exc:
                response = error_response(413, str(exc))
            except AppendError as exc:
                response = append_refused(exc)
            except STREAM_ERRORS as exc:
                response = error_for(exc)
            return with_protocol_headers(response)

        return answer()

    def options(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        # A CORS preflight. (Django leaves ``options`` out of its check that a view's
        # handlers are all async, and expects it to answer as the view does.)
        response = HttpResponse(status=204)
        response["Allow"] = ", ".join(METHODS)
        response["Access-Control-Allow-Methods"] = ", ".join(METHODS)
        response["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response["Access-Control-Max-Age"] = "86400"

        async def answer() -> HttpResponse:
            return response

        return answer()

    # Writes --------------------------------------------------------------------------

    async def put(self, request: HttpRequest, name: str) -> HttpResponseBase:
        config = config_of(request)
        body = await sync_to_async(request_body)(request)
        user = await request_user(request)
        owner = user if user is not None and user.is_authenticated else None

        def readable(source: Stream) -> None:
            # A fork copies its source's text: only for one who may read it.
            if not has_permission(user, source, "read"):
                raise PermissionDenied(refusal(source, "read"))

        def create() -> tuple[Found, bool]:
            if not has_permission(user, Stream(owner=owner), "create"):
                raise PermissionDenied(refusal(Stream(owner=owner), "create"))
            found, created = appends.create(name, config, body, owner=owner, check_source=readable)
            if not created and not has_permission(user, found.stream, "read"):
                raise PermissionDenied("you may not read this stream")
            return found, created

        found, created = await published_after(create)()
        response = HttpResponse(status=201 if created else 200, content_type=found.content_type)
        if created:
            response["Location"] = request.build_absolute_uri()
        response["Stream-Next-Offset"] = token(found.stream.length)
        response["Streaming-Id"] = str(found.stream.pk)
        if found.stream.is_finished:
            response["Stream-Closed"] = "true"
        return response

    async def post(self, request: HttpRequest, name: str) -> HttpResponseBase:
        close = is_true(request.headers.get("Stream-Closed"))
        producer = producer_of(request)
        seq = header(request, "Stream-Seq")
        body = await sync_to_async(request_body)(request)
        if not body and not close:
            raise BadRequest("an append needs a body (or Stream-Closed: true to close)")
        content_type = header(request, "Content-Type")
        if body and not content_type:
            raise BadRequest("an append with a body needs its Content-Type")
        done = await on_stream(
            request,
            name,
            "append",
            lambda found: appends.append(
                name,
                body,
                content_type,
                close=close,
                seq=seq,
                producer=producer,
                expect=found.stream.pk,
            ),
            touch=False,
        )
        # 200 for a producer's data appended, 204 for the rest (§5.2, §5.2.1).
        fresh = producer is not None and bool(body) and not done.duplicate
        response = HttpResponse(status=200 if fresh else 204)
        response["Stream-Next-Offset"] = token(done.length)
        if done.closed:
            response["Stream-Closed"] = "true"
        if done.producer is not None:
            response["Producer-Epoch"] = str(done.producer.epoch)
            response["Producer-Seq"] = str(done.producer.seq)
        return response

    async def delete(self, request: HttpRequest, name: str) -> HttpResponseBase:
        await on_stream(
            request,
            name,
            "delete",
            lambda found: appends.delete(name, expect=found.stream.pk),
            touch=False,
        )
        return HttpResponse(status=204)

    # Reads ---------------------------------------------------------------------------

    async def head(self, request: HttpRequest, name: str) -> HttpResponseBase:
        def metadata(found: Found) -> tuple[Found, StreamBody]:
            return found, body_of(found.stream, found.stream.length)

        found, body = await on_stream(request, name, "read", metadata, touch=False)
        response = HttpResponse(content_type=found.content_type)
        response["Cache-Control"] = "no-store"  # §5.5
        position_headers(response, body, body.length)
        del response["Stream-Up-To-Date"]
        if found.durable is not None:
            if found.durable.ttl is not None:
                response["Stream-TTL"] = str(found.durable.ttl)
            if found.durable.expires_at is not None:
                response["Stream-Expires-At"] = found.durable.expires_at.isoformat()
        return response

    async def get(self, request: HttpRequest, name: str) -> HttpResponseBase:
        live = request.GET.get("live")
        if live not in (None, "long-poll", "sse"):
            raise BadRequest(f"live must be long-poll or sse, not {live[:40]!r}")
        if live and "offset" not in request.GET:
            raise BadRequest(f"live={live} needs an offset")
        try:
            start = parse_start(request.GET.getlist("offset"))
        except InvalidOffset as exc:
            raise BadRequest(str(exc)) from None

        def reading(found: Found) -> Read:
            stream = found.stream
            offset = stream.length if start.offset is None else start.offset
            return Read(body_of(stream, offset), found.content_type, publicly_readable(stream))

        read = await on_stream(request, name, "read", reading, touch=True)
        body = read.body
        if live is None or (live == "long-poll" and (body.text or body.is_finished)):
            # What is there, at once: a catch-up, a long-poll that has something (or
            # the end) to give.
            response = data_response(request, read, start, body.text)
            if live is not None:
                if response.get("Stream-Closed") != "true":
                    response["Stream-Cursor"] = cursor(request.GET.get("cursor"))
                if not body.text:
                    no_content(response)
            return response
        following = await afollow(request, body.id, EVENTS, body.offset, resumes=live == "sse")
        if isinstance(following, HttpResponseBase):
            return following  # refused: the viewer limits, the database away
        if live == "sse":
            return self.sse(request, following, read)
        return await self.long_poll(request, following, read, start)

    async def long_poll(
        self, request: HttpRequest, following: Following, read: Read, start: Start
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
        now = replace(body, status=status, text=text, length=body.offset + len(text), error=error)
        # From ``now``, the text that came is the answer: from where the reader was.
        at = Start(body.offset, start.given)
        response = data_response(request, replace(read, body=now), at, text)
        if not text:
            no_content(response)
        if response.get("Stream-Closed") != "true":
            response["Stream-Cursor"] = cursor(request.GET.get("cursor"))
        return response

    def sse(self, request: HttpRequest, following: Following, read: Read) -> HttpResponseBase:
        binary = not appends.is_text(read.content_type)
        response = following.response(
            sse_events(following.viewer, following.body, read, request.GET.get("cursor")),
            "text/event-stream",
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        if binary:
            response["Stream-SSE-Data-Encoding"] = "base64"
        return response


def sse_line(line: str) -> str:
    """``data:`` and the line; ``data: `` before a line that starts with a space, which
    a client, stripping one space after the colon, then keeps."""
    return f"data: {line}\n" if line.startswith(" ") else f"data:{line}\n"


def sse_data(payload: str) -> str:
    """One ``data`` event, a ``data:`` line per line of the payload. SSE ends a line at
    CR, LF or CRLF alike: a CR reads back as a line feed
    (docs/protocol.md#durable-streams)."""
    lines = payload.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "event: data\n" + "".join(map(sse_line, lines)) + "\n"


def sse_payload(read: Read, text: str) -> str:
    """What a ``data`` event carries for ``text``: the text, a JSON array, base64."""
    data = read.data(text)
    if appends.is_text(read.content_type):
        return data.decode()
    return base64.b64encode(data).decode()


def sse_control(fields: dict[str, Any]) -> str:
    return f"event: control\ndata:{json.dumps(fields, separators=(',', ':'))}\n\n"


async def sse_events(
    viewer: Viewer, body: StreamBody, read: Read, echoed: str | None
) -> AsyncIterator[str]:
    """The stream as ``data`` and ``control`` events from the viewer's offset, until
    it is closed, or for ``SSE_MAX_AGE`` seconds (§10.2: the client reconnects from its
    last ``streamNextOffset``, and a CDN can collapse the new requests)."""
    end, status, error = body.offset, body.status, body.error
    keepalive = float(conf.get("SSE_KEEPALIVE"))
    max_age = float(conf.get("SSE_MAX_AGE"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_age
    async for batch in viewer.batches(keepalive=min(keepalive, max_age)):
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
                    out.append(sse_data(sse_payload(read, fresh)))
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
