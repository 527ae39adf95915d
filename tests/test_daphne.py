"""Real daphne (and uvicorn) processes over real sockets, on SQLite or Postgres
(DATABASE_URL)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from example_project.chat.llm import demo_body

from .servers import Browser, Daphne, FakeOpenAI, Uvicorn

pytestmark = [pytest.mark.daphne, pytest.mark.slow]

# What the driving browser sees depends on the server's handling of streaming bodies
# and of disconnects: both servers the docs name are tried.
servers = pytest.mark.parametrize("kind", [Daphne, Uvicorn], ids=["daphne", "uvicorn"])


def conversation(*turns: str) -> list[dict[str, str]]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


@servers
def test_the_drive_endpoint_streams_the_offline_model_piece_by_piece(
    daphne_factory, browser_factory, kind
):
    server = daphne_factory(kind, DEMO_MODEL_DELAY="0.01")
    browser = browser_factory(server.url)
    chat = browser.new_chat("What is streaming?")
    arrivals: list[bytes] = []
    expected = demo_body(conversation("What is streaming?"))
    with (
        httpx.Client(base_url=server.url, cookies=browser.http.cookies, timeout=30) as http,
        http.stream("POST", chat["drive_url"], headers=browser.headers()) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        for data in response.iter_raw():
            if not arrivals:
                # Piece by piece: the first piece is here while the reply is still
                # being written, not the whole of it at the end.
                first_seen = browser.body(chat["stream_id"])
            arrivals.append(data)
    assert b"".join(arrivals).decode() == expected
    assert first_seen["status"] == "streaming" and first_seen["length"] < len(expected)
    assert len(arrivals) > 10
    body = browser.wait_finished(chat["stream_id"])
    assert (body["status"], body["text"], body["length"]) == ("done", expected, len(expected))


def test_the_real_openai_client_against_a_compatible_server(daphne_factory, browser_factory):
    pieces = [
        "Sure",
        "!",
        " Here",
        " is",
        " a",
        " haiku",
        ":\n",
        "tokens",
        " fall",
        " 🍂",
        " 静か",
        ".",
    ]
    fake = FakeOpenAI(pieces, delay=0.01)
    try:
        server = daphne_factory(
            OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=fake.base_url, OPENAI_MODEL="test-model"
        )
        browser = browser_factory(server.url)
        chat = browser.new_chat("Write a haiku")
        response = browser.drive(chat)
        assert response.status_code == 200
        assert response.text == "".join(pieces)
        assert browser.wait_finished(chat["stream_id"])["text"] == "".join(pieces)
        sent = fake.requests[0]["body"]
        assert sent["model"] == "test-model" and sent["stream"] is True
        assert sent["messages"] == conversation("Write a haiku")

        follow = browser.post_json(f"/api/chats/{chat['id']}/messages/", {"prompt": "Another"})
        assert follow.status_code == 201, follow.text
        assert browser.drive(follow.json()).text == "".join(pieces)
        assert fake.requests[1]["body"]["messages"] == conversation(
            "Write a haiku", "".join(pieces), "Another"
        )
    finally:
        fake.close()


@servers
def test_hanging_up_does_not_stop_generation(daphne_factory, browser_factory, kind):
    server = daphne_factory(kind, DEMO_MODEL_DELAY="0.02")
    browser = browser_factory(server.url)
    chat = browser.new_chat("Tell me everything")
    expected = demo_body(conversation("Tell me everything"))
    received = b""
    with (
        httpx.Client(base_url=server.url, cookies=browser.http.cookies, timeout=30) as http,
        http.stream("POST", chat["drive_url"], headers=browser.headers()) as response,
    ):
        for data in response.iter_raw():
            received += data
            if len(received) > 40:
                break  # the browser tab closes: the connection is dropped
    hung_up_at = browser.body(chat["stream_id"])
    assert hung_up_at["status"] == "streaming"
    assert hung_up_at["length"] < len(expected)
    body = browser.wait_finished(chat["stream_id"], timeout=30)
    assert (body["status"], body["text"]) == ("done", expected)
    assert expected.encode().startswith(received)


def test_of_many_simultaneous_drivers_on_two_servers_exactly_one_streams(
    daphne_factory, browser_factory
):
    servers = [daphne_factory(DEMO_MODEL_DELAY="0.002"), daphne_factory(DEMO_MODEL_DELAY="0.002")]
    browser = browser_factory(servers[0].url)
    chat = browser.new_chat("Race!")
    headers = browser.headers()

    async def attempt(i: int) -> tuple[int, str]:
        server = servers[i % 2]
        async with httpx.AsyncClient(
            base_url=server.url, cookies=browser.http.cookies, timeout=30
        ) as http:
            response = await http.post(chat["drive_url"], headers=headers)
            return response.status_code, response.text

    async def race() -> list[tuple[int, str]]:
        return await asyncio.gather(*(attempt(i) for i in range(24)))

    outcomes = asyncio.run(race())
    codes = sorted(code for code, _ in outcomes)
    assert codes == [200] + [409] * 23, codes
    winner = next(text for code, text in outcomes if code == 200)
    expected = demo_body(conversation("Race!"))
    assert winner == expected
    assert all("the stream is already" in text for code, text in outcomes if code == 409)
    assert browser.wait_finished(chat["stream_id"])["text"] == expected


@pytest.mark.postgres
def test_ten_live_streams_on_a_pool_of_two_connections(daphne_factory):
    """A live stream holds no database connection: ten replies, each longer than a
    request waits for a pooled connection, on a pool of two. (When each drive kept its
    request's connection, the third one on got HTTP 500 after the pool's timeout.)"""
    server = daphne_factory(DATABASE_POOL_SIZE="2", E2E_POOL_TIMEOUT="1", DEMO_MODEL_DELAY="0.02")
    browsers = [Browser(server.url) for _ in range(10)]
    chats = [browser.new_chat(f"Question {i}") for i, browser in enumerate(browsers)]

    async def drive(browser: Browser, chat: dict) -> tuple[int, str]:
        async with httpx.AsyncClient(
            base_url=server.url, cookies=browser.http.cookies, timeout=60
        ) as http:
            response = await http.post(chat["drive_url"], headers=browser.headers())
            return response.status_code, response.text

    async def drive_all() -> list[tuple[int, str]]:
        return await asyncio.gather(*(drive(b, c) for b, c in zip(browsers, chats, strict=True)))

    outcomes = asyncio.run(drive_all())
    for i, ((code, text), browser, chat) in enumerate(zip(outcomes, browsers, chats, strict=True)):
        expected = demo_body(conversation(f"Question {i}"))
        assert (code, text) == (200, expected)
        body = browser.wait_finished(chat["stream_id"])
        assert (body["status"], body["text"]) == ("done", expected), "persisted"
    assert "Traceback" not in server.output()
    for browser in browsers:
        browser.close()
