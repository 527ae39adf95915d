"""Where the benchmarks put what they measured: ``bench/results/<name>.json``.

Each file holds the benchmark's parameters, the machine and the date, the raw figures
and a summary (rows of a table, with the ratios to the baseline measured in the same
run). ``python -m bench.report`` turns them into docs/benchmarks.md. A smoke run
(``--smoke``: seconds, for CI) writes to ``bench/results/smoke/`` instead, which git
ignores, so that it never replaces the figures the docs show.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": model or platform.processor(),
        "system": platform.platform(),
        "python": sys.version.split()[0],
    }


def write(
    name: str,
    *,
    smoke: bool,
    parameters: dict[str, Any],
    summary: list[dict[str, Any]],
    raw: Any = None,
) -> Path:
    """Write a benchmark's results; return the file."""
    directory = RESULTS / "smoke" if smoke else RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    data = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "parameters": parameters,
        "summary": summary,
        "raw": raw,
    }
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path.relative_to(RESULTS.parent.parent)}")
    return path


def in_child(module: str, *args: str, pool_size: str) -> dict[str, Any]:
    """What ``python -m <module> --child <args>`` measured (the JSON of its last line of
    output), in a fresh process with ``DATABASE_POOL_SIZE=<pool_size>``."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--child", *args],
        env={**os.environ, "DATABASE_POOL_SIZE": pool_size},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.splitlines()[-1]))


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
