"""PostgreSQL connections a process's writers open, without a connection pool and with one.

N streams are driven at once in one process (each a model that starts at a random
moment within a second and sends a word every 20 ms, a sentence every 12 words, for
--seconds) on PostgreSQL with ``CONN_MAX_AGE = 0``. Each transaction of the writers runs
in a thread that closes its connection after it: without a pool (as startproject leaves
it, ``DATABASE_POOL_SIZE=0``) that connection is a new one, so connections opened =
transactions, and transactions are one per tick at most (``FLUSH_TICK``) whatever N. The
same-run baseline is the example's pool (``min_size`` 2): it opens its connections once,
when the process first connects, and none while the streams are live.

Counted by the server (``pg_stat_database.sessions`` of the process's own scratch
database): the connections opened while the streams were live, and by the process in
all; and the committer's transactions. Each (N, pool or not) runs in a fresh process,
--repeats times; the summary holds the medians, connections a second over the ceiling
``1 / FLUSH_TICK``, and connections per transaction.

    DATABASE_URL=postgres://... python -m bench.connections [--streams 1 10 50 200]
        [--seconds 4] [--repeats 3] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

from bench.results import in_child, write

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "away"]
MODES = {"no pool": "0", "pool (baseline)": os.environ.get("BENCH_POOL_SIZE", "20")}


def measure(streams: int, seconds: float) -> dict[str, float]:
    """In this process (on a scratch database of its own): drive ``streams`` streams
    at once and count the connections the server saw opened."""
    import asyncio
    import random

    import psycopg

    from bench import _django

    _django.migrate()
    from django.db import connections

    from streaming_app import conf
    from streaming_app.drive.committer import committer
    from streaming_app.drive.run import StreamRun
    from streaming_app.streams import claim_stream, create_stream

    prefix, _, name = os.environ["DATABASE_URL"].rpartition("/")
    admin = psycopg.connect(f"{prefix}/postgres", autocommit=True)

    def sessions() -> int:
        admin.execute("SELECT pg_stat_clear_snapshot()")
        row = admin.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", [name]
        ).fetchone()
        assert row is not None
        return int(row[0])

    ids = []
    for _ in range(streams):
        stream = create_stream()
        claim_stream(stream.pk)
        ids.append(stream.pk)
    connections.close_all()

    async def model() -> AsyncIterator[str]:
        # Started at random moments within a second, as requests come.
        await asyncio.sleep(random.random())
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            i += 1
            yield WORDS[i % len(WORDS)] + ("." if i % 12 == 0 else "") + " "
            await asyncio.sleep(0.02)

    async def drive() -> tuple[float, int]:
        before = committer().transactions
        started = time.monotonic()
        await asyncio.gather(*(StreamRun(pk, model()).start() for pk in ids))
        return time.monotonic() - started, committer().transactions - before

    opened_before = sessions()
    elapsed, transactions = asyncio.run(drive())
    opened = sessions() - opened_before
    return {
        "seconds": elapsed,
        "connections": opened,
        "connections_per_second": opened / elapsed,
        "transactions": transactions,
        "transactions_per_second": transactions / elapsed,
        "process_connections": sessions(),
        "flush_tick": float(conf.get("FLUSH_TICK")),
    }


def run(pool_size: str, streams: int, seconds: float) -> dict[str, float]:
    return in_child("bench.connections", str(streams), str(seconds), pool_size=pool_size)


def summarise(streams: int, mode: str, runs: list[dict[str, float]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    tick = runs[0]["flush_tick"]
    ceiling = 1 / tick if tick > 0 else None
    rate = med("connections_per_second")
    return {
        "n": streams,
        "mode": mode,
        "connections": med("connections"),
        "connections_per_second": rate,
        "ceiling": ceiling,
        "ceiling_ratio": rate / ceiling if ceiling else None,
        "transactions_per_second": med("transactions_per_second"),
        "per_transaction": med("connections") / med("transactions")
        if med("transactions")
        else None,
        "process_connections": med("process_connections"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 10, 50, 200])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="seconds, for CI")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(int(args.child[0]), float(args.child[1]))))
        return
    if args.smoke:
        args.streams, args.seconds, args.repeats = [1, 10], 0.5, 1
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        raise SystemExit(
            "bench.connections counts PostgreSQL connections: set DATABASE_URL=postgres://..."
        )
    raw: dict[str, dict[str, list[dict[str, float]]]] = {}
    summary = []
    print(f"{args.seconds} s of streaming per stream, median of {args.repeats} runs\n")
    print(
        f"{'N':>4} {'':<16} {'opened':>7} {'conn/s':>7} {'÷ ceiling':>10} {'tx/s':>6} "
        f"{'conn/tx':>8} {'in all':>7}"
    )
    for n in args.streams:
        raw[str(n)] = {mode: [] for mode in MODES}
        for _ in range(args.repeats):
            for mode, pool_size in MODES.items():
                raw[str(n)][mode].append(run(pool_size, n, args.seconds))
        for mode in MODES:
            row = summarise(n, mode, raw[str(n)][mode])
            summary.append(row)
            share = row["ceiling_ratio"]
            print(
                f"{n:>4} {mode:<16} {row['connections']:>7.0f} "
                f"{row['connections_per_second']:>7.1f} "
                f"{'—' if share is None else f'{share:.2f}x':>10} "
                f"{row['transactions_per_second']:>6.1f} {row['per_transaction'] or 0:>8.2f} "
                f"{row['process_connections']:>7.0f}"
            )
    write(
        "connections",
        smoke=args.smoke,
        parameters={
            "streams": args.streams,
            "seconds": args.seconds,
            "repeats": args.repeats,
            "pool_size": MODES["pool (baseline)"],
        },
        summary=summary,
        raw=raw,
    )


if __name__ == "__main__":
    main()
