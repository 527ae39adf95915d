"""The template tag and the example's pages, rendered in process: what a page without
JavaScript shows, who is offered to drive, guests made only by a prompt and purged."""

from __future__ import annotations

import asyncio
import html
import json
import re
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.template import Context, Template
from django.test import Client, RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from example_project.chat.models import Chat, Message
from streaming_app.models import Status, Stream
from streaming_app.parts import Finish, Part, Reasoning, ToolCall, ToolResult
from streaming_app.streams import claim_stream, create_stream, get_stream_body

from .helpers import paced, run_to_end, written

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()


def finished(text: str, owner=None) -> Stream:
    return written([text[:3], text[3:]], status=Status.DONE, owner=owner)


def render(stream, user=None, **options) -> str:
    request = request_of(user)
    args = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in options.items())
    template = Template("{% load streaming %}{% stream_text stream " + args + " %}")
    return template.render(Context({"stream": stream, "request": request}))


def test_the_tag_renders_the_committed_text_escaped_with_where_to_follow_it():
    text = "<b>bold</b> & 日本 🎉"
    stream = finished(text)
    html = render(stream)
    assert '<div class="stream-text-body">' in html
    # Its layout by class, from the stylesheet it links: no style attribute, which a
    # Content-Security-Policy without 'unsafe-inline' refuses.
    assert "style=" not in html
    assert '<link rel="stylesheet" href="/static/streaming_app/stream-text.css">' in html
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; 日本 🎉</div>" in html
    assert f'stream-id="{stream.pk}"' in html
    assert f'offset="{len(text)}"' in html and 'status="done"' in html
    assert f'events-url="/api/streams/{stream.pk}/events/"' in html
    assert f'socket-url="/ws/streams/{stream.pk}/"' in html
    assert "drive-url" not in html and " markdown" not in html
    assert "streaming_app/stream-text.js" in html


def test_the_tag_offers_the_drive_only_while_the_stream_is_pending():
    pending = create_stream()
    html = render(pending, drive_url="/drive/", markdown=True)
    assert 'drive-url="/drive/"' in html and 'status="pending"' in html and " markdown" in html
    assert 'drive-url="' not in render(finished("x"), drive_url="/drive/")


def test_a_finished_stream_costs_the_tag_no_more_queries_than_the_body_endpoint():
    stream = finished("hello " * 100)
    client = Client()
    with CaptureQueriesContext(connection) as endpoint:
        assert client.get(f"/api/streams/{stream.pk}/").status_code == 200
    loaded = Stream.objects.get(pk=stream.pk)
    with CaptureQueriesContext(connection) as tag:
        render(loaded)
    assert len(tag) <= len(endpoint), (tag.captured_queries, endpoint.captured_queries)


@override_settings(STREAMING_APP={"PERMISSION_POLICY": "streaming_app.permissions.owner_policy"})
def test_the_tag_renders_nothing_for_a_stream_that_is_gone_unknown_or_not_the_users():
    owner = User.objects.create_user("owner")
    stream = finished("secret", owner=owner)
    stranger = User.objects.create_user("stranger")
    assert render(stream, stranger) == ""
    assert render(str(stream.pk), stranger) == ""
    assert render("00000000-0000-0000-0000-000000000000", owner) == ""
    assert render("not-a-stream-id", owner) == ""
    assert render(None, owner) == ""  # purged: the message's stream was SET_NULL
    assert "secret" in render(str(stream.pk), owner)

    # A page listing them shows the ones the user may read, and is not a 403 or a 404.
    mine = finished("mine", owner=stranger)
    page = Template(
        "{% load streaming %}{% for s in streams %}{% stream_text s %}{% endfor %}"
    ).render(Context({"streams": [stream, None, mine], "request": request_of(stranger)}))
    assert page.count("<stream-text ") == 1 and ">mine</div>" in page


def request_of(user=None):
    request = RequestFactory().get("/")
    request.user = user
    return request


@override_settings(STREAMING_APP={"PERMISSION_POLICY": "streaming_app.permissions.owner_policy"})
def test_the_tag_renders_the_cancel_url_only_for_who_may_cancel_the_live_stream():
    owner = User.objects.create_user("owner")
    stranger = User.objects.create_user("stranger")
    live = written(["going "], owner=owner)
    cancel = f'cancel-url="/api/streams/{live.pk}/cancel/"'
    assert cancel in render(live, owner)
    assert 'csrf-token="' in render(live, owner), "the cancel is a POST: it needs the token"
    with override_settings(
        STREAMING_APP={"PERMISSION_POLICY": "streaming_app.permissions.anyone_reads_policy"}
    ):
        assert "cancel-url" not in (watched := render(live, stranger))
        assert 'status="streaming"' in watched and "csrf-token" not in watched
        ownerless = written(["nobody's "])
        assert "cancel-url" not in render(ownerless, owner)
    assert "cancel-url" not in render(finished("over", owner=owner), owner)


def test_the_tag_renders_the_csrf_token_and_where_the_project_keeps_it():
    owner = User.objects.create_user("owner")
    pending = create_stream(owner=owner)

    def attributes(html: str) -> dict[str, str]:
        return dict(re.findall(r' (csrf-[a-z]+)="([^"]*)"', html.split(">")[0]))

    default = attributes(render(pending, owner, drive_url="/drive/"))
    assert set(default) == {"csrf-token", "csrf-cookie"} and default["csrf-cookie"] == "csrftoken"
    assert len(default["csrf-token"]) == 64
    with override_settings(CSRF_COOKIE_NAME="othercsrf", CSRF_HEADER_NAME="HTTP_X_XSRF_TOKEN"):
        named = attributes(render(pending, owner, drive_url="/drive/"))
    assert (named["csrf-cookie"], named["csrf-header"]) == ("othercsrf", "X-XSRF-TOKEN")
    for unreadable in ({"CSRF_COOKIE_HTTPONLY": True}, {"CSRF_USE_SESSIONS": True}):
        with override_settings(**unreadable):
            hidden = attributes(render(pending, owner, drive_url="/drive/"))
        assert set(hidden) == {"csrf-token"}, unreadable


def test_the_tag_renders_each_part_reasoning_and_tool_calls_folded_and_escaped():
    reasoning = 'Is <b>this</b> bold? </details><script>alert("r")</script> & so on'
    arguments = '{"q": "<img src=x onerror=alert(1)>"}'
    pieces: list[str | Part] = [
        Reasoning(reasoning[:20]),
        Reasoning(reasoning[20:]),
        ToolCall("call_1", "search<i>", arguments[:9]),
        ToolCall("call_1", "", arguments[9:]),
        ToolResult("call_1", {"hits": ["<iframe src=/x>"], "n": 1}),
        "The <b>answer</b> & ",
        "the rest.",
        Finish("stop", {"output_tokens": 12}),
    ]
    stream_id, status = asyncio.run(run_to_end(paced(pieces)))
    assert status == "done"
    body = get_stream_body(stream_id)
    page = render(str(stream_id), markdown=True)

    # Nothing the model wrote became markup: every tag of the element is the template's.
    tags = re.findall(r"<([a-z-]+)", page.split("</stream-text>")[0])
    assert set(tags) == {"stream-text", "div", "details", "summary", "code"}, tags
    assert page.count("<details") == 2 and "<details open" not in page, "they start folded"
    reasoning_at = page.index('<details class="stream-reasoning" data-part="0">')
    text_at = page.index('<div class="stream-text-part" data-part="2"')
    assert reasoning_at < text_at, "the reasoning comes above the answer"
    # Each part shows its own text, escaped, as text.
    assert "<summary>Reasoning</summary>" in page
    shown = f'<div class="stream-reasoning-text">{html.escape(reasoning)}<'
    assert shown in page
    assert '<code class="stream-tool-name">search&lt;i&gt;</code>' in page
    assert f">{html.escape(arguments)}</div>" in page
    # (PostgreSQL's jsonb keeps no key order: the result as the database gives it back.)
    result = next(e["result"] for e in body.parts if e["type"] == "tool-result")
    assert result == {"hits": ["<iframe src=/x>"], "n": 1}
    assert html.escape(json.dumps(result, indent=2)) in page
    assert ">The &lt;b&gt;answer&lt;/b&gt; &amp; the rest.</div>" in page
    # The element gets the part map of the text it shows, to follow on from there.
    part_map = re.search(r' part-map="([^"]*)"', page)
    assert part_map and json.loads(html.unescape(part_map.group(1))) == list(body.parts)
    assert f'offset="{len(body.text)}"' in page

    plain = render(finished("no parts here"))
    assert "part-map" not in plain and "<details" not in plain


def post_prompt(client: Client, prompt: str) -> dict:
    response = client.post(
        "/api/chats/", json.dumps({"prompt": prompt}), content_type="application/json"
    )
    assert response.status_code == 201, response.content
    return response.json()


def test_page_views_make_no_user_and_a_first_prompt_makes_one():
    client = Client()
    for _ in range(3):
        assert client.get("/").status_code == 200
    assert User.objects.count() == 0
    post_prompt(client, "Hi")
    post_prompt(client, "Again")
    assert User.objects.count() == 1


def test_the_chat_page_renders_the_replies_and_offers_the_owner_alone_to_drive():
    owner = Client()
    chat = post_prompt(owner, "Hello?")
    page = owner.get(chat["url"]).content.decode()
    assert f'drive-url="{chat["drive_url"]}"' in page
    assert '<form id="ask">' in page
    assert "Hello?" in page and "Your chats:" in page

    stranger = Client()
    page = stranger.get(chat["url"]).content.decode()
    assert f'stream-id="{chat["stream_id"]}"' in page
    assert "drive-url" not in page
    assert '<form id="ask" hidden>' in page
    assert "Your chats:" not in page


def test_your_chats_lists_the_visitors_own_chats_only():
    mine, theirs = Client(), Client()
    first = post_prompt(mine, "My first chat")
    post_prompt(theirs, "Someone else's chat")
    page = mine.get("/").content.decode()
    assert f'href="{first["url"]}"' in page
    assert "My first chat" in page and "Someone else" not in page


def test_purge_guests_removes_idle_guests_with_their_chats_and_streams():
    old_guest, new_guest, returning_guest, busy_guest = (Client() for _ in range(4))
    gone = post_prompt(old_guest, "old")
    kept = post_prompt(new_guest, "new")
    back = post_prompt(returning_guest, "joined long ago, asked today")
    live = post_prompt(busy_guest, "still streaming")
    claim_stream(live["stream_id"])
    long_ago = timezone.now() - timedelta(days=40)
    idle = [gone["id"], back["id"], live["id"]]
    User.objects.filter(chat__id__in=idle).update(last_login=long_ago, date_joined=long_ago)
    # The old guest's and the busy guest's prompts are old too; the returning guest's is
    # today's. The old guest's reply was never driven: pending, which keeps nobody.
    Message.objects.filter(chat_id__in=[gone["id"], live["id"]]).update(created_at=long_ago)
    User.objects.create_user("member", last_login=long_ago, date_joined=long_ago)

    out = StringIO()
    call_command("purge_guests", "--days", "30", stdout=out)
    assert "removed 1 guest user" in out.getvalue()
    assert not Chat.objects.filter(pk=gone["id"]).exists()
    assert not Stream.objects.filter(pk=gone["stream_id"]).exists()
    for chat in (kept, back, live):
        assert Chat.objects.filter(pk=chat["id"]).exists()
    assert Stream.objects.get(pk=live["stream_id"]).status == Status.STREAMING
    assert User.objects.filter(username="member").exists()
