"""Following a stream over HTTP: a viewer of the process's hub for a request, and the
streaming response that writes its events and lets it go however the response ends
(Server-Sent Events, the AI SDK's resume)."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from django.http import HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase

from ..clients import request_viewer_key
from ..fanout.events import Encoding
from ..fanout.hub import Hub, follow
from ..fanout.viewer import Viewer
from ..streams import StreamBody, StreamId
from .responses import STREAM_ERRORS, error_for, request_user


@dataclass
class Following:
    """A request's viewer, registered with ``hub``, and its snapshot ``body``."""

    hub: Hub
    viewer: Viewer
    body: StreamBody

    def leave(self) -> None:
        self.hub.leave(self.viewer)

    def response(self, content: AsyncIterator[str], content_type: str) -> StreamingHttpResponse:
        """The response writing ``content`` (made of the viewer's events); the viewer
        leaves when it ends, fails or is closed, or, should it never be iterated (the
        client gone before its first byte: its ``finally`` would not run), when it is
        collected."""

        async def written() -> AsyncIterator[str]:
            try:
                async for chunk in content:
                    yield chunk
            finally:
                self.leave()

        chunks = written()
        weakref.finalize(chunks, _leave_soon, asyncio.get_running_loop(), self.hub, self.viewer)
        return StreamingHttpResponse(chunks, content_type=content_type)


def _leave_soon(loop: asyncio.AbstractEventLoop, followed: Hub, viewer: Viewer) -> None:
    """Let ``viewer`` go from ``followed`` on ``loop``, from any thread (a response
    collected without having been iterated)."""
    with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to leave
        loop.call_soon_threadsafe(followed.leave, viewer)


async def afollow(
    request: HttpRequest,
    stream_id: StreamId,
    encoding: Encoding,
    offset: int | str | Callable[[], int | str],
    *,
    resumes: bool = False,
) -> Following | HttpResponseBase:
    """A viewer of ``stream_id`` for ``request``'s user, from ``offset`` (or what
    ``offset()`` says, read from the request once its user is known: it may raise
    InvalidOffset), counted against the user's (or session's) and the address's viewer
    limits; refused, the JSON answer to send instead (400, 403, 404, 429, 503:
    :func:`error_for`)."""
    user = await request_user(request)
    try:
        start = offset() if callable(offset) else offset
        followed, viewer, body = await follow(
            user, request_viewer_key(request, user), encoding, stream_id, start, resumes=resumes
        )
    except STREAM_ERRORS as exc:
        return error_for(exc)
    return Following(followed, viewer, body)
