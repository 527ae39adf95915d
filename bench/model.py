"""An OpenAI-compatible model server in a process of its own, for the benchmarks: so
that the load it takes to stream N replies is not the benchmark's or the server's.

    python -m bench.model --pieces 300 --rate 50   (prints the base URL, then serves)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.text import llm_like_pieces  # noqa: E402
from tests.servers import FakeOpenAI  # noqa: E402


def pieces(count: int) -> list[str]:
    return llm_like_pieces(count, seed=count)


class ModelProcess:
    """``python -m bench.model`` as a child process; ``base_url`` once it serves."""

    def __init__(self, count: int, rate: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.model", "--pieces", str(count), "--rate", str(rate)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.base_url = self.process.stdout.readline().strip()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def server_env(self, redis_url: str, **streaming_app: Any) -> dict[str, str]:
        """The environment of a benchmark's server process (tests/servers.py): the
        benchmarks' settings, Redis's pub/sub layer, this model, and ``STREAMING_APP``
        keys over the example's (the benchmark's own limits, say)."""
        return {
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "REDIS_URL": redis_url,
            "E2E_CHANNEL_LAYER": "pubsub",
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": self.base_url,
            "OPENAI_MODEL": "bench",
            # The fake model honours the example's output cap, a piece a token.
            "CHAT_MAX_OUTPUT_TOKENS": "1000000",
            "E2E_STREAMING_APP": json.dumps(streaming_app),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pieces", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0, help="pieces per second; 0: at once")
    args = parser.parse_args()
    server = FakeOpenAI(pieces(args.pieces), delay=1 / args.rate if args.rate else 0.0)
    print(server.base_url, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
