"""An event loop's one channel on the channel layer, and the groups it is in: joined
and left to match what its hub wants (the followed streams' groups, the running
runs' control groups), each call bounded, what failed tried again."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from channels.layers import BaseChannelLayer

from .. import conf
from .publish import layer_call

if TYPE_CHECKING:
    from .hub import Hub

logger = logging.getLogger(__name__)


class Groups:
    """The hub's memberships on its layer (None: no layer; every group counts as
    joined at once)."""

    #: Joins and leaves under way at once: enough that one slow call holds up none of
    #: the others, few enough that a burst of new feeds does not open as many
    #: connections to the layer's server.
    MEMBERSHIP_CALLS = 8

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self.layer: BaseChannelLayer | None = hub.layer
        self._channel: str | None = None
        self._opening: asyncio.Task[str] | None = None
        #: Groups the layer may have this hub's channel in (a join was tried and no
        #: leave has succeeded since), and among them those whose last call failed or
        #: timed out (it may have happened anyway): they are joined again, then left
        #: if they are not wanted.
        self._joined: set[str] = set()
        self._unsure: set[str] = set()
        #: The task bringing each group to what is wanted: one per group at a time, so
        #: that one slow join holds up no other.
        self._syncing: dict[str, asyncio.Task[None]] = {}
        self._calls = asyncio.Semaphore(self.MEMBERSHIP_CALLS)
        self._retry: asyncio.TimerHandle | None = None
        self._failing = False
        self._receiver: asyncio.Task[None] | None = None

    async def _receive(self) -> None:
        # No bound here: a receive waits for messages by nature, and a layer that does
        # not answer looks like silence, which the feeds' watchdogs cover.
        assert self.layer is not None and self._channel is not None
        failures = 0
        while True:
            try:
                message = await self.layer.receive(self._channel)
            except Exception as exc:
                failures += 1
                if failures == 1:
                    logger.warning("the channel layer failed (%r); viewers poll meanwhile", exc)
                await asyncio.sleep(min(0.5 * failures, 5.0))
                # Memberships may have gone with the layer's server: join again.
                self._unsure |= self._joined
                self._hub.ensure_groups()
                continue
            failures = 0
            if not isinstance(message, dict) or message.get("origin") != self._hub.origin:
                self._hub.deliver(message)  # (else delivered already)

    async def sync(self) -> None:
        try:
            wanted = self._hub.wanted()
        except Exception:
            logger.exception("could not tell which groups to join")
            return
        if self.layer is None:
            self._hub.subscribed(wanted)
            return
        for group in (wanted ^ self._joined) | self._unsure:
            if group not in self._syncing:
                self._syncing[group] = self._hub.spawn(self._sync_group(group))
        # Feeds whose group is joined already, or being left (it is joined again after).
        self._hub.subscribed(wanted - set(self._syncing))

    async def _sync_group(self, group: str) -> None:
        assert self.layer is not None
        try:
            while True:
                wanted = self._hub.wants(group)
                if group in self._unsure or (wanted and group not in self._joined):
                    # Counted as joined before the call: if it times out it may have
                    # happened all the same, and must be left if the group is unwanted.
                    self._joined.add(group)
                    self._unsure.add(group)
                    try:
                        channel = await self._channel_name()
                        async with self._calls:
                            await layer_call(self.layer.group_add(group, channel))
                    finally:
                        self._hub.subscribed({group})
                    self._unsure.discard(group)
                elif not wanted and group in self._joined:
                    self._unsure.add(group)
                    channel = await self._channel_name()
                    async with self._calls:
                        await layer_call(self.layer.group_discard(group, channel))
                    self._unsure.discard(group)
                    self._joined.discard(group)
                else:
                    break
        except Exception as exc:
            # The layer is away: viewers poll the database, cancels wait for the
            # writer's next flush.
            if not self._failing:
                self._failing = True
                logger.warning("could not join or leave a channel layer group: %r", exc)
            self._retry_later()
        else:
            if self._failing and not self._unsure:
                self._failing = False
                logger.info("the channel layer answers again; its groups are joined")
        finally:
            del self._syncing[group]

    async def _channel_name(self) -> str:
        """The hub's channel on the layer, made once (every waiting join shares the
        one bounded call)."""
        if self._channel is not None:
            return self._channel
        if self._opening is None or self._opening.done():
            self._opening = self._hub.spawn(self._open_channel())
        return await asyncio.shield(self._opening)

    async def _open_channel(self) -> str:
        assert self.layer is not None
        channel = await layer_call(self.layer.new_channel())
        self._channel = channel
        self._receiver = self._hub.spawn(self._receive())
        return channel

    def _retry_later(self) -> None:
        if self._retry is None:

            def retry() -> None:
                self._retry = None
                self._hub.ensure_groups()

            loop = asyncio.get_running_loop()
            self._retry = loop.call_later(float(conf.get("RESYNC_INTERVAL")), retry)
