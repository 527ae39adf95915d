"""Channel layers that lose group messages, as real ones may (at-most-once delivery),
and count what they lost, so that a test can confirm its fault hit."""

from __future__ import annotations

import asyncio
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
