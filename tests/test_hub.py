"""The per-process hub (design.md, invariant 11): one subscription and one watchdog per
stream whatever its viewers, a write per viewer per delta, slow viewers cut loose,
permissions re-checked, limits."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.contrib.auth import get_user_model
from django.test import AsyncClient, override_settings

from streaming_app import adisconnect_viewers
from streaming_app.exceptions import InvalidOffset, Overloaded
from streaming_app.fanout import reads as viewer_reads
from streaming_app.fanout.events import Event, Text
from streaming_app.fanout.feed import Feed
from streaming_app.fanout.hub import hub
from streaming_app.fanout.publish import group_name
from streaming_app.fanout.viewer import Viewer
from streaming_app.models import Status, Stream
from streaming_app.protocol import JsonMessages, close_code
from streaming_app.streams import aclaim_stream, acreate_stream, create_stream, read_text
from streaming_app.websocket.consumers import StreamConsumer

from .faults import Statements
from .test_fanout import RemoteWriter, viewer, watch, watched

pytestmark = pytest.mark.django_db(transaction=True)


class MembershipLayer(InMemoryChannelLayer):
    """The in-memory layer, recording group joins and leaves."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.joins: list[str] = []
        self.leaves: list[str] = []

    async def group_add(self, group: str, channel: str) -> None:
        self.joins.append(group)
        await super().group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        self.leaves.append(group)
        await super().group_discard(group, channel)


async def settled() -> None:
    """Let the hub's membership tasks run."""
    for _ in range(20):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], within: float = 5) -> None:
    """Until ``condition()`` holds (what the hub hears through the layer, in its own task)."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "it never happened"
        await asyncio.sleep(0.005)


def websocket_scope(stream_id: Any) -> dict[str, Any]:
    """The scope channels' router hands the stream consumer, for an anonymous viewer."""
    return {
        "type": "websocket",
        "path": f"/ws/streams/{stream_id}/",
        "query_string": b"",
        "url_route": {"kwargs": {"stream_id": str(stream_id)}},
        "user": None,
    }


async def a_viewer_cut_loose(
    viewer: Viewer | None = None,
) -> tuple[Any, Viewer, Feed, RemoteWriter]:
    """A live stream written elsewhere, and a viewer here (``viewer``, or one of its
    own) that reads none of its frames (``VIEWER_BUFFER_CHARS`` small): once the hub
    has heard eight pieces, it is cut loose."""
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    viewer = viewer or Viewer(None, "reader", JsonMessages())
    await hub().watch(viewer, stream.pk, 0)
    feed = hub().feeds[stream.pk]
    writer = RemoteWriter(stream.pk)
    for i in range(8):
        await writer.write(f"Piece number {i} of the stream. ")
    # (Through a channel layer of another process, the hub hears them a moment later.)
    await until(lambda: viewer.behind and feed.end == writer.offset)
    return stream, viewer, feed, writer


# The in-process viewers all look alike to the viewer limits (no user, no address).
MANY_VIEWERS = {"MAX_VIEWERS_PER_USER": None, "MAX_VIEWERS_PER_ADDRESS": None}


@override_settings(
    CHANNEL_LAYERS={"default": {"BACKEND": "tests.test_hub.MembershipLayer"}},
    STREAMING_APP=MANY_VIEWERS,
)
async def test_a_process_joins_a_streams_group_with_its_first_viewer_and_leaves_with_its_last():
    stream = await acreate_stream()
    group = group_name(stream.pk)
    layer = get_channel_layer()
    first = await viewer(stream.pk)
    await first.receive_json_from()
    await settled()
    assert layer.joins == [group]
    others = [await viewer(stream.pk) for _ in range(20)]
    for other in others:
        await other.receive_json_from()
    await settled()
    assert layer.joins == [group], "one subscription for all the process's viewers"
    for other in others:
        await other.disconnect()
    await first.receive_json_from()  # the status
    await settled()
    assert layer.leaves == []
    await first.disconnect()
    await settled()
    assert layer.leaves == [group], "left with the last viewer"


@override_settings(STREAMING_APP={**MANY_VIEWERS, "RESYNC_INTERVAL": 0.05})
async def test_idle_viewers_cost_one_database_read_per_stream_not_per_viewer():
    """Fifty idle viewers of a pending stream: each re-sync is one read of the stream
    for all of them."""
    stream = await acreate_stream()
    tasks = await watched(stream.pk, 50)
    with Statements() as statements:
        await asyncio.sleep(0.6)  # about twelve re-syncs
    reads = [sql for sql, _ in statements.seen if 'FROM "streaming_app_stream"' in sql]
    resyncs = len(reads)
    assert 3 <= resyncs <= 30, f"{resyncs} reads of the stream for 50 viewers in 0.6 s"
    await sync_to_async(Stream.objects.filter(pk=stream.pk).update)(status=Status.CANCELLED)
    for result in await asyncio.gather(*tasks):
        assert result["statuses"] == ["pending", "cancelled"] and result["code"] == 1000


async def test_a_delta_is_encoded_once_for_every_caught_up_viewer():
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    tasks = await watched(stream.pk, 5)
    feed = hub().feeds[stream.pk]
    frames: list[Any] = [viewer.encoding for viewer in feed.viewers]
    encoded: list[tuple[int, str]] = []
    original = type(frames[0]).encode

    def counting(self: Any, event: Event) -> str:
        if isinstance(event, Text):
            encoded.append((event.offset, event.text))
        return original(self, event)

    type(frames[0]).encode = counting
    try:
        writer = RemoteWriter(stream.pk)
        await writer.write("One delta. ")
        await writer.write("Another.", "done")
        results = await asyncio.gather(*tasks)
    finally:
        type(frames[0]).encode = original
    assert encoded == [(0, "One delta. "), (11, "Another.")], "once per delta, not per viewer"
    for result in results:
        assert result["text"] == "One delta. Another."


class StopsReading:
    """A websocket client that reads every frame until the test calls :meth:`stop`;
    from then on the server's next send blocks, as a send does once the client's
    socket buffer is full, until :meth:`resume`. When it stalls is the test's choice,
    whatever the hub puts in each batch."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.reading = asyncio.Event()
        self.reading.set()
        self.stalled = asyncio.Event()
        self.snapshot = asyncio.Event()
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send":
            if not self.reading.is_set():
                self.stalled.set()
                await self.reading.wait()
            self.frames.append(json.loads(message["text"]))
            if self.frames[-1]["type"] == "status":
                self.snapshot.set()
        elif message["type"] == "websocket.close" and not self.closed.done():
            self.closed.set_result(message.get("code", 1000))

    def stop(self) -> None:
        self.reading.clear()

    def resume(self) -> None:
        self.reading.set()

    def text(self) -> str:
        parts = [f for f in self.frames if f["type"] == "text"]
        text = parts[0]["text"]
        for part in parts[1:]:
            assert part["offset"] <= len(text), "a gap"
            text = text[: part["offset"]] + part["text"]
        return text


@override_settings(STREAMING_APP={**MANY_VIEWERS, "VIEWER_BUFFER_CHARS": 200})
async def test_a_viewer_that_stops_reading_is_cut_loose_and_catches_up_exactly():
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    slow = StopsReading()
    app = StreamConsumer.as_asgi()
    scope = websocket_scope(stream.pk)
    slow.incoming.put_nowait({"type": "websocket.connect"})
    connection = asyncio.create_task(app(scope, slow.receive, slow.send))
    await asyncio.wait_for(slow.snapshot.wait(), 5)
    [fast] = await watched(stream.pk, 1)
    writer = RemoteWriter(stream.pk)
    pieces = [f"Sentence number {i} of many. " for i in range(60)]
    slow.stop()
    await writer.write(pieces[0])
    # The first delta reached the slow viewer's socket, which takes no more.
    await asyncio.wait_for(slow.stalled.wait(), 5)
    feed = hub().feeds[stream.pk]
    for piece in pieces[1:]:
        await writer.write(piece)
    stuck = [v for v in feed.viewers if v.behind]
    assert len(stuck) == 1, "the viewer that stopped reading was not cut loose"
    await writer.write("", "done")
    fast_result = await asyncio.wait_for(fast, 10)
    assert fast_result["text"] == "".join(pieces), "the others were not held up"
    assert fast_result["statuses"] == ["streaming", "done"]
    assert not slow.closed.done() and len(slow.frames) == 2, "the slow one read on"
    assert stuck[0]._chars <= 200, "a viewer's frames grew past VIEWER_BUFFER_CHARS"
    slow.resume()
    assert await asyncio.wait_for(slow.closed, 10) == 1000
    assert slow.text() == "".join(pieces)
    assert slow.frames[-1] == {"type": "status", "status": "done", "error": None}
    slow.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await connection


@pytest.mark.parametrize("meanwhile", ["more than the tail", "the end"])
@override_settings(
    STREAMING_APP={**MANY_VIEWERS, "VIEWER_BUFFER_CHARS": 200, "RESYNC_INTERVAL": 60}
)
async def test_a_catch_up_from_the_database_ends_exact_whatever_commits_while_it_reads(
    monkeypatch, meanwhile
):
    """A viewer cut loose catches up from the database; while that read is under way
    the stream moves on. Past what the feed keeps (its tail): the read's end is then
    before the tail, and the viewer must read again, not be left between behind and
    caught up (passed by every delta, it ended with text missing). Or only the end
    commits (the read has all the text, not the status): the viewer must get the
    status the feed heard meanwhile (it was closed without it)."""
    monkeypatch.setattr(Feed, "TAIL_CHARS", 64)
    stream, viewer, feed, writer = await a_viewer_cut_loose()
    original, reads = viewer_reads.read_snapshot, []
    first_read, release, second_read = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def held_read(*args: Any) -> Any:
        body = await original(*args)
        reads.append(body.offset + len(body.text))
        if len(reads) == 1:  # the first read holds its result back
            first_read.set()
            await release.wait()
        else:
            second_read.set()  # (the catch-up ends in this step, without awaiting)
        return body

    monkeypatch.setattr(viewer_reads, "read_snapshot", held_read)
    frames: list[str] = []

    async def read() -> None:
        async for batch in viewer.batches():
            frames.extend(map(JsonMessages().frame, batch))

    reading = asyncio.create_task(read())
    await asyncio.wait_for(first_read.wait(), 5)
    if meanwhile == "the end":
        await writer.write("", "done")
        await until(lambda: feed.closed)  # the feed heard the end
        assert reads[0] == writer.offset, "the read did not have all the text"
        release.set()
    else:
        for i in range(8, 12):
            await writer.write(f"Piece number {i} of the stream. ")
        await until(lambda: feed.end == writer.offset)  # the feed heard them
        assert reads[0] < feed._tail_start, "the feed did not move past the read"
        release.set()
        await asyncio.wait_for(second_read.wait(), 5)
        await writer.write("The end.")
        await writer.write("", "done")
    await asyncio.wait_for(reading, 5)
    hub().leave(viewer)
    messages = [json.loads(frame) for frame in frames]
    text = ""
    for message in messages:
        if message["type"] == "text":
            assert message["offset"] <= len(text), "a gap"
            text = text[: message["offset"]] + message["text"]
    assert text == await sync_to_async(read_text)(stream.pk, 0, writer.offset)
    assert messages[-1] == {"type": "status", "status": "done", "error": None}
    assert len(reads) == (1 if meanwhile == "the end" else 2), reads


@override_settings(STREAMING_APP={"MAX_VIEWERS_PER_USER": 2, "RETRY_AFTER": 4})
async def test_past_max_viewers_per_user_a_viewer_gets_4429_and_sse_429():
    fan = await get_user_model().objects.acreate(username="fan")
    stream = await acreate_stream()
    first, second = await viewer(stream.pk, user=fan), await viewer(stream.pk, user=fan)
    for one in (first, second):
        await one.receive_json_from()
    third = await watch(await viewer(stream.pk, user=fan))
    assert third["code"] == 4429
    client = AsyncClient()
    await client.aforce_login(fan)
    refused = await client.get(f"/api/streams/{stream.pk}/events/")
    assert (refused.status_code, refused["Retry-After"]) == (429, "4")
    await first.disconnect()
    await settled()
    again = await viewer(stream.pk, user=fan)
    assert (await again.receive_json_from())["type"] == "text", "a place was freed"
    for one in (second, again):
        await one.disconnect()


ADDRESS = ("address:192.0.2.1", "MAX_VIEWERS_PER_ADDRESS")


def guest_at_one_address(name: str) -> Viewer:
    """A viewer of guest ``name``, counted under its own key and its address's, as the
    transports count one (streaming_app.clients)."""
    return Viewer(None, f"user:{name}", JsonMessages(), also=[ADDRESS])


@override_settings(
    CHANNEL_LAYERS={"default": {"BACKEND": "tests.layers.GatedLayer"}},
    STREAMING_APP={
        "MAX_VIEWERS_PER_USER": 1,
        "MAX_VIEWERS_PER_ADDRESS": 2,
        "VIEWER_BUFFER_CHARS": 200,
        "PUBLISH_TIMEOUT": 30,
    },
)
async def test_a_viewer_counted_under_two_keys_frees_both_on_every_exit_path():
    """Invariant 13: a viewer holds a place under its key and its address's from its
    watch to its leave; refused by either bound, it holds none; and closed, failed,
    cancelled or cut loose, it gives both back."""
    followed = hub()
    stream = await acreate_stream()
    first = guest_at_one_address("a")
    await followed.watch(first, stream.pk, 0)
    assert followed.viewers == {"user:a": 1, ADDRESS[0]: 1}
    # Over the user's bound: refused, naming it; nothing counted for it.
    with pytest.raises(Overloaded, match="MAX_VIEWERS_PER_USER is 1"):
        await followed.watch(guest_at_one_address("a"), stream.pk, 0)
    second = guest_at_one_address("b")
    await followed.watch(second, stream.pk, 0)
    # Over the address's bound, a third guest is refused though its own key is free.
    with pytest.raises(Overloaded, match="MAX_VIEWERS_PER_ADDRESS is 2"):
        await followed.watch(guest_at_one_address("c"), stream.pk, 0)
    assert followed.viewers == {"user:a": 1, "user:b": 1, ADDRESS[0]: 2}
    # Closed.
    for one in (first, second):
        followed.leave(one)
    assert not followed.viewers

    # Failed after it was counted: an unknown stream, an offset past a finished one's end.
    finished = await acreate_stream()
    await aclaim_stream(finished.pk)
    await RemoteWriter(finished.pk).write("Done.", "done")
    for stream_id, offset, error in [
        (uuid.uuid4(), 0, Stream.DoesNotExist),
        (finished.pk, 99, InvalidOffset),
    ]:
        with pytest.raises(error):
            await followed.watch(guest_at_one_address("d"), stream_id, offset)
        assert not followed.viewers

    # Cancelled while it waits for its process to join the stream's group.
    layer = get_channel_layer()
    hanging = await acreate_stream()
    layer.hang.add(("group_add", group_name(hanging.pk)))
    waiting = asyncio.create_task(followed.watch(guest_at_one_address("e"), hanging.pk, 0))
    await until(lambda: ("group_add", group_name(hanging.pk)) in layer.calls)
    assert followed.viewers == {"user:e": 1, ADDRESS[0]: 1}
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not followed.viewers
    layer.answer()

    # Cut loose (it stopped reading), then gone.
    _, loose, _, _ = await a_viewer_cut_loose(guest_at_one_address("f"))
    assert loose.behind and followed.viewers == {"user:f": 1, ADDRESS[0]: 1}
    followed.leave(loose)
    assert not followed.viewers
    # And the places are there to take again.
    again = [guest_at_one_address(name) for name in ("g", "h")]
    for one in again:
        await followed.watch(one, stream.pk, 0)
    for one in again:
        followed.leave(one)


def public_policy(user: Any, stream: Stream, action: str) -> bool:
    return action == "read" and bool(stream.metadata.get("public"))


@override_settings(
    STREAMING_APP={**MANY_VIEWERS, "PERMISSION_POLICY": "tests.test_hub.public_policy"}
)
async def test_disconnect_viewers_closes_those_the_policy_now_refuses():
    owner = await get_user_model().objects.acreate(username="owner")
    stream = await sync_to_async(create_stream)(owner=owner, metadata={"public": True})
    tasks = await watched(stream.pk, 3)
    await sync_to_async(Stream.objects.filter(pk=stream.pk).update)(metadata={"public": False})
    await adisconnect_viewers(stream.pk)
    for result in await asyncio.wait_for(asyncio.gather(*tasks), 10):
        # Closed by the hub after it was admitted: the code alone says why, no reason.
        assert (result["code"], result["reason"]) == (4403, None)


async def test_an_unknown_stream_opens_no_subscription():
    result = await watch(await viewer(uuid.uuid4()))
    assert result["code"] == 4404
    await settled()
    assert not hub().feeds


async def test_an_event_stream_never_read_does_not_leave_its_viewer_behind():
    """A client gone before the first byte of its Server-Sent Events: the response is
    never iterated, so its generator never runs its cleanup; the viewer is let go when
    the response goes."""
    import gc

    from django.test import AsyncRequestFactory

    from streaming_app.http.sse import StreamEventsView

    stream = await acreate_stream()
    request = AsyncRequestFactory().get(f"/api/streams/{stream.pk}/events/")
    response = await StreamEventsView.as_view()(request, stream_id=str(stream.pk))  # type: ignore[misc]
    assert response.status_code == 200
    assert sum(hub().viewers.values()) == 1
    del response
    gc.collect()
    await settled()
    assert sum(hub().viewers.values()) == 0
    assert stream.pk not in hub().feeds, "the stream's subscription outlived its viewers"


@override_settings(
    STREAMING_APP={**MANY_VIEWERS, "VIEWER_BUFFER_CHARS": 200, "RESYNC_INTERVAL": 60}
)
async def test_a_viewer_whose_feed_fails_while_it_catches_up_is_closed_not_read_for_ever(
    monkeypatch,
):
    """A viewer cut loose reads the database to catch up; while it reads, a bug ends
    its feed (Feed.fail: its viewers are closed 1011). The read's text is dropped
    (the viewer is closed), so it was still behind and read the database again, and
    again, for ever: never closed, its slot held."""
    monkeypatch.setattr(Feed, "TAIL_CHARS", 64)
    stream, viewer, feed, writer = await a_viewer_cut_loose()
    original, reads = viewer_reads.read_snapshot, []
    first_read, release, again = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def held_read(*args: Any) -> Any:
        body = await original(*args)
        reads.append(body.offset)
        if len(reads) == 1:  # the first read holds its result back
            first_read.set()
            await release.wait()
        else:
            again.set()  # read again: the viewer was not closed
            await asyncio.Event().wait()
        return body

    monkeypatch.setattr(viewer_reads, "read_snapshot", held_read)
    hit = asyncio.Event()

    def offer_text(*args: Any) -> None:
        hit.set()
        raise RuntimeError("a bug in the feed (injected)")

    async def read() -> None:
        async for _ in viewer.batches():
            pass

    reading = asyncio.create_task(read())
    await asyncio.wait_for(first_read.wait(), 5)
    monkeypatch.setattr(feed, "_offer_text", offer_text)
    await writer.write("More. ")
    await asyncio.wait_for(hit.wait(), 5)
    assert feed.closed and close_code(viewer.refused) == 1011
    release.set()
    looping = asyncio.create_task(again.wait())
    await asyncio.wait({reading, looping}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    looping.cancel()
    assert not again.is_set(), f"the closed viewer read the database again ({reads})"
    assert reading.done() and close_code(viewer.refused) == 1011
    hub().leave(viewer)


@override_settings(STREAMING_APP={**MANY_VIEWERS, "RESYNC_INTERVAL": 60})
async def test_a_viewer_whose_feed_fails_while_its_snapshot_is_read_is_closed(monkeypatch):
    """A bug ends a feed (Feed.fail) while a new viewer's snapshot is being read: the
    viewer, closed 1011 already, was admitted all the same, left behind, and caught up
    from the feed's tail for ever without awaiting anything (the process froze)."""
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    writer = RemoteWriter(stream.pk)
    await writer.write("The first words. ")
    [first] = await watched(stream.pk, 1)
    feed = hub().feeds[stream.pk]
    original = viewer_reads.read_snapshot
    reading, release = asyncio.Event(), asyncio.Event()

    async def held_read(*args: Any) -> Any:
        body = await original(*args)
        reading.set()
        await release.wait()
        return body

    monkeypatch.setattr(viewer_reads, "read_snapshot", held_read)
    late = Viewer(None, "late", JsonMessages())
    joining = asyncio.create_task(hub().watch(late, stream.pk, 0))
    await asyncio.wait_for(reading.wait(), 5)
    hit = asyncio.Event()

    def offer_text(*args: Any) -> None:
        hit.set()
        raise RuntimeError("a bug in the feed (injected)")

    monkeypatch.setattr(feed, "_offer_text", offer_text)
    await writer.write("More. ")
    await asyncio.wait_for(hit.wait(), 5)
    assert feed.closed and close_code(late.refused) == 1011
    release.set()
    await asyncio.wait_for(joining, 5)
    catch_ups = 0
    original_catch_up = feed.catch_up

    async def counted(viewer: Viewer) -> None:
        nonlocal catch_ups
        catch_ups += 1
        assert catch_ups < 3, "the closed viewer catches up for ever"
        await original_catch_up(viewer)

    monkeypatch.setattr(feed, "catch_up", counted)
    async for _ in late.batches():
        pass
    assert close_code(late.refused) == 1011
    hub().leave(late)
    assert (await asyncio.wait_for(first, 5))["code"] == 1011


class LikeUvicorn:
    """A websocket server as uvicorn's ``websockets`` implementation behaves: once it
    has handed the application the client's disconnect, a send raises RuntimeError
    ("Unexpected ASGI message ..."), not an OSError."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.frames: list[dict[str, Any]] = []
        self.gone = False
        self.refused: list[str] = []

    async def receive(self) -> dict[str, Any]:
        message = await self.incoming.get()
        if message["type"] == "websocket.disconnect":
            self.gone = True
        return message

    async def send(self, message: dict[str, Any]) -> None:
        if self.gone:
            self.refused.append(message["type"])
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}', after sending ...")
        if message["type"] == "websocket.send":
            self.frames.append(json.loads(message["text"]))


async def test_a_client_that_leaves_as_a_delta_comes_is_no_bug(caplog):
    """The client's disconnect is handed to the consumer while a delta wakes its
    writer: the writer ran first, sent after the server had closed, and the consumer
    took uvicorn's RuntimeError for a bug: logged with a traceback, closed 1011
    (refused again), and the application raised."""
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    server = LikeUvicorn()
    scope = websocket_scope(stream.pk)
    server.incoming.put_nowait({"type": "websocket.connect"})
    connection = asyncio.create_task(StreamConsumer.as_asgi()(scope, server.receive, server.send))
    await until(lambda: len(server.frames) == 2)  # the snapshot: text and status
    # In one step: the client leaves, and a committed delta is delivered locally.
    server.incoming.put_nowait({"type": "websocket.disconnect", "code": 1001})
    message = {"type": "stream.update", "stream": stream.pk.hex, "offset": 0,
               "text": "Hello.", "status": "streaming", "error": None}  # fmt: skip
    hub().deliver(message)
    await asyncio.wait_for(connection, 5)  # (it raised ViewerFailed)
    assert server.refused == [], "the consumer sent after the client had gone"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert hub().viewers == {}
