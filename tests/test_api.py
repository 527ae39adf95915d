"""The example project's HTTP API and the app's body view, in process: answers and errors."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import AsyncClient, Client, override_settings

from example_project.chat.llm import demo_answer, demo_body
from example_project.chat.models import Chat
from example_project.chat.views import conversation
from streaming_app.models import Status, Stream

from .helpers import wait_finished

pytestmark = pytest.mark.django_db(transaction=True)


def post_json(client: Client, path: str, data, **extra):
    body = data if isinstance(data, str | bytes) else json.dumps(data)
    return client.post(path, body, content_type="application/json", **extra)


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture
def chat(client: Client) -> dict:
    response = post_json(client, "/api/chats/", {"prompt": "Hello?"})
    assert response.status_code == 201, response.content
    return response.json()


def test_the_chat_page_sets_the_csrf_cookie(client):
    response = client.get("/")
    assert response.status_code == 200
    assert "csrftoken" in response.cookies
    assert b"static/chat/chat.js" in response.content


def test_creating_a_chat_answers_201_with_a_pending_stream(client, chat):
    assert set(chat) >= {"id", "stream_id", "url", "drive_url"}
    assert Stream.objects.get(pk=chat["stream_id"]).status == Status.PENDING
    detail = client.get(f"/api/chats/{chat['id']}/").json()
    assert detail["owner"] is True
    assert [m["prompt"] for m in detail["messages"]] == ["Hello?"]


def test_without_a_csrf_token_the_answer_is_403_json():
    response = post_json(Client(enforce_csrf_checks=True), "/api/chats/", {"prompt": "hi"})
    assert response.status_code == 403
    assert response.json()["error"].startswith("CSRF verification failed")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "the body is not valid JSON"),
        (b"\xff\xfe", "the body is not valid JSON"),
        ("[1, 2]", "the body must be a JSON object"),
        ("{}", '"prompt" is required'),
        ('{"prompt": 3}', '"prompt" is required and must be a string'),
        ('{"prompt": "   "}', '"prompt" must not be empty'),
        ('{"prompt": "a\\u0000b"}', "NUL"),
        ('{"prompt": "a\\ud800b"}', "lone surrogate"),
        ("[" * 100_000, "the body is not valid JSON"),  # too deep for json.loads
    ],
)
def test_bad_prompts_are_400_with_a_message(client, body, message):
    response = post_json(client, "/api/chats/", body)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert not Chat.objects.exists()


@override_settings(CHAT_MAX_PROMPT_CHARS=10)
def test_a_prompt_over_the_limit_is_413(client):
    response = post_json(client, "/api/chats/", {"prompt": "x" * 11})
    assert response.status_code == 413
    assert response.json()["error"] == "the prompt is limited to 10 characters"
    huge = post_json(client, "/api/chats/", {"prompt": "x" * 1_000_000})
    assert huge.status_code == 413
    assert not Chat.objects.exists()
    assert post_json(client, "/api/chats/", {"prompt": "x" * 10}).status_code == 201


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/api/chats/"), ("get", "/api/chats/{id}/stream/"), ("post", "/api/streams/{sid}/")],
)
def test_wrong_methods_are_405_json(client, chat, method, path):
    response = getattr(client, method)(path.format(id=chat["id"], sid=chat["stream_id"]))
    assert response.status_code == 405
    assert "is not allowed here" in response.json()["error"]
    assert response["Allow"]


@pytest.mark.parametrize("stream_id", [str(uuid.uuid4()), "not-a-uuid", "1"])
def test_unknown_or_malformed_stream_ids_are_404_json(client, stream_id):
    response = client.get(f"/api/streams/{stream_id}/")
    assert response.status_code == 404
    assert response.json() == {"error": "no such stream"}


@pytest.mark.parametrize("offset", ["-1", "x", "1e3", "99"])
def test_bad_offsets_are_400_json(client, chat, offset):
    Stream.objects.filter(pk=chat["stream_id"]).update(status=Status.DONE)
    response = client.get(f"/api/streams/{chat['stream_id']}/", {"offset": offset})
    assert response.status_code == 400
    assert "offset" in response.json()["error"]


def test_anyone_with_the_link_reads_a_stream_and_sees_the_chat(chat):
    stranger = Client()
    assert stranger.get(f"/api/streams/{chat['stream_id']}/").status_code == 200
    assert stranger.get(f"/chats/{chat['id']}/").status_code == 200
    assert stranger.get(f"/api/chats/{chat['id']}/").json()["owner"] is False


def test_unknown_chats_are_404(client):
    assert client.get(f"/chats/{uuid.uuid4()}/").status_code == 404
    assert client.get("/chats/nope/").status_code == 404
    response = client.post(f"/api/chats/{uuid.uuid4()}/stream/")
    assert response.status_code == 404
    assert response.json() == {"error": "no such chat"}


def test_a_follow_up_waits_for_the_previous_reply(client, chat):
    response = post_json(client, f"/api/chats/{chat['id']}/messages/", {"prompt": "And?"})
    assert response.status_code == 409
    assert response.json()["error"] == "the previous reply is still pending"
    Stream.objects.filter(pk=chat["stream_id"]).update(status=Status.DONE)
    response = post_json(client, f"/api/chats/{chat['id']}/messages/", {"prompt": "And?"})
    assert response.status_code == 201
    assert response.json()["stream_id"] != chat["stream_id"]


def test_another_session_may_not_write_to_a_chat(chat):
    stranger = Client()
    response = post_json(stranger, f"/api/chats/{chat['id']}/messages/", {"prompt": "mine now"})
    assert response.status_code == 403
    assert stranger.post(chat["drive_url"]).status_code == 403
    assert Stream.objects.get(pk=chat["stream_id"]).status == Status.PENDING


async def read_all(response) -> str:
    return b"".join([part async for part in response.streaming_content]).decode()


async def test_driving_streams_the_demo_answer_and_a_second_drive_is_409():
    client = AsyncClient()
    created = await client.post("/api/chats/", {"prompt": "Hi!"}, content_type="application/json")
    chat = created.json()
    response = await client.post(chat["drive_url"])
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response["X-Accel-Buffering"] == "no"
    text = await read_all(response)
    assert text == demo_body([{"role": "user", "content": "Hi!"}])
    again = await client.post(chat["drive_url"])
    assert again.status_code == 409
    assert again.json()["error"].startswith("the stream is already")
    stream = await wait_finished(uuid.UUID(chat["stream_id"]))
    assert (stream.status, stream.length) == (Status.DONE, len(text))


async def test_the_model_gets_the_whole_conversation():
    client = AsyncClient()
    chat = (
        await client.post("/api/chats/", {"prompt": "First"}, content_type="application/json")
    ).json()
    first = await read_all(await client.post(chat["drive_url"]))
    await wait_finished(uuid.UUID(chat["stream_id"]))
    follow = await client.post(
        f"/api/chats/{chat['id']}/messages/", {"prompt": "Second"}, content_type="application/json"
    )
    assert follow.status_code == 201
    second = await read_all(await client.post(follow.json()["drive_url"]))
    assert second == demo_body(
        [
            {"role": "user", "content": "First"},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "Second"},
        ]
    )
    assert "(message 2 of this chat)" in second


@override_settings(DEMO_MODEL_DELAY=0.01, STREAMING_APP={"CANCEL_ON_DISCONNECT": True})
async def test_cancel_on_disconnect_stops_generation_when_the_driver_hangs_up():
    client = AsyncClient()
    chat = (
        await client.post("/api/chats/", {"prompt": "Go"}, content_type="application/json")
    ).json()
    response = await client.post(chat["drive_url"])
    parts = response.streaming_content.__aiter__()  # type: ignore[attr-defined]
    first = await parts.__anext__()
    await asyncio.to_thread(response.close)  # what Django does when the browser hangs up
    stream = await wait_finished(uuid.UUID(chat["stream_id"]))
    assert stream.status == Status.CANCELLED
    assert (
        len(first.decode()) <= stream.length < len(demo_body([{"role": "user", "content": "Go"}]))
    )


def test_the_admin_lists_and_shows_streams(client, chat):
    admin = get_user_model().objects.create_superuser("admin", "admin@example.com", "pw")
    client.force_login(admin)
    listing = client.get("/admin/streaming_app/stream/")
    assert listing.status_code == 200
    assert chat["stream_id"].encode() in listing.content
    page = client.get(f"/admin/streaming_app/stream/{chat['stream_id']}/change/")
    assert page.status_code == 200
    assert b"pending" in page.content


def test_the_admin_merges_the_chunks_of_selected_streams(client):
    from streaming_app.models import Chunk

    from .helpers import written

    with override_settings(STREAMING_APP={"COMPACT_FINISHED": False}):
        finished = written(["one. ", "two. ", "three."], status=Status.DONE)
    live = written(["still ", "going"])
    client.force_login(get_user_model().objects.create_superuser("admin", "a@example.com", "pw"))
    response = client.post(
        "/admin/streaming_app/stream/",
        {"action": "compact", "_selected_action": [str(finished.pk), str(live.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    assert b"1 stream compacted" in response.content
    assert list(Chunk.objects.filter(stream=finished).values_list("text", flat=True)) == [
        "one. two. three."
    ]
    assert Chunk.objects.filter(stream=live).count() == 2
    page = client.get(f"/admin/streaming_app/stream/{finished.pk}/change/")
    assert b"one. two. three." in page.content


async def test_the_model_gets_the_newest_turns_that_fit_the_context_size():
    """A long chat does not send (or read) everything: the newest prompt, then as many
    earlier turns as fit CHAT_MAX_CONTEXT_TOKENS, newest first."""
    client = AsyncClient()
    prompts = ["a" * 300, "b" * 300, "c" * 300, "The newest"]
    chat = (
        await client.post("/api/chats/", {"prompt": prompts[0]}, content_type="application/json")
    ).json()
    for prompt in prompts[1:]:
        await read_all(await client.post(chat["drive_url"]))
        await wait_finished(uuid.UUID(chat["stream_id"]))
        chat = (
            await client.post(
                f"/api/chats/{chat['id']}/messages/",
                {"prompt": prompt},
                content_type="application/json",
            )
        ).json()
    # Each earlier turn is about 300 + 700 characters, 250 tokens: two of them fit, not three.
    with override_settings(CHAT_MAX_CONTEXT_TOKENS=625):
        reply = await read_all(await client.post(chat["drive_url"]))
    assert "(message 3 of this chat)" in reply, "the newest prompt and two earlier turns"


async def test_the_model_is_sent_earlier_answers_not_their_reasoning():
    client = AsyncClient()
    chat = (
        await client.post("/api/chats/", {"prompt": "First"}, content_type="application/json")
    ).json()
    first = await read_all(await client.post(chat["drive_url"]))
    await wait_finished(uuid.UUID(chat["stream_id"]))
    asked = [{"role": "user", "content": "First"}]
    assert first == demo_body(asked), "the body holds the reasoning, then the answer"
    follow = await client.post(
        f"/api/chats/{chat['id']}/messages/", {"prompt": "Second"}, content_type="application/json"
    )

    def sent() -> list[dict[str, str]]:
        found = Chat.objects.get(pk=chat["id"])
        return conversation(found, found.messages.get(pk=follow.json()["message_id"]))

    assert await sync_to_async(sent)() == [
        *asked,
        {"role": "assistant", "content": demo_answer(asked)},
        {"role": "user", "content": "Second"},
    ]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("drive", ["astream_response", "aui_message_stream_response"])
async def test_the_async_drives_refuse_wsgi_with_a_clear_error_as_the_sync_one_does(drive):
    from django.test import RequestFactory

    from streaming_app import aisdk, views
    from streaming_app.streams import acreate_stream

    async def pieces() -> Any:
        yield "never"

    stream = await acreate_stream()
    function = getattr(views, drive, None) or getattr(aisdk, drive)
    with pytest.raises(RuntimeError, match="under ASGI only"):
        await function(RequestFactory().post("/drive/"), stream.pk, pieces())
    with pytest.raises(RuntimeError, match="under ASGI only"):
        views.stream_response(RequestFactory().post("/drive/"), stream.pk, pieces())
    # Nothing was claimed: the stream can still be driven where it should be.
    assert (await Stream.objects.aget(pk=stream.pk)).status == Status.PENDING
