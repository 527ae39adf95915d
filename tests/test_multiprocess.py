"""Viewers in one daphne process, the driver in another, over real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import threading

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from .servers import (
    Browser,
    Daphne,
    Uvicorn,
    closing,
    drive_timed,
    lag_percentiles,
    sse_watch,
    ws_watch,
)

pytestmark = [pytest.mark.daphne, pytest.mark.slow]


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize(
    ("layer", "viewers_on"),
    [
        pytest.param("pubsub", Daphne, id="pubsub"),
        pytest.param("core", Daphne, id="core"),
        # The viewers' process served by uvicorn: websockets and SSE there too.
        pytest.param("pubsub", Uvicorn, id="pubsub-uvicorn"),
    ],
)
def test_viewers_on_another_process_get_exactly_the_drivers_text(
    daphne_factory, browser_factory, layer, viewers_on
):
    env = {
        "REDIS_URL": os.environ["REDIS_URL"],
        "DEMO_MODEL_DELAY": "0.01",
        "DJANGO_SETTINGS_MODULE": "tests.e2e_settings",
        "E2E_CHANNEL_LAYER": layer,
    }
    a, b = daphne_factory(**env), daphne_factory(viewers_on, **env)
    browser = browser_factory(a.url)
    chat = browser.new_chat("Tell the others")
    stream_id = chat["stream_id"]
    results: dict[str, object] = {}
    ready, driving = threading.Event(), threading.Event()

    async def watchers() -> None:
        early = [ws_watch(b.url, stream_id) for _ in range(8)] + [sse_watch(b.url, stream_id)]
        tasks = [asyncio.create_task(w) for w in early]
        await asyncio.sleep(0.3)  # they are listening before the driver starts
        ready.set()
        await asyncio.to_thread(driving.wait)
        await asyncio.sleep(0.4)  # and some join mid-stream
        tasks += [asyncio.create_task(ws_watch(b.url, stream_id)) for _ in range(4)]
        results["viewers"] = await asyncio.gather(*tasks)

    thread = threading.Thread(target=lambda: asyncio.run(watchers()))
    thread.start()
    ready.wait(timeout=30)
    driving.set()
    text, driver_arrivals = drive_timed(browser, chat, a.url)
    thread.join(timeout=60)
    viewers = results["viewers"]
    assert isinstance(viewers, list) and len(viewers) == 13
    body = browser.wait_finished(stream_id)
    assert body["status"] == "done" and body["text"] == text
    for viewer in viewers:
        assert viewer["text"] == text
        assert viewer["statuses"][-1] == "done"
    for viewer in viewers[:8] + viewers[9:]:
        assert viewer["code"] == 1000
    lags = lag_percentiles(driver_arrivals, viewers[0]["arrivals"])
    ratio = statistics.median(v["payload"] for v in viewers[:8]) / len(text.encode())
    print(
        f"\n{layer}: across processes: viewer lag p50 {statistics.median(lags) * 1000:.0f} ms, "
        f"p95 {lags[int(len(lags) * 0.95)] * 1000:.0f} ms; {ratio:.2f} bytes sent per byte of body"
    )


def test_a_foreign_origin_is_refused(daphne_factory, browser_factory):
    server = daphne_factory()
    chat = browser_factory(server.url).new_chat("private?")

    async def attempt() -> None:
        await ws_watch(server.url, chat["stream_id"], origin="http://evil.example")

    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(attempt())
    assert refused.value.response.status_code == 403


def test_the_server_stays_up_after_malformed_frames_and_query_strings(
    daphne_factory, browser_factory
):
    from websockets.asyncio.client import connect

    server = daphne_factory()
    browser = browser_factory(server.url)
    chat = browser.new_chat("still there?")
    base = server.url.replace("http://", "ws://")
    bad_queries = [
        "offset=%ZZ",
        "offset=" + "9" * 5000,
        "offset=-0",
        "offset=\u00e9",
        "offset",
        "offset=1&offset=2",
    ]

    async def abuse() -> list[tuple[int | None, str | None]]:
        closes = []
        for query in bad_queries:
            async with connect(
                f"{base}/ws/streams/{chat['stream_id']}/?{query}", origin=server.url, proxy=None
            ) as ws:
                async for _ in closing(ws):
                    pass
                closes.append((ws.close_code, ws.close_reason))
        frames: list[str | bytes] = [
            b"\x00\xff binary",
            "{not json",
            '{"type": "text"}',
            "x" * 100_000,
        ]
        for frame in frames:
            async with connect(
                f"{base}/ws/streams/{chat['stream_id']}/", origin=server.url, proxy=None
            ) as ws:
                await ws.recv()
                await ws.send(frame)
                async for _ in closing(ws):
                    pass
                closes.append((ws.close_code, ws.close_reason))
        return closes

    closes = asyncio.run(abuse())
    # (daphne drops close reasons; the in-process tests check that the consumer gives them)
    assert [code for code, _ in closes] == [4400] * (len(bad_queries) + 4), closes
    # Still serving: HTTP, and a proper viewer of the stream once it is driven.
    assert httpx.get(f"{server.url}/api/streams/{chat['stream_id']}/").status_code == 200
    driven = browser.drive(chat)
    assert driven.status_code == 200
    viewer = asyncio.run(ws_watch(server.url, chat["stream_id"]))
    assert (viewer["text"], viewer["statuses"][-1], viewer["code"]) == (driven.text, "done", 1000)
    assert server.process.poll() is None
    assert "Traceback" not in server.output()


@pytest.mark.postgres
@pytest.mark.redis
def test_disconnect_viewers_reaches_the_viewers_of_another_process(daphne_factory, e2e_db):
    """A permission change, then disconnect_viewers() from this (third) process: the
    viewers' process re-checks them and closes those now refused (4403)."""
    import psycopg

    from streaming_app import disconnect_viewers

    env = {
        "REDIS_URL": os.environ["REDIS_URL"],
        "E2E_CHANNEL_LAYER": "pubsub",
        "E2E_STREAMING_APP": '{"PERMISSION_POLICY": "tests.test_hub.public_policy"}',
    }
    a, b = daphne_factory(**env), daphne_factory(**env)
    browser = Browser(a.url)
    chat = browser.new_chat("Who may watch?")

    def public(value: bool) -> None:
        with psycopg.connect(e2e_db, autocommit=True) as conn:
            conn.execute(
                "UPDATE streaming_app_stream SET metadata = %s WHERE id = %s",
                (json.dumps({"public": value}), chat["stream_id"]),
            )

    public(True)
    outcome: dict[str, object] = {}
    snapshot = threading.Event()

    async def watch() -> None:
        from websockets.asyncio.client import connect

        url = b.url.replace("http://", "ws://") + f"/ws/streams/{chat['stream_id']}/"
        async with connect(url, origin=b.url, proxy=None) as ws:
            outcome["first"] = json.loads(await ws.recv())
            snapshot.set()
            async for _ in closing(ws):
                pass
            outcome["code"] = ws.close_code

    thread = threading.Thread(target=lambda: asyncio.run(watch()))
    thread.start()
    assert snapshot.wait(10), "the viewer was not let in"
    public(False)
    assert "code" not in outcome, "closed before anyone asked"
    disconnect_viewers(chat["stream_id"])
    thread.join(10)
    assert outcome["first"] == {"type": "text", "offset": 0, "text": ""}
    assert outcome["code"] == 4403
    browser.close()
