"""Channel layers that lose group messages, as real ones may (at-most-once delivery),
and count what they lost, so that a test can confirm its fault hit."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer

TERMINAL = {"done", "error", "cancelled", "timeout"}


class CountingLayer(InMemoryChannelLayer):
    """The in-memory layer, counting what it drops (``dropped``), past its capacity too."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.group_sends = 0
        self.dropped: list[dict[str, Any]] = []

    def drops(self, message: dict[str, Any]) -> bool:
        return False

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.group_sends += 1
        if self.drops(message):
            self.dropped.append(message)
            return
        await super().group_send(group, message)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        try:
            await super().send(channel, message)
        except ChannelFull:
            self.dropped.append(message)
            raise


class DropEveryOtherLayer(CountingLayer):
    """Drops every second group message, but none with a terminal status (so that only
    the detection of gaps, not a re-sync after silence, can make a viewer whole)."""

    def drops(self, message: dict[str, Any]) -> bool:
        return self.group_sends % 2 == 0 and message.get("status") not in TERMINAL


class DropTerminalLayer(CountingLayer):
    """Drops every group message that carries a terminal status."""

    def drops(self, message: dict[str, Any]) -> bool:
        return message.get("status") in TERMINAL


class DropAllLayer(CountingLayer):
    """Loses every group message: only the database tells anyone anything."""

    def drops(self, message: dict[str, Any]) -> bool:
        return True


class HangingLayer(CountingLayer):
    """A layer whose group_send never returns (a server that accepts and never answers)."""

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.group_sends += 1
        await asyncio.Event().wait()


class HeldLayer(CountingLayer):
    """Holds every group_send of a terminal update until the test sets ``release``
    (``entered`` is set once one is held), then records it in ``order``. Class
    attributes: a test sets them afresh."""

    order: list[str] = []
    entered = asyncio.Event()
    release = asyncio.Event()

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        if message.get("status") in TERMINAL:
            HeldLayer.entered.set()
            await HeldLayer.release.wait()
            HeldLayer.order.append(f"the layer took {message['status']}")
        await super().group_send(group, message)


class GatedLayer(InMemoryChannelLayer):
    """The in-memory layer as a server that takes requests and answers none of those
    named in ``hang`` (``(method, group)``, or ``(method, None)`` for every group) until
    :meth:`answer`: then it carries them out, whether their callers waited or gave up
    (as a stopped Redis does with the commands in its socket buffers). Records the
    calls made, those whose callers got an answer, what each hung call did in the end,
    the messages sent to groups and those handed to ``receive``'s callers."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hang: set[tuple[str, str | None]] = set()
        self.calls: list[tuple[str, str]] = []
        self.returned: list[tuple[str, str]] = []
        self.effects: list[tuple[str, str]] = []
        self.received: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self._answered = asyncio.Event()
        self._late: set[asyncio.Task[None]] = set()

    def answer(self) -> None:
        """Answer the calls that hang, and all calls from now on."""
        self.hang.clear()
        self._answered.set()

    async def _call(self, method: str, group: str, call: Coroutine[Any, Any, None]) -> None:
        self.calls.append((method, group))
        if (method, group) in self.hang or (method, None) in self.hang:

            async def later() -> None:
                await self._answered.wait()
                await call
                self.effects.append((method, group))

            task = asyncio.ensure_future(later())
            self._late.add(task)
            task.add_done_callback(self._late.discard)
            await asyncio.shield(task)
        else:
            await call
        self.returned.append((method, group))

    async def group_add(self, group: str, channel: str) -> None:
        await self._call("group_add", group, super().group_add(group, channel))

    async def group_discard(self, group: str, channel: str) -> None:
        await self._call("group_discard", group, super().group_discard(group, channel))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.sent.append(message)
        await self._call("group_send", group, super().group_send(group, message))

    async def receive(self, channel: str) -> dict[str, Any]:
        message = await super().receive(channel)
        self.received.append(message)
        return message
