"""The app's URLs over HTTP: a stream's committed body, and cancelling it (the
events, Server-Sent, are :mod:`.sse`'s)."""

from __future__ import annotations

import asyncio

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase

from .. import conf
from ..models import Stream
from ..streams import aget_stream, body_of, cancel_stream, offset_parameter
from .jsonview import JsonView
from .responses import STREAM_ERRORS, act_on, error_for


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
