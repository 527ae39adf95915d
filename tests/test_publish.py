"""Publishing: after the commit and never before, from async and sync code alike, never
held up by the channel layer; ``stream_finished`` once per stream."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.core.management import call_command
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from streaming_app import cancel_stream, create_stream, stream_finished
from streaming_app.drive.flush import FlushPolicy
from streaming_app.fanout.publish import group_name
from streaming_app.models import Status, Stream

from .helpers import paced, run_to_end, written

pytestmark = pytest.mark.django_db(transaction=True)

QUICK = FlushPolicy(min_interval=0.0, max_interval=0.02, max_chars=4096)


class Finished:
    """Records stream_finished, from sync and async code alike."""

    def __init__(self) -> None:
        self.heard: list[dict[str, Any]] = []
        self.event = asyncio.Event()

        async def receiver(sender: Any, **kwargs: Any) -> None:
            kwargs.pop("signal")
            self.heard.append(kwargs)
            self.event.set()

        self.receiver = receiver

    def __enter__(self) -> Finished:
        stream_finished.connect(self.receiver, weak=False)
        return self

    def __exit__(self, *exc: object) -> None:
        stream_finished.disconnect(self.receiver)


class Listener:
    """Another process's hub, as far as the layer can tell: a channel of its own in the
    stream's group, on an event loop of its own (layers are per event loop)."""

    def __init__(self, stream_id: uuid.UUID) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.layer = get_channel_layer()
        self.channel = self.run(self.layer.new_channel())
        self.run(self.layer.group_add(group_name(stream_id), self.channel))
        self.messages: list[dict[str, Any]] = []
        # Not cancelled until the end: a cancelled receive unsubscribes (pub/sub's).
        self.receiving = self.run(self.start_receiving())

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    async def start_receiving(self) -> asyncio.Task[None]:
        async def tick() -> None:
            # The in-memory layer wakes its receiver with a plain Future, not a
            # thread-safe call, when another thread sends: look now and then.
            while True:  # noqa: ASYNC110 (a heartbeat, not a wait for something)
                await asyncio.sleep(0.02)

        self.ticking = asyncio.get_running_loop().create_task(tick())
        return asyncio.get_running_loop().create_task(self.receive())

    async def stop_receiving(self) -> None:
        self.ticking.cancel()
        self.receiving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.receiving

    async def receive(self) -> None:
        while True:
            self.messages.append(await self.layer.receive(self.channel))

    def received(self, within: float = 0.5) -> list[dict[str, Any]]:
        """What reached the channel, once ``within`` seconds have passed without more."""
        count = -1
        while count != len(self.messages):
            count = len(self.messages)
            time.sleep(within)
        taken, self.messages[:] = self.messages[:count], self.messages[count:]
        return taken

    def close(self) -> None:
        self.run(self.stop_receiving())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def listener():
    opened: list[Listener] = []

    def listen(stream_id: uuid.UUID) -> Listener:
        opened.append(Listener(stream_id))
        return opened[-1]

    yield listen
    for one in opened:
        one.close()


def test_a_change_committed_by_a_management_command_is_published(listener):
    """Plain sync code, no event loop above it (cron's expire_streams): the timeout
    still reaches the stream's viewers in every process, and stream_finished is sent."""
    stream = written(["Half a sent"])
    Stream.objects.filter(pk=stream.pk).update(updated_at=timezone.now() - timedelta(seconds=120))
    elsewhere = listener(stream.pk)
    with Finished() as finished:
        call_command("expire_streams", stdout=None)
    [message] = elsewhere.received()
    assert (message["stream"], message["status"], message["offset"]) == (
        stream.pk.hex,
        Status.TIMEOUT,
        len("Half a sent"),
    )
    assert [(f["stream_id"], f["status"]) for f in finished.heard] == [(stream.pk, "timeout")]


def test_nothing_is_published_when_the_transaction_rolls_back(listener):
    stream = create_stream()
    elsewhere = listener(stream.pk)
    with Finished() as finished:
        with pytest.raises(RuntimeError), transaction.atomic():
            assert cancel_stream(stream.pk) == Status.CANCELLED
            raise RuntimeError("rolled back")
        assert Stream.objects.get(pk=stream.pk).status == Status.PENDING
        assert elsewhere.received() == []
        assert finished.heard == []
        # The same cancel, committed: published (the listener does hear).
        assert cancel_stream(stream.pk) == Status.CANCELLED
    assert [m["status"] for m in elsewhere.received()] == [Status.CANCELLED]
    assert [f["status"] for f in finished.heard] == [Status.CANCELLED]


@override_settings(
    CHANNEL_LAYERS={"default": {"BACKEND": "tests.layers.HangingLayer"}},
    STREAMING_APP={"PUBLISH_TIMEOUT": 0.2},
)
async def test_a_layer_that_never_answers_holds_up_nothing():
    """Every group_send hangs: the stream is written and ends all the same, and the
    publications behind the hanging ones go out (stream_finished is heard) once each
    hanging send has been given up after PUBLISH_TIMEOUT."""
    with Finished() as finished:
        stream_id, status = await run_to_end(paced(["One. ", "Two."]), policy=QUICK)
        await asyncio.wait_for(finished.event.wait(), 10)
    assert status == Status.DONE
    assert get_channel_layer().group_sends >= 2, "the layer was never tried"
    assert [(f["stream_id"], f["status"]) for f in finished.heard] == [(stream_id, "done")]


async def test_stream_finished_is_sent_once_when_a_run_ends():
    with Finished() as finished:
        stream_id, status = await run_to_end(paced(["All ", "of it."]), policy=QUICK)
        await asyncio.wait_for(finished.event.wait(), 10)
        await asyncio.sleep(0.1)  # and nothing more comes
    assert status == Status.DONE
    assert finished.heard == [
        {
            "stream_id": stream_id,
            "offset": finished.heard[0]["offset"],
            "text": finished.heard[0]["text"],
            "status": "done",
            "error": None,
            "parts": [],
        }
    ]
    final = finished.heard[0]
    assert final["offset"] + len(final["text"]) == len("All of it.")
