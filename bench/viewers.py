"""One stream, many viewers: what the viewers' process pays, against a bare relay.

A stream is driven on one daphne process at 100 tokens/s (a model server in a process
of its own); V websocket viewers watch it on a second daphne process (PostgreSQL,
Redis pub/sub layer). The same-run baseline is a bare Channels consumer per viewer
that joins the stream's group and relays each group message to its socket and does
nothing else (bench/relay.py): the floor for this stack. Per V (100, 1,000, and as
many as --v says):

- every viewer's text exact (the driver's);
- the last character's lag behind the driver, p95 over the viewers;
- the viewers' process CPU per delta per viewer, and its ratio to the relay's;
- database statements per second from the viewers' process while V viewers watch a
  stream that stays silent (pending) for --idle seconds.

    DATABASE_URL=postgres://... REDIS_URL=redis://... python -m bench.viewers [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.capacity import cpu_seconds, new_chats, timed_post  # noqa: E402
from bench.model import ModelProcess  # noqa: E402
from bench.results import median, percentile, write  # noqa: E402
from tests.servers import Daphne, e2e_database  # noqa: E402

APP = "bench.asgi:application"


async def view(url: str, origin: str, ready: asyncio.Event | None) -> dict[str, Any]:
    """One viewer to the end of the stream: its text, when it got its last piece, and
    how many messages with text it took."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake
    from websockets.typing import Origin

    text, frames, last = "", 0, 0.0
    for attempt in range(5):  # a server busy accepting hundreds may drop a handshake
        try:
            ws = await connect(
                url, origin=Origin(origin), proxy=None, compression=None, open_timeout=60
            )
            break
        except (OSError, TimeoutError, InvalidHandshake):
            await asyncio.sleep(0.5 * (attempt + 1))
    else:
        if ready is not None:
            ready.set()
        return {"text": None, "last": 0.0, "frames": 0}
    async with ws:
        try:
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "text":
                    start = message["offset"]
                    if start <= len(text) < start + len(message["text"]):
                        text = text[:start] + message["text"]
                        last = time.monotonic()
                    frames += bool(message["text"])  # deltas of text, as both send them
                elif ready is not None:
                    ready.set()  # the app's viewers have their snapshot and status
        except ConnectionClosed:
            pass
    return {"text": text, "last": last, "frames": frames}


async def watch_and_drive(
    driver: Daphne, viewers_on: Daphne, route: str, count: int
) -> dict[str, Any]:
    cookies, chat = (await new_chats(driver.url, 1))[0]
    base = viewers_on.url.replace("http://", "ws://")
    url = f"{base}/ws/{route}/{chat['stream_id']}/"
    readies = [asyncio.Event() for _ in range(count)]
    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(view(url, viewers_on.url, readies[i])))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # a few at a time: the server's accept queue is short
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 300)
    cpu = cpu_seconds(viewers_on.process.pid)
    async with httpx.AsyncClient(base_url=driver.url, cookies=cookies, timeout=120) as http:
        driven = await timed_post(http, chat["drive_url"], {"X-CSRFToken": cookies["csrftoken"]})
    results = await asyncio.wait_for(asyncio.gather(*tasks), 120)
    cpu = cpu_seconds(viewers_on.process.pid) - cpu
    final_at = next(at for at, length in driven["arrivals"] if length >= len(driven["text"]))
    connected = [r for r in results if r["text"] is not None]
    deltas = median([r["frames"] for r in connected])
    return {
        "connected": len(connected),
        "exact": sum(r["text"] == driven["text"] for r in connected),
        "lag_p95": percentile([r["last"] - final_at for r in connected], 0.95),
        "cpu_us_per_delta_per_viewer": cpu / max(1.0, deltas * len(connected)) * 1e6,
        "deltas": deltas,
        "cpu_seconds": cpu,
    }


async def idle_statements(driver: Daphne, viewers_on: Daphne, count: int, seconds: float) -> float:
    """Statements per second from the viewers' process while ``count`` viewers watch a
    stream that nothing drives."""
    _, chat = (await new_chats(driver.url, 1))[0]
    url = viewers_on.url.replace("http://", "ws://") + f"/ws/streams/{chat['stream_id']}/"
    readies = [asyncio.Event() for _ in range(count)]
    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(view(url, viewers_on.url, readies[i])))
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 300)
    async with httpx.AsyncClient(base_url=viewers_on.url, timeout=30) as http:
        before = (await http.get("/bench/statements/")).json()["statements"]
        started = time.monotonic()
        await asyncio.sleep(seconds)
        after = (await http.get("/bench/statements/")).json()["statements"]
        elapsed = time.monotonic() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # The two requests to /bench/statements/ make no statement of their own.
    return (after - before) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--v", type=int, nargs="+", default=[100, 1000, 2000])
    parser.add_argument("--tokens", type=int, default=500, help="tokens in the reply")
    parser.add_argument("--rate", type=float, default=100.0, help="tokens per second")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle watching")
    parser.add_argument("--smoke", action="store_true", help="seconds, for CI")
    args = parser.parse_args()
    if args.smoke:
        args.v, args.tokens, args.idle = [5], 50, 1.0
    database_url, redis_url = os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL")
    if not database_url.startswith(("postgres://", "postgresql://")) or not redis_url:
        sys.exit("bench.viewers needs DATABASE_URL (PostgreSQL) and REDIS_URL")
    model = ModelProcess(args.tokens, args.rate)
    rows = []
    try:
        with e2e_database(database_url) as url:
            env = model.server_env(
                redis_url, MAX_VIEWERS_PER_USER=None, MAX_VIEWERS_PER_ADDRESS=None
            )
            driver = Daphne(url, application=APP, **env)
            try:
                for count in args.v:
                    for mode, route in (("relay", "relay"), ("app", "streams")):
                        viewers_on = Daphne(url, application=APP, **env)
                        try:
                            row = asyncio.run(watch_and_drive(driver, viewers_on, route, count))
                        finally:
                            viewers_on.stop()
                        row.update(mode=mode, v=count)
                        if mode == "app":
                            viewers_on = Daphne(url, application=APP, **env)
                            try:
                                row["idle_statements_per_second"] = asyncio.run(
                                    idle_statements(driver, viewers_on, count, args.idle)
                                )
                            finally:
                                viewers_on.stop()
                        rows.append(row)
                        print(json.dumps(row))
            finally:
                driver.stop()
    finally:
        model.stop()
    for row in rows:
        base = next(r for r in rows if r["mode"] == "relay" and r["v"] == row["v"])
        row["cpu_ratio"] = row["cpu_us_per_delta_per_viewer"] / base["cpu_us_per_delta_per_viewer"]
    write(
        "viewers",
        smoke=args.smoke,
        parameters={"v": args.v, "tokens": args.tokens, "rate": args.rate, "idle": args.idle},
        summary=rows,
    )


if __name__ == "__main__":
    main()
