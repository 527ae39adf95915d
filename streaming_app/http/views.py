"""The app's URLs over HTTP: a stream's committed body, and cancelling it (the
events, Server-Sent, are :mod:`.sse`'s)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase

from .. import conf
from ..fanout.outbox import published_after
from ..models import Stream
from ..permissions import Action, load_stream
from ..streams import (
    StreamId,
    aget_stream,
    body_of,
    cancel_stream,
    expire_if_stale,
    offset_parameter,
)
from .jsonview import JsonView
from .responses import STREAM_ERRORS, error_for, request_user

T = TypeVar("T")


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
