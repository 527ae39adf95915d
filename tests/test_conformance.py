"""The official Durable Streams server conformance suite
(``@durable-streams/server-conformance-tests``, pinned in tests/conformance/) against
the example project on real daphne and uvicorn processes, on the suite's database
(PostgreSQL + Redis in ``make test``, SQLite in ``make test-sqlite``).

Every test passes, forks included; the opt-in subscription tests skip themselves
(docs/protocol.md#conformance). The summary of each run is written to
``$TMPDIR/streaming_app_conformance/<server>.json`` for the record.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from .bundles import node_modules
from .servers import Daphne, Uvicorn

pytestmark = [pytest.mark.daphne, pytest.mark.slow]

HERE = Path(__file__).parent / "conformance"


def run_suite(url: str, out: Path) -> list[dict[str, Any]]:
    """Every test of the suite against ``url``: ``{"name", "status", "failure"}``."""
    node_modules(HERE)
    report = out.with_suffix(".vitest.json")
    subprocess.run(
        [
            str(HERE / "node_modules" / ".bin" / "vitest"),
            "run",
            "conformance.test.mjs",
            "--reporter=json",
            f"--outputFile={report}",
        ],
        cwd=HERE,
        env={**os.environ, "CONFORMANCE_TEST_URL": url, "CI": "true"},
        capture_output=True,
        timeout=900,
    )
    results = json.loads(report.read_text())["testResults"]
    return [
        {
            "name": " > ".join([*test["ancestorTitles"], test["title"]]),
            "status": test["status"],
            "failure": "\n".join(test.get("failureMessages") or [])[:500],
        }
        for result in results
        for test in result["assertionResults"]
    ]


@pytest.mark.parametrize("kind", [Daphne, Uvicorn], ids=["daphne", "uvicorn"])
def test_the_official_suite_passes(daphne_factory, database_url, kind):
    # The suite writes without credentials (STREAMING_DURABLE_OPEN), and waits at most
    # 5 s for a long-poll on an empty stream to give up: 0.5 s, as upstream's own run.
    server = daphne_factory(kind, STREAMING_DURABLE_OPEN="1", STREAMING_LONG_POLL_TIMEOUT="0.5")
    records = Path(tempfile.gettempdir()) / "streaming_app_conformance"
    records.mkdir(exist_ok=True)
    tests = run_suite(server.url, records / kind.name)
    counts = {
        s: sum(t["status"] == s for t in tests) for s in ("passed", "failed", "pending", "skipped")
    }
    database = database_url.split(":", 1)[0]
    (records / f"{kind.name}-{database}.json").write_text(
        json.dumps({"server": kind.name, "database": database, **counts, "tests": tests}, indent=1)
    )
    assert len(tests) >= 330, f"the suite ran {len(tests)} tests"
    failed = [t for t in tests if t["status"] == "failed"]
    assert failed == [], "\n\n".join(f"{t['name']}\n{t['failure']}" for t in failed)
    # All but the opt-in subscriptions (PROTOCOL.md §6-7, which this server has not).
    skipped = [t["name"] for t in tests if t["status"] != "passed"]
    assert all("subscription" in name.lower() or "webhook" in name.lower() for name in skipped), (
        skipped
    )
    assert counts["passed"] >= 330
