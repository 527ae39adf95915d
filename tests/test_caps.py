"""Cost caps of the example, in process: the context the model is sent, in estimated
tokens; messages per chat capped and paginated; deleting a chat; purge_guests and the
guests' sessions; the admin's compact action and its permission."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.sessions.models import Session
from django.core.management import call_command
from django.test import Client, override_settings
from django.utils import timezone

from example_project.chat.models import Chat, Message
from example_project.chat.views import conversation, estimated_tokens
from streaming_app.models import Chunk, Status, Stream

from .helpers import written
from .test_example_settings import settings_with

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()


def post_json(client: Client, path: str, data: object):
    return client.post(path, json.dumps(data), content_type="application/json")


def new_chat(client: Client, prompt: str = "Hello?") -> dict:
    response = post_json(client, "/api/chats/", {"prompt": prompt})
    assert response.status_code == 201, response.content
    return response.json()


def add_messages(chat_id: str, count: int) -> list[Message]:
    """``count`` more messages with ended replies (the earlier ones' too)."""
    chat = Chat.objects.get(pk=chat_id)
    Stream.objects.filter(owner=chat.owner).update(status=Status.DONE)
    return [
        Message.objects.create(
            chat=chat,
            prompt=f"prompt {i}",
            stream=written([f"answer {i}"], status=Status.DONE, owner=chat.owner),
        )
        for i in range(count)
    ]


# The context the model is sent --------------------------------------------------------


def test_tokens_are_estimated_as_four_characters_rounded_up():
    assert [estimated_tokens(n) for n in (0, 1, 4, 5, 400)] == [0, 1, 1, 2, 100]


@override_settings(CHAT_MAX_CONTEXT_TOKENS=350)
def test_the_context_counts_the_newest_prompt_and_drops_the_oldest_turns_first():
    owner = User.objects.create_user("asker")
    chat = Chat.objects.create(owner=owner, title="long")
    # Earlier turns of 100 tokens each (a 400-character prompt, no reply).
    for letter in "abcd":
        Message.objects.create(chat=chat, prompt=letter * 400)

    def sent(prompt: str) -> list[str]:
        newest = Message.objects.create(chat=chat, prompt=prompt)
        try:
            return [m["content"][:1] for m in conversation(chat, newest)]
        finally:
            newest.delete()

    # 100 tokens of prompt leave room for two earlier turns, the newest two.
    assert sent("n" * 400) == ["c", "d", "n"]
    # A prompt of 200 tokens leaves room for one: the newest prompt counts.
    assert sent("n" * 800) == ["d", "n"]
    # A prompt alone over the budget is still sent, alone.
    assert sent("n" * 2000) == ["n"]


# Messages per chat: capped, paginated --------------------------------------------------


@override_settings(CHAT_MAX_MESSAGES=3)
def test_a_chat_at_its_message_limit_refuses_more_with_409_and_its_page_says_so():
    client = Client()
    chat = new_chat(client)
    add_messages(chat["id"], 2)
    refused = post_json(client, f"/api/chats/{chat['id']}/messages/", {"prompt": "one more"})
    assert refused.status_code == 409
    message = "this chat has reached its limit of 3 messages: start a new chat"
    assert refused.json() == {"error": message}
    assert Message.objects.filter(chat_id=chat["id"]).count() == 3
    # The AI SDK's route is capped the same.
    sdk = post_json(
        client,
        "/api/ai/chat",
        {
            "id": chat["id"],
            "messages": [{"role": "user", "parts": [{"type": "text", "text": "x"}]}],
        },
    )
    assert (sdk.status_code, sdk.json()) == (409, {"error": message})
    assert message in client.get(chat["url"]).content.decode()
    # A viewer is not told: it is not their chat to write to.
    assert message not in Client().get(chat["url"]).content.decode()


@override_settings(CHAT_PAGE_MESSAGES=2)
def test_the_chat_json_gives_the_newest_messages_and_the_way_to_the_older_ones():
    client = Client()
    chat = new_chat(client, "first")
    later = add_messages(chat["id"], 4)  # prompts 0..3 after "first"
    page = client.get(f"/api/chats/{chat['id']}/").json()
    assert [m["prompt"] for m in page["messages"]] == ["prompt 2", "prompt 3"]
    assert page["older"] == f"/api/chats/{chat['id']}/?before={later[2].pk}"
    page = client.get(page["older"]).json()
    assert [m["prompt"] for m in page["messages"]] == ["prompt 0", "prompt 1"]
    page = client.get(page["older"]).json()
    assert [m["prompt"] for m in page["messages"]] == ["first"]
    assert page["older"] is None


@override_settings(CHAT_PAGE_MESSAGES=2)
def test_the_chat_page_shows_the_newest_messages_with_a_link_to_the_older_ones():
    client = Client()
    chat = new_chat(client, "first")
    later = add_messages(chat["id"], 2)
    page = client.get(chat["url"]).content.decode()
    prompts = re.findall(r'<div class="prompt">([^<]*)</div>', page)
    assert prompts == ["prompt 0", "prompt 1"]
    assert f'href="{chat["url"]}?before={later[0].pk}">Earlier messages</a>' in page
    assert 'id="ask">' in page, "the newest page has the form"
    older = client.get(f"{chat['url']}?before={later[0].pk}").content.decode()
    assert re.findall(r'<div class="prompt">([^<]*)</div>', older) == ["first"]
    assert "Earlier messages" not in older and "Newest messages" in older
    assert 'id="ask" hidden' in older, "an older page offers no form and drives nothing"
    assert "drive-url" not in older


@pytest.mark.parametrize("before", ["x", "999999", "-1", "9" * 30, "1e3", ""])
def test_a_before_that_is_not_a_message_of_the_chat_is_400(before):
    client = Client()
    chat = new_chat(client)
    other = new_chat(Client())
    response = client.get(f"/api/chats/{chat['id']}/", {"before": before})
    assert response.status_code == 400
    assert response.json() == {"error": '"before" must be the id of a message of this chat'}
    theirs = client.get(f"/api/chats/{chat['id']}/", {"before": other["message_id"]})
    assert theirs.status_code == 400
    assert client.get(chat["url"], {"before": before}).status_code == 400


# Deleting a chat ---------------------------------------------------------------------


def test_the_owner_deletes_a_chat_with_its_streams_and_its_link_is_dead():
    owner = Client(enforce_csrf_checks=True)
    owner.get("/")

    def token() -> dict[str, str]:
        return {"X-CSRFToken": owner.cookies["csrftoken"].value}

    created = owner.post(
        "/api/chats/",
        json.dumps({"prompt": "Hi"}),
        content_type="application/json",
        headers=token(),
    )
    chat = created.json()
    add_messages(chat["id"], 2)
    streams = list(Message.objects.filter(chat_id=chat["id"]).values_list("stream_id", flat=True))
    assert Chunk.objects.filter(stream_id__in=streams).exists()

    assert owner.delete(f"/api/chats/{chat['id']}/").status_code == 403, "CSRF"
    stranger = Client()
    stranger.get("/")
    refused = stranger.delete(f"/api/chats/{chat['id']}/")
    assert refused.status_code == 403
    assert refused.json()["error"].startswith("this chat is not yours")
    assert Chat.objects.filter(pk=chat["id"]).exists()

    deleted = owner.delete(f"/api/chats/{chat['id']}/", headers=token())
    assert (deleted.status_code, deleted.json()) == (200, {"id": chat["id"], "deleted": True})
    assert not Chat.objects.filter(pk=chat["id"]).exists()
    assert not Message.objects.filter(chat_id=chat["id"]).exists()
    assert not Stream.objects.filter(pk__in=streams).exists()
    assert not Chunk.objects.filter(stream_id__in=streams).exists()
    assert owner.get(chat["url"]).status_code == 404
    assert owner.get(f"/api/chats/{chat['id']}/").json() == {"error": "no such chat"}
    assert stranger.get(f"/api/streams/{chat['stream_id']}/").status_code == 404
    again = owner.delete(f"/api/chats/{chat['id']}/", headers=token())
    assert again.status_code == 404


def test_deleting_an_unknown_chat_is_404_json():
    client = Client()
    assert client.delete(f"/api/chats/{uuid.uuid4()}/").json() == {"error": "no such chat"}
    assert client.delete("/api/chats/nope/").status_code == 404


# purge_guests and the guests' sessions ------------------------------------------------


def test_purge_guests_removes_the_sessions_of_the_guests_it_removes():
    long_ago = timezone.now() - timedelta(days=40)
    idle = [Client() for _ in range(3)]
    chats = [new_chat(client, "old") for client in idle]
    # One of the idle guests is signed in twice (another browser of theirs).
    twice = Client()
    twice.force_login(Chat.objects.get(pk=chats[0]["id"]).owner)
    recent = Client()
    new_chat(recent, "new")
    member = User.objects.create_user("member")
    signed_in = Client()
    signed_in.force_login(member)
    Stream.objects.update(status=Status.CANCELLED)
    guests = User.objects.filter(chat__id__in=[c["id"] for c in chats])
    guests.update(last_login=long_ago, date_joined=long_ago)
    Message.objects.filter(chat_id__in=[c["id"] for c in chats]).update(created_at=long_ago)
    assert Session.objects.count() == 6

    out = StringIO()
    call_command("purge_guests", "--days", "30", stdout=out)
    assert Session.objects.count() == 2
    assert "removed 3 guest user(s)" in out.getvalue()
    assert "and 4 session(s) of theirs" in out.getvalue()
    # The others are still signed in: the recent guest and the member.
    assert recent.get(f"/api/chats/{Chat.objects.get().pk}/").json()["owner"] is True
    assert signed_in.session["_auth_user_id"] == str(member.pk)


# The admin's compact action --------------------------------------------------------------


def staff(name: str, *codenames: str) -> Client:
    user = User.objects.create_user(name, is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="streaming_app", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


def test_compacting_streams_in_the_admin_needs_the_change_permission():
    with override_settings(STREAMING_APP={"COMPACT_FINISHED": False}):
        finished = written(["one. ", "two."], status=Status.DONE)
    viewer = staff("viewer", "view_stream")
    listing = viewer.get("/admin/streaming_app/stream/")
    assert listing.status_code == 200
    assert b'value="compact"' not in listing.content
    attempt = viewer.post(
        "/admin/streaming_app/stream/",
        {"action": "compact", "_selected_action": [str(finished.pk)]},
        follow=True,
    )
    assert b"compacted" not in attempt.content
    assert Chunk.objects.filter(stream=finished).count() == 2

    changer = staff("changer", "view_stream", "change_stream")
    assert b'value="compact"' in changer.get("/admin/streaming_app/stream/").content
    done = changer.post(
        "/admin/streaming_app/stream/",
        {"action": "compact", "_selected_action": [str(finished.pk)]},
        follow=True,
    )
    assert b"1 stream compacted" in done.content
    assert list(Chunk.objects.filter(stream=finished).values_list("text", flat=True)) == [
        "one. two."
    ]
    # A stream stays read-only for them: no change form to save over a live writer.
    page = changer.get(f"/admin/streaming_app/stream/{finished.pk}/change/")
    assert b'name="_save"' not in page.content


# The example's settings from the environment ---------------------------------------------


def test_the_caps_come_from_the_environment_and_a_wrong_field_is_named():
    show = (
        "import django; django.setup(); from django.conf import settings as s; import json; print(json.dumps([s.CHAT_MAX_OUTPUT_TOKENS,"
        " s.CHAT_MAX_OUTPUT_TOKENS_FIELD, s.CHAT_MAX_CONTEXT_TOKENS, s.CHAT_MAX_MESSAGES,"
        " s.CHAT_PAGE_MESSAGES, s.STREAMING_APP.get('CANCEL_ON_DISCONNECT', False)]))"
    )
    defaults = settings_with(show)
    assert defaults.returncode == 0, defaults.stderr
    assert json.loads(defaults.stdout) == [1024, "max_completion_tokens", 16000, 100, 50, False]
    public = settings_with(
        show,
        CHAT_MAX_OUTPUT_TOKENS="256",
        OPENAI_MAX_TOKENS_FIELD="max_tokens",
        CHAT_GUESTS_STOP_ON_DISCONNECT="1",
    )
    assert json.loads(public.stdout)[:2] == [256, "max_tokens"]
    assert json.loads(public.stdout)[5] == "example_project.chat.views.guest_stops_on_disconnect"
    wrong = settings_with(show, OPENAI_MAX_TOKENS_FIELD="max_output_tokens")
    assert wrong.returncode != 0
    assert "OPENAI_MAX_TOKENS_FIELD must be max_completion_tokens or max_tokens" in wrong.stderr


# The disconnect policy, in process --------------------------------------------------------


def refuse_to_say(user, stream) -> bool:
    raise RuntimeError("a bug in the project's policy")


@pytest.mark.parametrize(
    ("policy", "status"),
    [
        (lambda user, stream: user.username.startswith("guest-"), Status.CANCELLED),
        (lambda user, stream: not user.is_authenticated, Status.DONE),
        ("streaming_app.permissions.anonymous_cancels_on_disconnect", Status.DONE),
        (refuse_to_say, Status.DONE),
    ],
)
async def test_the_disconnect_policy_decides_for_the_driver_who_hangs_up(policy, status, caplog):
    import asyncio

    from django.test import AsyncClient

    from .helpers import wait_finished

    client = AsyncClient()
    created = await client.post("/api/chats/", {"prompt": "Go"}, content_type="application/json")
    chat = created.json()
    with override_settings(DEMO_MODEL_DELAY=0.01, STREAMING_APP={"CANCEL_ON_DISCONNECT": policy}):
        response = await client.post(chat["drive_url"])
        await response.streaming_content.__aiter__().__anext__()  # type: ignore[attr-defined]
        await asyncio.to_thread(response.close)  # what Django does when the browser hangs up
        stream = await wait_finished(uuid.UUID(chat["stream_id"]))
    assert stream.status == status
    failed = "CANCEL_ON_DISCONNECT failed" in caplog.text
    assert failed is (policy is refuse_to_say)


@override_settings(STREAMING_APP={"MAX_LIVE_STREAMS": 0})
async def test_a_use_chat_message_whose_drive_was_refused_is_replaced_by_the_next():
    """useChat does not retry a refused drive (503 here, 429 past a rate): it sends the
    message again, which takes the place of the reply never driven, not a 409."""
    from django.test import AsyncClient

    client = AsyncClient(enforce_csrf_checks=False)
    # Signed in: a guest minted by a request answered 5xx gets no session cookie.
    await client.aforce_login(await get_user_model().objects.acreate_user("useChat"))
    chat_id = str(uuid.uuid4())

    def body(text: str) -> dict:
        message = {"id": "m", "role": "user", "parts": [{"type": "text", "text": text}]}
        return {"id": chat_id, "messages": [message], "trigger": "submit-message"}

    first = await client.post("/api/ai/chat", body("first"), content_type="application/json")
    assert first.status_code == 503, first.content
    stale = await Message.objects.filter(chat_id=chat_id).values_list("stream_id", flat=True).aget()
    again = await client.post("/api/ai/chat", body("again"), content_type="application/json")
    # Before: 409 "the previous reply is still pending", for ever (PENDING_TIMEOUT None).
    assert again.status_code == 503, again.content
    prompts = [m.prompt async for m in Message.objects.filter(chat_id=chat_id)]
    assert prompts == ["again"]
    assert not await Stream.objects.filter(pk=stale).aexists()
