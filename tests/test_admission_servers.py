"""Admission on real servers (docs/deployment.md#limits-and-quotas): two uvicorn
processes counting drives together in one Redis cache, and the example's guests,
chats and messages, from one client address and from another."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from .servers import Browser, Uvicorn

pytestmark = [pytest.mark.daphne, pytest.mark.slow]


def follow_up(browser: Browser, chat: dict[str, Any], prompt: str) -> dict[str, Any]:
    response = browser.post_json(f"/api/chats/{chat['id']}/messages/", {"prompt": prompt})
    assert response.status_code == 201, response.text
    return {**chat, **response.json()}


def test_two_processes_sharing_a_redis_cache_count_a_users_drives_together(
    daphne_factory, private_redis
):
    env = {
        "REDIS_URL": private_redis.url,  # the example's CACHES: RedisCache
        "DEMO_MODEL_DELAY": "0",
        "E2E_STREAMING_APP": json.dumps({"DRIVE_RATES_PER_USER": ["3/m"]}),
    }
    a, b = daphne_factory(Uvicorn, **env), daphne_factory(Uvicorn, **env)
    browser = Browser(a.url)
    try:
        chat = browser.new_chat("one")
        codes = []
        for i, server in enumerate([a, b, a, b]):
            if i:
                chat = follow_up(browser, chat, f"and {i}")
            response = browser.drive(chat, server.url)
            codes.append(response.status_code)
            if response.status_code == 200:
                assert browser.wait_finished(chat["stream_id"])["status"] == "done"
        # Three a minute in all, not three on each: the fourth, on b, is refused.
        assert codes == [200, 200, 200, 429]
        assert "too many drives per user: the limit is 3 per minute" in response.json()["error"]
        assert int(response.headers["Retry-After"]) >= 1
        assert browser.body(chat["stream_id"])["status"] == "pending"
        assert browser.drive(chat, a.url).status_code == 429  # and on a
        keys = private_redis.client().keys("*LIMITER/drive/user:*")
        assert keys, "the count is not in the shared Redis"
    finally:
        browser.close()


def guest_post(base_url: str, path: str, body: dict[str, Any], address: str) -> httpx.Response:
    """A visitor without a session from ``address``: the CSRF cookie of a page view,
    then a POST; a fresh client each time, so each is a new guest."""
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=base_url, transport=transport, timeout=30) as client:
        assert client.get("/").status_code == 200
        token = client.cookies.get("csrftoken") or ""
        return client.post(path, content=json.dumps(body), headers={"X-CSRFToken": token})


def ai_chat(prompt: str) -> dict[str, Any]:
    """A useChat request for a new chat."""
    message = {"id": "m1", "role": "user", "parts": [{"type": "text", "text": prompt}]}
    return {"id": str(uuid.uuid4()), "messages": [message], "trigger": "submit-message"}


def test_the_example_mints_guests_from_one_address_only_within_its_limit(daphne_factory):
    server = daphne_factory(
        Uvicorn,
        DEMO_MODEL_DELAY="0",
        E2E_SETTINGS=json.dumps({"CHAT_GUEST_RATES_PER_ADDRESS": ["3/h"]}),
    )
    codes = [
        guest_post(server.url, "/api/chats/", {"prompt": "hi"}, "127.0.0.1").status_code
        for _ in range(3)
    ]
    assert codes == [201, 201, 201]
    refused = guest_post(server.url, "/api/chats/", {"prompt": "hi"}, "127.0.0.1")
    assert refused.status_code == 429
    assert refused.json()["error"].startswith(
        "too many guests from this address: the limit is 3 per hour"
    )
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    # A new chat through the AI SDK's endpoint mints a guest too: refused the same way.
    through_ai = guest_post(server.url, "/api/ai/chat", ai_chat("hi"), "127.0.0.1")
    assert through_ai.status_code == 429 and "guests" in through_ai.json()["error"]
    # Another address is not held up.
    elsewhere = guest_post(server.url, "/api/chats/", {"prompt": "hi"}, "127.0.0.2")
    assert elsewhere.status_code == 201, elsewhere.text


def test_the_example_limits_a_users_new_chats_and_follow_ups(daphne_factory):
    server = daphne_factory(
        Uvicorn,
        DEMO_MODEL_DELAY="0",
        E2E_SETTINGS=json.dumps(
            {"CHAT_CHAT_RATES_PER_USER": ["2/h"], "CHAT_MESSAGE_RATES_PER_USER": ["1/h"]}
        ),
    )
    browser = Browser(server.url)
    try:
        chat = browser.new_chat("first")
        browser.new_chat("second")
        third = browser.post_json("/api/chats/", {"prompt": "third"})
        assert third.status_code == 429
        assert "too many chats per user: the limit is 2 per hour" in third.json()["error"]
        assert browser.post_json("/api/ai/chat", ai_chat("third")).status_code == 429
        assert browser.drive(chat).status_code == 200
        browser.wait_finished(chat["stream_id"])
        chat = follow_up(browser, chat, "more")
        assert browser.drive(chat).status_code == 200
        browser.wait_finished(chat["stream_id"])
        again = browser.post_json(f"/api/chats/{chat['id']}/messages/", {"prompt": "more"})
        assert again.status_code == 429
        assert "too many messages per user" in again.json()["error"]
        assert "Retry-After" in again.headers
    finally:
        browser.close()


def test_a_redis_cache_that_does_not_answer_admits_drives_after_its_timeout(
    daphne_factory, private_redis
):
    env = {
        "REDIS_URL": private_redis.url,
        "DEMO_MODEL_DELAY": "0",
        "E2E_STREAMING_APP": json.dumps(
            {"DRIVE_RATES_PER_USER": ["1/m"], "RATE_LIMIT_TIMEOUT": 0.5}
        ),
    }
    server = daphne_factory(Uvicorn, **env)
    browser = Browser(server.url)
    try:
        chat = browser.new_chat("one")
        private_redis.pause()  # accepts connections, answers nothing
        try:
            response = browser.drive(chat)
            assert response.status_code == 200
            assert browser.wait_finished(chat["stream_id"])["status"] == "done"
            chat = follow_up(browser, chat, "two")  # over 1/m, were it counted
            assert browser.drive(chat).status_code == 200
        finally:
            private_redis.resume()
        log = server.output()
        assert "rate limits and quotas not applied to this drive" in log, log[-3000:]
        # Redis back: the limit holds again. (The drives admitted meanwhile may have been
        # counted once Redis answered the increments it had been sent: then at once.)
        browser.wait_finished(chat["stream_id"])
        codes = []
        for prompt in ("three", "four"):
            chat = follow_up(browser, chat, prompt)
            codes.append(browser.drive(chat).status_code)
            if codes[-1] == 429:
                break
            browser.wait_finished(chat["stream_id"])
        assert codes in ([429], [200, 429])
    finally:
        browser.close()
