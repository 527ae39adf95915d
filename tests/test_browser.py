"""The example's pages in a real Chromium: one visitor asks, another watches live."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from example_project.chat.llm import demo_answer, demo_body, demo_reasoning

from .servers import FakeOpenAI, ScriptedOpenAI

pytestmark = [pytest.mark.daphne, pytest.mark.slow, pytest.mark.browser]


def asked(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def reply_texts(page: Any) -> list[str]:
    """The whole body of each reply on the page (its reasoning, then its answer), as its
    <stream-text> element holds it."""
    return list(page.eval_on_selector_all("stream-text", "els => els.map(e => e.text)"))


def reply_answers(page: Any) -> list[str]:
    """The answer of each reply on the page: the text of its text parts (the Markdown
    source of what it shows below the reasoning)."""
    return list(
        page.eval_on_selector_all(
            "stream-text",
            """els => els.map(e => e.parts.filter(p => p.type === "text")
                                        .map(p => p.text).join(""))""",
        )
    )


def shown_reasoning(page: Any) -> list[str]:
    """The reasoning each reply shows, folded above its answer, as a user who unfolds it
    reads it."""
    return list(
        page.eval_on_selector_all(
            "stream-text .stream-reasoning-text", "els => els.map(e => e.textContent)"
        )
    )


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


# wait_for_function's predicates are functions ("() => ..."): playwright runs a bare
# expression with the page's eval(), which the example's Content-Security-Policy refuses.
def written_at_least(page: Any, characters: int) -> None:
    page.wait_for_function(
        f"() => (document.querySelector('stream-text')?.text?.length ?? 0) > {characters}"
    )


def test_a_visitor_watches_another_visitors_reply_live(daphne_factory, chromium, browser_factory):
    server = daphne_factory(DEMO_MODEL_DELAY="0.03")
    asker = ask(chromium.new_context(base_url=server.url), "Show me streaming")
    chat_url = asker.url

    watcher = chromium.new_context(base_url=server.url).new_page()
    watcher.goto(chat_url)
    expected = demo_answer(asked("Show me streaming"))
    body = demo_body(asked("Show me streaming"))
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
    # Both pages show exactly the answer, below the reasoning; the watcher saw it grow,
    # not just appear.
    assert reply_answers(watcher) == [expected]
    assert reply_texts(watcher) == [body]
    wait_for_status(asker, "done", timeout=10_000)
    assert reply_answers(asker) == [expected]
    assert reply_texts(asker) == [body]
    for page in (watcher, asker):
        assert shown_reasoning(page) == [demo_reasoning(asked("Show me streaming"))]
    partial = sorted({n for n in seen if 0 < n < len(body)})
    assert len(partial) >= 3, f"the watcher did not see the reply grow: {partial}"
    assert watcher.locator("#ask").is_hidden(), "a watcher may not write in someone's chat"

    stream_id = (
        browser_factory(server.url)
        .http.get(chat_url.replace("/chats/", "/api/chats/"))
        .json()["messages"][0]["stream_id"]
    )
    assert browser_factory(server.url).body(stream_id)["text"] == body


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
    assert reply_answers(again) == [demo_answer(asked("Keep going without me"))]
    assert reply_texts(again) == [demo_body(asked("Keep going without me"))]


# Counts the websockets a page opens.
COUNT_SOCKETS = """
window.__sockets = [];
const RealWebSocket = window.WebSocket;
window.WebSocket = class extends RealWebSocket {
  constructor(url, ...rest) {
    super(url, ...rest);
    window.__sockets.push(String(url));
  }
};
"""


def drive_answers(context: Any) -> list[int]:
    """The statuses of the drives the context's pages post, as they come."""
    answers: list[int] = []
    context.on(
        "response",
        lambda r: answers.append(r.status) if urlsplit(r.url).path.endswith("/stream/") else None,
    )
    return answers


def test_a_model_that_fails_before_any_text_shows_its_error_from_the_drive_alone(
    daphne_factory, chromium
):
    fake = FakeOpenAI(["never"], status=400)
    try:
        server = daphne_factory(
            OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=fake.base_url, OPENAI_MODEL="test-model"
        )
        context = chromium.new_context(base_url=server.url)
        context.add_init_script(COUNT_SOCKETS)
        answers = drive_answers(context)
        page = ask(context, "Fail at once")
        wait_for_status(page, "error")
        status_line = page.locator("stream-text .stream-text-status").first.text_content()
        assert status_line == "error: the model answered with an error (HTTP 400)"
        assert answers == [502]
        # The drive's answer said how it ended: the page did not watch to learn it.
        assert page.evaluate("window.__sockets") == []
    finally:
        fake.close()


def test_the_stop_button_cancels_the_reply_and_keeps_what_was_written(
    daphne_factory, chromium, browser_factory
):
    server = daphne_factory(DEMO_MODEL_DELAY="0.03")
    page = ask(chromium.new_context(base_url=server.url), "Stop me halfway")
    written_at_least(page, 30)
    page.click("button.stop")
    wait_for_status(page, "cancelled", timeout=10_000)
    shown = reply_texts(page)[0]
    assert 30 < len(shown) < len(demo_body(asked("Stop me halfway")))
    chat = browser_factory(server.url).http.get(page.url.replace("/chats/", "/api/chats/")).json()
    body = browser_factory(server.url).body(chat["messages"][0]["stream_id"])
    assert (body["status"], body["text"]) == ("cancelled", shown)
    page.locator("button.stop").wait_for(state="detached", timeout=5_000)


def answer_begun(page: Any, characters: int = 0) -> None:
    """Wait until the page's reply shows more than ``characters`` of its answer."""
    page.wait_for_function(
        """(n) => (document.querySelector("stream-text")?.parts ?? [])
                   .filter((p) => p.type === "text")
                   .reduce((sum, p) => sum + p.text.length, 0) > n""",
        arg=characters,
    )


def reasoning_folded_above_the_answer(page: Any) -> None:
    """The reply shows its reasoning in a closed <details> (its text hidden until a user
    opens it), above the answer."""
    reasoning = page.locator("stream-text details.stream-reasoning")
    assert reasoning.count() == 1
    assert reasoning.locator("summary").inner_text() == "Reasoning"
    assert not reasoning.evaluate("d => d.open"), "the reasoning is not folded"
    assert not reasoning.locator(".stream-reasoning-text").is_visible()
    answer = page.locator("stream-text .stream-text-part")
    assert answer.count() == 1 and answer.is_visible()
    above = reasoning.bounding_box()
    below = answer.bounding_box()
    assert above and below and above["y"] + above["height"] <= below["y"]


def test_the_reasoning_is_shown_folded_above_the_answer_live_to_the_owner_and_a_viewer(
    daphne_factory, chromium, browser_factory
):
    server = daphne_factory(DEMO_MODEL_DELAY="0.03")
    prompt = "Think before you answer"
    reasoning, answer = demo_reasoning(asked(prompt)), demo_answer(asked(prompt))
    owner = ask(chromium.new_context(base_url=server.url), prompt)
    answer_begun(owner)
    assert reply_status(owner) == "streaming"
    reasoning_folded_above_the_answer(owner)
    assert shown_reasoning(owner) == [reasoning]

    # A viewer who comes in mid-reply gets the page rendered with the reasoning and the
    # answer so far, and follows on from there.
    viewer = chromium.new_context(base_url=server.url).new_page()
    viewer.goto(owner.url)
    answer_begun(viewer, 40)
    assert reply_status(viewer) == "streaming", "the viewer came too late to follow live"
    reasoning_folded_above_the_answer(viewer)
    assert shown_reasoning(viewer) == [reasoning]

    for page in (owner, viewer):
        wait_for_status(page, "done")
        reasoning_folded_above_the_answer(page)
        assert reply_answers(page) == [answer]
        assert reply_texts(page) == [reasoning + answer]
        assert page.locator("stream-text .stream-text-part h2").inner_text() == "What happens now"
        # A user unfolds it and reads the reasoning, as text.
        page.click("stream-text details.stream-reasoning summary")
        shown = page.locator("stream-text .stream-reasoning-text")
        assert shown.is_visible() and shown.inner_text() == reasoning
    chat = browser_factory(server.url).http.get(owner.url.replace("/chats/", "/api/chats/"))
    body = browser_factory(server.url).body(chat.json()["messages"][0]["stream_id"])
    assert body["text"] == reasoning + answer
    assert [entry["type"] for entry in body["parts"]] == ["reasoning", "text"]


def test_a_reload_mid_reply_resumes_every_part_exactly(daphne_factory, chromium):
    server = daphne_factory(DEMO_MODEL_DELAY="0.03")
    prompt = "Reload me"
    reasoning, answer = demo_reasoning(asked(prompt)), demo_answer(asked(prompt))
    page = ask(chromium.new_context(base_url=server.url), prompt)
    answer_begun(page, 30)
    page.reload()
    # The owner's page now watches from the offset it was rendered at.
    assert reply_status(page) == "streaming", "reloaded after the reply had ended"
    reasoning_folded_above_the_answer(page)
    answer_begun(page, 30)
    before = reply_answers(page)[0]
    assert len(before) < len(answer) and answer.startswith(before)
    wait_for_status(page, "done")
    reasoning_folded_above_the_answer(page)
    assert shown_reasoning(page) == [reasoning]
    assert reply_answers(page) == [answer]
    assert reply_texts(page) == [reasoning + answer]


def completion_chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    """One event of a streamed Chat Completion, as OpenAI sends it."""
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    return f"data: {json.dumps({**chunk, 'choices': [choice]})}\n\n"


def test_a_tool_call_is_shown_folded_with_its_name_and_arguments_as_text(daphne_factory, chromium):
    thought = "Look it <b>up</b> first."
    arguments = '{"q": "<img src=/injected-1 onerror=alert(1)>"}'
    model = ScriptedOpenAI(
        [
            completion_chunk({"role": "assistant", "reasoning_content": thought[:10]}),
            completion_chunk({"reasoning_content": thought[10:]}),
            completion_chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "web<search>", "arguments": arguments[:12]},
                        }
                    ]
                }
            ),
            completion_chunk(
                {"tool_calls": [{"index": 0, "function": {"arguments": arguments[12:]}}]}
            ),
            completion_chunk({"content": "Found <i>it</i>."}),
            completion_chunk({}, "tool_calls"),
            "data: [DONE]\n\n",
        ],
        delay=0.2,
    )
    try:
        server = daphne_factory(
            OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=model.base_url, OPENAI_MODEL="m"
        )
        context = chromium.new_context(base_url=server.url)
        dialogs: list[str] = []
        requests: list[str] = []
        context.on("request", lambda request: requests.append(request.url))
        context.on("dialog", lambda dialog: refuse(dialog, dialogs))
        page = ask(context, "Search for it")
        # Live: the call shows while the reply is still being written.
        call = page.locator("stream-text details.stream-tool-call")
        call.wait_for(state="attached")
        assert reply_status(page) == "streaming"
        wait_for_status(page, "done")
        viewer = context.new_page()
        viewer.goto(page.url)
        wait_for_status(viewer, "done")
        without_js = chromium.new_context(base_url=server.url, java_script_enabled=False)
        rendered = without_js.new_page()
        rendered.goto(page.url)

        for shown in (page, viewer, rendered):
            blocks = shown.eval_on_selector_all(
                # (Its first class: a rendered Markdown part has stream-text-markdown too.)
                "stream-text .stream-text-body > *",
                "els => els.map(e => e.classList[0])",
            )
            assert blocks == ["stream-reasoning", "stream-tool-call", "stream-text-part"]
            call = shown.locator("stream-text details.stream-tool-call")
            assert call.get_attribute("open") is None, "the call is not folded"
            assert call.locator("summary").inner_text() == "Tool web<search>"
            assert not call.locator(".stream-tool-arguments").is_visible()
            call.locator("summary").click()
            assert call.locator(".stream-tool-arguments").inner_text() == arguments
            assert shown.locator("stream-text .stream-reasoning-text").text_content() == thought
            assert shown.locator("stream-text .stream-text-part").inner_text() == "Found <i>it</i>."
            assert shown.locator("stream-text img, stream-text b, stream-text i").count() == 0
        assert page.evaluate("document.querySelector('stream-text').parts") == [
            {"type": "reasoning", "text": thought},
            {"type": "tool-call", "id": "call_1", "name": "web<search>", "arguments": arguments},
            {"type": "text", "text": "Found <i>it</i>."},
            {"type": "finish", "reason": "tool-calls", "usage": {}},
        ]
        time.sleep(0.3)
        assert dialogs == []
        assert not [url for url in requests if "/injected" in url]
    finally:
        model.close()


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
    assert "\r\n" in text and text == demo_body(asked(prompt))

    page = chromium.new_context(base_url=server.url, java_script_enabled=False).new_page()
    page.goto(url)
    # The server rendered each part itself (HTML turns "\r\n" into "\n" in the page):
    # the reasoning folded, above the answer.
    reasoning = page.locator("stream-text details.stream-reasoning")
    assert reasoning.locator("summary").text_content() == "Reasoning"
    assert reasoning.get_attribute("open") is None
    assert not reasoning.locator(".stream-reasoning-text").is_visible()
    shown = reasoning.locator(".stream-reasoning-text").text_content()
    assert shown == demo_reasoning(asked(prompt)).replace("\r\n", "\n")
    shown = page.locator("stream-text .stream-text-part").text_content()
    assert shown == demo_answer(asked(prompt)).replace("\r\n", "\n")
    assert page.locator("stream-text .stream-text-status").text_content() == "done"
    assert page.locator("stream-text b").count() == 0, "the model's HTML was parsed"

    # With JavaScript, the element holds the stream's exact text (it reads the body
    # where the page's text differs) and renders it as Markdown.
    live = chromium.new_context(base_url=server.url).new_page()
    live.goto(url)
    wait_for_status(live, "done")
    live.wait_for_function("() => document.querySelector('stream-text h2') !== null")
    assert reply_texts(live) == [text]
    assert live.locator("stream-text h2").inner_text() == "What happens now"
    assert live.locator("stream-text ol > li").count() == 3


@pytest.mark.parametrize(
    ("csrf", "cookie", "header"),
    [
        (
            {"CSRF_COOKIE_NAME": "othercsrf", "CSRF_HEADER_NAME": "HTTP_X_XSRF_TOKEN"},
            "othercsrf",
            "X-XSRF-TOKEN",
        ),
        ({"CSRF_COOKIE_HTTPONLY": True}, "csrftoken", "X-CSRFToken"),
    ],
    ids=["renamed-cookie-and-header", "httponly-cookie"],
)
def test_the_element_drives_and_stops_where_the_project_keeps_its_csrf_token_elsewhere(
    daphne_factory, chromium, csrf, cookie, header
):
    """The page's <stream-text> sends the token the template tag gave it, in the header
    the project reads, whatever the project calls its cookie or if scripts cannot read
    it: the drive works, and so does the Stop button of a page that only watches."""
    server = daphne_factory(DEMO_MODEL_DELAY="0.03", E2E_SETTINGS=json.dumps(csrf))
    prompt = "Stop me when you like"
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/").status_code == 200
        created = http.post(
            "/api/chats/",
            content=json.dumps({"prompt": prompt}),
            headers={header: http.cookies[cookie]},
        )
        assert created.status_code == 201, created.text
        chat = created.json()
        cookies = dict(http.cookies)
    context = chromium.new_context(base_url=server.url)
    context.add_cookies(
        [
            {"name": name, "value": value, "url": server.url, "httpOnly": name == cookie}
            for name, value in cookies.items()
        ]
    )
    page = context.new_page()
    page.goto(chat["url"])  # the owner's page: its reply is still to be driven
    written_at_least(page, 30)
    page.reload()  # now the page watches the reply, which its first visit drives
    wait_for_status(page, "streaming")
    written_at_least(page, 40)
    page.click("button.stop")
    wait_for_status(page, "cancelled", timeout=10_000)
    shown = reply_texts(page)[0]
    assert 30 < len(shown) < len(demo_body(asked(prompt)))
    with httpx.Client(base_url=server.url, cookies=cookies) as owner:
        body = owner.get(f"/api/streams/{chat['stream_id']}/").json()
    assert (body["status"], body["text"]) == ("cancelled", shown)


def test_a_code_fence_split_over_many_pieces_renders_as_one_block_without_flicker(
    daphne_factory, chromium
):
    server = daphne_factory(DEMO_MODEL_DELAY="0.02")
    page = ask(chromium.new_context(base_url=server.url), "Show me some code")
    # Mid-fence: the unfinished fence is shown as a code block already.
    page.wait_for_function(
        "() => document.querySelector('stream-text')?.text?.includes('async for piece')"
    )
    page.wait_for_function("() => document.querySelector('stream-text pre code') !== null")
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

    expected = demo_answer(asked("Show me some code"))
    assert reply_answers(page) == [expected]
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
    page.wait_for_function("() => document.querySelector('stream-text .markdown-block') !== null")
    # A viewer renders it from the database too.
    viewer = context.new_page()
    viewer.goto(page.url)
    wait_for_status(viewer, "done")
    viewer.wait_for_function("() => document.querySelector('stream-text .markdown-block') !== null")

    for shown in (page, viewer):
        assert injection in reply_texts(shown)[0], "the reply is not the model's text"
        # The reasoning quotes the injection too: as text.
        assert shown_reasoning(shown)[0].startswith(f"The visitor asks “{injection[:60]}…”")
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


# Where the driving response is cut: in the reasoning, or in the answer.
@pytest.mark.parametrize("cut_after", [150, 3000], ids=["in-the-reasoning", "in-the-answer"])
def test_a_dropped_drive_goes_on_by_watching_from_where_it_was(
    daphne_factory, chromium, browser_factory, cut_after
):
    server = daphne_factory(DEMO_MODEL_DELAY="0.02")
    context = chromium.new_context(base_url=server.url)
    # The driving response is cut mid-stream, as a proxy or a flaky network would.
    context.add_init_script(
        """
        const realFetch = window.fetch;
        window.fetch = async (url, init) => {
          const response = await realFetch(url, init);
          const path = new URL(url, location.href).pathname;
          if (!(init?.method === "POST" && path.endsWith("/stream/"))) return response;
          const reader = response.body.getReader();
          let seen = 0;
          const body = new ReadableStream({
            async pull(controller) {
              const { value, done } = await reader.read();
              if (done) return controller.close();
              controller.enqueue(value);
              seen += value.length;
              // Cut once past CUT_AFTER bytes and once the page shows some of them:
              // a first read that brings more than CUT_AFTER bytes at once (a busy
              // machine coalesces the first pieces) waits for the next read.
              const shown = document.querySelector("stream-text").text.length;
              if (seen > CUT_AFTER && shown > 0) {
                window.__cutAt = seen;
                window.__shownAtCut = shown;
                reader.cancel();
                controller.error(new TypeError("network error"));
              }
            },
          });
          return new Response(body, { status: response.status, headers: response.headers });
        };
        """.replace("CUT_AFTER", str(cut_after))
    )
    page = ask(context, "Cut me off")
    wait_for_status(page, "done")
    reasoning, answer = demo_reasoning(asked("Cut me off")), demo_answer(asked("Cut me off"))
    assert page.evaluate("window.__cutAt") is not None, "the drive was never cut"
    shown_at_cut = page.evaluate("window.__shownAtCut")
    if cut_after < 1000:
        assert 0 < shown_at_cut < len(reasoning), "not cut in the reasoning"
    else:
        assert len(reasoning) < shown_at_cut < len(reasoning + answer), "not cut in the answer"
    # Watching went on from the exact offset, in the right part: no gap, no repeat.
    assert reply_answers(page) == [answer]
    assert shown_reasoning(page) == [reasoning]
    assert reply_texts(page) == [reasoning + answer]
    stream_id = (
        browser_factory(server.url)
        .http.get(page.url.replace("/chats/", "/api/chats/"))
        .json()["messages"][0]["stream_id"]
    )
    assert browser_factory(server.url).body(stream_id)["text"] == reasoning + answer


class HeldOpenAI(FakeOpenAI):
    """A FakeOpenAI that holds the first answer to reach its second piece until
    ``release()``: a stream that stays live for as long as a test needs."""

    def __init__(self, pieces: list[str]) -> None:
        self.held = False
        self.released = asyncio.Event()
        super().__init__(pieces)

    async def before_event(self, index: int) -> None:
        if index == 1 and not self.held:
            self.held = True
            await self.released.wait()

    def release(self) -> None:
        self.loop.call_soon_threadsafe(self.released.set)


def test_a_busy_server_is_waited_out_then_the_drive_succeeds(
    daphne_factory, chromium, browser_factory
):
    pieces = ["Your ", "turn ", "came."]
    model = HeldOpenAI(pieces)
    try:
        server = daphne_factory(
            OPENAI_API_KEY="sk-test",
            OPENAI_BASE_URL=model.base_url,
            OPENAI_MODEL="m",
            E2E_STREAMING_APP='{"MAX_LIVE_STREAMS": 1, "RETRY_AFTER": 1}',
        )
        # Another visitor's reply takes the server's only live stream, and keeps it
        # until the visitor below has been refused.
        other = browser_factory(server.url)
        busy_chat = other.new_chat("Keep the server busy")
        holder = threading.Thread(target=other.drive, args=(busy_chat,))
        holder.start()
        while not model.held:
            time.sleep(0.02)

        context = chromium.new_context(base_url=server.url)
        answers = drive_answers(context)
        page = ask(context, "Wait your turn")
        while not answers:
            page.wait_for_timeout(20)
        model.release()
        wait_for_status(page, "done")
        holder.join()
        assert answers[0] == 503, answers
        assert answers[-1] == 200, answers
        assert reply_answers(page) == ["".join(pieces)]
    finally:
        model.close()


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
    assert reply_answers(watcher) == [demo_answer(asked("No sockets here"))]
    assert shown_reasoning(watcher) == [demo_reasoning(asked("No sockets here"))]
    assert reply_texts(watcher) == [demo_body(asked("No sockets here"))]
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
    expected = demo_body(asked("Swap me in"))
    assert reply_texts(page) == [expected]
    shown = page.locator("stream-text .stream-text-part").text_content()
    assert shown == demo_answer(asked("Swap me in"))
    assert shown_reasoning(page) == [demo_reasoning(asked("Swap me in"))]
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


# A server whose every socket fails with a bug: each opens, then closes with 1011.
FAILING_SERVER = """
window.__sockets = 0;
window.WebSocket = class extends EventTarget {
  constructor(url) {
    super();
    window.__sockets++;
    setTimeout(() => {
      this.onopen?.({});
      this.onclose?.({ code: 1011, reason: "internal error" });
    }, 10);
  }
  close() {}
};
"""


def test_a_server_that_keeps_failing_is_tried_a_few_times_then_the_page_says_so(
    daphne_factory, chromium
):
    server, asker = reply_being_written(daphne_factory, chromium, "Fail for me")
    context = chromium.new_context(base_url=server.url)
    context.add_init_script(FAILING_SERVER)
    watcher = context.new_page()
    watcher.goto(asker.url)
    watcher.locator(".stream-text-status", has_text="the server failed").wait_for(timeout=30_000)
    assert "internal error" in watcher.locator(".stream-text-status").first.text_content()
    retries = watcher.evaluate(
        "import('/static/streaming_app/client.js').then(m => m.SERVER_ERROR_RETRIES)"
    )
    # The first socket and its retries, then no more: it has given up.
    assert watcher.evaluate("window.__sockets") == 1 + retries == 4
    watcher.wait_for_timeout(1000)
    assert watcher.evaluate("window.__sockets") == 4


def test_a_watcher_acknowledges_what_it_has_taken_and_ends_exact(daphne_factory, chromium):
    """client.js's watch() opens its socket with ``?ack=1`` and acknowledges the text as
    it takes it, never past what it has: with a window far shorter than the reply, the
    server sends no further than the window past the last acknowledgement, and the
    watcher still ends with the whole reply."""
    body = demo_body(asked("Acknowledge me"))
    window = 64
    assert len(body) > 10 * window
    server = daphne_factory(
        DEMO_MODEL_DELAY="0.01", E2E_STREAMING_APP=json.dumps({"VIEWER_BUFFER_CHARS": window})
    )
    asker = ask(chromium.new_context(base_url=server.url), "Acknowledge me")
    written_at_least(asker, 10)
    watcher = chromium.new_context(base_url=server.url).new_page()
    sockets: list[str] = []
    # In the order the page sent and received them: ("ack", offset, offset) and
    # ("text", offset, end).
    frames: list[tuple[str, int, int]] = []

    def sent(frame: str) -> None:
        message = json.loads(frame)
        assert message["type"] == "ack"
        frames.append(("ack", message["offset"], message["offset"]))

    def received(frame: str) -> None:
        message = json.loads(frame)
        if message["type"] == "text":
            offset = message["offset"]
            frames.append(("text", offset, offset + len(message["text"])))

    def on_socket(socket: Any) -> None:
        sockets.append(socket.url)
        socket.on("framesent", sent)
        socket.on("framereceived", received)

    watcher.on("websocket", on_socket)
    watcher.goto(asker.url)
    wait_for_status(watcher, "done")
    assert reply_texts(watcher) == [body]
    assert len(sockets) == 1 and "ack=1" in sockets[0]
    # The socket's window starts where it resumed (the text the page was rendered with).
    acked = reach = frames[0][1]
    for kind, offset, end in frames:
        if kind == "ack":
            assert reach >= offset > acked, "an ack past what came, or not forward"
            acked = offset
        else:
            assert end - acked <= window, "sent past the window"
            reach = end
    assert reach == len(body) and acked > frames[0][1]
