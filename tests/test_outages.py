"""Faults, for real: a writer's process killed, Redis and Postgres going away and coming
back, a cancel from another process. Private Redis and Postgres servers, never the
shared ones."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
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
    drive_timed,
    migrate,
    postgres_bin,
    server_env,
    ws_follow,
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


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    require(shutil.which("redis-server") is not None, "needs redis-server")
    server = PrivateRedis()
    yield server
    server.stop()


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


@pytest.mark.parametrize("layer", ["pubsub", "core"])
def test_redis_going_away_mid_stream(e2e_db, private_redis, layer):
    env = {
        "REDIS_URL": private_redis.url,
        "E2E_CHANNEL_LAYER": layer,
        "DEMO_MODEL_DELAY": "0.03",
        "E2E_STREAMING_APP": json.dumps(FAST_CHECKS),
    }
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
