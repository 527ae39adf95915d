"""PostgreSQL connections a process's writers open without a connection pool.

N streams are driven at once in one process (each a model that starts at a random
moment within a second and sends a word every 20 ms, a sentence every 12 words, for a few seconds) on PostgreSQL with
``CONN_MAX_AGE = 0`` and no pool, as startproject leaves it. Counted while they are
live: the connections Django opens (``connection_created``) and the committer's
transactions. Each transaction of the writers runs in a thread that closes its
connection after it, so connections opened = transactions; and transactions are one
per tick at most (``FLUSH_TICK``), whatever N.

    DATABASE_URL=postgres://... python -m bench.connections [--streams 1 10 50] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections.abc import AsyncIterator

from bench import _django

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "away"]


async def drive(streams: int, seconds: float) -> dict[str, float]:
    from asgiref.sync import sync_to_async
    from django.db.backends.signals import connection_created

    from streaming_app.run import StreamRun
    from streaming_app.streams import claim_stream, create_stream
    from streaming_app.writer import committer

    def make() -> list[str]:
        ids = []
        for _ in range(streams):
            stream = create_stream()
            claim_stream(stream.pk)
            ids.append(str(stream.pk))
        return ids

    ids = await sync_to_async(make)()
    opened = 0

    def count(**kwargs: object) -> None:
        nonlocal opened
        opened += 1

    async def model() -> AsyncIterator[str]:
        # Started at random moments within a second, as requests come.
        await asyncio.sleep(random.random())
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            i += 1
            yield WORDS[i % len(WORDS)] + ("." if i % 12 == 0 else "") + " "
            await asyncio.sleep(0.02)

    connection_created.connect(count, weak=False)
    before = committer().transactions
    started = time.monotonic()
    try:
        runs = [StreamRun(pk, model()) for pk in ids]
        await asyncio.gather(*(run.start() for run in runs))
    finally:
        connection_created.disconnect(count)
    elapsed = time.monotonic() - started
    transactions = committer().transactions - before
    return {
        "streams": streams,
        "seconds": elapsed,
        "connections": opened,
        "connections_per_s": opened / elapsed,
        "transactions_per_s": transactions / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        raise SystemExit(
            "bench.connections counts PostgreSQL connections: DATABASE_URL=postgres://"
        )
    _django.migrate()
    from django.conf import settings

    database = settings.DATABASES["default"]
    print(
        f"pool: {bool((database.get('OPTIONS') or {}).get('pool'))}, "
        f"CONN_MAX_AGE: {database.get('CONN_MAX_AGE')}\n"
    )
    print(f"{'streams':>7} {'seconds':>8} {'connections':>12} {'conn/s':>7} {'transactions/s':>15}")
    for n in args.streams:
        r = asyncio.run(drive(n, args.seconds))
        print(
            f"{n:>7} {r['seconds']:8.1f} {r['connections']:>12} {r['connections_per_s']:7.1f} "
            f"{r['transactions_per_s']:15.1f}"
        )


if __name__ == "__main__":
    main()
