"""Cost caps of the example against real server processes: the model's output cap as
the model server receives it, guests' replies stopping on disconnect under the policy
(a registered user's going on), and a deleted chat's live reply stopped and its link
dead, websocket included."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest

from example_project.chat.llm import demo_body

from .servers import ROOT, Browser, FakeOpenAI, Uvicorn, server_env, ws_watch

pytestmark = [pytest.mark.daphne, pytest.mark.slow]


def model_env(fake: FakeOpenAI, **env: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_MODEL": "test-model",
        **env,
    }


@pytest.mark.parametrize("field", ["max_completion_tokens", "max_tokens"])
def test_the_model_is_asked_for_at_most_the_output_cap_and_a_cut_reply_ends_length(
    daphne_factory, browser_factory, field
):
    pieces = [f"word{i} " for i in range(10)]
    fake = FakeOpenAI(pieces)
    try:
        env = model_env(fake, CHAT_MAX_OUTPUT_TOKENS="4")
        if field == "max_tokens":
            env["OPENAI_MAX_TOKENS_FIELD"] = "max_tokens"
        server = daphne_factory(Uvicorn, **env)
        browser = browser_factory(server.url)
        chat = browser.new_chat("Write a lot")
        with httpx.Client(base_url=server.url, cookies=browser.http.cookies, timeout=30) as c:
            response = c.post(chat["drive_url"] + "?parts=1", headers=browser.headers())
        assert response.status_code == 200, response.text
        (sent,) = fake.requests
        assert sent["body"][field] == 4
        other = {"max_completion_tokens", "max_tokens"} - {field}
        assert not other & set(sent["body"]), "one field, the one the project chose"
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert "".join(line.get("text", "") for line in lines) == "".join(pieces[:4])
        finishes = [p for line in lines for p in line.get("parts", ()) if p["type"] == "finish"]
        assert [p["reason"] for p in finishes] == ["length"]
        assert lines[-1] == {"type": "status", "status": "done", "error": None}
        assert browser.wait_finished(chat["stream_id"])["status"] == "done"
    finally:
        fake.close()


def signed_in(e2e_db: str, base_url: str, username: str) -> Browser:
    """A browser signed in as a registered user made in the servers' database."""
    code = (
        "from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY,"
        " get_user_model\n"
        "from django.contrib.sessions.backends.db import SessionStore\n"
        f"user = get_user_model().objects.create_user({username!r})\n"
        "session = SessionStore()\n"
        "session[SESSION_KEY] = str(user.pk)\n"
        "session[BACKEND_SESSION_KEY] = 'django.contrib.auth.backends.ModelBackend'\n"
        "session[HASH_SESSION_KEY] = user.get_session_auth_hash()\n"
        "session.create()\n"
        "print(session.session_key)\n"
    )
    made = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=server_env(e2e_db),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    browser = Browser(base_url)
    browser.http.cookies.set("sessionid", made.stdout.strip().splitlines()[-1])
    return browser


def hang_up_after_first_bytes(server_url: str, browser: Browser, chat: dict[str, Any]) -> bytes:
    """Drive the chat's reply and drop the connection once some of it has come."""
    received = b""
    with (
        httpx.Client(base_url=server_url, cookies=browser.http.cookies, timeout=30) as http,
        http.stream("POST", chat["drive_url"], headers=browser.headers()) as response,
    ):
        assert response.status_code == 200
        for data in response.iter_raw():
            received += data
            if len(received) > 40:
                break  # the tab closes
    return received


def test_a_guests_reply_stops_when_they_hang_up_and_a_registered_users_goes_on(
    daphne_factory, e2e_db
):
    server = daphne_factory(Uvicorn, DEMO_MODEL_DELAY="0.02", CHAT_GUESTS_STOP_ON_DISCONNECT="1")
    guest = Browser(server.url)
    member = signed_in(e2e_db, server.url, "member")
    try:
        outcomes = {}
        for who, browser in (("guest", guest), ("member", member)):
            chat = browser.new_chat("Tell me everything")
            expected = demo_body([{"role": "user", "content": "Tell me everything"}])
            received = hang_up_after_first_bytes(server.url, browser, chat)
            hung_up_at = browser.body(chat["stream_id"])
            # Hung up before the reply's end (the guest's may be stopped already).
            assert hung_up_at["status"] in {"streaming", "cancelled"}
            assert hung_up_at["length"] < len(expected)
            body = browser.wait_finished(chat["stream_id"])
            assert expected.startswith(body["text"]) and body["text"].encode().startswith(received)
            outcomes[who] = (body["status"], body["text"] == expected)
        assert outcomes == {"guest": ("cancelled", False), "member": ("done", True)}
    finally:
        guest.close()
        member.close()


def test_deleting_a_chat_stops_its_live_reply_tells_its_viewer_and_kills_its_link(
    daphne_factory, browser_factory
):
    server = daphne_factory(Uvicorn, DEMO_MODEL_DELAY="0.05")
    owner = browser_factory(server.url)
    chat = owner.new_chat("Tell me everything")
    expected = demo_body([{"role": "user", "content": "Tell me everything"}])
    arrivals: list[tuple[float, int]] = []
    watched: dict[str, Any] = {}

    def watch() -> None:
        watched.update(asyncio.run(ws_watch(server.url, chat["stream_id"], arrivals=arrivals)))

    viewer = threading.Thread(target=watch)
    received = b""
    with (
        httpx.Client(base_url=server.url, cookies=owner.http.cookies, timeout=30) as http,
        http.stream("POST", chat["drive_url"], headers=owner.headers()) as response,
    ):
        chunks = response.iter_raw()
        received += next(chunks)
        viewer.start()
        deadline = time.monotonic() + 30
        while not arrivals:  # the viewer has had committed text: it is attached
            assert time.monotonic() < deadline, "the viewer saw nothing"
            time.sleep(0.02)
        deleted = owner.http.delete(f"/api/chats/{chat['id']}/", headers=owner.headers())
        assert (deleted.status_code, deleted.json()) == (200, {"id": chat["id"], "deleted": True})
        for data in chunks:  # the drive ends: its run was stopped
            received += data
    viewer.join(30)
    assert not viewer.is_alive()
    assert len(received) < len(expected.encode()), "the reply was cut short"
    assert watched["code"] == 4404 and "done" not in watched["statuses"]
    assert owner.http.get(chat["url"]).status_code == 404
    assert owner.http.get(f"/api/chats/{chat['id']}/").status_code == 404
    assert owner.http.get(f"/api/streams/{chat['stream_id']}/").status_code == 404
    late = asyncio.run(ws_watch(server.url, chat["stream_id"]))
    assert late["code"] == 4404


@pytest.mark.browser
def test_in_chromium_a_full_chat_says_so_older_messages_are_linked_and_the_owner_deletes_it(
    daphne_factory, chromium
):
    server = daphne_factory(DEMO_MODEL_DELAY="0", CHAT_MAX_MESSAGES="2", CHAT_PAGE_MESSAGES="1")
    page = chromium.new_context(base_url=server.url).new_page()
    page.goto("/")
    for prompt in ("First question", "Second question", "One too many"):
        page.fill("textarea[name=prompt]", prompt)
        page.click("button[type=submit]")
        if prompt == "One too many":
            break
        page.wait_for_url("**/chats/*/")
        page.locator("stream-text[status=done]").nth(
            0 if prompt == "First question" else 1
        ).wait_for()
        page.locator("button[type=submit]:not([disabled])").wait_for()
    full = "this chat has reached its limit of 2 messages: start a new chat"
    page.locator("#error", has_text=full).wait_for(timeout=10_000)
    chat_url = page.url

    page.reload()
    assert page.locator("#error").inner_text() == full
    assert page.locator(".prompt").all_inner_texts() == ["Second question"]
    page.click("#older")
    assert page.locator(".prompt").all_inner_texts() == ["First question"]
    assert page.locator("#older").count() == 0 and not page.locator("#ask").is_visible()
    assert page.locator("stream-text[status=done]").count() == 1, "shown, not driven"

    page.click("#newer")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete-chat")
    page.wait_for_url(server.url + "/")
    assert page.goto(chat_url).status == 404
