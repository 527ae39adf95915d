"""How the flush policy trades database transactions for viewer lag.

One stream at 100 pieces/s (LLM-like text: sentences, list items, code blocks) for a few
seconds, under several policies. For each: transactions per second and the lag from a
piece's production to the commit that holds it (what a viewer waits), as medians over
repeats, and as ratios against the baseline that flushes every piece.

    DATABASE_URL=postgres://... python -m bench.flush_policy [--seconds 5] [--repeats 3]

Without DATABASE_URL it uses a fresh SQLite file. The database is migrated first. The
process's tick (FLUSH_TICK) is off: this measures one stream's policy.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator

from django.test import override_settings

from bench import _django
from bench.results import write
from bench.text import llm_like_pieces
from streaming_app.drive.flush import FlushPolicy
from streaming_app.drive.run import StreamRun
from streaming_app.fanout.publish import publisher
from streaming_app.signals import stream_committed
from streaming_app.streams import aclaim_stream, acreate_stream

POLICIES = {
    "every piece (baseline)": FlushPolicy(min_interval=0, max_interval=0, max_chars=1),
    "0.1 s / 0.25 s": FlushPolicy(min_interval=0.1, max_interval=0.25, max_chars=4096),
    "0.25 s / 0.5 s (default)": FlushPolicy.from_settings(),
    "0.5 s / 1 s": FlushPolicy(min_interval=0.5, max_interval=1.0, max_chars=4096),
    "1 s / 2 s": FlushPolicy(min_interval=1.0, max_interval=2.0, max_chars=4096),
}


async def one_run(policy: FlushPolicy, seconds: float) -> tuple[float, list[float]]:
    pieces = llm_like_pieces(int(seconds * 100), seed=int(time.time()))
    produced: list[tuple[int, float]] = []
    commits: list[tuple[int, float]] = []

    async def on_commit(
        sender: object, *, stream_id: object, offset: int, text: str, **kwargs: object
    ) -> None:
        if stream_id == stream.pk and text:
            commits.append((offset + len(text), time.monotonic()))

    async def source() -> AsyncIterator[str]:
        start, end = time.monotonic(), 0
        for i, piece in enumerate(pieces):
            await asyncio.sleep(max(0.0, start + i / 100 - time.monotonic()))
            end += len(piece)
            produced.append((end, time.monotonic()))
            yield piece

    stream = await acreate_stream()
    await aclaim_stream(stream.pk)
    stream_committed.connect(on_commit, weak=False)
    try:
        started = time.monotonic()
        run = StreamRun(stream.pk, source(), policy=policy)
        run.start()
        await run.wait()
        elapsed = time.monotonic() - started
        await publisher().drain()  # the last commits' signals
    finally:
        stream_committed.disconnect(on_commit)
    lags = []
    for end, at in produced:
        committed = next(t for e, t in commits if e >= end)
        lags.append(committed - at)
    return len(commits) / elapsed, sorted(lags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="seconds, for CI")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.repeats = 0.5, 1
    vendor = _django.migrate()
    print(f"{vendor}, 100 pieces/s for {args.seconds:g} s, median of {args.repeats} runs\n")
    rows = []
    for name, policy in POLICIES.items():
        rates, p50s, p95s = [], [], []
        for _ in range(args.repeats):
            # One stream's policy, alone: no process tick between its flushes.
            with override_settings(STREAMING_APP={"FLUSH_TICK": 0}):
                rate, lags = asyncio.run(one_run(policy, args.seconds))
            rates.append(rate)
            p50s.append(statistics.median(lags))
            p95s.append(lags[int(len(lags) * 0.95)])
        rows.append(
            (name, statistics.median(rates), statistics.median(p50s), statistics.median(p95s))
        )
    base_rate = rows[0][1]
    print(f"{'policy':<26} {'tx/s':>6} {'vs baseline':>12} {'lag p50':>9} {'lag p95':>9}")
    for name, rate, p50, p95 in rows:
        print(
            f"{name:<26} {rate:6.2f} {rate / base_rate:11.3f}x "
            f"{p50 * 1000:7.0f}ms {p95 * 1000:7.0f}ms"
        )
    write(
        f"flush_policy_{vendor}",
        smoke=args.smoke,
        parameters={
            "database": vendor,
            "pieces_per_second": 100,
            "seconds": args.seconds,
            "repeats": args.repeats,
        },
        summary=[
            {
                "policy": name,
                "transactions_per_second": rate,
                "ratio": rate / base_rate,
                "lag_p50": p50,
                "lag_p95": p95,
            }
            for name, rate, p50, p95 in rows
        ],
    )


if __name__ == "__main__":
    main()
