"""Viewers over websockets and Server-Sent Events, in process: the protocol, exact
resume at every offset, close codes, and loss of group messages."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import AsyncClient, override_settings

from streaming_app.drive.flush import Batch, FlushPolicy
from streaming_app.drive.persist import write_batch
from streaming_app.drive.run import StreamRun
from streaming_app.fanout import reads as hub_module
from streaming_app.fanout.publish import Update, group_name, group_send
from streaming_app.models import Chunk, Status
from streaming_app.routing import websocket_urlpatterns
from streaming_app.streams import aclaim_stream, acreate_stream, create_stream

from .faults import DatabaseAway
from .helpers import stream_row, written

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


async def watch(
    communicator: WebsocketCommunicator,
    patience: float = 10,
    ready: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Read until the server closes: the text as a client assembles it, the statuses,
    the close code. Fails if a text message does not start where the text ends.
    ``ready`` is set once the snapshot (text and status) has arrived."""
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
                if ready is not None:
                    ready.set()
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


async def wait_committed(stream_id: uuid.UUID, length: int, within: float = 5) -> None:
    """Until the stream's committed text reaches ``length``."""
    deadline = asyncio.get_running_loop().time() + within
    while (await stream_row(stream_id)).length < length:
        assert asyncio.get_running_loop().time() < deadline, f"{length} never committed"
        await asyncio.sleep(0.01)


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
    await wait_committed(stream_id, len("Before joining. "))
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


class RemoteWriter:
    """A writer in another process, as this process's viewers see it: it commits its
    batches (in a thread) and publishes each one through the channel layer only."""

    def __init__(self, stream_id: uuid.UUID) -> None:
        self.stream_id = stream_id
        self.seq = self.offset = 0
        self.unpublished: list[Update] = []

    async def write(self, text: str, status: str | None = None, *, publish: bool = True) -> None:
        batch = Batch(self.seq, self.offset, text, (status, None) if status else None)
        await sync_to_async(write_batch)(self.stream_id, batch)
        self.unpublished.append(
            Update(self.stream_id, self.offset, text, status or "streaming", None)
        )
        self.seq, self.offset = self.seq + (1 if text else 0), batch.end
        if publish:
            await self.publish()

    async def publish(self) -> None:
        """Publish what was written at once (a burst that fills a small capacity)."""
        updates, self.unpublished = self.unpublished, []
        group = group_name(self.stream_id)
        await asyncio.gather(*(group_send(group, update.message()) for update in updates))


async def watched(stream_id: uuid.UUID, viewers: int) -> list[asyncio.Task[dict[str, Any]]]:
    """Websocket viewers of the stream, once each has its snapshot."""
    tasks, readies = [], []
    for _ in range(viewers):
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(watch(await viewer(stream_id), ready=ready)))
        readies.append(ready.wait())
    await asyncio.wait_for(asyncio.gather(*readies), 10)
    return tasks


async def follow_a_remote_writer(
    pieces: list[str], viewers: int = 3, *, burst: bool = False
) -> list[dict[str, Any]]:
    """Viewers here of a stream written elsewhere; what each ended with. ``burst``
    publishes every update at once, after the last commit."""
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    watching = await watched(stream.pk, viewers)
    writer = RemoteWriter(stream.pk)
    for piece in pieces:
        await writer.write(piece, publish=not burst)
    await writer.write("", "done", publish=not burst)
    await writer.publish()
    return await asyncio.gather(*watching)


PIECES = [f"piece {i}. " for i in range(30)]


@pytest.mark.parametrize(
    ("layer", "resync_interval"),
    [
        # Gaps are filled from the database as soon as the next message shows them.
        ("tests.layers.DropEveryOtherLayer", 60),
        # A lost terminal status is read from the database after a silence.
        ("tests.layers.DropTerminalLayer", 0.3),
        # A layer over capacity (channels-redis drops past `capacity` too).
        ("tests.layers.CountingLayer", 0.3),
    ],
)
async def test_viewers_end_exact_when_group_messages_are_dropped(layer, resync_interval):
    over_capacity = layer.endswith("CountingLayer")
    with override_settings(
        CHANNEL_LAYERS={
            "default": {"BACKEND": layer, "CONFIG": {"capacity": 1} if over_capacity else {}}
        },
        STREAMING_APP={"RESYNC_INTERVAL": resync_interval},
    ):
        results = await follow_a_remote_writer(PIECES, burst=over_capacity)
        dropped = get_channel_layer().dropped
    assert dropped, "the layer lost nothing: the test proves nothing"
    for result in results:
        assert (result["start"], result["text"]) == (0, "".join(PIECES))
        assert result["statuses"][-1] == "done" and result["code"] == 1000


@override_settings(
    CHANNEL_LAYERS={"default": {"BACKEND": "tests.layers.CountingLayer"}},
    STREAMING_APP={"RESYNC_INTERVAL": 60},
)
async def test_a_gap_shown_while_the_database_is_read_is_read_again(monkeypatch):
    """A read of the database (after a gap) that began before the last commit, and a
    gap shown by the terminal message while it runs: the feed reads again, at once,
    rather than waiting RESYNC_INTERVAL (the cause of a flaky test_fanout run)."""
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    [viewer_task] = await watched(stream.pk, 1)
    read_made, release = asyncio.Event(), asyncio.Event()
    original = hub_module.read_for_viewers
    reads: list[int] = []

    async def slow_read(stream_id: uuid.UUID, start: int, users: dict[str, Any]) -> Any:
        found = await original(stream_id, start, users)
        reads.append(start)
        if len(reads) == 1:  # the first read holds its (old) result back
            read_made.set()
            await release.wait()
        return found

    monkeypatch.setattr(hub_module, "read_for_viewers", slow_read)
    writer = RemoteWriter(stream.pk)
    await writer.write("One. ", publish=False)
    writer.unpublished.clear()  # lost: the next message shows the gap
    await writer.write("Two. ")
    await asyncio.wait_for(read_made.wait(), 5)
    await writer.write("Three.", publish=False)
    writer.unpublished.clear()
    await writer.write("", "done")  # a gap again, while the first read runs
    release.set()
    result = await asyncio.wait_for(viewer_task, 5)
    assert (result["text"], result["statuses"][-1]) == ("One. Two. Three.", "done")
    assert len(reads) == 2, reads


# Server-Sent Events -------------------------------------------------------------------


async def sse(path: str, **headers: str) -> list[tuple[str, str, Any]]:
    """GET an event stream to its end: (event, id, data) for each event, ('comment', '', text)
    for each comment."""
    response = await AsyncClient().get(path, headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/event-stream; charset=utf-8"
    raw = b"".join([part async for part in response.streaming_content]).decode()  # type: ignore[attr-defined]
    return parse_events(raw)


def parse_events(raw: str) -> list[tuple[str, str, Any]]:
    events: list[tuple[str, str, Any]] = []
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
    response = await AsyncClient().get(f"/api/streams/{stream_id}/events/")
    assert response.status_code == 200
    parts = response.streaming_content.__aiter__()  # type: ignore[attr-defined]
    raw = ""
    while ": keep-alive" not in raw:  # silence: keep-alive comments
        raw += (await asyncio.wait_for(parts.__anext__(), 5)).decode()
    source.feed("Live ", "text.", None)
    events = parse_events(raw + "".join([part.decode() async for part in parts]))
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
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    response = await AsyncClient().get(f"/api/streams/{stream.pk}/events/")
    assert response.status_code == 200
    parts = response.streaming_content.__aiter__()  # type: ignore[attr-defined]
    snapshot = (await parts.__anext__()).decode()
    writer = RemoteWriter(stream.pk)
    await writer.write("Last words.")
    await writer.write("", "done")
    rest = [part.decode() async for part in parts]
    events = parse_events(snapshot + "".join(rest))
    assert [m for m in get_channel_layer().dropped if m["status"] == "done"], "nothing dropped"
    statuses = [d["status"] for kind, _, d in events if kind == "status"]
    assert statuses == ["streaming", "done"], "the client saw it live, then learnt the end"
    assert "".join(d["text"] for kind, _, d in events if kind == "text") == "Last words."


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


# Without a channel layer -----------------------------------------------------------


@sync_to_async
def write_elsewhere(stream_id: uuid.UUID, pieces: list[str], status: str | None) -> None:
    """Commit pieces as a writer in another process would: nothing is published here."""
    offset = sum(len(c.text) for c in Chunk.objects.filter(stream_id=stream_id))
    seq = Chunk.objects.filter(stream_id=stream_id).count()
    for piece in pieces:
        write_batch(stream_id, Batch(seq=seq, offset=offset, text=piece))
        seq, offset = seq + 1, offset + len(piece)
    if status:
        write_batch(stream_id, Batch(seq=seq, offset=offset, text="", terminal=(status, None)))


@override_settings(CHANNEL_LAYERS={}, STREAMING_APP={"RESYNC_INTERVAL": 0.1})
async def test_without_a_channel_layer_a_websocket_viewer_follows_from_the_database():
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    communicator = await viewer(stream.pk)
    snapshot = asyncio.Event()
    watching = asyncio.create_task(watch(communicator, ready=snapshot))
    await asyncio.wait_for(snapshot.wait(), 5)  # else it could all be in the snapshot
    await write_elsewhere(stream.pk, ["Hello ", "world. "], None)
    await write_elsewhere(stream.pk, ["Bye."], "done")
    result = await watching
    assert (result["text"], result["statuses"], result["code"]) == (
        "Hello world. Bye.",
        ["streaming", "done"],
        1000,
    )


@override_settings(CHANNEL_LAYERS={}, STREAMING_APP={"RESYNC_INTERVAL": 0.1})
async def test_without_a_channel_layer_server_sent_events_follow_from_the_database():
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    reading = asyncio.create_task(sse(f"/api/streams/{stream.pk}/events/"))
    await write_elsewhere(stream.pk, ["Hello ", "world."], "done")
    events = await asyncio.wait_for(reading, 10)
    assert "".join(d["text"] for kind, _, d in events if kind == "text") == "Hello world."
    assert events[-1][2] == {"type": "status", "status": "done", "error": None}


async def test_text_goes_on_the_wire_as_utf_8_not_escapes():
    stream_id = await finished_stream(["Héllo 😀 中文"])
    communicator = await viewer(stream_id)
    raw = (await communicator.receive_output())["text"]
    await communicator.disconnect()
    assert raw == '{"type":"text","offset":0,"text":"Héllo 😀 中文"}'
    events = await AsyncClient().get(f"/api/streams/{stream_id}/events/")
    body = b"".join([part async for part in events.streaming_content]).decode()  # type: ignore[attr-defined]
    assert '"text":"Héllo 😀 中文"' in body and "\\u" not in body


async def test_a_viewer_refused_while_the_database_is_away_resumes_exactly():
    """4503 means: come back later and resume from your offset (docs/protocol.md)."""
    stream_id = await finished_stream(["Before the outage. ", "After it."])
    with DatabaseAway() as fault:
        refused = await watch(await viewer(stream_id, "offset=7"))
        fault.back()
    assert fault.refused, "the fault did not hit"
    assert (refused["code"], refused["text"]) == (4503, "")
    resumed = await watch(await viewer(stream_id, "offset=7"))
    assert (resumed["start"], resumed["text"], resumed["code"]) == (
        7,
        "Before the outage. After it."[7:],
        1000,
    )
