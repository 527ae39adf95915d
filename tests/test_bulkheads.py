"""A fault in one viewer, one transport's encoder, one stream's feed or one message
from the channel layer stays there (design.md, invariant 13): it is logged with its
traceback and closes that viewer (1011) or that stream's viewers here, while ten other
streams of the process, each with viewers over the real transports, end exact."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from django.test import AsyncClient, AsyncRequestFactory, override_settings

from streaming_app.aisdk import responses as aisdk
from streaming_app.fanout.events import Event
from streaming_app.fanout.hub import hub
from streaming_app.fanout.publish import UPDATE, group_name, group_send
from streaming_app.http import sse
from streaming_app.http.sse import EventFrames
from streaming_app.models import Status
from streaming_app.parts import Entry
from streaming_app.protocol import JsonMessages
from streaming_app.streams import aclaim_stream, acreate_stream
from streaming_app.websocket import consumers

from .helpers import WatchedStreams, read_all
from .test_fanout import RemoteWriter, live_stream, viewer, watch, watched

pytestmark = pytest.mark.django_db(transaction=True)

# The in-process viewers all look alike to the viewer limits (no user, no address).
MANY_VIEWERS = {"MAX_VIEWERS_PER_USER": None, "MAX_VIEWERS_PER_ADDRESS": None}


class Fault:
    """An encoder's bug: raises AttributeError on a text with something in it (a live
    delta, not the empty snapshot of a new stream), and counts that it did."""

    def __init__(self) -> None:
        self.hits = 0
        self.hit = asyncio.Event()

    def check(self, text: str) -> None:
        if text:
            self.hits += 1
            self.hit.set()
            raise AttributeError("'NoneType' object has no attribute 'encode' (injected)")


class BrokenWebsocketFrames(JsonMessages):
    def __init__(self, fault: Fault) -> None:
        super().__init__(parts=True)
        self.fault = fault

    def encode(self, event: Event) -> str:
        self.fault.check(getattr(event, "text", ""))
        return super().encode(event)


class BrokenEventFrames(EventFrames):
    def __init__(self, fault: Fault) -> None:
        super().__init__(parts=True)
        self.fault = fault

    def encode(self, event: Event) -> str:
        self.fault.check(getattr(event, "text", ""))
        return super().encode(event)


def broken_encoder(fault: Fault) -> type[Any]:
    class BrokenEncoder(aisdk.UIMessageEncoder):
        def text(self, offset: int, text: str, parts: Sequence[Entry] = ()) -> str:
            fault.check(text)
            return super().text(offset, text, parts)

    return BrokenEncoder


async def broken_viewer(
    transport: str, stream_id: uuid.UUID, fault: Fault, monkeypatch: pytest.MonkeyPatch
) -> asyncio.Task[Any]:
    """A viewer of ``stream_id`` over ``transport`` whose encoder has the bug (only
    it: the others use the transport's usual encoder); what it read, to its end."""
    if transport == "websocket":
        monkeypatch.setattr(consumers, "FRAMES_WITH_PARTS", BrokenWebsocketFrames(fault))
        return asyncio.create_task(watch(await viewer(stream_id, "parts=1")))
    if transport == "sse":
        monkeypatch.setattr(sse, "EVENTS_WITH_PARTS", BrokenEventFrames(fault))
        response: Any = await AsyncClient().get(f"/api/streams/{stream_id}/events/?parts=1")
    else:
        monkeypatch.setattr(aisdk, "UIMessageEncoder", broken_encoder(fault))
        request = AsyncRequestFactory().get("/api/ai/chat/x/stream")
        response = await aisdk.aresume_response(request, stream_id)
    assert response.status_code == 200
    return asyncio.create_task(read_all(response))


@pytest.mark.parametrize("transport", ["websocket", "sse", "aisdk"])
@override_settings(STREAMING_APP=MANY_VIEWERS)
async def test_an_encoder_that_raises_closes_its_viewer_alone(transport, monkeypatch, caplog):
    """The encoder runs in the committer's task (local delivery): before, its
    AttributeError stopped the committer, and every stream of the process ended
    ``error``."""
    crowd = await WatchedStreams(10).start()
    stream_id, source, run = await live_stream()
    [healthy] = await watched(stream_id, 1)
    fault = Fault()
    broken = await broken_viewer(transport, stream_id, fault, monkeypatch)
    await crowd.say()
    source.feed("The first words. ")
    await asyncio.wait_for(fault.hit.wait(), 5)
    await crowd.say()
    await crowd.say()
    source.feed("The last words.", None)
    await crowd.end()
    assert await run.wait() == Status.DONE
    assert fault.hits == 1, "the broken viewer was not let go at its first fault"
    result = await asyncio.wait_for(healthy, 10)
    assert (result["text"], result["statuses"][-1]) == ("The first words. The last words.", "done")
    seen = await asyncio.wait_for(broken, 10)
    if transport == "websocket":
        assert (seen["code"], seen["text"]) == (1011, "")
    elif transport == "sse":
        assert "event: status" in seen and '"done"' not in seen and "first words" not in seen
    else:
        assert '"type":"error"' in seen and "first words" not in seen
    assert any(
        r.levelno == logging.ERROR and r.exc_info and r.exc_info[0] is AttributeError
        for r in caplog.records
    ), "the fault was not logged with its traceback"


@override_settings(STREAMING_APP=MANY_VIEWERS)
async def test_a_feed_that_raises_closes_that_streams_viewers_and_they_resume(monkeypatch, caplog):
    crowd = await WatchedStreams(10).start()
    stream_id, source, run = await live_stream()
    watching = await watched(stream_id, 2)
    feed = hub().feeds[stream_id]
    hits = asyncio.Event()

    def offer_text(*args: Any) -> None:
        hits.set()
        raise RuntimeError("a bug in the feed (injected)")

    monkeypatch.setattr(feed, "_offer_text", offer_text)
    await crowd.say()
    source.feed("The first words. ")
    await asyncio.wait_for(hits.wait(), 5)
    await crowd.say()
    source.feed("The last words.", None)
    await crowd.say()
    await crowd.end()
    assert await run.wait() == Status.DONE
    for result in await asyncio.gather(*watching):
        assert (result["code"], result["text"]) == (1011, "")
    assert hub().feeds.get(stream_id) is not feed, "the failed feed still serves"
    assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records), (
        "the fault was not logged with its traceback"
    )
    # A closed viewer comes back from where it was: a new feed, from the database.
    resumed = await watch(await viewer(stream_id, "offset=0"))
    assert (resumed["text"], resumed["statuses"], resumed["code"]) == (
        "The first words. The last words.",
        ["done"],
        1000,
    )


def malformed(stream_id: uuid.UUID) -> list[dict[str, Any]]:
    update = {
        "type": UPDATE,
        "stream": stream_id.hex,
        "offset": 0,
        "text": "x",
        "status": "streaming",
        "error": None,
    }
    return [
        {**update, "offset": float("inf")},  # int() of it raises OverflowError
        {**update, "offset": -3},
        {**update, "text": 7},
        {**update, "parts": [1], "parts_from": 0},
        {**update, "parts": "entries"},
        {key: value for key, value in update.items() if key != "text"},
        {"type": UPDATE, "stream": "not a stream"},
    ]


@override_settings(STREAMING_APP={**MANY_VIEWERS, "RESYNC_INTERVAL": 60})
async def test_malformed_messages_from_the_layer_are_ignored_and_logged(caplog):
    """Streams written elsewhere, heard through the layer only (no re-sync for a
    minute): before, a message whose offset was infinite stopped the hub's receiver,
    and no stream of the process heard another word."""
    crowd = await WatchedStreams(10, remote=True).start()
    target = await WatchedStreams(1, remote=True).start()
    await crowd.say()
    await target.say()
    bad = malformed(target.ids[0])
    for message in bad:
        assert await group_send(group_name(target.ids[0]), message)
    await target.say()  # heard after the bad ones (one channel: in order)
    await crowd.say()
    await crowd.say()
    await target.end()
    await crowd.end()
    ignored = [r for r in caplog.records if r.getMessage().startswith("ignored a malformed")]
    assert len(ignored) == len(bad), [r.getMessage() for r in ignored]


@override_settings(STREAMING_APP=MANY_VIEWERS)
async def test_a_run_whose_id_cannot_be_named_does_not_keep_viewers_waiting(caplog):
    """The groups to join are worked out per stream: before, one id that could not be
    named stopped the sync, and every new viewer of the process waited for ever."""
    other, _, run = await live_stream()
    hub().runs["not-a-stream-id"] = run  # type: ignore[index]  # (as a bug elsewhere would)
    try:
        stream = await acreate_stream()
        await aclaim_stream(stream.pk)
        [following] = await asyncio.wait_for(watched(stream.pk, 1), 5)
        writer = RemoteWriter(stream.pk)
        await writer.write("Heard through the layer.")
        await writer.write("", "done")
        result = await asyncio.wait_for(following, 10)
        assert (result["text"], result["statuses"]) == (
            "Heard through the layer.",
            ["streaming", "done"],
        )
    finally:
        del hub().runs["not-a-stream-id"]  # type: ignore[arg-type]
        run.cancel()
    assert any("not-a-stream-id" in r.getMessage() for r in caplog.records)
