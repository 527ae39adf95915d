"""Admission (docs/deployment.md#limits-and-quotas): the drive rates per user and per
address and the daily token quotas, counted on the Django cache, in one process. The
same across real server processes sharing Redis, and the example's guests, chats and
messages: tests/test_admission_servers.py."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from types import SimpleNamespace
from typing import Any

import openai
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.cache.backends.locmem import LocMemCache
from django.test import AsyncRequestFactory, RequestFactory, override_settings

import streaming_app
from streaming_app import admission, astream_response, rates
from streaming_app.aisdk.responses import aui_message_stream_response
from streaming_app.drive.flush import FlushPolicy
from streaming_app.drive.run import live_runs
from streaming_app.exceptions import Overloaded
from streaming_app.models import Status
from streaming_app.parts import Finish
from streaming_app.sources.openai import chat_completion_parts
from streaming_app.streams import acreate_stream, aget_stream_body

from .helpers import as_user, owned_stream, paced, wait_finished
from .servers import FakeOpenAI

pytestmark = pytest.mark.django_db(transaction=True)

QUICK = FlushPolicy(min_interval=0.0, max_interval=0.02, max_chars=4096)
OFF = {
    "DRIVE_RATES_PER_USER": None,
    "DRIVE_RATES_PER_ADDRESS": None,
    "DAILY_TOKENS_PER_USER": None,
    "DAILY_TOKENS_PER_ADDRESS": None,
}


def limits_on(cache: str = "django.core.cache.backends.locmem.LocMemCache", **streaming: Any):
    """These limits (the others off), counted in a cache of the test's own."""
    return override_settings(
        STREAMING_APP={**OFF, **streaming},
        CACHES={"default": {"BACKEND": cache, "LOCATION": uuid.uuid4().hex}},
    )


def request_from(user: Any, address: str = "127.0.0.1", **headers: str) -> Any:
    request = AsyncRequestFactory().post("/drive/", headers=headers)
    request.META["REMOTE_ADDR"] = address  # the ASGI scope's client, as a server sets it
    return as_user(request, user)


async def drive(user: Any, stream_id: Any, address: str = "127.0.0.1", **headers: str) -> Any:
    """A drive of ``stream_id`` by ``user`` from ``address``, read to its end."""
    source = paced(["Hello, ", "world."])
    response = await astream_response(
        request_from(user, address, **headers), stream_id, source, policy=QUICK
    )
    if response.status_code == 200:
        b"".join([part async for part in response])  # type: ignore[attr-defined]
        await asyncio.wait_for(asyncio.gather(*(run.task for run in live_runs())), 10)
    return response


async def new_stream(user: Any) -> Any:
    return (await acreate_stream(owner=user)).pk


def error_of(response: Any) -> str:
    return str(json.loads(response.content)["error"])


@limits_on(DRIVE_RATES_PER_USER=["2/m", "100/h"])
async def test_past_a_users_rate_a_drive_gets_429_with_retry_after_and_the_stream_stays_pending():
    first, alice = await owned_stream()
    assert (await drive(alice, first.pk)).status_code == 200
    assert (await drive(alice, await new_stream(alice))).status_code == 200
    third = await new_stream(alice)
    refused = await drive(alice, third)
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert error_of(refused) == (
        f"too many drives per user: the limit is 2 per minute; "
        f"try again in {refused['Retry-After']} seconds"
    )
    assert (await aget_stream_body(third)).status == Status.PENDING
    # Another user is not held up by alice's rate.
    _, bob = await owned_stream()
    assert (await drive(bob, await new_stream(bob))).status_code == 200


@limits_on(DRIVE_RATES_PER_USER=["1/2s"])
async def test_the_refused_stream_is_driven_once_its_window_frees():
    first, alice = await owned_stream()
    assert (await drive(alice, first.pk)).status_code == 200
    second = await new_stream(alice)
    refused = await drive(alice, second)
    assert refused.status_code == 429
    await asyncio.sleep(int(refused["Retry-After"]))  # what the visitor was told
    again = await drive(alice, second)
    assert again.status_code == 200
    assert (await wait_finished(second)).status == Status.DONE


@limits_on(DRIVE_RATES_PER_USER=["1/m"])
async def test_refused_drives_cost_nothing():
    _, alice = await owned_stream()
    theirs, _ = await owned_stream()
    assert (await drive(alice, theirs.pk)).status_code == 403
    assert (await drive(alice, uuid.uuid4())).status_code == 404
    done = await new_stream(alice)
    await sync_to_async(_finish)(done)
    assert (await drive(alice, done)).status_code == 409
    # None of them counted: her one drive a minute is still hers...
    assert (await drive(alice, await new_stream(alice))).status_code == 200
    # ...and it did count.
    assert (await drive(alice, await new_stream(alice))).status_code == 429


def _finish(stream_id: Any) -> None:
    from streaming_app.models import Stream

    Stream.objects.filter(pk=stream_id).update(status=Status.DONE)


@limits_on(DRIVE_RATES_PER_USER=["1/m"], MAX_LIVE_STREAMS=0)
async def test_a_drive_refused_for_the_process_limit_costs_nothing():
    stream, alice = await owned_stream()
    assert (await drive(alice, stream.pk)).status_code == 503
    with override_settings(STREAMING_APP={**OFF, "DRIVE_RATES_PER_USER": ["1/m"]}):
        assert (await drive(alice, stream.pk)).status_code == 200
        assert (await drive(alice, await new_stream(alice))).status_code == 429


@limits_on(DRIVE_RATES_PER_USER=["3/m"], MAX_LIVE_STREAMS_PER_USER=None)
async def test_simultaneous_drives_cannot_all_slip_under_a_rate():
    _, alice = await owned_stream()
    streams = [await new_stream(alice) for _ in range(12)]
    responses = await asyncio.gather(*(drive(alice, pk) for pk in streams))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 3 + [429] * 9
    # Refused, they stay pending, and the window stays full.
    pending = [pk for pk, r in zip(streams, responses, strict=True) if r.status_code == 429]
    assert (await drive(alice, pending[0])).status_code == 429
    assert all([(await aget_stream_body(pk)).status == Status.PENDING for pk in pending])


@limits_on(DRIVE_RATES_PER_ADDRESS=["2/m"])
async def test_the_address_rate_counts_every_user_of_one_address():
    _, alice = await owned_stream()
    _, bob = await owned_stream()
    assert (await drive(alice, await new_stream(alice), "10.0.0.1")).status_code == 200
    assert (await drive(bob, await new_stream(bob), "10.0.0.1")).status_code == 200
    refused = await drive(bob, await new_stream(bob), "10.0.0.1")
    assert refused.status_code == 429
    assert "too many drives from this address: the limit is 2 per minute" in error_of(refused)
    # Another address is not held up.
    assert (await drive(bob, await new_stream(bob), "10.0.0.2")).status_code == 200


@limits_on(DRIVE_RATES_PER_ADDRESS=["1/m"], PROXY_ADDRESS_FACTOR=3)
async def test_an_untrusted_proxys_address_gets_the_address_rate_times_the_factor():
    users = [(await owned_stream())[1] for _ in range(4)]
    through = {"X-Forwarded-For": "198.51.100.7"}  # not applied by the server
    codes = [
        (await drive(u, await new_stream(u), "10.0.0.9", **through)).status_code for u in users
    ]
    assert codes == [200, 200, 200, 429]
    # With a factor, the proxy's rate is another count (another amount) than the
    # address's own: without the headers the address has its own 1/m.
    assert (await drive(users[0], await new_stream(users[0]), "10.0.0.9")).status_code == 200


@limits_on(DRIVE_RATES_PER_ADDRESS=["2/m"])
async def test_a_client_gains_nothing_by_inventing_a_forwarding_header():
    users = [(await owned_stream())[1] for _ in range(3)]
    made_up = [{"X-Forwarded-For": f"203.0.113.{i}"} for i in range(3)]
    codes = [
        (await drive(u, await new_stream(u), "10.0.0.8", **h)).status_code
        for u, h in zip(users[:2], made_up, strict=False)
    ]
    assert codes == [200, 200]
    # Another made-up address, or none: the same address's count, past its rate.
    assert (
        await drive(users[2], await new_stream(users[2]), "10.0.0.8", **made_up[2])
    ).status_code == 429
    assert (await drive(users[2], await new_stream(users[2]), "10.0.0.8")).status_code == 429


@limits_on(DRIVE_RATES_PER_ADDRESS=["2/m"])
async def test_an_ipv6_client_is_counted_by_its_64_network():
    users = [(await owned_stream())[1] for _ in range(4)]
    addresses = ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:2::2", "2001:db8:1:3::1"]
    codes = [
        (await drive(u, await new_stream(u), a)).status_code
        for u, a in zip(users, addresses, strict=True)
    ]
    assert codes == [200, 200, 429, 200]  # the third is the same /64; the fourth is not


@limits_on(DRIVE_RATES_PER_USER=["1/m"])
async def test_the_ai_sdk_drive_is_admitted_the_same_way():
    stream, alice = await owned_stream()
    first = await aui_message_stream_response(request_from(alice), stream.pk, paced(["a"]))
    assert first.status_code == 200
    b"".join([part async for part in first])  # type: ignore[attr-defined]
    refused = await aui_message_stream_response(
        request_from(alice), await new_stream(alice), paced(["b"])
    )
    assert refused.status_code == 429 and "Retry-After" in refused
    assert "too many drives per user" in error_of(refused)


# Token quotas ---------------------------------------------------------------------------


def tokens_used(user: Any) -> int:
    """What the user's daily quota has counted, read from the cache."""
    quota = admission.drive_ticket(user, None).quotas[0]
    return rates.CacheStorage("default").get(quota.item.key_for(*quota.key))


async def until_used(user: Any, tokens: int) -> None:
    """Wait for the charge of the runs that ended (it is not waited for by the drive)."""
    for _ in range(500):
        if await sync_to_async(tokens_used)(user) >= tokens:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{tokens} tokens never counted: {await sync_to_async(tokens_used)(user)}")


async def drive_source(user: Any, source: Any) -> Any:
    response = await astream_response(request_from(user), await new_stream(user), source)
    if response.status_code == 200:
        b"".join([part async for part in response])  # type: ignore[attr-defined]
        await asyncio.wait_for(asyncio.gather(*(run.task for run in live_runs())), 10)
    return response


@limits_on(DAILY_TOKENS_PER_USER=100)
async def test_the_daily_token_quota_counts_the_usage_the_model_reports():
    model = FakeOpenAI(["Hi ", "there."], usage={"prompt_tokens": 40, "completion_tokens": 20})
    client = openai.AsyncOpenAI(base_url=model.base_url, api_key="test", max_retries=0)
    try:
        _, alice = await owned_stream()

        def source() -> Any:
            return chat_completion_parts(
                client, model="m", messages=[{"role": "user", "content": "x"}]
            )

        assert (await drive_source(alice, source())).status_code == 200
        await until_used(alice, 60)
        assert await sync_to_async(tokens_used)(alice) == 60  # the reported 40 + 20
        assert (await drive_source(alice, source())).status_code == 200  # 60 < 100
        await until_used(alice, 120)
        refused = await drive_source(alice, source())
        assert refused.status_code == 429
        assert "too many tokens per user today: the limit is 100 per day" in error_of(refused)
        assert 1 <= int(refused["Retry-After"]) <= 86_400
        assert len(model.requests) == 2  # the refused drive called no model
    finally:
        await client.close()
        model.close()


@limits_on(DAILY_TOKENS_PER_USER=104, DAILY_TOKENS_PER_ADDRESS=1000)
async def test_without_reported_usage_the_quota_counts_characters_over_four():
    _, alice = await owned_stream()
    assert (await drive_source(alice, paced(["x" * 399]))).status_code == 200  # 100 tokens
    await until_used(alice, 100)
    assert await sync_to_async(tokens_used)(alice) == 100
    # A finish without usage: still estimated (10 / 4, rounded up).
    assert (await drive_source(alice, paced(["y" * 10, Finish("stop")]))).status_code == 200
    await until_used(alice, 103)
    assert (await drive_source(alice, paced(["z"]))).status_code == 200  # 103 < 104
    await until_used(alice, 104)
    refused = await drive_source(alice, paced(["w"]))
    assert refused.status_code == 429
    assert "too many tokens per user today: the limit is 104 per day" in error_of(refused)


def test_run_tokens_prefers_the_reported_total():
    finish = {"type": "finish", "usage": {"input_tokens": 5, "output_tokens": 7}}
    assert admission.run_tokens([finish], 4000) == 12
    total = {"type": "finish", "usage": {"total_tokens": 30, "input_tokens": 5}}
    assert admission.run_tokens([total], 4000) == 30
    assert admission.run_tokens([{"type": "finish", "usage": {}}], 9) == 3
    assert admission.run_tokens([], 0) == 0


# The cache down or hanging ---------------------------------------------------------------


class BrokenCache(LocMemCache):
    def add(self, *args: Any, **kwargs: Any) -> bool:
        raise ConnectionError("the cache is down")

    def get(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("the cache is down")


RELEASE = threading.Event()


class HangingCache(LocMemCache):
    def get(self, *args: Any, **kwargs: Any) -> Any:
        RELEASE.wait(30)
        return super().get(*args, **kwargs)


@limits_on(
    "tests.test_admission.BrokenCache", DRIVE_RATES_PER_USER=["1/m"], DAILY_TOKENS_PER_USER=5
)
async def test_a_cache_that_fails_admits_every_drive_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="streaming_app.admission")
    _, alice = await owned_stream()
    codes = [(await drive(alice, await new_stream(alice))).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    assert "rate limits and quotas not applied to this drive" in caplog.text
    assert "failed: ConnectionError('the cache is down')" in caplog.text


@limits_on(
    "tests.test_admission.HangingCache", DRIVE_RATES_PER_USER=["1/m"], RATE_LIMIT_TIMEOUT=0.2
)
async def test_a_cache_that_does_not_answer_holds_a_drive_up_only_its_timeout(caplog):
    caplog.set_level(logging.WARNING, logger="streaming_app.admission")
    RELEASE.clear()
    try:
        _, alice = await owned_stream()
        codes = [(await drive(alice, await new_stream(alice))).status_code for _ in range(2)]
        assert codes == [200, 200]
        assert "did not answer within 0.2 s" in caplog.text
    finally:
        RELEASE.set()


# The public function ---------------------------------------------------------------------


@limits_on()
def test_admit_counts_what_it_admits_and_refuses_past_a_rate():
    users = get_user_model().objects
    alice, bob = users.create(username="alice"), users.create(username="bob")

    def post(user: Any, address: str = "10.1.1.1") -> Any:
        request = RequestFactory().post("/signup/", REMOTE_ADDR=address)
        request.user = user
        return request

    streaming_app.admit(post(alice), "signup", per_user=["1/h"], per_address=["2/h"])
    with pytest.raises(Overloaded) as refused:
        streaming_app.admit(post(alice), "signup", per_user=["1/h"], per_address=["2/h"])
    assert refused.value.status_code == 429
    assert str(refused.value).startswith("too many signups per user: the limit is 1 per hour")
    # Alice's refusal did not count against the address: bob has its second.
    streaming_app.admit(post(bob), "signup", per_user=["1/h"], per_address=["2/h"])
    with pytest.raises(Overloaded, match="too many signups from this address"):
        streaming_app.admit(post(bob, "10.1.1.1"), "signup", per_address=["2/h"])
    streaming_app.admit(post(bob, "10.1.1.2"), "signup", per_address=["2/h"])


def test_rate_strings():
    assert str(rates.parse_rate("10/m")) == "10 per 1 minute"
    assert rates.parse_rate("5/2h").get_expiry() == 7200
    assert rates.parse_rate("100 per day").get_expiry() == 86_400
    for bad in ("10", "ten/m", "10/w", 10):
        with pytest.raises(ValueError):
            rates.parse_rate(bad)  # type: ignore[arg-type]


@limits_on()
def test_a_window_that_has_ended_counts_afresh_though_the_cache_still_holds_it(monkeypatch):
    storage = rates.CacheStorage("default")
    now = [1_000_000.5]
    # The window's clock, not the cache's (which keeps the key its 2 real seconds).
    monkeypatch.setattr(rates, "time", SimpleNamespace(time=lambda: now[0]))
    assert [storage.incr("k", 2), storage.incr("k", 2)] == [1, 2]
    assert storage.get_expiry("k") == 1_000_002.5
    now[0] += 2.01  # past the window's end; the cache has not evicted it (its clock)
    assert storage.get("k") == 0
    assert storage.incr("k", 2) == 1
    assert storage.get_expiry("k") == now[0] + 2
    storage.incr("k", 2, -1)  # taken back
    assert storage.get("k") == 0
