from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from streaming_app.drive import run
from tests.servers import Browser, Daphne, PrivateRedis, e2e_database

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, reason: str) -> None:
    """Skip when a backend is missing on a laptop; fail in CI, where it must be there."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def using_postgres() -> bool:
    return bool(settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("postgres"):
        require(
            using_postgres(),
            "needs PostgreSQL: run with DATABASE_URL=postgres://postgres@127.0.0.1:5432/streaming_app",
        )
    if item.get_closest_marker("redis"):
        require(
            bool(os.environ.get("REDIS_URL")),
            "needs Redis: run with REDIS_URL=redis://127.0.0.1:6379/0",
        )


@pytest.fixture(scope="session", autouse=True)
def close_async_test_connections(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Async tests run their ORM calls on asgiref's shared sync thread, whose connection
    nothing closes: close it before the test database is dropped."""
    yield
    with django_db_blocker.unblock():
        asyncio.run(sync_to_async(connections.close_all)())


@pytest.fixture(autouse=True)
async def stream_runs_end_with_their_test() -> AsyncIterator[None]:
    """A stream run outlives the request that started it, by design; it must not
    outlive its test. Its last flush would race the flush of the test database: on
    Postgres, its INSERT and the TRUNCATE deadlock. (Set up after pytest-django's own
    autouse fixture, so torn down before the database is.)"""
    yield
    loop = asyncio.get_running_loop()
    runs = [task for task in run._running if task.get_loop() is loop]
    if not runs:
        return
    _, unfinished = await asyncio.wait(runs, timeout=15)
    for task in unfinished:
        task.cancel()
    await asyncio.gather(*runs, return_exceptions=True)
    assert not unfinished, f"{len(unfinished)} stream run(s) still going 15 s after the test"


@pytest.fixture(scope="session")
def database_url() -> str:
    """The DATABASE_URL the suite runs against; the daphne suites copy its kind."""
    return os.environ.get("DATABASE_URL", "sqlite:///unused")


@pytest.fixture(scope="module")
def e2e_db(database_url: str) -> Iterator[str]:
    with e2e_database(database_url) as url:
        yield url


@pytest.fixture
def daphne_factory(e2e_db: str) -> Iterator[Any]:
    """Start daphne processes (or uvicorn ones: ``start(Uvicorn)``) on the module's e2e
    database; all stop at the end."""
    started: list[Daphne] = []

    def start(kind: type[Daphne] = Daphne, options: Sequence[str] = (), **env: str) -> Daphne:
        server = kind(e2e_db, options=options, **env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def browser_factory() -> Iterator[Any]:
    opened: list[Browser] = []

    def open_browser(base_url: str) -> Browser:
        browser = Browser(base_url)
        opened.append(browser)
        return browser

    yield open_browser
    for browser in opened:
        browser.close()


CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium tries to reach Google at start.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A page a test serves through playwright's routing counts as a public one, whose
    # websockets to 127.0.0.1 Chromium would block as local network access.
    "--disable-features=LocalNetworkAccessChecks",
]


@pytest.fixture
def chromium() -> Iterator[Any]:
    require(
        shutil.which(CHROMIUM) is not None,
        f"needs Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)",
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A Redis of the test's own (to stop, pause or share between its servers)."""
    require(shutil.which("redis-server") is not None, "needs redis-server")
    server = PrivateRedis()
    yield server
    server.stop()
