"""Property-based fuzzing of the HTTP endpoints and of the websocket's query strings and
frames: whatever comes in, the answer is a 2xx-4xx or a close code, never a 5xx, never
an unhandled exception, never a hang."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import AsyncClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from example_project.chat.models import Chat, Message
from streaming_app.models import Status

from .helpers import written
from .test_fanout import app_as

pytestmark = pytest.mark.django_db(transaction=True)

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

junk = st.text(st.characters(codec="utf-8"), max_size=40)
ids = st.one_of(st.just("{stream}"), st.just("{chat}"), st.uuids().map(str), junk)
paths = st.sampled_from(
    [
        "/api/streams/{id}/",
        "/api/streams/{id}/events/",
        "/api/streams/{id}/cancel/",
        "/api/chats/",
        "/api/chats/{id}/",
        "/api/chats/{id}/messages/",
        "/api/chats/{id}/stream/",
        "/chats/{id}/",
    ]
)
bodies = st.one_of(
    st.binary(max_size=200),
    junk.map(str.encode),
    st.fixed_dictionaries({"prompt": st.one_of(junk, st.integers(), st.none())}).map(
        lambda d: json.dumps(d).encode()
    ),
)


@pytest.fixture
def targets() -> dict[str, str]:
    owner = get_user_model().objects.create(username="owner")
    stream = written(["Fuzz ", "me."], status=Status.DONE)
    chat = Chat.objects.create(owner=owner, title="fuzz")
    Message.objects.create(chat=chat, prompt="fuzz", stream=stream)
    return {"stream": str(stream.pk), "chat": str(chat.pk)}


@FUZZ
@given(
    method=st.sampled_from(["get", "post", "put", "patch", "delete", "options"]),
    path=paths,
    target=ids,
    offset=st.one_of(st.none(), junk, st.integers(-(10**20), 10**20).map(str)),
    # Header values are bytes, read as latin-1, without line breaks.
    last_event_id=st.one_of(
        st.none(),
        st.text(st.characters(codec="latin-1", exclude_characters="\r\n\x00"), max_size=30),
    ),
    body=bodies,
)
def test_no_http_request_gets_a_5xx(targets, method, path, target, offset, last_event_id, body):
    target = target.format(**targets) if target in ("{stream}", "{chat}") else target
    url = path.format(id=quote(target, safe="")) if target else path.format(id="x")
    query = {} if offset is None else {"offset": offset}
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}

    async def request() -> tuple[int, bytes]:
        client = AsyncClient()
        call = getattr(client, method)
        if method in ("post", "put", "patch"):
            url_with_query = url + ("?offset=" + quote(offset) if offset is not None else "")
            response = await call(
                url_with_query, body, content_type="application/json", headers=headers
            )
        else:
            response = await call(url, query, headers=headers)
        if response.streaming:
            content = b"".join([part async for part in response.streaming_content])
        else:
            content = response.content
        return response.status_code, content

    status, content = asyncio.run(asyncio.wait_for(request(), 10))
    assert status < 500, (method, url, status, content[:300])
    if url.startswith("/api/") and status >= 400 and status != 404 or status == 405:
        assert json.loads(content)["error"], content


@FUZZ
@given(target=ids, query=st.one_of(junk, st.binary(max_size=60).map(lambda b: quote(b, safe="=&"))))
def test_no_websocket_query_string_crashes_the_consumer(targets, target, query):
    target = target.format(**targets) if target in ("{stream}", "{chat}") else target

    async def attempt() -> int:
        channel_layers.backends.clear()
        path = f"/ws/streams/{quote(target, safe='')}/?{query}"
        communicator = WebsocketCommunicator(app_as(None), path)
        try:
            connected, _ = await communicator.connect(timeout=5)
            assert connected
            while True:
                output = await communicator.receive_output(timeout=5)
                if output["type"] == "websocket.close":
                    return int(output.get("code", 1000))
        finally:
            await communicator.disconnect()

    try:
        code = asyncio.run(attempt())
    except ValueError as exc:  # the router: a path that is not a websocket route
        assert "No route found" in str(exc)
        return
    assert code in (1000, 4400, 4404)


@FUZZ
@given(
    frame=st.one_of(
        junk.map(lambda t: {"text": t}),
        st.binary(max_size=100).map(lambda b: {"bytes": b}),
    )
)
def test_no_websocket_frame_crashes_the_consumer(targets, frame):
    async def attempt() -> int:
        # Each example has its own event loop, and so its own in-memory layer.
        channel_layers.backends.clear()
        # Still streaming: the socket stays open until the frame.
        stream = await sync_to_async(written)(["live"])
        communicator = WebsocketCommunicator(app_as(None), f"/ws/streams/{stream.pk}/")
        try:
            connected, _ = await communicator.connect(timeout=5)
            assert connected
            # (Bounds, not paces: a loaded machine may take more than the default 1 s.)
            await communicator.receive_json_from(timeout=10)
            await communicator.receive_json_from(timeout=10)
            await communicator.send_input({"type": "websocket.receive", **frame})
            output = await communicator.receive_output(timeout=5)
            return int(output["code"])
        finally:
            await communicator.disconnect()

    assert asyncio.run(attempt()) == 4400
