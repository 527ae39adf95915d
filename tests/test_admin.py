"""The admin: streams are inspected, never edited; deleting a live one stops it first."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

from streaming_app.drive.flush import FlushPolicy
from streaming_app.drive.run import StreamRun
from streaming_app.models import Chunk, Status, Stream
from streaming_app.parts import Finish, Part, Reasoning, ToolCall, ToolResult
from streaming_app.streams import aclaim_stream, acreate_stream

from .helpers import paced, run_to_end, written

pytestmark = pytest.mark.django_db(transaction=True)


def admin_client() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("admin", "a@example.com", "pw"))
    return client


def test_a_stream_can_be_viewed_but_not_saved_in_the_admin():
    stream = written(["live ", "text"])
    client = admin_client()
    url = f"/admin/streaming_app/stream/{stream.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200
    assert b"live text" in page.content
    assert b'name="_save"' not in page.content, "a Save button"
    # A save would write the whole row as it was loaded, under a live writer.
    assert client.post(url, {"_save": "Save"}).status_code == 403
    row = Stream.objects.get(pk=stream.pk)
    assert (row.status, row.length) == (Status.STREAMING, len("live text"))


@override_settings(STREAMING_APP={"HEARTBEAT_INTERVAL": 30, "TIMEOUT": 60})
async def test_deleting_a_live_stream_in_the_admin_stops_its_generator_at_once():
    closed = asyncio.Event()

    async def model():
        try:
            while True:
                yield "word "
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    # No flush or heartbeat falls due for 30 s: only the deletion can stop it.
    run = StreamRun(stream.pk, model(), policy=FlushPolicy(30, 60, 10**6))
    run.start()
    await asyncio.sleep(0.05)

    @sync_to_async
    def delete_in_the_admin() -> int:
        response = admin_client().post(
            f"/admin/streaming_app/stream/{stream.pk}/delete/", {"post": "yes"}
        )
        return response.status_code

    assert await delete_in_the_admin() == 302
    await asyncio.wait_for(closed.wait(), 5)
    await asyncio.wait_for(run.wait(), 5)
    assert not await Stream.objects.filter(pk=stream.pk).aexists()
    assert not await Chunk.objects.filter(stream_id=stream.pk).aexists()


async def test_the_admin_shows_a_stream_with_parts_part_by_part():
    pieces: list[str | Part] = [
        Reasoning("<b>thinking</b>"),
        ToolCall("c1", "weather", '{"city":"Oslo"}'),
        ToolResult("c1", {"temp": -3}),
        "It is cold.",
        Finish("stop", {"output_tokens": 7}),
    ]
    stream_id, _ = await run_to_end(paced(pieces))
    page = await sync_to_async(
        lambda: admin_client().get(f"/admin/streaming_app/stream/{stream_id}/change/")
    )()
    html = page.content.decode()
    assert page.status_code == 200
    assert "&lt;b&gt;thinking&lt;/b&gt;" in html and "<b>thinking" not in html
    assert (
        html.index("reasoning") < html.index("tool call weather (c1)") < html.index("It is cold.")
    )
    assert "{&quot;temp&quot;: -3}" in html and "finish: stop" in html
