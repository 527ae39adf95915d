"""The model behind the example chat: OpenAI (or any compatible server), or offline demo.

With ``OPENAI_API_KEY`` set, replies stream from the official ``openai`` client
(Chat Completions, ``stream=True``), which also reads ``OPENAI_BASE_URL``; the model is
``OPENAI_MODEL``; its reasoning (from servers that send it), tool calls and finish come
as parts (streaming_app.parts). Without a key, a built-in demo model streams a short
reasoning, then a canned answer, at a human pace, so that the example works on a fresh
machine.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from django.conf import settings

from streaming_app.loops import PerLoop
from streaming_app.parts import Part, Reasoning

if TYPE_CHECKING:
    from openai import AsyncOpenAI

Messages = list[dict[str, str]]
Pieces = AsyncIterator[str | Part]

DEFAULT_OPENAI_MODEL = "gpt-4o-mini"


def reply_pieces(messages: Messages) -> Pieces:
    """The reply to a conversation, piece by piece (text, and parts: its reasoning),
    from the configured model."""
    if os.environ.get("OPENAI_API_KEY"):
        return openai_pieces(messages)
    return demo_pieces(messages)


# One client per event loop (per server process), as the SDK advises: making one per
# request costs its SSL context and its connection pool each time.
def _new_client() -> AsyncOpenAI:
    from openai import AsyncOpenAI

    return AsyncOpenAI()


_clients: PerLoop[AsyncOpenAI] = PerLoop(_new_client)


def openai_client() -> AsyncOpenAI:
    """The running event loop's client."""
    return _clients.get()


async def close_openai_client() -> None:
    """Close the running event loop's client (at the server's shutdown)."""
    client = _clients.pop()
    if client is not None:
        await client.close()


def openai_pieces(messages: Messages) -> Pieces:
    from streaming_app.sources.openai import chat_completion_parts

    # The cost cap: the model writes no more than this (the reply ends with finish
    # reason "length").
    cap = {str(settings.CHAT_MAX_OUTPUT_TOKENS_FIELD): int(settings.CHAT_MAX_OUTPUT_TOKENS)}
    return chat_completion_parts(
        openai_client(),
        model=os.environ.get("OPENAI_MODEL") or DEFAULT_OPENAI_MODEL,
        messages=messages,
        **cap,
    )


def _prompt(messages: Messages, limit: int) -> str:
    prompt = messages[-1]["content"].strip()
    return prompt if len(prompt) <= limit else prompt[:limit] + "…"


def demo_reasoning(messages: Messages) -> str:
    """What the offline model 'thinks' before it answers (deterministic): shown apart,
    folded, above the answer (a Reasoning part)."""
    turn = sum(1 for m in messages if m["role"] == "user")
    return (
        f"The visitor asks “{_prompt(messages, 60)}” (message {turn}). "
        "I am the offline demo model: no real thinking here, just a tour of streaming "
        "with a heading, a list and a code block."
    )


def demo_answer(messages: Messages) -> str:
    """The offline model's whole answer to a conversation (deterministic), after its
    reasoning (:func:`demo_reasoning`): the text part of its reply."""
    quoted = _prompt(messages, 200)
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
# Reasoning comes a few words at a time, as reasoning summaries do.
_REASONING_PIECES = re.compile(r"(?:\s*\S+){1,4}|\s+")


def demo_body(messages: Messages) -> str:
    """The whole body of the offline model's reply, as a viewer that does not ask for
    parts reads it: its reasoning, then its answer."""
    return demo_reasoning(messages) + demo_answer(messages)


async def demo_pieces(messages: Messages) -> Pieces:
    """The offline model's reply a word at a time: its reasoning, then its answer."""
    delay = float(getattr(settings, "DEMO_MODEL_DELAY", 0.03))
    pieces: list[str | Part] = [
        Reasoning(piece) for piece in _REASONING_PIECES.findall(demo_reasoning(messages))
    ]
    pieces += _PIECES.findall(demo_answer(messages))
    for piece in pieces:
        if delay:
            await asyncio.sleep(delay)
        yield piece
