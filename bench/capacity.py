"""How many live streams one server process carries, against a plain passthrough.

One server process of the example (daphne, or uvicorn with uvloop and httptools) on
PostgreSQL (its pool of 20) and Redis; an OpenAI-compatible model server in a process
of its own streams each reply at 50 tokens/s. N browsers drive a reply each, all at
once (N = 25, 50, 100, 200). The baseline, measured in the same run on the same kind
of server with the same SDK client: a plain passthrough view (the SDK's objects
iterated, each piece written, nothing persisted). Per N, for the passthrough, the
passthrough through streaming_app's OpenAI adapter alone, and the app:

- drives exact and persisted, and answers >= 500;
- p95 of each drive's duration / its ideal (tokens x 20 ms), and its ratio to the
  passthrough's;
- server CPU per token (the process's own CPU time over the drives);
- PostgreSQL connections the process holds (pg_stat_activity, sampled);
- the writers' transactions per second while every stream is live, as the process's
  committer counts them (one per tick), and the lag of a few websocket viewers.

The same at N = 100 with one transaction per stream and flush (FLUSH_TICK 0) is the
baseline of the tick.

    DATABASE_URL=postgres://... REDIS_URL=redis://... python -m bench.capacity [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.model import ModelProcess, pieces  # noqa: E402
from bench.results import median, percentile, write  # noqa: E402
from tests.servers import Daphne, Uvicorn, e2e_database, lag_percentiles, ws_watch  # noqa: E402

SERVERS = {"daphne": Daphne, "uvicorn": Uvicorn}
# The baseline (the SDK's objects, written as they come), the same through the
# adapter, and the app.
MODES = ("passthrough", "passthrough-raw", "app")


class Sampler:
    """PostgreSQL's view of one database while the benchmark runs: the most
    connections to it at once (open, and busy: running a statement or inside a
    transaction) since :meth:`reset`."""

    def __init__(self, database_url: str) -> None:
        prefix, _, self.name = database_url.rpartition("/")
        self.admin = psycopg.connect(f"{prefix}/postgres", autocommit=True)
        self.most = self.busiest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            row = self.admin.execute(
                "SELECT count(*), count(*) FILTER (WHERE state <> 'idle') "
                "FROM pg_stat_activity WHERE datname = %s",
                (self.name,),
            ).fetchone()
            if row:
                self.most = max(self.most, int(row[0]))
                self.busiest = max(self.busiest, int(row[1]))

    def reset(self) -> None:
        self.most = self.busiest = 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.admin.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def new_chats(base_url: str, count: int) -> list[tuple[httpx.Cookies, dict[str, Any]]]:
    """``count`` visitors, each with a chat whose reply is pending."""
    limit = asyncio.Semaphore(20)

    async def one(i: int) -> tuple[httpx.Cookies, dict[str, Any]]:
        async with limit, httpx.AsyncClient(base_url=base_url, timeout=60) as http:
            await http.get("/")
            token = http.cookies["csrftoken"]
            created = await http.post(
                "/api/chats/",
                content=json.dumps({"prompt": f"Question {i}"}),
                headers={"X-CSRFToken": token},
            )
            created.raise_for_status()
            return http.cookies, created.json()

    return await asyncio.gather(*(one(i) for i in range(count)))


async def timed_post(
    http: httpx.AsyncClient,
    path: str,
    headers: dict[str, str],
    on_first: Any = None,
) -> dict[str, Any]:
    started = time.monotonic()
    arrivals: list[tuple[float, int]] = []
    body = b""
    async with http.stream("POST", path, headers=headers) as response:
        async for data in response.aiter_raw():
            body += data
            arrivals.append((time.monotonic(), len(body.decode(errors="ignore"))))
            if len(arrivals) == 1 and on_first is not None:
                on_first()
    return {
        "status": response.status_code,
        "text": body.decode(errors="replace"),
        "started": started,
        "ended": time.monotonic(),
        "arrivals": arrivals,
    }


async def watch_lag(base_url: str, stream_id: str) -> list[tuple[float, int]]:
    return list((await ws_watch(base_url, stream_id))["arrivals"])


async def committer_transactions(http: httpx.AsyncClient) -> int:
    return int((await http.get("/bench/committer/")).json()["transactions"])


async def drive_all(
    server: Daphne, mode: str, chats: list[tuple[httpx.Cookies, dict[str, Any]]], args: Any
) -> dict[str, Any]:
    """Every drive at once (app: of ``chats``, made beforehand): the outcomes, the
    viewers' lags, and (app) the writers' transactions per second while every stream
    is live."""
    count = len(chats) if mode == "app" else args.current_n
    everyone = asyncio.Event()
    started = 0

    def on_first() -> None:
        nonlocal started
        started += 1
        if started == count:
            everyone.set()

    async with httpx.AsyncClient(
        base_url=server.url, timeout=300, limits=httpx.Limits(max_connections=None)
    ) as http:
        if mode != "app":
            outcomes = await asyncio.gather(
                *(timed_post(http, f"/bench/{mode}/", {}, on_first) for _ in range(count))
            )
            return {"outcomes": outcomes, "lags": [], "tps": None}

        async def drive(cookies: httpx.Cookies, chat: dict[str, Any]) -> dict[str, Any]:
            headers = {"X-CSRFToken": cookies["csrftoken"]}
            async with httpx.AsyncClient(
                base_url=server.url, cookies=cookies, timeout=300
            ) as client:
                outcome = await timed_post(client, chat["drive_url"], headers, on_first)
            outcome["stream_id"] = chat["stream_id"]
            return outcome

        watching = [
            asyncio.create_task(watch_lag(server.url, chat["stream_id"]))
            for _, chat in chats[: args.viewers]
        ]
        await asyncio.sleep(0.5)  # the viewers are in before the drives start
        drives = [asyncio.create_task(drive(cookies, chat)) for cookies, chat in chats]
        # The writers' transactions while every stream is live: from the last first
        # piece for `window` seconds, or to the first end.
        tps = None
        await asyncio.wait(
            [asyncio.ensure_future(everyone.wait()), *drives], return_when=asyncio.FIRST_COMPLETED
        )
        if everyone.is_set() and not any(d.done() for d in drives):
            before, since = await committer_transactions(http), time.monotonic()
            await asyncio.wait(drives, timeout=args.window, return_when=asyncio.FIRST_COMPLETED)
            tps = (await committer_transactions(http) - before) / (time.monotonic() - since)
        outcomes = await asyncio.gather(*drives)
        lags: list[float] = []
        for outcome, arrivals in zip(outcomes, await asyncio.gather(*watching), strict=False):
            lags += lag_percentiles(outcome["arrivals"], arrivals)
        return {"outcomes": outcomes, "lags": lags, "tps": tps}


def persisted(server: Daphne, outcomes: list[dict[str, Any]]) -> int:
    """How many drives' streams hold exactly what their driver received, finished."""
    good = 0
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for outcome in outcomes:
            deadline = time.monotonic() + 30
            while True:
                body = http.get(f"/api/streams/{outcome['stream_id']}/").json()
                if body["status"] not in ("pending", "streaming") or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            good += body["status"] == "done" and body["text"] == outcome["text"]
    return good


def one_run(
    kind: str, mode: str, count: int, database_url: str, env: dict[str, str], args: Any
) -> dict[str, Any]:
    expected = "".join(pieces(args.tokens))
    server = SERVERS[kind](database_url, **env)
    sampler = Sampler(database_url)
    try:
        # Warm the server up (imports, the SDK's client), and make the visitors' chats:
        # neither is part of what is measured.
        warm = asyncio.run(new_chats(server.url, 1))
        asyncio.run(
            drive_all(
                server,
                mode,
                warm,
                argparse.Namespace(**{**vars(args), "viewers": 0, "current_n": 1}),
            )
        )
        chats = asyncio.run(new_chats(server.url, count)) if mode == "app" else []
        args.current_n = count
        time.sleep(0.5)
        sampler.reset()  # the connections of the drives, not of making the chats
        cpu = cpu_seconds(server.process.pid)
        measured = asyncio.run(drive_all(server, mode, chats, args))
        cpu = cpu_seconds(server.process.pid) - cpu
        outcomes, lags = measured["outcomes"], measured["lags"]
        ok = [o for o in outcomes if o["status"] == 200]
        ideal = args.tokens / args.rate
        stretches = [(o["ended"] - o["started"]) / ideal for o in ok] or [float("nan")]
        row = {
            "server": kind,
            "mode": mode,
            "n": count,
            "flush_tick": json.loads(env["E2E_STREAMING_APP"]).get("FLUSH_TICK", 0.05),
            "exact": sum(o["text"] == expected for o in ok),
            "persisted": persisted(server, ok) if mode == "app" else None,
            "errors": sum(o["status"] >= 500 for o in outcomes),
            "refused": sum(o["status"] in (429, 503) for o in outcomes),
            "stretch_p95": percentile(stretches, 0.95),
            "stretch_median": median(stretches),
            "cpu_us_per_token": cpu / max(1, len(ok) * args.tokens) * 1e6,
            "connections": sampler.most,
            "busy_connections": sampler.busiest,
            "transactions_per_second": measured["tps"],
            "lag_p95": percentile(lags, 0.95) if lags else None,
        }
    finally:
        sampler.close()
        server.stop()
    return row


def full_speed(kind: str, database_url: str, env: dict[str, str], args: Any) -> dict[str, Any]:
    """One stream at a time, the model sending as fast as it can: the passthrough's
    duration over the app's (medians of ``args.repeats``)."""
    durations: dict[str, list[float]] = {}
    expected = "".join(pieces(args.full_tokens))
    for mode in ("passthrough", "app"):
        server = SERVERS[kind](database_url, **env)
        try:
            one = argparse.Namespace(**{**vars(args), "viewers": 0, "current_n": 1})
            asyncio.run(drive_all(server, mode, asyncio.run(new_chats(server.url, 1)), one))
            durations[mode] = []
            for _ in range(args.repeats):
                chats = asyncio.run(new_chats(server.url, 1)) if mode == "app" else []
                [outcome] = asyncio.run(drive_all(server, mode, chats, one))["outcomes"]
                assert outcome["text"] == expected, "not exact"
                durations[mode].append(outcome["ended"] - outcome["started"])
        finally:
            server.stop()
    passthrough, app = median(durations["passthrough"]), median(durations["app"])
    return {
        "server": kind,
        "tokens": args.full_tokens,
        "passthrough_seconds": passthrough,
        "app_seconds": app,
        "ratio": passthrough / app,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[25, 50, 100, 200])
    parser.add_argument("--servers", nargs="+", default=["daphne", "uvicorn"])
    parser.add_argument("--tokens", type=int, default=250, help="tokens in each reply")
    parser.add_argument("--rate", type=float, default=50.0, help="tokens per second")
    parser.add_argument("--viewers", type=int, default=10, help="streams watched, for lag")
    parser.add_argument("--window", type=float, default=2.0, help="seconds of counting")
    parser.add_argument("--tick-n", type=int, default=100)
    parser.add_argument("--full-tokens", type=int, default=5000, help="one stream at full speed")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="seconds, for CI")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.servers, args.tokens, args.viewers = [4], ["daphne"], 40, 2
        args.tick_n, args.window, args.full_tokens, args.repeats = 4, 0.3, 200, 1
    database_url, redis_url = os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL")
    if not database_url.startswith(("postgres://", "postgresql://")) or not redis_url:
        sys.exit("bench.capacity needs DATABASE_URL (PostgreSQL) and REDIS_URL")
    model = ModelProcess(args.tokens, args.rate)
    rows, ticks = [], []
    try:
        with e2e_database(database_url) as url:
            # The benchmark's own limits, not the defaults': it measures past them.
            limits = {"MAX_LIVE_STREAMS": None, "MAX_LIVE_STREAMS_PER_USER": None}
            env = model.server_env(redis_url, **limits)
            for kind in args.servers:
                for count in args.n:
                    for mode in MODES:
                        row = one_run(kind, mode, count, url, env, args)
                        rows.append(row)
                        print(json.dumps(row))
            # One transaction per stream and flush, as before the tick: the baseline.
            untick = model.server_env(redis_url, **limits, FLUSH_TICK=0)
            row = one_run(args.servers[0], "app", args.tick_n, url, untick, args)
            ticks.append(row)
            print(json.dumps(row))
        fast = ModelProcess(args.full_tokens, 0)
        try:
            with e2e_database(database_url) as url:
                env = fast.server_env(redis_url, **limits)
                full = [full_speed(kind, url, env, args) for kind in args.servers]
                print(json.dumps(full))
        finally:
            fast.stop()
    finally:
        model.stop()
    for row in rows:
        base = next(
            r
            for r in rows
            if r["mode"] == "passthrough" and (r["server"], r["n"]) == (row["server"], row["n"])
        )
        if row is not base:
            row["stretch_ratio"] = row["stretch_p95"] / base["stretch_p95"]
            row["cpu_ratio"] = row["cpu_us_per_token"] / base["cpu_us_per_token"]
    write(
        "capacity",
        smoke=args.smoke,
        parameters={
            "n": args.n,
            "servers": args.servers,
            "tokens": args.tokens,
            "rate": args.rate,
            "pool": 20,
            "viewers_for_lag": args.viewers,
        },
        summary=rows,
        raw={"ticks": ticks, "full_speed": full},
    )


if __name__ == "__main__":
    main()
