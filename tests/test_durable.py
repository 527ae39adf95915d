"""The Durable Streams read path over the app's streams, in process: every answer's
status and headers as PROTOCOL.md says (docs/protocol.md#durable-streams)."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import unquote

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import AsyncClient, override_settings

from streaming_app.durable.offsets import cursor, parse_start, token
from streaming_app.exceptions import InvalidOffset
from streaming_app.fanout.hub import hub
from streaming_app.fanout.outbox import published_after
from streaming_app.models import Status, Stream
from streaming_app.streams import acancel_stream, expire_stream

from .helpers import written
from .test_hub import until

pytestmark = pytest.mark.django_db(transaction=True)

TEXT = ["héllo ", "wörld 🌍\n", " and on"]
WHOLE = "".join(TEXT)


def url(stream) -> str:
    return f"/v1/stream/{stream.pk}"


@pytest.fixture
def client() -> AsyncClient:
    return AsyncClient()


async def finished(status: str = Status.DONE, pieces: list[str] = TEXT, owner=None):
    return await sync_to_async(written)(pieces, status=status, owner=owner)


async def cancel(stream) -> None:
    """Cancel a stream that no run writes (its writer gone): it ends ``cancelled`` at
    once, and the hub hears of it."""
    await acancel_stream(stream.pk)
    assert await published_after(expire_stream)(stream.pk, 0) == Status.CANCELLED


def sse_value(line: str) -> str:
    """A ``data:`` line's value, as an SSE client reads it."""
    assert line.startswith("data:"), line
    value = line[len("data:") :]
    return value[1:] if value.startswith(" ") else value


def assert_protocol_headers(response) -> None:
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "Stream-Next-Offset" in response["Access-Control-Expose-Headers"]


async def test_head_says_the_tail_the_type_and_the_closure(client):
    stream = await finished()
    response = await client.head(url(stream))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    # Offsets count code points (invariant 2), as opaque tokens that sort as they count.
    assert response["Stream-Next-Offset"] == token(len(WHOLE))
    assert response["Stream-Closed"] == "true"
    assert response["Cache-Control"] == "no-store"
    assert response["Streaming-Status"] == "done"
    assert_protocol_headers(response)


async def test_a_live_stream_is_open(client):
    stream = await finished(Status.STREAMING)
    response = await client.head(url(stream))
    assert response.status_code == 200
    assert "Stream-Closed" not in response
    assert response["Streaming-Status"] == "streaming"


@pytest.mark.parametrize("name", ["not-a-uuid", "00000000-0000-0000-0000-000000000000"])
async def test_an_unknown_stream_is_404(client, name):
    for method in (client.head, client.get):
        response = await method(f"/v1/stream/{name}")
        assert response.status_code == 404
        assert_protocol_headers(response)


async def test_a_catch_up_read_from_the_beginning_is_the_body_in_utf8(client):
    stream = await finished()
    for query in ("", "?offset=-1"):
        response = await client.get(url(stream) + query)
        assert response.status_code == 200
        assert response.content == WHOLE.encode()
        assert response["Content-Type"] == "text/plain; charset=utf-8"
        assert response["Stream-Next-Offset"] == token(len(WHOLE))
        assert response["Stream-Up-To-Date"] == "true"
        assert response["Stream-Closed"] == "true"
        # Anyone may read a stream without owner: a shared cache may keep it.
        assert response["Cache-Control"] == "public, max-age=60, stale-while-revalidate=300"
        assert response["ETag"].endswith(':c"')
        assert_protocol_headers(response)


async def test_a_read_resumes_exactly_from_a_next_offset(client):
    stream = await finished()
    first = len(TEXT[0])
    response = await client.get(url(stream), {"offset": token(first)})
    assert response.status_code == 200
    assert response.content.decode() == WHOLE[first:]
    assert response["Stream-Next-Offset"] == token(len(WHOLE))
    # At the tail of a closed stream: the empty answer that says EOF.
    response = await client.get(url(stream), {"offset": response["Stream-Next-Offset"]})
    assert response.status_code == 200
    assert response.content == b""
    assert response["Stream-Closed"] == "true"
    assert response["Stream-Up-To-Date"] == "true"


async def test_a_repeated_read_with_its_etag_is_304(client):
    stream = await finished()
    response = await client.get(url(stream), {"offset": "-1"})
    again = await client.get(
        url(stream), {"offset": "-1"}, headers={"If-None-Match": response["ETag"]}
    )
    assert again.status_code == 304
    assert again.content == b""
    assert again["ETag"] == response["ETag"]
    other = await client.get(url(stream), {"offset": "-1"}, headers={"If-None-Match": '"other"'})
    assert other.status_code == 200


async def test_the_etag_changes_when_a_stream_closes_without_new_text(client):
    stream = await finished(Status.STREAMING)
    live = await client.get(url(stream), {"offset": "-1"})
    assert "Stream-Closed" not in live
    await cancel(stream)
    closed = await client.get(
        url(stream), {"offset": "-1"}, headers={"If-None-Match": live["ETag"]}
    )
    assert closed.status_code == 200
    assert closed["ETag"] != live["ETag"]
    assert closed["Stream-Closed"] == "true"
    assert closed["Streaming-Status"] == "cancelled"


async def test_offset_now_is_the_tail_and_never_cached(client):
    stream = await finished(Status.STREAMING)
    response = await client.get(url(stream), {"offset": "now"})
    assert response.status_code == 200
    assert response.content == b""
    assert response["Stream-Next-Offset"] == token(len(WHOLE))
    assert response["Stream-Up-To-Date"] == "true"
    assert response["Cache-Control"] == "no-store"
    assert "ETag" not in response
    assert "Stream-Closed" not in response


async def test_an_empty_read_at_the_tail_of_a_live_stream_is_not_cached(client):
    stream = await finished(Status.STREAMING)
    response = await client.get(url(stream), {"offset": token(len(WHOLE))})
    assert response.status_code == 200
    assert response.content == b""
    assert response["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "query, says",
    [
        ("offset=", "offset must be"),
        ("offset=-1&offset=-1", "more than once"),
        ("offset=abc", "offset must be"),
        ("offset=12_34", "offset must be"),
        (f"offset=1{token(0)[1:]}", "offset must be"),
        ("offset=-1&live=forever", "live must be"),
        ("live=long-poll", "needs an offset"),
        ("live=sse", "needs an offset"),
        (f"offset={token(10_000)}", "before the requested offset"),
    ],
)
async def test_a_bad_read_is_400_with_what_was_wrong(client, query, says):
    stream = await finished()
    response = await client.get(f"{url(stream)}?{query}")
    assert response.status_code == 400
    assert says in response.json()["error"]
    assert_protocol_headers(response)


async def test_a_long_poll_at_the_tail_of_a_closed_stream_is_204_closed_at_once(client):
    stream = await finished()
    response = await client.get(url(stream), {"offset": token(len(WHOLE)), "live": "long-poll"})
    assert response.status_code == 204
    assert response["Stream-Closed"] == "true"
    assert response["Stream-Up-To-Date"] == "true"
    assert response["Stream-Next-Offset"] == token(len(WHOLE))
    # The close is for ever: a cache may keep it (a 204 that timed out it may not).
    assert response["Cache-Control"] == "public, max-age=60, stale-while-revalidate=300"


async def test_a_long_poll_behind_the_tail_answers_at_once_with_a_cursor(client):
    stream = await finished(Status.STREAMING)
    response = await client.get(url(stream), {"offset": "-1", "live": "long-poll"})
    assert response.status_code == 200
    assert response.content.decode() == WHOLE
    assert response["Stream-Cursor"].isdigit()


@override_settings(STREAMING_APP={**settings.STREAMING_APP, "LONG_POLL_TIMEOUT": 0.2})
async def test_a_long_poll_that_hears_nothing_is_204_with_the_tail_and_a_cursor(client):
    stream = await finished(Status.STREAMING)
    response = await client.get(url(stream), {"offset": "now", "live": "long-poll"})
    assert response.status_code == 204
    assert response["Stream-Next-Offset"] == token(len(WHOLE))
    assert response["Stream-Up-To-Date"] == "true"
    assert response["Stream-Cursor"].isdigit()
    assert response["Cache-Control"] == "no-store"
    assert "Stream-Closed" not in response


async def test_a_long_poll_at_the_tail_wakes_with_the_end(client):
    stream = await finished(Status.STREAMING)
    poll = asyncio.ensure_future(
        client.get(url(stream), {"offset": token(len(WHOLE)), "live": "long-poll"})
    )
    # It waits, a viewer of the hub, before the stream ends.
    await until(lambda: bool(stream.pk in hub().feeds and hub().feeds[stream.pk].viewers))
    assert not poll.done()
    await cancel(stream)
    response = await asyncio.wait_for(poll, 10)
    assert response.status_code == 204
    assert response["Stream-Closed"] == "true"
    assert response["Streaming-Status"] == "cancelled"


async def test_sse_follows_to_the_close_with_the_status(client):
    stream = await finished(Status.ERROR)
    response = await client.get(url(stream), {"offset": token(2), "live": "sse"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    body = b"".join([chunk async for chunk in response.streaming_content]).decode()
    events = [event for event in body.split("\n\n") if event and not event.startswith(":")]
    kinds = [event.split("\n")[0] for event in events]
    assert kinds == ["event: data", "event: control"]
    # As a client reads them: after "data:", one space dropped if there is one.
    data = "\n".join(sse_value(line) for line in events[0].split("\n")[1:])
    assert data == WHOLE[2:]
    fields = json.loads(sse_value(events[1].split("\n")[1]))
    assert fields["streamNextOffset"] == token(len(WHOLE))
    assert fields["streamClosed"] is True
    assert fields["streamingStatus"] == "error"
    assert "streamCursor" not in fields


async def test_an_error_is_said_in_a_header_percent_encoded(client):
    stream = await finished(Status.STREAMING)
    await Stream.objects.filter(pk=stream.pk).aupdate(status=Status.ERROR, error="ça a échoué")
    response = await client.head(url(stream))
    assert response["Streaming-Status"] == "error"
    assert unquote(response["Streaming-Error"]) == "ça a échoué"


@override_settings(
    STREAMING_APP={
        **settings.STREAMING_APP,
        "PERMISSION_POLICY": "streaming_app.permissions.owner_policy",
    }
)
async def test_an_owned_stream_is_its_owners_and_kept_private(client):
    owner = await get_user_model().objects.acreate_user("olga", password="pw")
    stream = await finished(owner=owner)
    refused = await client.get(url(stream))
    assert refused.status_code == 403
    await client.aforce_login(owner)
    response = await client.get(url(stream))
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("private, ")


async def test_the_apps_own_streams_are_not_written_over_the_protocol(client):
    stream = await finished(Status.STREAMING)
    for method in (client.post, client.delete):
        response = await method(url(stream), b"more", content_type="text/plain")
        assert response.status_code == 405, response.content
        assert response["Allow"] == "GET, HEAD, OPTIONS"
        assert_protocol_headers(response)
    # Under the example's policy nobody creates a stream over the protocol.
    response = await client.put("/v1/stream/mine", b"", content_type="text/plain")
    assert response.status_code == 403
    assert (await client.get(url(stream))).content == WHOLE.encode()  # unchanged


async def test_a_cors_preflight_is_answered(client):
    stream = await finished()
    preflight = await client.options(url(stream))
    assert preflight.status_code == 204
    assert "POST" in preflight["Access-Control-Allow-Methods"]
    assert "Producer-Id" in preflight["Access-Control-Allow-Headers"]
    assert_protocol_headers(preflight)


def test_offsets_sort_as_they_count_and_only_ours_parse():
    tokens = [token(n) for n in (0, 9, 10, 99, 1_000_000)]
    assert tokens == sorted(tokens)
    assert parse_start([token(42)]).offset == 42
    assert parse_start([]).offset == 0
    assert parse_start(["now"]).at_tail
    for bad in ("", "now ", "-2", "1_1", token(1) + "0"):
        with pytest.raises(InvalidOffset):
            parse_start([bad])


def test_a_cursor_never_goes_back():
    now = 1_800_000_000.0
    current = cursor(None, now=now)
    assert int(cursor(str(int(current) - 5), now=now)) == int(current)
    for _ in range(50):
        assert int(cursor(current, now=now)) > int(current)
