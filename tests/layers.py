"""Channel layers that lose group messages, as real ones may (at-most-once delivery)."""

from __future__ import annotations

from typing import Any

from channels.layers import InMemoryChannelLayer

TERMINAL = {"done", "error", "cancelled", "timeout"}


class DropEveryOtherLayer(InMemoryChannelLayer):
    """Drops every second group message, but none with a terminal status (so that only
    the detection of gaps, not a re-sync after silence, can make a viewer whole)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.group_sends = 0

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.group_sends += 1
        if self.group_sends % 2 == 0 and message.get("status") not in TERMINAL:
            return
        await super().group_send(group, message)


class DropTerminalLayer(InMemoryChannelLayer):
    """Drops every group message that carries a terminal status."""

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        if message.get("status") in TERMINAL:
            return
        await super().group_send(group, message)


class DropAllLayer(InMemoryChannelLayer):
    """Loses every group message: only the database tells anyone anything."""

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        return None
