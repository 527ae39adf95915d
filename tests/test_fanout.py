"""Viewers over websockets and Server-Sent Events, in process: the protocol, exact
resume at every offset, close codes, and loss of group messages."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import AsyncClient, override_settings

from streaming_app.models import Status
from streaming_app.routing import websocket_urlpatterns
from streaming_app.streams import aclaim_stream, acreate_stream, claim_stream, create_stream
from streaming_app.writer import Batch, FlushPolicy, StreamRun, write_batch

from .helpers import written

pytestmark = pytest.mark.django_db(transaction=True)

TEXT = "Héllo wörld! 😀👩🏽‍💻 e\u0301 中文。\nThe end."
FAST = FlushPolicy(min_interval=0.0, max_interval=0.02, max_chars=4096)


def app_as(user: Any = None):
    router = URLRouter(websocket_urlpatterns)

    async def app(scope, receive, send):
        return await router({**scope, "user": user}, receive, send)

    return app


async def viewer(stream_id, query: str = "", user: Any = None) -> WebsocketCommunicator:
    path = f"/ws/streams/{stream_id}/" + (f"?{query}" if query else "")
    communicator = WebsocketCommunicator(app_as(user), path)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def watch(communicator: WebsocketCommunicator, patience: float = 10) -> dict[str, Any]:
    """Read until the server closes: the text as a client assembles it, the statuses,
    the close code. Fails if a text message does not start where the text ends."""
    text, first_offset = "", None
    statuses: list[str] = []
    try:
        while True:
            output = await communicator.receive_output(timeout=patience)
            if output["type"] == "websocket.close":
                return {
                    "text": text,
                    "statuses": statuses,
                    "code": output.get("code"),
                    "reason": output.get("reason"),
                    "start": first_offset,
                }
            message = json.loads(output["text"])
            if message["type"] == "text":
                if first_offset is None:
                    first_offset = message["offset"]
                    text = message["text"]
                else:
                    assert message["offset"] == first_offset + len(text), "overlap or gap"
                    text += message["text"]
            else:
                assert message["type"] == "status"
                statuses.append(message["status"])
    finally:
        await communicator.disconnect()


@sync_to_async
def finished_stream(pieces: list[str]) -> uuid.UUID:
    return written(pieces, status=Status.DONE).pk


class Source:
    """A generator the test feeds piece by piece."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def __aiter__(self):
        while (piece := await self.queue.get()) is not None:
            yield piece

    def feed(self, *pieces: str | None) -> None:
        for piece in pieces:
            self.queue.put_nowait(piece)


async def live_stream() -> tuple[uuid.UUID, Source, StreamRun]:
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    source = Source()
    run = StreamRun(stream.pk, source, policy=FAST)
    run.start()
    return stream.pk, source, run


async def test_snapshot_then_deltas_then_status_then_close():
    stream_id, source, run = await live_stream()
    communicator = await viewer(stream_id)
    assert await communicator.receive_json_from() == {"type": "text", "offset": 0, "text": ""}
    assert await communicator.receive_json_from() == {
        "type": "status",
        "status": "streaming",
        "error": None,
    }
    source.feed("One. ")
    assert await communicator.receive_json_from(timeout=5) == {
        "type": "text",
        "offset": 0,
        "text": "One. ",
    }
    source.feed("Two. ", None)
    result = await watch(communicator)
    assert result["text"] == "Two. " and result["start"] == 5
    assert result["statuses"] == ["done"] and result["code"] == 1000
    await run.wait()


async def test_a_viewer_joining_mid_stream_gets_the_past_then_the_rest_exactly_once():
    stream_id, source, run = await live_stream()
    source.feed("Before ", "joining. ")
    await asyncio.sleep(0.3)
    communicator = await viewer(stream_id)
    assert await communicator.receive_json_from() == {
        "type": "text",
        "offset": 0,
        "text": "Before joining. ",
    }
    assert (await communicator.receive_json_from())["status"] == "streaming"
    source.feed("After ", "joining.", None)
    result = await watch(communicator)
    assert (result["start"], result["text"]) == (16, "After joining.")
    assert result["statuses"] == ["done"]
    assert await run.wait() == Status.DONE


async def test_a_pending_stream_is_watched_from_before_its_claim():
    stream = await acreate_stream()
    communicator = await viewer(stream.pk)
    assert await communicator.receive_json_from() == {"type": "text", "offset": 0, "text": ""}
    assert await communicator.receive_json_from() == {
        "type": "status",
        "status": "pending",
        "error": None,
    }
    await aclaim_stream(stream.pk)
    run = StreamRun(stream.pk, Source_of("Claimed and streamed."), policy=FAST)
    run.start()
    result = await watch(communicator)
    assert result["statuses"] == ["streaming", "done"]
    assert result["text"] == "Claimed and streamed."


def Source_of(*pieces: str) -> Source:
    source = Source()
    source.feed(*pieces, None)
    return source


async def test_resume_at_every_offset_of_a_finished_stream_gives_exactly_the_rest():
    stream_id = await finished_stream(["Héllo wörld! ", "😀👩🏽‍💻 e\u0301 ", "中文。\nThe end."])
    for offset in range(len(TEXT) + 1):
        result = await watch(await viewer(stream_id, f"offset={offset}"))
        assert (result["start"], result["text"]) == (offset, TEXT[offset:])
        assert (result["statuses"], result["code"]) == (["done"], 1000)


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("offset=-1", 4400),
        ("offset=abc", 4400),
        ("offset=1.5", 4400),
        ("offset=1&offset=2", 4400),
        ("offset=999", 4400),
        ("offset=%FF%00", 4400),
    ],
)
async def test_bad_offsets_close_4400(query, code):
    stream_id = await finished_stream(["short"])
    result = await watch(await viewer(stream_id, query))
    assert result["code"] == code
    assert "offset" in result["reason"]
    assert result["text"] == ""


@pytest.mark.parametrize("stream_id", [str(uuid.uuid4()), "not-a-uuid", "%00"])
async def test_unknown_streams_close_4404(stream_id):
    result = await watch(await viewer(stream_id))
    assert (result["code"], result["reason"]) == (4404, "no such stream")


@override_settings(STREAMING_APP={"PERMISSION_POLICY": "streaming_app.permissions.owner_policy"})
async def test_an_owners_stream_is_refused_to_others_with_4403():
    owner = await get_user_model().objects.acreate(username="owner")
    stream = await sync_to_async(create_stream)(owner=owner)
    assert (await watch(await viewer(stream.pk)))["code"] == 4403
    stranger = await get_user_model().objects.acreate(username="stranger")
    assert (await watch(await viewer(stream.pk, user=stranger)))["code"] == 4403
    own = await viewer(stream.pk, user=owner)
    assert (await own.receive_json_from())["type"] == "text"
    await own.disconnect()


async def test_past_the_end_of_a_live_stream_the_viewer_waits():
    stream_id, source, run = await live_stream()
    communicator = await viewer(stream_id, "offset=4")
    assert await communicator.receive_json_from() == {"type": "text", "offset": 4, "text": ""}
    source.feed("abcdef", None)
    result = await watch(communicator)
    assert result["text"] == "ef"
    await run.wait()


async def test_a_frame_from_a_viewer_closes_4400():
    stream_id = (await acreate_stream()).pk
    communicator = await viewer(stream_id)
    await communicator.receive_json_from()
    await communicator.receive_json_from()
    await communicator.send_to(text_data="{not json")
    result = await watch(communicator)
    assert result["code"] == 4400


async def follow_with_loss(layer: str, resync_interval: float) -> list[dict[str, Any]]:
    """Three viewers of a stream driven through ``layer``; what each ended with."""
    with override_settings(
        CHANNEL_LAYERS={"default": {"BACKEND": layer}},
        STREAMING_APP={"RESYNC_INTERVAL": resync_interval},
    ):
        stream_id, source, run = await live_stream()
        viewers = [await viewer(stream_id) for _ in range(3)]
        watching = [asyncio.create_task(watch(v)) for v in viewers]
        for i in range(30):
            source.feed(f"piece {i}. ")
            await asyncio.sleep(0.01)
        source.feed(None)
        await run.wait()
        return await asyncio.gather(*watching)


@pytest.mark.parametrize(
    ("layer", "resync_interval"),
    [
        # Gaps are filled from the database as soon as the next message shows them.
        ("tests.layers.DropEveryOtherLayer", 60),
        # A lost terminal status is read from the database after a silence.
        ("tests.layers.DropTerminalLayer", 0.3),
    ],
)
async def test_viewers_end_exact_when_group_messages_are_dropped(layer, resync_interval):
    expected = "".join(f"piece {i}. " for i in range(30))
    for result in await follow_with_loss(layer, resync_interval):
        assert (result["start"], result["text"]) == (0, expected)
        assert result["statuses"][-1] == "done" and result["code"] == 1000


async def test_viewers_end_exact_when_the_layer_is_over_capacity():
    with override_settings(
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "channels.layers.InMemoryChannelLayer",
                "CONFIG": {"capacity": 1},
            }
        },
        STREAMING_APP={"RESYNC_INTERVAL": 0.3},
    ):
        stream = await acreate_stream()
        communicator = await viewer(stream.pk)
        watching = asyncio.create_task(watch(communicator))

        @sync_to_async
        def burst() -> str:
            # Flushes as fast as the database takes them: the viewer cannot keep up.
            claim_stream(stream.pk)
            text = ""
            for seq in range(40):
                write_batch(stream.pk, Batch(seq=seq, offset=len(text), text=f"{seq}, "))
                text += f"{seq}, "
            write_batch(
                stream.pk, Batch(seq=40, offset=len(text), text="", terminal=("done", None))
            )
            return text

        expected = await burst()
        result = await watching
    assert (result["text"], result["statuses"][-1], result["code"]) == (expected, "done", 1000)


# Server-Sent Events -------------------------------------------------------------------


async def sse(path: str, **headers: str) -> list[tuple[str, str, Any]]:
    """GET an event stream to its end: (event, id, data) for each event, ('comment', '', text)
    for each comment."""
    response = await AsyncClient().get(path, headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/event-stream; charset=utf-8"
    raw = b"".join([part async for part in response.streaming_content]).decode()  # type: ignore[attr-defined]
    events = []
    for block in raw.split("\n\n"):
        if not block:
            continue
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                events.append(("comment", "", line))
            else:
                name, _, value = line.partition(": ")
                fields[name] = value
        if "event" in fields:
            events.append((fields["event"], fields["id"], json.loads(fields["data"])))
    return events


async def test_sse_resumes_exactly_from_every_last_event_id():
    stream_id = await finished_stream(["Héllo wörld! ", "😀👩🏽‍💻 e\u0301 ", "中文。\nThe end."])
    for offset in range(len(TEXT)):
        events = await sse(f"/api/streams/{stream_id}/events/", **{"Last-Event-ID": str(offset)})
        assert events == [
            ("text", str(len(TEXT)), {"type": "text", "offset": offset, "text": TEXT[offset:]}),
            ("status", str(len(TEXT)), {"type": "status", "status": "done", "error": None}),
        ]
    by_query = await sse(f"/api/streams/{stream_id}/events/?offset=3")
    assert by_query[0][2]["text"] == TEXT[3:]
    # An EventSource that reconnects after reading everything is told to stop (204);
    # a first connection at the end still gets the status.
    ended = await AsyncClient().get(
        f"/api/streams/{stream_id}/events/", headers={"Last-Event-ID": str(len(TEXT))}
    )
    assert ended.status_code == 204
    at_end = await sse(f"/api/streams/{stream_id}/events/?offset={len(TEXT)}")
    assert [kind for kind, _, _ in at_end] == ["text", "status"]


@override_settings(STREAMING_APP={"SSE_KEEPALIVE": 0.1, "RESYNC_INTERVAL": 5})
async def test_sse_follows_a_live_stream_with_keep_alives_to_its_end():
    stream_id, source, run = await live_stream()
    reading = asyncio.create_task(sse(f"/api/streams/{stream_id}/events/"))
    await asyncio.sleep(0.35)  # silence: keep-alive comments
    source.feed("Live ", "text.", None)
    events = await reading
    assert ("comment", "", ": keep-alive") in events
    data = [e for e in events if e[0] != "comment"]
    text = "".join(d["text"] for kind, _, d in data if kind == "text")
    assert text == "Live text."
    assert [d["status"] for kind, _, d in data if kind == "status"] == ["streaming", "done"]
    # Each event's id is the offset after it: resuming from it gives exactly the rest.
    assert data[-1][1] == str(len("Live text."))
    await run.wait()


@override_settings(
    CHANNEL_LAYERS={"default": {"BACKEND": "tests.layers.DropTerminalLayer"}},
    STREAMING_APP={"RESYNC_INTERVAL": 0.2},
)
async def test_sse_learns_a_dropped_terminal_status_from_the_database():
    stream_id, source, run = await live_stream()
    reading = asyncio.create_task(sse(f"/api/streams/{stream_id}/events/"))
    await asyncio.sleep(0.1)
    source.feed("Last words.", None)
    events = await asyncio.wait_for(reading, timeout=5)
    assert events[-1][2] == {"type": "status", "status": "done", "error": None}
    assert "".join(d["text"] for kind, _, d in events if kind == "text") == "Last words."
    await run.wait()


@pytest.mark.parametrize(
    ("path", "headers", "code"),
    [
        ("/api/streams/nope/events/", {}, 404),
        (f"/api/streams/{uuid.uuid4()}/events/", {}, 404),
        ("/api/streams/{id}/events/?offset=-3", {}, 400),
        ("/api/streams/{id}/events/", {"Last-Event-ID": "x"}, 400),
        ("/api/streams/{id}/events/?offset=99", {}, 400),
    ],
)
async def test_sse_bad_requests_are_json_errors(path, headers, code):
    stream_id = await finished_stream(["short"])
    response = await AsyncClient().get(path.format(id=stream_id), headers=headers)
    assert response.status_code == code
    assert response.json()["error"]
