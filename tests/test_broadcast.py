"""Publishing from the committing thread never blocks it for long."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

from asgiref.sync import SyncToAsync
from django.test import override_settings

from streaming_app.broadcast import publish


@override_settings(STREAMING_APP={"PUBLISH_TIMEOUT": 0.2})
def test_publishing_gives_up_when_the_event_loop_has_stopped():
    """A writer thread publishing while its server's loop stops (a shutdown) must not
    wait forever: a thread stuck there keeps the process from exiting."""
    stopped = asyncio.new_event_loop()  # open, but nothing runs it any more
    SyncToAsync.threadlocal.main_event_loop = stopped
    SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()
    try:
        started = time.monotonic()
        publish(None, stream_id=uuid.uuid4(), offset=0, text="x", status="streaming", error=None)
        assert time.monotonic() - started < 3
    finally:
        del SyncToAsync.threadlocal.main_event_loop
        del SyncToAsync.threadlocal.main_event_loop_pid
        # Let the loop see the publication it was given was given up (cancelled).
        stopped.run_until_complete(asyncio.sleep(0.01))
        stopped.close()


def test_publishing_without_an_event_loop_uses_one_of_its_own():
    # A management command (expire_streams) publishes from plain sync code.
    publish(None, stream_id=uuid.uuid4(), offset=0, text="", status="timeout", error=None)
