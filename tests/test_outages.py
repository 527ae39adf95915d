"""Faults, for real: a writer's process killed, Redis and Postgres going away and coming
back, a cancel from another process. Private Redis and Postgres servers, never the
shared ones."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from example_project.chat.llm import demo_body

from .conftest import require
from .servers import (
    ROOT,
    Browser,
    Daphne,
    PrivatePostgres,
    PrivateRedis,
    Uvicorn,
    drive_timed,
    migrate,
    postgres_bin,
    server_env,
    ws_follow,
    ws_watch,
)

pytestmark = [pytest.mark.daphne, pytest.mark.slow]

# Chunks are left as the writer wrote them, so that a lost or doubled one shows.
FAST_CHECKS = {"RESYNC_INTERVAL": 0.5, "PUBLISH_TIMEOUT": 0.5, "COMPACT_FINISHED": False}


def answer(prompt: str) -> str:
    return demo_body([{"role": "user", "content": prompt}])


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    require(postgres_bin() is not None, "needs PostgreSQL's server binaries (initdb, pg_ctl)")
    server = PrivatePostgres()
    migrate(server.url)
    yield server
    server.destroy()


class Scenario:
    """A driver and some websocket viewers of one chat's reply, run in threads, so that
    the test can break things while they run."""

    def __init__(
        self, browser: Browser, chat: dict[str, Any], drive_on: str, watch_on: str, viewers: int = 3
    ) -> None:
        self.result: dict[str, Any] = {}
        watching = threading.Event()

        async def watch_all() -> None:
            tasks = [ws_follow(watch_on, chat["stream_id"]) for _ in range(viewers)]
            gathered = asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0.3)
            watching.set()
            self.result["viewers"] = await gathered

        def drive() -> None:
            started = time.monotonic()
            try:
                self.result["driver"] = drive_timed(browser, chat, drive_on)
            except (httpx.HTTPError, OSError) as exc:
                self.result["driver_error"] = exc
            self.result["driver_seconds"] = time.monotonic() - started

        self.watcher = threading.Thread(target=lambda: asyncio.run(watch_all()))
        self.watcher.start()
        watching.wait(10)
        self.driver = threading.Thread(target=drive)
        self.driver.start()
        self.started = time.monotonic()

    def wait(self) -> dict[str, Any]:
        self.driver.join(90)
        self.watcher.join(90)
        for viewer in self.result["viewers"]:
            if isinstance(viewer, BaseException):
                raise viewer
        return self.result


def chunks_in(database_url: str, stream_id: str) -> list[tuple[int, int, str]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            'SELECT seq, "offset", text FROM streaming_app_chunk WHERE stream_id = %s ORDER BY seq',
            (stream_id,),
        ).fetchall()


def assert_exact_chunks(chunks: list[tuple[int, int, str]], text: str) -> None:
    offset = 0
    for seq, (chunk_seq, chunk_offset, chunk_text) in enumerate(chunks):
        assert (chunk_seq, chunk_offset) == (seq, offset), "a chunk lost or written twice"
        offset += len(chunk_text)
    assert "".join(c[2] for c in chunks) == text


def survive_outage(
    drive_on: Daphne, watch_on: Daphne, prompt: str, stop: Any, start: Any, seconds: float
) -> tuple[Browser, dict[str, Any]]:
    """Drive a reply on one server, watch it on another, and take a service away for
    ``seconds`` mid-stream: the driver must not notice, and every viewer and the
    database must end with the whole answer."""
    browser = Browser(drive_on.url)
    chat = browser.new_chat(prompt)
    scenario = Scenario(browser, chat, drive_on.url, watch_on.url)
    time.sleep(0.8)
    stop()
    stopped = time.monotonic()
    time.sleep(seconds)
    start()
    started = time.monotonic()
    result = scenario.wait()
    expected = answer(prompt)
    text, arrivals = result["driver"]
    assert text == expected
    during = [length for at, length in arrivals if stopped < at < started]
    assert during, "the driver received nothing while the service was away"
    assert during[-1] < len(expected), "the reply had ended before the outage: it proves nothing"
    body = browser.wait_finished(chat["stream_id"])
    assert (body["status"], body["text"]) == ("done", expected)
    for viewer in result["viewers"]:
        assert (viewer["text"], viewer["statuses"][-1]) == (expected, "done")
    return browser, chat


@pytest.mark.parametrize(
    ("pool_size", "sign"),
    [
        # Without a pool, a flush is refused a connection and retried with backoff.
        pytest.param("0", "retrying in", id="no-pool"),
        # With one, a flush waits for the pool to reconnect.
        pytest.param("20", "(the database was slow or away)", id="pool"),
    ],
)
def test_postgres_going_away_mid_stream_loses_and_doubles_nothing(
    private_postgres, pool_size, sign
):
    server = Daphne(
        private_postgres.url,
        DEMO_MODEL_DELAY="0.03",
        DATABASE_POOL_SIZE=pool_size,
        E2E_STREAMING_APP=json.dumps(FAST_CHECKS),
    )
    try:
        _, chat = survive_outage(
            server,
            server,
            "Survive the database",
            private_postgres.stop,
            private_postgres.start,
            2.5,
        )
        assert_exact_chunks(
            chunks_in(private_postgres.url, chat["stream_id"]), answer("Survive the database")
        )
        assert sign in server.output(), "the outage did not hit a flush"
    finally:
        server.stop()


def test_postgres_away_past_the_limit_ends_the_stream_as_error(private_postgres):
    settings = {**FAST_CHECKS, "DATABASE_OUTAGE_LIMIT": 1.0}
    server = Daphne(
        private_postgres.url, DEMO_MODEL_DELAY="0.03", E2E_STREAMING_APP=json.dumps(settings)
    )
    try:
        browser = Browser(server.url)
        chat = browser.new_chat("Outlast the database")
        scenario = Scenario(browser, chat, server.url, server.url, viewers=1)
        time.sleep(0.8)
        private_postgres.stop()
        time.sleep(3.0)
        private_postgres.start()
        result = scenario.wait()
        text, _ = result["driver"]
        expected = answer("Outlast the database")
        # The driver's response completed, cut where generation stopped.
        assert 0 < len(text) < len(expected) and expected.startswith(text)
        body = browser.wait_finished(chat["stream_id"])
        assert body["status"] == "error"
        assert body["error"] == "the database was unreachable for more than 1 seconds"
        assert body["text"] == text, "what the driver got was all committed"
        assert_exact_chunks(chunks_in(private_postgres.url, chat["stream_id"]), text)
        assert result["viewers"][0]["text"] == text
        assert result["viewers"][0]["statuses"][-1] == "error"
    finally:
        server.stop()


def layer_env(
    redis: PrivateRedis, layer: str, delay: float = 0.03, **settings: float
) -> dict[str, str]:
    """Servers' environment for the channels-redis ``layer`` on ``redis``, the demo model
    ``delay`` seconds a word, and ``settings`` over FAST_CHECKS."""
    return {
        "REDIS_URL": redis.url,
        "E2E_CHANNEL_LAYER": layer,
        # The app's bound, not the client's (redis-py 8's own is 5 s), is under test.
        "E2E_REDIS_SOCKET_TIMEOUT": "60",
        "DEMO_MODEL_DELAY": str(delay),
        "E2E_STREAMING_APP": json.dumps({**FAST_CHECKS, **settings}),
    }


@pytest.mark.parametrize("layer", ["pubsub", "core"])
def test_redis_going_away_mid_stream(e2e_db, private_redis, layer):
    env = layer_env(private_redis, layer)
    a, b = Daphne(e2e_db, **env), Daphne(e2e_db, **env)
    try:
        survive_outage(a, b, "Survive Redis", private_redis.stop, private_redis.start, 1.5)
        # The outage hit: the driver's process could not publish some updates.
        assert "could not send stream.update" in a.output()
        for server in (a, b):
            assert server.process.poll() is None
            assert "Exception inside application" not in server.output()
    finally:
        a.stop()
        b.stop()


class Background(threading.Thread):
    """``work()`` in a thread of its own; :meth:`result` returns what it returned, or
    raises what it raised."""

    def __init__(self, work: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.value: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.work()
        except BaseException as exc:
            self.error = exc

    def result(self, timeout: float = 60) -> Any:
        self.join(timeout)
        assert not self.is_alive(), f"still running after {timeout}s"
        if self.error is not None:
            raise self.error
        return self.value


def until(condition: Callable[[], Any], within: float = 15, what: str = "") -> None:
    """Wait for ``condition`` (a bound, not a pace)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within}s: {what or condition}"
        time.sleep(0.02)


def members(redis: PrivateRedis, layer: str, stream_id: str) -> int:
    """How many channels (processes' hubs) Redis has in the stream's group."""
    group = f"streaming_app.stream.{uuid.UUID(stream_id).hex}"
    with redis.client() as client:
        if layer == "pubsub":
            [(_, count)] = client.pubsub_numsub(f"asgi__group__{group}")
            return int(count)
        return int(client.zcard(f"asgi:group:{group}"))


async def hear_an_update(redis: PrivateRedis, layer: str, stream_id: str) -> dict[str, Any]:
    """Join the stream's group from here, with the same channels-redis layer, and
    return the first update that anyone sends it."""
    from channels_redis.core import RedisChannelLayer
    from channels_redis.pubsub import RedisPubSubChannelLayer

    backend = {"core": RedisChannelLayer, "pubsub": RedisPubSubChannelLayer}[layer]
    channels = backend(hosts=[redis.url])
    group = f"streaming_app.stream.{uuid.UUID(stream_id).hex}"
    channel = await channels.new_channel()
    await channels.group_add(group, channel)
    try:
        while True:
            message = await asyncio.wait_for(channels.receive(channel), 15)
            if message["type"] == "stream.update":
                return dict(message)
    finally:
        await channels.group_discard(group, channel)
        await (channels.flush() if layer == "pubsub" else channels.close_pools())


@pytest.mark.parametrize("layer", ["pubsub", "core"])
def test_a_redis_that_answers_nothing_holds_up_no_viewer(e2e_db, private_redis, layer):
    """Redis stopped (SIGSTOP): it accepts and never answers. A viewer who connects then,
    on another server, is served the committed text and follows the live stream from
    the database; once Redis answers, its server joins the group again and the deltas
    go through the layer; the viewer ends with the exact text."""
    env = layer_env(private_redis, layer, delay=0.05)
    a, b = Daphne(e2e_db, **env), Uvicorn(e2e_db, **env)
    try:
        browser = Browser(a.url)
        chat = browser.new_chat("Hang on")
        stream_id = chat["stream_id"]
        expected = answer("Hang on")
        driving = Background(lambda: drive_timed(browser, chat, a.url))
        until(lambda: browser.body(stream_id)["text"], what="some text committed")
        arrivals: list[tuple[float, int]] = []
        private_redis.pause()
        try:
            watching = Background(
                lambda: asyncio.run(ws_watch(b.url, stream_id, arrivals=arrivals))
            )
            # Served, and following, while the layer hangs; and the calls did hang: the
            # viewer's server gave up joining, the driver's gave up sending, each after
            # PUBLISH_TIMEOUT (not refused: a refusal says ConnectionError).
            until(lambda: len(arrivals) >= 3, what="the new viewer follows the stream")
            until(lambda: "group: TimeoutError()" in b.output(), what="the join timed out")
            until(lambda: "could not send stream.update" in a.output())
            assert "TimeoutError()" in a.output()
            during = list(arrivals)
        finally:
            private_redis.resume()
        assert 0 < during[0][1] < during[-1][1] < len(expected), "a live stream, followed"
        # Redis answers: the viewer's server is in the stream's group again, and the
        # driver's updates go through the layer.
        until(lambda: members(private_redis, layer, stream_id) >= 1, what="the group joined")
        until(lambda: "the channel layer answers again" in b.output(), what="recovered")
        heard = asyncio.run(hear_an_update(private_redis, layer, stream_id))
        assert heard["stream"] == uuid.UUID(stream_id).hex
        result = watching.result()
        assert (result["text"], result["statuses"][-1], result["code"]) == (expected, "done", 1000)
        text, _ = driving.result()
        assert text == expected
        for server in (a, b):
            assert "Exception inside application" not in server.output()
    finally:
        private_redis.resume()
        a.stop()
        b.stop()


@pytest.mark.parametrize("layer", ["pubsub", "core"])
def test_a_drives_first_piece_does_not_wait_for_a_redis_that_answers_nothing(
    e2e_db, private_redis, layer
):
    """The drive starts while Redis is stopped, and no call to it gives up (a 60 s
    PUBLISH_TIMEOUT): the driver reads its first piece while the driving server's
    layer calls wait unanswered, so before the claim's group_send returns. A viewer on
    another server gets all of it."""
    env = layer_env(private_redis, layer, PUBLISH_TIMEOUT=60)
    a, b = Daphne(e2e_db, **env), Uvicorn(e2e_db, **env)
    try:
        browser = Browser(a.url)
        chat = browser.new_chat("First things first")
        stream_id = chat["stream_id"]
        expected = answer("First things first")
        watching = Background(lambda: asyncio.run(ws_watch(b.url, stream_id)))
        until(lambda: members(private_redis, layer, stream_id) >= 1, what="the viewer's join")
        private_redis.pause()
        try:
            first: bytes | None = None
            try:
                with (
                    httpx.Client(base_url=a.url, cookies=browser.http.cookies, timeout=10) as http,
                    http.stream("POST", chat["drive_url"], headers=browser.headers()) as response,
                ):
                    pieces = response.iter_raw()
                    first = next(pieces)
                    log_at_first_piece = a.output()
                    # The fault hit: the driving server sent Redis what it has not read.
                    until(lambda: private_redis.unread_from(a.process.pid) > 0, what="a call")
                    private_redis.resume()
                    body = first + b"".join(pieces)
            except httpx.ReadTimeout:
                if first is None:
                    pytest.fail("the drive's first piece waited for the channel layer")
                raise
        finally:
            private_redis.resume()
        assert "could not send" not in log_at_first_piece, "a send gave up: it proves nothing"
        assert body.decode() == expected
        result = watching.result()
        assert (result["text"], result["statuses"][-1], result["code"]) == (expected, "done", 1000)
        assert "could not send" not in a.output(), "every send went through once Redis answered"
    finally:
        private_redis.resume()
        a.stop()
        b.stop()


def two_servers(daphne_factory: Any, **settings: float) -> tuple[Daphne, Daphne]:
    """Two daphne processes on the module's database, with ``settings`` over FAST_CHECKS,
    sharing Redis for cross-process messages when the suite has it (else only the
    database carries news between them)."""
    env = {
        "DEMO_MODEL_DELAY": "0.03",
        "E2E_STREAMING_APP": json.dumps({**FAST_CHECKS, **settings}),
    }
    if os.environ.get("REDIS_URL"):
        env.update(REDIS_URL=os.environ["REDIS_URL"], E2E_CHANNEL_LAYER="pubsub")
    return daphne_factory(**env), daphne_factory(**env)


def test_a_killed_writer_leaves_its_text_and_times_out_for_every_viewer(daphne_factory):
    a, b = two_servers(daphne_factory, TIMEOUT=2.0, HEARTBEAT_INTERVAL=0.5)
    browser = Browser(b.url)
    chat = browser.new_chat("Die halfway")
    scenario = Scenario(browser, chat, a.url, b.url)
    time.sleep(1.5)
    a.kill()  # SIGKILL: no goodbye, no last flush
    result = scenario.wait()
    assert "driver_error" in result or len(result["driver"][0]) < len(answer("Die halfway"))
    body = browser.wait_finished(chat["stream_id"], timeout=20)
    assert body["status"] == "timeout"
    assert body["error"] == "no activity for 2 seconds"
    assert 0 < len(body["text"]) < len(answer("Die halfway"))
    assert answer("Die halfway").startswith(body["text"])
    for viewer in result["viewers"]:
        assert (viewer["text"], viewer["statuses"][-1]) == (body["text"], "timeout")
    browser.close()


def test_expire_streams_ends_a_killed_writers_stream(daphne_factory, e2e_db):
    env = {"DEMO_MODEL_DELAY": "0.03", "E2E_STREAMING_APP": json.dumps({"HEARTBEAT_INTERVAL": 0.5})}
    server = daphne_factory(**env)
    browser = Browser(server.url)
    chat = browser.new_chat("Nobody reads me")
    with (
        httpx.Client(base_url=server.url, cookies=browser.http.cookies, timeout=30) as http,
        http.stream("POST", chat["drive_url"], headers=browser.headers()) as response,
    ):
        next(response.iter_raw())
        time.sleep(1.0)
        server.kill()
    time.sleep(2.5)

    def expire(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", "expire_streams", *args],
            cwd=ROOT,
            env=server_env(e2e_db),
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    assert expire() == "0 streams expired"  # the default timeout, 60 s, has not passed
    assert expire("--timeout", "2") == "1 stream expired"
    assert expire("--timeout", "2") == "0 streams expired"
    reader = daphne_factory()
    body = Browser(reader.url).body(chat["stream_id"])
    assert body["status"] == "timeout" and body["text"]


def test_a_cancel_from_another_process_stops_the_driver(daphne_factory):
    a, b = two_servers(daphne_factory)
    owner = Browser(a.url)
    chat = owner.new_chat("Stop me")
    scenario = Scenario(owner, chat, a.url, b.url)
    time.sleep(1.2)
    stranger = Browser(b.url)
    refused = stranger.http.post(
        f"/api/streams/{chat['stream_id']}/cancel/", headers=stranger.headers()
    )
    assert refused.status_code == 403
    with httpx.Client(base_url=b.url, cookies=owner.http.cookies, timeout=30) as http:
        cancelled = http.post(f"/api/streams/{chat['stream_id']}/cancel/", headers=owner.headers())
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    answered = time.monotonic()
    result = scenario.wait()
    text, arrivals = result["driver"]
    # The cancel was answered once the stream had ended: the driver's last piece came
    # before that, and the reply stopped short.
    assert arrivals[-1][0] < answered, "generation went on after the cancel"
    assert 0 < len(text) < len(answer("Stop me"))
    body = owner.body(chat["stream_id"])
    assert (body["status"], body["text"]) == ("cancelled", text), "what was generated is kept"
    for viewer in result["viewers"]:
        assert (viewer["text"], viewer["statuses"][-1]) == (text, "cancelled")
    owner.close()
    stranger.close()
