"""The baseline of bench/capacity.py: a plain passthrough of the model's stream to the
browser, as one writes it with the SDK and nothing else (nothing persisted, no
database), on the same server and with the same client as the example's chat."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from django.http import HttpRequest, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from example_project.chat.llm import DEFAULT_OPENAI_MODEL, openai_client


@csrf_exempt
async def passthrough(request: HttpRequest) -> StreamingHttpResponse:
    async def pieces() -> AsyncIterator[str]:
        stream = await openai_client().chat.completions.create(
            model=os.environ.get("OPENAI_MODEL") or DEFAULT_OPENAI_MODEL,
            messages=[{"role": "user", "content": "Hello"}],
            stream=True,
        )
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield choice.delta.content

    return StreamingHttpResponse(pieces(), content_type="text/plain; charset=utf-8")


@csrf_exempt
async def passthrough_raw(request: HttpRequest) -> StreamingHttpResponse:
    """The same through streaming_app's adapter (no model object per chunk): what the
    adapter alone saves."""
    from streaming_app.sources.openai import chat_completion_text

    return StreamingHttpResponse(
        chat_completion_text(
            openai_client(),
            model=os.environ.get("OPENAI_MODEL") or DEFAULT_OPENAI_MODEL,
            messages=[{"role": "user", "content": "Hello"}],
        ),
        content_type="text/plain; charset=utf-8",
    )
