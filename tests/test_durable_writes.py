"""Streams written over Durable Streams are the app's streams: the same rows, the same
hub, the same invariants (docs/protocol.md#durable-streams). In process; the protocol's
own answers are the conformance suite's (tests/test_conformance.py)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import AsyncClient, override_settings
from django.utils import timezone

from streaming_app.durable.offsets import token
from streaming_app.models import Chunk, DurableStream, Status, Stream
from streaming_app.permissions import DURABLE_WRITES, is_owner
from streaming_app.streams import aexpire_stale_streams

from .helpers import written
from .test_fanout import viewer, watch
from .test_pages import render as render_tag

pytestmark = pytest.mark.django_db(transaction=True)

OPEN = {
    **settings.STREAMING_APP,
    "PERMISSION_POLICY": "streaming_app.permissions.durable_writes_open_policy",
}
open_writes = override_settings(STREAMING_APP=OPEN)


@pytest.fixture
def client() -> AsyncClient:
    return AsyncClient()


async def send(method, name: str, body: bytes, content_type: str, headers: dict[str, str]):
    # The test client drops content_type with an empty body: CONTENT_TYPE then.
    extra = {} if body else {"CONTENT_TYPE": content_type}
    return await method(
        f"/v1/stream/{name}", body, content_type=content_type, headers=headers, **extra
    )


async def put(client, name: str, body: bytes = b"", content_type: str = "text/plain", /, **headers):
    return await send(client.put, name, body, content_type, headers)


async def post(client, name: str, body: bytes, content_type: str = "text/plain", /, **headers):
    return await send(client.post, name, body, content_type, headers)


async def stream_of(name: str) -> Stream:
    durable = await DurableStream.objects.select_related("stream").aget(name=name)
    return durable.stream


@open_writes
async def test_a_websocket_viewer_follows_appends_exactly_to_the_close(client):
    created = await put(client, "chat-1")
    assert created.status_code == 201
    stream_id = created["Streaming-Id"]
    ready = asyncio.Event()
    watching = asyncio.create_task(watch(await viewer(stream_id), ready=ready))
    await asyncio.wait_for(ready.wait(), 5)  # it has its (empty) snapshot: all else is live
    for piece in ["Hello ", "wörld", " 🌍"]:
        assert (await post(client, "chat-1", piece.encode())).status_code == 204
    closed = await post(client, "chat-1", b"", **{"Stream-Closed": "true"})
    assert closed.status_code == 204
    seen = await asyncio.wait_for(watching, 10)
    assert (seen["text"], seen["statuses"][-1], seen["code"]) == ("Hello wörld 🌍", "done", 1000)
    # The same rows: the body endpoint, a chunk per append.
    body = (await client.get(f"/api/streams/{stream_id}/")).json()
    assert (body["text"], body["status"], body["length"]) == ("Hello wörld 🌍", "done", 13)
    chunks = [c async for c in Chunk.objects.filter(stream_id=stream_id).order_by("seq")]
    assert [(c.seq, c.offset, c.text) for c in chunks] == [
        (0, 0, "Hello "),
        (1, 6, "wörld"),
        (2, 11, " 🌍"),
    ]


@open_writes
async def test_a_producer_retried_at_once_is_appended_once(client):
    await put(client, "retried")
    headers = {"Producer-Id": "p", "Producer-Epoch": "0", "Producer-Seq": "0"}
    answers = await asyncio.gather(*(post(client, "retried", b"once", **headers) for _ in range(5)))
    assert sorted(a.status_code for a in answers) == [200, 204, 204, 204, 204]
    stream = await stream_of("retried")
    assert stream.length == 4
    assert [c.text async for c in Chunk.objects.filter(stream=stream)] == ["once"]


@open_writes
async def test_bytes_and_json_are_kept_exactly(client):
    every_byte = bytes(range(256)) * 2
    await put(client, "bytes", every_byte, "application/octet-stream")
    read = await client.get("/v1/stream/bytes")
    assert read.content == every_byte
    assert read["Stream-Next-Offset"] == token(512)  # offsets count bytes
    await put(client, "json", b'[{"a": 1}, "two"]', "application/json")
    appended = await post(client, "json", b'{"b": [3, "\\u00e9"]}', "application/json")
    assert appended.status_code == 204, appended.content
    read = await client.get("/v1/stream/json")
    assert json.loads(read.content) == [{"a": 1}, "two", {"b": [3, "é"]}]
    # Over the app's own readers, one message a line.
    stream = await stream_of("json")
    body = (await client.get(f"/api/streams/{stream.pk}/")).json()
    assert body["text"] == '{"a":1}\n"two"\n{"b":[3,"é"]}\n'


@open_writes
async def test_bad_bodies_are_400_and_write_nothing(client):
    await put(client, "text")
    await put(client, "json-bad", content_type="application/json")
    for name, body, content_type, says in [
        ("text", b"\xff\xfe", "text/plain", "not UTF-8"),
        ("text", b"nul\x00", "text/plain", "cannot hold NUL"),
        ("json-bad", b"{nope", "application/json", "not valid JSON"),
        ("json-bad", b"[]", "application/json", "empty JSON array"),
        ("text", b"", "text/plain", "needs a body"),
    ]:
        response = await post(client, name, body, content_type)
        assert response.status_code == 400, (body, response.content)
        assert says in response.json()["error"]
    for name in ("text", "json-bad"):
        assert (await stream_of(name)).length == 0


@override_settings(STREAMING_APP={**OPEN, "MAX_LENGTH": 10, "MAX_APPEND_BYTES": 8})
async def test_the_stream_and_body_limits_are_413(client):
    await put(client, "small")
    assert (await post(client, "small", b"12345678")).status_code == 204
    too_long = await post(client, "small", b"abc")
    assert too_long.status_code == 413
    assert "limit of 10 characters" in too_long.json()["error"]
    assert (await post(client, "small", b"123456789")).status_code == 413
    assert (await stream_of("small")).length == 8


async def test_under_the_default_policies_nobody_writes(client):
    refused = await put(client, "anyone")
    assert refused.status_code == 403
    assert refused.json()["error"] == "you may not create streams over Durable Streams"
    assert not await DurableStream.objects.filter(name="anyone").aexists()


@open_writes
async def test_a_write_with_a_session_cookie_passes_the_csrf_check():
    user = await get_user_model().objects.acreate_user("sam", password="pw")
    browser = AsyncClient(enforce_csrf_checks=True)
    await browser.aforce_login(user)
    forged = await put(browser, "forged")
    assert forged.status_code == 403
    assert "CSRF" in forged.json()["error"]
    assert not await DurableStream.objects.filter(name="forged").aexists()
    # Without cookies (the protocol's clients) there is nothing to forge.
    plain = await put(AsyncClient(enforce_csrf_checks=True), "plain")
    assert plain.status_code == 201


@open_writes
async def test_a_quiet_open_stream_is_never_stale(client):
    await put(client, "quiet", b"waiting")
    stream = await stream_of("quiet")
    long_ago = timezone.now() - timedelta(hours=1)
    await Stream.objects.filter(pk=stream.pk).aupdate(updated_at=long_ago)
    assert await aexpire_stale_streams() == 0
    head = await client.head("/v1/stream/quiet")
    assert head["Streaming-Status"] == "streaming"
    assert "Stream-Closed" not in head


@open_writes
async def test_a_stream_past_its_ttl_is_gone_with_its_rows(client):
    await put(client, "brief", b"soon gone", **{"Stream-TTL": "60"})
    stream = await stream_of("brief")
    await DurableStream.objects.filter(pk=stream.pk).aupdate(
        accessed_at=timezone.now() - timedelta(seconds=61)
    )
    assert (await client.get("/v1/stream/brief")).status_code == 404
    assert not await Stream.objects.filter(pk=stream.pk).aexists()
    assert not await Chunk.objects.filter(stream_id=stream.pk).aexists()


@open_writes
async def test_deleting_closes_its_viewers(client):
    created = await put(client, "doomed", b"text")
    communicator = await viewer(created["Streaming-Id"])
    ready = asyncio.Event()
    watching = asyncio.create_task(watch(communicator, ready=ready))
    await asyncio.wait_for(ready.wait(), 5)  # following it before it is deleted
    assert (await client.delete("/v1/stream/doomed")).status_code == 204
    seen = await asyncio.wait_for(watching, 10)
    assert seen["code"] == 4404
    assert (await client.head("/v1/stream/doomed")).status_code == 404
    assert not await sync_to_async(Stream.objects.filter(pk=created["Streaming-Id"]).exists)()


@open_writes
async def test_a_name_too_long_is_400(client):
    response = await put(client, "n" * 256)
    assert response.status_code == 400
    assert "at most 255" in response.json()["error"]


@open_writes
async def test_a_closed_stream_refuses_appends_and_keeps_its_text(client):
    await put(client, "final", b"the end", **{"Stream-Closed": "true"})
    refused = await post(client, "final", b"more")
    assert refused.status_code == 409
    assert refused["Stream-Closed"] == "true"
    assert (await stream_of("final")).status == Status.DONE
    assert (await client.get("/v1/stream/final")).content == b"the end"


@open_writes
async def test_a_fork_of_an_app_stream_regenerates_from_a_point(client):
    # An edited prompt regenerating from a point of a conversation: the app's reply,
    # forked where the edit begins, goes on over the protocol; the original stays.
    original = await sync_to_async(written)(
        ["Paris is ", "the capital", " of France."], status="done"
    )
    half = await client.get(f"/v1/stream/{original.pk}", {"offset": "-1"})
    at = token(len("Paris is "))
    fork = await put(
        client,
        "edited",
        **{"Stream-Forked-From": f"/v1/stream/{original.pk}", "Stream-Fork-Offset": at},
    )
    assert fork.status_code == 201, fork.content
    assert fork["Stream-Next-Offset"] == at  # the same offsets as its source
    assert (await post(client, "edited", b"a city on the Seine.")).status_code == 204
    assert (await client.get("/v1/stream/edited")).content == b"Paris is a city on the Seine."
    # The fork is open though its source is done; the source is unchanged.
    assert (await client.head("/v1/stream/edited"))["Streaming-Status"] == "streaming"
    assert (await client.get(f"/v1/stream/{original.pk}")).content == half.content


@open_writes
async def test_a_source_deleted_under_its_forks_is_gone_until_the_last_goes(client):
    await put(client, "source", b"shared ")
    await put(client, "fork", **{"Stream-Forked-From": "/v1/stream/source"})
    assert (await client.delete("/v1/stream/source")).status_code == 204
    for method in (client.get, client.head, client.delete):
        assert (await method("/v1/stream/source")).status_code == 410
    assert (await put(client, "source")).status_code == 409  # its name is kept
    assert (await client.get("/v1/stream/fork")).content == b"shared "
    assert (await client.delete("/v1/stream/fork")).status_code == 204
    # The last fork gone, the source goes with it, rows and all.
    assert not await DurableStream.objects.filter(name__in=["source", "fork"]).aexists()
    assert (await client.get("/v1/stream/source")).status_code == 404


@open_writes
async def test_values_the_database_cannot_hold_are_400_not_500(client):
    await put(client, "sane", content_type="application/json")
    producer = {"Producer-Id": "p" * 256, "Producer-Epoch": "0", "Producer-Seq": "0"}
    for response in [
        await client.get("/v1/stream/bad%00name"),
        await post(client, "sane", b"[1]", "application/json", **{"Stream-Seq": "s" * 256}),
        await post(client, "sane", b"[1]", "application/json", **producer),
        await post(client, "sane", b"[" * 100_000 + b"]" * 100_000, "application/json"),
        await put(client, "ttl", **{"Stream-TTL": "9999999999"}),
        await put(client, "forked", **{"Stream-Forked-From": "/v1/stream/sane\x00"}),
        await put(client, "typed", b"x", "text/" + "x" * 300),
    ]:
        assert response.status_code == 400, response.content
    assert (await stream_of("sane")).length == 0
    assert not await DurableStream.objects.filter(name__in=["ttl", "forked", "typed"]).aexists()


@override_settings(STREAMING_APP={**OPEN, "MAX_LIVE_STREAMS_PER_USER": 2})
async def test_a_users_open_streams_count_against_their_live_streams():
    user = await get_user_model().objects.acreate_user("lou", password="pw")
    lou = AsyncClient()
    await lou.aforce_login(user)
    await lou.get("/")  # a CSRF cookie, as a page gives
    token_header = {"X-CSRFToken": lou.cookies["csrftoken"].value}
    assert (await put(lou, "one", **token_header)).status_code == 201
    assert (await put(lou, "two", **token_header)).status_code == 201
    refused = await put(lou, "three", **token_header)
    assert refused.status_code == 429
    assert refused["Retry-After"]
    assert "limit of 2 live streams" in refused.json()["error"]
    # A closed one is not live; closing one frees a place.
    assert (
        await put(lou, "done", b"x", **token_header, **{"Stream-Closed": "true"})
    ).status_code == 201
    assert (
        await post(lou, "one", b"", **token_header, **{"Stream-Closed": "true"})
    ).status_code == 204
    assert (await put(lou, "three", **token_header)).status_code == 201
    assert await DurableStream.objects.filter(stream__owner=user).acount() == 4


@open_writes
async def test_the_apps_sse_and_template_tag_read_what_was_appended(client):
    created = await put(client, "shown", b"<b>Appended</b> ")
    await post(client, "shown", "over the protocol é".encode(), **{"Stream-Closed": "true"})
    stream_id = created["Streaming-Id"]
    events = await client.get(f"/api/streams/{stream_id}/events/")
    body = b"".join([part async for part in events.streaming_content]).decode()
    texts = [
        json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")
    ]
    assert "".join(m["text"] for m in texts if m["type"] == "text") == (
        "<b>Appended</b> over the protocol é"
    )
    assert texts[-1] == {"type": "status", "status": "done", "error": None}
    stream = await Stream.objects.aget(pk=stream_id)
    html = await sync_to_async(render_tag)(stream)
    assert "&lt;b&gt;Appended&lt;/b&gt; over the protocol é</div>" in html
    assert 'status="done"' in html


@open_writes
async def test_its_owner_cancels_an_open_stream_at_once():
    user = await get_user_model().objects.acreate_user("cat", password="pw")
    cat = AsyncClient()
    await cat.aforce_login(user)
    await cat.get("/")
    csrf = {"X-CSRFToken": cat.cookies["csrftoken"].value}
    created = await put(cat, "stoppable", b"so far", **csrf)
    # No run writes it: the cancel ends it, it does not wait for a writer that is not.
    cancelled = await cat.post(f"/api/streams/{created['Streaming-Id']}/cancel/", headers=csrf)
    assert cancelled.json()["status"] == "cancelled"
    refused = await post(cat, "stoppable", b" more", **csrf)
    assert (refused.status_code, refused["Stream-Closed"]) == (409, "true")
    head = await cat.head("/v1/stream/stoppable")
    assert (head["Stream-Closed"], head["Streaming-Status"]) == ("true", "cancelled")


@override_settings(STREAMING_APP={**OPEN, "LONG_POLL_TIMEOUT": 0.2})
async def test_an_empty_json_long_poll_is_a_204_without_a_body(client):
    await put(client, "quiet-json", b"[1]", "application/json")
    stream = await stream_of("quiet-json")
    response = await client.get(
        "/v1/stream/quiet-json", {"offset": token(stream.length), "live": "long-poll"}
    )
    assert (response.status_code, response.content) == (204, b"")


def writes_open_reads_owned(user, stream, action):
    """Anyone writes over the protocol; a stream with an owner is read by its owner."""
    if action in DURABLE_WRITES:
        return True
    return stream.owner_id is None or is_owner(user, stream)


@override_settings(
    STREAMING_APP={**OPEN, "PERMISSION_POLICY": "tests.test_durable_writes.writes_open_reads_owned"}
)
async def test_a_fork_copies_only_what_its_maker_may_read(client):
    owner = await get_user_model().objects.acreate_user("vic", password="pw")
    private = await sync_to_async(written)(["secret"], status="done", owner=owner)
    fork = await put(client, "stolen", **{"Stream-Forked-From": f"/v1/stream/{private.pk}"})
    assert fork.status_code == 403
    assert not await DurableStream.objects.filter(name="stolen").aexists()


@open_writes
async def test_json_and_times_that_would_break_later_are_refused_now(client):
    await put(client, "j", content_type="application/json")
    for body in (b'["\\ud800"]', b"[NaN]", b"Infinity"):
        assert (await post(client, "j", body, "application/json")).status_code == 400, body
    far = await put(client, "far", **{"Stream-Expires-At": "9999-12-31T23:59:59-01:00"})
    assert far.status_code == 400
    # A message holding U+2028 (a line end to str.splitlines) reads back whole.
    assert (
        await post(client, "j", '["a\u2028b", "c"]'.encode(), "application/json")
    ).status_code == 204
    assert json.loads((await client.get("/v1/stream/j")).content) == ["a\u2028b", "c"]
    huge = await client.get(
        "/v1/stream/j", {"offset": "-1", "live": "long-poll", "cursor": "9" * 5000}
    )
    assert huge.status_code == 200 and huge["Stream-Cursor"].isdigit()


@open_writes
async def test_a_fork_keeps_its_sources_charset_and_a_created_stream_has_one_url(client):
    await put(client, "latin", "é".encode("latin-1"), "text/plain; charset=iso-8859-1")
    fork = await put(
        client,
        "latin fork",
        b"",
        "text/plain; charset=utf-8",
        **{"Stream-Forked-From": "/v1/stream/latin"},
    )
    assert fork.status_code == 201, fork.content
    read = await client.get("/v1/stream/latin fork")
    assert (read.content, read["Content-Type"]) == (
        "é".encode("latin-1"),
        "text/plain; charset=iso-8859-1",
    )
    # Percent-encoded, as a client's URL spells it.
    encoded = await put(client, "again", **{"Stream-Forked-From": "/v1/stream/latin%20fork"})
    assert encoded.status_code == 201, encoded.content
    # Created over the protocol, a stream is at its name only, not also at its id.
    assert (await client.get(f"/v1/stream/{fork['Streaming-Id']}")).status_code == 404


@open_writes
async def test_creations_of_one_name_at_once_make_one_stream(client):
    answers = await asyncio.gather(*(put(client, "once", b"first") for _ in range(5)))
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 200, 201]
    assert await DurableStream.objects.filter(name="once").acount() == 1
    assert (await client.get("/v1/stream/once")).content == b"first"
