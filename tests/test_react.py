"""The React hook in a real Chromium, in StrictMode: drive, reload mid-stream, watch
from a second browser; every copy of the text exact, no drive aborted by a re-mount.

React and esbuild come from the npm registry (tests/browser/package.json and its lock
file, installed once with ``npm ci``); the test page is bundled at test time.
"""

from __future__ import annotations

from typing import Any

import pytest

from example_project.chat.llm import demo_answer, demo_body, demo_reasoning

from .bundles import bundle, serve_page

pytestmark = [pytest.mark.daphne, pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="session")
def react_page(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The test page's bundle (React, react-dom and the hook), as JavaScript."""
    return bundle("react-page.jsx", tmp_path_factory.mktemp("react") / "page.js")


def serve_test_page(context: Any, script: str) -> None:
    serve_page(context, "react-test", "useStream", script)


def shown(page: Any) -> tuple[str, str]:
    return page.locator("#text").text_content(), page.locator("#status").text_content()


def test_use_stream_drives_resumes_after_a_reload_and_is_watched_exactly(
    daphne_factory, chromium, react_page, browser_factory
):
    server = daphne_factory(DEMO_MODEL_DELAY="0.05")
    prompt = "React to this"
    expected = demo_body([{"role": "user", "content": prompt}])

    owner = chromium.new_context(base_url=server.url)
    serve_test_page(owner, react_page)
    drives: list[str] = []
    failed: list[str] = []
    owner.on("request", lambda r: drives.append(r.url) if r.method == "POST" else None)
    sse: list[str] = []
    owner.on("requestfailed", lambda r: failed.append(r.url) if r.method == "POST" else None)
    page = owner.new_page()
    page.goto("/")  # the CSRF cookie
    chat = page.evaluate(
        """async (prompt) => {
          const token = document.cookie.match(/csrftoken=([^;]+)/)[1];
          const r = await fetch("/api/chats/", {method: "POST", body: JSON.stringify({prompt}),
            headers: {"Content-Type": "application/json", "X-CSRFToken": token}});
          return r.json();
        }""",
        prompt,
    )
    url = f"/react-test/?stream={chat['stream_id']}&drive={chat['drive_url']}"
    page.goto(url)
    page.wait_for_function("document.getElementById('text').textContent.length > 40")
    # StrictMode mounted the hook twice: one drive, never aborted by the re-mount.
    drives = [url for url in drives if url.endswith(chat["drive_url"])]
    assert len(drives) == 1, drives
    assert failed == []
    assert page.evaluate("window.__renders") > 2

    # A second browser (not the owner) opens it mid-reply and watches.
    viewer = chromium.new_context(base_url=server.url)
    serve_test_page(viewer, react_page)
    for context in (owner, viewer):
        context.on("request", lambda r: sse.append(r.url) if "/events/" in r.url else None)
    watching = viewer.new_page()
    watching.goto(f"/react-test/?stream={chat['stream_id']}&parts")

    # A component unmounted mid-reply lets its stream go: its websocket closes.
    leaving = viewer.new_page()
    with leaving.expect_websocket() as opened:
        leaving.goto(f"/react-test/?stream={chat['stream_id']}")
    socket = opened.value
    leaving.wait_for_function("document.getElementById('text').textContent.length > 0")
    assert leaving.locator("#status").text_content() == "streaming"
    leaving.evaluate("window.__unmount()")
    socket.wait_for_event("close", timeout=5_000)
    assert page.locator("#status").text_content() == "streaming", "it closed at the end"

    # The owner reloads mid-reply: the drive is taken (409), so it resumes by watching.
    partial, status = shown(page)
    assert status == "streaming" and 0 < len(partial) < len(expected)
    page.reload()
    page.wait_for_function(
        "document.getElementById('status').textContent === 'done'", timeout=30_000
    )
    watching.wait_for_function(
        "document.getElementById('status').textContent === 'done'", timeout=30_000
    )
    assert shown(page) == (expected, "done")
    assert shown(watching) == (expected, "done")
    # It asked for parts: the reasoning and the answer apart.
    conversation = [{"role": "user", "content": prompt}]
    assert watching.locator("#reasoning").text_content() == demo_reasoning(conversation)
    assert watching.locator("#answer").text_content() == demo_answer(conversation)
    assert page.locator("#error").text_content() == ""
    assert sse == [], "the pages fell back to Server-Sent Events: websockets were refused"
    body = browser_factory(server.url).body(chat["stream_id"])
    assert (body["status"], body["text"]) == ("done", expected)
