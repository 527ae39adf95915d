"""What a driver is answered, in process: only POST drives, a run that ends before its
first piece says how it ended (a status code and JSON), the NDJSON drive ends with the
stream's status, and the app's CSRF refusals are JSON whatever the settings."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.test import AsyncClient, AsyncRequestFactory, override_settings
from django.urls import include, path

from streaming_app import views
from streaming_app.aisdk.responses import aui_message_stream_response
from streaming_app.drive.flush import FlushPolicy
from streaming_app.drive.run import StreamRun, live_runs
from streaming_app.models import Status, Stream
from streaming_app.signals import stream_run_started
from streaming_app.streams import aget_stream_body

from .helpers import as_user, drive_request, owned_stream, paced, wait_finished
from .test_lifecycle import Fed

pytestmark = pytest.mark.django_db(transaction=True)

FAST = FlushPolicy(min_interval=0.0, max_interval=0.02, max_chars=4096)


async def stream_row(stream_id: Any) -> Stream:
    return await Stream.objects.aget(pk=stream_id)


def json_of(response: Any) -> Any:
    return json.loads(response.content)


async def read(response: Any) -> bytes:
    return b"".join([part async for part in response])


class ModelDown(Exception):
    pass


async def fails_at_once() -> Any:
    raise ModelDown("connection refused by 10.0.0.9")
    yield ""  # pragma: no cover - an async generator


async def fails_after(pieces: list[str]) -> Any:
    for piece in pieces:
        yield piece
        await asyncio.sleep(0)
    raise ModelDown("overloaded at 10.0.0.9")


# Only POST drives -------------------------------------------------------------------


async def drive_sync(request: Any, stream_id: Any, source: Any) -> HttpResponseBase:
    from asgiref.sync import sync_to_async

    return await sync_to_async(views.stream_response)(request, stream_id, source)


DRIVES: dict[str, Any] = {
    "astream_response": views.astream_response,
    "stream_response": drive_sync,
    "aui_message_stream_response": aui_message_stream_response,
}


@pytest.mark.parametrize("drive", DRIVES)
@pytest.mark.parametrize("method", ["get", "put", "delete", "head", "options"])
async def test_anything_but_post_is_405_json_and_claims_nothing(drive, method):
    stream, owner = await owned_stream()
    request = as_user(getattr(AsyncRequestFactory(), method)("/drive/"), owner)
    asked: list[str] = []

    async def model() -> Any:
        asked.append("asked")
        yield "never"

    response = await DRIVES[drive](request, stream.pk, model())
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert response["Content-Type"] == "application/json"
    assert json_of(response)["error"] == f"{method.upper()} is not allowed: drive by POST"
    assert (await stream_row(stream.pk)).status == Status.PENDING
    assert asked == [] and live_runs() == []


# A run that ends before its first piece ---------------------------------------------


@contextlib.asynccontextmanager
async def started_run() -> AsyncIterator[asyncio.Future[StreamRun]]:
    """A future of the next run to start (stream_run_started)."""
    started: asyncio.Future[StreamRun] = asyncio.get_running_loop().create_future()

    def receiver(sender: Any, *, run: StreamRun, **kwargs: Any) -> None:
        if not started.done():
            started.set_result(run)

    stream_run_started.connect(receiver)
    try:
        yield started
    finally:
        stream_run_started.disconnect(receiver)


@pytest.mark.parametrize("parts", [False, True], ids=["text", "ndjson"])
async def test_a_model_that_fails_before_any_text_is_a_502_with_the_public_message(parts):
    stream, owner = await owned_stream()
    request = drive_request(owner, "/drive/?parts=1" if parts else "/drive/")
    response = await views.astream_response(request, stream.pk, fails_at_once(), policy=FAST)
    assert response.status_code == 502
    assert response["Content-Type"] == "application/json"
    assert response["X-Stream-Id"] == str(stream.pk)
    assert json_of(response) == {
        "error": "generation failed",
        "status": "error",
        "id": str(stream.pk),
    }
    assert (await stream_row(stream.pk)).status == Status.ERROR


async def test_a_run_cancelled_before_any_text_is_409_and_an_empty_done_is_200():
    stream, owner = await owned_stream()
    source = Fed()
    async with started_run() as run_started:
        answer = asyncio.ensure_future(
            views.astream_response(drive_request(owner), stream.pk, source, policy=FAST)
        )
        run = await run_started
    run.cancel()
    response = await asyncio.wait_for(answer, 10)
    assert response.status_code == 409
    assert json_of(response) == {
        "error": "the reply was cancelled",
        "status": "cancelled",
        "id": str(stream.pk),
    }

    empty, owner = await owned_stream()
    response = await views.astream_response(drive_request(owner), empty.pk, paced([]))
    assert (response.status_code, response["X-Stream-Id"]) == (200, str(empty.pk))
    assert response.content == b""  # type: ignore[attr-defined]


@pytest.mark.parametrize("cancel_on_disconnect", [False, True])
async def test_hanging_up_before_the_first_piece_is_not_stopping(cancel_on_disconnect):
    """Django cancels the view's task when the client disconnects: while the view waits
    for the first piece, that is the driver hanging up."""
    stream, owner = await owned_stream()
    source = Fed()
    with override_settings(STREAMING_APP={"CANCEL_ON_DISCONNECT": cancel_on_disconnect}):
        async with started_run() as run_started:
            answer = asyncio.ensure_future(
                views.astream_response(drive_request(owner), stream.pk, source, policy=FAST)
            )
            run = await run_started
        assert not answer.done()  # it waits for the first piece
        answer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await answer
        assert run.tap is None  # nothing is kept for a driver that has gone
        source.feed("Still ", "written.")
        source.end()
        assert await asyncio.wait_for(run.wait(), 10) == (
            Status.CANCELLED if cancel_on_disconnect else Status.DONE
        )
    await wait_finished(stream.pk)
    body = await aget_stream_body(stream.pk)
    assert body.text == ("" if cancel_on_disconnect else "Still written.")


# A driver that stops reading ---------------------------------------------------------

#: The log line of an abandoned drive (DriverFeed.push).
STOPPED_READING = "stopped reading; its response is abandoned"
BOUND = 1_000


def long_text(characters: int) -> list[str]:
    """``characters`` in numbered pieces of 100, so that a gap or overlap shows."""
    return [f"{i:05d}:" + "x" * 93 + "\n" for i in range(characters // 100)]


@pytest.mark.parametrize("max_length", [100_000, None], ids=["max-length", "no-max-length"])
async def test_a_response_not_yet_read_holds_more_than_the_bound_and_gives_it_all(
    max_length, caplog
):
    """A response the server has not asked for its body yet (on its way out through
    the middleware) has not stopped reading: the whole reply, many times
    ``MAX_PENDING_CHARS``, generated to its end before the first read, all reaches it
    and its body ends cleanly."""
    stream, owner = await owned_stream()
    source = Fed()
    pieces = long_text(20 * BOUND)
    settings = {"MAX_PENDING_CHARS": BOUND, "MAX_LENGTH": max_length}
    with override_settings(STREAMING_APP=settings):
        async with started_run() as run_started:
            answer = asyncio.ensure_future(
                views.astream_response(drive_request(owner), stream.pk, source, policy=FAST)
            )
            run = await run_started
        source.feed(*pieces)
        source.end()
        response = await asyncio.wait_for(answer, 10)
        # The run has ended (and pushed everything) before the body's first read.
        assert await asyncio.wait_for(run.wait(), 10) == Status.DONE
        assert (await read(response)).decode() == "".join(pieces)
    assert STOPPED_READING not in caplog.text
    assert (await aget_stream_body(stream.pk)).text == "".join(pieces)


async def test_a_driver_that_stops_reading_is_cut_off_and_the_reply_goes_on(caplog):
    """Once the body is being read, more than ``MAX_PENDING_CHARS`` waiting for the
    driver abandon it: its next read fails (ConnectionAbortedError: the server cuts the
    response, so the browser cannot take a part for the whole) and the run goes on to
    ``done`` with all its text."""
    stream, owner = await owned_stream()
    source = Fed()
    pieces = long_text(20 * BOUND)
    with override_settings(STREAMING_APP={"MAX_PENDING_CHARS": BOUND}):
        async with started_run() as run_started:
            answer = asyncio.ensure_future(
                views.astream_response(drive_request(owner), stream.pk, source, policy=FAST)
            )
            run = await run_started
        source.feed(pieces[0])
        response = await asyncio.wait_for(answer, 10)
        body: AsyncIterator[bytes] = aiter(response)  # type: ignore[arg-type]
        assert await anext(body) == pieces[0].encode()  # reading has begun
        source.feed(*pieces[1:])
        source.end()
        assert await asyncio.wait_for(run.wait(), 10) == Status.DONE
        assert STOPPED_READING in caplog.text
        with pytest.raises(ConnectionAbortedError):
            await anext(body)
    stored = await aget_stream_body(stream.pk)
    assert (stored.status, stored.text) == (Status.DONE, "".join(pieces))


# The NDJSON drive ends with the stream's status -------------------------------------


async def ndjson(response: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (await read(response)).decode().splitlines()]


async def test_the_ndjson_drive_ends_with_the_status_message_after_an_error():
    stream, owner = await owned_stream()
    request = drive_request(owner, "/drive/?parts=1")
    response = await views.astream_response(
        request, stream.pk, fails_after(["Half ", "an answer"]), policy=FAST
    )
    assert response.status_code == 200
    lines = await ndjson(response)
    assert "".join(line.get("text", "") for line in lines) == "Half an answer"
    assert lines[-1] == {"type": "status", "status": "error", "error": "generation failed"}
    assert [line["type"] for line in lines[:-1]] == ["text"] * (len(lines) - 1)


async def test_the_ndjson_drive_ends_with_done():
    stream, owner = await owned_stream()
    request = drive_request(owner, "/drive/?parts=1")
    response = await views.astream_response(request, stream.pk, paced(["All ", "of it."]))
    lines = await ndjson(response)
    assert lines[-1] == {"type": "status", "status": "done", "error": None}
    assert "".join(line.get("text", "") for line in lines) == "All of it."


# CSRF refusals are JSON ----------------------------------------------------------------


async def drive_view(request: HttpRequest, stream_id: str) -> HttpResponseBase:
    return await views.astream_response(request, stream_id, paced(["x"]))


urlpatterns = [
    path("drive/<str:stream_id>/", drive_view),
    path("api/streams/", include("streaming_app.urls")),
]

CSRF_APP = {"ROOT_URLCONF": "tests.test_drive_answers"}


@override_settings(**CSRF_APP, CSRF_FAILURE_VIEW="django.views.csrf.csrf_failure")  # Django's own
async def test_the_cancel_endpoint_refuses_a_missing_csrf_token_with_json():
    stream, owner = await owned_stream()
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(owner)
    response = await client.post(f"/api/streams/{stream.pk}/cancel/")
    assert response.status_code == 403
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "error": "CSRF verification failed: CSRF cookie not set.",
    }
    assert (await stream_row(stream.pk)).status == Status.PENDING
    # With its token, the same request cancels.
    token = "a" * 32
    client.cookies["csrftoken"] = token
    response = await client.post(
        f"/api/streams/{stream.pk}/cancel/", headers={"X-CSRFToken": token}
    )
    assert (response.status_code, response.json()["status"]) == (200, "cancelled")


@override_settings(**CSRF_APP, CSRF_FAILURE_VIEW="streaming_app.views.csrf_failure")
async def test_the_csrf_failure_view_answers_json_to_fetch_and_html_to_a_page():
    stream, owner = await owned_stream()
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(owner)
    response = await client.post(f"/drive/{stream.pk}/", headers={"Accept": "*/*"})
    assert (response.status_code, response["Content-Type"]) == (403, "application/json")
    assert response.json() == {"error": "CSRF verification failed: CSRF cookie not set."}
    navigation = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    response = await client.post(f"/drive/{stream.pk}/", headers={"Accept": navigation})
    assert (response.status_code, response["Content-Type"]) == (403, "text/html; charset=utf-8")
    assert b"CSRF verification failed" in response.content
    assert (await stream_row(stream.pk)).status == Status.PENDING
