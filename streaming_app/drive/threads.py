"""The threads that do the app's database work outside requests, and the connection
hygiene around each call.

The writers' transactions (``persist.write``, a run's status reads) run in the
process's writer threads (:func:`writer_executor`, ``WRITER_THREADS`` of them): as many
database connections, at the most, whatever the number of live streams. Every call
done there, or through the publisher's sync twins, closes obsolete or broken
connections before and after (:func:`closing_connections`), as a request would.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from .. import conf

P = ParamSpec("P")
R = TypeVar("R")

_executor: ThreadPoolExecutor | None = None


def writer_executor() -> ThreadPoolExecutor:
    """The process's threads for the writers' database work (``WRITER_THREADS``): as
    many database connections, at the most, whatever the number of live streams."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(
            max_workers=int(conf.get("WRITER_THREADS")), thread_name_prefix="streaming_app"
        )
    return _executor


def closing_connections(func: Callable[P, R]) -> Callable[P, R]:
    """``func``, closing obsolete or broken connections before and after, as Django
    does around a request and channels' ``database_sync_to_async`` around a call: for
    database work done outside requests (CONN_MAX_AGE is honoured; a pooled connection
    goes back to the pool).

    It closes them inside the call, in the call's own context: channels' wrapper does
    it around the call, and with asgiref 3.13 connections opened inside were seen to
    stay open there (tests/test_streams.py checks they close)."""

    @functools.wraps(func)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()

    return call


def in_writer_thread(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """``func`` as a coroutine function run in the writers' threads, closing the
    connections it used."""
    return sync_to_async(
        closing_connections(func), thread_sensitive=False, executor=writer_executor()
    )
