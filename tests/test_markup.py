"""The template tag and stream-text.js render a stream's parts as the same markup: the
same stream (every part kind, text that looks like HTML) rendered on the server through
``{% stream_text %}`` and in Chromium by ``<stream-text>``, from the body endpoint's
answer and from the server's own HTML, gives equal DOMs (tags, classes, data-*
attributes, text)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.template import Context, Template
from django.test import Client, RequestFactory

from streaming_app.parts import Finish, Part, Reasoning, ToolCall, ToolResult

from .helpers import paced, run_to_end

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

STATIC = Path(__file__).resolve().parent.parent / "streaming_app" / "static"
ORIGIN = "http://markup.test"

# A stream of every part kind, whose text, names and arguments look like markup.
PIECES: list[str | Part] = [
    "Plain <b>first</b> & then ",  # a plain stream so far: its text becomes part 0
    Reasoning('Is </details><script>alert("r")</script> & so on'),
    ToolCall("call_1", "search<i>", '{"q": "<img src=x onerror=alert(1)>'),
    ToolCall("call_1", "", ' & co"}'),
    ToolResult("call_1", {"hits": ["<iframe src=/x>"], "n": 1, "and": "&amp;"}),
    ToolCall("call_2", "echo", '{"say": "</div>"}'),
    ToolResult("call_2", "a string <u>as it is</u> & all"),
    ToolCall("call_3", "", '{"never": "answered"}'),  # no name, no result
    Reasoning("Again, 'quoted' & \"double\""),
    "The <script>answer</script> &amp; ",
    "the rest.",
    Finish("stop", {"output_tokens": 12}),
]

# A node as the comparison sees it: a text, or {tag, classes, data, children}, with
# adjacent texts joined and empty ones dropped.
SHAPE = """
function shape(node) {
  const children = [];
  for (const child of node.childNodes) {
    if (child.nodeType === Node.TEXT_NODE || child.nodeType === Node.CDATA_SECTION_NODE) {
      if (!child.data) continue;
      if (typeof children.at(-1) === "string") children[children.length - 1] += child.data;
      else children.push(child.data);
    } else if (child.nodeType === Node.ELEMENT_NODE) {
      children.push(shape(child));
    }
  }
  return {
    tag: node.localName,
    classes: [...node.classList].sort(),
    data: Object.fromEntries(Object.entries(node.dataset).sort()),
    children,
  };
}
"""

# The element's children (its body and its status line) as each renders them: the
# server's HTML parsed (no script runs in a parsed document), an element made in the
# page that reads the stream from the body endpoint, and the server's HTML put in the
# page, which the element takes over.
RENDER = (
    "async (html) => {"
    + SHAPE
    + """
  const ended = (element) => new Promise((resolve) => {
    element.addEventListener("stream-end", resolve, { once: true });
  });
  const server = new DOMParser().parseFromString(html, "text/html").querySelector("stream-text");
  const fresh = document.createElement("stream-text");
  for (const name of ["stream-id", "body-url", "events-url", "socket-url"]) {
    fresh.setAttribute(name, server.getAttribute(name));
  }
  fresh.setAttribute("status", "pending");
  const holder = document.getElementById("fresh");
  const freshEnd = ended(holder);
  holder.append(fresh);
  const taken = document.getElementById("taken");
  const takenEnd = ended(taken);
  taken.innerHTML = html;
  await Promise.all([freshEnd, takenEnd]);
  const children = (element) => [...element.children].map(shape);
  const element = taken.querySelector("stream-text");
  return {
    server: children(server),
    fresh: children(fresh),
    taken: children(element),
    parts: [fresh.parts, element.parts],
    texts: [fresh.text, element.text],
  };
}"""
)

PAGE = (
    '<!doctype html><html><head><meta charset="utf-8"><title>markup</title>'
    '<script type="module" src="/static/streaming_app/stream-text.js"></script></head>'
    '<body><div id="fresh"></div><div id="taken"></div></body></html>'
)

# No websocket in this page: the element follows the stream over Server-Sent Events,
# whose endpoint answers 204 (the stream has ended), and reads the body endpoint.
NO_WEBSOCKET = "window.WebSocket = undefined;"


def rendered(stream_id: Any) -> str:
    request = RequestFactory().get("/")
    template = Template("{% load streaming %}{% stream_text stream %}")
    return template.render(Context({"stream": str(stream_id), "request": request}))


def serve(context: Any, body: tuple[int, bytes], events_path: str, body_path: str) -> None:
    """The page, the package's static files, and the stream's two endpoints, on
    ORIGIN: the body endpoint answers what the server answered for offset 0."""

    def static(route: Any) -> None:
        path = STATIC / urlsplit(route.request.url).path.removeprefix("/static/")
        if not path.is_file():
            route.fulfill(status=404)
            return
        kind = "text/css" if path.suffix == ".css" else "text/javascript"
        route.fulfill(body=path.read_bytes(), content_type=kind)

    def body_endpoint(route: Any) -> None:
        offset = parse_qs(urlsplit(route.request.url).query).get("offset")
        if offset != ["0"]:
            route.fulfill(status=500, body=f"unexpected offset {offset}")
            return
        route.fulfill(status=body[0], body=body[1], content_type="application/json")

    context.route(f"{ORIGIN}/", lambda route: route.fulfill(body=PAGE, content_type="text/html"))
    context.route(f"{ORIGIN}/static/**", static)
    context.route(f"{ORIGIN}{events_path}**", lambda route: route.fulfill(status=204))
    context.route(f"{ORIGIN}{body_path}?**", body_endpoint)


@pytest.fixture
def stream() -> dict[str, Any]:
    """The stream of PIECES: its HTML from the template tag and the body endpoint's
    answer. (Made before ``chromium``: playwright's loop then runs in this thread, and
    neither asyncio.run nor the ORM may.)"""
    stream_id, status = asyncio.run(run_to_end(paced(PIECES)))
    assert status == "done"
    body_path = f"/api/streams/{stream_id}/"
    answer = Client().get(body_path, {"offset": 0})
    assert answer.status_code == 200
    return {
        "html": rendered(stream_id),
        "path": body_path,
        "answer": (answer.status_code, answer.content),
        "stored": answer.json(),
    }


def test_the_server_and_the_browser_render_every_part_as_the_same_markup(stream, chromium):
    html, body_path, stored = stream["html"], stream["path"], stream["stored"]
    assert {entry["type"] for entry in stored["parts"]} == {
        "text", "reasoning", "tool-call", "tool-result", "finish",
    }  # fmt: skip

    context = chromium.new_context()
    context.add_init_script(NO_WEBSOCKET)
    serve(context, stream["answer"], f"{body_path}events/", body_path)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{ORIGIN}/")
    shown = page.evaluate(RENDER, html)

    assert errors == []
    assert shown["texts"] == [stored["text"], stored["text"]]
    assert shown["parts"][0] == shown["parts"][1]
    assert [part["type"] for part in shown["parts"][0]] == [
        "text", "reasoning", "tool-call", "tool-call", "tool-call", "reasoning", "text", "finish",
    ]  # fmt: skip
    server = shown["server"]
    # What is compared: the body, a block a part, every one of them (the finish has
    # none), the text the model wrote as text; then the status line.
    (body, status_line) = server
    assert body["classes"] == ["stream-text-body", "stream-text-parts"]
    assert [block["data"]["part"] for block in body["children"]] == [str(n) for n in range(7)]
    assert status_line["children"] == ["done"]
    as_json = json.dumps(server)
    assert "<script>" in as_json and "&amp;" in as_json and "<iframe" in as_json
    assert shown["fresh"] == server
    assert shown["taken"] == server
