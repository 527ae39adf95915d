"""What compacting finished streams (COMPACT_FINISHED) does to storage and reads.

Finished streams as the writer left them (one chunk per flush) against the same
streams compacted into one chunk each: the space the chunks take (table, TOAST and
indexes on PostgreSQL; the file after VACUUM on SQLite) and the time to read a body
whole and from its middle (medians over many reads), with the ratios compacted / as
written.

    DATABASE_URL=postgres://... python -m bench.compaction [--chunks 60 600] [--reads 300]

Without DATABASE_URL it uses a fresh SQLite file. The database is migrated first.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from django.db import connection
from django.test import override_settings

from bench import _django
from bench.results import write
from bench.text import llm_like_pieces
from streaming_app.models import Chunk, Status, Stream
from streaming_app.streams import (
    compact_finished_streams,
    compact_stream,
    delete_stream,
    get_stream_body,
)
from tests.helpers import written


def median_read(stream_id: object, offset: int, reads: int) -> float:
    times = []
    for _ in range(reads):
        started = time.perf_counter()
        get_stream_body(stream_id, offset)  # type: ignore[arg-type]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def chunk_bytes() -> int:
    """The space the chunks take on disk."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("VACUUM FULL streaming_app_chunk")
            cursor.execute("SELECT pg_total_relation_size('streaming_app_chunk')")
        else:
            cursor.execute("VACUUM")
            cursor.execute(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
            )
        return int(cursor.fetchone()[0])


# The chunks as a writer leaves them when streams are not merged as they end.
AS_WRITTEN = override_settings(STREAMING_APP={"COMPACT_FINISHED": False})


def storage(chunk_counts: list[int], streams: int) -> dict[str, Any]:
    if Chunk.objects.exists():
        raise SystemExit(
            "bench.compaction measures the chunk table's size and deletes what it wrote: "
            "point DATABASE_URL at a database with no streams in it"
        )
    empty = chunk_bytes()
    with AS_WRITTEN:
        ours = [
            written(text_in(count, seed=i), status=Status.DONE).pk
            for count in chunk_counts
            for i in range(streams)
        ]
    before = chunk_bytes() - empty
    compact_finished_streams()
    after = chunk_bytes() - empty
    chars = sum(len(text) for text in Chunk.objects.values_list("text", flat=True))
    print(
        f"storage of {streams} streams each of {', '.join(map(str, chunk_counts))} chunks "
        f"({chars} characters): {before / 1024:.0f} KiB as written, "
        f"{after / 1024:.0f} KiB compacted, {after / max(before, 1):.2f}x\n"
    )
    Stream.objects.filter(pk__in=ours).delete()
    return {
        "characters": chars,
        "as_written": before,
        "compacted": after,
        "ratio": after / before if before else None,
    }


def text_in(count: int, seed: int) -> list[str]:
    """About one flush of LLM-like text per chunk (the default policy: 2 to 4 a second)."""
    pieces = llm_like_pieces(count * 25, seed=seed)
    return ["".join(pieces[i : i + 25]) for i in range(0, len(pieces), 25)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[60, 600])
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="seconds, for CI")
    args = parser.parse_args()
    if args.smoke:
        args.chunks, args.reads, args.streams = [20], 5, 5
    vendor = _django.migrate()
    print(f"{vendor}\n")
    space = storage(args.chunks, args.streams)
    reads: list[dict[str, Any]] = []
    print(f"reads, median of {args.reads}:")
    print(
        f"{'chunks':>6} {'chars':>7} {'read':>6} {'as written':>11} {'compacted':>10} {'ratio':>6}"
    )
    for count in args.chunks:
        chunks = text_in(count, seed=count)
        with AS_WRITTEN:
            stream = written(chunks, status=Status.DONE)
        try:
            for name, offset in (("whole", 0), ("middle", stream.length // 2)):
                before = median_read(stream.pk, offset, args.reads)
                compact_stream(stream.pk)
                after = median_read(stream.pk, offset, args.reads)
                print(
                    f"{count:6d} {stream.length:7d} {name:>6} {before * 1e3:9.3f}ms "
                    f"{after * 1e3:8.3f}ms {after / before:5.2f}x"
                )
                reads.append(
                    {
                        "chunks": count,
                        "characters": stream.length,
                        "read": name,
                        "as_written": before,
                        "compacted": after,
                        "ratio": after / before,
                    }
                )
                if name == "whole":
                    delete_stream(stream.pk)
                    with AS_WRITTEN:
                        stream = written(chunks, status=Status.DONE)
        finally:
            delete_stream(stream.pk)
    write(
        f"compaction_{vendor}",
        smoke=args.smoke,
        parameters={
            "database": vendor,
            "chunks": args.chunks,
            "streams": args.streams,
            "reads": args.reads,
        },
        summary=reads,
        raw={"storage": space},
    )


if __name__ == "__main__":
    main()
