"""Helpers shared by the in-process tests."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.test import AsyncRequestFactory

from streaming_app import astream_response
from streaming_app.drive.flush import Batch, FlushPolicy
from streaming_app.drive.persist import write_batch
from streaming_app.drive.run import Source, StreamRun
from streaming_app.models import Chunk, Status, Stream
from streaming_app.routing import websocket_urlpatterns
from streaming_app.signals import stream_committed
from streaming_app.streams import (
    aclaim_stream,
    acreate_stream,
    claim_stream,
    create_stream,
    read_text,
)

T = TypeVar("T")


def written(text_pieces: list[str], *, status: str = Status.STREAMING, owner: Any = None) -> Stream:
    """A stream whose chunks are ``text_pieces``, written as the writer writes them."""
    stream = create_stream(owner=owner)
    claim_stream(stream.pk)
    offset = 0
    for seq, text in enumerate(text_pieces):
        write_batch(stream.pk, Batch(seq=seq, offset=offset, text=text))
        offset += len(text)
    if status != Status.STREAMING:
        write_batch(
            stream.pk, Batch(seq=len(text_pieces), offset=offset, text="", terminal=(status, None))
        )
    return Stream.objects.get(pk=stream.pk)


async def thinking(first: str, pause: float, last: str) -> AsyncIterator[str]:
    """A model that says something, falls silent for ``pause`` seconds, then finishes."""
    yield first
    await asyncio.sleep(pause)
    yield last


async def paced(pieces: Iterable[T], delay: float = 0.0) -> AsyncIterator[T]:
    """Yield pieces, giving the event loop a turn (or ``delay`` seconds) between them,
    as a network source would."""
    for piece in pieces:
        await asyncio.sleep(delay)
        yield piece


async def run_to_end(
    source: Source, *, policy: FlushPolicy | None = None, tap: Any = None
) -> tuple[uuid.UUID, str]:
    """Create, claim and drive a stream from ``source`` without HTTP; wait for its end."""
    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    run = StreamRun(stream.pk, source, tap=tap, policy=policy)
    run.start()
    return stream.pk, await run.wait()


@sync_to_async
def chunks_of(stream_id: uuid.UUID) -> list[tuple[int, int, str]]:
    return list(
        Chunk.objects.filter(stream_id=stream_id)
        .order_by("seq")
        .values_list("seq", "offset", "text")
    )


@sync_to_async
def stream_row(stream_id: uuid.UUID) -> Stream:
    return Stream.objects.get(pk=stream_id)


def assert_chunks_consistent(chunks: list[tuple[int, int, str]]) -> str:
    """Seqs count from 0, each chunk starts where the last ended; returns the text."""
    offset = 0
    for expected_seq, (seq, chunk_offset, text) in enumerate(chunks):
        assert seq == expected_seq
        assert chunk_offset == offset
        assert text, "a chunk is never empty"
        offset += len(text)
    return "".join(text for _, _, text in chunks)


async def owned_stream(owner: Any = None) -> tuple[Stream, Any]:
    """A new pending stream and its owner (``owner``, or a new user of its own): under
    the default policy only the owner drives and cancels a stream (one without owner
    is read-only)."""
    if owner is None:
        owner = await get_user_model().objects.acreate(username=f"owner-{uuid.uuid4().hex[:12]}")
    return await acreate_stream(owner=owner), owner


def as_user(request: Any, user: Any = None) -> Any:
    """``request`` as Django hands it to a view after AuthenticationMiddleware: from
    ``user``, or from an anonymous visitor."""
    request.user = AnonymousUser() if user is None else user

    async def auser() -> Any:
        return request.user

    request.auser = auser
    return request


def drive_request(user: Any = None, path: str = "/drive/") -> Any:
    """A POST to a driving view, from ``user`` or an anonymous visitor."""
    return as_user(AsyncRequestFactory().post(path), user)


async def drive_in_process(
    stream_id: uuid.UUID, source: Source, *, user: Any = None, **kwargs: Any
) -> list[tuple[float, str]]:
    """Drive through astream_response as a view would, as ``user`` (the stream's
    owner); the parts the driver received, with the time each arrived."""
    response = await astream_response(drive_request(user), stream_id, source, **kwargs)
    assert response.status_code == 200, response
    parts = []
    async for part in response:  # type: ignore[attr-defined]
        parts.append((time.monotonic(), part.decode()))
    return parts


async def wait_finished(stream_id: uuid.UUID, within: float = 10) -> Stream:
    deadline = time.monotonic() + within
    while True:
        stream = await stream_row(stream_id)
        if stream.is_finished:
            return stream
        assert time.monotonic() < deadline, f"stream still {stream.status} after {within}s"
        await asyncio.sleep(0.02)


@contextmanager
def committed_events(
    on_text: Callable[[], None] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Record every stream_committed announcement, with the time it was heard;
    ``on_text`` is called for each one that carries text."""
    events: list[dict[str, Any]] = []

    async def receiver(sender: Any, **kwargs: Any) -> None:
        kwargs.pop("signal", None)
        events.append({**kwargs, "at": time.monotonic()})
        if on_text is not None and kwargs["text"]:
            on_text()

    stream_committed.connect(receiver, weak=False)
    try:
        yield events
    finally:
        stream_committed.disconnect(receiver)


class WatchedStreams:
    """``count`` live streams of this process, each watched by in-process viewers over
    the real transports (two websocket consumers, one Server-Sent Events view), for
    tests that inject a fault beside them. Each is driven by a :class:`StreamRun` of
    this process (``remote=False``: local delivery, the committer's path) or by a
    writer elsewhere that publishes through the channel layer (``remote=True``: the
    hub's receiver). :meth:`say` gives every stream a piece; :meth:`end` ends them and
    asserts that every viewer ended exact: its text the database's, the final status
    seen."""

    def __init__(self, count: int = 10, *, remote: bool = False) -> None:
        self.count, self.remote = count, remote
        self.ids: list[uuid.UUID] = []
        self.drivers: list[Any] = []
        self.runs: list[StreamRun] = []
        self.websockets: list[asyncio.Task[dict[str, Any]]] = []
        self.events: list[asyncio.Task[str]] = []
        self.said = 0

    async def start(self) -> WatchedStreams:
        # (test_fanout imports this module: its helpers are imported when used.)
        from django.test import AsyncClient

        from .test_fanout import FAST, RemoteWriter, Source, watched

        for _ in range(self.count):
            stream = await acreate_stream()
            await aclaim_stream(stream.pk)
            self.ids.append(stream.pk)
            if self.remote:
                self.drivers.append(RemoteWriter(stream.pk))
            else:
                source = Source()
                run = StreamRun(stream.pk, source, policy=FAST)
                run.start()
                self.drivers.append(source)
                self.runs.append(run)
            self.websockets += await watched(stream.pk, 2)
            response = await AsyncClient().get(f"/api/streams/{stream.pk}/events/")
            assert response.status_code == 200
            self.events.append(asyncio.create_task(read_all(response)))
        return self

    async def say(self) -> None:
        """One piece more for every stream."""
        for index, driver in enumerate(self.drivers):
            piece = f"Stream {index} says {self.said}. "
            if self.remote:
                await driver.write(piece)
            else:
                driver.feed(piece)
        self.said += 1

    async def end(self) -> None:
        from .test_fanout import parse_events

        for driver in self.drivers:
            if self.remote:
                await driver.write("", Status.DONE)
            else:
                driver.feed(None)
        for run in self.runs:
            assert await asyncio.wait_for(run.wait(), 10) == Status.DONE
        results = await asyncio.wait_for(asyncio.gather(*self.websockets), 15)
        bodies = await asyncio.wait_for(asyncio.gather(*self.events), 15)
        for index, stream_id in enumerate(self.ids):
            row = await stream_row(stream_id)
            assert row.status == Status.DONE
            text = await sync_to_async(read_text)(stream_id, 0, row.length)
            assert text.count("says") == self.said, "a piece is missing from the database"
            for result in results[2 * index : 2 * index + 2]:
                assert (result["start"], result["text"]) == (0, text)
                assert (result["statuses"][-1], result["code"]) == (Status.DONE, 1000)
            events = parse_events(bodies[index])
            assert "".join(d["text"] for kind, _, d in events if kind == "text") == text
            assert events[-1][2] == {"type": "status", "status": "done", "error": None}


async def read_all(response: Any) -> str:
    """A streaming response's body, to its end."""
    return b"".join([part async for part in response.streaming_content]).decode()


async def websocket_view(
    communicator: WebsocketCommunicator, patience: float = 30
) -> dict[str, Any]:
    """Read an in-process websocket viewer to its close, as a client assembles the text:
    the text, the statuses, the close code. Fails on an overlap or a gap."""
    text, start = "", None
    statuses: list[str] = []
    try:
        while True:
            output = await communicator.receive_output(timeout=patience)
            if output["type"] == "websocket.close":
                return {"text": text, "statuses": statuses, "code": output.get("code")}
            message = json.loads(output["text"])
            if message["type"] == "text":
                if start is None:
                    start = message["offset"]
                assert message["offset"] == start + len(text), "overlap or gap"
                text += message["text"]
            else:
                statuses.append(message["status"])
    finally:
        await communicator.disconnect()


class Bystanders:
    """Ten (``count``) streams run beside a faulty one on the same event loop, each
    watched by a websocket viewer of its own (in process, through the hub): a fault
    elsewhere must not reach them.

    Each source produces half its pieces, then waits for :attr:`resume`: set it once
    the fault has hit (in the injected code, before the fault goes on), and every
    bystander is live across the fault (:meth:`start` returns once all have produced
    their first half). :meth:`finish` waits for that, then checks that each ended
    ``done`` with exactly what its source produced, for its viewer and in the
    database."""

    def __init__(self, count: int = 10, *, policy: FlushPolicy | None = None) -> None:
        self.count = count
        self.policy = policy
        self.resume = asyncio.Event()
        self.pieces = [[f"Stream {i}, piece {k}. " for k in range(8)] for i in range(count)]
        self.runs: list[StreamRun] = []
        self.viewers: list[asyncio.Task[dict[str, Any]]] = []
        self._halfway = 0
        self._all_halfway = asyncio.Event()

    async def _source(self, pieces: list[str]) -> AsyncIterator[str]:
        half = len(pieces) // 2
        for piece in pieces[:half]:
            await asyncio.sleep(0)
            yield piece
        self._halfway += 1
        if self._halfway == self.count:
            self._all_halfway.set()
        await self.resume.wait()
        for piece in pieces[half:]:
            await asyncio.sleep(0)
            yield piece

    async def start(self) -> None:
        async def app(scope: Any, receive: Any, send: Any) -> Any:
            return await URLRouter(websocket_urlpatterns)({**scope, "user": None}, receive, send)

        for pieces in self.pieces:
            stream = await acreate_stream()
            await aclaim_stream(stream.pk)
            communicator = WebsocketCommunicator(app, f"/ws/streams/{stream.pk}/")
            connected, _ = await communicator.connect()
            assert connected
            self.viewers.append(asyncio.create_task(websocket_view(communicator)))
            run = StreamRun(stream.pk, self._source(pieces), policy=self.policy)
            run.start()
            self.runs.append(run)
        await asyncio.wait_for(self._all_halfway.wait(), 10)

    async def finish(self, within: float = 20) -> None:
        try:
            await asyncio.wait_for(self.resume.wait(), within)
        except TimeoutError:
            raise AssertionError("the bystanders were never resumed (no fault hit?)") from None
        statuses = await asyncio.wait_for(asyncio.gather(*(r.wait() for r in self.runs)), within)
        produced = ["".join(pieces) for pieces in self.pieces]
        ended = []
        for run, status in zip(self.runs, statuses, strict=True):
            row = await stream_row(run.stream_id)
            text = assert_chunks_consistent(await chunks_of(run.stream_id))
            ended.append((status, row.status, text))
        assert ended == [(Status.DONE, Status.DONE, text) for text in produced], [
            (status, row, f"{len(text)} characters") for status, row, text in ended
        ]
        views = await asyncio.wait_for(asyncio.gather(*self.viewers), within)
        seen = [(view["text"], view["statuses"][-1], view["code"]) for view in views]
        assert seen == [(text, "done", 1000) for text in produced], seen
