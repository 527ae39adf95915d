"""One object per event loop: the process's publisher, committer and hub, each made on
the loop it serves the first time that loop asks, and dropped with the loop (a test's,
a worker's ``asyncio.run``), never shared with another loop's tasks."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """The running event loop's ``T``, made by ``factory`` on first use there (without
    one, each loop's is what :meth:`set` gave it)."""

    def __init__(self, factory: Callable[[], T] | None = None) -> None:
        self._factory = factory
        self._items: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> T:
        """The running loop's, made if it has none yet."""
        loop = asyncio.get_running_loop()
        item = self._items.get(loop)
        if item is None:
            if self._factory is None:
                raise LookupError("this event loop has none, and there is no factory")
            item = self._items[loop] = self._factory()
        return item

    def peek(self) -> T | None:
        """The running loop's, if it has one: none is made."""
        return self._items.get(asyncio.get_running_loop())

    def set(self, item: T, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Make ``item`` ``loop``'s (by default the running loop's)."""
        self._items[loop or asyncio.get_running_loop()] = item

    def pop(self) -> T | None:
        """Forget the running loop's, and return it (None if it had none)."""
        return self._items.pop(asyncio.get_running_loop(), None)
