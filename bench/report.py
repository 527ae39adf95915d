"""Write docs/benchmarks.md (tables, and plots in docs/img/) from bench/results/*.json.

    python -m bench.report [--results bench/results] [--out docs/benchmarks.md]

Nothing in docs/benchmarks.md is written by hand: run the benchmarks (``make bench``),
then this.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

Row = dict[str, Any]
Column = tuple[str, str, Callable[[Any], str]]


def ms(value: Any) -> str:
    return "—" if value is None else f"{value * 1000:.0f} ms"


def ratio(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}×"


def number(digits: int = 0) -> Callable[[Any], str]:
    return lambda value: "—" if value is None else f"{value:,.{digits}f}"


def text(value: Any) -> str:
    return "—" if value is None else str(value)


def table(rows: Sequence[Row], columns: Sequence[Column]) -> str:
    head = "| " + " | ".join(title for title, _, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = [
        "| " + " | ".join(show(row.get(key)) for _, key, show in columns) + " |" for row in rows
    ]
    return "\n".join([head, rule, *body])


def provenance(result: dict[str, Any]) -> str:
    machine = result["machine"]
    parameters = ", ".join(f"{key} {value}" for key, value in result["parameters"].items())
    return (
        f"*{result['date'][:10]}, {machine['cpus']} CPUs ({machine['cpu'] or 'unknown'}), "
        f"Python {machine['python']}; {parameters}. "
        f"Raw figures: `bench/results/{result['benchmark']}.json`.*"
    )


def plot(
    path: Path, title: str, panels: list[tuple[str, dict[str, tuple[list[Any], list[Any]]]]]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8))
    for axis, (ylabel, lines) in zip(
        figure.axes if len(panels) > 1 else [axes], panels, strict=True
    ):
        for label, (xs, ys) in lines.items():
            axis.plot(xs, ys, marker="o", label=label)
        axis.set_xlabel(title)
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def capacity(result: dict[str, Any], images: Path) -> str:
    rows = sorted(result["summary"], key=lambda r: (r["server"], r["n"], r["mode"]))
    for row in rows:
        busy = row.get("busy_connections")
        row["connections_shown"] = f"{row['connections']}" + (
            f" ({busy})" if busy is not None else ""
        )
    out = [
        "## Capacity: live streams on one process (`bench/capacity.py`)",
        "",
        provenance(result),
        "",
        "N drives at once at 50 tokens/s, on one server process with a pool of 20 "
        "PostgreSQL connections. *passthrough* is the same-run baseline: a plain view "
        "that iterates the `openai` SDK's objects and writes each piece, nothing persisted; "
        "*passthrough-raw* is the same through streaming_app's OpenAI adapter; *app* is "
        "the example's chat (claim, persist, publish). Stretch: a drive's duration over "
        "its ideal (tokens × 20 ms); ratios are to the passthrough's at the same N. "
        "PostgreSQL connections: open to the database at the most while the drives ran "
        "(the pool keeps them), and in brackets busy at once (running a statement or in "
        "a transaction).",
        "",
        table(
            rows,
            [
                ("server", "server", text),
                ("N", "n", number()),
                ("mode", "mode", text),
                ("exact", "exact", number()),
                ("persisted", "persisted", text),
                ("≥ 500", "errors", number()),
                ("stretch p95", "stretch_p95", number(2)),
                ("ratio", "stretch_ratio", ratio),
                ("CPU µs/token", "cpu_us_per_token", number()),
                ("ratio", "cpu_ratio", ratio),
                ("PG connections (busy)", "connections_shown", text),
                ("writer tx/s", "transactions_per_second", number(1)),
                ("viewer lag p95", "lag_p95", ms),
            ],
        ),
    ]
    ticks = (result.get("raw") or {}).get("ticks") or []
    if ticks:
        ticked = [r for r in rows if r["mode"] == "app" and r["n"] == ticks[0]["n"]]
        out += [
            "",
            "The process's tick (`FLUSH_TICK`, 0.05 s: at most 20 transactions a "
            "second) against none (`FLUSH_TICK` 0), same N. Without the tick the "
            "committer still commits together the flushes due while its previous "
            "transaction ran, so a busy process batches anyway; one transaction per "
            "stream and flush, as each stream's own writer made them before the "
            "committer, is about 2.6 × N a second.",
            "",
            table(
                [*ticks, *ticked[:1]],
                [
                    ("FLUSH_TICK", "flush_tick", text),
                    ("N", "n", number()),
                    ("writer tx/s", "transactions_per_second", number(1)),
                    ("viewer lag p95", "lag_p95", ms),
                    ("exact", "exact", number()),
                ],
            ),
        ]
    panels: list[tuple[str, dict[str, tuple[list[Any], list[Any]]]]] = []
    for ylabel, key in (
        ("stretch p95", "stretch_p95"),
        ("server CPU µs per token", "cpu_us_per_token"),
    ):
        lines = {}
        for server in sorted({r["server"] for r in rows}):
            for mode in ("passthrough", "passthrough-raw", "app"):
                points = [r for r in rows if (r["server"], r["mode"]) == (server, mode)]
                if points:
                    lines[f"{server} {mode}"] = ([r["n"] for r in points], [r[key] for r in points])
        panels.append((ylabel, lines))
    plot(images / "capacity.png", "N live streams", panels)
    out += ["", "![Stretch and CPU per token against N](img/capacity.png)"]
    return "\n".join(out)


def viewers(result: dict[str, Any], images: Path) -> str:
    rows = sorted(result["summary"], key=lambda r: (r["v"], r["mode"]))
    panels = []
    for ylabel, key in (
        ("CPU µs per delta per viewer", "cpu_us_per_delta_per_viewer"),
        ("last character lag p95 (s)", "lag_p95"),
    ):
        lines = {}
        for mode in ("relay", "app"):
            points = [r for r in rows if r["mode"] == mode]
            lines[mode] = ([r["v"] for r in points], [r[key] for r in points])
        panels.append((ylabel, lines))
    plot(images / "viewers.png", "V viewers of one stream", panels)
    return "\n".join(
        [
            "## Viewers: one stream, many viewers on one process (`bench/viewers.py`)",
            "",
            provenance(result),
            "",
            "The driver on one daphne process, V websocket viewers of its stream on another "
            "(PostgreSQL, Redis pub/sub). *relay* is the same-run baseline, the floor for "
            "this stack: a bare Channels consumer per viewer relaying group messages to its "
            "socket; *app* is streaming_app's hub. Idle: database statements per second "
            "from the viewers' process while V viewers watch a stream nobody drives.",
            "",
            table(
                rows,
                [
                    ("V", "v", number()),
                    ("mode", "mode", text),
                    ("connected", "connected", number()),
                    ("exact", "exact", number()),
                    ("last character lag p95", "lag_p95", ms),
                    ("CPU µs/delta/viewer", "cpu_us_per_delta_per_viewer", number(1)),
                    ("ratio", "cpu_ratio", ratio),
                    ("idle statements/s", "idle_statements_per_second", number(2)),
                ],
            ),
            "",
            "![CPU per delta per viewer and lag against V](img/viewers.png)",
        ]
    )


def flush_policy(result: dict[str, Any], images: Path) -> str:
    return "\n".join(
        [
            f"## Flush policy on {result['parameters']['database']} (`bench/flush_policy.py`)",
            "",
            provenance(result),
            "",
            "One stream at 100 LLM-like pieces per second; transactions per second against "
            "the baseline that commits every piece, and the lag from a piece's production "
            "to the commit that holds it (what a viewer waits).",
            "",
            table(
                result["summary"],
                [
                    ("policy (min / max interval)", "policy", text),
                    ("tx/s", "transactions_per_second", number(2)),
                    ("vs baseline", "ratio", lambda v: f"{v:.3f}×"),
                    ("lag p50", "lag_p50", ms),
                    ("lag p95", "lag_p95", ms),
                ],
            ),
        ]
    )


def compaction(result: dict[str, Any], images: Path) -> str:
    space = result["raw"]["storage"]
    return "\n".join(
        [
            f"## Compaction on {result['parameters']['database']} (`bench/compaction.py`)",
            "",
            provenance(result),
            "",
            f"Space of {space['characters']:,} characters of finished streams: "
            f"{space['as_written'] / 1024:,.0f} KiB as written (one chunk per flush), "
            f"{space['compacted'] / 1024:,.0f} KiB merged ({ratio(space['ratio'])}). "
            "Reads (medians):",
            "",
            table(
                result["summary"],
                [
                    ("chunks", "chunks", number()),
                    ("characters", "characters", number()),
                    ("read", "read", text),
                    ("as written", "as_written", lambda v: f"{v * 1e3:.3f} ms"),
                    ("merged", "compacted", lambda v: f"{v * 1e3:.3f} ms"),
                    ("ratio", "ratio", ratio),
                ],
            ),
        ]
    )


def flush_cost(result: dict[str, Any], images: Path) -> str:
    return "\n".join(
        [
            "## A flush with and without a connection pool (`bench/flush_cost.py`)",
            "",
            provenance(result),
            "",
            table(
                result["summary"],
                [
                    ("connections", "connections", text),
                    ("median", "median", lambda v: f"{v * 1e3:.2f} ms"),
                    ("p95", "p95", lambda v: f"{v * 1e3:.2f} ms"),
                    ("flushes/s", "rate", number()),
                    ("vs baseline", "ratio", ratio),
                ],
            ),
        ]
    )


def connections(result: dict[str, Any], images: Path) -> str:
    parameters = result["parameters"]
    ceiling = next((r["ceiling"] for r in result["summary"] if r["ceiling"]), None)
    return "\n".join(
        [
            "## PostgreSQL connections of a process's writers (`bench/connections.py`)",
            "",
            provenance(result),
            "",
            "N streams driven at once in one process (each starts within a second, then "
            f"a word every 20 ms for {parameters['seconds']:g} s), with `CONN_MAX_AGE = 0`: "
            "*no pool*, as startproject leaves it, and the example's pool (`min_size` 2), "
            "the same-run baseline. Connections as the server counts them "
            "(`pg_stat_database.sessions`): opened while the streams were live, and by the "
            "process in all (migrations and pool included). The writers' transactions "
            "are one per tick at most"
            + (f" ({ceiling:g} a second, `1 / FLUSH_TICK`)" if ceiling else "")
            + "; without a pool each opens a connection.",
            "",
            table(
                result["summary"],
                [
                    ("N", "n", number()),
                    ("connections", "mode", text),
                    ("opened while live", "connections", number()),
                    ("per second", "connections_per_second", number(1)),
                    ("of 1 / FLUSH_TICK", "ceiling_ratio", ratio),
                    ("writer tx/s", "transactions_per_second", number(1)),
                    ("opened per tx", "per_transaction", number(2)),
                    ("opened in all", "process_connections", number()),
                ],
            ),
        ]
    )


def fanout(result: dict[str, Any], images: Path) -> str:
    return "\n".join(
        [
            "## Fan-out across processes: channels-redis's layers (`bench/fanout.py`)",
            "",
            provenance(result),
            "",
            "Lag of websocket viewers on a second process behind the driver, with the "
            "default flush policy and with every piece committed (which isolates the "
            "transport); ratios to RedisChannelLayer in the same run.",
            "",
            table(
                result["summary"],
                [
                    ("flushes", "flushes", text),
                    ("layer", "layer", text),
                    ("lag p50", "lag_p50", ms),
                    ("ratio", "p50_ratio", ratio),
                    ("lag p95", "lag_p95", ms),
                    ("ratio", "p95_ratio", ratio),
                    ("bytes per body byte", "bytes_per_body_byte", number(2)),
                ],
            ),
        ]
    )


def slow_readers(result: dict[str, Any], images: Path) -> str:
    order = {"live": 0, "finished": 1}
    rows = sorted(result["summary"], key=lambda r: (r["server"] != "uvicorn", order[r["stream"]]))
    size = result["parameters"]["size"]
    return "\n".join(
        [
            "## Clients that stop reading: a server's memory (`bench/slow_readers.py`)",
            "",
            provenance(result),
            "",
            f"One reply of {size:,} characters on one server process; against it, "
            f"{result['parameters']['n']} clients that stop reading (TCP sockets with a tiny "
            "receive buffer that send their request, or finish the websocket handshake, and "
            "read nothing), or as many websocket viewers that read everything and "
            "acknowledge as `client.js` does (*reading*, the same-run baseline). *acking*: "
            "websocket viewers on `?ack=1`; *legacy*: without acks; *limited*: with "
            "`LIMIT_UNACKED_VIEWERS`; *driver*: the drive's own response, alone (no "
            "viewers: compare it with the idle figure). *live*: the clients came before "
            "the reply was driven; *finished*: they read it from offset 0. Resident memory "
            "of the server process: idle before the clients came, and the median of "
            "samples once the reply had ended; ratio to *reading*, and the difference per "
            "client.",
            "",
            table(
                rows,
                [
                    ("server", "server", text),
                    ("reply", "stream", text),
                    ("clients", "case", text),
                    ("n", "clients", number()),
                    ("idle RSS MB", "idle_rss_mb", number()),
                    ("RSS MB", "rss_mb", number()),
                    ("ratio", "ratio", ratio),
                    ("MB per client over reading", "extra_mb_per_client", number(2)),
                ],
            ),
        ]
    )


def durable(result: dict[str, Any], images: Path) -> str:
    rows = result["summary"]
    finished = [r for r in rows if r["scenario"] == "finished"]
    live = [r for r in rows if r["scenario"] == "live"]
    return "\n".join(
        [
            "## Readers behind a cache: Durable Streams (`bench/durable.py`)",
            "",
            provenance(result),
            "",
            "R readers of one reply over Durable Streams, straight at one uvicorn process "
            "(*app*, the same-run baseline) or through nginx with the cache block of "
            "[deployment.md](deployment.md#a-cache-in-front-readers-past-one-machine) "
            "(*cache*); a stream of its own for each row, so that the cache starts cold. "
            "*exact*: readers whose bytes were the stream's body. *retries*: requests a "
            "reader made again after a connection error, a 429 or a 503.",
            "",
            "**A finished reply**, read from `-1` to its close: the app's requests per "
            "distinct offset the readers asked for (1 is the floor).",
            "",
            table(
                finished,
                [
                    ("readers", "readers", number()),
                    ("via", "via", text),
                    ("app requests", "app_requests", number()),
                    ("distinct offsets", "distinct_offsets", number()),
                    ("per offset", "requests_per_offset", number(2)),
                    ("exact", "exact", number()),
                    ("retries", "retries", number()),
                ],
            ),
            "",
            "**A live reply**, followed by long-polls from before it was driven to its "
            "close: the app's requests per second while it was written, and their growth "
            "from the fewest readers to these (*readers ×*: how many times more readers; "
            "behind the cache the floor is 1.00×, however many).",
            "",
            table(
                live,
                [
                    ("readers", "readers", number()),
                    ("via", "via", text),
                    ("app requests", "app_requests", number()),
                    ("per second", "app_requests_per_second", number(1)),
                    ("growth", "growth", ratio),
                    ("readers ×", "growth_of_readers", ratio),
                    ("reply took", "seconds", number(1)),
                    ("exact", "exact", number()),
                    ("retries", "retries", number()),
                ],
            ),
        ]
    )


SECTIONS: list[tuple[str, Callable[[dict[str, Any], Path], str]]] = [
    ("capacity", capacity),
    ("viewers", viewers),
    ("slow_readers", slow_readers),
    ("durable", durable),
    ("flush_policy_sqlite", flush_policy),
    ("flush_policy_postgresql", flush_policy),
    ("flush_cost", flush_cost),
    ("connections", connections),
    ("fanout", fanout),
    ("compaction_sqlite", compaction),
    ("compaction_postgresql", compaction),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    images = args.out.parent / "img"
    parts = [
        "# Benchmarks",
        "",
        "Written by `python -m bench.report` from `bench/results/*.json`, which "
        "`make bench` writes; nothing here is typed by hand. Every benchmark measures its "
        "baseline in the same run and reports ratios: these machines are shared and "
        "noisy, so compare the ratios more than the absolute figures.",
    ]
    missing = []
    for name, render in SECTIONS:
        path = args.results / f"{name}.json"
        if path.exists():
            parts += ["", render(json.loads(path.read_text()), images)]
        else:
            missing.append(name)
    if missing:
        parts += ["", "Not run yet: " + ", ".join(f"`{name}`" for name in missing) + "."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(parts) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
