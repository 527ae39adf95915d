"""A channel layer that takes requests and answers none (design.md, invariants 5 and 13),
in process: every call to it is bounded, a join that hangs holds up no other stream's
viewers, who follow from the database meanwhile; a join given up on that happens later
is left; and a drive's first piece waits for neither the layer nor the signals'
receivers. With a real Redis stopped by SIGSTOP: tests/test_outages.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.test import AsyncClient, override_settings

from example_project.chat.llm import demo_body
from streaming_app.fanout.hub import hub
from streaming_app.fanout.publish import group_name
from streaming_app.models import Status
from streaming_app.signals import stream_committed
from streaming_app.streams import aclaim_stream, acreate_stream

from .helpers import wait_finished
from .test_fanout import RemoteWriter, viewer, watch

pytestmark = pytest.mark.django_db(transaction=True)

GATED = {"default": {"BACKEND": "tests.layers.GatedLayer"}}
# Calls are given up on after 0.2 s; a silent feed reads the database every 0.1 s.
BOUNDED = {
    "PUBLISH_TIMEOUT": 0.2,
    "RESYNC_INTERVAL": 0.1,
    "MAX_VIEWERS_PER_USER": None,
    "MAX_VIEWERS_PER_ADDRESS": None,
}


async def until(condition: Callable[[], bool], within: float = 10) -> None:
    """Wait for ``condition`` (``within`` is a bound, not a pace)."""
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


async def live_stream() -> uuid.UUID:
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    return stream.pk


async def texts(communicator: Any, count: int) -> list[str]:
    """The next ``count`` text messages' texts (statuses skipped)."""
    found: list[str] = []
    while len(found) < count:
        message = await communicator.receive_json_from(timeout=5)
        if message["type"] == "text":
            found.append(message["text"])
    return found


@override_settings(CHANNEL_LAYERS=GATED, STREAMING_APP=BOUNDED)
async def test_a_join_that_hangs_holds_up_no_other_stream_and_its_viewers_follow_meanwhile():
    layer = get_channel_layer()
    slow, quick = await live_stream(), await live_stream()
    slow_group, quick_group = group_name(slow), group_name(quick)
    layer.hang.add(("group_add", slow_group))
    slow_writer, quick_writer = RemoteWriter(slow), RemoteWriter(quick)
    await slow_writer.write("Before. ")

    # The slow stream's viewer is served its snapshot though its process's join hangs.
    slow_viewer = await viewer(slow)
    assert await texts(slow_viewer, 1) == ["Before. "]
    await until(lambda: ("group_add", slow_group) in layer.calls)
    # Another stream's join is not held up by it.
    quick_viewer = await viewer(quick)
    await until(lambda: ("group_add", quick_group) in layer.returned)
    assert ("group_add", slow_group) not in layer.returned, "the slow join did not hang"
    await quick_writer.write("Quick. ", "done")
    quick_result = await watch(quick_viewer)
    assert (quick_result["text"], quick_result["statuses"][-1]) == ("Quick. ", "done")
    assert any(m.get("stream") == quick.hex for m in layer.received), "through the layer"

    # The slow stream's viewer follows from the database while the layer does not answer.
    await slow_writer.write("During. ")
    assert await texts(slow_viewer, 1) == ["During. "]
    assert not any(m.get("stream") == slow.hex for m in layer.received)

    # The layer answers: the process joins again and hears the deltas from it.
    layer.answer()
    await until(lambda: ("group_add", slow_group) in layer.returned)
    await slow_writer.write("After. ")
    assert await texts(slow_viewer, 1) == ["After. "]
    await until(lambda: any(m.get("text") == "After. " for m in layer.received))
    await slow_writer.write("", "done")
    result = await watch(slow_viewer)
    assert result["statuses"][-1] == "done"
    await until(lambda: slow_group not in layer.groups and quick_group not in layer.groups)


@override_settings(CHANNEL_LAYERS=GATED, STREAMING_APP=BOUNDED)
async def test_a_join_given_up_on_that_happens_later_is_left():
    layer = get_channel_layer()
    stream_id = await live_stream()
    group = group_name(stream_id)
    layer.hang.add(("group_add", group))
    communicator = await viewer(stream_id)
    await communicator.receive_json_from(timeout=5)  # the snapshot, without the join
    await communicator.disconnect()
    await until(lambda: stream_id not in hub().feeds)
    # The server carries out the join its caller gave up on: the process is in a group
    # it does not want, and must leave it.
    layer.answer()
    await until(lambda: ("group_add", group) in layer.effects)
    await until(lambda: group not in layer.groups)
    assert ("group_discard", group) in layer.returned


class Gate:
    """What hangs while a drive starts: the layer's group_send, or a receiver of
    ``stream_committed``. Records, in order, the drive's first piece and the hung
    calls' returns."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.events: list[str] = []
        self.opened = asyncio.Event()
        self.layer = get_channel_layer()
        if what == "layer":
            self.layer.hang.add(("group_send", None))

    async def receiver(self, sender: Any, **kwargs: Any) -> None:
        if self.what == "receiver":
            self.events.append(f"receiver called ({kwargs['status']})")
            await self.opened.wait()
            self.events.append(f"receiver returned ({kwargs['status']})")

    def hung(self) -> bool:
        """The claim's publication has reached what hangs."""
        if self.what == "layer":
            return any(call[0] == "group_send" for call in self.layer.calls)
        return "receiver called (streaming)" in self.events

    def returned(self) -> bool:
        if self.what == "layer":
            return any(call[0] == "group_send" for call in self.layer.returned)
        return "receiver returned (streaming)" in self.events

    def open(self) -> None:
        self.opened.set()
        self.layer.answer()


@pytest.mark.parametrize("what", ["layer", "receiver"])
@override_settings(
    CHANNEL_LAYERS=GATED,
    # No call gives up while the test holds it; anyone with the link watches (the example's).
    STREAMING_APP={
        "PUBLISH_TIMEOUT": 60,
        "PERMISSION_POLICY": "streaming_app.permissions.anyone_reads_policy",
    },
    DEMO_MODEL_DELAY=0.01,
)
async def test_a_drives_first_piece_waits_for_neither_the_layer_nor_the_receivers(what):
    gate = Gate(what)
    stream_committed.connect(gate.receiver, weak=False)
    try:
        client = AsyncClient()
        created = await client.post(
            "/api/chats/", json.dumps({"prompt": "Go"}), content_type="application/json"
        )
        chat = created.json()
        stream_id = uuid.UUID(chat["stream_id"])
        # A viewer in this process, with its snapshot: the claim and the deltas reach
        # it at once.
        ready = asyncio.Event()
        watching = asyncio.create_task(watch(await viewer(stream_id), ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        response = await asyncio.wait_for(client.post(chat["drive_url"]), 10)
        assert response.status_code == 200
        pieces = response.streaming_content.__aiter__()  # type: ignore[attr-defined]
        first = await asyncio.wait_for(pieces.__anext__(), 10)
        gate.events.append("first piece")
        # The fault hit: the claim's publication is held up where it hangs.
        await until(gate.hung)
        assert not gate.returned()
        gate.open()
        rest = b"".join([piece async for piece in pieces])
        expected = demo_body([{"role": "user", "content": "Go"}])
        assert (first + rest).decode() == expected
        await wait_finished(stream_id)
        result = await asyncio.wait_for(watching, 10)
        assert (result["text"], result["statuses"]) == (expected, ["pending", "streaming", "done"])
        # The claim went to the layer first, then the run's updates in order.
        await until(lambda: gate.layer.sent and gate.layer.sent[-1]["status"] == Status.DONE)
        sent = [(m["offset"], m["text"], m["status"]) for m in gate.layer.sent]
        assert sent[0] == (0, "", Status.STREAMING)
        assert "".join(text for _, text, _ in sent) == expected
        assert [offset for offset, _, _ in sent] == sorted(offset for offset, _, _ in sent)
    finally:
        stream_committed.disconnect(gate.receiver)


@override_settings(CHANNEL_LAYERS=GATED, STREAMING_APP={"PUBLISH_TIMEOUT": 60})
async def test_a_receiver_that_never_returns_holds_up_no_stream_on_the_layer():
    """A ``stream_committed`` receiver that hangs (a webhook that never answers) on one
    stream's first update: every stream's later updates, the other streams' and its
    own, still go to the channel layer (other processes' viewers follow live); only
    the receivers behind it wait, and a run's ``wait()`` for its end to go out."""
    from streaming_app.drive.run import StreamRun

    entered, release = asyncio.Event(), asyncio.Event()
    heard: list[tuple[str, str]] = []

    async def receiver(sender: Any, **kwargs: Any) -> None:
        heard.append((kwargs["stream_id"].hex, kwargs["status"]))
        if len(heard) == 1:
            entered.set()
            await release.wait()

    async def source(name: str) -> Any:
        for i in range(3):
            yield f"{name} {i}. "
            await asyncio.sleep(0.02)

    ids = [await live_stream() for _ in range(3)]
    stream_committed.connect(receiver, weak=False)
    try:
        runs = [StreamRun(pk, source(f"S{n}")) for n, pk in enumerate(ids)]
        for run in runs:
            run.start()
        await asyncio.wait_for(entered.wait(), 10)  # the fault hit
        for run in runs:  # (the task ends when the status has committed)
            assert await asyncio.wait_for(asyncio.shield(run.task), 10) == Status.DONE
        layer = get_channel_layer()
        # While the receiver has still not returned, the layer has had every stream's
        # last update, and the whole of each text.
        await until(
            lambda: (
                {m["stream"] for m in layer.sent if m["status"] == Status.DONE}
                == {pk.hex for pk in ids}
            )
        )
        assert not release.is_set() and len(heard) == 1
        for n, pk in enumerate(ids):
            text = "".join(m["text"] for m in layer.sent if m["stream"] == pk.hex)
            assert text == "".join(f"S{n} {i}. " for i in range(3))
        # The run's wait() waits for its end's receivers: they run once the first
        # returns, in order.
        waiting = asyncio.ensure_future(runs[-1].wait())
        await asyncio.sleep(0)
        assert not waiting.done()
        release.set()
        assert await asyncio.wait_for(waiting, 10) == Status.DONE
        assert [status for _, status in heard].count(Status.DONE) == 3
    finally:
        release.set()
        stream_committed.disconnect(receiver)
