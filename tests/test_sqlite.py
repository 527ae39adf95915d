"""SQLite as ``startproject`` configures it (``NAME`` and nothing else: DEFERRED
transactions, the rollback journal, a 5 s busy timeout) serves concurrent drives: the
app's own transactions take SQLite's write lock before they read
(``models.write_transaction``), so they wait their turn instead of failing with
"database is locked". Real uvicorn processes, each on its own SQLite file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from example_project.chat.llm import demo_body

from .servers import ROOT, Browser, Uvicorn, server_env

pytestmark = [pytest.mark.daphne, pytest.mark.slow]

DRIVES = 8

#: What the example project sets (docs/deployment.md#databases): not needed by the
#: app, and still served the same.
EXAMPLE_OPTIONS = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}


@pytest.fixture
def sqlite_server(request: pytest.FixtureRequest) -> Iterator[Uvicorn]:
    """uvicorn on a fresh SQLite file with ``DATABASES`` as startproject writes it, or
    with the OPTIONS the test is parametrized with (migrated with the same settings:
    WAL, for one, stays with the file)."""
    options = getattr(request, "param", None)
    directory = tempfile.mkdtemp(prefix="streaming_app_sqlite_")
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.sqlite_settings",
        "E2E_SQLITE_PATH": str(Path(directory) / "db.sqlite3"),
        "E2E_SQLITE_OPTIONS": json.dumps(options) if options else "",
        "DEMO_MODEL_DELAY": "0.01",
    }
    try:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input", "-v0"],
            cwd=ROOT,
            env=server_env("sqlite:///unused", **env),
            check=True,
            timeout=120,
        )
        server = Uvicorn("sqlite:///unused", **env)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def drive_at_once(base_url: str, drives: int) -> list[tuple[int, str, str, str]]:
    """``drives`` visitors, each with a chat of their own, drive their replies at the
    same moment (a barrier): (HTTP status, body, the stream's final status, its text)."""
    barrier = threading.Barrier(drives)

    def one(i: int) -> tuple[int, str, str, str]:
        browser = Browser(base_url)
        try:
            chat = browser.new_chat(f"Question number {i}?")
            barrier.wait(timeout=60)
            response = browser.drive(chat)
            if response.status_code == 200:
                body = browser.wait_finished(chat["stream_id"])
            else:  # a refused drive leaves its stream pending
                body = browser.body(chat["stream_id"])
            return response.status_code, response.text, body["status"], body["text"]
        finally:
            browser.close()

    with ThreadPoolExecutor(drives) as pool:
        return list(pool.map(one, range(drives)))


def expected_reply(i: int) -> str:
    return demo_body([{"role": "user", "content": f"Question number {i}?"}])


@pytest.mark.parametrize(
    "sqlite_server", [None, EXAMPLE_OPTIONS], ids=["startproject", "example"], indirect=True
)
def test_concurrent_drives_on_sqlite_all_finish(sqlite_server):
    results = drive_at_once(sqlite_server.url, DRIVES)
    failed = [(status, text[:80]) for status, text, _, _ in results if status != 200]
    assert failed == [], f"{len(failed)} of {DRIVES} drives failed: {failed}"
    for i, (_, text, status, stored) in enumerate(results):
        assert (status, text, stored) == ("done", expected_reply(i), expected_reply(i))
    assert "database is locked" not in sqlite_server.output()
