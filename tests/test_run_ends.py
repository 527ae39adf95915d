"""Every run ends, however it is cancelled or however its callbacks fail, and its end
goes out before ``run.wait()`` returns (design.md, invariant 9)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.test import override_settings

from streaming_app.drive.committer import committer, open_writer
from streaming_app.drive.flush import FlushPolicy
from streaming_app.drive.run import StreamRun
from streaming_app.exceptions import StreamAlreadyRunning
from streaming_app.models import Status
from streaming_app.signals import stream_finished
from streaming_app.streams import aclaim_stream, acreate_stream

from .helpers import assert_chunks_consistent, chunks_of, paced, stream_row
from .layers import HeldLayer
from .servers import ROOT, server_env, ws_watch

QUICK = FlushPolicy(min_interval=0.0, max_interval=0.02, max_chars=4096)


async def claimed() -> uuid.UUID:
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    return stream.pk


async def committed(stream_id: uuid.UUID, length: int) -> None:
    async with asyncio.timeout(10):
        while True:
            if (await stream_row(stream_id)).length >= length:
                return
            await asyncio.sleep(0.01)


@pytest.mark.django_db(transaction=True)
@override_settings(STREAMING_APP={"HEARTBEAT_INTERVAL": 0.05})
async def test_a_second_cancel_while_the_run_stops_its_source_still_ends_the_stream():
    """The run's task is cancelled, and cancelled again while the source is still
    closing (a model client hanging up takes a moment). Before, the second cancel
    skipped the writer's close: the row stayed `streaming`, its writer beating."""
    hanging_up, may_hang_up = asyncio.Event(), asyncio.Event()

    async def model() -> AsyncIterator[str]:
        try:
            yield "Some text. "
            await asyncio.Event().wait()
        finally:
            hanging_up.set()
            await may_hang_up.wait()

    stream_id = await claimed()
    run = StreamRun(stream_id, model(), policy=QUICK)
    task = run.start()
    await committed(stream_id, len("Some text. "))
    task.cancel()
    await asyncio.wait_for(hanging_up.wait(), 10)
    task.cancel()  # the run awaits its generation, which has not ended yet
    may_hang_up.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run.wait(), 10)
    row = await stream_row(stream_id)
    assert (row.status, row.length, run.status) == (Status.CANCELLED, 11, Status.CANCELLED)
    # Nothing is left to beat for it: its writer is gone from the committer.
    assert stream_id not in committer().writers


@pytest.mark.django_db(transaction=True)
async def test_an_on_end_that_raises_is_logged_and_the_stream_ends_all_the_same(caplog):
    """Before, the exception went through the run's `finally` and skipped the writer's
    close: the stream stayed `streaming`, its heartbeat fresh, for ever."""
    calls = []

    def on_end() -> None:
        calls.append("on_end")
        raise RuntimeError("on_end broke")

    stream_id = await claimed()
    run = StreamRun(stream_id, paced(["Hello. ", "World."]), policy=QUICK)
    run.start(on_end=on_end)
    status = await asyncio.wait_for(run.wait(), 10)
    assert calls == ["on_end"]
    row = await stream_row(stream_id)
    text = assert_chunks_consistent(await chunks_of(stream_id))
    assert (status, row.status, text) == (Status.DONE, Status.DONE, "Hello. World.")
    assert stream_id not in committer().writers
    logged = [r for r in caplog.records if r.exc_info and "on_end broke" in str(r.exc_info[1])]
    assert logged and str(stream_id) in logged[0].getMessage()


@pytest.mark.django_db(transaction=True)
async def test_a_second_run_of_a_stream_is_refused_and_the_first_ends():
    """Before, the second run took the first one's place in the committer, and the
    first one's close never returned."""
    go_on = asyncio.Event()

    async def model() -> AsyncIterator[str]:
        yield "First run. "
        await go_on.wait()
        yield "Its end."

    stream_id = await claimed()
    first = StreamRun(stream_id, model(), policy=QUICK)
    first.start()
    await committed(stream_id, len("First run. "))  # its writer is open
    with pytest.raises(StreamAlreadyRunning, match=str(stream_id)):
        StreamRun(str(stream_id), paced(["Second."])).start()
    with pytest.raises(StreamAlreadyRunning):
        open_writer(stream_id)

    def on_another_loop() -> None:
        async def attempt() -> None:
            StreamRun(stream_id, paced(["Third."])).start()

        asyncio.run(attempt())

    with pytest.raises(StreamAlreadyRunning):
        await asyncio.to_thread(on_another_loop)
    go_on.set()
    assert await asyncio.wait_for(first.wait(), 10) == Status.DONE
    text = assert_chunks_consistent(await chunks_of(stream_id))
    assert text == "First run. Its end."


@pytest.mark.django_db(transaction=True)
@override_settings(
    CHANNEL_LAYERS={"default": {"BACKEND": "tests.layers.HeldLayer"}},
    STREAMING_APP={"PUBLISH_TIMEOUT": 30},
)
async def test_wait_returns_after_the_final_update_and_stream_finished_have_gone_out():
    """Before, wait() returned once the status had committed, while the publisher had
    not sent it yet: a worker returning from asyncio.run() lost both."""
    order = HeldLayer.order = []
    HeldLayer.entered, HeldLayer.release = asyncio.Event(), asyncio.Event()

    async def finished(sender: Any, **kwargs: Any) -> None:
        order.append(f"stream_finished {kwargs['status']}")

    stream_finished.connect(finished, weak=False)
    try:
        stream_id = await claimed()
        run = StreamRun(stream_id, paced(["All ", "of it."]), policy=QUICK)
        run.start()

        async def waiting() -> None:
            order.append(f"wait() returned {await run.wait()}")

        waiter = asyncio.create_task(waiting())
        await asyncio.wait_for(HeldLayer.entered.wait(), 10)
        assert await asyncio.wait_for(asyncio.shield(run.task), 10) == Status.DONE
        done, _ = await asyncio.wait({waiter}, timeout=0.2)
        assert not done, "wait() returned while the layer still held the final update"
        HeldLayer.release.set()
        await asyncio.wait_for(waiter, 10)
    finally:
        stream_finished.disconnect(finished)
    assert order == ["the layer took done", "stream_finished done", "wait() returned done"]


@pytest.mark.daphne
@pytest.mark.redis
def test_a_worker_that_runs_a_stream_and_exits_tells_its_viewers_and_receivers(
    daphne_factory, e2e_db
):
    """A worker process claims a stream and asyncio.run()s it to its end, then exits.
    A viewer on a server process hears the end through the channel layer alone (its
    re-sync is ten minutes away), and the worker's stream_finished receiver fires once.
    Before, the worker exited with the final update still in its publisher's queue:
    the viewer waited, and the receiver never fired."""
    layer = {
        "REDIS_URL": os.environ["REDIS_URL"],
        "E2E_CHANNEL_LAYER": "pubsub",
        "E2E_STREAMING_APP": json.dumps({"RESYNC_INTERVAL": 600}),
    }
    server = daphne_factory(**layer)
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.worker"],
        cwd=ROOT,
        env=server_env(e2e_db, **layer),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdin is not None and worker.stdout is not None
    try:
        first = worker.stdout.readline().split()
        assert first[:1] == ["stream"], first
        stream_id = first[1]
        view = asyncio.run(watch_after_snapshot(server.url, stream_id, worker.stdin))
        worker.wait(timeout=30)
        out = worker.stdout.read()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    from tests.worker import PIECES

    assert worker.returncode == 0
    assert out.splitlines() == [f"finished {stream_id} done", "status done", "exit"]
    assert (view["text"], view["statuses"][-1], view["code"]) == ("".join(PIECES), "done", 1000)


async def watch_after_snapshot(base_url: str, stream_id: str, go: Any) -> dict[str, Any]:
    """Watch a stream over a real websocket; once the snapshot (the `pending` status)
    is in, the viewer's process follows the stream's group: tell the worker to go."""

    def on_status(statuses: list[str]) -> None:
        if statuses == ["pending"]:
            go.write("go\n")
            go.flush()

    try:
        async with asyncio.timeout(30):
            return await ws_watch(base_url, stream_id, on_status=on_status)
    finally:
        with contextlib.suppress(BrokenPipeError):
            go.close()
