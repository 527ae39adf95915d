"""What clients that stop reading cost a server process: its memory, per server.

One reply of --size characters (10 MB), generated fast (an OpenAI stand-in in this
process sends it in pieces of 10,000 characters), on one server process of the example
(uvicorn, daphne). Against it, --n clients that stop reading: real TCP clients with a
tiny receive buffer (set before connecting, tests/slow.py) that send their request or
do the websocket handshake and then read nothing. The same-run baseline is --n
clients that read everything. Per server, each case in a fresh process:

- *reading*: --n websocket viewers that read to the end, acknowledging (the baseline);
- *stalled, acking*: --n websocket viewers on ``?ack=1`` that stop reading (and so
  acknowledging): the protocol's window;
- *stalled, legacy*: --n websocket viewers without acks that stop reading;
- *stalled, legacy, limited*: the same with ``LIMIT_UNACKED_VIEWERS``;
- *stalled SSE* (and *limited*): --n Server-Sent Events requests that stop reading;
- *stalled driver*: the drive's own response, never read (live only: one driver).

*live*: the clients come before the reply is driven; *finished*: they read the finished
reply from offset 0. The figure is the server's resident memory (VmRSS of
/proc/<pid>/status), the median of samples taken every 0.1 s for --settle seconds once
the reply has ended, next to the idle process's before the clients came.

    DATABASE_URL=postgres://... python -m bench.slow_readers [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import write  # noqa: E402
from tests.servers import Browser, Daphne, FakeOpenAI, Uvicorn, e2e_database  # noqa: E402
from tests.slow import SlowWebsocket, stalled_request  # noqa: E402

SERVERS = {"uvicorn": Uvicorn, "daphne": Daphne}
PIECE = 10_000
Case = tuple[str, str, dict[str, Any]]
CASES: tuple[Case, ...] = (
    # name, client, settings over the example's
    ("reading", "read", {}),
    ("stalled, acking", "ack", {}),
    ("stalled, legacy", "legacy", {}),
    ("stalled, legacy, limited", "legacy", {"LIMIT_UNACKED_VIEWERS": True}),
    ("stalled SSE", "sse", {}),
    ("stalled SSE, limited", "sse", {"LIMIT_UNACKED_VIEWERS": True}),
    ("stalled driver", "driver", {}),
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def pieces(size: int) -> list[str]:
    """The reply: numbered lines, so that any gap or overlap shows."""
    return [f"{i:08d}:" + "x" * (PIECE - 10) + "\n" for i in range(size // PIECE)]


def server_env(fake: FakeOpenAI, size: int, **streaming_app: Any) -> dict[str, str]:
    settings = {
        "MAX_LENGTH": size + PIECE,
        "MAX_VIEWERS_PER_USER": None,
        "MAX_VIEWERS_PER_ADDRESS": None,
        **streaming_app,
    }
    return {
        "OPENAI_API_KEY": "sk-bench",
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_MODEL": "bench",
        # The fake model honours the example's output cap, a piece a token.
        "CHAT_MAX_OUTPUT_TOKENS": "1000000",
        "E2E_STREAMING_APP": json.dumps(settings),
    }


async def finished(base_url: str, stream_id: str, size: int, patience: float = 300) -> None:
    """Until the stream has ended with all ``size`` characters (read from its end, so
    that polling costs nothing)."""
    deadline = time.monotonic() + patience
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        while time.monotonic() < deadline:
            body = (await http.get(f"/api/streams/{stream_id}/", params={"offset": size})).json()
            if body.get("status") not in ("pending", "streaming"):
                assert body["length"] == size, body
                return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"stream {stream_id} did not end in {patience}s")


async def reader(url: str, origin: str) -> int:
    """A websocket viewer that reads to the end, acknowledging as client.js does: the
    length of its text. (Without acks, daphne queues so much ahead of its pings to a
    reader slower than the server that it drops the connection for a missed pong.)"""
    viewer = await SlowWebsocket.open(f"{url}&ack=1", origin=origin, rcvbuf=1 << 20)
    await viewer.read(acks=True)
    assert viewer.statuses[-1] == "done", viewer.statuses
    return viewer.length


async def open_clients(
    client: str, count: int, server: Daphne, browser: Browser, chat: dict[str, Any]
) -> tuple[list[Any], list[asyncio.Task[int]]]:
    """``count`` clients of the chat's stream: stalled sockets, or reading tasks."""
    stream = chat["stream_id"]
    ws = server.url.replace("http://", "ws://") + f"/ws/streams/{stream}/?offset=0"
    host = f"Host: 127.0.0.1:{server.port}"
    if client == "read":
        tasks = [asyncio.create_task(reader(ws, server.url)) for _ in range(count)]
        return [], tasks
    if client in ("ack", "legacy"):
        query = "&ack=1" if client == "ack" else ""
        return [await SlowWebsocket.open(ws + query, origin=server.url) for _ in range(count)], []
    if client == "sse":
        head = f"GET /api/streams/{stream}/events/ HTTP/1.1\n{host}"
        return [await stalled_request(server.url, head) for _ in range(count)], []
    cookies = "; ".join(f"{k}={v}" for k, v in browser.http.cookies.items())
    head = (
        f"POST {chat['drive_url']} HTTP/1.1\n{host}\nCookie: {cookies}\n"
        f"X-CSRFToken: {browser.http.cookies['csrftoken']}"
    )
    return [await stalled_request(server.url, head, b" ")], []


async def measure(
    kind: type[Daphne],
    database_url: str,
    fake: FakeOpenAI,
    case: Case,
    args: argparse.Namespace,
    stream: dict[str, Any] | None,
) -> dict[str, Any]:
    """One case on a fresh server process. ``stream``: a finished chat to read from 0,
    else a new chat is driven."""
    name, client, settings = case
    server = kind(database_url, **server_env(fake, args.size, **settings))
    browser = Browser(server.url)
    sockets: list[Any] = []
    try:
        idle = rss_mb(server.process.pid)
        chat = stream or browser.new_chat("Everything, please")
        count = 1 if client == "driver" else args.n
        sockets, tasks = await open_clients(client, count, server, browser, chat)
        started = time.monotonic()
        if stream is None and client != "driver":
            driven = await asyncio.to_thread(browser.drive, chat)
            assert driven.status_code == 200 and len(driven.text) == args.size
        await finished(server.url, chat["stream_id"], args.size)
        lengths = await asyncio.wait_for(asyncio.gather(*tasks), 600)
        assert all(length == args.size for length in lengths), "a reader's text is not whole"
        ended = time.monotonic() - started
        samples = []
        for _ in range(int(args.settle * 10)):
            samples.append(rss_mb(server.process.pid))
            await asyncio.sleep(0.1)
        return {
            "server": kind.name,
            "stream": "finished" if stream else "live",
            "case": name,
            "clients": count,
            "idle_rss_mb": idle,
            "rss_mb": statistics.median(samples),
            "rss_peak_mb": max(samples),
            "seconds": ended,
        }
    finally:
        for sock in sockets:
            (sock.sock if isinstance(sock, SlowWebsocket) else sock).close()
        browser.close()
        server.stop()


def compare(rows: list[dict[str, Any]]) -> None:
    """Each row's memory against the reading viewers' of its server and reply: the
    ratio, and the difference per client (none for the driver: one connection, and no
    viewers)."""
    for row in rows:
        base = next(
            r
            for r in rows
            if (r["server"], r["stream"], r["case"]) == (row["server"], row["stream"], "reading")
        )
        comparable = row["clients"] == base["clients"]
        row["ratio"] = row["rss_mb"] / base["rss_mb"] if comparable else None
        row["extra_mb_per_client"] = (
            (row["rss_mb"] - base["rss_mb"]) / row["clients"] if comparable else None
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10_000_000, help="characters")
    parser.add_argument("--n", type=int, default=50, help="clients per case")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of samples")
    parser.add_argument("--server", nargs="+", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument("--smoke", action="store_true", help="seconds, for CI")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.n, args.settle, args.server = 500_000, 3, 0.5, ["uvicorn", "daphne"]
    fake = FakeOpenAI(pieces(args.size))
    rows = []
    try:
        with e2e_database(os.environ.get("DATABASE_URL") or "sqlite:///unused") as url:
            # The finished reply that the finished cases read from offset 0.
            first = Uvicorn(url, **server_env(fake, args.size))
            try:
                browser = Browser(first.url)
                done = browser.new_chat("Everything, please")
                assert len(browser.drive(done).text) == args.size
                asyncio.run(finished(first.url, done["stream_id"], args.size))
                browser.close()
            finally:
                first.stop()
            for server in args.server:
                for stream in (None, done):
                    for case in CASES:
                        if stream is not None and case[1] == "driver":
                            continue
                        row = asyncio.run(measure(SERVERS[server], url, fake, case, args, stream))
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    finally:
        fake.close()
    compare(rows)
    write(
        "slow_readers",
        smoke=args.smoke,
        parameters={"size": args.size, "n": args.n, "settle": args.settle},
        summary=rows,
    )


if __name__ == "__main__":
    main()
