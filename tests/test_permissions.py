"""Who may drive and cancel a stream over HTTP: under the default policy (and
``anyone_reads_policy``) a stream without an owner is read-only — anyone with its id
reads it, over the body, Server-Sent Events and the websocket, and nobody drives or
cancels it; server code (``claim_stream`` + ``StreamRun``, ``cancel_stream``) does.
``ownerless_open_policy`` lets anyone drive and cancel it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.test import AsyncClient
from django.urls import path

from example_project import urls as example_urls
from streaming_app import astream_response
from streaming_app.aisdk.responses import aui_message_stream_response
from streaming_app.drive.run import StreamRun
from streaming_app.models import Status
from streaming_app.streams import (
    acancel_stream,
    aclaim_stream,
    acreate_stream,
    aget_stream_body,
    create_stream,
)

from .helpers import owned_stream, read_all, stream_row
from .test_fanout import FAST, Source, parse_events, viewer, wait_committed, watch

pytestmark = pytest.mark.django_db(transaction=True)

#: The stream ids the model was asked to answer for (its spending), in order.
asked: list[str] = []
#: What the model says for a stream (a Source the test feeds); by default "An answer."
sources: dict[str, Source] = {}


async def model(stream_id: str) -> AsyncIterator[str]:
    asked.append(stream_id)
    source = sources.get(stream_id)
    if source is None:
        yield "An answer."
        return
    async for piece in source:
        yield piece


async def drive(request: HttpRequest, stream_id: str) -> HttpResponseBase:
    """A project's driving view: it leaves the permission to the policy."""
    return await astream_response(request, stream_id, model(stream_id), policy=FAST)


async def drive_ai(request: HttpRequest, stream_id: str) -> HttpResponseBase:
    return await aui_message_stream_response(request, stream_id, model(stream_id), policy=FAST)


def ask(request: HttpRequest) -> JsonResponse:
    """A project's view that makes a stream for whoever asks (the README's)."""
    stream = create_stream(owner=request.user)
    return JsonResponse({"stream_id": str(stream.pk)}, status=201)


urlpatterns = [
    path("ask/", ask),
    path("drive/<str:stream_id>/", drive),
    path("ai/drive/<str:stream_id>/", drive_ai),
    *example_urls.urlpatterns,
]

OWNER_POLICY: dict[str, Any] = {}  # the library's default
ANYONE_READS = {"PERMISSION_POLICY": "streaming_app.permissions.anyone_reads_policy"}
OWNERLESS_OPEN = {"PERMISSION_POLICY": "streaming_app.permissions.ownerless_open_policy"}


@pytest.fixture(autouse=True)
def routes(settings: Any) -> Iterator[None]:
    settings.ROOT_URLCONF = __name__
    asked.clear()
    sources.clear()
    yield
    sources.clear()


@pytest.fixture(params=["owner_policy", "anyone_reads_policy"])
def default_policy(request: Any, settings: Any) -> None:
    """The library's default, and the policy the example project sets."""
    settings.STREAMING_APP = OWNER_POLICY if request.param == "owner_policy" else ANYONE_READS


@pytest.fixture(params=["anonymous", "signed-in stranger"])
async def someone(request: Any) -> Any:
    """Who asks: a visitor, or a user who is not the owner (of any of these streams)."""
    if request.param == "anonymous":
        return None
    return await get_user_model().objects.acreate(username=f"stranger-{uuid.uuid4().hex[:8]}")


async def client_of(user: Any) -> AsyncClient:
    client = AsyncClient()
    if user is not None:
        await client.aforce_login(user)
    return client


def read_only(action: str) -> tuple[int, Any]:
    """The 403 for driving or cancelling a stream without owner: why, and what to do."""
    return 403, {
        "error": f"you may not {action} this stream: a stream without owner is read-only "
        "under the default permission policy. Create it for a signed-in user (an anonymous "
        "visitor's stream has no owner), drive it from server code (claim_stream and "
        "StreamRun), or set STREAMING_APP['PERMISSION_POLICY'] to "
        "'streaming_app.permissions.ownerless_open_policy'"
    }


def refusal(response: Any) -> tuple[int, Any]:
    """A response's status and JSON body (a streaming one: the drive went ahead)."""
    if response.streaming:
        return response.status_code, "a streaming body"
    return response.status_code, json.loads(response.content)


async def drive_then_cancel(client: AsyncClient, answered: Any, stopped: Any, via: str) -> str:
    """As ``client``: drive ``answered`` to its end (through ``/drive/``), then drive
    ``stopped`` (through ``via``) and cancel it after its first piece, over HTTP; the
    body of the cancelled drive."""
    driven = await client.post(f"/drive/{answered.pk}/")
    assert driven.status_code == 200
    assert await asyncio.wait_for(read_all(driven), 10) == "An answer."

    sources[str(stopped.pk)] = source = Source()
    source.feed("Partial ")  # a text drive answers with its first piece
    live = await client.post(f"{via}{stopped.pk}/")
    assert live.status_code == 200
    reading = asyncio.create_task(read_all(live))
    await wait_committed(stopped.pk, len("Partial "))
    cancelled = await client.post(f"/api/streams/{stopped.pk}/cancel/")
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    assert (await aget_stream_body(stopped.pk)).text == "Partial "
    return await asyncio.wait_for(reading, 10)


async def test_nobody_drives_or_cancels_an_ownerless_stream_over_http(default_policy, someone):
    stream = await acreate_stream()
    client = await client_of(someone)
    for url in (f"/drive/{stream.pk}/", f"/ai/drive/{stream.pk}/"):
        assert refusal(await client.post(url)) == read_only("drive")
    cancelled = await client.post(f"/api/streams/{stream.pk}/cancel/")
    assert refusal(cancelled) == read_only("cancel")
    assert asked == [], "the model was asked: its budget spent by a stranger"
    row = await stream_row(stream.pk)
    assert (row.status, row.length) == (Status.PENDING, 0)

    # Server code is not subject to the policy: a task claims and runs it.
    await aclaim_stream(stream.pk)
    run = StreamRun(stream.pk, model(str(stream.pk)), policy=FAST)
    run.start()
    assert await asyncio.wait_for(run.wait(), 10) == Status.DONE
    assert (await aget_stream_body(stream.pk)).text == "An answer."


async def test_an_anonymous_visitors_stream_has_no_owner_and_its_drive_says_why_not(
    default_policy,
):
    client = await client_of(None)
    asked_for = await client.post("/ask/")
    assert asked_for.status_code == 201, asked_for.content
    stream_id = asked_for.json()["stream_id"]
    assert (await stream_row(stream_id)).owner_id is None
    assert (await client.get(f"/api/streams/{stream_id}/")).json()["status"] == "pending"
    assert refusal(await client.post(f"/drive/{stream_id}/")) == read_only("drive")
    assert refusal(await client.post(f"/api/streams/{stream_id}/cancel/")) == read_only("cancel")
    assert asked == []

    # A signed-in visitor's stream is theirs, to drive.
    user = await get_user_model().objects.acreate(username=f"asker-{uuid.uuid4().hex[:8]}")
    client = await client_of(user)
    stream_id = (await client.post("/ask/")).json()["stream_id"]
    assert (await stream_row(stream_id)).owner_id == user.pk
    driven = await client.post(f"/drive/{stream_id}/")
    assert driven.status_code == 200
    assert await asyncio.wait_for(read_all(driven), 10) == "An answer."


async def test_an_ownerless_stream_is_read_by_anyone_and_cancelled_by_server_code(
    default_policy, someone
):
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    source = Source()
    run = StreamRun(stream.pk, source, policy=FAST)
    run.start()
    source.feed("Hello ")
    await wait_committed(stream.pk, len("Hello "))

    client = await client_of(someone)
    body = await client.get(f"/api/streams/{stream.pk}/")
    assert (body.status_code, body.json()["text"]) == (200, "Hello ")
    events = await client.get(f"/api/streams/{stream.pk}/events/")
    assert events.status_code == 200
    sse = asyncio.create_task(read_all(events))
    websocket = asyncio.create_task(watch(await viewer(stream.pk, user=someone or AnonymousUser())))

    refused = await client.post(f"/api/streams/{stream.pk}/cancel/")
    assert refusal(refused) == read_only("cancel")
    source.feed("world.")  # the run goes on: it was not cancelled
    await wait_committed(stream.pk, len("Hello world."))
    assert (await stream_row(stream.pk)).status == Status.STREAMING

    await acancel_stream(stream.pk)  # server code
    assert await asyncio.wait_for(run.wait(), 10) == Status.CANCELLED
    seen = await asyncio.wait_for(websocket, 10)
    assert (seen["text"], seen["statuses"][-1], seen["code"]) == ("Hello world.", "cancelled", 1000)
    parsed = parse_events(await asyncio.wait_for(sse, 10))
    assert "".join(data["text"] for kind, _, data in parsed if kind == "text") == "Hello world."
    assert parsed[-1][2] == {"type": "status", "status": "cancelled", "error": None}


async def test_the_owner_drives_and_cancels_their_stream_and_not_an_ownerless_one(
    default_policy,
):
    answered, owner = await owned_stream()
    stopped, _ = await owned_stream(owner)
    client = await client_of(owner)
    body = await drive_then_cancel(client, answered, stopped, via="/ai/drive/")
    chunks = [json.loads(line[6:]) for line in body.split("\n") if line.startswith("data: {")]
    assert chunks[-1] == {"type": "abort", "reason": "cancelled"}

    ownerless = await acreate_stream()
    refused = await client.post(f"/drive/{ownerless.pk}/")
    assert refusal(refused) == read_only("drive")
    refused = await client.post(f"/api/streams/{ownerless.pk}/cancel/")
    assert refusal(refused) == read_only("cancel")
    assert asked == [str(answered.pk), str(stopped.pk)]
    assert (await stream_row(ownerless.pk)).status == Status.PENDING


async def test_ownerless_open_policy_lets_anyone_drive_and_cancel_an_ownerless_stream(
    settings, someone
):
    settings.STREAMING_APP = OWNERLESS_OPEN
    client = await client_of(someone)
    answered, stopped = await acreate_stream(), await acreate_stream()
    assert await drive_then_cancel(client, answered, stopped, via="/drive/") == "Partial "

    # A stream with an owner stays its owner's.
    owned, _ = await owned_stream()
    refused = await client.post(f"/drive/{owned.pk}/")
    assert refusal(refused) == (403, {"error": "you may not drive this stream"})
    assert refusal(await client.get(f"/api/streams/{owned.pk}/")) == (
        403,
        {"error": "you may not read this stream"},
    )
