"""The openai adapter against an OpenAI-compatible server on loopback, with the real SDK."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from streaming_app.models import Status
from streaming_app.sources.openai import chat_completion_text
from streaming_app.streams import aget_stream_body

from .helpers import run_to_end
from .servers import FakeOpenAI

pytestmark = pytest.mark.django_db(transaction=True)

PIECES = ["Sure", "!", " Here", " is", " 🍂", " 静か", ".\n", "```py\n", "x = 1\n```"]
MESSAGES = [{"role": "user", "content": "Go"}]


@pytest.fixture
def model() -> Iterator[type[FakeOpenAI]]:
    started: list[FakeOpenAI] = []

    def start(*args, **kwargs) -> FakeOpenAI:
        started.append(FakeOpenAI(*args, **kwargs))
        return started[-1]

    yield start  # type: ignore[misc]
    for server in started:
        server.close()


def client(server: FakeOpenAI) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0)


async def test_the_text_arrives_exactly_and_the_request_is_the_sdks(model):
    server = model(PIECES, delay=0.002)
    async with client(server) as sdk:
        pieces = [p async for p in chat_completion_text(sdk, model="m", messages=MESSAGES)]
    assert "".join(pieces) == "".join(PIECES)
    [request] = server.requests
    assert request["body"] == {"model": "m", "messages": MESSAGES, "stream": True}


@pytest.mark.parametrize(
    ("fake", "raised", "public"),
    [
        (
            {"status": 429},
            openai.RateLimitError,
            "the model is over its rate limit; try again later",
        ),
        (
            {"status": 500},
            openai.InternalServerError,
            "the model answered with an error (HTTP 500)",
        ),
        ({"fail_after": 3}, openai.APIError, "the model reported an error"),
        (
            {"fail_after": 3, "failure": "drop"},
            openai.APIConnectionError,
            "the model could not be reached",
        ),
    ],
)
async def test_the_sdks_errors_are_raised_and_readers_get_plain_words(model, fake, raised, public):
    server = model(PIECES, **fake)
    async with client(server) as sdk:
        with pytest.raises(raised):
            async for _ in chat_completion_text(sdk, model="m", messages=MESSAGES):
                pass
        stream_id, status = await run_to_end(
            chat_completion_text(sdk, model="m", messages=MESSAGES)
        )
    body = await aget_stream_body(stream_id)
    assert (status, body.error) == (Status.ERROR, public)
    assert body.text == "".join(PIECES[: fake.get("fail_after", 0)])
    assert "10.0.0.9" not in (body.error or "")
