"""The model behind the example chat: OpenAI (or any compatible server), or offline demo.

With ``OPENAI_API_KEY`` set, replies stream from the official ``openai`` client
(Chat Completions, ``stream=True``), which also reads ``OPENAI_BASE_URL``; the model is
``OPENAI_MODEL``. Without a key, a built-in demo model streams a canned answer at a
human pace, so that the example works on a fresh machine.
"""

from __future__ import annotations

import asyncio
import os
import re
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from openai import AsyncOpenAI

Messages = list[dict[str, str]]

DEFAULT_OPENAI_MODEL = "gpt-4o-mini"


def reply_pieces(messages: Messages) -> AsyncIterator[str]:
    """The reply to a conversation, piece by piece, from the configured model."""
    if os.environ.get("OPENAI_API_KEY"):
        return openai_pieces(messages)
    return demo_pieces(messages)


# One client per event loop (per server process), as the SDK advises: making one per
# request costs its SSL context and its connection pool each time.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncOpenAI] = (
    weakref.WeakKeyDictionary()
)


def openai_client() -> AsyncOpenAI:
    """The running event loop's client."""
    from openai import AsyncOpenAI

    loop = asyncio.get_running_loop()
    if loop not in _clients:
        _clients[loop] = AsyncOpenAI()
    return _clients[loop]


async def close_openai_client() -> None:
    """Close the running event loop's client (at the server's shutdown)."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.close()


def openai_pieces(messages: Messages) -> AsyncIterator[str]:
    from streaming_app.sources.openai import chat_completion_text

    return chat_completion_text(
        openai_client(),
        model=os.environ.get("OPENAI_MODEL") or DEFAULT_OPENAI_MODEL,
        messages=messages,
    )


def demo_answer(messages: Messages) -> str:
    """The offline model's whole answer to a conversation (deterministic)."""
    prompt = messages[-1]["content"].strip()
    quoted = prompt if len(prompt) <= 200 else prompt[:200] + "…"
    turn = sum(1 for m in messages if m["role"] == "user")
    return (
        f"You asked: “{quoted}” (message {turn} of this chat).\n\n"
        "I am the **offline demo model**: set `OPENAI_API_KEY` to talk to a real one. "
        "Until then, here is what streaming looks like. Each word you see arrived on its "
        "own, and was saved to the database in batches, at sentence ends.\n\n"
        "## What happens now\n\n"
        "1. Your browser reads this answer over plain HTTP, token by token\n"
        "2. The server writes it to the database a few times a second\n"
        "3. Anyone with the link sees the committed text live, over a websocket\n\n"
        "```python\n"
        "async def generate(append):\n"
        "    async for piece in model.stream(prompt):\n"
        "        await append(piece)\n"
        "```\n\n"
        "Close this tab halfway and reopen the chat: the answer is still being written, "
        "and nothing is lost. 日本語もそのまま届きます。 Emoji too: 🎉👩🏽‍💻.\n"
    )


_PIECES = re.compile(r"\s*\S+|\s+")


async def demo_pieces(messages: Messages) -> AsyncIterator[str]:
    delay = float(getattr(settings, "DEMO_MODEL_DELAY", 0.03))
    for piece in _PIECES.findall(demo_answer(messages)):
        if delay:
            await asyncio.sleep(delay)
        yield piece
