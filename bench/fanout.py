"""Fan-out across processes: channels-redis's two layers, compared.

Two daphne processes share Postgres and Redis. A stream is driven on the first (the
offline model, 100 pieces/s); VIEWERS websocket clients watch it on the second. For
each layer: viewer lag behind the driver (p50, p95 over every length the driver
reached, all viewers pooled), bytes received by a viewer per byte of body, and the
time for all viewers to connect; medians over repeats, and ratios against
RedisChannelLayer (the baseline) measured in the same run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/x REDIS_URL=redis://127.0.0.1:6379/0 \\
        python -m bench.fanout [--viewers 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import write  # noqa: E402
from tests.servers import (  # noqa: E402
    Browser,
    Daphne,
    drive_timed,
    e2e_database,
    lag_percentiles,
    ws_watch,
)


def one_run(a: Daphne, b: Daphne, viewers: int) -> dict[str, float]:
    browser = Browser(a.url)
    chat = browser.new_chat("Benchmark the fan-out")
    state: dict[str, Any] = {}

    async def watch_all() -> None:
        start = time.monotonic()
        tasks = [asyncio.create_task(ws_watch(b.url, chat["stream_id"])) for _ in range(viewers)]
        await asyncio.sleep(1.0)
        state["connect"] = time.monotonic() - start
        state["ready"] = True
        state["results"] = await asyncio.gather(*tasks)

    thread = threading.Thread(target=lambda: asyncio.run(watch_all()))
    thread.start()
    while "ready" not in state:
        time.sleep(0.01)
    text, driver = drive_timed(browser, chat, a.url)
    thread.join()
    browser.close()
    lags: list[float] = []
    for result in state["results"]:
        assert result["text"] == text, "a viewer's text differs from the driver's"
        lags += lag_percentiles(driver, result["arrivals"])
    lags.sort()
    body_bytes = len(text.encode())
    return {
        "p50": statistics.median(lags),
        "p95": lags[int(len(lags) * 0.95)],
        "bytes": statistics.median(r["payload"] for r in state["results"]) / body_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="seconds, for CI")
    args = parser.parse_args()
    if args.smoke:
        args.viewers, args.repeats = 3, 1
    database_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    if not (database_url and redis_url):
        sys.exit("set DATABASE_URL (Postgres) and REDIS_URL: the fan-out runs across processes")
    print(
        f"{args.viewers} viewers on one process, the driver on another, median of {args.repeats}\n"
    )
    rows = {}
    with e2e_database(database_url) as url:
        for flush, layer in itertools.product(("policy", "every"), ("core", "pubsub")):
            env = {
                "E2E_FLUSH": flush,
                "REDIS_URL": redis_url,
                "DEMO_MODEL_DELAY": "0.01",
                "DJANGO_SETTINGS_MODULE": "tests.e2e_settings",
                "E2E_CHANNEL_LAYER": layer,
            }
            a, b = Daphne(url, **env), Daphne(url, **env)
            try:
                runs = [one_run(a, b, args.viewers) for _ in range(args.repeats)]
            finally:
                a.stop()
                b.stop()
            rows[flush, layer] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    names = {"core": "RedisChannelLayer", "pubsub": "RedisPubSubChannelLayer"}
    print(
        f"{'flushes':<14} {'layer':<24} {'lag p50':>9} {'ratio':>6} {'lag p95':>9} {'ratio':>6} {'bytes/byte':>11}"
    )
    summary = []
    for (flush, layer), row in rows.items():
        base = rows[flush, "core"]
        print(
            f"{flush:<14} {names[layer]:<24} {row['p50'] * 1000:7.1f}ms {row['p50'] / base['p50']:6.2f} "
            f"{row['p95'] * 1000:7.1f}ms {row['p95'] / base['p95']:6.2f} {row['bytes']:11.2f}"
        )
        summary.append(
            {
                "flushes": "every piece" if flush == "every" else "default policy",
                "layer": names[layer],
                "lag_p50": row["p50"],
                "p50_ratio": row["p50"] / base["p50"],
                "lag_p95": row["p95"],
                "p95_ratio": row["p95"] / base["p95"],
                "bytes_per_body_byte": row["bytes"],
            }
        )
    write(
        "fanout",
        smoke=args.smoke,
        parameters={"viewers": args.viewers, "repeats": args.repeats, "pieces_per_second": 100},
        summary=summary,
    )


if __name__ == "__main__":
    main()
