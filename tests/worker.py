"""A worker process, as a project would write one (a task queue's job): create a stream,
claim it, ``asyncio.run()`` a StreamRun to its end, and exit at once.

Run by tests/test_run_ends.py with the e2e settings (DATABASE_URL, REDIS_URL,
E2E_CHANNEL_LAYER). It prints ``stream <id>``, waits for a line on stdin (the test's
viewer is watching), then prints each ``stream_finished`` it hears, the run's status
and ``exit``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

PIECES = [f"Piece {k} of the worker's reply. " for k in range(20)]


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e_settings")
    import django

    django.setup()
    from streaming_app import StreamRun, claim_stream, create_stream, stream_finished

    stream = create_stream()
    print("stream", stream.pk, flush=True)
    sys.stdin.readline()

    def finished(sender: Any, **kwargs: Any) -> None:
        print("finished", kwargs["stream_id"], kwargs["status"], flush=True)

    stream_finished.connect(finished, weak=False)
    claim_stream(str(stream.pk))  # ids come from the queue as text

    async def model() -> AsyncIterator[str]:
        for piece in PIECES:
            await asyncio.sleep(0.005)
            yield piece

    async def drive() -> str:
        run = StreamRun(str(stream.pk), model())
        run.start()
        return await run.wait()

    print("status", asyncio.run(drive()), flush=True)
    print("exit", flush=True)


if __name__ == "__main__":
    main()
