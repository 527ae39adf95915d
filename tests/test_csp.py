"""The example's Content-Security-Policy in a real Chromium: the chat, ``<stream-text>``,
its Markdown and reasoning, and a ``useChat`` page work under it and break none of its
rules, and a script injected into the page is refused."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from example_project.chat.llm import demo_answer, demo_body, demo_reasoning

from .bundles import bundle, node_modules
from .bundles import serve_page as serve_test_page
from .test_browser import asked, reply_answers, reply_status, reply_texts, shown_reasoning

pytestmark = [pytest.mark.daphne, pytest.mark.slow, pytest.mark.browser]

# What the page's policy refuses, as the page hears of it (the event every refusal
# fires), from before its first script.
LISTEN = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push({directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample});
});
"""


# playwright evaluates a string expression that waits with the page's eval(), which the
# policy refuses: a function it compiles itself.
FUNCTION = "() => "


class Watched:
    """A browser context whose pages record the policy's refusals, from the page's
    event and from the console (where Chromium also reports them)."""

    def __init__(self, chromium: Any, base_url: str) -> None:
        self.context = chromium.new_context(base_url=base_url)
        self.context.add_init_script(LISTEN)
        self.console: list[str] = []
        self.pages: list[Any] = []

    def new_page(self) -> Any:
        page = self.context.new_page()
        page.on("console", lambda message: self.console.append(message.text))
        self.pages.append(page)
        return page

    def violations(self) -> list[Any]:
        seen = [v for page in self.pages for v in page.evaluate("window.__violations")]
        said = [text for text in self.console if "Content Security Policy" in text]
        return seen + said


def policy_of(response: Any) -> str:
    policy = response.headers.get("content-security-policy")
    assert policy, "the page has no Content-Security-Policy"
    return str(policy)


def test_the_chat_works_under_the_policy_and_breaks_none_of_its_rules(daphne_factory, chromium):
    server = daphne_factory(DEMO_MODEL_DELAY="0.03")
    prompt = "Show me streaming under a policy"
    owner = Watched(chromium, server.url)
    page = owner.new_page()
    policy = policy_of(page.goto("/"))
    for rule in ("script-src 'self'", "style-src 'self'", "connect-src 'self'"):
        assert rule in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    page.fill("textarea[name=prompt]", prompt)
    page.click("button[type=submit]")  # chat.js posts, then the element drives
    page.wait_for_url("**/chats/*/")

    # Another visitor follows it live over the websocket.
    watcher = Watched(chromium, server.url)
    watching = watcher.new_page()
    assert policy_of(watching.goto(page.url)) == policy
    body = demo_body(asked(prompt))
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while reply_status(watching) != "done" and time.monotonic() < deadline:
        seen.update(len(text) for text in reply_texts(watching))
        time.sleep(0.05)
    assert reply_status(watching) == "done"
    assert len({n for n in seen if 0 < n < len(body)}) >= 3, "the watcher did not see it grow"
    page.locator("stream-text[status=done]").wait_for(timeout=10_000)

    for shown in (page, watching):
        assert reply_answers(shown) == [demo_answer(asked(prompt))]
        assert reply_texts(shown) == [body]
        # Markdown rendered: the answer's bold, heading, list and code block.
        for tag in ("strong", "h2", "ol li", "pre code"):
            assert shown.locator(f"stream-text .stream-text-part {tag}").count() > 0, tag
        # The reasoning folded above the answer, laid out by stream-text.css.
        assert shown_reasoning(shown) == [demo_reasoning(asked(prompt))]
        assert shown.locator("details.stream-reasoning").get_attribute("open") is None
        assert (
            shown.eval_on_selector(".stream-reasoning-text", "e => getComputedStyle(e).whiteSpace")
            == "pre-wrap"
        )
        # The page's own stylesheet applies (it was an inline <style>).
        assert shown.eval_on_selector(".prompt", "e => getComputedStyle(e).whiteSpace") == (
            "pre-wrap"
        )
    assert owner.violations() == [] and watcher.violations() == []


def test_a_script_injected_into_the_page_is_refused(daphne_factory, chromium):
    server = daphne_factory(DEMO_MODEL_DELAY="0")
    visitor = Watched(chromium, server.url)
    page = visitor.new_page()
    page.goto("/")
    # As HTML that slipped past every escape would put them there: an inline script,
    # an event handler attribute, a javascript: URL.
    page.evaluate(
        """() => {
          const script = document.createElement("script");
          script.textContent = "window.__ran = 'inline script'";
          document.body.append(script);
          const holder = document.createElement("div");
          holder.innerHTML = '<img src="/static/nothing-here.png" onerror="window.__ran = \\'onerror\\'">';
          document.body.append(holder);
        }"""
    )
    # Each refusal is reported when the browser would have run it: once both are, had
    # they been allowed they would have run.
    page.wait_for_function(FUNCTION + "window.__violations.length >= 2", timeout=10_000)
    assert page.evaluate("window.__ran") is None
    directives = {v["directive"] for v in page.evaluate("window.__violations")}
    assert directives == {"script-src-elem", "script-src-attr"}, directives


@pytest.fixture(scope="module")
def aisdk_script(tmp_path_factory: pytest.TempPathFactory) -> str:
    node_modules()
    return bundle("aisdk-page.jsx", tmp_path_factory.mktemp("aisdk-csp") / "page.js")


def test_a_use_chat_page_streams_under_the_policy(daphne_factory, chromium, aisdk_script):
    server = daphne_factory(DEMO_MODEL_DELAY="0.02")
    prompt = "Stream to useChat under a policy"
    visitor = Watched(chromium, server.url)
    page = visitor.new_page()
    # The test page, answered with the policy the example's pages have.
    policy = policy_of(page.goto("/"))  # and the CSRF cookie
    serve_test_page(
        visitor.context,
        "aisdk-test",
        "useChat",
        aisdk_script,
        headers={"Content-Security-Policy": policy},
    )
    served = page.goto(f"/aisdk-test/?chat={uuid.uuid4()}")
    assert served is not None and served.headers["content-security-policy"] == policy
    page.wait_for_function(FUNCTION + "window.__chat && window.__chat.status === 'ready'")
    page.evaluate("(text) => { window.__send(text); }", prompt)
    page.wait_for_function(FUNCTION + "window.__chat.status === 'streaming'", timeout=20_000)
    page.wait_for_function(
        FUNCTION + "window.__chat.status === 'ready' && window.__chat.messages.length === 2",
        timeout=30_000,
    )
    assert page.evaluate("window.__chat.error") is None
    assert page.locator(".text").last.text_content() == demo_answer(asked(prompt))
    grown = {
        sum(n for kind, n in s["parts"] if kind == "text")
        for s in page.evaluate("window.__seen")
        if s["status"] == "streaming"
    }
    assert len(grown) > 5, "the text did not arrive piece by piece"
    assert visitor.violations() == []
