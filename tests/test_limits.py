"""Load is refused, never failed (design.md, invariant 10): the process's and the
user's limits of live streams, and the limits of one run."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import override_settings

from streaming_app import astream_response
from streaming_app.drive.flush import FlushPolicy
from streaming_app.drive.run import live_runs
from streaming_app.models import Status
from streaming_app.streams import aget_stream_body, create_stream

from .helpers import drive_request, owned_stream, paced, run_to_end, wait_finished
from .test_lifecycle import Fed

pytestmark = pytest.mark.django_db(transaction=True)

QUICK = FlushPolicy(min_interval=0.0, max_interval=0.02, max_chars=4096)


async def read(response: Any) -> str:
    return b"".join([part async for part in response]).decode()


@override_settings(STREAMING_APP={"MAX_LIVE_STREAMS": 1, "RETRY_AFTER": 7})
async def test_over_the_process_limit_a_drive_gets_503_and_the_stream_stays_pending():
    (first, owner), (second, other) = await owned_stream(), await owned_stream()
    source = Fed()
    source.feed("Working. ")  # the answer starts with the first piece
    live = await astream_response(drive_request(owner), first.pk, source, policy=QUICK)
    assert live.status_code == 200
    refused = await astream_response(drive_request(other), second.pk, paced(["x"]), policy=QUICK)
    assert (refused.status_code, refused["Retry-After"]) == (503, "7")
    assert "limit of 1 streams" in json.loads(refused.content)["error"]  # type: ignore[attr-defined]
    assert (await aget_stream_body(second.pk)).status == Status.PENDING
    source.feed("done.")
    source.end()
    await asyncio.wait_for(read(live), 10)
    await asyncio.wait_for(asyncio.gather(*(run.task for run in live_runs())), 10)
    assert (await wait_finished(first.pk)).status == Status.DONE
    again = await astream_response(drive_request(other), second.pk, paced(["x"]), policy=QUICK)
    assert again.status_code == 200 and await read(again) == "x"


@override_settings(STREAMING_APP={"MAX_LIVE_STREAMS_PER_USER": 1, "RETRY_AFTER": 3})
async def test_over_the_users_limit_a_drive_gets_429_and_others_are_not_held_up():
    users = get_user_model().objects
    alice, bob = await users.acreate(username="alice"), await users.acreate(username="bob")
    streams = [await sync_to_async(create_stream)(owner=u) for u in (alice, alice, bob)]
    source = Fed()
    source.feed("Working. ")
    live = await astream_response(drive_request(alice), streams[0].pk, source, policy=QUICK)
    assert live.status_code == 200
    refused = await astream_response(drive_request(alice), streams[1].pk, paced(["x"]))
    assert (refused.status_code, refused["Retry-After"]) == (429, "3")
    assert (await aget_stream_body(streams[1].pk)).status == Status.PENDING
    other = await astream_response(drive_request(bob), streams[2].pk, paced(["y"]), policy=QUICK)
    assert other.status_code == 200 and await read(other) == "y"
    source.end()
    await read(live)


@override_settings(STREAMING_APP={"MAX_DURATION": 0.2})
async def test_a_run_that_goes_on_too_long_ends_in_error_with_its_text():
    produced: list[str] = []

    async def endless():
        while True:
            produced.append(f"{len(produced)} ")
            yield produced[-1]
            await asyncio.sleep(0.01)

    stream_id, status = await asyncio.wait_for(run_to_end(endless(), policy=QUICK), 10)
    body = await aget_stream_body(stream_id)
    assert (status, body.error) == (Status.ERROR, "the reply went on for more than 0.2 seconds")
    assert body.text == "".join(produced)


@override_settings(STREAMING_APP={"MAX_LENGTH": 20})
async def test_a_run_that_reaches_max_length_keeps_exactly_that_much():
    tapped: list[str] = []
    stream_id, status = await run_to_end(paced(["1234567"] * 10), policy=QUICK, tap=tapped.append)
    body = await aget_stream_body(stream_id)
    assert (status, body.error) == (Status.ERROR, "the reply reached its limit of 20 characters")
    assert body.text == "".join(tapped) == ("1234567" * 3)[:20]


async def test_an_unknown_stream_is_404_before_any_limit():
    response = await astream_response(drive_request(), uuid.uuid4(), paced(["x"]))
    assert response.status_code == 404


def test_simultaneous_claims_of_one_owner_do_not_slip_past_the_limit():
    """Ten claims at once of one owner's ten streams, with a limit of three: exactly
    three win (each claim counts the others under a lock of the owner's row)."""
    import threading

    from django.db import connection

    from streaming_app.exceptions import Overloaded
    from streaming_app.streams import claim_stream

    owner = get_user_model().objects.create(username="eager")
    streams = [create_stream(owner=owner) for _ in range(10)]
    outcomes: list[str] = []
    start = threading.Barrier(10)

    def claim(stream_id) -> None:
        try:
            start.wait()
            claim_stream(stream_id, max_live_per_owner=3)
            outcomes.append("claimed")
        except Overloaded as exc:
            assert exc.status_code == 429
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(s.pk,)) for s in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["claimed"] * 3 + ["refused"] * 7
