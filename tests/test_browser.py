"""The example's pages in a real Chromium: one visitor asks, another watches live."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from example_project.chat.llm import demo_answer

from .conftest import require

pytestmark = [pytest.mark.daphne, pytest.mark.slow, pytest.mark.browser]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium tries to reach Google at start.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def chromium() -> Iterator[Any]:
    require(
        shutil.which(CHROMIUM) is not None,
        f"needs Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)",
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def reply_texts(page: Any) -> list[str]:
    return list(page.locator(".reply").all_inner_texts())


def ask(context: Any, prompt: str) -> Any:
    """A visitor opens the chat page and sends ``prompt``; the page, now the chat's."""
    page = context.new_page()
    page.goto("/")
    page.fill("textarea[name=prompt]", prompt)
    page.click("button[type=submit]")
    page.wait_for_url("**/chats/*/")
    return page


def written_at_least(page: Any, characters: int) -> None:
    page.wait_for_function(
        f"(document.querySelector('.reply')?.textContent.length ?? 0) > {characters}"
    )


def test_a_visitor_watches_another_visitors_reply_live(daphne_factory, chromium, browser_factory):
    server = daphne_factory(DEMO_MODEL_DELAY="0.03")
    asker = ask(chromium.new_context(base_url=server.url), "Show me streaming")
    chat_url = asker.url

    watcher = chromium.new_context(base_url=server.url).new_page()
    watcher.goto(chat_url)
    expected = demo_answer([{"role": "user", "content": "Show me streaming"}])
    seen: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        texts = reply_texts(watcher)
        if texts:
            seen.append(len(texts[0]))
            if watcher.locator(".status").first.inner_text() == "done":
                break
        time.sleep(0.05)
    assert watcher.locator(".status").first.inner_text() == "done"
    # Both pages show exactly the answer; the watcher saw it grow, not just appear.
    assert reply_texts(watcher) == [expected]
    asker.locator(".status", has_text="done").wait_for(timeout=10_000)
    assert reply_texts(asker) == [expected]
    partial = sorted({n for n in seen if 0 < n < len(expected)})
    assert len(partial) >= 3, f"the watcher did not see the reply grow: {partial}"
    assert watcher.locator("#ask").is_hidden(), "a watcher may not write in someone's chat"

    stream_id = (
        browser_factory(server.url)
        .http.get(chat_url.replace("/chats/", "/api/chats/"))
        .json()["messages"][0]["stream_id"]
    )
    assert browser_factory(server.url).body(stream_id)["text"] == expected


def test_closing_the_tab_mid_reply_loses_nothing(daphne_factory, chromium):
    server = daphne_factory(DEMO_MODEL_DELAY="0.03")
    context = chromium.new_context(base_url=server.url)
    page = ask(context, "Keep going without me")
    written_at_least(page, 20)
    chat_url = page.url
    page.close()

    again = context.new_page()
    again.goto(chat_url)
    again.locator(".status", has_text="done").wait_for(timeout=30_000)
    expected = demo_answer([{"role": "user", "content": "Keep going without me"}])
    assert reply_texts(again) == [expected]


def test_the_stop_button_cancels_the_reply_and_keeps_what_was_written(
    daphne_factory, chromium, browser_factory
):
    server = daphne_factory(DEMO_MODEL_DELAY="0.03")
    page = ask(chromium.new_context(base_url=server.url), "Stop me halfway")
    written_at_least(page, 30)
    page.click("button.stop")
    page.locator(".status", has_text="cancelled").wait_for(timeout=10_000)
    shown = reply_texts(page)[0]
    expected = demo_answer([{"role": "user", "content": "Stop me halfway"}])
    assert 30 < len(shown) < len(expected)
    chat = browser_factory(server.url).http.get(page.url.replace("/chats/", "/api/chats/")).json()
    body = browser_factory(server.url).body(chat["messages"][0]["stream_id"])
    assert (body["status"], body["text"]) == ("cancelled", shown)
    page.locator("button.stop").wait_for(state="detached", timeout=5_000)
