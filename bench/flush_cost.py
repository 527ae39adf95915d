"""What one flush costs a writer, with and without a PostgreSQL connection pool.

A writer's flushes run on its thread pool through ``run_db``, which closes the
connection after each call as Django does outside requests (``CONN_MAX_AGE``): without
a pool every flush opens a new connection. This times back-to-back flushes of one
stream (median and p95 per flush, and flushes per second) in two fresh processes on
the same database, one with ``DATABASE_POOL_SIZE=0`` (the baseline) and one with the
example's pool, and prints the ratios pooled / baseline.

    DATABASE_URL=postgres://... python -m bench.flush_cost [--flushes 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from bench.results import in_child, write


def measure(flushes: int) -> dict[str, float]:
    """In this process: ``flushes`` flushes of one stream, timed one by one."""
    import asyncio

    from bench import _django

    _django.migrate()
    from streaming_app.drive.flush import Batch
    from streaming_app.drive.persist import write_batch
    from streaming_app.drive.threads import in_writer_thread
    from streaming_app.streams import claim_stream, create_stream, delete_stream

    stream = create_stream()
    claim_stream(stream.pk)

    async def flush_all() -> list[float]:
        times, offset = [], 0
        for seq in range(flushes):
            text = f"Sentence number {seq} of the benchmark. "
            started = time.perf_counter()
            await in_writer_thread(write_batch)(stream.pk, Batch(seq=seq, offset=offset, text=text))
            times.append(time.perf_counter() - started)
            offset += len(text)
        return times

    try:
        times = sorted(asyncio.run(flush_all()))
    finally:
        delete_stream(stream.pk)
    return {
        "median": statistics.median(times),
        "p95": times[int(len(times) * 0.95)],
        "rate": len(times) / sum(times),
    }


def run(pool_size: str, flushes: int) -> dict[str, float]:
    return in_child("bench.flush_cost", str(flushes), pool_size=pool_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flushes", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="seconds, for CI")
    args = parser.parse_args()
    if args.smoke:
        args.flushes, args.repeats = 20, 1
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        raise SystemExit(
            "bench.flush_cost compares PostgreSQL pools: set DATABASE_URL=postgres://..."
        )
    results: dict[str, list[dict[str, float]]] = {"no pool (baseline)": [], "pool": []}
    for _ in range(args.repeats):
        results["no pool (baseline)"].append(run("0", args.flushes))
        results["pool"].append(run(os.environ.get("BENCH_POOL_SIZE", "20"), args.flushes))
    print(f"{args.flushes} flushes of one stream, median of {args.repeats} runs\n")
    print(f"{'':<20} {'median':>9} {'p95':>9} {'flushes/s':>10} {'vs baseline':>12}")
    base = statistics.median(r["median"] for r in results["no pool (baseline)"])
    summary = []
    for name, runs in results.items():
        median = statistics.median(r["median"] for r in runs)
        p95 = statistics.median(r["p95"] for r in runs)
        rate = statistics.median(r["rate"] for r in runs)
        print(
            f"{name:<20} {median * 1e3:7.2f}ms {p95 * 1e3:7.2f}ms {rate:10.0f} "
            f"{median / base:11.2f}x"
        )
        summary.append(
            {
                "connections": name,
                "median": median,
                "p95": p95,
                "rate": rate,
                "ratio": median / base,
            }
        )
    write(
        "flush_cost",
        smoke=args.smoke,
        parameters={"flushes": args.flushes, "repeats": args.repeats},
        summary=summary,
        raw=results,
    )


if __name__ == "__main__":
    main()
