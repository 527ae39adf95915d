"""Readers past one machine: Durable Streams readers behind a caching proxy, against the
same readers straight at the app.

One uvicorn process of the example (PostgreSQL, Redis) and, in front of it, nginx with
the cache block of docs/deployment.md ("A cache in front"), as written there. For R
readers (100 and 1,000, or --readers), each on a stream of its own so that the cache
starts cold:

- *finished*: R readers read one finished reply from ``-1`` to its close (catch-up
  reads). What it costs the app: its requests, per distinct offset the readers asked
  for (1 is the floor: each answer fetched once).
- *live*: R long-poll readers follow one reply from before it is driven to its close,
  echoing ``Stream-Cursor``. What it costs the app: its requests per second while the
  reply is written, and how that grows from the smallest R to the largest (1.00× is
  the floor: it does not grow with R).

Every reader's bytes are compared with the stream's body; the app's requests are
counted from its access log. Straight at the app, every request is the app's.

    DATABASE_URL=postgres://... REDIS_URL=redis://... python -m bench.durable [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import write  # noqa: E402
from tests.servers import NGINX, Browser, Nginx, Uvicorn, e2e_database, replace_once  # noqa: E402

#: One access log line of the app's for a Durable Streams read (uvicorn's format).
READ = re.compile(r'"GET /v1/stream/')


class CachingNginx(Nginx):
    """nginx with docs/deployment.md's cache block, its cache in a directory of its own."""

    heading = "## A cache in front: readers past one machine"

    def adapt(self, block: str) -> str:
        return replace_once(block, "/var/cache/nginx/streams", str(self.dir / "cache"))


def app_reads(server: Uvicorn) -> int:
    """The Durable Streams reads the app has answered so far."""
    return len(READ.findall(server.output()))


def closed(response: httpx.Response) -> bool:
    return response.headers.get("Stream-Closed") == "true"


async def get(
    client: httpx.AsyncClient, url: str, params: dict[str, str], retries: list[int]
) -> httpx.Response:
    """A GET, tried again after a connection error or a 429/503 as a client would (each
    retry counted in ``retries``)."""
    for attempt in range(20):
        try:
            response = await client.get(url, params=params)
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code not in (429, 503):
            return response
        retries.append(1)
        await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
    raise RuntimeError(f"{url} {params}: no answer after 20 tries")


async def catch_up(
    client: httpx.AsyncClient, url: str, asked: set[str], retries: list[int]
) -> bytes:
    """A reader of a finished stream, from ``-1`` to its close."""
    offset, data = "-1", b""
    while True:
        asked.add(offset)
        response = await get(client, url, {"offset": offset}, retries)
        response.raise_for_status()
        data += response.content
        if closed(response):
            return data
        offset = response.headers["Stream-Next-Offset"]


async def long_poll(client: httpx.AsyncClient, url: str, retries: list[int]) -> bytes:
    """A long-poll reader from ``-1`` to the close, echoing the cursor (its query in
    the protocol's order: by name)."""
    offset, cursor, data = "-1", "", b""
    while True:
        params = {"cursor": cursor, "live": "long-poll", "offset": offset}
        response = await get(client, url, {k: v for k, v in params.items() if v}, retries)
        if response.status_code not in (200, 204):
            raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
        data += response.content
        if closed(response):
            return data
        offset = response.headers["Stream-Next-Offset"]
        cursor = response.headers.get("Stream-Cursor", cursor)


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=120, limits=httpx.Limits(max_connections=None, max_keepalive_connections=None)
    )


async def finished(
    server: Uvicorn, base: str, readers: int, body: bytes, stream: str
) -> dict[str, Any]:
    asked: set[str] = set()
    retries: list[int] = []
    before = app_reads(server)
    started = time.monotonic()
    async with client() as http:
        read = await asyncio.gather(
            *(catch_up(http, f"{base}/v1/stream/{stream}", asked, retries) for _ in range(readers))
        )
    wall = time.monotonic() - started
    requests = app_reads(server) - before
    return {
        "app_requests": requests,
        "distinct_offsets": len(asked),
        "requests_per_offset": requests / len(asked),
        "exact": sum(data == body for data in read),
        "retries": len(retries),
        "seconds": wall,
    }


async def live(
    server: Uvicorn, base: str, readers: int, browser: Browser, chat: dict[str, Any]
) -> dict[str, Any]:
    url = f"{base}/v1/stream/{chat['stream_id']}"
    retries: list[int] = []
    async with client() as http:
        reading = [asyncio.ensure_future(long_poll(http, url, retries)) for _ in range(readers)]
        await asyncio.sleep(1.0)  # every reader waits on the pending stream
        before = app_reads(server)
        drive: dict[str, float] = {}

        def driven() -> None:
            drive["start"] = time.monotonic()
            assert browser.drive(chat).status_code == 200
            drive["end"] = time.monotonic()

        thread = threading.Thread(target=driven)
        thread.start()
        read = await asyncio.gather(*reading)
        thread.join()
        requests = app_reads(server) - before
        body = (await http.get(url)).content
    seconds = drive["end"] - drive["start"]
    return {
        "app_requests": requests,
        "app_requests_per_second": requests / seconds,
        "exact": sum(data == body for data in read),
        "retries": len(retries),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds, for CI")
    parser.add_argument("--readers", default="100,1000")
    args = parser.parse_args()
    database_url, redis_url = os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL")
    if not database_url.startswith("postgres") or not redis_url:
        sys.exit("bench.durable needs DATABASE_URL (PostgreSQL) and REDIS_URL")
    if not os.path.exists(NGINX):
        sys.exit(f"bench.durable needs nginx at {NGINX} (apt-get install nginx, or set NGINX)")
    counts = [10, 30] if args.smoke else [int(n) for n in args.readers.split(",")]
    delay = "0.005" if args.smoke else "0.03"
    unlimited = {
        "MAX_VIEWERS_PER_USER": None,
        "MAX_VIEWERS_PER_ADDRESS": None,
        "MAX_VIEWERS_PER_PROXY": None,
    }
    rows: list[dict[str, Any]] = []
    with e2e_database(database_url) as db:
        server = Uvicorn(db, DEMO_MODEL_DELAY=delay, E2E_STREAMING_APP=json.dumps(unlimited))
        cache = CachingNginx(server.port)
        try:
            browser = Browser(server.url)
            for scenario in ("finished", "live"):
                for readers in counts:
                    for via, base in (("app", server.url), ("cache", cache.url)):
                        chat = browser.new_chat(f"Read me, {readers} of you, {via}")
                        if scenario == "finished":
                            driven = browser.drive(chat)
                            assert driven.status_code == 200
                            browser.wait_finished(chat["stream_id"])
                            body = driven.content  # what the driver got: the whole body
                            figures = asyncio.run(
                                finished(server, base, readers, body, chat["stream_id"])
                            )
                        else:
                            figures = asyncio.run(live(server, base, readers, browser, chat))
                        rows.append(
                            {"scenario": scenario, "readers": readers, "via": via, **figures}
                        )
                        print(json.dumps(rows[-1]), flush=True)
        finally:
            cache.stop()
            server.stop()
    smallest = min(counts)
    for row in rows:
        if row["scenario"] == "live":
            first = next(
                r
                for r in rows
                if (r["scenario"], r["via"], r["readers"]) == ("live", row["via"], smallest)
            )
            row["growth"] = row["app_requests_per_second"] / first["app_requests_per_second"]
            row["growth_of_readers"] = row["readers"] / smallest
    write(
        "durable",
        smoke=args.smoke,
        parameters={"readers": counts, "model_delay": float(delay), "server": "uvicorn"},
        summary=rows,
    )
    bad = [r for r in rows if r["exact"] != r["readers"]]
    if bad:
        sys.exit(f"readers with the wrong text: {bad}")


if __name__ == "__main__":
    main()
