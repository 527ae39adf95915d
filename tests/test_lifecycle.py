"""Cancel, heartbeats and expiry, retention, permissions: in process, on the real
database of the run."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import AsyncClient, Client, override_settings
from django.utils import timezone

from streaming_app.drive.flush import FlushPolicy
from streaming_app.drive.run import StreamRun
from streaming_app.exceptions import StreamNotPending
from streaming_app.models import Chunk, Status, Stream
from streaming_app.streams import (
    aclaim_stream,
    acreate_stream,
    aget_stream_body,
    cancel_stream,
    claim_stream,
    create_stream,
    get_stream_body,
)

from .helpers import (
    committed_events,
    drive_in_process,
    owned_stream,
    paced,
    stream_row,
    thinking,
    wait_finished,
    written,
)
from .test_fanout import FAST, viewer, watch

pytestmark = pytest.mark.django_db(transaction=True)

OWNER_POLICY = {"PERMISSION_POLICY": "streaming_app.permissions.owner_policy"}


async def endless(produced: list[float], pause: float = 0.02):
    """A model that never stops on its own; records when each piece was made."""
    i = 0
    while True:
        await asyncio.sleep(pause)
        produced.append(time.monotonic())
        i += 1
        yield f"word{i} "


class Fed:
    """A model the test feeds piece by piece; it waits in between. ``closed`` tells
    whether it was closed (stopped) rather than left hanging."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.closed = False

    async def __aiter__(self):
        try:
            while (piece := await self.queue.get()) is not None:
                yield piece
        finally:
            self.closed = True

    def feed(self, *pieces: str) -> None:
        for piece in pieces:
            self.queue.put_nowait(piece)

    def end(self) -> None:
        """The model has said all it had to say."""
        self.queue.put_nowait(None)


async def committed_length(stream_id: uuid.UUID, length: int) -> None:
    """Wait until exactly ``length`` characters have committed (and the claim has)."""
    async with asyncio.timeout(10):
        while True:
            row = await stream_row(stream_id)
            if row.status == Status.STREAMING and row.length == length:
                return
            await asyncio.sleep(0.01)


async def started_run(source, **kwargs) -> tuple[uuid.UUID, StreamRun]:
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    run = StreamRun(stream.pk, source, **kwargs)
    run.start()
    return stream.pk, run


def age(stream_id: uuid.UUID, seconds: float) -> None:
    Stream.objects.filter(pk=stream_id).update(
        updated_at=timezone.now() - timedelta(seconds=seconds)
    )


# Cancel -------------------------------------------------------------------------------


def test_cancelling_a_pending_stream_ends_it_at_once():
    stream = create_stream()
    with committed_events() as events:
        assert cancel_stream(stream.pk) == Status.CANCELLED
    assert [e["status"] for e in events] == ["cancelled"]
    assert cancel_stream(stream.pk) == Status.CANCELLED  # again: nothing changes
    with pytest.raises(Exception, match="already cancelled"):
        claim_stream(stream.pk)


async def test_a_cancel_in_the_driving_process_stops_generation_at_once():
    """No flush and no heartbeat falls due for a minute: only the cancel itself can stop
    the run, and it does while the model is waiting for its next piece."""
    source = Fed()
    stream_id, run = await started_run(source, policy=FlushPolicy(0, 60, 10**6))
    source.feed("word1 ", "word2 ")
    await committed_length(stream_id, 0)  # claimed, nothing flushed
    assert await sync_to_async(cancel_stream)(stream_id) in (Status.STREAMING, Status.CANCELLED)
    assert await asyncio.wait_for(run.wait(), 5) == Status.CANCELLED
    assert source.closed, "the model was not stopped"
    body = await aget_stream_body(stream_id)
    assert (body.status, body.text) == (Status.CANCELLED, "word1 word2 ")


@override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "tests.layers.DropAllLayer"}})
async def test_a_cancel_from_elsewhere_without_the_layer_stops_generation_at_the_next_flush():
    """A cancel made where no message reaches the driving process (another process, the
    layer losing it): the run learns it when its next flush is refused, and keeps that
    text too."""
    source = Fed()
    stream_id, run = await started_run(source, policy=FlushPolicy(0, 0.02, 10**6))
    source.feed("Before. ")
    await committed_length(stream_id, len("Before. "))
    # Another thread and event loop, as another process: nothing is delivered here.
    await asyncio.to_thread(cancel_stream, stream_id)
    assert not run.task.done(), "the run heard of the cancel without a flush"
    source.feed("After.")  # the next flush is refused: the stream was asked to stop
    assert await asyncio.wait_for(run.wait(), 5) == Status.CANCELLED
    assert source.closed
    body = await aget_stream_body(stream_id)
    assert (body.status, body.text) == (Status.CANCELLED, "Before. After.")


@override_settings(
    STREAMING_APP={"HEARTBEAT_INTERVAL": 0.2, "TIMEOUT": 5},
    CHANNEL_LAYERS={"default": {"BACKEND": "tests.layers.DropAllLayer"}},
)
async def test_a_cancel_reaches_a_silent_writer_by_its_heartbeat():
    stream_id, run = await started_run(thinking("Let me think", 30, "never"))
    await asyncio.sleep(0.3)
    await sync_to_async(cancel_stream)(stream_id)
    assert await asyncio.wait_for(run.wait(), 2) == Status.CANCELLED
    assert (await aget_stream_body(stream_id)).text == "Let me think"


@override_settings(STREAMING_APP={"HEARTBEAT_INTERVAL": 30, "TIMEOUT": 60})
async def test_a_cancel_reaches_a_silent_writer_through_the_channel_layer_at_once():
    stream_id, run = await started_run(thinking("Let me think", 30, "never"))
    await asyncio.sleep(0.8)
    assert (await aget_stream_body(stream_id)).text == "Let me think"  # flushed
    await sync_to_async(cancel_stream)(stream_id)
    # No flush or heartbeat is due for 30 s: only the channel layer can tell it.
    assert await asyncio.wait_for(run.wait(), 1) == Status.CANCELLED


async def test_the_cancel_endpoint_is_for_the_owner():
    owner = await get_user_model().objects.acreate(username="owner")
    stranger = await get_user_model().objects.acreate(username="stranger")
    stream = await sync_to_async(create_stream)(owner=owner)
    await aclaim_stream(stream.pk)
    run = StreamRun(stream.pk, endless([]))
    run.start()
    url = f"/api/streams/{stream.pk}/cancel/"
    as_stranger, as_owner = AsyncClient(), AsyncClient()
    await as_stranger.aforce_login(stranger)
    await as_owner.aforce_login(owner)
    with override_settings(STREAMING_APP=OWNER_POLICY):
        refused = await as_stranger.post(url)
        assert (refused.status_code, refused.json()["error"]) == (
            403,
            "you may not cancel this stream",
        )
        assert (await AsyncClient().post(url)).status_code == 403
        assert (await stream_row(stream.pk)).status == Status.STREAMING
        response = await as_owner.post(url)
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert await run.wait() == Status.CANCELLED
    assert (await as_owner.get(url)).status_code == 405
    assert (await as_owner.post(f"/api/streams/{uuid.uuid4()}/cancel/")).status_code == 404


def test_cancelling_a_finished_stream_changes_nothing():
    stream = written(["All said."], status=Status.DONE)
    assert cancel_stream(stream.pk) == Status.DONE
    assert get_stream_body(stream.pk).text == "All said."


@pytest.mark.parametrize(
    ("status", "error"),
    [(Status.CANCELLED, None), (Status.ERROR, "RuntimeError: boom"), (Status.TIMEOUT, None)],
)
async def test_a_late_viewer_of_an_ended_stream_gets_the_kept_text_and_status(status, error):
    @sync_to_async
    def ended() -> uuid.UUID:
        stream = written(["Kept ", "text."])
        if status == Status.TIMEOUT:
            age(stream.pk, 120)
        else:
            from streaming_app.drive.flush import Batch
            from streaming_app.drive.persist import write_batch

            write_batch(stream.pk, Batch(seq=2, offset=10, text="", terminal=(status, error)))
        return stream.pk

    stream_id = await ended()
    result = await watch(await viewer(stream_id))
    assert (result["text"], result["statuses"], result["code"]) == ("Kept text.", [status], 1000)
    body = await aget_stream_body(stream_id)
    expected_error = error if status != Status.TIMEOUT else "no activity for 60 seconds"
    assert (body.status, body.error) == (status, expected_error)


# Heartbeats and expiry ---------------------------------------------------------------


def test_a_stale_stream_times_out_when_read():
    stream = written(["Half a sent"])
    age(stream.pk, 61)
    with committed_events() as events:
        body = get_stream_body(stream.pk)
    assert (body.status, body.text, body.error) == (
        "timeout",
        "Half a sent",
        "no activity for 60 seconds",
    )
    assert [e["status"] for e in events] == ["timeout"], "viewers are told"


async def test_a_pending_stream_waits_for_its_driver_past_the_timeout():
    """TIMEOUT is about dead writers; a stream nobody has driven yet has none. Its owner
    comes back long after the timeout, cron's expire_streams having run meanwhile: the
    stream is still pending, a viewer who opened it waits, and the drive gets it done."""
    stream, owner = await owned_stream()
    await sync_to_async(age)(stream.pk, 3600)
    assert (await aget_stream_body(stream.pk)).status == Status.PENDING  # read: not expired
    out = StringIO()
    await sync_to_async(call_command)("expire_streams", stdout=out)
    assert out.getvalue().strip() == "0 streams expired"
    ready = asyncio.Event()
    watching = asyncio.create_task(watch(await viewer(stream.pk, user=owner), ready=ready))
    await asyncio.wait_for(ready.wait(), 10)

    answer = ["Better ", "late ", "than never."]
    driven = await drive_in_process(stream.pk, paced(answer), user=owner, policy=FAST)
    assert "".join(part for _, part in driven) == "Better late than never."
    seen = await asyncio.wait_for(watching, 10)
    assert (seen["text"], seen["statuses"][-1]) == ("Better late than never.", Status.DONE)
    assert (await aget_stream_body(stream.pk)).status == Status.DONE


@override_settings(STREAMING_APP={"PENDING_TIMEOUT": 30})
def test_with_a_pending_timeout_a_stream_nobody_drove_times_out():
    waited, recent, read, claimed = (create_stream() for _ in range(4))
    for pk in (waited.pk, read.pk, claimed.pk):
        age(pk, 31)
    age(recent.pk, 20)
    silent = written(["alive"])
    age(silent.pk, 31)  # streaming: TIMEOUT (60) applies, not PENDING_TIMEOUT
    # A read expires one lazily, and its viewers are told.
    with committed_events() as events:
        body = get_stream_body(read.pk)
    assert (body.status, body.error) == (Status.TIMEOUT, "not driven within 30 seconds")
    assert [e["status"] for e in events] == [Status.TIMEOUT]
    with pytest.raises(StreamNotPending, match="already timeout"):
        claim_stream(claimed.pk)

    out = StringIO()
    call_command("expire_streams", stdout=out)
    assert out.getvalue().strip() == "1 stream expired"
    assert get_stream_body(waited.pk).status == Status.TIMEOUT
    assert get_stream_body(silent.pk).status == Status.STREAMING
    claim_stream(recent.pk)  # younger than PENDING_TIMEOUT: still the driver's


def test_the_timeout_counts_from_the_last_activity_not_from_creation():
    stream = written(["fresh"])
    Stream.objects.filter(pk=stream.pk).update(created_at=timezone.now() - timedelta(days=3))
    assert get_stream_body(stream.pk).status == "streaming"
    out = StringIO()
    call_command("expire_streams", stdout=out)
    assert out.getvalue().strip() == "0 streams expired"


def test_expire_streams_ends_stale_streams_and_says_how_many():
    stale = [written([f"stream {i}"]).pk for i in range(3)]
    pending = create_stream().pk  # never driven: no writer died (PENDING_TIMEOUT is None)
    for pk in [*stale, pending]:
        age(pk, 30)
    fresh = written(["alive"]).pk
    out = StringIO()
    call_command("expire_streams", "--timeout", "20", stdout=out)
    assert out.getvalue().strip() == "3 streams expired"
    assert set(Stream.objects.filter(status="timeout").values_list("pk", flat=True)) == set(stale)
    assert Stream.objects.get(pk=fresh).status == "streaming"
    assert Stream.objects.get(pk=pending).status == "pending"
    with pytest.raises(CommandError):
        call_command("expire_streams", "--timeout", "0")


def test_a_cancelled_stream_whose_writer_died_expires_as_cancelled():
    stream = written(["Stop"])
    assert cancel_stream(stream.pk) == Status.STREAMING  # a writer would stop it
    age(stream.pk, 61)
    assert get_stream_body(stream.pk).status == Status.CANCELLED


@override_settings(STREAMING_APP={"HEARTBEAT_INTERVAL": 0.2, "TIMEOUT": 1.0})
async def test_a_live_writer_silent_longer_than_the_timeout_is_not_expired():
    stream_id, run = await started_run(thinking("Hmm", 2.5, ", done."))
    silent_until = time.monotonic() + 2.2  # over twice the timeout
    while time.monotonic() < silent_until:
        await asyncio.sleep(0.25)
        await sync_to_async(call_command)("expire_streams", stdout=StringIO())
        assert (await aget_stream_body(stream_id)).status == "streaming"
    assert await run.wait() == Status.DONE
    assert (await aget_stream_body(stream_id)).text == "Hmm, done."


async def test_an_expired_stream_stops_its_writer():
    produced: list[float] = []
    stream_id, run = await started_run(endless(produced), policy=FlushPolicy(0.05, 0.1, 4096))
    await asyncio.sleep(0.3)
    await sync_to_async(
        lambda: Stream.objects.filter(pk=stream_id).update(
            status="timeout", finished_at=timezone.now()
        )
    )()
    assert await asyncio.wait_for(run.wait(), 5) == "timeout"
    count = len(produced)
    await asyncio.sleep(0.2)
    assert len(produced) == count


# Retention ----------------------------------------------------------------------------


def finished_ago(status: str, days: float) -> uuid.UUID:
    stream = written(["old ", "text"], status=status)
    Stream.objects.filter(pk=stream.pk).update(finished_at=timezone.now() - timedelta(days=days))
    return stream.pk


def test_purge_streams_deletes_old_finished_streams_and_their_chunks():
    old_done = finished_ago("done", 40)
    old_error = finished_ago("error", 40)
    recent = finished_ago("done", 1)
    live = written(["live"]).pk
    out = StringIO()
    call_command(
        "purge_streams", "--older-than", "30d", "--status", "error", "--batch-size", "1", stdout=out
    )
    assert out.getvalue().strip() == "1 stream deleted"
    assert not Stream.objects.filter(pk=old_error).exists()
    assert not Chunk.objects.filter(stream_id=old_error).exists()
    call_command("purge_streams", "--older-than", "P30D", stdout=out)
    assert set(Stream.objects.values_list("pk", flat=True)) == {recent, live}
    assert not Chunk.objects.filter(stream_id=old_done).exists()


@pytest.mark.parametrize("bad", ["soon", "-3d", "", "30x"])
def test_purge_streams_refuses_a_bad_duration(bad):
    with pytest.raises(CommandError, match="is not a duration"):
        call_command("purge_streams", f"--older-than={bad}")


def test_deleting_a_stream_in_the_admin_deletes_its_chunks():
    admin = get_user_model().objects.create_superuser("admin", "a@example.com", "pw")
    client = Client()
    client.force_login(admin)
    stream = written(["to ", "delete"], status=Status.DONE)
    response = client.post(f"/admin/streaming_app/stream/{stream.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Stream.objects.filter(pk=stream.pk).exists()
    assert not Chunk.objects.filter(stream_id=stream.pk).exists()


# Permissions --------------------------------------------------------------------------


def test_a_custom_policy_applies_to_every_transport(settings):
    stream = create_stream(metadata={"public": False})
    settings.STREAMING_APP = {"PERMISSION_POLICY": "tests.test_lifecycle.metadata_policy"}
    assert Client().get(f"/api/streams/{stream.pk}/").status_code == 403
    assert Client().get(f"/api/streams/{stream.pk}/events/").status_code == 403
    Stream.objects.filter(pk=stream.pk).update(metadata={"public": True})
    assert Client().get(f"/api/streams/{stream.pk}/").status_code == 200


def metadata_policy(user, stream, action) -> bool:
    return action == "read" and bool(stream.metadata.get("public"))


async def test_wait_finished_helper_sanity():
    stream_id, run = await started_run(endless([]), policy=FlushPolicy(0.05, 0.1, 4096))
    run.cancel()
    assert (await wait_finished(stream_id)).status == "cancelled"


async def test_a_cancelled_source_is_closed_at_once():
    closed = asyncio.Event()

    async def model():
        try:
            while True:
                await asyncio.sleep(0.01)
                yield "token "
        finally:
            closed.set()  # where an HTTP client would hang up on the model

    stream_id, run = await started_run(model())
    await asyncio.sleep(0.1)
    run.cancel()
    await asyncio.wait_for(closed.wait(), 1)
    assert await run.wait() == Status.CANCELLED


@override_settings(STREAMING_APP={})
async def test_the_library_default_policy_is_the_owners():
    """Without PERMISSION_POLICY (the example sets anyone_reads_policy): an owned stream
    is its owner's alone, in every transport; an ownerless one is anyone's to read
    (driving and cancelling it: tests/test_permissions.py)."""
    owner = await get_user_model().objects.acreate(username="owner")
    owned = await sync_to_async(create_stream)(owner=owner)
    ownerless = await sync_to_async(create_stream)()
    stranger = AsyncClient()
    assert (await stranger.get(f"/api/streams/{owned.pk}/")).status_code == 403
    assert (await stranger.get(f"/api/streams/{owned.pk}/events/")).status_code == 403
    assert (await stranger.post(f"/api/streams/{owned.pk}/cancel/")).status_code == 403
    assert (await watch(await viewer(owned.pk)))["code"] == 4403
    assert (await stranger.get(f"/api/streams/{ownerless.pk}/")).status_code == 200
    own = AsyncClient()
    await own.aforce_login(owner)
    assert (await own.get(f"/api/streams/{owned.pk}/")).status_code == 200
