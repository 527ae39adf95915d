"""Static files from the ASGI process: whitenoise's middleware, async-capable.

whitenoise 6's middleware is synchronous only: in an ASGI project Django runs it, and
with it every request under it (each drive, each stream), through a thread of its own,
and the file it serves is a synchronous iterator, which Django's ASGI handler reads whole
in a thread with a warning. This one answers in the event loop: a static file is read in
chunks in a worker thread, and every other request goes on untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from asgiref.sync import markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase
from whitenoise.middleware import WhiteNoiseFileResponse
from whitenoise.middleware import WhiteNoiseMiddleware as SyncWhiteNoiseMiddleware

CHUNK = 64 * 1024


async def chunks(file: Any) -> AsyncIterator[bytes]:
    """The file's bytes, read in a thread a chunk at a time; the file closed after."""
    read = sync_to_async(file.read, thread_sensitive=False)
    try:
        while chunk := await read(CHUNK):
            yield chunk
    finally:
        await sync_to_async(file.close, thread_sensitive=False)()


async def nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing (a HEAD, a 304)


class WhiteNoiseMiddleware(SyncWhiteNoiseMiddleware):
    """``whitenoise.middleware.WhiteNoiseMiddleware`` for ASGI projects (its settings)."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]]) -> None:
        super().__init__(get_response)
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if self.autorefresh:  # DEBUG: looked up on each request, on disk
            static_file = await sync_to_async(self.find_file, thread_sensitive=False)(
                request.path_info
            )
        else:
            static_file = self.files.get(request.path_info)
        if static_file is None:
            return await self.get_response(request)
        answer = await sync_to_async(static_file.get_response, thread_sensitive=False)(
            request.method, request.META
        )
        body = chunks(answer.file) if answer.file is not None else nothing()
        response = WhiteNoiseFileResponse(body, status=int(answer.status))
        del response["content-type"]
        for key, value in answer.headers:
            response[key] = value
        return response
