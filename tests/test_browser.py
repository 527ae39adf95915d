"""The example's pages in a real Chromium: one visitor asks, another watches live."""

from __future__ import annotations

import time
from typing import Any

import pytest

from example_project.chat.llm import demo_answer

pytestmark = [pytest.mark.daphne, pytest.mark.slow, pytest.mark.browser]


def reply_texts(page: Any) -> list[str]:
    """The text of each reply on the page, as its <stream-text> element holds it."""
    return list(page.eval_on_selector_all("stream-text", "els => els.map(e => e.text)"))


def reply_status(page: Any) -> str | None:
    return page.locator("stream-text").first.get_attribute("status")


def wait_for_status(page: Any, status: str, timeout: float = 30_000) -> None:
    page.locator(f"stream-text[status={status}]").first.wait_for(timeout=timeout)


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
        f"(document.querySelector('stream-text')?.text?.length ?? 0) > {characters}"
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
            if reply_status(watcher) == "done":
                break
        time.sleep(0.05)
    assert reply_status(watcher) == "done"
    # Both pages show exactly the answer; the watcher saw it grow, not just appear.
    assert reply_texts(watcher) == [expected]
    wait_for_status(asker, "done", timeout=10_000)
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
    wait_for_status(again, "done")
    expected = demo_answer([{"role": "user", "content": "Keep going without me"}])
    assert reply_texts(again) == [expected]


def test_the_stop_button_cancels_the_reply_and_keeps_what_was_written(
    daphne_factory, chromium, browser_factory
):
    server = daphne_factory(DEMO_MODEL_DELAY="0.03")
    page = ask(chromium.new_context(base_url=server.url), "Stop me halfway")
    written_at_least(page, 30)
    page.click("button.stop")
    wait_for_status(page, "cancelled", timeout=10_000)
    shown = reply_texts(page)[0]
    expected = demo_answer([{"role": "user", "content": "Stop me halfway"}])
    assert 30 < len(shown) < len(expected)
    chat = browser_factory(server.url).http.get(page.url.replace("/chats/", "/api/chats/")).json()
    body = browser_factory(server.url).body(chat["messages"][0]["stream_id"])
    assert (body["status"], body["text"]) == ("cancelled", shown)
    page.locator("button.stop").wait_for(state="detached", timeout=5_000)


def finished_chat(browser_factory: Any, server: Any, prompt: str) -> tuple[str, str]:
    """A chat whose reply was driven to its end over HTTP: its page's path and the reply."""
    visitor = browser_factory(server.url)
    chat = visitor.new_chat(prompt)
    assert visitor.drive(chat).status_code == 200
    body = visitor.wait_finished(chat["stream_id"])
    assert body["status"] == "done"
    return chat["url"], body["text"]


def test_the_template_tag_shows_the_committed_text_without_javascript(
    daphne_factory, chromium, browser_factory
):
    server = daphne_factory(DEMO_MODEL_DELAY="0")
    prompt = "Line one\r\nline two <b>not bold</b> & more"
    url, text = finished_chat(browser_factory, server, prompt)
    assert "\r\n" in text

    page = chromium.new_context(base_url=server.url, java_script_enabled=False).new_page()
    page.goto(url)
    # The server rendered the text itself (HTML turns "\r\n" into "\n" in the page).
    shown = page.locator("stream-text .stream-text-body").text_content()
    assert shown == text.replace("\r\n", "\n")
    assert page.locator("stream-text .stream-text-status").text_content() == "done"
    assert page.locator("stream-text b").count() == 0, "the model's HTML was parsed"

    # With JavaScript, the element holds the stream's exact text (it reads the body
    # where the page's text differs) and renders it as Markdown.
    live = chromium.new_context(base_url=server.url).new_page()
    live.goto(url)
    wait_for_status(live, "done")
    live.wait_for_function("document.querySelector('stream-text h2') !== null")
    assert reply_texts(live) == [text]
    assert live.locator("stream-text h2").inner_text() == "What happens now"
    assert live.locator("stream-text ol > li").count() == 3


def test_a_code_fence_split_over_many_pieces_renders_as_one_block_without_flicker(
    daphne_factory, chromium
):
    server = daphne_factory(DEMO_MODEL_DELAY="0.02")
    page = ask(chromium.new_context(base_url=server.url), "Show me some code")
    # Mid-fence: the unfinished fence is shown as a code block already.
    page.wait_for_function(
        "document.querySelector('stream-text')?.text?.includes('async for piece')"
    )
    page.wait_for_function("document.querySelector('stream-text pre code') !== null")
    assert "```" not in page.locator("stream-text .stream-text-body").inner_text()
    # Mark the blocks above the code: if a later piece re-rendered the whole message,
    # the marks would be gone.
    page.evaluate(
        "document.querySelectorAll('stream-text .markdown-block')"
        ".forEach((b, i) => { if (!b.querySelector('pre')) b.dataset.mark = i; })"
    )
    marked = page.locator("stream-text .markdown-block[data-mark]").count()
    assert marked >= 5
    wait_for_status(page, "done")

    expected = demo_answer([{"role": "user", "content": "Show me some code"}])
    assert reply_texts(page) == [expected]
    assert page.locator("stream-text pre").count() == 1
    code = page.locator("stream-text pre code").text_content()
    assert code == expected.split("```python\n")[1].split("```")[0]
    assert page.locator("stream-text .markdown-block[data-mark]").count() == marked


def refuse(dialog: Any, seen: list[str]) -> None:
    seen.append(dialog.message)
    dialog.dismiss()


def test_html_the_model_writes_never_runs(daphne_factory, chromium, browser_factory):
    server = daphne_factory(DEMO_MODEL_DELAY="0")
    # The demo model repeats the prompt in its reply, as a model can be talked into doing.
    injection = (
        '<img src="/injected-1" onerror="alert(1)"><script>alert(2)</script>'
        "[a](javascript:alert(3)) ![b](/injected-2) "
        '<a href="javascript:alert(4)">c</a><iframe src="/injected-3"></iframe>'
    )
    assert len(injection) <= 200  # the demo model quotes up to 200 characters
    context = chromium.new_context(base_url=server.url)
    dialogs: list[str] = []
    requests: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    context.on("dialog", lambda dialog: refuse(dialog, dialogs))
    page = ask(context, injection)
    wait_for_status(page, "done")
    page.wait_for_function("document.querySelector('stream-text .markdown-block') !== null")
    # A viewer renders it from the database too.
    viewer = context.new_page()
    viewer.goto(page.url)
    wait_for_status(viewer, "done")
    viewer.wait_for_function("document.querySelector('stream-text .markdown-block') !== null")

    for shown in (page, viewer):
        assert injection in reply_texts(shown)[0], "the reply is not the model's text"
        html = shown.locator("stream-text .stream-text-body").inner_html()
        assert "onerror" not in shown.evaluate(
            "[...document.querySelectorAll('stream-text *')]"
            ".flatMap(e => [...e.attributes].map(a => a.name)).join(' ')"
        )
        assert shown.locator("stream-text img, stream-text script, stream-text iframe").count() == 0
        hrefs = shown.evaluate(
            "[...document.querySelectorAll('stream-text a')].map(a => a.getAttribute('href'))"
        )
        assert not [h for h in hrefs if h and "javascript" in h.lower()], hrefs
        # The model's HTML is shown as the text it is.
        assert "&lt;img" in html
    # After inline HTML, marked passes plain text through as "escaped": not model text.
    rendered = page.evaluate(
        """import("/static/streaming_app/markdown.js").then((m) =>
          m.renderMarkdown("x <kbd> <b/x>bold</b> <p/onclick=alert(1)> `<i>` **<u>**"))"""
    )
    for tag in ("<b", "<p/", "<p ", "<i>", "<u>", "<kbd>"):
        assert tag not in rendered, rendered
    time.sleep(0.5)
    assert dialogs == []
    assert not [url for url in requests if "/injected" in url]


def test_a_dropped_drive_goes_on_by_watching_from_where_it_was(
    daphne_factory, chromium, browser_factory
):
    server = daphne_factory(DEMO_MODEL_DELAY="0.02")
    context = chromium.new_context(base_url=server.url)
    # The driving response is cut mid-stream, as a proxy or a flaky network would.
    context.add_init_script(
        """
        const realFetch = window.fetch;
        window.fetch = async (url, init) => {
          const response = await realFetch(url, init);
          if (!(init?.method === "POST" && String(url).endsWith("/stream/"))) return response;
          const reader = response.body.getReader();
          let seen = 0;
          const body = new ReadableStream({
            async pull(controller) {
              const { value, done } = await reader.read();
              if (done) return controller.close();
              controller.enqueue(value);
              seen += value.length;
              if (seen > 150) {
                window.__cutAt = seen;
                reader.cancel();
                controller.error(new TypeError("network error"));
              }
            },
          });
          return new Response(body, { status: response.status, headers: response.headers });
        };
        """
    )
    page = ask(context, "Cut me off")
    wait_for_status(page, "done")
    expected = demo_answer([{"role": "user", "content": "Cut me off"}])
    assert page.evaluate("window.__cutAt") is not None, "the drive was never cut"
    assert page.evaluate("window.__cutAt") < len(expected.encode())
    assert reply_texts(page) == [expected]
    stream_id = (
        browser_factory(server.url)
        .http.get(page.url.replace("/chats/", "/api/chats/"))
        .json()["messages"][0]["stream_id"]
    )
    assert browser_factory(server.url).body(stream_id)["text"] == expected


def test_a_busy_server_is_waited_out_then_the_drive_succeeds(
    daphne_factory, chromium, browser_factory
):
    server = daphne_factory(
        DEMO_MODEL_DELAY="0.01", E2E_STREAMING_APP='{"MAX_LIVE_STREAMS": 1, "RETRY_AFTER": 1}'
    )
    # Another visitor's reply takes the server's only live stream.
    other = browser_factory(server.url)
    busy_chat = other.new_chat("Keep the server busy")
    import threading

    holder = threading.Thread(target=other.drive, args=(busy_chat,))
    holder.start()
    while other.body(busy_chat["stream_id"])["status"] == "pending":
        time.sleep(0.02)

    context = chromium.new_context(base_url=server.url)
    answers: list[int] = []
    context.on(
        "response",
        lambda r: answers.append(r.status) if r.url.endswith("/stream/") else None,
    )
    page = ask(context, "Wait your turn")
    wait_for_status(page, "done")
    holder.join()
    assert answers[0] == 503, answers
    assert answers[-1] == 200, answers
    assert reply_texts(page) == [demo_answer([{"role": "user", "content": "Wait your turn"}])]


# A network that does not carry websockets: every socket fails before it opens.
NO_WEBSOCKETS = """
window.__sockets = 0;
window.WebSocket = class extends EventTarget {
  constructor(url) {
    super();
    window.__sockets++;
    setTimeout(() => this.onclose?.({ code: 1006, reason: "" }), 10);
  }
  close() {}
};
"""


def reply_being_written(daphne_factory: Any, chromium: Any, prompt: str) -> tuple[Any, Any]:
    """A server, and a visitor's page whose reply to ``prompt`` has begun."""
    server = daphne_factory(DEMO_MODEL_DELAY="0.03")
    asker = ask(chromium.new_context(base_url=server.url), prompt)
    written_at_least(asker, 10)
    return server, asker


def test_a_viewer_without_websockets_follows_over_server_sent_events(daphne_factory, chromium):
    server, asker = reply_being_written(daphne_factory, chromium, "No sockets here")

    context = chromium.new_context(base_url=server.url)
    context.add_init_script(NO_WEBSOCKETS)
    events: list[str] = []
    context.on("request", lambda r: events.append(r.url) if "/events/" in r.url else None)
    watcher = context.new_page()
    watcher.goto(asker.url)
    written_at_least(watcher, 20)
    assert reply_status(watcher) == "streaming", "the watcher came too late to follow live"
    wait_for_status(watcher, "done")
    expected = demo_answer([{"role": "user", "content": "No sockets here"}])
    assert reply_texts(watcher) == [expected]
    assert watcher.evaluate("window.__sockets") >= 2
    assert events, "the watcher never opened the stream's events"


def test_the_element_stops_when_removed_and_follows_when_swapped_in(daphne_factory, chromium):
    server, asker = reply_being_written(daphne_factory, chromium, "Swap me in")

    context = chromium.new_context(base_url=server.url)
    page = context.new_page()
    closed: list[Any] = []
    opened: list[Any] = []

    def on_socket(socket: Any) -> None:
        opened.append(socket)
        socket.on("close", lambda _: closed.append(socket))

    page.on("websocket", on_socket)
    with page.expect_websocket():
        page.goto(asker.url)
    assert len(opened) == 1 and not closed
    # Removed (as htmx swaps a fragment out): its socket closes, its text stops growing.
    page.evaluate("window.__removed = document.querySelector('stream-text'); __removed.remove()")
    deadline = time.monotonic() + 5
    while not closed and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert closed == opened
    assert page.evaluate("__removed.status") == "streaming", "removed after the reply ended"
    frozen = page.evaluate("__removed.text")
    page.wait_for_timeout(300)
    assert page.evaluate("__removed.text") == frozen

    # Swapped back in as fresh server HTML (what htmx does): it follows to the end.
    fragment = page.evaluate("fetch(location.href).then(r => r.text())")
    page.evaluate(
        """(html) => {
          const doc = new DOMParser().parseFromString(html, "text/html");
          const fresh = doc.querySelector("stream-text");
          fresh.removeAttribute("markdown");  // the plain-text path, piece by piece
          const holder = document.getElementById("messages");
          holder.insertAdjacentHTML("beforeend", fresh.outerHTML);
        }""",
        fragment,
    )
    wait_for_status(page, "done")
    expected = demo_answer([{"role": "user", "content": "Swap me in"}])
    assert reply_texts(page) == [expected]
    assert page.locator("stream-text .stream-text-body").text_content() == expected
    assert len(opened) == 2

    # A finished element moved elsewhere keeps its text and ends once.
    page.evaluate(
        """() => {
          window.__ends = 0;
          const el = document.querySelector("stream-text");
          el.addEventListener("stream-end", () => window.__ends++);
          document.body.prepend(el);
        }"""
    )
    page.wait_for_timeout(300)
    assert reply_texts(page) == [expected]
    assert page.evaluate("__ends") == 0
    assert len(opened) == 2
